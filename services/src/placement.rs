//! Placement's storage side: providers and allocations in the database, every write a
//! compare-and-swap on the provider generation (the row version), conflicts retried up to
//! placement's `allocation_conflict_retry_count`.

use stackbed_core::model::{Allocation, Provider, Record, Resources, Table};
use stackbed_core::placement::{fits, CONFLICT_RETRIES_MAX};
use stackbed_core::store::{DbError, Expect, Op, Row};

use crate::dbx::{get, ServiceError};
use crate::metrics::Metrics;
use crate::seams::Database;

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    Claimed,
    /// The provider cannot take the request (any more): try another host.
    DoesNotFit(String),
}

async fn provider(db: &dyn Database, host: &str) -> Result<Option<(u64, Provider)>, ServiceError> {
    match get(db, Table::Providers, host).await? {
        Some(Row { version, value: Record::Provider(p) }) => Ok(Some((version, p))),
        Some(_) => Err(ServiceError::Corrupt(format!("resource_providers/{host}"))),
        None => Ok(None),
    }
}

/// PUT /allocations/{consumer}: claim `resources` on `host` for `consumer`.
pub async fn claim(
    db: &dyn Database,
    metrics: &Metrics,
    consumer: &str,
    project: &str,
    host: &str,
    resources: Resources,
) -> Result<ClaimOutcome, ServiceError> {
    for _ in 0..=CONFLICT_RETRIES_MAX {
        let Some((generation, mut p)) = provider(db, host).await? else {
            return Ok(ClaimOutcome::DoesNotFit(format!("no resource provider {host}")));
        };
        if let Err(why) = fits(&p, &resources) {
            return Ok(ClaimOutcome::DoesNotFit(why.to_string()));
        }
        p.used = p.used.add(&resources);
        let ops = vec![
            Op::Put {
                table: Table::Providers,
                key: host.to_string(),
                value: Record::Provider(p),
                expect: Expect::Version(generation),
            },
            Op::Put {
                table: Table::Allocations,
                key: consumer.to_string(),
                value: Record::Allocation(Allocation {
                    consumer: consumer.to_string(),
                    host: host.to_string(),
                    resources,
                    project: project.to_string(),
                }),
                expect: Expect::Absent,
            },
        ];
        match db.execute(ops).await {
            Ok(_) => return Ok(ClaimOutcome::Claimed),
            Err(DbError::Conflict { table, .. }) if table == Table::Providers.name() => {
                // Another claim moved the generation: re-read and try again.
                metrics.count("placement.generation_conflicts", 1);
                continue;
            }
            Err(DbError::Conflict { table, key, .. }) => {
                return Ok(ClaimOutcome::DoesNotFit(format!("consumer {key} already has an allocation ({table})")))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ClaimOutcome::DoesNotFit(format!("{host}: generation conflicts exceeded {CONFLICT_RETRIES_MAX} retries")))
}

/// DELETE /allocations/{consumer}. Idempotent: no allocation, nothing to do.
pub async fn release(db: &dyn Database, metrics: &Metrics, consumer: &str) -> Result<bool, ServiceError> {
    for _ in 0..=CONFLICT_RETRIES_MAX * 5 {
        let alloc = match get(db, Table::Allocations, consumer).await? {
            Some(Row { version, value: Record::Allocation(a) }) => (version, a),
            Some(_) => return Err(ServiceError::Corrupt(format!("allocations/{consumer}"))),
            None => return Ok(false),
        };
        let Some((generation, mut p)) = provider(db, &alloc.1.host).await? else {
            return Err(ServiceError::Corrupt(format!("allocation {consumer} on unknown provider {}", alloc.1.host)));
        };
        p.used = p
            .used
            .checked_sub(&alloc.1.resources)
            .ok_or_else(|| ServiceError::Corrupt(format!("provider {} usage below allocation {consumer}", p.host)))?;
        let ops = vec![
            Op::Put {
                table: Table::Providers,
                key: p.host.clone(),
                value: Record::Provider(p),
                expect: Expect::Version(generation),
            },
            Op::Delete { table: Table::Allocations, key: consumer.to_string(), expect: Expect::Version(alloc.0) },
        ];
        match db.execute(ops).await {
            Ok(_) => return Ok(true),
            Err(DbError::Conflict { .. }) => {
                metrics.count("placement.generation_conflicts", 1);
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(DbError::Backend(format!("releasing {consumer}: conflicts kept coming")).into())
}
