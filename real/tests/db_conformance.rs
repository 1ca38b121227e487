//! Database seam conformance: the same transactions against the reference engine
//! (`MemStore`, wrapped in a small async adapter) and `SqliteDb` must give identical
//! results, identical commits (seq, old and new rows) and identical final contents, up to
//! how each numbers row versions: MemStore from one commit counter, SQLite per row. What a
//! compare-and-swap can see must agree: the order of each row's versions. So versions are
//! compared as ordinals (a row's first version is 1, its next 2, ...), and an expectation
//! written against MemStore's versions is translated to SQLite's through the ordinals.
#![cfg(not(madsim))]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use stackbed_core::model::{Inventory, Millis, ProjectUsage, Provider, Record, Resources, Table};
use stackbed_core::store::{Commit, DbError, Expect, MemStore, Op, OpResult, Row};
use stackbed_real::sqlite::SqliteDb;
use stackbed_services::clock::Clock;
use stackbed_services::monitor::Monitor;
use stackbed_services::seams::Database;

/// MemStore behind the async seam, keeping the commits it returns.
#[derive(Default)]
struct MemDb {
    store: Mutex<MemStore>,
    commits: Arc<Mutex<Vec<Commit>>>,
}

#[async_trait]
impl Database for MemDb {
    async fn execute(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, DbError> {
        let (results, commit) = self.store.lock().unwrap().execute(ops)?;
        if let Some(c) = commit {
            self.commits.lock().unwrap().push(c);
        }
        Ok(results)
    }
}

fn sqlite() -> (SqliteDb, Arc<Mutex<Vec<Commit>>>) {
    let db = SqliteDb::open(":memory:", Clock::start()).unwrap();
    let seen: Arc<Mutex<Vec<Commit>>> = Arc::default();
    let s = seen.clone();
    db.on_commit(Box::new(move |_: Millis, c: &Commit| s.lock().unwrap().push(c.clone())));
    (db, seen)
}

fn usage(n: u64) -> Record {
    Record::ProjectUsage(ProjectUsage { instances: n, cores: 2 * n, ram_mb: 512 * n })
}

/// A record with floats that do not round-trip through JSON without enough precision.
fn provider(host: &str, ratio: f64) -> Record {
    let inv = Inventory::new(32, 0, ratio);
    Record::Provider(Provider { host: host.into(), inventories: [inv, inv, inv], used: Resources::new(1, 2, 3) })
}

fn get(table: Table, key: &str) -> Op {
    Op::Get { table, key: key.into() }
}
fn scan(table: Table, prefix: &str) -> Op {
    Op::Scan { table, prefix: prefix.into() }
}
fn put(table: Table, key: &str, value: Record, expect: Expect) -> Op {
    Op::Put { table, key: key.into(), value, expect }
}
fn del(table: Table, key: &str, expect: Expect) -> Op {
    Op::Delete { table, key: key.into(), expect }
}

const T: Table = Table::ProjectUsages;
const U: Table = Table::Instances;

type Outcome = Result<Vec<OpResult>, DbError>;

struct Case {
    name: &'static str,
    txns: Vec<Vec<Op>>,
    /// Checks on the reference outcomes, so that each case tests what its name says.
    check: fn(&[Outcome], &[Commit]),
}

fn written(o: &Outcome) -> Vec<u64> {
    o.as_ref().unwrap().iter().filter_map(|r| if let OpResult::Written(v) = r { Some(*v) } else { None }).collect()
}

fn row_version(o: &Outcome, i: usize) -> Option<u64> {
    match &o.as_ref().unwrap()[i] {
        OpResult::Row(r) => r.as_ref().map(|r| r.version),
        other => panic!("not a row: {other:?}"),
    }
}

fn keys(o: &Outcome, i: usize) -> Vec<String> {
    match &o.as_ref().unwrap()[i] {
        OpResult::Rows(r) => r.iter().map(|(k, _)| k.clone()).collect(),
        other => panic!("not rows: {other:?}"),
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "put_then_get_reads_see_pre_transaction_state",
            txns: vec![
                vec![put(T, "a", usage(1), Expect::Absent)],
                vec![get(T, "a"), get(T, "missing"), get(U, "a")],
                vec![get(T, "a"), put(T, "a", usage(2), Expect::Version(1)), get(T, "a")],
                vec![get(T, "a")],
            ],
            check: |o, c| {
                assert_eq!(written(&o[0]), [1]);
                assert_eq!(
                    (row_version(&o[1], 0), row_version(&o[1], 1), row_version(&o[1], 2)),
                    (Some(1), None, None)
                );
                assert_eq!((row_version(&o[2], 0), row_version(&o[2], 2)), (Some(1), Some(1)));
                assert_eq!(row_version(&o[3], 0), Some(2));
                assert_eq!(c.len(), 2);
            },
        },
        Case {
            name: "scan_by_prefix_in_key_order",
            txns: vec![
                ["host-2", "host-10", "host-1", "hos", "hosu", "a", "zé", "z\u{1F600}", "host-1a", ""]
                    .iter()
                    .enumerate()
                    .map(|(i, k)| put(T, k, usage(i as u64), Expect::Any))
                    .chain([put(U, "host-3", usage(9), Expect::Any)])
                    .collect(),
                vec![
                    scan(T, "host-"),
                    scan(T, ""),
                    scan(T, "hos"),
                    scan(T, "zzz"),
                    scan(T, "z"),
                    scan(U, "host-"),
                    scan(Table::Users, ""),
                ],
            ],
            check: |o, _| {
                assert_eq!(keys(&o[1], 0), ["host-1", "host-10", "host-1a", "host-2"]);
                assert_eq!(keys(&o[1], 1).len(), 10);
                assert_eq!(keys(&o[1], 2), ["hos", "host-1", "host-10", "host-1a", "host-2", "hosu"]);
                assert!(keys(&o[1], 3).is_empty());
                assert_eq!(keys(&o[1], 4), ["zé", "z\u{1F600}"]);
                assert_eq!(keys(&o[1], 5), ["host-3"]);
                assert!(keys(&o[1], 6).is_empty());
            },
        },
        Case {
            name: "expect_absent_and_version_conflicts",
            txns: vec![
                vec![put(T, "a", usage(1), Expect::Absent)],
                vec![put(T, "a", usage(2), Expect::Absent)],
                vec![put(T, "a", usage(2), Expect::Version(5))],
                vec![del(T, "a", Expect::Version(7))],
                vec![del(T, "b", Expect::Version(1))],
                vec![put(T, "b", usage(1), Expect::Version(1))],
                vec![del(T, "a", Expect::Absent)],
                vec![put(T, "a", usage(3), Expect::Version(1))],
                vec![del(T, "a", Expect::Version(2))],
            ],
            check: |o, c| {
                for (i, found) in [(1, Some(1)), (2, Some(1)), (3, Some(1)), (4, None), (5, None), (6, Some(1))] {
                    match &o[i] {
                        Err(DbError::Conflict { found: f, .. }) => assert_eq!(*f, found, "txn {i}"),
                        other => panic!("txn {i}: expected a conflict, got {other:?}"),
                    }
                }
                assert_eq!(written(&o[7]), [2]);
                assert!(o[8].is_ok());
                assert_eq!(c.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3]);
            },
        },
        Case {
            name: "all_or_nothing_on_conflict",
            txns: vec![
                vec![put(T, "a", usage(1), Expect::Any)],
                vec![
                    put(T, "x", usage(1), Expect::Any),
                    del(T, "a", Expect::Any),
                    put(U, "y", usage(1), Expect::Absent),
                    put(T, "a", usage(5), Expect::Absent),
                ],
                vec![
                    put(T, "x", usage(1), Expect::Any),
                    put(T, "a", usage(9), Expect::Version(1)),
                    put(T, "z", usage(1), Expect::Version(4)),
                ],
                vec![scan(T, ""), scan(U, "")],
                vec![put(T, "x", usage(2), Expect::Any)],
            ],
            check: |o, c| {
                assert!(matches!(o[1], Err(DbError::Invalid(_))), "{:?}", o[1]);
                assert!(matches!(o[2], Err(DbError::Conflict { .. })), "{:?}", o[2]);
                assert_eq!(keys(&o[3], 0), ["a"]);
                assert!(keys(&o[3], 1).is_empty());
                // Failed transactions did not consume a commit number.
                assert_eq!(written(&o[4]), [2]);
                assert_eq!(c.len(), 2);
            },
        },
        Case {
            name: "first_failing_expect_is_reported",
            txns: vec![
                vec![put(T, "a", usage(1), Expect::Any), put(T, "b", usage(1), Expect::Any)],
                vec![put(T, "b", usage(2), Expect::Absent), put(T, "a", usage(2), Expect::Absent)],
            ],
            check: |o, _| match &o[1] {
                Err(DbError::Conflict { key, .. }) => assert_eq!(key, "b"),
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "two_writes_to_one_key_rejected",
            txns: vec![
                vec![put(T, "a", usage(1), Expect::Any), put(T, "a", usage(2), Expect::Any)],
                vec![put(T, "a", usage(1), Expect::Any), del(T, "a", Expect::Any)],
                vec![del(T, "a", Expect::Any), del(T, "a", Expect::Any)],
                vec![put(T, "a", usage(1), Expect::Any), put(U, "a", usage(2), Expect::Any), get(T, "a"), get(T, "a")],
                vec![scan(T, ""), scan(U, "")],
            ],
            check: |o, c| {
                for o in &o[..3] {
                    assert!(matches!(o, Err(DbError::Invalid(_))), "{o:?}");
                }
                assert_eq!(written(&o[3]), [1, 1]);
                assert_eq!((keys(&o[4], 0).len(), keys(&o[4], 1).len()), (1, 1));
                assert_eq!(c.len(), 1);
            },
        },
        Case {
            name: "versions_monotonic_across_delete_and_reinsert",
            txns: vec![
                vec![put(T, "a", usage(1), Expect::Absent)],
                vec![put(T, "other", usage(1), Expect::Absent)],
                vec![del(T, "a", Expect::Version(1))],
                vec![get(T, "a")],
                vec![put(T, "a", usage(1), Expect::Absent)],
                vec![put(T, "a", usage(2), Expect::Version(1))],
                vec![get(T, "a")],
            ],
            check: |o, _| {
                assert_eq!(row_version(&o[3], 0), None);
                assert_eq!(written(&o[4]), [4]);
                assert!(matches!(o[5], Err(DbError::Conflict { found: Some(4), .. })), "{:?}", o[5]);
                assert_eq!(row_version(&o[6], 0), Some(4));
            },
        },
        Case {
            name: "read_only_and_empty_transactions_commit_nothing",
            txns: vec![
                vec![],
                vec![get(T, "a"), scan(T, "")],
                vec![put(T, "a", usage(1), Expect::Any)],
                vec![get(T, "a")],
            ],
            check: |o, c| {
                assert!(o[0].as_ref().unwrap().is_empty());
                assert_eq!(written(&o[2]), [1]);
                assert_eq!(c.len(), 1);
            },
        },
        Case {
            name: "commits_carry_old_and_new_rows",
            txns: vec![
                vec![put(T, "a", usage(1), Expect::Any), put(T, "b", usage(1), Expect::Any)],
                vec![
                    put(T, "a", usage(2), Expect::Version(1)),
                    del(T, "b", Expect::Any),
                    del(T, "never", Expect::Any),
                    put(T, "c", usage(3), Expect::Absent),
                ],
            ],
            check: |_, c| {
                assert_eq!(c.len(), 2);
                let w = &c[1].writes;
                assert_eq!(c[1].seq, 2);
                assert_eq!((w[0].old.clone(), w[0].new.clone()), (Some(usage(1)), Some(usage(2))));
                assert_eq!((w[1].old.clone(), w[1].new.clone()), (Some(usage(1)), None));
                assert_eq!((w[2].old.clone(), w[2].new.clone()), (None, None));
                assert_eq!((w[3].old.clone(), w[3].new.clone()), (None, Some(usage(3))));
            },
        },
        Case {
            name: "records_round_trip_exactly",
            txns: vec![
                vec![
                    put(Table::Providers, "p1", provider("p1", 0.1 + 0.2), Expect::Absent),
                    put(Table::Providers, "p2", provider("p2", 1.0 / 3.0), Expect::Absent),
                ],
                vec![put(Table::Providers, "p1", provider("p1", 4.0), Expect::Version(1)), get(Table::Providers, "p2")],
            ],
            check: |o, c| {
                match &o[1].as_ref().unwrap()[1] {
                    OpResult::Row(Some(r)) => assert_eq!(r.value, provider("p2", 1.0 / 3.0)),
                    other => panic!("{other:?}"),
                }
                assert_eq!(c[1].writes[0].old, Some(provider("p1", 0.1 + 0.2)));
            },
        },
    ]
}

/// Final contents of every table, read through the seam.
async fn dump(db: &dyn Database) -> Outcome {
    db.execute(Table::ALL.iter().map(|t| scan(*t, "")).collect()).await
}

/// One backend's versions of each row, in the order they were written: version to ordinal
/// and back.
#[derive(Default)]
struct Ordinals(BTreeMap<(Table, String), Vec<u64>>);

impl Ordinals {
    /// The ordinal of `v` among the row's versions; a version not seen yet (a new write)
    /// becomes the next one.
    fn of(&mut self, table: Table, key: &str, v: u64) -> u64 {
        let h = self.0.entry((table, key.to_string())).or_default();
        match h.iter().position(|x| *x == v) {
            Some(i) => i as u64 + 1,
            None => {
                h.push(v);
                h.len() as u64
            }
        }
    }

    /// The ordinal of an expected version; 0 for a version the row never had.
    fn of_expected(&self, table: Table, key: &str, expect: Expect) -> Expect {
        match expect {
            Expect::Version(v) => Expect::Version(
                self.0
                    .get(&(table, key.to_string()))
                    .and_then(|h| h.iter().position(|x| *x == v))
                    .map_or(0, |i| i as u64 + 1),
            ),
            other => other,
        }
    }

    /// The row's version with this ordinal; one it can never have for ordinal 0 or past
    /// its last.
    fn version(&self, table: Table, key: &str, ordinal: u64) -> u64 {
        let h = self.0.get(&(table, key.to_string()));
        match h.and_then(|h| h.get((ordinal as usize).wrapping_sub(1))) {
            Some(v) => *v,
            None => u64::MAX - ordinal,
        }
    }

    fn row(&mut self, table: Table, key: &str, row: &Row) -> Row {
        Row { version: self.of(table, key, row.version), value: row.value.clone() }
    }

    /// `outcome` of `ops` with every version replaced by its ordinal.
    fn normalise(&mut self, ops: &[Op], outcome: &Outcome) -> Outcome {
        match outcome {
            Ok(results) => Ok(ops
                .iter()
                .zip(results)
                .map(|(op, r)| match (op, r) {
                    (Op::Put { table, key, .. }, OpResult::Written(v)) => OpResult::Written(self.of(*table, key, *v)),
                    (Op::Get { table, key }, OpResult::Row(r)) => {
                        OpResult::Row(r.as_ref().map(|r| self.row(*table, key, r)))
                    }
                    (Op::Scan { table, .. }, OpResult::Rows(rows)) => {
                        OpResult::Rows(rows.iter().map(|(k, r)| (k.clone(), self.row(*table, k, r))).collect())
                    }
                    (Op::Snapshot { table }, OpResult::Snapshot(rows)) => {
                        OpResult::Snapshot(rows.iter().map(|(k, r)| (k.clone(), self.row(*table, k, r))).collect())
                    }
                    (_, other) => other.clone(),
                })
                .collect()),
            Err(DbError::Conflict { table, key, expected, found }) => {
                let t = *Table::ALL.iter().find(|t| t.name() == table).expect("a known table");
                Err(DbError::Conflict {
                    table: table.clone(),
                    key: key.clone(),
                    expected: self.of_expected(t, key, *expected),
                    found: found.map(|v| self.of(t, key, v)),
                })
            }
            Err(e) => Err(e.clone()),
        }
    }
}

/// `ops` written against MemStore's versions, for SQLite: each expected version becomes
/// SQLite's version with the same ordinal.
fn translate(ops: &[Op], mem: &Ordinals, sql: &Ordinals) -> Vec<Op> {
    let tr = |table: Table, key: &str, e: Expect| match mem.of_expected(table, key, e) {
        Expect::Version(ordinal) => Expect::Version(sql.version(table, key, ordinal)),
        other => other,
    };
    ops.iter()
        .map(|op| match op {
            Op::Put { table, key, value, expect } => {
                Op::Put { table: *table, key: key.clone(), value: value.clone(), expect: tr(*table, key, *expect) }
            }
            Op::Delete { table, key, expect } => {
                Op::Delete { table: *table, key: key.clone(), expect: tr(*table, key, *expect) }
            }
            other => other.clone(),
        })
        .collect()
}

/// Runs `txns` on both backends in lockstep; returns MemStore's raw outcomes and both
/// backends' normalised ones, and the final contents of both, normalised.
async fn run_both(
    mem: &MemDb,
    sql: &SqliteDb,
    txns: &[Vec<Op>],
) -> (Vec<Outcome>, Vec<Outcome>, Vec<Outcome>, [Outcome; 2]) {
    let (mut mo, mut so) = (Ordinals::default(), Ordinals::default());
    let (mut raw, mut mem_out, mut sql_out) = (Vec::new(), Vec::new(), Vec::new());
    for ops in txns {
        let sql_ops = translate(ops, &mo, &so);
        let m = mem.execute(ops.clone()).await;
        let s = sql.execute(sql_ops.clone()).await;
        mem_out.push(mo.normalise(ops, &m));
        sql_out.push(so.normalise(&sql_ops, &s));
        raw.push(m);
    }
    let all: Vec<Op> = Table::ALL.iter().map(|t| scan(*t, "")).collect();
    let dumps = [mo.normalise(&all, &dump(mem).await), so.normalise(&all, &dump(sql).await)];
    (raw, mem_out, sql_out, dumps)
}

#[tokio::test]
async fn sqlite_matches_memstore_on_every_case() {
    for case in cases() {
        let mem = MemDb::default();
        let (sql, sql_commits) = sqlite();
        let (raw, mem_out, sql_out, [mem_dump, sql_dump]) = run_both(&mem, &sql, &case.txns).await;
        let mem_commits = mem.commits.lock().unwrap().clone();
        (case.check)(&raw, &mem_commits);
        assert_eq!(sql_out, mem_out, "case {}: results differ", case.name);
        assert_eq!(*sql_commits.lock().unwrap(), mem_commits, "case {}: commits differ", case.name);
        assert_eq!(sql_dump, mem_dump, "case {}: final contents differ", case.name);
    }
}

#[tokio::test]
async fn random_transactions_match_memstore() {
    // A deterministic pseudo-random mix over a few keys, so that conflicts, deletes and
    // re-inserts interleave in every combination.
    let mem = MemDb::default();
    let (sql, sql_commits) = sqlite();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let tables = [T, U];
    let key_names = ["k1", "k2", "k10", "j"];
    let mut txns = Vec::new();
    for round in 0..400 {
        let mut ops = Vec::new();
        for _ in 0..=next(4) {
            let table = tables[next(2) as usize];
            let key = key_names[next(4) as usize];
            let expect = match next(4) {
                0 => Expect::Any,
                1 => Expect::Absent,
                _ => Expect::Version(next(round / 2 + 2)),
            };
            ops.push(match next(5) {
                0 => get(table, key),
                1 => scan(table, &key[..1]),
                2 => del(table, key, expect),
                _ => put(table, key, usage(next(100)), expect),
            });
        }
        txns.push(ops);
    }
    let (_, mem_out, sql_out, [mem_dump, sql_dump]) = run_both(&mem, &sql, &txns).await;
    for (round, (s, m)) in sql_out.iter().zip(&mem_out).enumerate() {
        assert_eq!(s, m, "round {round}: {:?}", txns[round]);
    }
    assert_eq!(*sql_commits.lock().unwrap(), *mem.commits.lock().unwrap());
    assert!(mem.commits.lock().unwrap().len() > 50, "the mix should commit often");
    assert_eq!(sql_dump, mem_dump);
}

/// Versions are per row: a write to one row leaves every other row's version alone, and a
/// new row starts at 1 however many commits came before.
#[tokio::test]
async fn versions_are_per_row() {
    let (db, _) = sqlite();
    assert_eq!(written(&db.execute(vec![put(T, "a", usage(1), Expect::Absent)]).await), [1]);
    for n in 0..5 {
        db.execute(vec![put(T, "b", usage(n), Expect::Any)]).await.unwrap();
    }
    assert_eq!(row_version(&db.execute(vec![get(T, "a")]).await, 0), Some(1), "b's writes left a alone");
    assert_eq!(written(&db.execute(vec![put(T, "a", usage(2), Expect::Version(1))]).await), [2]);
    assert_eq!(written(&db.execute(vec![put(U, "c", usage(1), Expect::Absent)]).await), [1]);
    // A delete keeps a tombstone: the re-insert continues from the last version.
    db.execute(vec![del(T, "a", Expect::Version(2))]).await.unwrap();
    assert_eq!(row_version(&db.execute(vec![get(T, "a")]).await, 0), None);
    assert_eq!(written(&db.execute(vec![put(T, "a", usage(3), Expect::Absent)]).await), [3]);
}

/// Another connection holding the write lock past busy_timeout: SQLite's busy error is the
/// lock wait timeout (MySQL 1205's counterpart), which nova's wrap_db_retry retries;
/// nothing of the transaction applied, and it succeeds once the lock is free.
#[tokio::test]
async fn a_held_write_lock_is_a_lock_wait_timeout() {
    let path = temp_path("busy");
    SqliteDb::remove_files(&path).unwrap();
    let db = SqliteDb::open_with_busy_timeout(&path, Clock::start(), std::time::Duration::from_millis(50)).unwrap();
    db.execute(vec![put(T, "a", usage(1), Expect::Absent)]).await.unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = db.execute(vec![put(T, "a", usage(2), Expect::Version(1))]).await.expect_err("the lock is held");
    assert!(matches!(err, DbError::LockWaitTimeout(_)), "{err:?}");
    assert!(err.to_string().contains("MySQL 1205"), "{err}");
    assert!(err.is_deadlock(), "oslo.db maps 1205 to DBDeadlock");
    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(written(&db.execute(vec![put(T, "a", usage(2), Expect::Version(1))]).await), [2]);
    drop((db, other));
    SqliteDb::remove_files(&path).unwrap();
}

/// The shared restart case: the file reopened keeps its rows, versions and commit counter.
#[tokio::test]
async fn a_reopened_database_passes_the_restart_case() {
    let path = temp_path("restart");
    SqliteDb::remove_files(&path).unwrap();
    let db = SqliteDb::open(&path, Clock::start()).unwrap();
    let p = path.clone();
    stackbed_services::conformance::database_restart(&db, || async move {
        let reopened: Arc<dyn Database> = Arc::new(SqliteDb::open(&p, Clock::start()).unwrap());
        reopened
    })
    .await;
    drop(db);
    SqliteDb::remove_files(&path).unwrap();
}

fn temp_path(name: &str) -> String {
    std::env::temp_dir()
        .join(format!("stackbed-real-test-{}-{name}.sqlite", std::process::id()))
        .to_string_lossy()
        .into_owned()
}

#[tokio::test]
async fn corrupt_json_is_a_backend_error_not_a_panic() {
    let path = temp_path("corrupt");
    SqliteDb::remove_files(&path).unwrap();
    let db = SqliteDb::open(&path, Clock::start()).unwrap();
    db.execute(vec![put(T, "a", usage(1), Expect::Any), put(T, "b", usage(1), Expect::Any)]).await.unwrap();
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute("UPDATE rows SET value = '{\"ProjectUsage\": {\"instances\": ' WHERE key = 'a'", []).unwrap();
        raw.execute("UPDATE rows SET value = '{\"NoSuchRecord\": 1}' WHERE key = 'b'", []).unwrap();
    }
    for ops in [
        vec![get(T, "a")],
        vec![get(T, "b")],
        vec![scan(T, "")],
        vec![put(T, "a", usage(2), Expect::Any)],
        vec![del(T, "b", Expect::Any)],
    ] {
        match db.execute(ops.clone()).await {
            Err(DbError::Backend(m)) => assert!(m.contains("corrupt row"), "{m}"),
            other => panic!("{ops:?}: expected a backend error, got {other:?}"),
        }
    }
    // The failed writes rolled back; untouched rows are fine, and a new row starts at 1.
    assert_eq!(written(&db.execute(vec![put(T, "c", usage(1), Expect::Absent)]).await), [1]);
    drop(db);
    SqliteDb::remove_files(&path).unwrap();
}

#[tokio::test]
async fn a_reopened_file_keeps_rows_and_the_commit_counter() {
    let path = temp_path("reopen");
    SqliteDb::remove_files(&path).unwrap();
    {
        let db = SqliteDb::open(&path, Clock::start()).unwrap();
        db.execute(vec![put(T, "a", usage(1), Expect::Any)]).await.unwrap();
        db.execute(vec![del(T, "a", Expect::Any)]).await.unwrap();
    }
    let db = SqliteDb::open(&path, Clock::start()).unwrap();
    let seqs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let s = seqs.clone();
    db.on_commit(Box::new(move |_: Millis, c: &Commit| s.lock().unwrap().push(c.seq)));
    // The re-insert continues from the tombstone's version; the commit counter from 2.
    assert_eq!(written(&db.execute(vec![put(T, "a", usage(1), Expect::Absent)]).await), [2]);
    assert_eq!(*seqs.lock().unwrap(), [3]);
    drop(db);
    SqliteDb::remove_files(&path).unwrap();
    assert!(!std::path::Path::new(&path).exists());
}

#[tokio::test]
async fn the_monitor_sees_every_commit() {
    let monitor = Monitor::new(true, 600_000);
    let db = SqliteDb::open(":memory:", Clock::start()).unwrap();
    db.observe(monitor.clone());
    db.execute(vec![put(T, "a", usage(1), Expect::Any), put(T, "b", usage(1), Expect::Any)]).await.unwrap();
    db.execute(vec![get(T, "a")]).await.unwrap();
    let _ = db.execute(vec![put(T, "a", usage(1), Expect::Absent)]).await.unwrap_err();
    db.execute(vec![del(T, "b", Expect::Any)]).await.unwrap();
    // One event per write of each commit; reads and failed transactions add none.
    assert_eq!(monitor.lock().unwrap().digest().1, 3);
}

#[tokio::test]
async fn concurrent_transactions_serialise() {
    // Many tasks doing read-modify-write with compare-and-swap on one counter row: every
    // increment lands exactly once, as with MemStore under a lock.
    let db = Arc::new(SqliteDb::open(":memory:", Clock::start()).unwrap());
    db.execute(vec![put(T, "n", usage(0), Expect::Absent)]).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 10 {
                let rows = db.execute(vec![get(T, "n")]).await.unwrap();
                let OpResult::Row(Some(row)) = &rows[0] else { panic!() };
                let Record::ProjectUsage(u) = &row.value else { panic!() };
                match db.execute(vec![put(T, "n", usage(u.instances + 1), Expect::Version(row.version))]).await {
                    Ok(_) => done += 1,
                    Err(DbError::Conflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rows = db.execute(vec![get(T, "n")]).await.unwrap();
    assert!(matches!(&rows[0], OpResult::Row(Some(r)) if r.value == usage(80)));
}
