//! What every service holds: its seams, the run's clock and metrics, the scenario.

use std::sync::Arc;

use rand::{rngs::SmallRng, SeedableRng};

use stackbed_core::scenario::Scenario;

use crate::clock::Clock;
use crate::db_retry::DbRetry;
use crate::metrics::Metrics;
use crate::seams::{BusRef, Db};

#[derive(Clone)]
pub struct Ctx {
    pub bus: BusRef,
    pub db: Db,
    /// nova's `wrap_db_retry` for this process's wrapped DB API calls.
    pub db_retry: DbRetry,
    pub clock: Clock,
    pub metrics: Metrics,
    pub scenario: Arc<Scenario>,
    pub seed: u64,
}

impl Ctx {
    /// A seeded RNG private to one service, so that its draws do not depend on how the
    /// other services interleave. Same seed and name, same stream.
    pub fn rng(&self, name: &str) -> SmallRng {
        SmallRng::seed_from_u64(self.seed ^ fnv1a(name.as_bytes()))
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
