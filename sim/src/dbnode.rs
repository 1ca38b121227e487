//! The simulated database: its durable state ([`SimStore`], outside every node, so that it
//! survives a restart of the database node), the node that serves it, and the client side
//! implementing the `Database` seam with a connection pool as oslo.db/SQLAlchemy hold it.
//!
//! Failures as a MySQL client sees them: a connection that cannot be opened, or that fails
//! before the transaction was sent, is [`DbError::ConnectionLost`] (nothing ran); one that
//! fails after the transaction was sent and before its answer came is
//! [`DbError::InDoubt`] (it may have committed). There is no client-side timeout: nova's
//! MySQL connection has no read timeout by default, so a request to a database that never
//! answers (a paused node, a clogged link) waits, as nova's would.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use madsim::net::{Receiver, Sender};
use tokio::sync::Semaphore;

use stackbed_core::model::Millis;
use stackbed_core::scenario::Control;
use stackbed_core::store::{DbError, MemStore, Op, OpResult};
use stackbed_services::clock::Clock;
use stackbed_services::monitor::MonitorRef;
use stackbed_services::seams::Database;

use crate::conn;

/// MariaDB's `innodb_flush_log_at_trx_commit`: what of the committed state a crash keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `=1`, MariaDB's default: the redo log is written and synced at every commit, before
    /// the commit is acknowledged, so a crash or restart loses nothing that was committed.
    /// (Modes 0 and 2, which flush about once a second and lose the last commits on a crash
    /// or power loss, come with the Galera models.)
    #[default]
    SyncEachCommit,
}

/// The database's committed state and commit counter, and the observer that sees every
/// commit. It lives outside the database node (the run creates it and hands it to
/// [`serve`]), so a restart of the node (madsim re-runs its init) keeps what the
/// [`Durability`] mode says was synced, and row versions never repeat. Its lock is the
/// serialisation point: commit order is the order the monitor sees commits in, outside
/// every node that can be killed. Cloning shares it.
#[derive(Clone)]
pub struct SimStore(Arc<Mutex<StoreState>>);

struct StoreState {
    store: MemStore,
    monitor: MonitorRef,
    durability: Durability,
    /// Times the database node started on this store (1 after the first start).
    starts: u64,
}

impl SimStore {
    pub fn new(monitor: MonitorRef, durability: Durability) -> SimStore {
        SimStore(Arc::new(Mutex::new(StoreState { store: MemStore::new(), monitor, durability, starts: 0 })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreState> {
        self.0.lock().expect("database store lock poisoned: a commit panicked half-way")
    }

    /// The node (re)starts on this store: crash recovery keeps what was synced. With
    /// [`Durability::SyncEachCommit`] that is every commit, so nothing changes.
    pub fn recover(&self) {
        let mut st = self.lock();
        st.starts += 1;
        match st.durability {
            Durability::SyncEachCommit => {}
        }
    }

    /// How many times a database node started on this store.
    pub fn starts(&self) -> u64 {
        self.lock().starts
    }

    /// Executes one transaction and feeds its commit, if any, to the monitor, both under
    /// the store's lock.
    pub fn execute(&self, now_ms: Millis, ops: Vec<Op>) -> Result<Vec<OpResult>, DbError> {
        let st = &mut *self.lock();
        let (results, commit) = st.store.execute(ops)?;
        if let Some(c) = commit {
            st.monitor.lock().expect("monitor lock poisoned: the checker panicked").on_commit(now_ms, &c);
        }
        Ok(results)
    }
}

/// One transaction, as a client sends it (to the database, or to the proxy in front of it).
pub(crate) struct Request {
    pub(crate) ops: Vec<Op>,
}

/// Its answer.
pub(crate) struct Response {
    pub(crate) result: Result<Vec<OpResult>, DbError>,
}

/// MySQL's server greeting, which a client waits for before it sends anything: the proxy
/// sends it once it has a server for the session (the embedded node's clients skip it).
pub(crate) struct Greeting;

/// The database node's main loop over `store`: one connection per client, one
/// transaction at a time per connection, in arrival order. Returns only if its socket
/// fails. Killing the node drops every connection (the clients' sends fail, their
/// receives end); the store stays. Restart the node as `kill` then `restart`: madsim
/// 0.2.34's `restart` alone does not reset the node's sockets, so clients would keep
/// reaching the old incarnation's socket (checked: every request then fails).
pub async fn serve(addr: SocketAddr, store: SimStore, clock: Clock) -> io::Result<()> {
    store.recover();
    conn::accept_each(addr, move |_, tx, mut rx| {
        let (store, clock) = (store.clone(), clock.clone());
        async move {
            while let Some(req) = conn::recv::<Request>(&mut rx).await {
                let result = store.execute(clock.now_ms(), req.ops);
                if conn::send(&tx, Response { result }).await.is_err() {
                    break;
                }
            }
        }
    })
    .await
}

/// One open MySQL connection: its sender and receiver.
struct Connection {
    tx: Sender,
    rx: Receiver,
}

/// The client side: oslo.db's engine with SQLAlchemy's QueuePool. Up to `pool_size`
/// connections stay open when idle, up to `max_overflow` more are opened under load and
/// closed when given back; a request beyond both waits for a free connection. One
/// transaction per connection at a time, as MySQL's protocol has it. A connection that
/// fails is discarded; the next checkout connects anew, so the client recovers once the
/// database is back.
pub struct SimDb {
    server: SocketAddr,
    /// Whether a new connection waits for the server's [`Greeting`] (through the proxy).
    greeting: bool,
    pool_size: usize,
    /// Connections checked out or idle never exceed `pool_size + max_overflow`.
    slots: Semaphore,
    idle: Mutex<Vec<Connection>>,
}

impl SimDb {
    /// A pool for `server` with `control.db_max_pool_size` and `control.db_max_overflow`.
    /// Opens nothing yet: the first transaction connects.
    pub fn new(server: SocketAddr, control: &Control) -> Arc<SimDb> {
        SimDb::with_pool(server, control.db_max_pool_size, control.db_max_overflow)
    }

    pub fn with_pool(server: SocketAddr, pool_size: usize, max_overflow: usize) -> Arc<SimDb> {
        Arc::new(SimDb::pool(server, false, pool_size, max_overflow))
    }

    /// A pool for a server that greets each new connection first (HAProxy in front of a
    /// Galera cluster: a connection it cannot give a server is closed before the greeting,
    /// so nothing was sent on it).
    pub fn greeted(server: SocketAddr, control: &Control) -> Arc<SimDb> {
        Arc::new(SimDb::pool(server, true, control.db_max_pool_size, control.db_max_overflow))
    }

    fn pool(server: SocketAddr, greeting: bool, pool_size: usize, max_overflow: usize) -> SimDb {
        let slots = Semaphore::new((pool_size + max_overflow).max(1));
        SimDb { server, greeting, pool_size, slots, idle: Mutex::new(Vec::new()) }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().expect("database pool lock poisoned")
    }

    /// Connections open and idle in the pool.
    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    async fn open(&self) -> Result<Connection, DbError> {
        match conn::connect(self.server).await {
            Ok((tx, mut rx, _)) => {
                if self.greeting && conn::recv::<Greeting>(&mut rx).await.is_none() {
                    return Err(DbError::ConnectionLost(format!(
                        "lost connection to the database at {} reading the initial communication packet",
                        self.server
                    )));
                }
                Ok(Connection { tx, rx })
            }
            Err(e) => Err(DbError::ConnectionLost(format!("cannot connect to the database at {}: {e}", self.server))),
        }
    }

    /// A connection for one transaction: a pooled one that is still open (oslo.db pings a
    /// connection at checkout and replaces a dead one), else a new one.
    async fn checkout(&self) -> Result<Connection, DbError> {
        loop {
            let pooled = self.idle().pop();
            match pooled {
                Some(c) if c.tx.is_closed() => continue,
                Some(c) => return Ok(c),
                None => return self.open().await,
            }
        }
    }

    /// Sends `ops` on a checked-out connection and waits for the answer.
    async fn transact(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, DbError> {
        let writes = ops.iter().any(|op| matches!(op, Op::Put { .. } | Op::Delete { .. }));
        let mut conn = self.checkout().await?;
        if let Err(e) = conn::send(&conn.tx, Request { ops }).await {
            return Err(DbError::ConnectionLost(format!(
                "connection to {} failed before the transaction was sent: {e}",
                self.server
            )));
        }
        match conn::recv::<Response>(&mut conn.rx).await {
            Some(resp) => {
                let mut idle = self.idle();
                if idle.len() < self.pool_size {
                    idle.push(conn);
                }
                resp.result
            }
            None if !writes => Err(DbError::ConnectionLost(format!(
                "connection to {} lost during a read-only transaction; nothing was written",
                self.server
            ))),
            None => Err(DbError::InDoubt(format!(
                "connection to {} lost after the transaction was sent, before its answer",
                self.server
            ))),
        }
    }
}

#[async_trait]
impl Database for SimDb {
    async fn execute(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, DbError> {
        // The semaphore is never closed.
        let _slot = self.slots.acquire().await.map_err(|e| DbError::Backend(format!("database pool closed: {e}")))?;
        self.transact(ops).await
    }
}
