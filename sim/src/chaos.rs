//! The fault executor: runs one seed's resolved [`FaultSchedule`] against the node
//! registry. Faults with an instant start on a timer; faults with a task-state trigger start
//! when the run monitor reports that the nth instance reached the state. A fault with a
//! duration ends after it; the heal phase (when chaos ends, or when the workload has been
//! submitted, whichever comes first) ends every fault still in force and brings every node
//! back, and no fault starts after it. Everything the executor does is logged for the report.
//!
//! The executor runs on the supervisor's own node, which no fault can reach.

use stackbed_core::sync::guard;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stackbed_core::faults::{FaultAction, FaultSchedule, ResolvedFault, Trigger};
use stackbed_core::model::Millis;
use stackbed_services::clock::Clock;
use stackbed_services::metrics::Metrics;
use stackbed_services::monitor::Fired;
use stackbed_services::report::{AppliedFault, FaultsReport};
use tokio::sync::{mpsc, oneshot};

use crate::knobs::Knobs;
use crate::nodes::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Start(usize),
    End(usize),
    Heal,
}

/// The executor's log, shared with the run so that the report sees what happened even if
/// the run ends while a fault is in force.
pub type Log = Arc<Mutex<FaultsReport>>;

pub struct Chaos {
    schedule: FaultSchedule,
    registry: Registry,
    knobs: Knobs,
    clock: Clock,
    metrics: Metrics,
    log: Log,
    /// Faults in force: their index and resolved targets.
    active: BTreeMap<usize, Vec<String>>,
    healed: bool,
}

fn lock(log: &Log) -> std::sync::MutexGuard<'_, FaultsReport> {
    // The log is appended to under the lock and read once at the end; a panic in between
    // would end the simulation anyway.
    guard(log)
}

impl Chaos {
    pub fn new(schedule: FaultSchedule, registry: Registry, knobs: Knobs, clock: Clock, metrics: Metrics) -> Chaos {
        let log = Arc::new(Mutex::new(FaultsReport { schedule: schedule.clone(), ..FaultsReport::default() }));
        Chaos { schedule, registry, knobs, clock, metrics, log, active: BTreeMap::new(), healed: false }
    }

    pub fn log(&self) -> Log {
        self.log.clone()
    }

    /// The registry, for what the run reads of its nodes at the end (the hosts' guests).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs the schedule until the heal phase is over and `done` fires (the run is ending).
    /// `triggers` brings task-state triggers; `submitted` fires once the workload has been
    /// submitted (heal if chaos is still on). Returns the executor, for the registry.
    pub async fn run(
        mut self,
        mut triggers: mpsc::UnboundedReceiver<Fired>,
        mut submitted: oneshot::Receiver<()>,
        mut done: oneshot::Receiver<()>,
    ) -> Chaos {
        // The timeline: (instant, sequence) -> step; the sequence keeps equal instants in
        // schedule order.
        let mut timeline: BTreeMap<(Millis, u64), Step> = BTreeMap::new();
        let mut seq = 0u64;
        let mut push = |timeline: &mut BTreeMap<(Millis, u64), Step>, at: Millis, step: Step| {
            seq += 1;
            timeline.insert((at, seq), step);
        };
        for (i, f) in self.schedule.faults.iter().enumerate() {
            if let Trigger::At { at_ms } = f.trigger {
                push(&mut timeline, at_ms, Step::Start(i));
            }
        }
        if let Some(c) = self.schedule.phases.chaos_ms {
            push(&mut timeline, c, Step::Heal);
        }
        let (mut submitted_open, mut triggers_open) = (true, true);
        loop {
            let next = timeline.first_key_value().map(|(k, _)| k.0);
            let wait = next.map(|at| Duration::from_millis(at.saturating_sub(self.clock.now_ms())));
            tokio::select! {
                biased;
                _ = sleep_or_forever(wait) => {
                    if let Some((_, step)) = timeline.pop_first() {
                        self.step(step, &mut timeline, &mut push, None);
                    }
                }
                fired = triggers.recv(), if triggers_open && !self.healed => match fired {
                    Some(f) => self.step(Step::Start(f.fault), &mut timeline, &mut push, f.host),
                    None => triggers_open = false,
                },
                r = &mut submitted, if submitted_open => {
                    submitted_open = false;
                    if r.is_ok() && self.schedule.phases.heal {
                        self.step(Step::Heal, &mut timeline, &mut push, None);
                    }
                }
                _ = &mut done => return self,
            }
        }
    }

    fn step(
        &mut self,
        step: Step,
        timeline: &mut BTreeMap<(Millis, u64), Step>,
        push: &mut impl FnMut(&mut BTreeMap<(Millis, u64), Step>, Millis, Step),
        trigger_host: Option<String>,
    ) {
        let now = self.clock.now_ms();
        match step {
            Step::Start(i) if !self.healed => {
                let Some(fault) = self.schedule.faults.get(i).cloned() else { return };
                let targets =
                    if fault.targets.is_empty() { trigger_host.into_iter().collect() } else { fault.targets.clone() };
                if targets.is_empty() {
                    return;
                }
                self.apply(&fault, &targets, true);
                self.record(now, "start", &fault, &targets);
                let lasting = !matches!(fault.action, FaultAction::Restart | FaultAction::Resume);
                if lasting {
                    self.active.insert(i, targets);
                    if let Some(d) = fault.duration_ms {
                        push(timeline, now + d, Step::End(i));
                    }
                }
            }
            Step::Start(_) => {}
            Step::End(i) => {
                if let Some(targets) = self.active.remove(&i) {
                    let fault = self.schedule.faults[i].clone();
                    self.apply(&fault, &targets, false);
                    self.record(now, "end", &fault, &targets);
                }
            }
            Step::Heal if !self.healed => {
                self.healed = true;
                // A healed run's scheduled steps are moot: nothing starts, nothing is left to end.
                timeline.clear();
                for (i, targets) in std::mem::take(&mut self.active) {
                    let fault = self.schedule.faults[i].clone();
                    self.apply(&fault, &targets, false);
                    self.record(now, "heal", &fault, &targets);
                }
                // Whatever else is down (a node killed by a fault without a duration).
                if let Err(e) = self.registry.heal_all() {
                    self.metrics.count(&format!("chaos.errors.{e}"), 1);
                }
                self.knobs.clear_all();
                lock(&self.log).healed_at_ms = Some(now);
            }
            Step::Heal => {}
        }
    }

    fn record(&self, at_ms: Millis, event: &'static str, fault: &ResolvedFault, targets: &[String]) {
        let mut shown = fault.clone();
        shown.targets = targets.to_vec();
        self.metrics.count(&format!("faults.{}.{event}", fault.action.name()), 1);
        lock(&self.log).applied.push(AppliedFault { at_ms, event, fault: shown.to_string() });
    }

    /// Starts (`on`) or ends a fault on its targets.
    fn apply(&mut self, fault: &ResolvedFault, targets: &[String], on: bool) {
        let reg = &mut self.registry;
        let mut result = Ok(());
        for t in targets {
            let r = match (&fault.action, on) {
                (FaultAction::Kill, true) => reg.kill(t),
                (FaultAction::Kill | FaultAction::PowerOff, false) => reg.start(t),
                (FaultAction::Restart, true) => reg.restart(t),
                (FaultAction::Pause, true) => reg.pause(t),
                (FaultAction::Pause, false) | (FaultAction::Resume, true) => reg.resume(t),
                (FaultAction::PowerOff, true) => reg.power_off(t),
                (FaultAction::Partition { other, direction }, true) => {
                    reg.partition(std::slice::from_ref(t), other, *direction)
                }
                (FaultAction::Partition { other, .. }, false) => reg.heal_partition(std::slice::from_ref(t), other),
                (FaultAction::Clog, true) => reg.clog(t),
                (FaultAction::Clog, false) => reg.unclog(t),
                (FaultAction::Restart | FaultAction::Resume, false) => Ok(()),
                (action, true) => {
                    self.knobs.set(t, action);
                    Ok(())
                }
                (action, false) => {
                    self.knobs.clear(t, action);
                    Ok(())
                }
            };
            if result.is_ok() {
                result = r;
            }
        }
        if let Err(e) = result {
            // A schedule names only nodes that exist (the scenario checks it); say so if not.
            self.metrics.count(&format!("chaos.errors.{e}"), 1);
        }
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
