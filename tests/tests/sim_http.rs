//! The HTTP seam in the simulator: the conformance suite (`stackbed_services::conformance::
//! http`, which `real/tests/conformance.rs` runs against the in-process implementation),
//! keystone reached without the broker, and placement's failover between workers.
#![cfg(madsim)]

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::{Handle, NodeHandle, Runtime};
use stackbed_core::model::{Inventory, Provider, Record, Resources, Table};
use stackbed_core::scenario::Scenario;
use stackbed_core::store::{Expect, Op};
use stackbed_services::api::{Api, NovaClient};
use stackbed_services::clock::Clock;
use stackbed_services::conformance;
use stackbed_services::ctx::Ctx;
use stackbed_services::identity::{self, Identity, TOKENS_PATH};
use stackbed_services::metrics::Metrics;
use stackbed_services::monitor::Monitor;
use stackbed_services::placement::{ClaimOutcome, Placement, PlacementClient};
use stackbed_services::seams::{
    Body, HandlerRef, Http, HttpRequest, Method, HTTP_TIMEOUT, KEYSTONE, NOVA_API, PLACEMENT,
};
use stackbed_sim::broker::{self, SimBus};
use stackbed_sim::dbnode::{self, Durability, SimDb, SimStore};
use stackbed_sim::http::{Endpoints, SimHttp};
use stackbed_tests::root;

const BROKER: &str = "10.9.0.1:5672";
const DATABASE: &str = "10.9.0.2:3306";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn simulated_http_conforms() {
    for seed in 1..=3 {
        Runtime::with_seed_and_config(seed, madsim::Config::default()).block_on(async {
            let handle = Handle::current();
            let clock = Clock::start();
            let mut endpoints = Endpoints::default();
            let worker_ips = ["10.9.2.1", "10.9.2.2"];
            for (w, i) in conformance::HTTP_WORKERS.iter().zip(worker_ips) {
                endpoints.add(conformance::HTTP_SERVICE, w, ip(i));
            }
            let endpoints = Arc::new(endpoints);
            let client = handle.create_node().ip(ip("10.9.1.1")).build();
            let eps = endpoints.clone();
            client
                .spawn(async move {
                    let start = |worker: String, handler: HandlerRef| {
                        let at = if worker == conformance::HTTP_WORKERS[0] { worker_ips[0] } else { worker_ips[1] };
                        let (eps, clock) = (eps.clone(), clock.clone());
                        let node = Handle::current()
                            .create_node()
                            .name(&worker)
                            .ip(ip(at))
                            .init(move || {
                                let http = SimHttp::new(&worker, ip(at), eps.clone(), &clock, clock.clone());
                                let handler = handler.clone();
                                async move {
                                    let _ = http.serve(conformance::HTTP_SERVICE, handler).await;
                                }
                            })
                            .build();
                        async move {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            let id = node.id();
                            let stop: conformance::Stop = Box::new(move || Handle::current().kill(id));
                            stop
                        }
                    };
                    let (client_clock, client_eps) = (clock.clone(), eps.clone());
                    conformance::http(start, move |name| {
                        let http: stackbed_services::seams::HttpRef = SimHttp::new(
                            &name,
                            ip("10.9.1.1"),
                            client_eps.clone(),
                            &client_clock,
                            client_clock.clone(),
                        );
                        async move { http }
                    })
                    .await;
                })
                .await
                .unwrap();
        });
    }
}

/// What a node needs to connect.
#[derive(Clone)]
struct World {
    scenario: Arc<Scenario>,
    endpoints: Arc<Endpoints>,
    clock: Clock,
}

/// A small deployment: broker, database, and HTTP workers, each on its own node.
struct Deployment {
    world: World,
    broker: NodeHandle,
    workers: Vec<NodeHandle>,
}

async fn ctx(d: &World, node: &str, at: IpAddr) -> Ctx {
    Ctx {
        bus: SimBus::connect_default(addr(BROKER), node),
        db: SimDb::with_pool(addr(DATABASE), 5, 50),
        db_retry: stackbed_services::db_retry::DbRetry::for_node(
            &d.scenario,
            1,
            node,
            d.clock.clone(),
            Metrics::default(),
        ),
        http: SimHttp::new(node, at, d.endpoints.clone(), &d.clock, d.clock.clone()),
        cpu: Arc::new(stackbed_services::seams::RealCpu),
        clock: d.clock.clone(),
        metrics: Metrics::default(),
        scenario: d.scenario.clone(),
        seed: 1,
        node: node.to_string(),
        incarnation: 0,
    }
}

async fn deploy<F, Fut>(workers: &[(&str, &'static str, &str)], serve: F) -> Deployment
where
    F: Fn(&'static str, Ctx) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let handle = Handle::current();
    let scenario = Arc::new(Scenario::load(&root().join("scenarios/quickstart.toml")).unwrap());
    let clock = Clock::start();
    let store = SimStore::new(Monitor::new(true, 600_000), Durability::SyncEachCommit);
    let broker = handle
        .create_node()
        .name("broker")
        .ip(addr(BROKER).ip())
        .init(|| broker::serve_default(addr(BROKER), broker::BrokerState::default()))
        .build();
    handle
        .create_node()
        .name("db")
        .ip(addr(DATABASE).ip())
        .init({
            let clock = clock.clone();
            move || {
                let (store, clock) = (store.clone(), clock.clone());
                async move { dbnode::serve(addr(DATABASE), store, clock).await }
            }
        })
        .build();
    let mut endpoints = Endpoints::default();
    for (name, service, at) in workers {
        endpoints.add(service, name, ip(at));
    }
    let world = World { scenario, endpoints: Arc::new(endpoints), clock };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut nodes = Vec::new();
    for (name, service, at) in workers {
        let (name, service, at, world) = (name.to_string(), *service, ip(at), world.clone());
        let node = handle
            .create_node()
            .name(&name)
            .ip(at)
            .init(move || {
                let (name, world) = (name.clone(), world.clone());
                async move { serve(service, ctx(&world, &name, at).await).await }
            })
            .build();
        nodes.push(node);
    }
    let d = Deployment { world, broker, workers: nodes };
    tokio::time::sleep(Duration::from_millis(200)).await;
    d
}

async fn serve(service: &'static str, ctx: Ctx) {
    let _ = match service {
        KEYSTONE => Identity::new(ctx).run().await,
        PLACEMENT => Placement::new(ctx).run().await,
        NOVA_API => Api::new(ctx).run().await,
        _ => Ok(()),
    };
}

/// keystone and keystonemiddleware talk HTTP: with the broker node killed, a user still
/// gets a token, keystone still validates it, and nova-api still authenticates a request
/// with a token it has never seen (no cached validation).
#[test]
fn a_token_validates_while_the_broker_is_down() {
    Runtime::with_seed_and_config(1, madsim::Config::default()).block_on(async {
        let d = deploy(&[("keystone-1", KEYSTONE, "10.9.3.1"), ("nova-api-1", NOVA_API, "10.9.4.1")], serve).await;
        let client = Handle::current().create_node().name("rally").ip(ip("10.9.5.1")).build();
        let d = Arc::new(d);
        let broker = d.broker.id();
        client
            .spawn(async move {
                let c = ctx(&d.world, "rally", ip("10.9.5.1")).await;
                let nova = NovaClient::new(c.http.clone());
                let (project, user, password) = identity::tenants(&d.world.scenario).remove(0);
                let first = nova.authenticate(&user.name, &password, &project.id).await.expect("a token");
                nova.list_servers(&first).await.expect("nova-api accepts the token");
                Handle::current().kill(broker);
                tokio::time::sleep(Duration::from_secs(1)).await;
                let req = HttpRequest::new(Method::Get, TOKENS_PATH, Body::SubjectToken(first.clone()));
                let validated = c.http.request(KEYSTONE, req, HTTP_TIMEOUT).await.expect("keystone answers");
                assert_eq!(validated.status, 200, "{validated:?}");
                assert!(matches!(validated.body, Body::TokenInfo(ref p) if p.project_id == project.id));
                let second = nova.authenticate(&user.name, &password, &project.id).await.expect("a new token");
                assert_ne!(first, second);
                let servers = nova.list_servers(&second).await.expect("validated by keystone without the broker");
                assert!(servers.is_empty());
            })
            .await
            .unwrap();
    });
}

/// Two placement workers behind the endpoint list: one is killed, and every claim, read and
/// release still succeeds through the other.
#[test]
fn a_killed_placement_worker_fails_over() {
    Runtime::with_seed_and_config(1, madsim::Config::default()).block_on(async {
        let workers = [("placement-1", PLACEMENT, "10.9.3.1"), ("placement-2", PLACEMENT, "10.9.3.2")];
        let d = Arc::new(deploy(&workers, serve).await);
        let first = d.workers[0].id();
        let client = Handle::current().create_node().name("nova-scheduler-1").ip(ip("10.9.5.2")).build();
        client
            .spawn(async move {
                let c = ctx(&d.world, "nova-scheduler-1", ip("10.9.5.2")).await;
                let inventories =
                    [Inventory::new(16, 0, 4.0), Inventory::new(65536, 0, 1.0), Inventory::new(500, 0, 1.0)];
                let provider = Provider { host: "compute-1".into(), inventories, used: Resources::default() };
                let put = Op::Put {
                    table: Table::Providers,
                    key: "compute-1".into(),
                    value: Record::Provider(provider),
                    expect: Expect::Absent,
                };
                c.db.execute(vec![put]).await.expect("provider registered");
                let placement = PlacementClient::new(&c, "test");
                let one = Resources::new(1, 1024, 10);
                let placement = &placement;
                let claim = |n: u32| async move { placement.claim(&format!("vm-{n}"), "demo", "compute-1", one).await };
                assert_eq!(claim(0).await.unwrap(), ClaimOutcome::Claimed);
                Handle::current().kill(first);
                for n in 1..=4 {
                    assert_eq!(claim(n).await.unwrap(), ClaimOutcome::Claimed, "claim {n} after placement-1 died");
                }
                let providers = placement.candidates().await.expect("candidates from placement-2");
                let Some(Record::Provider(p)) = providers.get("compute-1").map(|r| r.value.clone()) else {
                    panic!("compute-1 missing from {providers:?}");
                };
                assert_eq!(p.used, Resources::new(5, 5 * 1024, 50), "five claims, none lost, none twice");
                assert!(placement.release("vm-0").await.unwrap(), "released");
                assert!(!placement.release("vm-0").await.unwrap(), "nothing left to release");
                let unanswered = c.metrics.counters().get("placement_client.no_response").copied();
                assert_eq!(unanswered, None, "every request answered: the dead worker was skipped on refusal");
            })
            .await
            .unwrap();
    });
}
