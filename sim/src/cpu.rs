//! The simulated CPU of one service process: the `Cpu` seam. One process runs one piece of
//! CPU work at a time (nova's services are eventlet processes: greenthreads interleave only
//! at I/O), in the order it was asked for, each taking its cost times the node's slow-host
//! multiplier. With a `[topology.controller]`, the processes placed on one controller also
//! share its cores: a piece of work holds its process and then waits for a free core. A
//! restarted process gets a new CPU (the killed one's queue dies with it); its controller's
//! cores stay.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use stackbed_core::faults;
use stackbed_core::scenario::Scenario;
use stackbed_services::clock::Clock;
use stackbed_services::seams::Cpu;

use crate::knobs::NodeCell;

/// The cores of one controller host, shared by the processes placed on it.
pub type Cores = Arc<Semaphore>;

pub struct SimCpu {
    /// The process's one hub; tokio's semaphore is fair, so work is served in order.
    hub: Semaphore,
    /// Its controller's cores, when the scenario declares controllers.
    cores: Option<Cores>,
    knobs: NodeCell,
    clock: Clock,
}

impl SimCpu {
    pub fn new(knobs: NodeCell, clock: Clock, cores: Option<Cores>) -> SimCpu {
        SimCpu { hub: Semaphore::new(1), cores, knobs, clock }
    }
}

#[async_trait]
impl Cpu for SimCpu {
    async fn spend(&self, cost: Duration) {
        if cost.is_zero() {
            return;
        }
        // Never closed: the semaphores live as long as the process and the run.
        let Ok(_hub) = self.hub.acquire().await else { return };
        let _core = match &self.cores {
            Some(cores) => match cores.acquire().await {
                Ok(permit) => Some(permit),
                Err(_) => return,
            },
            None => None,
        };
        self.clock.sleep(cost.mul_f64(self.knobs.get().slow.max(0.0))).await;
    }
}

/// Which controller's cores each control-service process computes on: the i-th worker of
/// a service (from 1) on controller `(i - 1) % count`. Empty without a
/// `[topology.controller]`: every process then has a core of its own.
pub fn controller_cores(scenario: &Scenario) -> BTreeMap<String, Cores> {
    let Some(c) = scenario.topology.controller else { return BTreeMap::new() };
    let controllers: Vec<Cores> = (0..c.count).map(|_| Arc::new(Semaphore::new(c.cores as usize))).collect();
    let mut next: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for node in faults::nodes(scenario) {
        if !faults::CONTROL_GROUPS.contains(&node.group.as_str()) {
            continue;
        }
        let i = next.entry(node.group.clone()).or_insert(0);
        out.insert(node.name, controllers[*i % controllers.len()].clone());
        *i += 1;
    }
    out
}
