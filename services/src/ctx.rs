//! What every service holds: its seams, the run's clock and metrics, the scenario.

use std::sync::Arc;

use rand::{rngs::SmallRng, SeedableRng};

use stackbed_core::scenario::Scenario;

use crate::clock::Clock;
use crate::db_retry::DbRetry;
use crate::metrics::Metrics;
use crate::seams::{BusRef, CpuRef, Db, HttpRef};

#[derive(Clone)]
pub struct Ctx {
    pub bus: BusRef,
    pub db: Db,
    /// The node's HTTP stack (keystone, placement, nova-api; clients and servers).
    pub http: HttpRef,
    /// nova's `wrap_db_retry` for this process's wrapped DB API calls.
    pub db_retry: DbRetry,
    /// The process's CPU, for the simulated service time.
    pub cpu: CpuRef,
    pub clock: Clock,
    pub metrics: Metrics,
    pub scenario: Arc<Scenario>,
    pub seed: u64,
    /// The node (process) this service runs as: `nova-scheduler-2`, `compute-7`, `rally`.
    pub node: String,
    /// How many times this node has started before (0 on the first start): a restarted
    /// process is a new incarnation, and ids it makes must not repeat its predecessor's.
    pub incarnation: u32,
}

impl Ctx {
    /// A seeded RNG private to one service of one node, so that its draws do not depend on
    /// how the other services interleave, and two workers of a service draw different
    /// streams. Same seed, node and name, same stream.
    pub fn rng(&self, name: &str) -> SmallRng {
        SmallRng::seed_from_u64(self.seed ^ fnv1a(format!("{}/{name}", self.node).as_bytes()))
    }

    /// A seeded RNG that every node of the deployment draws alike: for what a deployment
    /// shares between its workers (keystone's key repository).
    pub fn deployment_rng(&self, name: &str) -> SmallRng {
        SmallRng::seed_from_u64(self.seed ^ fnv1a(name.as_bytes()))
    }

    /// A prefix that makes ids unique across workers and restarts: the node and its
    /// incarnation (`nova-api-1.0`).
    pub fn id_prefix(&self) -> String {
        format!("{}.{}", self.node, self.incarnation)
    }
}

/// FNV-1a, 64 bit: a stable hash for seeding (std's hasher may change between releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
