//! The simulated database: a node that runs the in-memory transactional engine
//! (`stackbed_core::store::MemStore`) and feeds every commit to the run monitor, and the
//! client side implementing the `Database` seam over a simulated connection (`conn`).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use madsim::net::Sender;
use tokio::sync::oneshot;

use stackbed_core::store::{DbError, MemStore, Op, OpResult};
use stackbed_services::clock::Clock;
use stackbed_services::monitor::MonitorRef;
use stackbed_services::seams::Database;

use crate::conn;

/// How long a client waits for the database before reporting it unavailable.
pub const DB_TIMEOUT: Duration = Duration::from_secs(30);

struct Request {
    id: u64,
    ops: Vec<Op>,
}

struct Response {
    id: u64,
    result: Result<Vec<OpResult>, DbError>,
}

/// The database node's main loop: one connection per client, one transaction at a time
/// per connection, in arrival order. Returns only if its socket fails.
pub async fn serve(addr: SocketAddr, monitor: MonitorRef, clock: Clock) -> io::Result<()> {
    let store = Arc::new(Mutex::new(MemStore::new()));
    conn::accept_each(addr, move |_, tx, mut rx| {
        let (store, monitor, clock) = (store.clone(), monitor.clone(), clock.clone());
        async move {
            while let Some(req) = conn::recv::<Request>(&mut rx).await {
                // Execute and observe under the store lock: commit order is observation order.
                let result = {
                    let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
                    match store.execute(req.ops) {
                        Ok((results, commit)) => {
                            if let Some(c) = commit {
                                monitor.lock().unwrap_or_else(|e| e.into_inner()).on_commit(clock.now_ms(), &c);
                            }
                            Ok(results)
                        }
                        Err(e) => Err(e),
                    }
                };
                if conn::send(&tx, Response { id: req.id, result }).await.is_err() {
                    break;
                }
            }
        }
    })
    .await
}

/// How often the run's sweeper fails the requests that have waited [`DB_TIMEOUT`]: a
/// request times out between DB_TIMEOUT and DB_TIMEOUT + this. One sweeping task for every
/// client of a run, instead of a timer per request, keeps the simulator's timer queue short
/// (its timers cannot be cancelled: a per-request timeout would stay queued for 30
/// simulated seconds after every answer).
pub const DB_TIMEOUT_SWEEP: Duration = Duration::from_secs(1);

type Reply = oneshot::Sender<Result<Vec<OpResult>, DbError>>;

#[derive(Default)]
struct ClientState {
    next_id: u64,
    /// Waiting requests by id, with the instant they time out. Ids grow with send time, so
    /// deadlines grow with ids and the sweep only looks at the front.
    pending: BTreeMap<u64, (tokio::time::Instant, Reply)>,
}

/// The database clients of one run, for the sweeper.
#[derive(Clone, Default)]
pub struct DbClients(Arc<Mutex<Vec<std::sync::Weak<Mutex<ClientState>>>>>);

impl DbClients {
    /// Every [`DB_TIMEOUT_SWEEP`], fails each client's requests past their deadline; forgets
    /// clients that are gone (a restarted node connects anew). Runs until the run ends.
    pub async fn sweep(self) {
        loop {
            tokio::time::sleep(DB_TIMEOUT_SWEEP).await;
            let now = tokio::time::Instant::now();
            let mut clients = self.0.lock().unwrap_or_else(|e| e.into_inner());
            clients.retain(|weak| {
                let Some(state) = weak.upgrade() else { return false };
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(entry) = st.pending.first_entry() {
                    if entry.get().0 > now {
                        break;
                    }
                    let (_, tx) = entry.remove();
                    let _ = tx.send(Err(DbError::Unavailable(format!("no answer within {DB_TIMEOUT:?}"))));
                }
                true
            });
        }
    }
}

pub struct SimDb {
    tx: Sender,
    state: Arc<Mutex<ClientState>>,
}

impl SimDb {
    /// Connects a client; `clients` is the run's sweeper, which enforces its timeouts.
    pub async fn connect(server: SocketAddr, clients: &DbClients) -> io::Result<Arc<SimDb>> {
        let (tx, mut rx, _) = conn::connect(server).await?;
        let state: Arc<Mutex<ClientState>> = Arc::default();
        clients.0.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&state));
        let rx_state = state.clone();
        tokio::spawn(async move {
            while let Some(resp) = conn::recv::<Response>(&mut rx).await {
                let tx = rx_state.lock().unwrap_or_else(|e| e.into_inner()).pending.remove(&resp.id);
                if let Some((_, tx)) = tx {
                    let _ = tx.send(resp.result);
                }
            }
        });
        Ok(Arc::new(SimDb { tx, state }))
    }
}

#[async_trait]
impl Database for SimDb {
    async fn execute(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, DbError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.next_id += 1;
            let id = st.next_id;
            st.pending.insert(id, (tokio::time::Instant::now() + DB_TIMEOUT, tx));
            id
        };
        if let Err(e) = conn::send(&self.tx, Request { id, ops }).await {
            self.state.lock().unwrap_or_else(|e| e.into_inner()).pending.remove(&id);
            return Err(DbError::Unavailable(e.to_string()));
        }
        // The answer, or the sweep's timeout error.
        rx.await.unwrap_or_else(|_| Err(DbError::Unavailable("connection closed".into())))
    }
}
