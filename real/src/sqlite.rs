//! The database seam on an embedded SQLite file (or `:memory:`).
//!
//! Semantics are those of [`stackbed_core::store::MemStore::execute`], the reference
//! engine, except for how versions are numbered: the transaction's shape is validated first
//! (at most one write per key), every `Expect` is checked before anything is written, reads
//! see the state before the transaction, and scans return the rows whose key starts with
//! the prefix in key order. Everything runs inside one SQLite transaction (`BEGIN
//! IMMEDIATE`).
//!
//! Versions are per row, as nova's rows carry their own (a provider's generation, an
//! instance's task state): a write gives the row its previous version plus one and touches
//! no other row, so two writers conflict only when they write the same rows; there is no
//! global row that every write bumps. A delete leaves a tombstone (`value` NULL) with the
//! row's last version, so a re-insert continues from it and a version never repeats for a
//! key (no ABA). MemStore numbers versions from one commit counter instead; the two agree
//! on the order of each row's versions, which is all a compare-and-swap can see.
//!
//! Storage: `rows(tbl, key, version, value, commit_seq)` with `value` the JSON of the
//! [`Record`](stackbed_core::model::Record) (NULL for a tombstone) and `commit_seq` the
//! commit that last wrote the row. The commit counter that numbers commits for observers is
//! kept under the connection's lock and recovered at open as the largest `commit_seq`. The
//! journal is WAL with `synchronous=NORMAL`: a commit survives a process crash; the last
//! commits may be lost on power failure (the usual trade-off of that setting).
//!
//! Errors: SQLite's busy and locked errors (another connection held the write lock past
//! `busy_timeout`) are [`DbError::LockWaitTimeout`], MySQL 1205's counterpart, which nova's
//! `wrap_db_retry` retries; everything else is a backend error.
//!
//! Observers (the run's [`Monitor`](stackbed_services::monitor::Monitor)) see each commit
//! right after it, while the connection's lock is still held, so observation order is
//! commit order.

use stackbed_core::sync::guard;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use stackbed_core::model::{Millis, Record, Table};
use stackbed_core::store::{conflict, validate_ops, Commit, DbError, Expect, Op, OpResult, Row, Write};
use stackbed_services::clock::Clock;
use stackbed_services::monitor::MonitorRef;
use stackbed_services::seams::Database;

/// Called after each commit with the run's time and the commit.
pub type CommitHook = Box<dyn Fn(Millis, &Commit) + Send + Sync>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rows (
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    value TEXT,
    commit_seq INTEGER NOT NULL,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
";

/// How long a transaction waits for another connection's write lock before it fails with
/// [`DbError::LockWaitTimeout`] (SQLite's `busy_timeout`).
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

struct Conn {
    conn: Connection,
    observers: Vec<CommitHook>,
    /// The last commit's number (0 before the first).
    seq: u64,
}

struct Inner {
    conn: Mutex<Conn>,
    clock: Clock,
}

/// SQLite-backed [`Database`]. Cloning shares the connection.
#[derive(Clone)]
pub struct SqliteDb {
    inner: Arc<Inner>,
    path: String,
}

fn backend(e: rusqlite::Error) -> DbError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            DbError::LockWaitTimeout(format!("sqlite: {e}: another connection held the write lock past busy_timeout"))
        }
        _ => DbError::Backend(format!("sqlite: {e}")),
    }
}

fn expect_holds(expect: Expect, found: Option<u64>) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Absent => found.is_none(),
        Expect::Version(v) => found == Some(v),
    }
}

fn to_version(v: i64, table: Table, key: &str) -> Result<u64, DbError> {
    u64::try_from(v)
        .map_err(|_| DbError::Backend(format!("sqlite: row {}/{key} has invalid version {v}", table.name())))
}

fn from_version(v: u64) -> Result<i64, DbError> {
    i64::try_from(v).map_err(|_| DbError::Backend(format!("sqlite: commit counter {v} out of range")))
}

fn decode(table: Table, key: &str, text: &str) -> Result<Record, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::Backend(format!("sqlite: corrupt row {}/{key}: {e}", table.name())))
}

fn encode(table: Table, key: &str, value: &Record) -> Result<String, DbError> {
    serde_json::to_string(value)
        .map_err(|e| DbError::Backend(format!("sqlite: cannot encode row {}/{key}: {e}", table.name())))
}

/// A key's stored version and whether the row is live (false for a tombstone).
fn version_of(tx: &Connection, table: Table, key: &str) -> Result<Option<(u64, bool)>, DbError> {
    let v: Option<(i64, bool)> = tx
        .prepare_cached("SELECT version, value IS NOT NULL FROM rows WHERE tbl = ?1 AND key = ?2")
        .and_then(|mut st| st.query_row(params![table.name(), key], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(backend)?;
    v.map(|(v, live)| Ok((to_version(v, table, key)?, live))).transpose()
}

fn get_row(tx: &Connection, table: Table, key: &str) -> Result<Option<Row>, DbError> {
    let raw: Option<(i64, String)> = tx
        .prepare_cached("SELECT version, value FROM rows WHERE tbl = ?1 AND key = ?2 AND value IS NOT NULL")
        .and_then(|mut st| st.query_row(params![table.name(), key], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(backend)?;
    match raw {
        None => Ok(None),
        Some((version, text)) => {
            Ok(Some(Row { version: to_version(version, table, key)?, value: decode(table, key, &text)? }))
        }
    }
}

fn scan(tx: &Connection, table: Table, prefix: &str) -> Result<Vec<(String, Row)>, DbError> {
    // SQLite's BINARY collation compares UTF-8 bytes, as Rust orders `String`s: rows come
    // in the order of MemStore's BTreeMap, starting at the prefix; stop at the first key
    // past it.
    let mut st = tx
        .prepare_cached(
            "SELECT key, version, value FROM rows WHERE tbl = ?1 AND key >= ?2 AND value IS NOT NULL ORDER BY key",
        )
        .map_err(backend)?;
    let mut rows = st.query(params![table.name(), prefix]).map_err(backend)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(backend)? {
        let key: String = r.get(0).map_err(backend)?;
        if !key.starts_with(prefix) {
            break;
        }
        let version: i64 = r.get(1).map_err(backend)?;
        let text: String = r.get(2).map_err(backend)?;
        let row = Row { version: to_version(version, table, &key)?, value: decode(table, &key, &text)? };
        out.push((key, row));
    }
    Ok(out)
}

impl SqliteDb {
    /// Opens (creating if needed) the database at `path`; `":memory:"` for a private
    /// in-memory one. An existing file keeps its rows and commit counter.
    pub fn open(path: &str, clock: Clock) -> Result<SqliteDb, DbError> {
        SqliteDb::open_with_busy_timeout(path, clock, BUSY_TIMEOUT)
    }

    /// [`SqliteDb::open`] waiting at most `busy_timeout` for another connection's lock.
    pub fn open_with_busy_timeout(
        path: &str,
        clock: Clock,
        busy_timeout: std::time::Duration,
    ) -> Result<SqliteDb, DbError> {
        let conn = Connection::open(path).map_err(backend)?;
        // journal_mode answers with a row ("wal", or "memory" for :memory:).
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(backend)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL;").map_err(backend)?;
        conn.busy_timeout(busy_timeout).map_err(backend)?;
        let old_schema: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')", [], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        if old_schema {
            return Err(DbError::Backend(format!(
                "sqlite: {path} has the old schema (one global commit counter); remove the file and run again"
            )));
        }
        conn.execute_batch(SCHEMA).map_err(backend)?;
        let seq: i64 =
            conn.query_row("SELECT COALESCE(MAX(commit_seq), 0) FROM rows", [], |r| r.get(0)).map_err(backend)?;
        let seq = u64::try_from(seq).map_err(|_| DbError::Backend(format!("sqlite: invalid commit counter {seq}")))?;
        Ok(SqliteDb {
            inner: Arc::new(Inner { conn: Mutex::new(Conn { conn, observers: Vec::new(), seq }), clock }),
            path: path.to_string(),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Feeds every commit to `monitor` (the invariant checker and event digest).
    pub fn observe(&self, monitor: MonitorRef) {
        self.on_commit(Box::new(move |now_ms, commit| {
            guard(&monitor).on_commit(now_ms, commit);
        }));
    }

    /// Calls `hook` after each commit, in commit order.
    pub fn on_commit(&self, hook: CommitHook) {
        self.lock().observers.push(hook);
    }

    fn lock(&self) -> MutexGuard<'_, Conn> {
        // A panicking observer poisons the lock; the SQLite transaction it interrupted has
        // already committed or rolled back, so the connection is still consistent.
        guard(&self.inner.conn)
    }

    /// The blocking body of [`Database::execute`].
    pub fn execute_blocking(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, DbError> {
        validate_ops(&ops)?;
        let mut guard = self.lock();
        let Conn { conn, observers, seq: last_seq } = &mut *guard;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;

        // Every Expect is checked before anything is written (dropping `tx` rolls back).
        // Each write's new version is its row's stored version (a tombstone's too) plus one.
        let mut new_versions = Vec::new();
        for op in &ops {
            if let Op::Put { table, key, expect, .. } | Op::Delete { table, key, expect, .. } = op {
                let stored = version_of(&tx, *table, key)?;
                let found = stored.filter(|(_, live)| *live).map(|(v, _)| v);
                if !expect_holds(*expect, found) {
                    return Err(conflict(*table, key, *expect, found));
                }
                new_versions.push(stored.map_or(1, |(v, _)| v + 1));
            }
        }
        let has_writes = !new_versions.is_empty();
        let seq = if has_writes { *last_seq + 1 } else { *last_seq };

        // Reads see the state before this transaction's writes, so do them first.
        let mut results = Vec::with_capacity(ops.len());
        let mut versions = new_versions.iter();
        for op in &ops {
            results.push(match op {
                Op::Get { table, key } => OpResult::Row(get_row(&tx, *table, key)?),
                Op::Scan { table, prefix } => OpResult::Rows(scan(&tx, *table, prefix)?),
                Op::Snapshot { table } => OpResult::Snapshot(scan(&tx, *table, "")?.into_iter().collect()),
                Op::Put { .. } => OpResult::Written(versions.next().copied().unwrap_or_default()),
                Op::Delete { .. } => {
                    versions.next();
                    OpResult::Deleted
                }
            });
        }
        if !has_writes {
            tx.commit().map_err(backend)?;
            return Ok(results);
        }

        let mut writes = Vec::new();
        let commit_seq = from_version(seq)?;
        for (op, new_version) in
            ops.into_iter().filter(|op| matches!(op, Op::Put { .. } | Op::Delete { .. })).zip(new_versions)
        {
            match op {
                Op::Put { table, key, value, .. } => {
                    let old = get_row(&tx, table, &key)?.map(|r| r.value);
                    let text = encode(table, &key, &value)?;
                    let version = from_version(new_version)?;
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO rows (tbl, key, version, value, commit_seq) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut st| st.execute(params![table.name(), key, version, text, commit_seq]))
                    .map_err(backend)?;
                    writes.push(Write { table, key, old, new: Some(value) });
                }
                Op::Delete { table, key, .. } => {
                    let old = get_row(&tx, table, &key)?.map(|r| r.value);
                    // The tombstone keeps the row's last version (0 if it never existed), so a
                    // re-insert continues from it, and carries this commit's number, so the
                    // counter recovered at open counts this commit too.
                    let version = from_version(new_version - 1)?;
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO rows (tbl, key, version, value, commit_seq) VALUES (?1, ?2, ?3, NULL, ?4)",
                    )
                    .and_then(|mut st| st.execute(params![table.name(), key, version, commit_seq]))
                    .map_err(backend)?;
                    writes.push(Write { table, key, old, new: None });
                }
                Op::Get { .. } | Op::Scan { .. } | Op::Snapshot { .. } => {}
            }
        }
        tx.commit().map_err(backend)?;
        *last_seq = seq;

        let commit = Commit { seq, writes };
        let now = self.inner.clock.now_ms();
        for observe in observers.iter() {
            observe(now, &commit);
        }
        Ok(results)
    }

    /// Removes a database file and its WAL and shared-memory files (missing files are fine).
    pub fn remove_files(path: &str) -> std::io::Result<()> {
        if path == ":memory:" {
            return Ok(());
        }
        for p in [path.to_string(), format!("{path}-wal"), format!("{path}-shm")] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Database for SqliteDb {
    async fn execute(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, DbError> {
        // SQLite is blocking: run the transaction on the blocking pool so that the other
        // services' tasks keep running meanwhile.
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.execute_blocking(ops))
            .await
            .map_err(|e| DbError::Backend(format!("sqlite worker failed: {e}")))?
    }
}
