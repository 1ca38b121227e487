//! Faults that change how a node behaves rather than whether it runs: message loss, delay
//! and duplication on its connections, a slow host, hypervisor errors. The fault executor
//! sets them per node; the node's connections and hypervisor model read their own node's
//! cell (one uncontended lock per read), so a run without such faults pays next to nothing.

use stackbed_core::sync::guard;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use stackbed_core::faults::FaultAction;
use stackbed_services::clock::Skew;
use stackbed_services::ctx::fnv1a;

/// What is in force on one node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeKnobs {
    pub drop_rate: f64,
    pub delay_rate: f64,
    pub delay_ms: u64,
    pub duplicate_rate: f64,
    /// Every duration the node's hypervisor model draws is multiplied by this.
    pub slow: f64,
    pub hypervisor_error_rate: f64,
}

impl Default for NodeKnobs {
    fn default() -> Self {
        NodeKnobs {
            drop_rate: 0.0,
            delay_rate: 0.0,
            delay_ms: 0,
            duplicate_rate: 0.0,
            slow: 1.0,
            hypervisor_error_rate: 0.0,
        }
    }
}

struct Cell {
    knobs: NodeKnobs,
    /// The node's clock error, read by the node's clock.
    skew: Skew,
    /// The node's own stream for the knobs' draws, so they replay with the seed.
    rng: SmallRng,
}

/// One node's knobs, as its connections and hypervisor hold them.
#[derive(Clone)]
pub struct NodeCell(Arc<Mutex<Cell>>);

/// What happens to one message a node sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    Drop,
    /// Held this long before it is sent.
    Delay(u64),
    Duplicate,
}

impl NodeCell {
    fn lock(&self) -> MutexGuard<'_, Cell> {
        // Each critical section is a copy or a draw: nothing can leave it half-done.
        guard(&self.0)
    }

    pub fn get(&self) -> NodeKnobs {
        self.lock().knobs
    }

    /// The node's clock error, for its clock (`Clock::skewed`).
    pub fn skew(&self) -> Skew {
        self.lock().skew.clone()
    }

    /// The fate of the next message this node sends.
    pub fn fate(&self) -> Fate {
        let mut c = self.lock();
        let k = c.knobs;
        if k.drop_rate == 0.0 && k.delay_rate == 0.0 && k.duplicate_rate == 0.0 {
            return Fate::Deliver;
        }
        if k.drop_rate > 0.0 && c.rng.gen_bool(k.drop_rate) {
            return Fate::Drop;
        }
        if k.duplicate_rate > 0.0 && c.rng.gen_bool(k.duplicate_rate) {
            return Fate::Duplicate;
        }
        if k.delay_rate > 0.0 && c.rng.gen_bool(k.delay_rate) {
            return Fate::Delay(k.delay_ms);
        }
        Fate::Deliver
    }

    /// Whether the next spawn fails by an injected hypervisor error.
    pub fn hypervisor_error(&self) -> bool {
        let mut c = self.lock();
        let rate = c.knobs.hypervisor_error_rate;
        rate > 0.0 && c.rng.gen_bool(rate)
    }
}

/// Every node's knobs.
#[derive(Clone)]
pub struct Knobs {
    seed: u64,
    cells: Arc<Mutex<BTreeMap<String, NodeCell>>>,
}

impl Knobs {
    pub fn new(seed: u64) -> Knobs {
        Knobs { seed, cells: Arc::default() }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, NodeCell>> {
        // Inserts and lookups only.
        guard(&self.cells)
    }

    /// Node `name`'s cell (made on first use).
    pub fn node(&self, name: &str) -> NodeCell {
        let seed = self.seed ^ fnv1a(format!("knobs/{name}").as_bytes());
        self.lock()
            .entry(name.to_string())
            .or_insert_with(|| {
                NodeCell(Arc::new(Mutex::new(Cell {
                    knobs: NodeKnobs::default(),
                    skew: Skew::default(),
                    rng: SmallRng::seed_from_u64(seed),
                })))
            })
            .clone()
    }

    /// Puts `action` in force on `name`; actions that are not knobs are ignored.
    pub fn set(&self, name: &str, action: &FaultAction) {
        let cell = self.node(name);
        let mut c = cell.lock();
        let k = &mut c.knobs;
        match *action {
            FaultAction::Drop { rate } => k.drop_rate = rate,
            FaultAction::Delay { rate, by_ms } => (k.delay_rate, k.delay_ms) = (rate, by_ms),
            FaultAction::Duplicate { rate } => k.duplicate_rate = rate,
            FaultAction::Slow { multiplier } => k.slow = multiplier,
            FaultAction::HypervisorErrors { rate } => k.hypervisor_error_rate = rate,
            FaultAction::ClockSkew { offset_ms, drift_ppm } => c.skew.set(offset_ms, drift_ppm),
            _ => {}
        }
    }

    /// Ends `action` on `name`.
    pub fn clear(&self, name: &str, action: &FaultAction) {
        let cell = self.node(name);
        let mut c = cell.lock();
        let (k, d) = (&mut c.knobs, NodeKnobs::default());
        match action {
            FaultAction::Drop { .. } => k.drop_rate = d.drop_rate,
            FaultAction::Delay { .. } => (k.delay_rate, k.delay_ms) = (d.delay_rate, d.delay_ms),
            FaultAction::Duplicate { .. } => k.duplicate_rate = d.duplicate_rate,
            FaultAction::Slow { .. } => k.slow = d.slow,
            FaultAction::HypervisorErrors { .. } => k.hypervisor_error_rate = d.hypervisor_error_rate,
            FaultAction::ClockSkew { .. } => c.skew.clear(),
            _ => {}
        }
    }

    /// The heal phase: nothing in force anywhere.
    pub fn clear_all(&self) {
        for cell in self.lock().values() {
            let mut c = cell.lock();
            c.knobs = NodeKnobs::default();
            c.skew.clear();
        }
    }
}
