//! nova-scheduler: `select_destinations`. Asks placement for allocation candidates, builds
//! host states from the compute nodes and services rows (plus the scenario's aggregates),
//! orders them with the configured strategy (`control.scheduler.strategy`, default `spread`:
//! nova's filters and weighers), claims the first host that takes the claim and returns it
//! with unclaimed alternates.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;

use stackbed_core::model::{ComputeNode, Provider, Record, RequestSpec, ServiceRecord, Table};
use stackbed_core::placement::{allocation_candidates, CANDIDATE_LIMIT};
use stackbed_core::scenario::PlantedBug;
use stackbed_core::scheduler::{HostAggregates, HostState, RequestView, SchedulerConfig};
use stackbed_core::states::{TaskState, VmState};
use stackbed_core::store::Op;
use stackbed_core::strategy::{self, Strategy};

use crate::ctx::Ctx;
use crate::dbx::{self, ServiceError};
use crate::placement::{self, ClaimOutcome};
use crate::seams::{Incoming, Rpc};

pub const TOPIC: &str = "scheduler";

/// oslo.messaging's executor_thread_pool_size: requests one scheduler serves at once.
pub const EXECUTOR_POOL_SIZE: usize = 64;

/// How stale the scheduler's cached compute nodes and services rows may get. nova reads
/// them per request; a one-second cache keeps large simulations fast and is well inside
/// report_interval (10 s), so ComputeFilter sees the same up/down picture.
pub const HOST_STATE_REFRESH: Duration = Duration::from_secs(1);

/// One host as the cache holds it: its compute node, its service row and what the scenario
/// fixes for it. The cache is a vector sorted by host name, the order of placement's
/// snapshot too, so host states are built by one merge of the two, without lookups.
struct CachedHost {
    host: String,
    node: Arc<ComputeNode>,
    service: Option<ServiceRecord>,
    aggregates: Arc<HostAggregates>,
    ip: Option<u32>,
}

#[derive(Default)]
struct HostCache {
    refreshed: Option<tokio::time::Instant>,
    hosts: Arc<Vec<CachedHost>>,
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
}

/// What the scenario declares per host and never changes during a run.
struct StaticHost {
    aggregates: Arc<HostAggregates>,
    ip: u32,
}

pub struct Scheduler {
    ctx: Ctx,
    config: SchedulerConfig,
    decider: Mutex<Decider>,
    cache: Mutex<HostCache>,
    hosts: HashMap<String, StaticHost>,
}

impl Scheduler {
    pub fn new(ctx: Ctx) -> Scheduler {
        let config = ctx.scenario.scheduler_config();
        // The scenario was validated: the name is a built-in one.
        let name = &ctx.scenario.control.scheduler.strategy;
        let strategy = strategy::builtin(name, &config)
            .or_else(|| strategy::builtin("spread", &config))
            .expect("spread is built in");
        let decider = Mutex::new(Decider { rng: ctx.rng("scheduler"), strategy });
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
        Scheduler { ctx, config, decider, cache: Mutex::default(), hosts }
    }

    /// Serves select_destinations, up to [`EXECUTOR_POOL_SIZE`] requests at once as nova's
    /// greenthread pool does; concurrent claims meet in placement's generation checks.
    pub async fn run(self) -> Result<(), ServiceError> {
        let mut rx = self.ctx.bus.consume(TOPIC).await?;
        let pool = Arc::new(tokio::sync::Semaphore::new(EXECUTOR_POOL_SIZE));
        let this = Arc::new(self);
        while let Some(Incoming { msg, reply_to }) = rx.recv().await {
            let Ok(permit) = pool.clone().acquire_owned().await else { break };
            let this = this.clone();
            tokio::spawn(async move {
                let out = match msg {
                    Rpc::SelectDestinations { spec } => match this.select_destinations(&spec).await {
                        Ok(out) => out,
                        Err(e) => Rpc::Error(e.to_string()),
                    },
                    Rpc::RunInstance { spec } => {
                        // A cast: nobody waits for an answer; a failure is counted.
                        if this.run_instance(spec).await.is_err() {
                            this.ctx.metrics.count("scheduler.run_instance_errors", 1);
                        }
                        drop(permit);
                        return;
                    }
                    other => Rpc::Error(format!("scheduler has no method {}", other.method())),
                };
                if let Some(to) = reply_to {
                    let _ = this.ctx.bus.reply(to, out).await;
                }
                drop(permit);
            });
        }
        Ok(())
    }

    pub async fn select_destinations(&self, spec: &RequestSpec) -> Result<Rpc, ServiceError> {
        let db = &*self.ctx.db;
        let (hosts, order) = match self.order_hosts(spec).await? {
            Ok(ordered) => ordered,
            Err(reason) => return Ok(Rpc::NoValidHost { reason }),
        };
        let resources = spec.flavor.resources();
        let alternates_max = self.config.max_attempts.saturating_sub(1) as usize;
        let skip_claim = self.ctx.scenario.debug.plant_bug == Some(PlantedBug::SchedulerSkipsClaim);
        for (pos, &i) in order.iter().enumerate() {
            let host = &hosts[i].node.host;
            let claimed = skip_claim
                || placement::claim(db, &self.ctx.metrics, &spec.instance_uuid, &spec.project, host, resources).await?
                    == ClaimOutcome::Claimed;
            if claimed {
                let mut out = vec![host.clone()];
                out.extend(order[pos + 1..].iter().take(alternates_max).map(|&j| hosts[j].node.host.clone()));
                return Ok(Rpc::Destinations { hosts: out });
            }
            self.ctx.metrics.count("scheduler.claim_failures", 1);
        }
        Ok(Rpc::NoValidHost { reason: "every weighed host refused the claim".into() })
    }

    /// Icehouse's `run_instance` (a cast): pick a host without claiming (the compute claims
    /// on its resource tracker) and cast the build to it; past `max_attempts` or with no
    /// valid host, the instance goes to ERROR here, as Icehouse's scheduler set it.
    pub async fn run_instance(&self, spec: RequestSpec) -> Result<(), ServiceError> {
        let t0 = self.ctx.clock.now();
        let uuid = spec.instance_uuid.clone();
        let attempt = spec.tried_hosts.len() as u32 + 1;
        let failure = if attempt > self.config.max_attempts {
            self.ctx.metrics.count("max_retries_exceeded", 1);
            Some(format!(
                "NoValidHost: Exceeded max scheduling attempts {} for instance {uuid}. Tried hosts: {:?}",
                self.config.max_attempts, spec.tried_hosts
            ))
        } else {
            match self.order_hosts(&spec).await? {
                Ok((hosts, order)) => {
                    let host = hosts[order[0]].node.host.clone();
                    if attempt > 1 {
                        // The report's attempt count, as the current era's conductor keeps it.
                        dbx::update_instance(&*self.ctx.db, &uuid, &[Some(TaskState::Scheduling)], |i| {
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
            dbx::update_instance(&*self.ctx.db, &uuid, &[Some(TaskState::Scheduling)], |i| {
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

    /// The host states for `spec` and the strategy's order over them: placement's allocation
    /// candidates in the current era, every host in Icehouse's. `Err` is NoValidHost's reason.
    async fn order_hosts(
        &self,
        spec: &RequestSpec,
    ) -> Result<Result<(Vec<HostState>, Vec<usize>), String>, ServiceError> {
        let db = &*self.ctx.db;
        // Placement's view is read fresh for every request (claims depend on it), as one
        // shared snapshot: the rows are read, not copied.
        let snapshot = dbx::snapshot(db, Table::Providers).await?;
        let providers: Vec<&Provider> = snapshot
            .values()
            .filter_map(|r| match &r.value {
                Record::Provider(p) => Some(p),
                _ => None,
            })
            .collect();
        let cached = self.host_cache().await?;

        let candidates: Vec<usize> = if self.config.use_placement {
            let candidates = allocation_candidates(&providers, &spec.flavor.resources(), CANDIDATE_LIMIT);
            if candidates.is_empty() {
                return Ok(Err("placement returned no allocation candidates".into()));
            }
            candidates
        } else {
            (0..providers.len()).collect()
        };

        let (group_policy, group_max, group_hosts, members_per_host) = self.group_state(spec).await?;
        // Hints and zone: the scenario's workload sends the same ones with every request.
        let workload = &self.ctx.scenario.workload;
        let hints = &workload.hints;
        let same_host_hosts = self.instance_hosts(&hints.same_host).await?;
        let different_host_hosts = self.instance_hosts(&hints.different_host).await?;
        let now = self.ctx.clock.now_ms();
        let down_after = self.ctx.scenario.control.service_down_time.ms();
        // Candidates come in key (host name) order, as the cache does: merge the two.
        let mut next = 0;
        let hosts: Vec<HostState> = candidates
            .iter()
            .filter_map(|&i| {
                let p = providers[i];
                while next < cached.len() && cached[next].host < p.host {
                    next += 1;
                }
                let c = cached.get(next).filter(|c| c.host == p.host)?;
                let svc = c.service.as_ref();
                Some(HostState {
                    node: c.node.clone(),
                    service_up: svc.is_some_and(|s| now.saturating_sub(s.last_seen_ms) <= down_after),
                    service_disabled: svc.is_none_or(|s| s.disabled),
                    inventories: p.inventories,
                    used: p.used,
                    failed_builds: svc.map_or(0, |s| s.failed_builds),
                    group_members_here: members_per_host.get(&p.host).copied().unwrap_or(0),
                    aggregates: c.aggregates.clone(),
                    host_ip: c.ip,
                })
            })
            .collect();
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
        let sorted = {
            let mut guard = self.decider.lock().unwrap_or_else(|e| e.into_inner());
            let Decider { rng, strategy } = &mut *guard;
            strategy.select(&hosts, &req, rng)
        };
        Ok(sorted.map(|order| (hosts, order)).map_err(|e| e.reason))
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

    /// The compute nodes and services rows, re-read when older than [`HOST_STATE_REFRESH`].
    async fn host_cache(&self) -> Result<Arc<Vec<CachedHost>>, ServiceError> {
        {
            let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if c.refreshed.is_some_and(|t| t.elapsed() < HOST_STATE_REFRESH) {
                return Ok(c.hosts.clone());
            }
        }
        let mut rows = self
            .ctx
            .db
            .execute(vec![
                Op::Scan { table: Table::ComputeNodes, prefix: String::new() },
                Op::Scan { table: Table::Services, prefix: String::new() },
            ])
            .await?
            .into_iter()
            .map(dbx::rows_of);
        let nodes = rows.next().unwrap_or_default();
        let mut services: HashMap<String, ServiceRecord> = rows
            .next()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, r)| match r.value {
                Record::Service(s) => Some((k, s)),
                _ => None,
            })
            .collect();
        // Scans come in key order, so the vector is sorted by host name.
        let hosts: Vec<CachedHost> = nodes
            .into_iter()
            .filter_map(|(k, r)| match r.value {
                Record::ComputeNode(n) => {
                    let fixed = self.hosts.get(&k);
                    Some(CachedHost {
                        service: services.remove(&k),
                        node: Arc::new(n),
                        aggregates: fixed.map_or_else(HostAggregates::none, |h| h.aggregates.clone()),
                        ip: fixed.map(|h| h.ip),
                        host: k,
                    })
                }
                _ => None,
            })
            .collect();
        let hosts = Arc::new(hosts);
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        *c = HostCache { refreshed: Some(self.ctx.clock.now()), hosts: hosts.clone() };
        Ok(hosts)
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
