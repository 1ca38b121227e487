//! The seam conformance suites (`stackbed_services::conformance`) against the simulated
//! broker and database nodes. The real implementations run the same suites in
//! `real/tests/conformance.rs`.
#![cfg(madsim)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::{Handle, Runtime};
use stackbed_core::model::Table;
use stackbed_core::store::{DbError, Op};
use stackbed_services::clock::Clock;
use stackbed_services::conformance;
use stackbed_services::metrics::Metrics;
use stackbed_services::monitor::Monitor;
use stackbed_services::seams::BusRef;
use stackbed_services::seams::Database;
use stackbed_sim::broker::{self, SimBus};
use stackbed_sim::conn;
use stackbed_sim::dbnode::{self, DbClients, SimDb, DB_TIMEOUT, DB_TIMEOUT_SWEEP};

const BROKER: &str = "10.9.0.1:5672";
const DATABASE: &str = "10.9.0.2:3306";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn simulated_database_node_conforms() {
    for seed in 1..=3 {
        Runtime::with_seed_and_config(seed, madsim::Config::default()).block_on(async {
            let handle = Handle::current();
            let monitor = Monitor::new(true, 600_000);
            let clock = Clock::start();
            handle
                .create_node()
                .ip(addr(DATABASE).ip())
                .init(move || {
                    let (m, clock) = (monitor.clone(), clock.clone());
                    async move { dbnode::serve(addr(DATABASE), m, clock).await }
                })
                .build();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let client = handle.create_node().ip("10.9.1.1".parse().unwrap()).build();
            let clients = DbClients::default();
            tokio::spawn(clients.clone().sweep());
            client
                .spawn(async move {
                    let db = SimDb::connect(addr(DATABASE), &clients).await.unwrap();
                    conformance::database(&*db).await;
                })
                .await
                .unwrap();
        });
    }
}

/// A database that never answers: the run's sweeper fails the request after DB_TIMEOUT
/// (and at most one sweep period later), with the database's unavailable error.
#[test]
fn a_silent_database_times_out() {
    Runtime::with_seed_and_config(1, madsim::Config::default()).block_on(async {
        let handle = Handle::current();
        let clients = DbClients::default();
        tokio::spawn(clients.clone().sweep());
        // It accepts connections and reads every request, and answers none.
        let silent = addr("10.9.9.9:3306");
        handle
            .create_node()
            .ip(silent.ip())
            .init(move || async move {
                conn::accept_each(silent, |_, tx, mut rx| async move {
                    while rx.recv().await.is_ok() {}
                    drop(tx);
                })
                .await
            })
            .build();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let client = handle.create_node().ip("10.9.1.2".parse().unwrap()).build();
        client
            .spawn(async move {
                let db = SimDb::connect(silent, &clients).await.unwrap();
                let t0 = tokio::time::Instant::now();
                let res = db.execute(vec![Op::Get { table: Table::Users, key: "u".into() }]).await;
                let waited = t0.elapsed();
                assert!(matches!(res, Err(DbError::Unavailable(ref m)) if m.contains("no answer")), "{res:?}");
                assert!(waited >= DB_TIMEOUT && waited <= DB_TIMEOUT + DB_TIMEOUT_SWEEP, "{waited:?}");
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
            handle.create_node().ip(addr(BROKER).ip()).init(|| async { broker::serve(addr(BROKER)).await }).build();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let client = handle.create_node().ip("10.9.1.2".parse().unwrap()).build();
            client
                .spawn(async {
                    conformance::bus(|name| async move {
                        let bus: BusRef = SimBus::connect(addr(BROKER), &name, Metrics::default()).await.unwrap();
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
