//! The simulated CPU of one service process: the `Cpu` seam. One process runs one piece of
//! CPU work at a time (nova's services are eventlet processes: greenthreads interleave only
//! at I/O), in the order it was asked for, each taking its cost times the node's slow-host
//! multiplier. A restarted process gets a new CPU: the killed one's queue dies with it.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use stackbed_services::clock::Clock;
use stackbed_services::seams::Cpu;

use crate::knobs::NodeCell;

pub struct SimCpu {
    /// The process's one core; tokio's semaphore is fair, so work is served in order.
    core: Semaphore,
    knobs: NodeCell,
    clock: Clock,
}

impl SimCpu {
    pub fn new(knobs: NodeCell, clock: Clock) -> SimCpu {
        SimCpu { core: Semaphore::new(1), knobs, clock }
    }
}

#[async_trait]
impl Cpu for SimCpu {
    async fn spend(&self, cost: Duration) {
        if cost.is_zero() {
            return;
        }
        // Never closed: the semaphore lives as long as the process.
        let Ok(_core) = self.core.acquire().await else { return };
        self.clock.sleep(cost.mul_f64(self.knobs.get().slow.max(0.0))).await;
    }
}
