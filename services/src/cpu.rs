//! Service time: the CPU a service process spends on an operation, from the scenario's
//! model (`[model.service_time]`, see `docs/calibration.md`). A nova process runs one
//! eventlet hub, so it computes one thing at a time however many greenthreads wait; the
//! worker processes of one controller share its cores. An operation therefore waits for
//! its process and then for a core, and holds both while it computes: a scheduler saturates
//! where nova's does, and adding workers helps only up to the controller's cores.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::clock::Clock;

/// One process's CPU: its own one-at-a-time hub and its host's cores.
#[derive(Clone)]
pub struct Cpu {
    process: Arc<Semaphore>,
    cores: Arc<Semaphore>,
}

impl Cpu {
    /// A process on a host whose cores are `cores` (shared with the host's other processes).
    pub fn new(cores: Arc<Semaphore>) -> Cpu {
        Cpu { process: Arc::new(Semaphore::new(1)), cores }
    }

    /// A host with `n` cores, for [`Cpu::new`].
    pub fn cores(n: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(n.max(1)))
    }

    /// A process that never waits for CPU (a model without service time).
    pub fn unlimited() -> Cpu {
        Cpu { process: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)), cores: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)) }
    }

    /// Computes for `d`: waits for the process and a core, holds both for `d`.
    pub async fn burn(&self, clock: &Clock, d: Duration) {
        if d.is_zero() {
            return;
        }
        // Neither semaphore is ever closed, so acquiring cannot fail.
        let Ok(_process) = self.process.acquire().await else { return };
        let Ok(_core) = self.cores.acquire().await else { return };
        clock.sleep(d).await;
    }
}
