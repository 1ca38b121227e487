//! The `Http` seam over the simulated network (`conn`): each HTTP service's workers listen
//! on their own node's address (keystone on 5000, placement on 8778, nova-api on 8774);
//! a client reaches a service through its endpoint list, as through a load balancer's VIP.
//!
//! Policy (small on purpose): HTTP/1.1 keep-alive without pipelining, one request at a
//! time per connection; a client keeps up to [`IDLE_CONNECTIONS_MAX`] idle connections
//! per endpoint (requests' pool size) and opens a new one when none is idle. A client takes
//! the endpoints round-robin from a cursor of its own per service and, when a connection
//! is refused (the worker is dead, or its link clogged), tries the next one, each endpoint
//! at most once per request, as HAProxy's `redispatch` and keystoneauth's connect retries
//! do. An idle connection found dead when the request is sent (its worker died or
//! restarted) is dropped and a new one opened, as urllib3 does with a stale pooled
//! connection. A reset (the worker died mid-request) or a timeout is returned to the caller
//! and never retried: the request may have run. A clogged link after the connection was
//! made holds the messages (TCP retransmits) until the request's timeout. A request's
//! timeout is one simulator timer, left queued after the answer (madsim's timers cannot be
//! cancelled).
//!
//! Server side: each connection is served in a task of its own; at most
//! [`REQUESTS_IN_FLIGHT_MAX`] requests per worker run at once, the rest wait accepted (the
//! listen backlog). Killing the node drops those tasks, so the client's `recv` ends: a reset.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use stackbed_core::faults;
use stackbed_core::scenario::Scenario;
use stackbed_services::api::Api;
use stackbed_services::clock::Clock;
use stackbed_services::ctx::Ctx;
use stackbed_services::identity::Identity;
use stackbed_services::placement::Placement;
use stackbed_services::seams::{
    HandlerRef, Http, HttpError, HttpRequest, HttpResponse, RequestIds, KEYSTONE, NOVA_API, PLACEMENT,
};

use crate::conn;

/// Requests one worker serves at once: eventlet's wsgi pool size in nova-api
/// (`wsgi_default_pool_size`, 1000), used for every service here.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1000;

/// Idle keep-alive connections a client keeps per endpoint (requests' `pool_maxsize`).
pub const IDLE_CONNECTIONS_MAX: usize = 10;

type Connection = (madsim::net::Sender, madsim::net::Receiver);

/// The port a service listens on.
pub fn port(service: &str) -> u16 {
    match service {
        KEYSTONE => 5000,
        PLACEMENT => 8778,
        NOVA_API => 8774,
        _ => 8000,
    }
}

/// The client node's address (the Rally-style runner, `faults::CLIENT`).
pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 5, 1));

/// The HTTP workers of a scenario's deployment, in `faults::nodes` order: (node name,
/// service, address). Keystone workers are 10.0.2.i, placement 10.0.3.i, nova-api 10.0.4.i
/// (i from 1). Limit: 254 workers per service; the scenario does not bound the counts yet,
/// and workers past the 254th would share its address (their `serve` fails to bind and
/// counts `service_failed.*`).
pub fn workers(scenario: &Scenario) -> Vec<(String, &'static str, IpAddr)> {
    let mut seen: BTreeMap<&str, u8> = BTreeMap::new();
    let mut out = Vec::new();
    for node in faults::nodes(scenario) {
        let (service, net) = match node.group.as_str() {
            faults::KEYSTONE => (KEYSTONE, 2),
            faults::PLACEMENT => (PLACEMENT, 3),
            faults::NOVA_API => (NOVA_API, 4),
            _ => continue,
        };
        let i = seen.entry(service).or_insert(0);
        *i = i.saturating_add(1).min(254);
        out.push((node.name, service, IpAddr::V4(Ipv4Addr::new(10, 0, net, *i))));
    }
    out
}

/// Every service's endpoints: (worker node, address), in worker order.
#[derive(Debug, Clone, Default)]
pub struct Endpoints(BTreeMap<String, Vec<(String, SocketAddr)>>);

impl Endpoints {
    /// The endpoints of a scenario's HTTP workers.
    pub fn of(scenario: &Scenario) -> Endpoints {
        let mut e = Endpoints::default();
        for (node, service, ip) in workers(scenario) {
            e.add(service, &node, ip);
        }
        e
    }

    /// Adds `node` at `ip` as an endpoint of `service`.
    pub fn add(&mut self, service: &str, node: &str, ip: IpAddr) {
        self.0.entry(service.to_string()).or_default().push((node.to_string(), SocketAddr::new(ip, port(service))));
    }

    fn of_service(&self, service: &str) -> &[(String, SocketAddr)] {
        self.0.get(service).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// One node's HTTP stack.
pub struct SimHttp {
    ip: IpAddr,
    endpoints: Arc<Endpoints>,
    ids: RequestIds,
    /// The node's clock: requests' timeouts.
    clock: Clock,
    /// Round-robin cursor per service.
    cursors: Mutex<BTreeMap<String, usize>>,
    /// Idle keep-alive connections per endpoint.
    idle: Mutex<BTreeMap<SocketAddr, Vec<Connection>>>,
}

impl SimHttp {
    /// The stack of `node` at `ip`; request ids carry the node name and the start instant
    /// on the run's clock (a skewed node's clock could repeat an earlier incarnation's).
    pub fn new(node: &str, ip: IpAddr, endpoints: Arc<Endpoints>, run_clock: &Clock, clock: Clock) -> Arc<SimHttp> {
        Arc::new(SimHttp {
            ip,
            endpoints,
            ids: RequestIds::new(node, run_clock.now_ms()),
            clock,
            cursors: Mutex::new(BTreeMap::new()),
            idle: Mutex::new(BTreeMap::new()),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, BTreeMap<SocketAddr, Vec<Connection>>> {
        self.idle.lock().expect("http pool lock poisoned: a panic while holding it")
    }

    /// Sends `req` on an idle connection to `addr` or, when none is idle or the idle ones
    /// are dead, on a new one. `None`: the endpoint refused the connection.
    async fn send(&self, addr: SocketAddr, req: HttpRequest) -> Option<Connection> {
        loop {
            let Some((tx, rx)) = self.idle().get_mut(&addr).and_then(Vec::pop) else { break };
            // A dead connection fails the send at once: the worker died or restarted.
            if tx.send(Box::new(req.clone())).await.is_ok() {
                return Some((tx, rx));
            }
        }
        let (tx, rx, _) = conn::connect(addr).await.ok()?;
        // Just accepted, so a send can only fail if the worker died this instant: the
        // caller's recv then reports the reset.
        let _ = conn::send(&tx, req).await;
        Some((tx, rx))
    }

    /// Keeps a connection whose request was answered, up to the pool's size.
    fn keep(&self, addr: SocketAddr, connection: Connection) {
        let mut idle = self.idle();
        let list = idle.entry(addr).or_default();
        if list.len() < IDLE_CONNECTIONS_MAX {
            list.push(connection);
        }
    }

    fn next_cursor(&self, service: &str) -> usize {
        let mut c = self.cursors.lock().expect("http cursor lock poisoned: a panic while holding it");
        let n = c.entry(service.to_string()).or_insert(0);
        *n = n.wrapping_add(1);
        *n - 1
    }
}

#[async_trait]
impl Http for SimHttp {
    async fn request(&self, service: &str, mut req: HttpRequest, timeout: Duration) -> Result<HttpResponse, HttpError> {
        req.request_id = self.ids.next_id();
        let endpoints = self.endpoints.of_service(service);
        let start = self.next_cursor(service);
        let (method, path) = (req.method.name(), req.path.clone());
        for k in 0..endpoints.len() {
            let (node, addr) = &endpoints[(start + k) % endpoints.len()];
            // Refused (dead worker, clogged link) or no local port: the next endpoint.
            let Some((tx, mut rx)) = self.send(*addr, req.clone()).await else { continue };
            return match self.clock.timeout(timeout, conn::recv::<HttpResponse>(&mut rx)).await {
                Some(Some(resp)) => {
                    self.keep(*addr, (tx, rx));
                    Ok(*resp)
                }
                Some(None) => Err(HttpError::reset(service, node, method, path)),
                None => Err(HttpError::timeout(service, method, path, timeout)),
            };
        }
        Err(HttpError::ConnectionRefused { service: service.to_string(), endpoints: endpoints.len() })
    }

    async fn serve(&self, service: &str, handler: HandlerRef) -> Result<(), HttpError> {
        let addr = SocketAddr::new(self.ip, port(service));
        let pool = Arc::new(tokio::sync::Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
        let res: io::Result<()> = conn::accept_each(addr, move |_, tx, mut rx| {
            let (handler, pool) = (handler.clone(), pool.clone());
            async move {
                // Keep-alive: the connection's requests one after the other, until the
                // client closes it (or a response cannot be sent: it went away).
                while let Some(req) = conn::recv::<HttpRequest>(&mut rx).await {
                    let Ok(permit) = pool.clone().acquire_owned().await else { return };
                    let request_id = req.request_id.clone();
                    let mut resp = handler.handle(*req).await;
                    drop(permit);
                    resp.request_id = request_id;
                    if conn::send(&tx, resp).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await;
        res.map_err(|e| HttpError::CannotServe { service: service.to_string(), reason: e.to_string() })
    }
}

/// Runs the HTTP service `service` (keystone, placement or nova-api) on a worker node.
pub async fn serve_worker(service: &'static str, ctx: Ctx) {
    let res = match service {
        KEYSTONE => Identity::new(ctx.clone()).run().await,
        PLACEMENT => Placement::new(ctx.clone()).run().await,
        NOVA_API => Api::new(ctx.clone()).run().await,
        _ => return,
    };
    if let Err(e) = res {
        ctx.metrics.count(&format!("service_failed.{service}.{e}"), 1);
    }
}

/// Waits until every service in `services` has an endpoint accepting connections (Rally
/// checks its deployment before it starts), at most `wait`; names the first one missing.
pub async fn wait_for_services(endpoints: &Endpoints, services: &[&str], wait: Duration) -> Result<(), String> {
    let t0 = tokio::time::Instant::now();
    for service in services {
        loop {
            let mut up = false;
            for (_, addr) in endpoints.of_service(service) {
                if conn::connect(*addr).await.is_ok() {
                    up = true;
                    break;
                }
            }
            if up {
                break;
            }
            if t0.elapsed() > wait {
                return Err(format!("{service} accepted no connection within {wait:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
