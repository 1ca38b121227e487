//! nova-conductor: `schedule_and_build_instances` (call the scheduler, create the instance
//! in its cell, re-check quota, cast to the compute) and `build_instances` (reschedule to
//! an alternate after a compute failure, or MaxRetriesExceeded).

use stackbed_core::model::{ComputeNode, Instance, Record, RequestSpec, ServiceRecord, Table};
use stackbed_core::quota;
use stackbed_core::scenario::{Era, PlantedBug};
use stackbed_core::states::{PowerState, TaskState, VmState};
use stackbed_core::store::{Expect, Op, Row};

use crate::ctx::Ctx;
use crate::dbx::{self, ServiceError};
use crate::placement::{ClaimOutcome, PlacementClient};
use crate::rpc::{self, Request, ServeOptions};
use crate::seams::{BusError, Rpc};

pub const TOPIC: &str = "conductor";

pub struct Conductor {
    ctx: Ctx,
    placement: PlacementClient,
}

pub fn new_instance(
    spec: &RequestSpec,
    now_ms: u64,
    vm_state: VmState,
    task_state: Option<TaskState>,
    fault: Option<String>,
) -> Instance {
    Instance {
        uuid: spec.instance_uuid.clone(),
        name: format!("server-{}", spec.instance_uuid),
        project: spec.project.clone(),
        user: spec.user.clone(),
        flavor: spec.flavor.clone(),
        image: spec.image.name.clone(),
        vm_state,
        task_state,
        power_state: PowerState::NoState,
        host: None,
        created_at_ms: now_ms,
        launched_at_ms: None,
        deleted: false,
        fault,
        attempts: 1,
    }
}

impl Conductor {
    pub fn new(ctx: Ctx) -> Conductor {
        let placement = PlacementClient::new(&ctx, "conductor");
        Conductor { ctx, placement }
    }

    pub async fn run(self) -> Result<(), ServiceError> {
        let ctx = self.ctx.clone();
        let this = std::sync::Arc::new(self);
        rpc::serve(&ctx, TOPIC, ServeOptions::of(&ctx, "conductor"), move |req: Request| {
            let this = this.clone();
            async move {
                this.ctx.cpu.spend(this.ctx.scenario.model.service_time.conductor_per_call.0).await;
                let res = match req.msg {
                    Rpc::ServiceUpdate { host, service, node } => {
                        return Some(match this.service_update(host, service, node).await {
                            Ok(()) => Rpc::Saved,
                            Err(e) => Rpc::Error(e.to_string()),
                        });
                    }
                    Rpc::ScheduleAndBuildInstances { specs } => this.schedule_and_build(specs, req.redelivered).await,
                    Rpc::BuildInstances { spec, alternates, failure } => {
                        this.reschedule(spec, alternates, failure).await
                    }
                    _ => Ok(()),
                };
                if let Err(e) = res {
                    this.ctx.metrics.count("conductor.errors", 1);
                    // The instance is left for the liveness invariant to flag; say what happened.
                    this.ctx.metrics.count(&format!("conductor.error.{}", error_kind(&e)), 1);
                }
                None
            }
        })
        .await?;
        Ok(())
    }

    /// A compute's state report, written for it: nova's `service_update` (and
    /// `compute_node_update` for the node), under `wrap_db_retry`, in one transaction.
    async fn service_update(
        &self,
        host: String,
        service: ServiceRecord,
        node: Option<ComputeNode>,
    ) -> Result<(), ServiceError> {
        let mut ops = vec![Op::Put {
            table: Table::Services,
            key: host.clone(),
            value: Record::Service(service),
            expect: Expect::Any,
        }];
        ops.extend(node.map(|n| Op::Put {
            table: Table::ComputeNodes,
            key: host,
            value: Record::ComputeNode(n),
            expect: Expect::Any,
        }));
        let ops = &ops;
        self.ctx.db_retry.run("service_update", || async move { Ok(self.ctx.db.execute(ops.clone()).await?) }).await?;
        Ok(())
    }

    /// The scheduler's select_destinations as nova's conductor calls it. With call
    /// monitoring (`rpc_call_monitoring`, Stein and later) the call waits up to
    /// `long_rpc_timeout` and fails after `rpc_response_timeout` without a heartbeat from
    /// the scheduler; without it (before Stein) it fails after `rpc_response_timeout`
    /// however busy the scheduler is. nova's `retry_select_destinations` sends it again
    /// after a MessagingTimeout, `scheduler.max_attempts - 1` times.
    async fn select_destinations(&self, specs: &[RequestSpec]) -> Result<Rpc, BusError> {
        let c = &self.ctx.scenario.control;
        let (timeout, monitor) = if c.rpc_call_monitoring {
            (c.long_rpc_timeout.0, Some(c.rpc_response_timeout.0))
        } else {
            (c.rpc_response_timeout.0, None)
        };
        let retries = c.scheduler.max_attempts.saturating_sub(1);
        let mut attempt = 0;
        loop {
            let msg = Rpc::SelectDestinations { specs: specs.to_vec() };
            match self.ctx.bus.call_monitored(crate::scheduler::TOPIC, msg, timeout, monitor).await {
                Err(BusError::Timeout { .. }) if attempt < retries => {
                    attempt += 1;
                    self.ctx.metrics.count("conductor.select_destinations_retries", 1);
                }
                other => return other,
            }
        }
    }

    /// A redelivered schedule_and_build_instances (acks after dispatch, a conductor that died
    /// mid-request): pick up where the first delivery got to, so that it neither claims a
    /// second time (a false NoValidHost on a full cloud) nor creates a second instance.
    /// `Some(host)`: the host already claimed, to build on without scheduling again.
    /// `None` with `done`: nothing is left to do.
    async fn resume_redelivered(&self, spec: &RequestSpec) -> Result<(Option<String>, bool), ServiceError> {
        let uuid = &spec.instance_uuid;
        let claimed = self.placement.allocation(uuid).await?;
        if let Some(Row { value: Record::Instance(i), .. }) = dbx::get(&*self.ctx.db, Table::Instances, uuid).await? {
            // The instance exists: the first delivery got past scheduling. If it was still
            // waiting for its compute, cast again (a compute that has it refuses a second).
            if i.vm_state == VmState::Building && i.task_state == Some(TaskState::Scheduling) {
                if let Some(host) = claimed {
                    self.ctx.metrics.count("conductor.redelivered_resumed", 1);
                    let cast = Rpc::BuildAndRunInstance { spec: spec.clone(), alternates: Vec::new() };
                    self.ctx.bus.cast(&crate::compute::topic(&host), cast).await?;
                }
            }
            return Ok((None, true));
        }
        Ok((claimed, false))
    }

    /// One create request: its servers scheduled in one select_destinations call, then each
    /// created in its cell and cast to its host. If the call fails, every server of the
    /// request is buried in cell0 with the reason, as nova's does.
    async fn schedule_and_build(&self, specs: Vec<RequestSpec>, redelivered: bool) -> Result<(), ServiceError> {
        if self.ctx.scenario.control.era == Era::Icehouse {
            // Icehouse's build_instances: the instances exist; cast each to the scheduler.
            for spec in specs {
                self.ctx.bus.cast(crate::scheduler::TOPIC, Rpc::RunInstance { spec }).await?;
            }
            return Ok(());
        }
        let t0 = self.ctx.clock.now();
        // A redelivery picks up where the first delivery got to, server by server.
        let mut placed: Vec<(RequestSpec, Vec<String>)> = Vec::new();
        let mut todo = Vec::new();
        for spec in specs {
            if !redelivered {
                todo.push(spec);
                continue;
            }
            // Where the first delivery got to is stackbed's guard, not nova's code: if it
            // cannot be read (placement unreachable), schedule as nova would, and let a claim
            // the first delivery made fail the request (AllocationUpdateFailed) rather than
            // leave it waiting.
            match self.resume_redelivered(&spec).await {
                Ok((_, true)) => {}
                Ok((Some(host), false)) => placed.push((spec, vec![host])),
                Ok((None, false)) => todo.push(spec),
                Err(_) => {
                    self.ctx.metrics.count("conductor.redelivered_unresolved", 1);
                    todo.push(spec);
                }
            }
        }
        let mut bury_error = None;
        if !todo.is_empty() {
            let ts = self.ctx.clock.now();
            let answer = self.select_destinations(&todo).await;
            match answer {
                Ok(Rpc::Destinations { hosts }) if hosts.len() == todo.len() && hosts.iter().all(|h| !h.is_empty()) => {
                    self.ctx.metrics.record("scheduler.select_destinations", self.ctx.clock.secs_since(ts), true);
                    placed.extend(todo.into_iter().zip(hosts));
                }
                other => {
                    self.ctx.metrics.record("scheduler.select_destinations", self.ctx.clock.secs_since(ts), false);
                    let reason = match other {
                        Ok(Rpc::NoValidHost { reason }) => {
                            self.ctx.metrics.count("no_valid_host", 1);
                            format!("No valid host was found. {reason}")
                        }
                        Ok(Rpc::Error(e)) => {
                            self.ctx.metrics.count("scheduler.remote_errors", 1);
                            e
                        }
                        Ok(m) => format!("scheduler answered {}", m.method()),
                        Err(e) => {
                            self.ctx.metrics.count("scheduler.rpc_errors", 1);
                            e.to_string()
                        }
                    };
                    // A redelivered copy whose claim met the one the first delivery made
                    // meanwhile (both in flight, the first past oslo's 16-id window) builds
                    // on that claim instead of failing the instance (stackbed's guard).
                    if redelivered {
                        let mut rest = Vec::new();
                        for spec in todo {
                            match self.placement.allocation(&spec.instance_uuid).await {
                                Ok(Some(host)) => {
                                    self.ctx.metrics.count("conductor.redelivered_claim_resumed", 1);
                                    placed.push((spec, vec![host]));
                                }
                                _ => rest.push(spec),
                            }
                        }
                        todo = rest;
                    }
                    // Bury in cell0: each instance exists, in ERROR, with the fault. One that
                    // cannot be (another copy of the request created it) does not keep the
                    // others from it.
                    for spec in &todo {
                        let inst = new_instance(spec, spec.accepted_at_ms, VmState::Error, None, Some(reason.clone()));
                        if let Err(e) = dbx::create_instance(&self.ctx, &inst, true).await {
                            bury_error.get_or_insert(e);
                        }
                    }
                    if placed.is_empty() {
                        let took = self.ctx.clock.secs_since(t0);
                        self.ctx.metrics.record("conductor.schedule_and_build", took, false);
                        return bury_error.map_or(Ok(()), Err);
                    }
                }
            }
        }
        let mut ok = bury_error.is_none();
        for (spec, hosts) in placed {
            ok &= self.build_placed(spec, hosts).await?;
        }
        self.ctx.metrics.record("conductor.schedule_and_build", self.ctx.clock.secs_since(t0), ok);
        bury_error.map_or(Ok(()), Err)
    }

    /// One scheduled server: created in its cell (unless the user deleted it meanwhile),
    /// quota checked again, cast to its host. False when it did not get to its host.
    async fn build_placed(&self, spec: RequestSpec, hosts: Vec<String>) -> Result<bool, ServiceError> {
        self.ctx.cpu.spend(self.ctx.scenario.model.service_time.conductor_per_instance.0).await;
        let (host, alternates) = (hosts[0].clone(), hosts[1..].to_vec());
        // No BuildRequest: the user deleted the server while it was being scheduled, and
        // its claim goes back; or another copy of this request (a redelivery, a republish)
        // got here first and created the instance, whose claim this one must not touch.
        if dbx::get(&*self.ctx.db, Table::BuildRequests, &spec.instance_uuid).await?.is_none() {
            if dbx::get(&*self.ctx.db, Table::Instances, &spec.instance_uuid).await?.is_some() {
                self.ctx.metrics.count("conductor.duplicate_request_skipped", 1);
                return Ok(true);
            }
            self.placement.release(&spec.instance_uuid).await?;
            return Ok(true);
        }
        let inst = new_instance(&spec, spec.accepted_at_ms, VmState::Building, Some(TaskState::Scheduling), None);
        dbx::create_instance(&self.ctx, &inst, true).await?;
        if self.ctx.scenario.control.quota_recheck
            && self.ctx.scenario.debug.plant_bug != Some(PlantedBug::QuotaNotChecked)
        {
            if let Some(e) = self.recheck_quota(&spec).await? {
                self.placement.release(&spec.instance_uuid).await?;
                dbx::update_instance(&self.ctx, &spec.instance_uuid, &[Some(TaskState::Scheduling)], |i| {
                    i.vm_state = VmState::Error;
                    i.task_state = None;
                    i.fault = Some(format!("Quota exceeded on recheck: {e}"));
                })
                .await?;
                self.ctx.metrics.count("quota_recheck_failures", 1);
                return Ok(false);
            }
        }
        self.ctx.bus.cast(&crate::compute::topic(&host), Rpc::BuildAndRunInstance { spec, alternates }).await?;
        Ok(true)
    }

    /// Counting-mode recheck: usage now includes the new instance, so check with no delta.
    async fn recheck_quota(&self, spec: &RequestSpec) -> Result<Option<quota::OverQuota>, ServiceError> {
        let rows = self
            .ctx
            .db
            .execute(vec![
                Op::Get { table: Table::Projects, key: spec.project.clone() },
                Op::Get { table: Table::ProjectUsages, key: spec.project.clone() },
            ])
            .await?;
        let mut rows = rows.into_iter().map(dbx::row_of);
        let limits = match rows.next().flatten() {
            Some(Row { value: Record::Project(p), .. }) => p.quota,
            _ => return Err(ServiceError::NotFound(format!("project {}", spec.project))),
        };
        let usage = match rows.next().flatten() {
            Some(Row { value: Record::ProjectUsage(u), .. }) => u,
            _ => Default::default(),
        };
        Ok(quota::check(&usage, &Default::default(), &limits).err())
    }

    /// A compute failed the build: claim the next alternate and cast to it, or give up with
    /// MaxRetriesExceeded. Alternates were not claimed by the scheduler; the conductor
    /// claims them here, as nova does.
    async fn reschedule(
        &self,
        spec: RequestSpec,
        mut alternates: Vec<String>,
        failure: String,
    ) -> Result<(), ServiceError> {
        let t0 = self.ctx.clock.now();
        self.ctx.metrics.count("reschedules", 1);
        if self.ctx.scenario.control.era == Era::Icehouse {
            // Icehouse: back to the scheduler, which skips the tried hosts (RetryFilter) and
            // gives up after scheduler_max_attempts.
            let _ = (alternates, failure);
            self.ctx.bus.cast(crate::scheduler::TOPIC, Rpc::RunInstance { spec }).await?;
            self.ctx.metrics.record("conductor.reschedule", self.ctx.clock.secs_since(t0), true);
            return Ok(());
        }
        while !alternates.is_empty() {
            let host = alternates.remove(0);
            let outcome =
                self.placement.claim(&spec.instance_uuid, &spec.project, &host, spec.flavor.resources()).await?;
            if outcome != ClaimOutcome::Claimed {
                continue;
            }
            let recorded = dbx::update_instance(&self.ctx, &spec.instance_uuid, &[Some(TaskState::Scheduling)], |i| {
                i.attempts += 1
            })
            .await;
            if let Err(e) = recorded {
                // The instance moved on (deleted, say): give the claim back.
                self.placement.release(&spec.instance_uuid).await?;
                return Err(e);
            }
            self.ctx.bus.cast(&crate::compute::topic(&host), Rpc::BuildAndRunInstance { spec, alternates }).await?;
            self.ctx.metrics.record("conductor.reschedule", self.ctx.clock.secs_since(t0), true);
            return Ok(());
        }
        self.ctx.metrics.count("max_retries_exceeded", 1);
        let uuid = spec.instance_uuid.clone();
        dbx::update_instance(&self.ctx, &uuid, &[Some(TaskState::Scheduling)], |i| {
            i.vm_state = VmState::Error;
            i.task_state = None;
            i.fault = Some(format!(
                "MaxRetriesExceeded: Exceeded maximum number of retries. Exhausted all hosts available for retrying build failures for instance {uuid}. Last failure: {failure}"
            ));
        })
        .await?;
        self.ctx.metrics.record("conductor.reschedule", self.ctx.clock.secs_since(t0), false);
        Ok(())
    }
}

fn error_kind(e: &ServiceError) -> &'static str {
    match e {
        ServiceError::Db(_) => "db",
        ServiceError::Bus(_) => "bus",
        ServiceError::Hypervisor(_) => "hypervisor",
        ServiceError::Http(_) => "http",
        ServiceError::UnexpectedTaskState { .. } => "unexpected_task_state",
        ServiceError::NotFound(_) => "not_found",
        ServiceError::Corrupt(_) => "corrupt",
    }
}
