//! The node registry: every simulated node of a run by name, with the faults a node can
//! suffer (kill, restart, pause, resume, power-off) and the network faults between nodes
//! (partitions, clogged links). What survives a restart is decided by the state the run
//! keeps outside the nodes (the database's store, the broker's queues, each host's guests);
//! a node's init builds its processes afresh from that state, so nothing survives by accident.
//!
//! madsim facts this relies on (madsim 0.2.34): `kill` drops the node's tasks and resets its
//! sockets, so a peer's send fails and its receive ends (a TCP reset); `restart` runs the
//! node's init again; `pause` stops polling its tasks (messages to it wait); a clogged link
//! holds messages and delivers them once unclogged, resetting nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::task::NodeId;

use stackbed_core::faults::Direction;

use crate::host::GuestTable;

/// What a node is doing, as the registry last made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Up,
    Killed,
    Paused,
    PoweredOff,
}

struct Node {
    group: String,
    id: NodeId,
    ip: IpAddr,
    state: NodeState,
    /// A compute host's guests (kept by libvirt, lost with the power).
    guests: Option<GuestTable>,
    /// How many times the node's init has run; read by the init to number incarnations.
    starts: Arc<AtomicU32>,
    /// Told when the node is killed (state kept outside it that a crash changes: a Galera
    /// node's log).
    on_kill: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Every node of one run.
pub struct Registry {
    handle: Handle,
    nodes: BTreeMap<String, Node>,
    /// Links clogged by partitions and clogs, (from, to), so healing undoes exactly them.
    clogged_links: BTreeSet<(String, String)>,
    clogged_nodes: BTreeSet<String>,
}

/// What a node's init is given: how many times it started before.
#[derive(Clone)]
pub struct Incarnations(Arc<AtomicU32>);

impl Incarnations {
    /// The number of this start (0 the first time), counting it.
    pub fn next(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

impl Registry {
    pub fn new(handle: Handle) -> Registry {
        Registry { handle, nodes: BTreeMap::new(), clogged_links: BTreeSet::new(), clogged_nodes: BTreeSet::new() }
    }

    /// Creates and starts node `name` of `group` at `ip`; `init` runs at every start with the
    /// node's incarnation counter.
    pub fn add<F, Fut>(&mut self, name: &str, group: &str, ip: IpAddr, guests: Option<GuestTable>, init: F)
    where
        F: Fn(Incarnations) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        assert!(!self.nodes.contains_key(name), "node {name} registered twice");
        let starts = Arc::new(AtomicU32::new(0));
        let incarnations = Incarnations(starts.clone());
        let node = self.handle.create_node().name(name).ip(ip).init(move || init(incarnations.clone())).build();
        let entry =
            Node { group: group.to_string(), id: node.id(), ip, state: NodeState::Up, guests, starts, on_kill: None };
        self.nodes.insert(name.to_string(), entry);
    }

    fn node(&self, name: &str) -> Result<&Node, String> {
        self.nodes.get(name).ok_or_else(|| format!("no node named {name}"))
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut Node, String> {
        self.nodes.get_mut(name).ok_or_else(|| format!("no node named {name}"))
    }

    pub fn ip(&self, name: &str) -> Result<IpAddr, String> {
        Ok(self.node(name)?.ip)
    }

    pub fn state(&self, name: &str) -> Result<NodeState, String> {
        Ok(self.node(name)?.state)
    }

    /// The names of the nodes of `group`, in order.
    pub fn group(&self, group: &str) -> Vec<String> {
        self.nodes.iter().filter(|(_, n)| n.group == group).map(|(k, _)| k.clone()).collect()
    }

    /// How many times node `name` has started.
    pub fn starts(&self, name: &str) -> Result<u32, String> {
        Ok(self.node(name)?.starts.load(Ordering::Relaxed))
    }

    /// The guests of every compute host, by host.
    pub fn guests(&self) -> BTreeMap<String, Vec<String>> {
        self.nodes.iter().filter_map(|(k, n)| n.guests.as_ref().map(|g| (k.clone(), g.list()))).collect()
    }

    /// SIGKILL: the node's processes are gone until [`Registry::start`].
    pub fn kill(&mut self, name: &str) -> Result<(), String> {
        let n = self.node_mut(name)?;
        if matches!(n.state, NodeState::Killed | NodeState::PoweredOff) {
            return Ok(());
        }
        n.state = NodeState::Killed;
        let (id, hook) = (n.id, n.on_kill.clone());
        self.handle.kill(id);
        if let Some(f) = hook {
            f();
        }
        Ok(())
    }

    /// `f` runs each time node `name` is killed (or powered off), after its tasks are gone.
    pub fn on_kill(&mut self, name: &str, f: Arc<dyn Fn() + Send + Sync>) -> Result<(), String> {
        self.node_mut(name)?.on_kill = Some(f);
        Ok(())
    }

    /// Starts a killed or powered-off node again (its init runs); a paused one resumes.
    pub fn start(&mut self, name: &str) -> Result<(), String> {
        let n = self.node_mut(name)?;
        let (id, was) = (n.id, n.state);
        n.state = NodeState::Up;
        match was {
            NodeState::Up => {}
            NodeState::Paused => self.handle.resume(id),
            NodeState::Killed | NodeState::PoweredOff => self.handle.restart(id),
        }
        Ok(())
    }

    /// A service restart: killed and started at once.
    pub fn restart(&mut self, name: &str) -> Result<(), String> {
        self.kill(name)?;
        self.start(name)
    }

    pub fn pause(&mut self, name: &str) -> Result<(), String> {
        let n = self.node_mut(name)?;
        if n.state == NodeState::Up {
            n.state = NodeState::Paused;
            let id = n.id;
            self.handle.pause(id);
        }
        Ok(())
    }

    pub fn resume(&mut self, name: &str) -> Result<(), String> {
        if self.node(name)?.state == NodeState::Paused {
            self.start(name)?;
        }
        Ok(())
    }

    /// The host loses power: its processes die and its guests are gone.
    pub fn power_off(&mut self, name: &str) -> Result<(), String> {
        self.kill(name)?;
        let n = self.node_mut(name)?;
        n.state = NodeState::PoweredOff;
        if let Some(g) = &n.guests {
            g.power_off();
        }
        Ok(())
    }

    /// Cuts the network from every node of `a` to every node of `b` (and back, for
    /// [`Direction::Both`]).
    pub fn partition(&mut self, a: &[String], b: &[String], direction: Direction) -> Result<(), String> {
        let net = NetSim::current();
        for x in a {
            for y in b {
                if x == y {
                    continue;
                }
                let (ix, iy) = (self.node(x)?.id, self.node(y)?.id);
                net.clog_link(ix, iy);
                self.clogged_links.insert((x.clone(), y.clone()));
                if direction == Direction::Both {
                    net.clog_link(iy, ix);
                    self.clogged_links.insert((y.clone(), x.clone()));
                }
            }
        }
        Ok(())
    }

    /// Undoes [`Registry::partition`] for the same sets.
    pub fn heal_partition(&mut self, a: &[String], b: &[String]) -> Result<(), String> {
        let net = NetSim::current();
        for x in a {
            for y in b {
                for (from, to) in [(x, y), (y, x)] {
                    if self.clogged_links.remove(&(from.clone(), to.clone())) {
                        net.unclog_link(self.node(from)?.id, self.node(to)?.id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Holds everything to and from `name`.
    pub fn clog(&mut self, name: &str) -> Result<(), String> {
        let id = self.node(name)?.id;
        NetSim::current().clog_node(id);
        self.clogged_nodes.insert(name.to_string());
        Ok(())
    }

    pub fn unclog(&mut self, name: &str) -> Result<(), String> {
        if self.clogged_nodes.remove(name) {
            NetSim::current().unclog_node(self.node(name)?.id);
        }
        Ok(())
    }

    /// The heal phase: every link and node unclogged, every paused node resumed, every
    /// killed or powered-off node started. Returns the nodes it started or resumed.
    pub fn heal_all(&mut self) -> Result<Vec<String>, String> {
        let net = NetSim::current();
        for (from, to) in std::mem::take(&mut self.clogged_links) {
            net.unclog_link(self.node(&from)?.id, self.node(&to)?.id);
        }
        for name in std::mem::take(&mut self.clogged_nodes) {
            net.unclog_node(self.node(&name)?.id);
        }
        let down: Vec<String> =
            self.nodes.iter().filter(|(_, n)| n.state != NodeState::Up).map(|(k, _)| k.clone()).collect();
        for name in &down {
            self.start(name)?;
        }
        Ok(down)
    }
}
