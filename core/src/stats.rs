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

/// One look at the cloud's fill: per resource class (VCPU, MEMORY_MB, DISK_GB) the mean and
/// standard deviation over hosts of used/capacity, the hosts in use, and stranded capacity
/// (free resources on hosts that cannot fit the smallest flavor).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UtilSample {
    pub t_s: f64,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    pub hosts_in_use: u64,
    pub stranded: [u64; 3],
}

pub fn utilisation(t_s: f64, providers: &[crate::model::Provider], smallest: &crate::model::Resources) -> UtilSample {
    let n = providers.len().max(1) as f64;
    let mut sum = [0.0; 3];
    let mut sq = [0.0; 3];
    let mut stranded = [0u64; 3];
    let mut in_use = 0;
    for p in providers {
        if p.used.0.iter().any(|&u| u > 0) {
            in_use += 1;
        }
        let cannot_fit = crate::placement::fits(p, smallest).is_err();
        for c in 0..3 {
            let cap = p.inventories[c].capacity();
            let u = if cap == 0 { 0.0 } else { p.used.0[c] as f64 / cap as f64 };
            sum[c] += u;
            sq[c] += u * u;
            if cannot_fit {
                stranded[c] += cap.saturating_sub(p.used.0[c]);
            }
        }
    }
    let mean = [sum[0] / n, sum[1] / n, sum[2] / n];
    let std = [0, 1, 2].map(|c| (sq[c] / n - mean[c] * mean[c]).max(0.0).sqrt());
    UtilSample { t_s, mean, std, hosts_in_use: in_use, stranded }
}

/// Mean and the half-width of its 95% confidence interval (Student's t), across seeds.
pub fn mean_ci95(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    // Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom, then normal.
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    let t = T.get(n - 2).copied().unwrap_or(1.96);
    (mean, t * (var / n as f64).sqrt())
}

#[cfg(test)]
mod util_tests {
    use super::*;
    use crate::model::{Inventory, Provider, Resources};

    fn p(used_vcpu: u64) -> Provider {
        Provider {
            host: "h".into(),
            inventories: [Inventory::new(10, 0, 1.0), Inventory::new(1000, 0, 1.0), Inventory::new(100, 0, 1.0)],
            used: Resources::new(used_vcpu, 0, 0),
        }
    }

    #[test]
    fn utilisation_mean_std_in_use_and_stranded() {
        let s = utilisation(0.0, &[p(10), p(0), p(5)], &Resources::new(1, 1, 1));
        assert!((s.mean[0] - 0.5).abs() < 1e-9);
        assert!((s.std[0] - (1.0f64 / 6.0).sqrt()).abs() < 1e-9);
        assert_eq!(s.hosts_in_use, 2);
        // The full host cannot take 1 vCPU: its free RAM and disk are stranded.
        assert_eq!(s.stranded, [0, 1000, 100]);
    }

    #[test]
    fn confidence_interval() {
        let (m, h) = mean_ci95(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((h - 4.303 * (1.0f64 / 3.0).sqrt()).abs() < 1e-9);
        assert_eq!(mean_ci95(&[5.0]), (5.0, 0.0));
    }
}
