//! Per-action timings and counters, gathered from every service of a run.

use stackbed_core::sync::guard;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use stackbed_core::scheduler::Explanation;
use stackbed_core::stats::{self, ActionSummary};

#[derive(Default, Debug)]
struct Inner {
    actions: BTreeMap<String, Vec<(f64, bool)>>,
    counters: BTreeMap<String, u64>,
    explained: Vec<ExplainedDecision>,
    /// Every RPC message id a consumer was given, hashed ([`Metrics::delivered`]): one u64
    /// per message of the run, the whole run long (about 20 MB at 100,000 boots).
    delivered: std::collections::HashSet<u64>,
}

/// One scheduler decision explained for the report: the request, why, and the explanation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExplainedDecision {
    pub request: String,
    /// "first decision" or "no valid host".
    pub why: &'static str,
    /// The strategy that decided, and the hosts it returned (pick first). The explanation
    /// is nova's filter and weigher pipeline as configured for it (`pack`: RAM multiplier
    /// negated); strategies that order survivors their own way may pick differently.
    pub strategy: String,
    pub decided: Vec<String>,
    pub explanation: Explanation,
}

/// [`ExplainedDecision::why`] for a decision's outcome.
fn why(no_valid_host: bool) -> &'static str {
    if no_valid_host {
        "no valid host"
    } else {
        "first decision"
    }
}

/// How many NoValidHost decisions a run's report explains (the first ones).
pub const EXPLAINED_NO_VALID_HOST: usize = 3;

/// Shared by the services of one run. In the simulator all nodes live in one process and
/// execution is single-threaded, so insertion order is deterministic too.
#[derive(Clone, Default, Debug)]
pub struct Metrics(Arc<Mutex<Inner>>);

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere poisons the lock; the numbers are still worth reporting.
        guard(&self.0)
    }

    /// Records one sample of an atomic action (Rally's name for a timed step).
    pub fn record(&self, action: &str, secs: f64, ok: bool) {
        self.lock().actions.entry(action.to_string()).or_default().push((secs, ok));
    }

    pub fn count(&self, counter: &str, n: u64) {
        *self.lock().counters.entry(counter.to_string()).or_default() += n;
    }

    /// A consumer was given the RPC message `msg_id`: a second delivery of the same message,
    /// to any consumer of any process, counts `rpc.duplicate_deliveries` (whatever then
    /// happens to it: filtered, skipped or run again).
    pub fn delivered(&self, msg_id: &str) {
        let mut m = self.lock();
        if !m.delivered.insert(crate::ctx::fnv1a(msg_id.as_bytes())) {
            *m.counters.entry("rpc.duplicate_deliveries".to_string()).or_default() += 1;
        }
    }

    pub fn counter(&self, counter: &str) -> u64 {
        self.lock().counters.get(counter).copied().unwrap_or(0)
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.lock().counters.clone()
    }

    /// Whether the report still wants an explanation of this kind of decision: the first
    /// decision of the run, and the first [`EXPLAINED_NO_VALID_HOST`] NoValidHosts.
    pub fn wants_explanation(&self, no_valid_host: bool) -> bool {
        let inner = self.lock();
        let n = inner.explained.iter().filter(|e| e.why == why(no_valid_host)).count();
        if no_valid_host {
            n < EXPLAINED_NO_VALID_HOST
        } else {
            n == 0
        }
    }

    /// Records an explained decision; `no_valid_host` is the decision's outcome (the
    /// explanation's own pipeline may differ for strategies that are not nova's).
    pub fn explain(
        &self,
        request: &str,
        no_valid_host: bool,
        strategy: &str,
        decided: Vec<String>,
        explanation: Explanation,
    ) {
        let why = why(no_valid_host);
        let strategy = strategy.to_string();
        self.lock().explained.push(ExplainedDecision {
            request: request.to_string(),
            why,
            strategy,
            decided,
            explanation,
        });
    }

    pub fn explanations(&self) -> Vec<ExplainedDecision> {
        self.lock().explained.clone()
    }

    /// How many samples each action has so far: a point to summarise from or up to.
    pub fn marks(&self) -> BTreeMap<String, usize> {
        self.lock().actions.iter().map(|(k, v)| (k.clone(), v.len())).collect()
    }

    /// [`Metrics::summaries`] of the samples recorded between two [`Metrics::marks`] (a
    /// workload pass).
    pub fn summaries_between(
        &self,
        from: &BTreeMap<String, usize>,
        to: &BTreeMap<String, usize>,
    ) -> Vec<ActionSummary> {
        let part = Metrics::default();
        {
            let inner = self.lock();
            let mut p = part.lock();
            for (name, v) in &inner.actions {
                let end = to.get(name).copied().unwrap_or(0).min(v.len());
                let start = from.get(name).copied().unwrap_or(0).min(end);
                if start < end {
                    p.actions.insert(name.clone(), v[start..end].to_vec());
                }
            }
        }
        part.summaries()
    }

    /// Per action (in [`Metrics::summaries`]' order), the successful samples' durations at
    /// every whole percentile, 0 to 100, as [`stats::percentile`] computes the table's: the
    /// latency CDF the HTML report draws. Actions without a successful sample are left out.
    pub fn quantiles(&self) -> Vec<(String, Vec<f64>)> {
        let mut successful = self.successful();
        self.summaries()
            .into_iter()
            .filter_map(|a| {
                let name = a.action;
                let mut ok = successful.remove(&name)?;
                if ok.is_empty() {
                    return None;
                }
                ok.sort_by(f64::total_cmp);
                let q = (0..=100).map(|p| stats::percentile(&ok, p as f64)).collect();
                Some((name, q))
            })
            .collect()
    }

    /// Per action, the durations of its successful samples, in the order recorded: what
    /// `[sla] max_avg_duration_per_atomic` averages.
    pub fn successful(&self) -> BTreeMap<String, Vec<f64>> {
        let inner = self.lock();
        inner.actions.iter().map(|(name, s)| (name.clone(), s.iter().filter(|s| s.1).map(|s| s.0).collect())).collect()
    }

    /// Rally-style rows, in the order the boot flow runs them, then any others by name.
    pub fn summaries(&self) -> Vec<ActionSummary> {
        const ORDER: [&str; 21] = [
            "keystone.authenticate",
            "api.create",
            "conductor.schedule_and_build",
            "scheduler.select_destinations",
            "conductor.reschedule",
            "compute.networking",
            "compute.block_device_mapping",
            "compute.spawn.image_fetch",
            "compute.spawn.image_overlay",
            "compute.spawn.config_drive",
            "compute.spawn.define",
            "compute.spawn.start",
            "compute.spawn.define_start",
            "compute.spawn.vif_plugged",
            "compute.spawn.guest_boot",
            "compute.spawn",
            "compute.build",
            "compute.terminate",
            "boot_server",
            "delete_server",
            "nova.boot_and_delete",
        ];
        let inner = self.lock();
        let mut names: Vec<&String> = inner.actions.keys().collect();
        // Spawn sub-phases a world reports (the simulated host's, libvirt's) go just before
        // compute.spawn, in name order, unless ORDER names them.
        let spawn = ORDER.iter().position(|o| *o == "compute.spawn").unwrap_or(0);
        let rank = |n: &str| match ORDER.iter().position(|o| *o == n) {
            Some(p) => (p, 1),
            None if n.starts_with("compute.spawn.") => (spawn, 0),
            None => (ORDER.len(), 0),
        };
        names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
        names.into_iter().map(|n| stats::summarize(n, &inner.actions[n])).collect()
    }
}
