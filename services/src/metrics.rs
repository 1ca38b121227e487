//! Per-action timings and counters, gathered from every service of a run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use stackbed_core::stats::{self, ActionSummary};

#[derive(Default, Debug)]
struct Inner {
    actions: BTreeMap<String, Vec<(f64, bool)>>,
    counters: BTreeMap<String, u64>,
}

/// Shared by the services of one run. In the simulator all nodes live in one process and
/// execution is single-threaded, so insertion order is deterministic too.
#[derive(Clone, Default, Debug)]
pub struct Metrics(Arc<Mutex<Inner>>);

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere poisons the lock; the numbers are still worth reporting.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one sample of an atomic action (Rally's name for a timed step).
    pub fn record(&self, action: &str, secs: f64, ok: bool) {
        self.lock().actions.entry(action.to_string()).or_default().push((secs, ok));
    }

    pub fn count(&self, counter: &str, n: u64) {
        *self.lock().counters.entry(counter.to_string()).or_default() += n;
    }

    pub fn counter(&self, counter: &str) -> u64 {
        self.lock().counters.get(counter).copied().unwrap_or(0)
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.lock().counters.clone()
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
