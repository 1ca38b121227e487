//! The run monitor: sees every committed database write, in commit order, feeds the
//! invariant checker and the event-log digest. The database (simulated node or embedded
//! real one) calls it right after each commit, inside its serialisation point.

use std::sync::{Arc, Mutex};

use stackbed_core::invariants::{Checker, InvariantResult, Violation};
use stackbed_core::model::{Millis, Record};
use stackbed_core::states::TaskState;
use stackbed_core::stats::EventDigest;
use stackbed_core::store::Commit;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FirstViolation {
    pub violation: Option<Violation>,
    /// The event-log lines of the violating commit.
    pub event: Vec<String>,
}

/// A task-state trigger that fired: the fault it starts (its index in the schedule), the
/// instance that reached the state and the host it was on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub fault: usize,
    pub instance: String,
    pub host: Option<String>,
}

/// Fault triggers on instance task states, counted over commits.
struct Triggers {
    /// (fault index, state, nth, reached so far).
    waiting: Vec<(usize, TaskState, u32, u32)>,
    /// Fires at most once per trigger, so it holds at most `waiting.len()` messages.
    tx: tokio::sync::mpsc::UnboundedSender<Fired>,
}

pub struct Monitor {
    checker: Checker,
    triggers: Option<Triggers>,
    digest: EventDigest,
    first: FirstViolation,
    /// Committed writes per table, for the report.
    writes: std::collections::BTreeMap<&'static str, u64>,
    /// The event being hashed, reused across writes.
    line: Vec<u8>,
}

pub type MonitorRef = Arc<Mutex<Monitor>>;

/// One event-log line per write: time, commit, table/key and the new row (or DELETE).
pub fn event_line(at_ms: Millis, seq: u64, table: &str, key: &str, new: Option<&Record>) -> String {
    match new {
        Some(r) => format!("{at_ms} #{seq} {table}/{key} {}", serde_json::to_string(r).unwrap_or_default()),
        None => format!("{at_ms} #{seq} {table}/{key} DELETE"),
    }
}

/// One event as the digest hashes it: the same fields as [`event_line`] in a compact binary
/// form (bincode of the record: no text formatting on the per-commit path), appended to
/// `out`. The printed event lines stay JSON.
fn write_event_record(out: &mut Vec<u8>, at_ms: Millis, seq: u64, table: &str, key: &str, new: Option<&Record>) {
    out.extend_from_slice(&at_ms.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    for field in [table, key] {
        out.extend_from_slice(&(field.len() as u64).to_le_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    match new {
        // Serialising into a Vec cannot fail for these records; were it to, the digest
        // would still differ from a delete's (tag 1 against 0).
        Some(r) => {
            out.push(1);
            let _ = bincode::serialize_into(&mut *out, r);
        }
        None => out.push(0),
    }
}

impl Monitor {
    pub fn new(quota_recheck: bool, liveness_bound_ms: Millis) -> MonitorRef {
        Arc::new(Mutex::new(Monitor {
            checker: Checker::new(quota_recheck, liveness_bound_ms),
            triggers: None,
            digest: EventDigest::default(),
            first: FirstViolation::default(),
            writes: Default::default(),
            line: Vec::new(),
        }))
    }

    /// Reports on the returned channel when the `nth` instance reaches a task state, for
    /// each `(fault index, state, nth)`: the fault executor's task-state triggers.
    pub fn watch_task_states(
        &mut self,
        triggers: Vec<(usize, TaskState, u32)>,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Fired> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let waiting = triggers.into_iter().map(|(i, s, n)| (i, s, n.max(1), 0)).collect();
        self.triggers = Some(Triggers { waiting, tx });
        rx
    }

    fn fire_triggers(&mut self, commit: &Commit) {
        let Some(t) = &mut self.triggers else { return };
        for w in &commit.writes {
            let Some(Record::Instance(new)) = &w.new else { continue };
            let Some(state) = new.task_state else { continue };
            let was = match &w.old {
                Some(Record::Instance(old)) => old.task_state,
                _ => None,
            };
            if was == Some(state) {
                continue;
            }
            t.waiting.retain_mut(|(fault, s, nth, reached)| {
                if *s != state {
                    return true;
                }
                *reached += 1;
                if reached < nth {
                    return true;
                }
                let fired = Fired { fault: *fault, instance: new.uuid.clone(), host: new.host.clone() };
                // The executor may be gone at the end of a run; nothing is owed to it then.
                let _ = t.tx.send(fired);
                false
            });
        }
    }

    pub fn on_commit(&mut self, at_ms: Millis, commit: &Commit) {
        self.fire_triggers(commit);
        for w in &commit.writes {
            self.line.clear();
            write_event_record(&mut self.line, at_ms, commit.seq, w.table.name(), &w.key, w.new.as_ref());
            self.digest.add(&self.line);
            *self.writes.entry(w.table.name()).or_default() += 1;
        }
        self.checker.on_commit(at_ms, commit);
        if self.first.violation.is_none() {
            if let Some(v) = self.checker.first_violation() {
                let event = commit
                    .writes
                    .iter()
                    .map(|w| event_line(at_ms, commit.seq, w.table.name(), &w.key, w.new.as_ref()))
                    .collect();
                self.first = FirstViolation { violation: Some(v.clone()), event };
            }
        }
    }

    /// Deadline checks that must run even when nothing commits.
    pub fn tick(&mut self, now_ms: Millis) {
        self.checker.check_deadlines(now_ms, 0);
        self.note_first(now_ms, "check on a quiet system, after the last commit");
    }

    pub fn check_quiet(&mut self, now_ms: Millis) {
        self.checker.check_quiet(now_ms);
        self.note_first(now_ms, "check on a quiet system, after the last commit");
    }

    /// The guests every hypervisor runs, against the instances (see
    /// `Checker::check_guests`); after the quiet checks.
    /// A new call's number, for [`Monitor::on_reply`].
    pub fn start_call(&mut self) -> u64 {
        self.checker.start_call()
    }

    /// A reply to call `answers` completed the caller waiting on call `call`.
    pub fn on_reply(&mut self, now_ms: Millis, call: u64, answers: u64) {
        self.checker.check_reply(now_ms, call, answers);
        self.note_first(now_ms, "a reply on a caller's reply queue");
    }

    pub fn check_guests(&mut self, now_ms: Millis, guests: &std::collections::BTreeMap<String, Vec<String>>) {
        self.checker.check_guests(now_ms, guests);
        self.note_first(now_ms, "check on a quiet system, after the last commit");
    }

    fn note_first(&mut self, now_ms: Millis, what: &str) {
        if self.first.violation.is_none() {
            if let Some(v) = self.checker.first_violation() {
                self.first = FirstViolation { violation: Some(v.clone()), event: vec![format!("{now_ms} ({what})")] };
            }
        }
    }

    pub fn first_violation(&self) -> &FirstViolation {
        &self.first
    }

    pub fn results(&self) -> Vec<InvariantResult> {
        self.checker.results()
    }

    pub fn digest(&self) -> (String, u64) {
        (self.digest.hex(), self.digest.events)
    }

    pub fn writes_by_table(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.writes.clone()
    }

    /// Work owed before the run is quiet: requests not terminal, allocations of deleted
    /// instances not yet released.
    pub fn owed(&self) -> usize {
        self.checker.pending_count() + self.checker.releases_owed()
    }
}
