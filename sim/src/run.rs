//! One simulated run: build the madsim runtime from the seed, register every node of the
//! deployment (`stackbed_core::faults::nodes`), run the fault schedule against them, drive
//! the workload from the client node, report.

use stackbed_core::sync::guard;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::{Handle, Runtime};
use tokio::sync::oneshot;

use stackbed_core::faults::{self, FaultSchedule, Trigger};
use stackbed_services::api::NovaClient;
use stackbed_services::clock::Clock;
use stackbed_services::compute::Compute;
use stackbed_services::conductor::Conductor;
use stackbed_services::ctx::Ctx;
use stackbed_services::db_retry::DbRetry;
use stackbed_services::metrics::Metrics;
use stackbed_services::monitor::{Monitor, MonitorRef};
use stackbed_services::report::{drive, Report, ReportContext, RunOptions};
use stackbed_services::scheduler::Scheduler;

use crate::broker::{self, BrokerState, SimBus, SimBusConfig};
use crate::chaos::Chaos;
use crate::dbnode::{self, Durability, SimDb, SimStore};
use crate::host::{GuestTable, SimHost};
use crate::http::{self, Endpoints, SimHttp};
use crate::knobs::Knobs;
use crate::nodes::{Incarnations, Registry};

const BROKER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 5672);
const DATABASE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 3306);

/// Node addresses: infrastructure in 10.0.0.0/24, conductors and schedulers from
/// 10.0.1.1, compute hosts from 10.1.0.1 upwards (HTTP workers and the client: `http.rs`).
fn ip(net: u8, n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, net + (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

/// Everything a node's services need to connect; cloned into each node's init.
#[derive(Clone)]
struct World {
    opts: RunOptions,
    clock: Clock,
    metrics: Metrics,
    knobs: Knobs,
    endpoints: Arc<Endpoints>,
    bus: SimBusConfig,
    /// Each control process's controller cores (`cpu::controller_cores`).
    cores: Arc<BTreeMap<String, crate::cpu::Cores>>,
}

impl World {
    async fn ctx(&self, node: &str, incarnation: u32, ip: IpAddr) -> std::io::Result<Ctx> {
        let clock = self.clock.skewed(self.knobs.node(node).skew());
        // A client's name makes its reply queue and msg ids; the incarnation keeps them
        // unique across restarts, as oslo's reply_<uuid4> is per process.
        let name = match self.opts.scenario.debug.plant_bug {
            Some(stackbed_core::scenario::PlantedBug::ReplyQueueReusedAfterRestart) => node.to_string(),
            _ => format!("{node}.{incarnation}"),
        };
        let bus = SimBus::connect(self.bus.clone(), &name, clock.clone(), self.metrics.clone(), self.knobs.node(node));
        let control = &self.opts.scenario.control;
        let db = if self.opts.scenario.topology.db.clustered() {
            SimDb::greeted(crate::galera::PROXY_ADDR, control)
        } else {
            SimDb::new(DATABASE, control)
        };
        Ok(Ctx {
            bus,
            db,
            http: SimHttp::new(node, ip, self.endpoints.clone(), &self.clock, clock.clone()),
            cpu: Arc::new(crate::cpu::SimCpu::new(self.knobs.node(node), clock.clone(), self.cores.get(node).cloned())),
            clock,
            db_retry: DbRetry::for_node(
                &self.opts.scenario,
                self.opts.seed,
                node,
                self.clock.clone(),
                self.metrics.clone(),
            ),
            metrics: self.metrics.clone(),
            scenario: self.opts.scenario.clone(),
            seed: self.opts.seed,
            node: node.to_string(),
            incarnation,
        })
    }
}

/// Registers a node whose init connects to broker and database and runs `service`.
fn service_node<F, Fut>(
    reg: &mut Registry,
    name: &str,
    group: &str,
    addr: IpAddr,
    guests: Option<GuestTable>,
    world: &World,
    service: F,
) where
    F: Fn(Ctx) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let world = world.clone();
    let service = Arc::new(service);
    let node = name.to_string();
    reg.add(name, group, addr, guests, move |incarnations: Incarnations| {
        let world = world.clone();
        let service = service.clone();
        let node = node.clone();
        async move {
            match world.ctx(&node, incarnations.next(), addr).await {
                Ok(ctx) => service(ctx).await,
                Err(e) => world.metrics.count(&format!("node_connect_errors.{e}"), 1),
            }
        }
    });
}

/// The Galera nodes `db-1`..`db-N` on one cluster state, each crashing in the model when
/// killed, and HAProxy in front of them (`galera.rs`).
fn add_galera(
    reg: &mut Registry,
    scenario: &stackbed_core::scenario::Scenario,
    monitor: &MonitorRef,
    clock: &Clock,
    metrics: &Metrics,
) {
    let db = &scenario.topology.db;
    let n = db.nodes as usize;
    let cluster = crate::galera::SimCluster::new(db.galera(), monitor.clone(), metrics.clone());
    for i in 0..n {
        let name = format!("{}-{}", faults::DATABASE, i + 1);
        let (c, k) = (cluster.clone(), clock.clone());
        reg.add(&name, faults::DATABASE, crate::galera::node_ip(i), None, move |_| {
            crate::galera::serve_node(i, n, c.clone(), k.clone())
        });
        let (c, k) = (cluster.clone(), clock.clone());
        // Registered just above: the name exists.
        let _ = reg.on_kill(&name, Arc::new(move || c.crashed(i, k.now_ms())));
    }
    let (cfg, k, m) = (db.proxy_config(), clock.clone(), metrics.clone());
    reg.add(faults::PROXY, faults::PROXY, crate::galera::PROXY_ADDR.ip(), None, move |_| {
        crate::galera::serve_proxy(cfg.clone(), k.clone(), m.clone())
    });
}

/// The task-state triggers of a schedule, for the monitor.
fn task_state_triggers(schedule: &FaultSchedule) -> Vec<(usize, stackbed_core::states::TaskState, u32)> {
    let mut out = Vec::new();
    for (i, f) in schedule.faults.iter().enumerate() {
        if let Trigger::TaskState { state, nth } = f.trigger {
            out.push((i, state, nth));
        }
    }
    out
}

/// Runs the scenario once under the simulator with `opts.seed`.
pub fn run(opts: &RunOptions) -> Result<Report, String> {
    let wall = std::time::Instant::now(); // wall clock, outside the simulation
    let schedule = opts.scenario.fault_schedule(opts.seed)?;
    let check_guests = schedule.phases.heal || schedule.is_empty();
    let rt = Runtime::with_seed_and_config(opts.seed, madsim::Config::default());
    let report = rt.block_on({
        let opts = opts.clone();
        async move {
            let handle = Handle::current();
            let clock = Clock::start();
            let metrics = Metrics::default();
            let scenario = opts.scenario.clone();
            let monitor: MonitorRef =
                Monitor::new(scenario.control.quota_recheck, scenario.workload.liveness_bound.ms());
            let triggers = guard(&monitor).watch_task_states(task_state_triggers(&schedule));
            let knobs = Knobs::new(opts.seed);
            let world = World {
                opts: opts.clone(),
                clock: clock.clone(),
                metrics: metrics.clone(),
                knobs: knobs.clone(),
                endpoints: Arc::new(Endpoints::of(&scenario)),
                cores: Arc::new(crate::cpu::controller_cores(&scenario)),
                bus: SimBusConfig {
                    oracle: Some(monitor.clone()),
                    ..SimBusConfig::new(vec![BROKER], &scenario.control)
                },
            };
            let mut reg = Registry::new(handle.clone());

            // The broker's queues outlive its node: a restart keeps what RabbitMQ keeps.
            let broker_state = BrokerState::default();
            let (c, m, policy) = (clock.clone(), metrics.clone(), world.bus.policy.clone());
            reg.add(faults::BROKER, faults::BROKER, BROKER.ip(), None, move |_| {
                let (state, clock, metrics, policy) = (broker_state.clone(), c.clone(), m.clone(), policy.clone());
                async move {
                    let _ = broker::serve(BROKER, state, policy, clock, metrics).await;
                }
            });
            let db = &scenario.topology.db;
            if db.clustered() {
                add_galera(&mut reg, &scenario, &monitor, &clock, &metrics);
            } else {
                // The database's state outlives its node: a restart keeps what was synced.
                let store = SimStore::new(monitor.clone(), Durability::SyncEachCommit);
                let c = clock.clone();
                reg.add(faults::DATABASE, faults::DATABASE, DATABASE.ip(), None, move |_| {
                    let (store, clock) = (store.clone(), c.clone());
                    async move {
                        let _ = dbnode::serve(DATABASE, store, clock).await;
                    }
                });
            }
            // Let the broker and database bind before anyone sends to them.
            tokio::time::sleep(Duration::from_millis(100)).await;

            let hosts: BTreeMap<String, _> = scenario.hosts().into_iter().collect();
            // keystone, placement and nova-api workers serve HTTP at their own addresses.
            let http_workers: BTreeMap<String, (&'static str, IpAddr)> =
                http::workers(&scenario).into_iter().map(|(name, service, ip)| (name, (service, ip))).collect();
            let (mut control, mut computes) = (0u32, 0u32);
            for node in faults::nodes(&scenario) {
                let (name, group) = (node.name.as_str(), node.group.as_str());
                if let Some(&(service, addr)) = http_workers.get(name) {
                    service_node(&mut reg, name, group, addr, None, &world, move |ctx| {
                        http::serve_worker(service, ctx)
                    });
                    continue;
                }
                match group {
                    faults::NOVA_CONDUCTOR => {
                        control += 1;
                        service_node(&mut reg, name, group, ip(0, 256 + control), None, &world, |ctx| async move {
                            let _ = Conductor::new(ctx).run().await;
                        })
                    }
                    faults::NOVA_SCHEDULER => {
                        control += 1;
                        service_node(&mut reg, name, group, ip(0, 256 + control), None, &world, |ctx| async move {
                            let _ = Scheduler::new(ctx).run().await;
                        })
                    }
                    faults::COMPUTE => {
                        computes += 1;
                        let Some(group_decl) = hosts.get(name) else { continue };
                        let hv_node = group_decl.node(name);
                        let group_decl = (*group_decl).clone();
                        let model = scenario.model.clone();
                        let guests = GuestTable::default();
                        let (g, cell) = (guests.clone(), knobs.node(name));
                        service_node(&mut reg, name, group, ip(1, computes), Some(guests), &world, move |ctx| {
                            let rng = ctx.rng(&format!("host-{}", hv_node.host));
                            let hv =
                                Arc::new(SimHost::new(hv_node.clone(), model.clone(), rng, g.clone(), cell.clone()));
                            let compute = Compute::new(ctx, hv, group_decl.clone());
                            async move {
                                let _ = compute.run().await;
                            }
                        });
                    }
                    // The broker and the database are registered above.
                    _ => {}
                }
            }

            let chaos = Chaos::new(schedule, reg, knobs, clock.clone(), metrics.clone());
            let log = chaos.log();
            let (submitted_tx, submitted_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            let executor = tokio::spawn(chaos.run(triggers, submitted_rx, done_rx));

            // The Rally-style runner on a client node of its own: killing nova-api does not
            // kill the workload, which reaches nova-api and keystone over HTTP.
            let client = handle.create_node().name(faults::CLIENT).ip(http::CLIENT_IP).build();
            let (w, m) = (world.clone(), monitor.clone());
            let outcome = client
                .spawn(async move {
                    let node = faults::CLIENT;
                    let ctx =
                        w.ctx(node, 0, http::CLIENT_IP).await.map_err(|e| format!("{node} cannot connect: {e}"))?;
                    let services = [stackbed_services::seams::KEYSTONE, stackbed_services::seams::NOVA_API];
                    http::wait_for_services(&w.endpoints, &services, Duration::from_secs(60)).await?;
                    let nova = NovaClient::new(ctx.http.clone());
                    let data = drive(ctx.clone(), nova, m.clone(), Some(submitted_tx)).await;
                    Ok::<_, String>((ctx, data))
                })
                .await
                .map_err(|e| format!("{} task failed: {e}", faults::CLIENT))?;
            let _ = done_tx.send(());
            let chaos = executor.await.map_err(|e| format!("the fault executor failed: {e}"))?;
            let (ctx, data) = outcome?;
            if check_guests {
                let guests = chaos.registry().guests();
                guard(&monitor).check_guests(clock.now_ms(), &guests);
            }
            let faults = guard(&log).clone();
            Ok::<_, String>((ctx, data, monitor, faults))
        }
    });
    let (ctx, data, monitor, faults) = report?;
    Ok(Report::build(
        &ctx,
        &monitor,
        data,
        ReportContext {
            opts,
            world: "sim",
            hypervisor: "sim".into(),
            wall_s: wall.elapsed().as_secs_f64(), // wall clock
            faults,
        },
    ))
}
