//! A run's checks one by one, each passed or failed with its message: every invariant, every
//! `[sla]` criterion, and whether the run finished. What JUnit's test cases are made of
//! (`stackbed --junit`), kept in sweep rows so that a sweep's JUnit needs no report.

use serde::{Deserialize, Serialize};

use crate::report::Report;

/// One check of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `run` (the run finished: not aborted), `invariant` or `sla`.
    pub kind: String,
    /// The invariant's or criterion's name; `finished` for the run.
    pub name: String,
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub message: String,
}

impl Report {
    /// The run's checks: `run.finished`, then each invariant in the checker's order, then
    /// each SLA criterion in the scenario's.
    pub fn checks(&self) -> Vec<Check> {
        let mut out = vec![Check {
            kind: "run".into(),
            name: "finished".into(),
            passed: self.aborted.is_none(),
            message: self.aborted.as_ref().map(|a| format!("aborted: {a}")).unwrap_or_default(),
        }];
        for i in &self.invariants {
            let message = match (&i.first, i.violations) {
                (_, 0) => String::new(),
                (Some(v), n) => format!(
                    "{n} violation(s) in {} checked events; first at {} ms (commit #{}): {}",
                    i.checked_events, v.at_ms, v.commit_seq, v.detail
                ),
                (None, n) => format!("{n} violation(s) in {} checked events", i.checked_events),
            };
            out.push(Check { kind: "invariant".into(), name: i.name.to_string(), passed: i.violations == 0, message });
        }
        for c in &self.sla {
            let message = if c.success { String::new() } else { c.detail.clone() };
            out.push(Check { kind: "sla".into(), name: c.criterion.to_string(), passed: c.success, message });
        }
        out
    }
}
