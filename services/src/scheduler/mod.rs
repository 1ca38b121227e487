//! nova-scheduler: `select_destinations`. Asks placement for allocation candidates, builds
//! host states from the compute nodes and services rows (plus the scenario's aggregates),
//! orders them with the configured strategy (`control.scheduler.strategy`, default `spread`:
//! nova's filters and weighers), claims the first host that takes the claim and returns it
//! with unclaimed alternates.

use stackbed_core::sync::guard;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;

use stackbed_core::model::{Record, RequestSpec, Table};
use stackbed_core::scenario::PlantedBug;
use stackbed_core::scheduler::{explain, HostAggregates, RequestView, SchedulerConfig};
use stackbed_core::states::{TaskState, VmState};
use stackbed_core::store::{Op, OpResult, Snapshot};
use stackbed_core::strategy::{self, Strategy};

use crate::ctx::Ctx;
use crate::dbx::{self, ServiceError};
use crate::placement::{ClaimOutcome, PlacementClient};
use crate::rpc::{self, Request, ServeOptions};
use crate::seams::Rpc;

mod live;
use live::{Inputs, LiveTable, StaticHost};

pub const TOPIC: &str = "scheduler";

/// How stale the scheduler's cached compute nodes and services rows may get. nova reads
/// them per request; a one-second cache keeps large simulations fast and is well inside
/// report_interval (10 s), so ComputeFilter sees the same up/down picture.
pub const HOST_STATE_REFRESH: Duration = Duration::from_secs(1);

/// The compute nodes and services rows as last read: two shared snapshots, re-read when
/// older than [`HOST_STATE_REFRESH`].
#[derive(Default)]
struct HostCache {
    refreshed: Option<tokio::time::Instant>,
    nodes: Snapshot,
    services: Snapshot,
}

/// The address of the `index`-th host of the topology (SimpleCIDRAffinity): 10.0.0.0/8
/// numbered in topology order, the first host 10.0.0.1 (a big-endian u32).
pub fn host_ip(index: usize) -> u32 {
    0x0A00_0000 + index as u32 + 1
}

/// The deciding part: the strategy and the generator it draws from, used under one lock
/// (the decision itself is pure and short; the claims that follow are not under it).
struct Decider {
    rng: SmallRng,
    strategy: Box<dyn Strategy>,
    table: LiveTable,
}

/// Claims the first round of `select_destinations` may try past the pick and alternates
/// before it weighs afresh.
const CLAIM_FALLBACKS: usize = 3;

pub struct Scheduler {
    ctx: Ctx,
    config: SchedulerConfig,
    decider: Mutex<Decider>,
    cache: Mutex<HostCache>,
    hosts: HashMap<String, StaticHost>,
    placement: PlacementClient,
}

impl Scheduler {
    pub fn new(ctx: Ctx) -> Scheduler {
        let config = ctx.scenario.scheduler_config();
        // The scenario was validated: the name is a built-in or a registered one.
        let name = &ctx.scenario.control.scheduler.strategy;
        let strategy = strategy::by_name(name, &config)
            .or_else(|| strategy::builtin("spread", &config))
            .expect("spread is built in");
        let decider = Mutex::new(Decider { rng: ctx.rng("scheduler"), strategy, table: LiveTable::default() });
        let mut aggregates = ctx.scenario.host_aggregates();
        let hosts = ctx
            .scenario
            .hosts()
            .into_iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let aggregates = aggregates.remove(&name).unwrap_or_else(HostAggregates::none);
                (name, StaticHost { aggregates, ip: host_ip(i) })
            })
            .collect();
        let placement = PlacementClient::new(&ctx, "scheduler");
        Scheduler { ctx, config, decider, cache: Mutex::default(), hosts, placement }
    }

    /// Serves select_destinations through the RPC server (`rpc::serve`: oslo's pool of
    /// executor workers); concurrent claims meet in placement's generation checks.
    pub async fn run(self) -> Result<(), ServiceError> {
        let ctx = self.ctx.clone();
        let this = Arc::new(self);
        rpc::serve(&ctx, TOPIC, ServeOptions::of(&ctx, "scheduler"), move |req: Request| {
            let this = this.clone();
            async move {
                match req.msg {
                    Rpc::SelectDestinations { specs } => {
                        Some(match this.select_destinations_once(&specs, req.redelivered).await {
                            Ok(out) => out,
                            Err(e) => Rpc::Error(e.to_string()),
                        })
                    }
                    Rpc::RunInstance { spec } => {
                        // A cast: nobody waits for an answer; a failure is counted.
                        if this.run_instance(spec).await.is_err() {
                            this.ctx.metrics.count("scheduler.run_instance_errors", 1);
                        }
                        None
                    }
                    other => Some(Rpc::Error(format!("scheduler has no method {}", other.method()))),
                }
            }
        })
        .await?;
        Ok(())
    }

    /// select_destinations for every server of a create request, in one call: the call's
    /// own CPU cost once, then each server placed (and claimed) in turn. If one cannot be
    /// placed, the claims made for the others are given back and the whole request gets
    /// the answer, as nova's scheduler does. A redelivered call (acks after dispatch, a
    /// scheduler that died mid-request) answers with the host a server's first delivery
    /// already claimed, if it got that far, instead of claiming again against its own claim
    /// (which every host would refuse).
    async fn select_destinations_once(&self, specs: &[RequestSpec], redelivered: bool) -> Result<Rpc, ServiceError> {
        self.ctx.cpu.spend(self.ctx.scenario.model.service_time.scheduler_per_request.0).await;
        let mut out = Vec::with_capacity(specs.len());
        for (n, spec) in specs.iter().enumerate() {
            if redelivered {
                if let Some(host) = self.placement.allocation(&spec.instance_uuid).await? {
                    self.ctx.metrics.count("scheduler.redelivered_resumed", 1);
                    out.push(vec![host]);
                    continue;
                }
            }
            match self.select_destinations(spec).await? {
                Ok(hosts) => out.push(hosts),
                Err(failure) => {
                    for earlier in &specs[..n] {
                        self.placement.release(&earlier.instance_uuid).await?;
                    }
                    return Ok(failure);
                }
            }
        }
        Ok(Rpc::Destinations { hosts: out })
    }

    /// One server's destinations: the claimed host, then its alternates; `Err` is the
    /// answer for the whole call (NoValidHost, AllocationUpdateFailed).
    pub async fn select_destinations(&self, spec: &RequestSpec) -> Result<Result<Vec<String>, Rpc>, ServiceError> {
        let resources = spec.flavor.resources();
        let alternates_max = self.config.max_attempts.saturating_sub(1) as usize;
        let skip_claim = self.ctx.scenario.debug.plant_bug == Some(PlantedBug::SchedulerSkipsClaim);
        // nova walks the whole weighed list until a claim succeeds. The first round asks the
        // strategy for the pick, the alternates and a few fallbacks (the common case: the
        // first claim succeeds); when every one of those refuses the claim, a second round
        // weighs afresh (placement's usage has moved under the refused claims) and walks
        // the whole order, skipping the hosts already tried.
        let mut tried: Vec<String> = Vec::new();
        for k in [alternates_max + 1 + CLAIM_FALLBACKS, usize::MAX] {
            let order = match self.order_hosts(spec, k).await? {
                Ok(order) => order,
                Err(reason) if tried.is_empty() => return Ok(Err(Rpc::NoValidHost { reason })),
                Err(_) => break,
            };
            let complete = order.len() < k;
            let order: Vec<String> = order.into_iter().filter(|h| !tried.contains(h)).collect();
            // A claim at `pos` returns the next alternates_max hosts as alternates: in a
            // shortened order, claim only where those are all present.
            let claimable = if complete { order.len() } else { order.len().saturating_sub(alternates_max) };
            for (pos, host) in order.iter().enumerate().take(claimable) {
                let claimed = skip_claim
                    || match self.placement.claim(&spec.instance_uuid, &spec.project, host, resources).await? {
                        ClaimOutcome::Claimed => true,
                        // nova's claim_resources expects a new consumer; one that has
                        // allocations already (an earlier select_destinations for the same
                        // instance claimed) fails the request: AllocationUpdateFailed.
                        ClaimOutcome::ConsumerConflict(why) => {
                            self.ctx.metrics.count("scheduler.allocation_update_failed", 1);
                            return Ok(Err(Rpc::Error(format!(
                                "AllocationUpdateFailed: Failed to update allocations for consumer {}. Error: {why}",
                                spec.instance_uuid
                            ))));
                        }
                        _ => false,
                    };
                if claimed {
                    let mut out = vec![host.clone()];
                    out.extend(order[pos + 1..].iter().take(alternates_max).cloned());
                    return Ok(Ok(out));
                }
                self.ctx.metrics.count("scheduler.claim_failures", 1);
                tried.push(host.clone());
            }
            if complete {
                break;
            }
        }
        Ok(Err(Rpc::NoValidHost { reason: "every weighed host refused the claim".into() }))
    }

    /// Icehouse's `run_instance` (a cast): pick a host without claiming (the compute claims
    /// on its resource tracker) and cast the build to it; past `max_attempts` or with no
    /// valid host, the instance goes to ERROR here, as Icehouse's scheduler set it.
    pub async fn run_instance(&self, spec: RequestSpec) -> Result<(), ServiceError> {
        let t0 = self.ctx.clock.now();
        self.ctx.cpu.spend(self.ctx.scenario.model.service_time.scheduler_per_request.0).await;
        let uuid = spec.instance_uuid.clone();
        let attempt = spec.tried_hosts.len() as u32 + 1;
        let failure = if attempt > self.config.max_attempts {
            self.ctx.metrics.count("max_retries_exceeded", 1);
            Some(format!(
                "NoValidHost: Exceeded max scheduling attempts {} for instance {uuid}. Tried hosts: {:?}",
                self.config.max_attempts, spec.tried_hosts
            ))
        } else {
            match self.order_hosts(&spec, 1).await? {
                Ok(order) if order.is_empty() => {
                    self.ctx.metrics.count("no_valid_host", 1);
                    Some("No valid host was found. The strategy returned no host".to_string())
                }
                Ok(order) => {
                    let host = order[0].clone();
                    if attempt > 1 {
                        // The report's attempt count, as the current era's conductor keeps it.
                        dbx::update_instance(&self.ctx, &uuid, &[Some(TaskState::Scheduling)], |i| {
                            i.attempts = attempt
                        })
                        .await?;
                    }
                    let cast = Rpc::BuildAndRunInstance { spec, alternates: Vec::new() };
                    self.ctx.bus.cast(&crate::compute::topic(&host), cast).await?;
                    None
                }
                Err(reason) => {
                    self.ctx.metrics.count("no_valid_host", 1);
                    Some(format!("No valid host was found. {reason}"))
                }
            }
        };
        let ok = failure.is_none();
        if let Some(fault) = failure {
            dbx::update_instance(&self.ctx, &uuid, &[Some(TaskState::Scheduling)], |i| {
                i.vm_state = VmState::Error;
                i.task_state = None;
                i.fault = Some(fault.clone());
                i.attempts = attempt - 1;
            })
            .await?;
        }
        self.ctx.metrics.record("scheduler.run_instance", self.ctx.clock.secs_since(t0), ok);
        Ok(())
    }

    /// The first `k` hosts (by name) of the strategy's order for `spec` over placement's
    /// providers and the cached host rows: allocation candidates in the current era, every
    /// host in Icehouse's. `Err` is NoValidHost's reason.
    async fn order_hosts(&self, spec: &RequestSpec, k: usize) -> Result<Result<Vec<String>, String>, ServiceError> {
        // Placement's view is read fresh for every request (claims depend on it), as one
        // shared snapshot: the rows are read, not copied, even over HTTP.
        let snapshot = match self.placement.candidates().await {
            Ok(s) => s,
            Err(reason) => return Ok(Err(reason)),
        };
        let (nodes, services) = self.host_cache().await?;
        let (group_policy, group_max, group_hosts, members_per_host) = self.group_state(spec).await?;
        // Hints and zone: the scenario's workload sends the same ones with every request.
        let workload = &self.ctx.scenario.workload;
        let hints = &workload.hints;
        let same_host_hosts = self.instance_hosts(&hints.same_host).await?;
        let different_host_hosts = self.instance_hosts(&hints.different_host).await?;
        let req = RequestView {
            project_id: &spec.project,
            group_policy,
            group_max_per_host: group_max,
            group_hosts: &group_hosts,
            retry_hosts: &spec.tried_hosts,
            hints,
            availability_zone: workload.availability_zone.as_deref(),
            same_host_hosts: &same_host_hosts,
            different_host_hosts: &different_host_hosts,
            ..RequestView::new(&spec.flavor, &spec.image)
        };
        // The filter and weigher pass's CPU time: the process serves one pass at a time.
        let hosts = snapshot.len() as u32;
        self.ctx.cpu.spend(self.ctx.scenario.model.service_time.scheduler_per_host.0 * hosts).await;
        let now = self.ctx.clock.now_ms();
        let down_after = self.ctx.scenario.control.service_down_time.ms();
        let mut guard = guard(&self.decider);
        let Decider { rng, strategy, table } = &mut *guard;
        let inputs = Inputs { providers: &snapshot, nodes: &nodes, services: &services };
        table.sync(&inputs, &self.hosts, now, down_after, &members_per_host);
        if table.table.is_empty() {
            return Ok(Err("placement returned no allocation candidates".into()));
        }
        // The report explains the run's first decision and its first NoValidHosts, from
        // the same host states and generator state the decision saw.
        let before = rng.clone();
        let decided = strategy.select_table(&table.table, &req, rng, k);
        let metrics = &self.ctx.metrics;
        if metrics.wants_explanation(decided.is_err()) {
            let config = match strategy.name() {
                "pack" => strategy::pack_config(self.config.clone()),
                _ => self.config.clone(),
            };
            let mut explanation = explain(table.table.hosts(), &req, &config, &mut before.clone());
            let decided_hosts: Vec<String> = decided
                .as_ref()
                .map(|o| o.iter().map(|&i| table.table.hosts()[i].node.host.clone()).collect())
                .unwrap_or_default();
            if let Err(e) = &decided {
                // The decision's NoValidHost is the one the run saw.
                explanation.no_valid_host = Some(e.clone());
            }
            metrics.explain(&spec.instance_uuid, decided.is_err(), strategy.name(), decided_hosts, explanation);
        }
        Ok(match decided {
            Ok(order) => Ok(order.into_iter().map(|i| table.table.hosts()[i].node.host.clone()).collect()),
            Err(e) => Err(e.reason),
        })
    }

    /// The hosts of the instances a same_host/different_host hint names (by uuid), in the
    /// order given; instances not found or not on a host are skipped.
    async fn instance_hosts(&self, instances: &[String]) -> Result<Vec<String>, ServiceError> {
        if instances.is_empty() {
            return Ok(Vec::new());
        }
        let ops = instances.iter().map(|uuid| Op::Get { table: Table::Instances, key: uuid.clone() }).collect();
        let mut hosts = Vec::new();
        for res in self.ctx.db.execute(ops).await? {
            if let Some(stackbed_core::store::Row { value: Record::Instance(i), .. }) = dbx::row_of(res) {
                if let (Some(h), false) = (i.host, i.deleted) {
                    hosts.push(h);
                }
            }
        }
        Ok(hosts)
    }

    /// The compute nodes and services rows, re-read when older than [`HOST_STATE_REFRESH`]:
    /// shared snapshots, nothing copied.
    async fn host_cache(&self) -> Result<(Snapshot, Snapshot), ServiceError> {
        {
            let c = guard(&self.cache);
            if c.refreshed.is_some_and(|t| self.ctx.clock.since(t) < HOST_STATE_REFRESH) {
                return Ok((c.nodes.clone(), c.services.clone()));
            }
        }
        let mut snapshots = self
            .ctx
            .db
            .execute(vec![Op::Snapshot { table: Table::ComputeNodes }, Op::Snapshot { table: Table::Services }])
            .await?
            .into_iter()
            .map(|r| match r {
                OpResult::Snapshot(s) => s,
                _ => Default::default(),
            });
        let nodes = snapshots.next().unwrap_or_default();
        let services = snapshots.next().unwrap_or_default();
        let mut c = guard(&self.cache);
        *c = HostCache { refreshed: Some(self.ctx.clock.now()), nodes: nodes.clone(), services: services.clone() };
        Ok((nodes, services))
    }

    /// The request's server group: policy, max per host, hosts with members, members per host.
    #[allow(clippy::type_complexity)]
    async fn group_state(
        &self,
        spec: &RequestSpec,
    ) -> Result<(Option<stackbed_core::model::GroupPolicy>, u32, Vec<String>, BTreeMap<String, u32>), ServiceError>
    {
        let Some(group) = &spec.server_group else {
            return Ok((None, 1, Vec::new(), BTreeMap::new()));
        };
        let Some(row) = dbx::get(&*self.ctx.db, Table::ServerGroups, group).await? else {
            return Ok((None, 1, Vec::new(), BTreeMap::new()));
        };
        let Record::ServerGroup(g) = row.value else {
            return Err(ServiceError::Corrupt(format!("server_groups/{group}")));
        };
        let ops = g
            .members
            .iter()
            .filter(|m| **m != spec.instance_uuid)
            .map(|m| Op::Get { table: Table::Instances, key: m.clone() })
            .collect();
        let mut per_host = BTreeMap::new();
        for res in self.ctx.db.execute(ops).await? {
            if let Some(stackbed_core::store::Row { value: Record::Instance(i), .. }) = dbx::row_of(res) {
                if let (Some(h), false) = (&i.host, i.deleted) {
                    *per_host.entry(h.clone()).or_insert(0u32) += 1;
                }
            }
        }
        let hosts = per_host.keys().cloned().collect();
        Ok((Some(g.policy), g.max_server_per_host, hosts, per_host))
    }
}
