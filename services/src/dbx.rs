//! Typed helpers over the database seam: reads of one table's records, and the
//! compare-and-swap instance update every nova state write goes through.

use std::future::Future;

use thiserror::Error;

use stackbed_core::model::{Instance, ProjectUsage, Record, Table};
use stackbed_core::states::TaskState;
use stackbed_core::store::{DbError, Expect, Op, OpResult, Row};

use crate::ctx::Ctx;
use crate::seams::{BusError, Database, HttpError, HvError};

#[derive(Debug, Clone, PartialEq, Error)]
pub enum ServiceError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    /// An HTTP call got no response (placement, keystone).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// nova's UnexpectedTaskStateError (UnexpectedDeletingTaskStateError when deleting).
    #[error("instance {uuid}: unexpected task state: expecting {expected:?} but the actual state is {found:?}")]
    UnexpectedTaskState { uuid: String, expected: Vec<Option<TaskState>>, found: Option<TaskState> },
    #[error("{0} not found")]
    NotFound(String),
    #[error("unexpected record in {0}")]
    Corrupt(String),
}

/// Retries of a read-modify-write that lost a compare-and-swap race.
pub const CAS_RETRIES_MAX: u32 = 50;

pub async fn get(db: &dyn Database, table: Table, key: &str) -> Result<Option<Row>, DbError> {
    let mut res = db.execute(vec![Op::Get { table, key: key.to_string() }]).await?;
    match res.pop() {
        Some(OpResult::Row(r)) => Ok(r),
        _ => Err(DbError::Backend("get returned no row result".into())),
    }
}

pub async fn scan(db: &dyn Database, table: Table, prefix: &str) -> Result<Vec<(String, Row)>, DbError> {
    let mut res = db.execute(vec![Op::Scan { table, prefix: prefix.to_string() }]).await?;
    match res.pop() {
        Some(OpResult::Rows(r)) => Ok(r),
        _ => Err(DbError::Backend("scan returned no rows result".into())),
    }
}

/// A whole table as one shared read view (see `Op::Snapshot`).
pub async fn snapshot(db: &dyn Database, table: Table) -> Result<stackbed_core::store::Snapshot, DbError> {
    match db.execute(vec![Op::Snapshot { table }]).await?.pop() {
        Some(OpResult::Snapshot(s)) => Ok(s),
        _ => Err(DbError::Backend("snapshot returned no table".into())),
    }
}

pub fn rows_of(res: OpResult) -> Vec<(String, Row)> {
    match res {
        OpResult::Rows(r) => r,
        _ => Vec::new(),
    }
}

pub fn row_of(res: OpResult) -> Option<Row> {
    match res {
        OpResult::Row(r) => r,
        _ => None,
    }
}

pub async fn get_instance(db: &dyn Database, uuid: &str) -> Result<Option<(u64, Instance)>, ServiceError> {
    match get(db, Table::Instances, uuid).await? {
        Some(Row { version, value: Record::Instance(i) }) => Ok(Some((version, i))),
        Some(_) => Err(ServiceError::Corrupt(format!("instances/{uuid}"))),
        None => Ok(None),
    }
}

fn usage_delta(usage: &mut ProjectUsage, inst: &Instance, sign: i64) {
    let apply = |v: &mut u64, d: u64| {
        *v = if sign > 0 { *v + d } else { v.saturating_sub(d) };
    };
    apply(&mut usage.instances, 1);
    apply(&mut usage.cores, inst.flavor.vcpus);
    apply(&mut usage.ram_mb, inst.flavor.ram_mb);
}

/// Which compare-and-swap conflicts a [`retry_conflicts`] loop answers by re-reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictsOn {
    /// A conflict on any row of the transaction.
    AnyTable,
    /// Only a conflict on this table; any other conflict is the caller's error.
    Table(Table),
}

impl ConflictsOn {
    fn covers(self, table: &str) -> bool {
        match self {
            ConflictsOn::AnyTable => true,
            ConflictsOn::Table(t) => t.name() == table,
        }
    }
}

/// Runs `attempt` (one read-modify-write ending in a compare-and-swap) again while it
/// fails with a conflict that `on` covers, at most [`CAS_RETRIES_MAX`] times. This
/// emulates the row lock of nova's `UPDATE ... WHERE ...`: a writer that lost the race
/// re-reads and re-checks, as the losing UPDATE would after waiting for the lock. It is not
/// oslo.db's `wrap_db_retry` (see [`crate::db_retry`]), which retries deadlocks with sleeps.
pub async fn retry_conflicts<T, F, Fut>(what: &str, on: ConflictsOn, mut attempt: F) -> Result<T, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ServiceError>>,
{
    for _ in 0..CAS_RETRIES_MAX {
        match attempt().await {
            Err(ServiceError::Db(DbError::Conflict { table, .. })) if on.covers(&table) => continue,
            other => return other,
        }
    }
    Err(DbError::Backend(format!("{what}: gave up after {CAS_RETRIES_MAX} conflicting updates")).into())
}

/// `instance.save(expected_task_state=...)`: read, check the task state, apply `change`,
/// write back with a compare-and-swap on the row version; a lost race re-reads and re-checks.
/// An empty `expected` means "any". When the change soft-deletes the instance, the
/// project's usage row is decremented in the same transaction. nova's
/// `instance_update_and_get_original` / `instance_destroy`: under `wrap_db_retry`.
pub async fn update_instance(
    ctx: &Ctx,
    uuid: &str,
    expected: &[Option<TaskState>],
    change: impl Fn(&mut Instance),
) -> Result<Instance, ServiceError> {
    Ok(update_instance_known(ctx, uuid, None, expected, change).await?.1)
}

/// [`update_instance`] starting from `known`, the row as the caller last read or wrote it
/// (version and value): the first attempt writes against it without reading first, one
/// round trip as nova's `UPDATE ... WHERE task_state IN (...)` is; a conflict (somebody
/// else wrote since) re-reads and re-checks. Returns the new version with the row.
pub async fn update_instance_known(
    ctx: &Ctx,
    uuid: &str,
    known: Option<(u64, Instance)>,
    expected: &[Option<TaskState>],
    change: impl Fn(&mut Instance),
) -> Result<(u64, Instance), ServiceError> {
    let db = &*ctx.db;
    let change = &change;
    let what = format!("instance {uuid}");
    let what = what.as_str();
    let mut known = Some(known);
    ctx.db_retry
        .run("instance_update", || {
            // A retry after a deadlock starts from a fresh read.
            let mut known = known.take().flatten();
            retry_conflicts(what, ConflictsOn::AnyTable, move || {
                update_instance_once(db, uuid, known.take(), expected, change)
            })
        })
        .await
}

/// One attempt of [`update_instance_known`]: a conflict is returned, not retried.
async fn update_instance_once(
    db: &dyn Database,
    uuid: &str,
    known: Option<(u64, Instance)>,
    expected: &[Option<TaskState>],
    change: &impl Fn(&mut Instance),
) -> Result<(u64, Instance), ServiceError> {
    let (version, mut inst) = match known {
        Some(row) => row,
        None => match get_instance(db, uuid).await? {
            Some(row) => row,
            None => return Err(ServiceError::NotFound(format!("instance {uuid}"))),
        },
    };
    if !expected.is_empty() && !expected.contains(&inst.task_state) {
        return Err(ServiceError::UnexpectedTaskState {
            uuid: uuid.to_string(),
            expected: expected.to_vec(),
            found: inst.task_state,
        });
    }
    let was_deleted = inst.deleted;
    change(&mut inst);
    let mut ops = vec![Op::Put {
        table: Table::Instances,
        key: uuid.to_string(),
        value: Record::Instance(inst.clone()),
        expect: Expect::Version(version),
    }];
    if inst.deleted && !was_deleted {
        let key = inst.project.clone();
        let (uv, mut usage) = match get(db, Table::ProjectUsages, &key).await? {
            Some(Row { version, value: Record::ProjectUsage(u) }) => (Expect::Version(version), u),
            _ => (Expect::Absent, ProjectUsage::default()),
        };
        usage_delta(&mut usage, &inst, -1);
        ops.push(Op::Put { table: Table::ProjectUsages, key, value: Record::ProjectUsage(usage), expect: uv });
    }
    match db.execute(ops).await?.first() {
        Some(OpResult::Written(v)) => Ok((*v, inst)),
        _ => Err(DbError::Backend(format!("instance {uuid}: a write returned no version")).into()),
    }
}

/// Creates an instance row and counts it in the project's usage, deleting the build
/// request in the same transaction (the conductor's step from API cell to cell). Icehouse
/// has no build requests: `from_build_request` false writes the instance alone. nova's
/// `instance_create`: under `wrap_db_retry`; a lost race on the usage row re-reads it.
pub async fn create_instance(ctx: &Ctx, inst: &Instance, from_build_request: bool) -> Result<(), ServiceError> {
    let db = &*ctx.db;
    let what = format!("instance {} usage row", inst.uuid);
    let what = what.as_str();
    ctx.db_retry
        .run("instance_create", || {
            retry_conflicts(what, ConflictsOn::Table(Table::ProjectUsages), || {
                create_instance_once(db, inst, from_build_request)
            })
        })
        .await
}

async fn create_instance_once(
    db: &dyn Database,
    inst: &Instance,
    from_build_request: bool,
) -> Result<(), ServiceError> {
    let key = inst.project.clone();
    let (uv, mut usage) = match get(db, Table::ProjectUsages, &key).await? {
        Some(Row { version, value: Record::ProjectUsage(u) }) => (Expect::Version(version), u),
        _ => (Expect::Absent, ProjectUsage::default()),
    };
    usage_delta(&mut usage, inst, 1);
    let mut ops = vec![
        Op::Put {
            table: Table::Instances,
            key: inst.uuid.clone(),
            value: Record::Instance(inst.clone()),
            expect: Expect::Absent,
        },
        Op::Put { table: Table::ProjectUsages, key, value: Record::ProjectUsage(usage), expect: uv },
    ];
    if from_build_request {
        ops.push(Op::Delete { table: Table::BuildRequests, key: inst.uuid.clone(), expect: Expect::Any });
    }
    db.execute(ops).await?;
    Ok(())
}
