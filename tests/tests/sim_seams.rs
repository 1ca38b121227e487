//! The seam conformance suites (`stackbed_services::conformance`) against the simulated
//! broker and database nodes. The real implementations run the same suites in
//! `real/tests/conformance.rs`.
#![cfg(madsim)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::{Handle, Runtime};
use rand::{rngs::SmallRng, SeedableRng};
use stackbed_core::db_retry::DbRetryPolicy;
use stackbed_core::model::Table;
use stackbed_core::store::{DbError, Op};
use stackbed_services::clock::Clock;
use stackbed_services::conformance;
use stackbed_services::db_retry::DbRetry;
use stackbed_services::dbx::ServiceError;
use stackbed_services::metrics::Metrics;
use stackbed_services::monitor::Monitor;
use stackbed_services::seams::BusRef;
use stackbed_services::seams::Database;
use stackbed_sim::broker::{self, SimBus};
use stackbed_sim::conn;
use stackbed_sim::dbnode::{self, Durability, SimDb, SimStore};

const BROKER: &str = "10.9.0.1:5672";
const DATABASE: &str = "10.9.0.2:3306";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A database node over a fresh store at `addr`; returns the node's id.
fn database_node(addr: SocketAddr) -> (madsim::task::NodeId, SimStore) {
    let store = SimStore::new(Monitor::new(true, 600_000), Durability::SyncEachCommit);
    let s = store.clone();
    let node = Handle::current()
        .create_node()
        .ip(addr.ip())
        .init(move || dbnode::serve(addr, s.clone(), Clock::start()))
        .build();
    (node.id(), store)
}

/// A node that accepts connections at `addr`, reads every request and answers none;
/// returns its id and the number of connections it accepted so far.
fn silent_node(addr: SocketAddr) -> (madsim::task::NodeId, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    let node = Handle::current()
        .create_node()
        .ip(addr.ip())
        .init(move || {
            let a = a.clone();
            async move {
                conn::accept_each(addr, move |_, tx, mut rx| {
                    a.fetch_add(1, Ordering::SeqCst);
                    async move {
                        while rx.recv().await.is_ok() {}
                        drop(tx);
                    }
                })
                .await
            }
        })
        .build();
    (node.id(), accepted)
}

fn get_op() -> Op {
    Op::Get { table: Table::Users, key: "u".into() }
}

fn put_op() -> Op {
    Op::Put {
        table: Table::ProjectUsages,
        key: "p".into(),
        value: stackbed_core::model::Record::ProjectUsage(Default::default()),
        expect: stackbed_core::store::Expect::Any,
    }
}

#[test]
fn simulated_database_node_conforms() {
    for seed in 1..=3 {
        Runtime::with_seed_and_config(seed, madsim::Config::default()).block_on(async {
            database_node(addr(DATABASE));
            tokio::time::sleep(Duration::from_millis(10)).await;
            let client = Handle::current().create_node().ip("10.9.1.1".parse().unwrap()).build();
            client
                .spawn(async move {
                    let db = SimDb::with_pool(addr(DATABASE), 5, 50);
                    conformance::database(&*db).await;
                })
                .await
                .unwrap();
        });
    }
}

/// The node restarts (madsim re-runs its init) over the same store: rows, deletes and the
/// commit counter survive, and the client's pool reconnects by itself.
#[test]
fn a_restarted_database_node_keeps_its_rows_and_the_client_reconnects() {
    Runtime::with_seed_and_config(1, madsim::Config::default()).block_on(async {
        let (node, store) = database_node(addr(DATABASE));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let client = Handle::current().create_node().ip("10.9.1.1".parse().unwrap()).build();
        client
            .spawn(async move {
                let db = SimDb::with_pool(addr(DATABASE), 5, 50);
                let client: Arc<dyn Database> = db.clone();
                conformance::database_restart(&*db, || async move {
                    Handle::current().kill(node);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Handle::current().restart(node);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    client
                })
                .await;
            })
            .await
            .unwrap();
        assert_eq!(store.starts(), 2, "the node started twice on one store");
    });
}

/// No client-side timeout (nova's MySQL connection has no read timeout by default): a
/// database that never answers is waited for.
#[test]
fn a_silent_database_is_waited_for() {
    Runtime::with_seed_and_config(1, madsim::Config::default()).block_on(async {
        let silent = addr("10.9.9.9:3306");
        silent_node(silent);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let client = Handle::current().create_node().ip("10.9.1.2".parse().unwrap()).build();
        client
            .spawn(async move {
                let db = SimDb::with_pool(silent, 5, 50);
                let waited = tokio::time::timeout(Duration::from_secs(3600), db.execute(vec![get_op()])).await;
                assert!(waited.is_err(), "still waiting after an hour: {waited:?}");
            })
            .await
            .unwrap();
    });
}

/// A database that dies with a write sent and unanswered: the write is in doubt, a read
/// in the same position lost nothing; later requests cannot connect (connection lost).
#[test]
fn a_database_killed_mid_transaction_leaves_writes_in_doubt() {
    Runtime::with_seed_and_config(1, madsim::Config::default()).block_on(async {
        let silent = addr("10.9.9.9:3306");
        let (node, _) = silent_node(silent);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let client = Handle::current().create_node().ip("10.9.1.2".parse().unwrap()).build();
        let requests = client.spawn(async move {
            let db = SimDb::with_pool(silent, 5, 50);
            let (w, r) = tokio::join!(db.execute(vec![put_op()]), db.execute(vec![get_op()]));
            let after = db.execute(vec![put_op()]).await;
            (w, r, after)
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        Handle::current().kill(node);
        let (w, r, after) = requests.await.unwrap();
        assert!(matches!(w, Err(DbError::InDoubt(_))), "{w:?}");
        assert!(w.unwrap_err().to_string().contains("MySQL 2013"));
        assert!(matches!(r, Err(DbError::ConnectionLost(_))), "{r:?}");
        assert!(matches!(after, Err(DbError::ConnectionLost(ref m)) if m.contains("cannot connect")), "{after:?}");
    });
}

/// SQLAlchemy's QueuePool: at most pool_size + max_overflow connections, one transaction
/// each; the rest wait. Given back, only pool_size stay open.
#[test]
fn the_pool_opens_at_most_pool_size_plus_overflow_connections() {
    Runtime::with_seed_and_config(1, madsim::Config::default()).block_on(async {
        let silent = addr("10.9.9.9:3306");
        let (_, accepted) = silent_node(silent);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let client = Handle::current().create_node().ip("10.9.1.2".parse().unwrap()).build();
        client
            .spawn(async move {
                let db = SimDb::with_pool(silent, 2, 1);
                for _ in 0..6 {
                    let db = db.clone();
                    tokio::spawn(async move { db.execute(vec![get_op()]).await });
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            })
            .await
            .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "2 pooled + 1 overflow");
    });
    Runtime::with_seed_and_config(1, madsim::Config::default()).block_on(async {
        database_node(addr(DATABASE));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let client = Handle::current().create_node().ip("10.9.1.1".parse().unwrap()).build();
        client
            .spawn(async move {
                let db = SimDb::with_pool(addr(DATABASE), 2, 3);
                let all: Vec<_> = (0..5)
                    .map(|_| {
                        let db = db.clone();
                        tokio::spawn(async move { db.execute(vec![get_op()]).await })
                    })
                    .collect();
                for r in all {
                    r.await.expect("the task").expect("a read");
                }
                assert_eq!(db.idle_count(), 2, "overflow connections are closed when given back");
            })
            .await
            .unwrap();
    });
}

#[test]
fn simulated_broker_conforms() {
    for seed in 1..=3 {
        Runtime::with_seed_and_config(seed, madsim::Config::default()).block_on(async {
            let handle = Handle::current();
            handle
                .create_node()
                .ip(addr(BROKER).ip())
                .init(|| broker::serve_default(addr(BROKER), broker::BrokerState::default()))
                .build();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let client = handle.create_node().ip("10.9.1.2".parse().unwrap()).build();
            client
                .spawn(async {
                    conformance::bus(|name| async move {
                        let bus: BusRef = SimBus::connect_default(addr(BROKER), &name);
                        bus
                    })
                    .await;
                })
                .await
                .unwrap();
        });
    }
}

#[test]
fn memstore_conforms() {
    struct Mem(std::sync::Mutex<stackbed_core::store::MemStore>);
    #[async_trait::async_trait]
    impl stackbed_services::seams::Database for Mem {
        async fn execute(
            &self,
            ops: Vec<stackbed_core::store::Op>,
        ) -> Result<Vec<stackbed_core::store::OpResult>, stackbed_core::store::DbError> {
            self.0.lock().unwrap().execute(ops).map(|(r, _)| r)
        }
    }
    let db = Arc::new(Mem(Default::default()));
    Runtime::with_seed_and_config(1, madsim::Config::default()).block_on(async move {
        conformance::database(&*db).await;
    });
}

/// oslo.db's wrap_db_retry around a call that fails with `errors` in turn, then succeeds:
/// returns the outcome, the attempts made and the simulated seconds it took.
fn wrapped_call(policy: DbRetryPolicy, errors: Vec<DbError>) -> (Result<(), String>, usize, f64, Metrics) {
    Runtime::with_seed_and_config(1, madsim::Config::default()).block_on(async move {
        let metrics = Metrics::default();
        let retry = DbRetry::new(policy, SmallRng::seed_from_u64(7), Clock::start(), metrics.clone());
        let errors = std::sync::Mutex::new(std::collections::VecDeque::from(errors));
        let attempts = AtomicUsize::new(0);
        let t0 = tokio::time::Instant::now();
        let res = retry
            .run("instance_update", || async {
                attempts.fetch_add(1, Ordering::SeqCst);
                match errors.lock().unwrap().pop_front() {
                    Some(e) => Err(ServiceError::Db(e)),
                    None => Ok(()),
                }
            })
            .await
            .map_err(|e| e.to_string());
        (res, attempts.load(Ordering::SeqCst), t0.elapsed().as_secs_f64(), metrics)
    })
}

#[test]
fn the_retry_wrapper_retries_deadlocks_five_times_with_sleeps_on_the_clock() {
    let deadlock = || DbError::Deadlock("instances/a".into());
    let (res, attempts, secs, metrics) = wrapped_call(DbRetryPolicy::nova(5), vec![deadlock(); 5]);
    assert_eq!((res, attempts), (Ok(()), 6));
    assert_eq!(metrics.counter("db.retry.instance_update"), 5);
    // 1 s, then U(0, 2), U(0, 4), U(0, 8), min(U(0, 16), 10).
    assert!((1.0..=25.0).contains(&secs), "{secs}");
    let (res, attempts, _, metrics) = wrapped_call(DbRetryPolicy::nova(5), vec![deadlock(); 6]);
    assert!(res.unwrap_err().contains("MySQL 1213"));
    assert_eq!(attempts, 6);
    assert_eq!(metrics.counter("db.retry_exhausted.instance_update"), 1);
}

#[test]
fn the_retry_wrapper_never_retries_a_commit_in_doubt_unless_the_bug_is_planted() {
    let in_doubt = || DbError::InDoubt("answer lost".into());
    for e in [in_doubt(), DbError::ConnectionLost("reset".into()), DbError::NonPrimary { node: "db".into() }] {
        let (res, attempts, secs, _) = wrapped_call(DbRetryPolicy::nova(5), vec![e.clone()]);
        assert_eq!((res, attempts), (Err(e.to_string()), 1));
        assert!(secs < 0.001, "no sleep: {secs}");
    }
    let buggy = DbRetryPolicy { retry_in_doubt: true, ..DbRetryPolicy::nova(5) };
    let (res, attempts, secs, _) = wrapped_call(buggy, vec![in_doubt()]);
    assert_eq!((res, attempts), (Ok(()), 2), "the planted bug sends the write again");
    assert!((1.0..1.001).contains(&secs), "after retry_interval: {secs}");
}
