//! Rally-style summaries of per-action durations, and the run digest.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Rally's per-atomic-action row: count, min, median, p90, p95, max, mean, success %.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionSummary {
    pub action: String,
    pub count: u64,
    pub min_s: f64,
    pub median_s: f64,
    pub p90_s: f64,
    pub p95_s: f64,
    pub max_s: f64,
    pub mean_s: f64,
    pub success_pct: f64,
}

/// Linear interpolation between closest ranks (numpy's default, which Rally uses).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Summarises one action from its (duration, success) samples. Durations of failed
/// samples are kept out of the timing columns, as Rally does.
pub fn summarize(action: &str, samples: &[(f64, bool)]) -> ActionSummary {
    let mut ok: Vec<f64> = samples.iter().filter(|s| s.1).map(|s| s.0).collect();
    ok.sort_by(f64::total_cmp);
    let count = samples.len() as u64;
    let successes = ok.len() as f64;
    ActionSummary {
        action: action.to_string(),
        count,
        min_s: ok.first().copied().unwrap_or(0.0),
        median_s: percentile(&ok, 50.0),
        p90_s: percentile(&ok, 90.0),
        p95_s: percentile(&ok, 95.0),
        max_s: ok.last().copied().unwrap_or(0.0),
        mean_s: if ok.is_empty() { 0.0 } else { ok.iter().sum::<f64>() / successes },
        success_pct: if count == 0 { 0.0 } else { 100.0 * successes / count as f64 },
    }
}

/// A running SHA-256 over the event log.
#[derive(Clone, Default)]
pub struct EventDigest {
    hasher: Sha256,
    pub events: u64,
}

impl EventDigest {
    pub fn add(&mut self, line: &[u8]) {
        self.hasher.update(line);
        self.hasher.update(b"\n");
        self.events += 1;
    }
    pub fn hex(&self) -> String {
        let out = self.hasher.clone().finalize();
        out.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 90.0), 4.6);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
    }

    #[test]
    fn failures_count_in_success_but_not_in_timing() {
        let s = summarize("x", &[(1.0, true), (100.0, false), (3.0, true)]);
        assert_eq!(s.count, 3);
        assert_eq!(s.max_s, 3.0);
        assert!((s.success_pct - 66.666).abs() < 0.01);
    }

    #[test]
    fn digest_depends_on_every_event() {
        let mut a = EventDigest::default();
        let mut b = EventDigest::default();
        a.add(b"x");
        b.add(b"y");
        assert_ne!(a.hex(), b.hex());
    }
}
