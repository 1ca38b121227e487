//! One simulated run: build the madsim runtime from the seed, start every node, drive the
//! workload, report.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::{Handle, Runtime};

use stackbed_services::api::Api;
use stackbed_services::clock::Clock;
use stackbed_services::compute::Compute;
use stackbed_services::conductor::Conductor;
use stackbed_services::ctx::Ctx;
use stackbed_services::db_retry::DbRetry;
use stackbed_services::identity::Identity;
use stackbed_services::metrics::Metrics;
use stackbed_services::monitor::{Monitor, MonitorRef};
use stackbed_services::report::{drive, Report, ReportContext, RunOptions};
use stackbed_services::scheduler::Scheduler;

use crate::broker::{self, SimBus};
use crate::dbnode::{self, Durability, SimDb, SimStore};
use crate::host::SimHost;

const BROKER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 5672);
const DATABASE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 3306);

/// Node addresses: infrastructure in 10.0.0.0/24, control services in 10.0.1.0/24,
/// compute hosts from 10.1.0.1 upwards.
fn ip(net: u8, n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, net + (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

/// Everything a node's services need to connect; cloned into each node's init.
#[derive(Clone)]
struct World {
    opts: RunOptions,
    clock: Clock,
    metrics: Metrics,
}

impl World {
    async fn ctx(&self, node: &str) -> std::io::Result<Ctx> {
        let bus = SimBus::connect(BROKER, node, self.metrics.clone()).await?;
        let db = SimDb::new(DATABASE, &self.opts.scenario.control);
        Ok(Ctx {
            bus,
            db,
            db_retry: DbRetry::for_node(&self.opts.scenario, self.opts.seed, node, self.clock, self.metrics.clone()),
            clock: self.clock,
            metrics: self.metrics.clone(),
            scenario: self.opts.scenario.clone(),
            seed: self.opts.seed,
        })
    }
}

/// Starts a node whose init connects to broker and database and runs `service`.
fn service_node<F, Fut>(handle: &Handle, name: &str, addr: IpAddr, world: &World, service: F)
where
    F: Fn(Ctx) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let world = world.clone();
    let service = Arc::new(service);
    let node = name.to_string();
    handle
        .create_node()
        .name(name)
        .ip(addr)
        .init(move || {
            let world = world.clone();
            let service = service.clone();
            let node = node.clone();
            async move {
                match world.ctx(&node).await {
                    Ok(ctx) => service(ctx).await,
                    Err(e) => world.metrics.count(&format!("node_connect_errors.{e}"), 1),
                }
            }
        })
        .build();
}

/// Runs the scenario once under the simulator with `opts.seed`.
pub fn run(opts: &RunOptions) -> Result<Report, String> {
    let wall = std::time::Instant::now(); // wall clock, outside the simulation
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
            let world = World { opts: opts.clone(), clock, metrics: metrics.clone() };
            // The database's state outlives its node: a restart keeps what was synced.
            let store = SimStore::new(monitor.clone(), Durability::SyncEachCommit);
            handle
                .create_node()
                .name("rabbitmq")
                .ip(BROKER.ip())
                .init(|| async { broker::serve(BROKER).await })
                .build();
            handle
                .create_node()
                .name("mysql")
                .ip(DATABASE.ip())
                .init(move || dbnode::serve(DATABASE, store.clone(), clock))
                .build();
            // Let the broker and database bind before anyone sends to them.
            tokio::time::sleep(Duration::from_millis(100)).await;

            service_node(&handle, "keystone", ip(0, 257), &world, |ctx| async move {
                let _ = Identity::new(ctx).run().await;
            });
            service_node(&handle, "nova-conductor", ip(0, 258), &world, |ctx| async move {
                let _ = Conductor::new(ctx).run().await;
            });
            service_node(&handle, "nova-scheduler", ip(0, 259), &world, |ctx| async move {
                let _ = Scheduler::new(ctx).run().await;
            });
            for (i, (name, group)) in scenario.hosts().into_iter().enumerate() {
                let node = group.node(&name);
                let group = group.clone();
                let model = scenario.model.clone();
                service_node(&handle, &name, ip(1, i as u32 + 1), &world, move |ctx| {
                    let hv =
                        Arc::new(SimHost::new(node.clone(), model.clone(), ctx.rng(&format!("host-{}", node.host))));
                    let compute = Compute::new(ctx, hv, group.clone());
                    async move {
                        let _ = compute.run().await;
                    }
                });
            }

            let api_node = handle.create_node().name("nova-api").ip(ip(0, 260)).build();
            let (w, m) = (world.clone(), monitor.clone());
            let outcome = api_node
                .spawn(async move {
                    let ctx = w.ctx("nova-api").await.map_err(|e| format!("nova-api cannot connect: {e}"))?;
                    let api = Arc::new(Api::new(ctx.clone()));
                    let data = drive(ctx.clone(), api, m.clone()).await;
                    Ok::<_, String>((ctx, data))
                })
                .await
                .map_err(|e| format!("nova-api task failed: {e}"))?;
            let (ctx, data) = outcome?;
            Ok::<_, String>((ctx, data, monitor))
        }
    });
    let (ctx, data, monitor) = report?;
    Ok(Report::build(
        &ctx,
        &monitor,
        data,
        ReportContext {
            opts,
            world: "sim",
            hypervisor: "sim".into(),
            wall_s: wall.elapsed().as_secs_f64(), // wall clock
        },
    ))
}
