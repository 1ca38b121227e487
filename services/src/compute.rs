//! nova-compute: registers its node, resource provider and service; heartbeats every
//! report_interval; builds instances under the `max_concurrent_builds` semaphore with
//! nova's task_state steps, each a compare-and-swap on the expected task_state;
//! reschedules on unexpected spawn failures and aborts on build-abort failures.

use stackbed_core::sync::guard;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use stackbed_core::model::{ComputeNode, Instance, Inventory, Provider, Record, RequestSpec, ServiceRecord, Table};
use stackbed_core::scenario::{Era, HostGroup, PlantedBug};
use stackbed_core::states::{PowerState, TaskState, VmState};
use stackbed_core::store::{Expect, Op, Row};

use crate::ctx::Ctx;
use crate::dbx::{self, ServiceError};
use crate::placement::{self, PlacementClient};
use crate::rpc::{self, Request, ServeOptions};
use crate::seams::{BusError, HvError, HvRef, Rpc};

/// How often the build-timeout and resource-tracker periodic tasks run (nova's periodic
/// tasks without a spacing run every `periodic_interval_max`, 60 s; `update_resources_interval`
/// is 0 by default, which means the same).
pub const PERIODIC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

pub fn topic(host: &str) -> String {
    format!("compute.{host}")
}

/// The placement inventories a compute reports for its node.
pub fn inventories(
    node: &ComputeNode,
    group: &HostGroup,
    ratio: &stackbed_core::scenario::AllocationRatio,
) -> [Inventory; 3] {
    [
        Inventory::new(node.vcpus, group.reserved.vcpus, ratio.cpu),
        Inventory::new(node.ram_mb, group.reserved.ram_mb, ratio.ram),
        Inventory::new(node.disk_gb, group.reserved.disk_gb, ratio.disk),
    ]
}

#[derive(Default)]
struct Local {
    /// Instances this host runs or builds.
    instances: u64,
    /// Builds in flight (nova's io_workload counts build/resize/snapshot tasks).
    io_ops: u64,
    /// Per-instance locks: nova serialises build and terminate of one instance.
    locks: BTreeMap<String, Arc<tokio::sync::Mutex<()>>>,
}

pub struct Compute {
    ctx: Ctx,
    hv: HvRef,
    host: String,
    group: HostGroup,
    builds: Arc<tokio::sync::Semaphore>,
    local: Mutex<Local>,
    /// The service row as this compute last wrote it (nova's Service object): only this
    /// compute writes it, so updates are a write of the whole row, serialised by the lock.
    service: tokio::sync::Mutex<ServiceRecord>,
    placement: PlacementClient,
}

impl Compute {
    pub fn new(ctx: Ctx, hv: HvRef, group: HostGroup) -> Compute {
        let host = hv.node_info().host;
        let builds = Arc::new(tokio::sync::Semaphore::new(ctx.scenario.control.max_concurrent_builds));
        let service = tokio::sync::Mutex::new(ServiceRecord {
            host: host.clone(),
            binary: "nova-compute".into(),
            last_seen_ms: 0,
            disabled: false,
            disabled_reason: None,
            failed_builds: 0,
        });
        let placement = PlacementClient::new(&ctx, &format!("compute-{host}"));
        Compute { ctx, hv, host, group, builds, local: Mutex::new(Local::default()), service, placement }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        guard(&self.local)
    }

    fn node_row(&self) -> ComputeNode {
        let mut node = self.hv.node_info();
        let l = self.local();
        node.num_instances = l.instances;
        node.num_io_ops = l.io_ops;
        node
    }

    /// Writes the compute node, the resource provider (keeping existing usage) and the service.
    async fn register(&self) -> Result<(), ServiceError> {
        let node = self.node_row();
        let inventories = inventories(&node, &self.group, &self.ctx.scenario.control.ratios());
        let what = format!("{}: registering", self.host);
        // nova: compute_node_update and service_update, both under wrap_db_retry; the
        // provider's generation is re-read on a lost race.
        self.ctx
            .db_retry
            .run("compute_node_update", || {
                dbx::retry_conflicts(&what, dbx::ConflictsOn::AnyTable, || self.register_once(&node, &inventories))
            })
            .await
    }

    async fn register_once(&self, node: &ComputeNode, inventories: &[Inventory; 3]) -> Result<(), ServiceError> {
        let existing = dbx::get(&*self.ctx.db, Table::Providers, &self.host).await?;
        let (expect, used) = match existing {
            Some(Row { version, value: Record::Provider(p) }) => (Expect::Version(version), p.used),
            _ => (Expect::Absent, Default::default()),
        };
        let provider = Provider { host: self.host.clone(), inventories: *inventories, used };
        let service = {
            let mut s = self.service.lock().await;
            s.last_seen_ms = self.ctx.clock.now_ms();
            s.clone()
        };
        let ops = vec![
            Op::Put {
                table: Table::ComputeNodes,
                key: self.host.clone(),
                value: Record::ComputeNode(node.clone()),
                expect: Expect::Any,
            },
            Op::Put { table: Table::Providers, key: self.host.clone(), value: Record::Provider(provider), expect },
            Op::Put {
                table: Table::Services,
                key: self.host.clone(),
                value: Record::Service(service),
                expect: Expect::Any,
            },
        ];
        self.ctx.db.execute(ops).await?;
        Ok(())
    }

    /// servicegroup's DB driver: bump last_seen every report_interval (nova's
    /// `service.save()`, through the conductor); the resource tracker's stats ride along
    /// when they changed. A report that fails (the broker unreachable, the conductor busy
    /// past `rpc_response_timeout`) is logged and the loop goes on, as nova's `report_state`
    /// does: the service counts as down once `service_down_time` passes without one.
    async fn heartbeat_loop(self: Arc<Self>) {
        let interval = self.ctx.scenario.control.report_interval.0;
        let mut last_stats = (u64::MAX, u64::MAX);
        loop {
            self.ctx.clock.sleep(interval).await;
            let stats = {
                let l = self.local();
                (l.instances, l.io_ops)
            };
            // The node row is sent (and built) only when its stats changed.
            let node = (stats != last_stats).then(|| self.node_row());
            match self.update_service(|s, now| s.last_seen_ms = now, node).await {
                Ok(_) => last_stats = stats,
                Err(_) => self.ctx.metrics.count("compute.report_state_failed", 1),
            }
        }
    }

    /// Changes the service row and has the conductor write it, with the compute node
    /// `node` in the same transaction: nova-compute has no database access, and its
    /// `Service.save()` is an RPC call to the conductor (`object_action`), which runs
    /// `service_update` under `wrap_db_retry`.
    async fn update_service(
        &self,
        change: impl Fn(&mut ServiceRecord, u64),
        node: Option<ComputeNode>,
    ) -> Result<ServiceRecord, ServiceError> {
        let mut s = self.service.lock().await;
        change(&mut s, self.ctx.clock.now_ms());
        let msg = Rpc::ServiceUpdate { host: self.host.clone(), service: s.clone(), node };
        let timeout = self.ctx.scenario.control.rpc_response_timeout.0;
        match self.ctx.bus.call(crate::conductor::TOPIC, msg, timeout).await? {
            Rpc::Saved => Ok(s.clone()),
            Rpc::Error(e) => Err(BusError::Remote(e).into()),
            other => Err(BusError::Remote(format!("object_action answered {}", other.method())).into()),
        }
    }

    pub async fn run(self) -> Result<(), ServiceError> {
        // The host's queue exists before the host is offered to the scheduler (its provider
        // and service row), so that no build cast to it is unroutable.
        self.ctx.bus.declare(&topic(&self.host)).await?;
        self.restore_service_row().await?;
        self.register().await?;
        if self.ctx.scenario.debug.plant_bug != Some(PlantedBug::ComputeSkipsInitHost) {
            self.init_host().await?;
        }
        let this = Arc::new(self);
        if !this.ctx.scenario.control.instance_build_timeout.0.is_zero() {
            tokio::spawn(this.clone().build_timeout_loop());
        }
        tokio::spawn(this.clone().heartbeat_loop());
        tokio::spawn(this.clone().heal_allocations_loop());
        let ctx = this.ctx.clone();
        rpc::serve(&ctx, &topic(&this.host), ServeOptions::of(&ctx, "compute"), move |req: Request| {
            let this = this.clone();
            async move {
                match req.msg {
                    // nova's build_and_run_instance spawns the build and returns: the RPC
                    // worker is free again at once.
                    Rpc::BuildAndRunInstance { spec, alternates } => {
                        tokio::spawn(async move {
                            if this.build_and_run(spec, alternates).await.is_err() {
                                this.ctx.metrics.count("compute.errors", 1);
                            }
                        });
                    }
                    Rpc::TerminateInstance { uuid } if this.terminate(&uuid).await.is_err() => {
                        this.ctx.metrics.count("compute.errors", 1);
                    }
                    _ => {}
                }
                None
            }
        })
        .await?;
        Ok(())
    }

    /// A restarted service keeps what the database says of it: the services row's disabled
    /// state and reason survive (an operator's `openstack compute service set --disable`
    /// does); the failed-build streak is nova-compute's memory and starts again at 0.
    async fn restore_service_row(&self) -> Result<(), ServiceError> {
        if let Some(Row { value: Record::Service(old), .. }) =
            dbx::get(&*self.ctx.db, Table::Services, &self.host).await?
        {
            let mut s = self.service.lock().await;
            s.disabled = old.disabled;
            s.disabled_reason = old.disabled_reason;
        }
        Ok(())
    }

    /// nova's `init_host` at (re)start, before the service consumes anything:
    /// - `_init_instance` for each instance the database puts on this host: one left
    ///   building (vm_state building, or a build task_state) goes to ERROR and gives its
    ///   allocation back; an interrupted delete is finished; an ACTIVE instance whose guest
    ///   the hypervisor no longer has (the host lost power) is stopped, as the power-state
    ///   sync does; the others are counted on the host again;
    /// - `_error_out_instances_whose_build_was_interrupted`: instances still building that
    ///   hold an allocation on this host but never got `host` set (the compute died between
    ///   the claim and taking the build up) go to ERROR too.
    ///
    /// Guests of instances put in ERROR stay on the hypervisor, as nova leaves them until
    /// the instance is deleted.
    async fn init_host(&self) -> Result<(), ServiceError> {
        let db = &*self.ctx.db;
        let guests: std::collections::BTreeSet<String> = self.hv.list_instance_uuids().await?.into_iter().collect();
        let mut handled = std::collections::BTreeSet::new();
        let mut active = 0;
        // One shared read view of the table: only this host's instances are copied out.
        let mine: Vec<(String, stackbed_core::model::Instance)> = dbx::snapshot(db, Table::Instances)
            .await?
            .iter()
            .filter_map(|(uuid, row)| match &row.value {
                Record::Instance(i) if !i.deleted && i.host.as_deref() == Some(self.host.as_str()) => {
                    Some((uuid.clone(), i.clone()))
                }
                _ => None,
            })
            .collect();
        for (uuid, inst) in mine {
            handled.insert(uuid.clone());
            let building = inst.vm_state == VmState::Building
                || matches!(
                    inst.task_state,
                    Some(
                        TaskState::Scheduling
                            | TaskState::Networking
                            | TaskState::BlockDeviceMapping
                            | TaskState::Spawning
                    )
                );
            if inst.task_state == Some(TaskState::Deleting) {
                self.ctx.metrics.count("compute.init_host.deletes_finished", 1);
                self.terminate(&uuid).await?;
            } else if building {
                self.error_out(&uuid, "Instance failed to spawn correctly: nova-compute restarted during the build")
                    .await?;
                self.ctx.metrics.count("compute.init_host.builds_errored", 1);
            } else if inst.vm_state == VmState::Active && !guests.contains(&uuid) {
                dbx::update_instance(&self.ctx, &uuid, &[None], |i| {
                    i.vm_state = VmState::Stopped;
                    i.power_state = PowerState::Shutdown;
                })
                .await?;
                self.ctx.metrics.count("compute.init_host.guests_lost", 1);
            } else if inst.vm_state == VmState::Active {
                active += 1;
            }
        }
        self.local().instances = active;
        for uuid in crate::placement::provider_consumers(db, &self.host).await? {
            if handled.contains(&uuid) {
                continue;
            }
            if let Some((_, inst)) = dbx::get_instance(db, &uuid).await? {
                if inst.vm_state == VmState::Building && inst.host.is_none() && !inst.deleted {
                    self.error_out(
                        &uuid,
                        "Instance build was interrupted: nova-compute restarted before it took it up",
                    )
                    .await?;
                    self.ctx.metrics.count("compute.init_host.interrupted_builds_errored", 1);
                }
            }
        }
        Ok(())
    }

    /// Puts a building instance in ERROR with `fault` and gives its allocation back.
    async fn error_out(&self, uuid: &str, fault: &str) -> Result<(), ServiceError> {
        let db = &*self.ctx.db;
        let res = dbx::update_instance(&self.ctx, uuid, &[], |i| {
            if i.vm_state == VmState::Building {
                i.vm_state = VmState::Error;
                i.task_state = None;
                i.fault = Some(fault.to_string());
            }
        })
        .await?;
        if res.vm_state == VmState::Error {
            placement::release(db, &self.ctx.metrics, uuid).await?;
        }
        Ok(())
    }

    /// nova's `_check_instance_build_time` periodic task (with `instance_build_timeout` set):
    /// this host's instances still building after the timeout go to ERROR.
    async fn build_timeout_loop(self: Arc<Self>) {
        let timeout_ms = self.ctx.scenario.control.instance_build_timeout.ms();
        loop {
            self.ctx.clock.sleep(PERIODIC_INTERVAL).await;
            let Ok(rows) = dbx::scan(&*self.ctx.db, Table::Instances, "").await else { continue };
            let now = self.ctx.clock.now_ms();
            for (uuid, row) in rows {
                let Record::Instance(inst) = row.value else { continue };
                if inst.vm_state == VmState::Building
                    && !inst.deleted
                    && inst.host.as_deref() == Some(self.host.as_str())
                    && now.saturating_sub(inst.created_at_ms) > timeout_ms
                    && self.error_out(&uuid, "Instance build timed out. Set to error state.").await.is_ok()
                {
                    self.ctx.metrics.count("compute.build_timeouts", 1);
                }
            }
        }
    }

    /// The resource tracker's `update_available_resource` periodic task (every 60 s) as far
    /// as allocations go: `_remove_deleted_instances_allocations` deletes the allocations
    /// against this host of instances that are deleted, which a delete whose allocation
    /// removal failed (placement unreachable) leaves behind. An allocation whose instance
    /// does not exist yet (a build being scheduled here) is left alone.
    async fn heal_allocations_loop(self: Arc<Self>) {
        loop {
            self.ctx.clock.sleep(PERIODIC_INTERVAL).await;
            let Ok(consumers) = self.placement.provider_allocations(&self.host).await else { continue };
            for uuid in consumers {
                let Ok(Some((_, inst))) = dbx::get_instance(&*self.ctx.db, &uuid).await else { continue };
                if inst.deleted && self.placement.release(&uuid).await.is_ok() {
                    self.ctx.metrics.count("compute.deleted_instance_allocations_removed", 1);
                }
            }
        }
    }

    fn instance_lock(&self, uuid: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.local().locks.entry(uuid.to_string()).or_default().clone()
    }

    async fn build_and_run(&self, spec: RequestSpec, alternates: Vec<String>) -> Result<(), ServiceError> {
        let t0 = self.ctx.clock.now();
        // The semaphore is never closed, so acquiring cannot fail.
        let _permit = self.builds.clone().acquire_owned().await.map_err(|e| ServiceError::NotFound(e.to_string()))?;
        let lock = self.instance_lock(&spec.instance_uuid);
        let _guard = lock.lock().await;
        self.local().io_ops += 1;
        let res = self.build(&spec, &alternates).await;
        {
            let mut l = self.local();
            l.io_ops -= 1;
            if matches!(res, Ok(true)) {
                l.instances += 1;
            }
        }
        self.ctx.metrics.record("compute.build", self.ctx.clock.secs_since(t0), matches!(res, Ok(true)));
        res.map(|_| ())
    }

    /// Returns Ok(true) when the instance went ACTIVE here.
    async fn build(&self, spec: &RequestSpec, alternates: &[String]) -> Result<bool, ServiceError> {
        let db = &*self.ctx.db;
        let uuid = &spec.instance_uuid;
        let host = self.host.clone();
        let Some(found) = dbx::get_instance(db, uuid).await? else {
            return Err(ServiceError::NotFound(format!("instance {uuid}")));
        };
        match (found.1.vm_state, found.1.task_state) {
            (_, Some(TaskState::Deleting)) => {}
            // nova checks only the task state here, so an instance that init_host put in
            // ERROR while this build waited in the queue would go back to BUILDING (task
            // None passes); a redelivered build of an ACTIVE instance would build it again.
            // stackbed refuses both and counts them.
            (VmState::Building, Some(TaskState::Scheduling) | None) => {}
            (VmState::Building, Some(_)) => {
                self.ctx.metrics.count("compute.build_already_in_progress", 1);
                return Ok(false);
            }
            (vm_state, _) => {
                self.ctx.metrics.count(&format!("compute.build_refused.{vm_state}"), 1);
                return Ok(false);
            }
        }
        // _do_build_and_run_instance: (building, None) expecting (scheduling, None).
        let (version, inst) =
            match dbx::update_instance_known(&self.ctx, uuid, Some(found), &[Some(TaskState::Scheduling), None], |i| {
                i.vm_state = VmState::Building;
                i.task_state = None;
                i.host = Some(host.clone());
            })
            .await
            {
                Ok(row) => row,
                Err(e @ ServiceError::UnexpectedTaskState { .. }) => {
                    // Deleted meanwhile: give the claim back, terminate finishes the delete.
                    self.placement.release(uuid).await?;
                    self.ctx.metrics.count("compute.build_aborted_by_delete", 1);
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
        // The row as this build last wrote it: each step writes against it in one round trip
        // (a conflict re-reads), as nova's instance.save(expected_task_state=...) is one UPDATE.
        let mut row = Some((version, inst.clone()));
        let result: Result<(), ServiceError> = async {
            if self.ctx.scenario.control.era == Era::Icehouse {
                // Icehouse: the resource tracker's claim happens here, on the compute; a host
                // that cannot take the instance reschedules it (ComputeResourcesUnavailable).
                let claim = self.placement.claim(uuid, &spec.project, &self.host, spec.flavor.resources()).await?;
                let why = match claim {
                    placement::ClaimOutcome::Claimed => None,
                    placement::ClaimOutcome::DoesNotFit(why)
                    | placement::ClaimOutcome::ConcurrentUpdate(why)
                    | placement::ClaimOutcome::ConsumerConflict(why) => Some(why),
                };
                if let Some(why) = why {
                    self.ctx.metrics.count("compute.claim_failures", 1);
                    return Err(HvError::Reschedule(format!("Insufficient compute resources: {why}")).into());
                }
            }
            let t = self.ctx.clock.now();
            let save = |row: Option<(u64, Instance)>, from: Option<TaskState>, to: Option<TaskState>| async move {
                let expected = [from];
                dbx::update_instance_known(&self.ctx, uuid, row, &expected, move |i| i.task_state = to).await
            };
            row = Some(save(row.take(), None, Some(TaskState::Networking)).await?);
            let r = self.hv.allocate_network(&inst).await;
            self.ctx.metrics.record("compute.networking", self.ctx.clock.secs_since(t), r.is_ok());
            r?;
            let t = self.ctx.clock.now();
            row = Some(save(row.take(), Some(TaskState::Networking), Some(TaskState::BlockDeviceMapping)).await?);
            let r = self.hv.block_device_mapping(&inst).await;
            self.ctx.metrics.record("compute.block_device_mapping", self.ctx.clock.secs_since(t), r.is_ok());
            r?;
            let t = self.ctx.clock.now();
            row = Some(save(row.take(), Some(TaskState::BlockDeviceMapping), Some(TaskState::Spawning)).await?);
            let r = self.hv.spawn(&inst, &spec.image).await;
            self.ctx.metrics.record("compute.spawn", self.ctx.clock.secs_since(t), r.is_ok());
            for (phase, secs) in r.as_ref().map(|p| p.as_slice()).unwrap_or(&[]) {
                self.ctx.metrics.record(&format!("compute.spawn.{phase}"), *secs, true);
            }
            r?;
            let now = self.ctx.clock.now_ms();
            dbx::update_instance_known(&self.ctx, uuid, row.take(), &[Some(TaskState::Spawning)], |i| {
                i.vm_state = VmState::Active;
                i.task_state = None;
                i.power_state = PowerState::Running;
                i.launched_at_ms = Some(now);
            })
            .await?;
            Ok(())
        }
        .await;

        match result {
            Ok(()) => {
                // nova keeps the count in memory; the row changes only when a streak ends.
                if self.service.lock().await.failed_builds > 0 {
                    self.update_service(|s, _| s.failed_builds = 0, None).await?;
                }
                Ok(true)
            }
            Err(ServiceError::Hypervisor(HvError::Reschedule(why))) => {
                self.record_failure().await?;
                self.cleanup(&inst).await;
                dbx::update_instance(
                    &self.ctx,
                    uuid,
                    &[
                        None,
                        Some(TaskState::Spawning),
                        Some(TaskState::Networking),
                        Some(TaskState::BlockDeviceMapping),
                    ],
                    |i| {
                        i.task_state = Some(TaskState::Scheduling);
                        i.host = None;
                    },
                )
                .await?;
                // Unclaim before the cast, so the conductor can claim an alternate.
                self.placement.release(uuid).await?;
                let mut spec = spec.clone();
                spec.tried_hosts.push(self.host.clone());
                let failure = format!("{}: {why}", self.host);
                let msg = Rpc::BuildInstances { spec, alternates: alternates.to_vec(), failure };
                self.ctx.bus.cast(crate::conductor::TOPIC, msg).await?;
                Ok(false)
            }
            Err(ServiceError::Hypervisor(HvError::Abort(why))) => {
                self.record_failure().await?;
                self.cleanup(&inst).await;
                self.ctx.metrics.count("build_aborted", 1);
                dbx::update_instance(&self.ctx, uuid, &[], |i| {
                    i.vm_state = VmState::Error;
                    i.task_state = None;
                    i.host = None;
                    i.fault = Some(format!("BuildAbortException: {why}"));
                })
                .await?;
                self.placement.release(uuid).await?;
                Ok(false)
            }
            Err(e @ ServiceError::UnexpectedTaskState { .. }) => {
                // Deleted during the build: undo what the build did; terminate finishes
                // (and gives the allocation back once the row is deleted).
                self.cleanup(&inst).await;
                self.ctx.metrics.count("compute.build_aborted_by_delete", 1);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// nova counts consecutive build failures and disables the service at the threshold.
    async fn record_failure(&self) -> Result<(), ServiceError> {
        let threshold = self.ctx.scenario.control.consecutive_build_service_disable_threshold;
        let s = self
            .update_service(
                |s, _| {
                    s.failed_builds += 1;
                    if threshold > 0 && s.failed_builds >= threshold && !s.disabled {
                        s.disabled = true;
                        s.disabled_reason = Some(format!("Auto-disabled due to {} build failures", s.failed_builds));
                    }
                },
                None,
            )
            .await?;
        if s.disabled {
            self.ctx.metrics.count("compute.auto_disabled", 1);
        }
        Ok(())
    }

    /// Undoes a failed build on the host (guest, networks). The allocation is given back
    /// only after the instance row has left the host, as nova does: until then the instance
    /// still counts on the host, and a claim must not take its place.
    async fn cleanup(&self, inst: &Instance) {
        let _ = self.hv.destroy(inst).await;
        let _ = self.hv.deallocate_network(inst).await;
    }

    async fn terminate(&self, uuid: &str) -> Result<(), ServiceError> {
        let lock = self.instance_lock(uuid);
        let _guard = lock.lock().await;
        let Some((_, inst)) = dbx::get_instance(&*self.ctx.db, uuid).await? else {
            return Err(ServiceError::NotFound(format!("instance {uuid}")));
        };
        let was_active = inst.vm_state == VmState::Active;
        let t = self.ctx.clock.now();
        let r = self.hv.destroy(&inst).await;
        let _ = self.hv.deallocate_network(&inst).await;
        // nova's order: the instance is deleted first, its allocation removed after.
        dbx::update_instance(&self.ctx, uuid, &[Some(TaskState::Deleting)], |i| {
            i.vm_state = VmState::Deleted;
            i.task_state = None;
            i.power_state = PowerState::NoState;
            i.deleted = true;
        })
        .await?;
        self.placement.release(uuid).await?;
        self.ctx.metrics.record("compute.terminate", self.ctx.clock.secs_since(t), r.is_ok());
        let mut l = self.local();
        if was_active {
            l.instances = l.instances.saturating_sub(1);
        }
        l.locks.remove(uuid);
        Ok(())
    }
}
