//! Placement, a service of its own: its storage side (providers and allocations in the
//! database, every write a compare-and-swap on the provider generation (the row version),
//! conflicts retried up to placement's `allocation_conflict_retry_count`), the `Placement`
//! service serving that over HTTP, and the `PlacementClient` the scheduler, conductor and
//! compute call it through (nova's report client).
//!
//! The compute's provider registration stays a database write of the compute (it is not
//! routed through placement's API yet), and so does the report's utilisation sampler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;

use stackbed_core::model::{Allocation, Provider, Record, Resources, Table};
use stackbed_core::placement::{fits, CONFLICT_RETRIES_MAX};
use stackbed_core::store::{DbError, Expect, Op, Row, Snapshot};

use crate::clock::Clock;
use crate::ctx::Ctx;
use crate::dbx::{self, get, ServiceError};
use crate::metrics::Metrics;
use crate::seams::{
    Body, Database, HttpError, HttpHandler, HttpRef, HttpRequest, HttpResponse, Method, HTTP_TIMEOUT, PLACEMENT,
};

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    Claimed,
    /// The provider cannot take the request (any more): try another host.
    DoesNotFit(String),
    /// Generation conflicts outlasted `allocation_conflict_retry_count` (placement's 409
    /// `placement.concurrent_update`): the caller may try again.
    ConcurrentUpdate(String),
    /// The consumer already has allocations, where the claim expected a new consumer
    /// (placement's 409 "consumer generation conflict"). nova raises
    /// AllocationUpdateFailed: the instance is in an inconsistent state, no retry.
    ConsumerConflict(String),
}

/// What placement's consumer generation conflict says; nova tells it from a provider
/// generation conflict by this text.
pub const CONSUMER_CONFLICT: &str = "consumer generation conflict";

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
        let allocation = Allocation {
            consumer: consumer.to_string(),
            host: host.to_string(),
            resources,
            project: project.to_string(),
        };
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
                value: Record::Allocation(allocation.clone()),
                expect: Expect::Absent,
            },
            Op::Put {
                table: Table::ProviderAllocations,
                key: provider_key(host, consumer),
                value: Record::Allocation(allocation.clone()),
                expect: Expect::Any,
            },
        ];
        match db.execute(ops).await {
            Ok(_) => return Ok(ClaimOutcome::Claimed),
            Err(DbError::Conflict { table, .. }) if table == Table::Providers.name() => {
                // Another claim moved the generation: re-read and try again.
                metrics.count("placement.generation_conflicts", 1);
                continue;
            }
            Err(DbError::Conflict { key, .. }) => {
                return Ok(ClaimOutcome::ConsumerConflict(format!(
                    "{CONSUMER_CONFLICT} - expected null but consumer {key} already has allocations"
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ClaimOutcome::ConcurrentUpdate(format!("{host}: generation conflicts exceeded {CONFLICT_RETRIES_MAX} retries")))
}

/// The key of `consumer`'s row in [`Table::ProviderAllocations`]: host names hold no `/`.
fn provider_key(host: &str, consumer: &str) -> String {
    format!("{host}/{consumer}")
}

/// The consumers holding allocations against `host`, in consumer order: a prefix scan of
/// the provider index, as placement's query on its indexed provider column.
pub async fn provider_consumers(db: &dyn Database, host: &str) -> Result<Vec<String>, DbError> {
    let prefix = provider_key(host, "");
    Ok(dbx::scan(db, Table::ProviderAllocations, &prefix)
        .await?
        .into_iter()
        .filter_map(|(key, _)| key.strip_prefix(&prefix).map(str::to_string))
        .collect())
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
            Op::Delete {
                table: Table::ProviderAllocations,
                key: provider_key(&alloc.1.host, consumer),
                expect: Expect::Any,
            },
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

// ---------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------

/// GET /allocation_candidates.
pub const CANDIDATES_PATH: &str = "/allocation_candidates";
const ALLOCATIONS_PREFIX: &str = "/allocations/";
const PROVIDERS_PREFIX: &str = "/resource_providers/";

/// One placement worker: the API over the database.
pub struct Placement {
    ctx: Ctx,
}

impl Placement {
    pub fn new(ctx: Ctx) -> Placement {
        Placement { ctx }
    }

    /// Serves placement's API until the node goes away.
    pub async fn run(self) -> Result<(), ServiceError> {
        let http = self.ctx.http.clone();
        http.serve(PLACEMENT, Arc::new(self)).await?;
        Ok(())
    }
}

fn server_error(e: ServiceError) -> HttpResponse {
    HttpResponse::error(503, e.to_string())
}

#[async_trait::async_trait]
impl HttpHandler for Placement {
    async fn handle(&self, req: HttpRequest) -> HttpResponse {
        let cost = self.ctx.scenario.model.service_time;
        self.ctx.cpu.spend(cost.placement_per_request.0).await;
        let (db, metrics) = (&*self.ctx.db, &self.ctx.metrics);
        let consumer = req.path.strip_prefix(ALLOCATIONS_PREFIX).filter(|c| !c.is_empty());
        let provider = req
            .path
            .strip_prefix(PROVIDERS_PREFIX)
            .and_then(|p| p.strip_suffix("/allocations"))
            .filter(|p| !p.is_empty() && !p.contains('/'));
        if let (Method::Get, Some(host)) = (req.method, provider) {
            return match provider_consumers(db, host).await {
                Ok(consumers) => HttpResponse::new(200, Body::Consumers(consumers)),
                Err(e) => server_error(e.into()),
            };
        }
        match (req.method, req.path.as_str(), consumer, req.body) {
            // Every provider, as the scheduler's shared snapshot: the scheduler applies the
            // capacity check itself (the candidates' limit and filtering are its strategy's).
            (Method::Get, CANDIDATES_PATH, _, _) => match dbx::snapshot(db, Table::Providers).await {
                Ok(s) => {
                    let providers = u32::try_from(s.len()).unwrap_or(u32::MAX);
                    self.ctx.cpu.spend(cost.placement_per_provider.0 * providers).await;
                    HttpResponse::new(200, Body::Providers(s))
                }
                Err(e) => server_error(e.into()),
            },
            (Method::Put, _, Some(consumer), Body::Allocation { project, host, resources }) => {
                match claim(db, metrics, consumer, &project, &host, resources).await {
                    Ok(ClaimOutcome::Claimed) => HttpResponse::new(204, Body::Empty),
                    Ok(ClaimOutcome::DoesNotFit(why)) => HttpResponse::error(409, why),
                    Ok(ClaimOutcome::ConcurrentUpdate(why)) | Ok(ClaimOutcome::ConsumerConflict(why)) => {
                        HttpResponse::error(409, format!("{CONCURRENT_UPDATE}: {why}"))
                    }
                    Err(e) => server_error(e),
                }
            }
            (Method::Get, _, Some(consumer), _) => match get(db, Table::Allocations, consumer).await {
                Ok(Some(Row { value: Record::Allocation(a), .. })) => HttpResponse::new(
                    200,
                    Body::Allocation { project: a.project, host: a.host, resources: a.resources },
                ),
                Ok(_) => HttpResponse::error(404, format!("No allocations for consumer '{consumer}'")),
                Err(e) => server_error(e.into()),
            },
            (Method::Delete, _, Some(consumer), _) => match release(db, metrics, consumer).await {
                Ok(true) => HttpResponse::new(204, Body::Empty),
                Ok(false) => HttpResponse::error(404, format!("No allocations for consumer '{consumer}'")),
                Err(e) => server_error(e),
            },
            (method, path, _, _) => HttpResponse::error(404, format!("placement has no {} {path}", method.name())),
        }
    }
}

/// The error code of placement's 409 for a generation conflict (the only 409 worth a retry).
pub const CONCURRENT_UPDATE: &str = "placement.concurrent_update";

// ---------------------------------------------------------------------------------------
// The client (nova's scheduler/client/report.py)
// ---------------------------------------------------------------------------------------

/// Attempts of a write that placement refused with `placement.concurrent_update`: nova's
/// `@retries` decorator tries 4 times, sleeping uniform(0, 2 x attempt) seconds before each
/// (0 before the first). Connection failures are not retried by it (`@safe_connect` logs
/// "Placement API service is not responding" and the call fails); the endpoint list's
/// failover to another worker is the only retry they get.
pub const REPORT_CLIENT_ATTEMPTS: u32 = 4;

pub struct PlacementClient {
    http: HttpRef,
    metrics: Metrics,
    clock: Clock,
    rng: Mutex<SmallRng>,
}

impl PlacementClient {
    /// `name`: the caller's RNG stream (the jitter of the retries).
    pub fn new(ctx: &Ctx, name: &str) -> PlacementClient {
        let rng = Mutex::new(ctx.rng(&format!("placement-client-{name}")));
        PlacementClient { http: ctx.http.clone(), metrics: ctx.metrics.clone(), clock: ctx.clock.clone(), rng }
    }

    async fn request(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let res = self.http.request(PLACEMENT, req, HTTP_TIMEOUT).await;
        if res.is_err() {
            self.metrics.count("placement_client.no_response", 1);
        }
        res
    }

    /// GET /allocation_candidates: placement's providers. `Err`: the scheduler's NoValidHost
    /// reason (nova: "Got no allocation candidates from the Placement API").
    pub async fn candidates(&self) -> Result<Snapshot, String> {
        match self.request(HttpRequest::new(Method::Get, CANDIDATES_PATH, Body::Empty)).await {
            Ok(HttpResponse { status: 200, body: Body::Providers(s), .. }) => Ok(s),
            Ok(r) => Err(format!("placement answered {} to GET {CANDIDATES_PATH}: {:?}", r.status, r.body)),
            Err(e) => Err(format!("Got no allocation candidates from the Placement API: {e}")),
        }
    }

    /// PUT /allocations/{consumer}. A claim without a response is a claim that failed, as
    /// nova's `claim_resources` returns False then (it may still have been made: a reset
    /// or timeout after the write leaves an allocation the caller does not know of).
    pub async fn claim(
        &self,
        consumer: &str,
        project: &str,
        host: &str,
        resources: Resources,
    ) -> Result<ClaimOutcome, ServiceError> {
        let body = Body::Allocation { project: project.into(), host: host.into(), resources };
        let req = HttpRequest::new(Method::Put, format!("{ALLOCATIONS_PREFIX}{consumer}"), body);
        let mut last = String::new();
        for attempt in 0..REPORT_CLIENT_ATTEMPTS {
            self.jitter(attempt).await;
            match self.request(req.clone()).await {
                Ok(r) if r.is_success() => return Ok(ClaimOutcome::Claimed),
                Ok(HttpResponse { status: 409, body: Body::Error(why), .. }) if why.contains(CONSUMER_CONFLICT) => {
                    return Ok(ClaimOutcome::ConsumerConflict(why))
                }
                Ok(HttpResponse { status: 409, body: Body::Error(why), .. }) if why.starts_with(CONCURRENT_UPDATE) => {
                    self.metrics.count("placement_client.concurrent_update_retries", 1);
                    last = why;
                }
                Ok(HttpResponse { status: 409, body: Body::Error(why), .. }) => {
                    return Ok(ClaimOutcome::DoesNotFit(why))
                }
                Ok(r) => return Ok(ClaimOutcome::DoesNotFit(format!("placement answered {}: {:?}", r.status, r.body))),
                Err(e) => return Ok(ClaimOutcome::DoesNotFit(format!("Placement API service is not responding: {e}"))),
            }
        }
        Ok(ClaimOutcome::DoesNotFit(format!("out of retries: {last}")))
    }

    /// GET /allocations/{consumer}: the host `consumer` holds a claim on, if any. No
    /// response is an error.
    pub async fn allocation(&self, consumer: &str) -> Result<Option<String>, ServiceError> {
        let req = HttpRequest::new(Method::Get, format!("{ALLOCATIONS_PREFIX}{consumer}"), Body::Empty);
        match self.request(req).await? {
            HttpResponse { status: 200, body: Body::Allocation { host, .. }, .. } => Ok(Some(host)),
            HttpResponse { status: 404, .. } => Ok(None),
            r => Err(DbError::Backend(format!(
                "placement answered {} to GET allocations/{consumer}: {:?}",
                r.status, r.body
            ))
            .into()),
        }
    }

    /// GET /resource_providers/{host}/allocations: the consumers with allocations on `host`.
    pub async fn provider_allocations(&self, host: &str) -> Result<Vec<String>, ServiceError> {
        let req = HttpRequest::new(Method::Get, format!("{PROVIDERS_PREFIX}{host}/allocations"), Body::Empty);
        match self.request(req).await? {
            HttpResponse { status: 200, body: Body::Consumers(c), .. } => Ok(c),
            r => Err(DbError::Backend(format!(
                "placement answered {} to GET resource_providers/{host}/allocations: {:?}",
                r.status, r.body
            ))
            .into()),
        }
    }

    /// DELETE /allocations/{consumer}: true when there was one. No response is an error
    /// (nova's AllocationDeleteFailed).
    pub async fn release(&self, consumer: &str) -> Result<bool, ServiceError> {
        let req = HttpRequest::new(Method::Delete, format!("{ALLOCATIONS_PREFIX}{consumer}"), Body::Empty);
        match self.request(req).await? {
            r if r.is_success() => Ok(true),
            HttpResponse { status: 404, .. } => Ok(false),
            r => Err(DbError::Backend(format!(
                "placement answered {} to DELETE allocations/{consumer}: {:?}",
                r.status, r.body
            ))
            .into()),
        }
    }

    async fn jitter(&self, attempt: u32) {
        if attempt == 0 {
            return;
        }
        let secs = {
            let mut rng = self.rng.lock().expect("placement client rng lock poisoned: a panic while drawing");
            rng.gen_range(0.0..=2.0 * attempt as f64)
        };
        self.clock.sleep(Duration::from_secs_f64(secs)).await;
    }
}
