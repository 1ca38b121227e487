//! The async shell of oslo.db's `wrap_db_retry` (the policy is
//! `stackbed_core::db_retry`): runs one of nova's wrapped database calls, sleeping on the
//! clock seam between attempts, with deadlock jitter drawn from a seeded RNG.
//!
//! Applied exactly where nova puts `oslo_db_api.wrap_db_retry(max_retries=5,
//! retry_on_deadlock=True)`: `service_update`, `compute_node_update`, `instance_create`,
//! `instance_destroy`, `instance_update` and `instance_update_and_get_original`. Not on
//! build requests, faults, block device mappings, server groups or placement (whose
//! generation-conflict loop is its own).

use std::future::Future;
use std::sync::{Arc, Mutex};

use rand::{rngs::SmallRng, Rng, SeedableRng};

use stackbed_core::db_retry::{DbRetryPolicy, DbRetryState, RetryDecision};
use stackbed_core::scenario::Scenario;

use crate::clock::Clock;
use crate::ctx::fnv1a;
use crate::dbx::ServiceError;
use crate::metrics::Metrics;

/// One process's retry wrapper. Cloning shares the RNG.
#[derive(Clone)]
pub struct DbRetry {
    policy: DbRetryPolicy,
    /// Jitter draws, in the order the process's calls retry (the simulator orders tasks
    /// from the seed, so the order is reproducible).
    rng: Arc<Mutex<SmallRng>>,
    clock: Clock,
    metrics: Metrics,
}

impl DbRetry {
    pub fn new(policy: DbRetryPolicy, rng: SmallRng, clock: Clock, metrics: Metrics) -> DbRetry {
        DbRetry { policy, rng: Arc::new(Mutex::new(rng)), clock, metrics }
    }

    /// The wrapper of the process `node`, with the scenario's policy and an RNG stream of
    /// its own (seeded from the run seed and the node's name).
    pub fn for_node(scenario: &Scenario, seed: u64, node: &str, clock: Clock, metrics: Metrics) -> DbRetry {
        let rng = SmallRng::seed_from_u64(seed ^ fnv1a(format!("db_retry/{node}").as_bytes()));
        DbRetry::new(DbRetryPolicy::from_scenario(&scenario.control, &scenario.debug), rng, clock, metrics)
    }

    pub fn policy(&self) -> &DbRetryPolicy {
        &self.policy
    }

    fn uniform(&self) -> f64 {
        // A panic while drawing a number leaves nothing half-done; still, say so.
        self.rng.lock().expect("db retry RNG lock poisoned by a panicking task").gen::<f64>()
    }

    /// Runs `attempt` (nova's DB API function `what`) until it succeeds, fails with an error
    /// the policy does not retry, or runs out of retries. Counts `db.retry.<what>` per retry
    /// and `db.retry_exhausted.<what>` when it gives up on a retryable error.
    pub async fn run<T, F, Fut>(&self, what: &'static str, mut attempt: F) -> Result<T, ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let mut state = DbRetryState::new(&self.policy);
        loop {
            let e = match attempt().await {
                Err(ServiceError::Db(e)) => e,
                other => return other,
            };
            match state.on_error(&self.policy, &e, || self.uniform()) {
                RetryDecision::Sleep(d) => {
                    self.metrics.count(&format!("db.retry.{what}"), 1);
                    self.clock.sleep(d).await;
                }
                RetryDecision::GiveUp => {
                    if self.policy.retries(&e) {
                        self.metrics.count(&format!("db.retry_exhausted.{what}"), 1);
                    }
                    return Err(e.into());
                }
            }
        }
    }
}
