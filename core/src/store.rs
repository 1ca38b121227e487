//! The database seam's data model and an in-memory engine for it.
//!
//! A transaction is a list of operations executed atomically: reads see the state before
//! the transaction, writes apply only if every `Expect` holds (optimistic concurrency, the
//! way Galera certifies a write set). Row versions come from one commit counter, so a
//! version never repeats for a key even across delete and re-insert (no ABA).
//!
//! The simulator's database node runs [`MemStore`]; the real build's SQLite backend gives
//! the same semantics, and both pass the same conformance test.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{Record, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    Any,
    Absent,
    Version(u64),
}

// Records are moved, not copied, from op to store; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Get {
        table: Table,
        key: String,
    },
    /// Every row of `table` whose key starts with `prefix`, in key order.
    Scan {
        table: Table,
        prefix: String,
    },
    /// A consistent read view of a whole table, shared rather than copied: the way a reader
    /// of many rows (the scheduler reading every resource provider) avoids copying them.
    Snapshot {
        table: Table,
    },
    Put {
        table: Table,
        key: String,
        value: Record,
        expect: Expect,
    },
    Delete {
        table: Table,
        key: String,
        expect: Expect,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub version: u64,
    pub value: Record,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OpResult {
    Row(Option<Row>),
    Rows(Vec<(String, Row)>),
    Snapshot(Snapshot),
    /// A put's new version.
    Written(u64),
    Deleted,
}

/// What a database call can fail with, as oslo.db and the MySQL client tell nova. Which of
/// them nova's `wrap_db_retry` retries is [`crate::db_retry::DbRetryPolicy::retries`].
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum DbError {
    /// An `Expect` did not hold: somebody else wrote first (nova's `UPDATE ... WHERE
    /// task_state IN (...)` matching no row). Nothing applied. Retry after re-reading.
    #[error("conflict on {table}/{key}: expected {expected:?}, found version {found:?}; re-read the row and retry")]
    Conflict { table: String, key: String, expected: Expect, found: Option<u64> },
    /// MySQL 1213 (ER_LOCK_DEADLOCK; Galera reports a failed certification the same way):
    /// the transaction was rolled back, nothing of it applied. oslo.db's DBDeadlock.
    #[error(
        "deadlock found when trying to get lock (MySQL 1213): {0}; the transaction was rolled back, nothing applied; retry it"
    )]
    Deadlock(String),
    /// MySQL 1205 (ER_LOCK_WAIT_TIMEOUT): `innodb_lock_wait_timeout` passed waiting for a row
    /// lock; the transaction was rolled back. oslo.db maps it to DBDeadlock too.
    #[error(
        "lock wait timeout exceeded (MySQL 1205): {0}; the transaction was rolled back, nothing applied; retry it"
    )]
    LockWaitTimeout(String),
    /// MySQL 1047 as Galera uses it: the node is outside the primary component and refuses
    /// every statement; nothing ran. oslo.db raises DBConnectionError for it.
    #[error(
        "WSREP has not yet prepared node for application use (MySQL 1047) on {node}: the Galera node is not in the primary component; nothing ran; send the transaction to a primary node"
    )]
    NonPrimary { node: String },
    /// The connection failed before the transaction was sent (MySQL client 2003 can't
    /// connect, 2006 server has gone away): nothing ran, so a retry is safe. oslo.db's
    /// DBConnectionError, which nova does not retry (`use_db_reconnect=False`).
    #[error(
        "lost connection to the database before the transaction was sent (MySQL 2006): {0}; nothing ran, it is safe to retry"
    )]
    ConnectionLost(String),
    /// The transaction was sent and its answer was lost (MySQL client 2013, lost connection
    /// during query): it may or may not have committed. Never a failure that did not happen:
    /// re-read the rows before deciding, and never blindly send it again.
    #[error(
        "commit in doubt (MySQL 2013, connection lost after the transaction was sent): {0}; it may or may not have committed; re-read the rows before acting"
    )]
    InDoubt(String),
    #[error("invalid transaction: {0}")]
    Invalid(String),
    #[error("database backend error: {0}")]
    Backend(String),
}

impl DbError {
    /// The MySQL error code behind this error, server-side (1047, 1205, 1213) or the
    /// client's (2006, 2013).
    pub fn mysql_code(&self) -> Option<u16> {
        match self {
            DbError::Deadlock(_) => Some(1213),
            DbError::LockWaitTimeout(_) => Some(1205),
            DbError::NonPrimary { .. } => Some(1047),
            DbError::ConnectionLost(_) => Some(2006),
            DbError::InDoubt(_) => Some(2013),
            DbError::Conflict { .. } | DbError::Invalid(_) | DbError::Backend(_) => None,
        }
    }

    /// oslo.db's DBDeadlock: MySQL 1213 and 1205. The transaction was rolled back.
    pub fn is_deadlock(&self) -> bool {
        matches!(self, DbError::Deadlock(_) | DbError::LockWaitTimeout(_))
    }

    /// The transaction may have committed: its outcome is unknown to the caller.
    pub fn is_in_doubt(&self) -> bool {
        matches!(self, DbError::InDoubt(_))
    }
}

/// One committed write, as observers (invariant checker, event log) see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Write {
    pub table: Table,
    pub key: String,
    /// The row before the commit, if any.
    pub old: Option<Record>,
    /// The row after the commit; `None` for a delete.
    pub new: Option<Record>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub seq: u64,
    pub writes: Vec<Write>,
}

/// Checks the shape of a transaction that does not depend on data: at most one write per key.
pub fn validate_ops(ops: &[Op]) -> Result<(), DbError> {
    fn target(op: &Op) -> Option<(Table, &str)> {
        match op {
            Op::Put { table, key, .. } | Op::Delete { table, key, .. } => Some((*table, key.as_str())),
            _ => None,
        }
    }
    let twice =
        |table: Table, key: &str| DbError::Invalid(format!("two writes to {}/{key} in one transaction", table.name()));
    // Transactions are short: comparing pairs beats building a set.
    if ops.len() <= 16 {
        for (i, a) in ops.iter().enumerate() {
            if let Some(a) = target(a) {
                if ops[i + 1..].iter().any(|b| target(b) == Some(a)) {
                    return Err(twice(a.0, a.1));
                }
            }
        }
        return Ok(());
    }
    let mut written = std::collections::BTreeSet::new();
    for (table, key) in ops.iter().filter_map(target) {
        if !written.insert((table, key)) {
            return Err(twice(table, key));
        }
    }
    Ok(())
}

fn expect_holds(expect: Expect, found: Option<u64>) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Absent => found.is_none(),
        Expect::Version(v) => found == Some(v),
    }
}

pub fn conflict(table: Table, key: &str, expected: Expect, found: Option<u64>) -> DbError {
    DbError::Conflict { table: table.name().to_string(), key: key.to_string(), expected, found }
}

/// A table as of one moment: a persistent map, so taking one is O(1) and later writes copy
/// only the paths they change. Rows are shared: a write to a node some reader's snapshot
/// still holds copies the node's keys and pointers, not its 64 records.
pub type Snapshot = imbl::OrdMap<String, Arc<Row>>;

/// One difference between two snapshots (`Snapshot::diff` skips the subtrees they share).
pub use imbl::ordmap::DiffItem;

/// A replaced row's value: moved out when no snapshot holds the row any more.
fn unshared_value(row: Arc<Row>) -> Record {
    Arc::try_unwrap(row).map_or_else(|shared| shared.value.clone(), |row| row.value)
}

#[derive(Debug, Default, Clone)]
pub struct MemStore {
    tables: BTreeMap<Table, Snapshot>,
    seq: u64,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Executes `ops` atomically. Returns the results and, if anything was written, the commit.
    pub fn execute(&mut self, ops: Vec<Op>) -> Result<(Vec<OpResult>, Option<Commit>), DbError> {
        validate_ops(&ops)?;
        for op in &ops {
            if let Op::Put { table, key, expect, .. } | Op::Delete { table, key, expect, .. } = op {
                if *expect == Expect::Any {
                    continue;
                }
                let found = self.tables.get(table).and_then(|t| t.get(key)).map(|r| r.version);
                if !expect_holds(*expect, found) {
                    return Err(conflict(*table, key, *expect, found));
                }
            }
        }
        let has_writes = ops.iter().any(|op| matches!(op, Op::Put { .. } | Op::Delete { .. }));
        let seq = if has_writes { self.seq + 1 } else { self.seq };
        let mut results = Vec::with_capacity(ops.len());
        let mut writes = Vec::new();
        // Reads see the state before this transaction's writes, so do them first.
        for op in &ops {
            results.push(match op {
                Op::Get { table, key } => {
                    OpResult::Row(self.tables.get(table).and_then(|t| t.get(key)).map(|r| Row::clone(r)))
                }
                Op::Scan { table, prefix } => OpResult::Rows(match self.tables.get(table) {
                    None => Vec::new(),
                    // A whole table: its size is known, so the result is allocated once.
                    Some(t) if prefix.is_empty() => {
                        let mut rows = Vec::with_capacity(t.len());
                        rows.extend(t.iter().map(|(k, r)| (k.clone(), Row::clone(r))));
                        rows
                    }
                    Some(t) => t
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                        .map(|(k, r)| (k.clone(), Row::clone(r)))
                        .collect(),
                }),
                Op::Snapshot { table } => OpResult::Snapshot(self.tables.get(table).cloned().unwrap_or_default()),
                Op::Put { .. } => OpResult::Written(seq),
                Op::Delete { .. } => OpResult::Deleted,
            });
        }
        for op in ops {
            match op {
                Op::Put { table, key, value, .. } => {
                    let t = self.tables.entry(table).or_default();
                    let old = t.insert(key.clone(), Arc::new(Row { version: seq, value: value.clone() }));
                    writes.push(Write { table, key, old: old.map(unshared_value), new: Some(value) });
                }
                Op::Delete { table, key, .. } => {
                    let old = self.tables.get_mut(&table).and_then(|t| t.remove(&key));
                    writes.push(Write { table, key, old: old.map(unshared_value), new: None });
                }
                _ => {}
            }
        }
        if has_writes {
            self.seq = seq;
            Ok((results, Some(Commit { seq, writes })))
        } else {
            Ok((results, None))
        }
    }

    pub fn len(&self, table: Table) -> usize {
        self.tables.get(&table).map_or(0, |t| t.len())
    }

    pub fn is_empty(&self) -> bool {
        self.tables.values().all(|t| t.is_empty())
    }

    /// The same rows (key, version and value) in every table, and the same commit counter:
    /// two replicas that applied the same commits in the same order.
    pub fn rows_equal(&self, other: &MemStore) -> bool {
        let rows = |m: &MemStore| -> Vec<(Table, Snapshot)> {
            m.tables.iter().filter(|(_, t)| !t.is_empty()).map(|(k, t)| (*k, t.clone())).collect()
        };
        self.seq == other.seq && rows(self) == rows(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> Op {
        Op::Put {
            table: Table::Services,
            key: key.into(),
            value: Record::ProjectUsage(Default::default()),
            expect: Expect::Any,
        }
    }

    /// Short transactions compare pairs, long ones use a set: both refuse a key written
    /// twice, wherever the second write is, and accept distinct keys and reads of one key.
    #[test]
    fn a_key_written_twice_is_refused_in_short_and_long_transactions() {
        for len in [2, 3, 16, 17, 40] {
            let distinct: Vec<Op> = (0..len).map(|i| put(&format!("k{i}"))).collect();
            assert_eq!(validate_ops(&distinct), Ok(()), "{len} distinct keys");
            for at in 1..len {
                let mut ops = distinct.clone();
                ops[at] = put("k0");
                let err = validate_ops(&ops).expect_err("k0 twice");
                assert!(err.to_string().contains("two writes to services/k0"), "{err}");
            }
            let mut reads = distinct.clone();
            reads.push(Op::Get { table: Table::Services, key: "k0".into() });
            assert_eq!(validate_ops(&reads), Ok(()), "a read of a written key is fine");
        }
        let other_table = vec![put("k"), Op::Delete { table: Table::Instances, key: "k".into(), expect: Expect::Any }];
        assert_eq!(validate_ops(&other_table), Ok(()), "same key, other table");
    }
}
