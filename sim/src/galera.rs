//! A Galera cluster behind HAProxy in the simulated world (`[topology.db] nodes` above 1).
//! The cluster's state is one [`stackbed_core::galera::Cluster`] outside every node (what
//! each node's disk and memory hold is modelled there); the nodes only move bytes:
//!
//! - `db-N` serves transactions on port 3306 and clustercheck on 9200 (HAProxy's health
//!   check: up while the node is in the primary component), and gossips on 4567: every
//!   second it pings the other nodes and reports whom it heard from within the last
//!   [`SUSPECT_TIMEOUT`] (`evs.suspect_timeout`), so a partition that resets nothing still
//!   splits the cluster, five seconds late, as Galera's does;
//! - a kill crashes the node in the model at once (the registry's kill hook); its next start
//!   rejoins (IST or SST);
//! - `haproxy` accepts the services' connections on 3306, gives each a server as
//!   [`stackbed_core::proxy::Proxy`] decides, relays its transactions, runs the health
//!   checks every `inter`, and ends the sessions the proxy ends. It keeps nothing across a
//!   restart.
//!
//! Every certified commit goes to the oracle in certification order, under the cluster's
//! lock. The cluster's counts go to the run's counters as they change (`db.*`), where
//! report.json's anomalies read them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use stackbed_core::galera::{Cluster, GaleraStats, Options};
use stackbed_core::model::Millis;
use stackbed_core::proxy::{Proxy, ProxyConfig, ProxyEvent};
use stackbed_core::store::{DbError, Op, OpResult};
use stackbed_core::sync::guard;
use stackbed_services::clock::Clock;
use stackbed_services::metrics::Metrics;
use stackbed_services::monitor::MonitorRef;

use crate::conn;
use crate::dbnode::{Greeting, Request, Response};

/// Where the services reach the database when it is a cluster: HAProxy's listener.
pub const PROXY_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)), 3306);

/// How long a node goes unheard before the others leave it out of their view.
pub const SUSPECT_TIMEOUT: Duration = Duration::from_secs(5);
const GOSSIP_INTERVAL: Duration = Duration::from_secs(1);
const MYSQL_PORT: u16 = 3306;
const CHECK_PORT: u16 = 9200;
const GOSSIP_PORT: u16 = 4567;

/// Node `i`'s (from 0) address.
pub fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + i as u8))
}

fn at(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(node_ip(i), port)
}

/// clustercheck's question and answer.
struct Check;
struct Synced(bool);
/// A gossip ping from node `from`.
struct Ping {
    from: usize,
}

struct State {
    cluster: Cluster,
    monitor: MonitorRef,
    metrics: Metrics,
    published: GaleraStats,
    /// Each node's last report: whom it heard from.
    views: Vec<BTreeSet<usize>>,
    /// The components last given to the cluster.
    components: Vec<Vec<usize>>,
    /// Times each node's init ran.
    starts: Vec<u32>,
}

/// The cluster's state, shared by its nodes' inits and the registry's kill hooks.
#[derive(Clone)]
pub struct SimCluster(Arc<Mutex<State>>);

impl SimCluster {
    pub fn new(opts: Options, monitor: MonitorRef, metrics: Metrics) -> SimCluster {
        let n = opts.nodes;
        let everyone: BTreeSet<usize> = (0..n).collect();
        SimCluster(Arc::new(Mutex::new(State {
            cluster: Cluster::new(opts),
            monitor,
            metrics,
            published: GaleraStats::default(),
            views: vec![everyone; n],
            components: vec![(0..n).collect()],
            starts: vec![0; n],
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        guard(&self.0)
    }

    fn execute(&self, node: usize, now_ms: Millis, ops: Vec<Op>) -> Result<Vec<OpResult>, DbError> {
        let st = &mut *self.lock();
        let out = st.cluster.execute(node, now_ms, ops);
        let out = out.map(|(results, commit)| {
            if let Some(c) = commit {
                guard(&st.monitor).on_commit(now_ms, &c);
            }
            results
        });
        st.publish();
        out
    }

    fn synced(&self, node: usize, now_ms: Millis) -> bool {
        let mut st = self.lock();
        st.cluster.tick(now_ms);
        st.cluster.is_primary(node)
    }

    /// The registry's kill hook: node `i` crashed.
    pub fn crashed(&self, node: usize, now_ms: Millis) {
        let st = &mut *self.lock();
        st.cluster.crash(node, now_ms);
        st.publish();
    }

    /// Node `i`'s init ran: after the first time, it rejoins.
    fn started(&self, node: usize, now_ms: Millis) {
        let st = &mut *self.lock();
        st.starts[node] += 1;
        if st.starts[node] > 1 {
            st.cluster.restart(node, now_ms);
            st.publish();
        }
    }

    /// Node `i` heard from `heard` lately: the components are the groups of nodes that hear
    /// each other (both ways, directly or through others).
    fn view(&self, node: usize, heard: BTreeSet<usize>, now_ms: Millis) {
        let st = &mut *self.lock();
        st.views[node] = heard;
        let n = st.views.len();
        let mut component: Vec<usize> = (0..n).collect();
        fn root(c: &mut [usize], mut x: usize) -> usize {
            while c[x] != x {
                c[x] = c[c[x]];
                x = c[x];
            }
            x
        }
        for a in 0..n {
            for b in a + 1..n {
                if st.views[a].contains(&b) && st.views[b].contains(&a) {
                    let (ra, rb) = (root(&mut component, a), root(&mut component, b));
                    component[ra.max(rb)] = ra.min(rb);
                }
            }
        }
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for x in 0..n {
            let r = root(&mut component, x);
            groups.entry(r).or_default().push(x);
        }
        let groups: Vec<Vec<usize>> = groups.into_values().collect();
        if groups != st.components {
            st.components = groups.clone();
            st.cluster.set_components(&groups, now_ms);
            st.publish();
        }
    }
}

impl State {
    /// The cluster's counts that changed, to the run's counters.
    fn publish(&mut self) {
        let now = self.cluster.stats();
        let before = self.published;
        for (name, a, b) in [
            ("db.certification_failures", now.certification_failures, before.certification_failures),
            // What the database answered 1213 to: report.json's anomalies.deadlocks.
            ("db.deadlocks", now.certification_failures, before.certification_failures),
            ("db.non_primary_refusals", now.non_primary_refusals, before.non_primary_refusals),
            ("db.ist", now.ist, before.ist),
            ("db.sst", now.sst, before.sst),
            ("db.lost_commits", now.lost_commits, before.lost_commits),
        ] {
            if a > b {
                self.metrics.count(name, a - b);
            }
        }
        self.published = now;
    }
}

/// Node `i`'s init: transactions, clustercheck and gossip, until the node dies.
pub async fn serve_node(i: usize, nodes: usize, cluster: SimCluster, clock: Clock) {
    cluster.started(i, clock.now_ms());
    let (c, k) = (cluster.clone(), clock.clone());
    tokio::spawn(async move {
        let _ = conn::accept_each(at(i, MYSQL_PORT), move |_, tx, mut rx| {
            let (cluster, clock) = (c.clone(), k.clone());
            async move {
                while let Some(req) = conn::recv::<Request>(&mut rx).await {
                    let result = cluster.execute(i, clock.now_ms(), req.ops);
                    if conn::send(&tx, Response { result }).await.is_err() {
                        break;
                    }
                }
            }
        })
        .await;
    });
    let (c, k) = (cluster.clone(), clock.clone());
    tokio::spawn(async move {
        let _ = conn::accept_each(at(i, CHECK_PORT), move |_, tx, mut rx| {
            let (cluster, clock) = (c.clone(), k.clone());
            async move {
                while conn::recv::<Check>(&mut rx).await.is_some() {
                    if conn::send(&tx, Synced(cluster.synced(i, clock.now_ms()))).await.is_err() {
                        break;
                    }
                }
            }
        })
        .await;
    });
    // Whom this node heard from, and when. A node starts as if it had just heard from every
    // peer (as Galera's joiner starts from the view it joins): it suspects one only after
    // SUSPECT_TIMEOUT of silence, and the others' views decide whether it is with them.
    let start = clock.now_ms();
    let heard: Arc<Mutex<BTreeMap<usize, Millis>>> =
        Arc::new(Mutex::new((0..nodes).filter(|&j| j != i).map(|j| (j, start)).collect()));
    let (h, k) = (heard.clone(), clock.clone());
    tokio::spawn(async move {
        let _ = conn::accept_each(at(i, GOSSIP_PORT), move |_, _tx, mut rx| {
            let (heard, clock) = (h.clone(), k.clone());
            async move {
                while let Some(p) = conn::recv::<Ping>(&mut rx).await {
                    guard(&heard).insert(p.from, clock.now_ms());
                }
            }
        })
        .await;
    });
    let mut peers: BTreeMap<usize, madsim::net::Sender> = BTreeMap::new();
    loop {
        clock.sleep(GOSSIP_INTERVAL).await;
        for j in (0..nodes).filter(|&j| j != i) {
            let alive = match peers.get(&j) {
                Some(tx) => conn::send(tx, Ping { from: i }).await.is_ok(),
                None => false,
            };
            if !alive {
                peers.remove(&j);
                if let Some(Ok((tx, _rx, _))) = clock.timeout(GOSSIP_INTERVAL, conn::connect(at(j, GOSSIP_PORT))).await
                {
                    if conn::send(&tx, Ping { from: i }).await.is_ok() {
                        peers.insert(j, tx);
                    }
                }
            }
        }
        let now = clock.now_ms();
        let suspect = SUSPECT_TIMEOUT.as_millis() as u64;
        let mut view: BTreeSet<usize> =
            guard(&heard).iter().filter(|(_, &t)| now.saturating_sub(t) <= suspect).map(|(&j, _)| j).collect();
        view.insert(i);
        cluster.view(i, view, now);
    }
}

/// HAProxy's init: a fresh proxy (nothing survives its restart), the health checks, and
/// one relay per client connection.
pub async fn serve_proxy(cfg: ProxyConfig, clock: Clock, metrics: Metrics) {
    let servers = cfg.servers.len();
    let inter = Duration::from_millis(cfg.inter_ms);
    let proxy = Arc::new(Mutex::new(Proxy::new(cfg)));
    let ends: Arc<Mutex<BTreeMap<u64, oneshot::Sender<()>>>> = Arc::default();
    // The server new sessions went to last: its being marked down is a failover.
    let last_pick: Arc<Mutex<Option<usize>>> = Arc::default();
    let (p, e, k, lp) = (proxy.clone(), ends.clone(), clock.clone(), last_pick.clone());
    tokio::spawn(async move {
        let _ = conn::accept_each(PROXY_ADDR, move |_, ctx, mut crx| {
            let (proxy, ends, clock, last_pick) = (p.clone(), e.clone(), k.clone(), lp.clone());
            async move {
                let Ok((session, server)) = guard(&proxy).connect(clock.now_ms()) else { return };
                *guard(&last_pick) = Some(server);
                let (stop_tx, mut stop) = oneshot::channel();
                guard(&ends).insert(session, stop_tx);
                let mut backend = conn::connect(at(server, MYSQL_PORT)).await.ok();
                if backend.is_some() && conn::send(&ctx, Greeting).await.is_err() {
                    backend = None;
                }
                if let Some((btx, mut brx, _)) = backend {
                    loop {
                        tokio::select! {
                            biased;
                            _ = &mut stop => break,
                            resp = conn::recv::<Response>(&mut brx) => {
                                let Some(resp) = resp else { break };
                                guard(&proxy).activity(session, clock.now_ms());
                                if conn::send(&ctx, *resp).await.is_err() {
                                    break;
                                }
                            }
                            req = conn::recv::<Request>(&mut crx) => {
                                let Some(req) = req else { break };
                                guard(&proxy).activity(session, clock.now_ms());
                                if conn::send(&btx, *req).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
                guard(&proxy).close(session);
                guard(&ends).remove(&session);
            }
        })
        .await;
    });
    loop {
        clock.sleep(inter).await;
        let mut ok = Vec::with_capacity(servers);
        for i in 0..servers {
            let check = async {
                let (tx, mut rx, _) = conn::connect(at(i, CHECK_PORT)).await.ok()?;
                conn::send(&tx, Check).await.ok()?;
                conn::recv::<Synced>(&mut rx).await.map(|s| s.0)
            };
            ok.push(clock.timeout(inter, check).await.flatten().unwrap_or(false));
        }
        let now = clock.now_ms();
        let events = guard(&proxy).check(now, &ok);
        let mut ended = guard(&proxy).expire(now);
        for ev in events {
            match ev {
                ProxyEvent::MarkedDown(i) => {
                    metrics.count("db.proxy_marked_down", 1);
                    if *guard(&last_pick) == Some(i) {
                        metrics.count("db.failovers", 1);
                    }
                }
                ProxyEvent::MarkedUp(_) => metrics.count("db.proxy_marked_up", 1),
                ProxyEvent::Ended(ids) => ended.extend(ids),
            }
        }
        let mut ends = guard(&ends);
        for id in ended {
            if let Some(stop) = ends.remove(&id) {
                let _ = stop.send(());
            }
        }
    }
}
