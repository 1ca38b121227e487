//! report.json's `anomalies`: what went wrong underneath the workload, counted, and what each
//! fault cost the workload, as the OpenStack reliability test plan measures it.
//!
//! The counts come from the run's counters, each kept where the thing happens:
//! - `lost_acked_messages`: messages the broker had confirmed to their publisher that no
//!   consumer got: lost in a broker restart (transient queues, non-persistent messages:
//!   `broker.restart_lost_messages`) or dropped by a message fault after the confirm
//!   (`bus.faults.dropped`);
//! - `lost_commits`: commits the database acknowledged and then lost (`db.lost_commits`; the
//!   single embedded store keeps every commit, so only a cluster model can count one);
//! - `deadlocks`: transactions the database answered with deadlock 1213 (`db.deadlocks`: a
//!   Galera cluster's certification failures; the single embedded node has none);
//!   `db_retries`: oslo.db's retry wrapper's retries (`db.retry.*`);
//! - `duplicate_deliveries`: deliveries of an RPC message that a consumer (of any process)
//!   had been given before (`rpc.duplicate_deliveries`);
//! - `failovers`: client connections that came back to another server than the last
//!   (`bus.failovers`, `db.failovers`).
//!
//! Per fault (each `start` the executor applied, with its `end` or `heal`), over the
//! iterations that were running in the fault's window (from its start to the next fault's
//! start, or the end of the run):
//! - `downtime_s`: from the first failed iteration's start (not before the fault) to the
//!   last failed one's end: the plan's service downtime, first to last error;
//! - `mttr_s`: from the fault's start to the end of the last iteration that failed or took
//!   longer than the 95th percentile of the successful ones that ended before the first
//!   fault (the recovery period ends when performance is back); 0 when none did;
//! - throughput in successful boots per second over the 60 s before the fault, while it
//!   lasted (none for an instant fault such as a restart) and over the 60 s after it ended.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::report::FaultsReport;
use crate::runner::Iteration;

/// The window throughput is measured over before and after a fault.
const THROUGHPUT_WINDOW_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomalies {
    pub lost_acked_messages: u64,
    pub lost_commits: u64,
    pub deadlocks: u64,
    pub db_retries: u64,
    pub duplicate_deliveries: u64,
    pub failovers: u64,
    /// One entry per fault the executor started, in the order it started them.
    pub faults: Vec<FaultImpact>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultImpact {
    /// As the executor printed it.
    pub fault: String,
    pub start_ms: u64,
    /// When it ended or was healed; None for an instant fault or one still on at the end.
    pub end_ms: Option<u64>,
    /// Failed iterations running in the fault's window.
    pub failed: usize,
    pub downtime_s: f64,
    pub mttr_s: f64,
    pub throughput_before: f64,
    pub throughput_during: Option<f64>,
    pub throughput_after: f64,
}

impl Anomalies {
    pub fn of(counters: &BTreeMap<String, u64>, iterations: &[Iteration], faults: &FaultsReport) -> Anomalies {
        let c = |k: &str| counters.get(k).copied().unwrap_or(0);
        let prefixed =
            |p: &str| counters.range(p.to_string()..).take_while(|(k, _)| k.starts_with(p)).map(|(_, v)| v).sum();
        Anomalies {
            lost_acked_messages: c("broker.restart_lost_messages") + c("bus.faults.dropped"),
            lost_commits: c("db.lost_commits"),
            deadlocks: c("db.deadlocks"),
            db_retries: prefixed("db.retry."),
            duplicate_deliveries: c("rpc.duplicate_deliveries"),
            failovers: c("bus.failovers") + c("db.failovers"),
            faults: impacts(iterations, faults),
        }
    }
}

impl Anomalies {
    /// A line of the counts that are not 0 and a line per fault (nothing for a run with
    /// neither).
    pub fn render(&self) -> String {
        let counts = [
            ("lost_acked_messages", self.lost_acked_messages),
            ("lost_commits", self.lost_commits),
            ("deadlocks", self.deadlocks),
            ("db_retries", self.db_retries),
            ("duplicate_deliveries", self.duplicate_deliveries),
            ("failovers", self.failovers),
        ];
        let some: Vec<String> = counts.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k}={n}")).collect();
        let mut out = String::new();
        if !some.is_empty() {
            out += &format!("anomalies: {}\n", some.join(" "));
        }
        for f in &self.faults {
            out += &format!(
                "  {}: {} failed, downtime {:.1}s, MTTR {:.1}s, boots/s before {} after {}\n",
                f.fault, f.failed, f.downtime_s, f.mttr_s, f.throughput_before, f.throughput_after
            );
        }
        out
    }
}

fn impacts(iterations: &[Iteration], faults: &FaultsReport) -> Vec<FaultImpact> {
    let applied = &faults.applied;
    let starts: Vec<usize> = (0..applied.len()).filter(|&i| applied[i].event == "start").collect();
    let Some(first) = starts.first().map(|&i| applied[i].at_ms) else { return Vec::new() };
    let run_end = iterations.iter().map(|i| i.end_ms).max().unwrap_or(0);
    let slow_ms = baseline_p95(iterations, first);
    let rate = |from: u64, to: u64| {
        if to <= from {
            return 0.0;
        }
        let ok = iterations.iter().filter(|i| i.ok && i.end_ms >= from && i.end_ms < to).count();
        round3(ok as f64 * 1000.0 / (to - from) as f64)
    };
    let mut out = Vec::new();
    for (n, &i) in starts.iter().enumerate() {
        let (start, label) = (applied[i].at_ms, &applied[i].fault);
        let end_ms = applied[i + 1..]
            .iter()
            .find(|a| a.fault == *label && (a.event == "end" || a.event == "heal"))
            .map(|a| a.at_ms);
        let horizon = starts.get(n + 1).map_or(run_end.max(start), |&j| applied[j].at_ms);
        let window: Vec<&Iteration> =
            iterations.iter().filter(|it| it.end_ms >= start && it.start_ms < horizon).collect();
        let failed: Vec<&&Iteration> = window.iter().filter(|it| !it.ok).collect();
        let downtime_ms =
            match (failed.iter().map(|it| it.start_ms.max(start)).min(), failed.iter().map(|it| it.end_ms).max()) {
                (Some(a), Some(b)) => b.saturating_sub(a),
                _ => 0,
            };
        let degraded_end =
            window.iter().filter(|it| !it.ok || slow_ms.is_some_and(|s| it.duration_ms > s)).map(|it| it.end_ms).max();
        let after_from = end_ms.unwrap_or(start);
        out.push(FaultImpact {
            fault: label.clone(),
            start_ms: start,
            end_ms,
            failed: failed.len(),
            downtime_s: downtime_ms as f64 / 1000.0,
            mttr_s: degraded_end.map_or(0, |e| e.saturating_sub(start)) as f64 / 1000.0,
            throughput_before: rate(start.saturating_sub(THROUGHPUT_WINDOW_MS), start),
            throughput_during: end_ms.filter(|&e| e > start).map(|e| rate(start, e)),
            throughput_after: rate(after_from, after_from + THROUGHPUT_WINDOW_MS),
        });
    }
    out
}

/// The 95th percentile of the successful iterations' durations that ended before `before`
/// (nearest rank); None with fewer than 3 of them (no baseline to be slower than).
fn baseline_p95(iterations: &[Iteration], before: u64) -> Option<u64> {
    let mut d: Vec<u64> = iterations.iter().filter(|i| i.ok && i.end_ms < before).map(|i| i.duration_ms).collect();
    if d.len() < 3 {
        return None;
    }
    d.sort_unstable();
    let rank = (d.len() * 95).div_ceil(100);
    Some(d[rank.max(1) - 1])
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::AppliedFault;

    fn it(start_s: f64, end_s: f64, ok: bool) -> Iteration {
        let ms = |s: f64| (s * 1000.0) as u64;
        Iteration::sample(ms(start_s), ms(end_s), ok)
    }

    fn applied(events: &[(u64, &'static str, &str)]) -> FaultsReport {
        FaultsReport {
            applied: events.iter().map(|&(at_ms, event, f)| AppliedFault { at_ms, event, fault: f.into() }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn downtime_is_first_to_last_error_and_mttr_runs_to_the_last_slow_or_failed_iteration() {
        // A baseline of 10 s boots; a kill at 100 s for 30 s; boots started in it fail or
        // are slow; the second fault's window starts at 300 s.
        let mut its: Vec<Iteration> = (0..9).map(|i| it(i as f64 * 10.0, i as f64 * 10.0 + 10.0, true)).collect();
        its.extend([
            it(95.0, 140.0, false),  // running when the fault started: fails at 140 s
            it(110.0, 150.0, false), // started in it
            it(120.0, 170.0, true),  // slow (50 s against a 10 s baseline): recovery ends at 170 s
            it(180.0, 190.0, true),
            it(300.0, 310.0, true), // after the next fault began: not this one's
        ]);
        let faults =
            applied(&[(100_000, "start", "kill a"), (130_000, "end", "kill a"), (300_000, "start", "restart b")]);
        let a = &impacts(&its, &faults);
        let k = &a[0];
        assert_eq!((k.start_ms, k.end_ms, k.failed), (100_000, Some(130_000), 2));
        assert_eq!(k.downtime_s, 50.0, "from the fault's start (100 s) to the last failure's end (150 s)");
        assert_eq!(k.mttr_s, 70.0, "to the slow boot's end at 170 s");
        // 60 s before: boots ending at 40..90 s, six of them in 40..100.
        assert_eq!(k.throughput_before, 0.1);
        assert_eq!(k.throughput_during, Some(0.0));
        // 130..190 s: the slow boot at 170 s (the one at 190 s is outside).
        assert_eq!(k.throughput_after, round3(1.0 / 60.0));
        let r = &a[1];
        assert_eq!((r.end_ms, r.failed, r.downtime_s, r.mttr_s, r.throughput_during), (None, 0, 0.0, 0.0, None));
    }

    #[test]
    fn counts_come_from_their_counters() {
        let counters: BTreeMap<String, u64> = [
            ("broker.restart_lost_messages", 5),
            ("bus.faults.dropped", 2),
            ("db.retry.instance_update", 3),
            ("db.retry.service_update", 4),
            ("db.retry_exhausted.service_update", 100),
            ("db.deadlocks", 6),
            ("rpc.duplicate_deliveries", 7),
            ("bus.failovers", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let a = Anomalies::of(&counters, &[], &FaultsReport::default());
        assert_eq!(
            (a.lost_acked_messages, a.lost_commits, a.deadlocks, a.db_retries, a.duplicate_deliveries, a.failovers),
            (7, 0, 6, 7, 7, 1)
        );
        assert!(a.faults.is_empty());
    }
}
