//! The run over simulated time, for the report's time plots: iterations started, ended and
//! in flight per time bin with the boot latency of the boots that ended in it
//! ([`Timeline`]), and each host's utilisation at every sample ([`HostHeat`]). Both are
//! computed once from the run's data and serialised into report.json, which the HTML page
//! is rendered from.

use std::collections::BTreeMap;

use serde::Serialize;

use stackbed_core::model::Provider;
use stackbed_core::stats::percentile;

use crate::runner::Iteration;

/// At most this many bins: the bin width is the smallest of [`BIN_WIDTHS_S`] that covers the
/// run with no more.
pub const MAX_BINS: u64 = 100;

/// The bin widths a timeline may use, in seconds.
pub const BIN_WIDTHS_S: [u64; 14] = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];

/// Iterations over simulated time, in bins of `bin_s`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timeline {
    pub bin_s: f64,
    pub bins: Vec<TimeBin>,
}

/// One bin, `[t_s, t_s + bin_s)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeBin {
    pub t_s: f64,
    /// Iterations started in the bin.
    pub started: usize,
    /// Iterations whose boot ended in the bin: ACTIVE, and failed (ERROR or an API error).
    pub ok: usize,
    pub failed: usize,
    /// Iterations started and not yet ended at the bin's end.
    pub in_flight: usize,
    /// Median and maximum boot latency (start to end) of the bin's successful boots.
    pub boot_p50_s: Option<f64>,
    pub boot_max_s: Option<f64>,
}

/// The smallest width of [`BIN_WIDTHS_S`] giving at most [`MAX_BINS`] bins over `span_ms`
/// (the largest width for longer runs).
pub fn bin_width_ms(span_ms: u64) -> u64 {
    BIN_WIDTHS_S
        .iter()
        .map(|s| s * 1000)
        .find(|w| span_ms.div_ceil(*w) <= MAX_BINS)
        .unwrap_or(BIN_WIDTHS_S[BIN_WIDTHS_S.len() - 1] * 1000)
}

impl Timeline {
    /// Bins over `[0, span_ms)`; iterations ending later count in the last bin.
    pub fn of(iterations: &[Iteration], span_ms: u64) -> Timeline {
        let end = iterations.iter().map(|i| i.end_ms.max(i.start_ms)).max().unwrap_or(0).max(span_ms);
        let width = bin_width_ms(end.max(1));
        let n = end.div_ceil(width).max(1) as usize;
        let bin = |ms: u64| ((ms / width) as usize).min(n - 1);
        let mut started = vec![0usize; n];
        let mut ok = vec![0usize; n];
        let mut failed = vec![0usize; n];
        let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); n];
        for it in iterations {
            let end_ms = it.end_ms.max(it.start_ms);
            started[bin(it.start_ms)] += 1;
            if it.ok {
                ok[bin(end_ms)] += 1;
                latencies[bin(end_ms)].push((end_ms - it.start_ms) as f64 / 1000.0);
            } else {
                failed[bin(end_ms)] += 1;
            }
        }
        let mut in_flight = 0usize;
        let bins = (0..n)
            .map(|k| {
                in_flight = (in_flight + started[k]).saturating_sub(ok[k] + failed[k]);
                let lat = &mut latencies[k];
                lat.sort_by(f64::total_cmp);
                TimeBin {
                    t_s: (k as u64 * width) as f64 / 1000.0,
                    started: started[k],
                    ok: ok[k],
                    failed: failed[k],
                    in_flight,
                    boot_p50_s: (!lat.is_empty()).then(|| percentile(lat, 50.0)),
                    boot_max_s: lat.last().copied(),
                }
            })
            .collect();
        Timeline { bin_s: width as f64 / 1000.0, bins }
    }
}

/// At most this many rows in a [`HostHeat`]: more hosts are grouped, consecutive in name
/// order, into this many rows.
pub const MAX_HEAT_ROWS: usize = 64;

/// One utilisation sample of every host: its fullest resource class's used / capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSample {
    pub t_s: f64,
    pub hosts: Vec<(String, f64)>,
}

impl HostSample {
    pub fn of(t_s: f64, providers: &[Provider]) -> HostSample {
        let hosts = providers
            .iter()
            .map(|p| {
                let fullest = (0..3)
                    .map(|c| {
                        let cap = p.inventories[c].capacity();
                        if cap == 0 {
                            0.0
                        } else {
                            p.used.0[c] as f64 / cap as f64
                        }
                    })
                    .fold(0.0, f64::max);
                (p.host.clone(), fullest)
            })
            .collect();
        HostSample { t_s, hosts }
    }
}

/// Host utilisation over time, a heatmap's cells: `used[sample][row]` is the mean over the
/// row's hosts of their fullest class's used / capacity (vCPU, RAM or disk, whichever is
/// fuller), at `t_s[sample]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostHeat {
    /// A host's name, or `first .. last (N hosts)` for a group.
    pub rows: Vec<String>,
    pub t_s: Vec<f64>,
    pub used: Vec<Vec<f64>>,
}

/// Name order with numbers compared as numbers: compute-2 before compute-10.
fn natural_key(name: &str) -> (String, u64, String) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, tail) = name.split_at(name.len() - digits);
    (head.to_string(), tail.parse().unwrap_or(0), name.to_string())
}

impl HostHeat {
    pub fn of(samples: &[HostSample]) -> HostHeat {
        let mut names: Vec<&str> = samples.iter().flat_map(|s| s.hosts.iter().map(|(h, _)| h.as_str())).collect();
        names.sort_by_cached_key(|n| natural_key(n));
        names.dedup();
        if names.is_empty() {
            return HostHeat::default();
        }
        let per_row = names.len().div_ceil(MAX_HEAT_ROWS);
        let groups: Vec<&[&str]> = names.chunks(per_row).collect();
        let row_of: BTreeMap<&str, usize> =
            groups.iter().enumerate().flat_map(|(r, g)| g.iter().map(move |h| (*h, r))).collect();
        let rows = groups
            .iter()
            .map(|g| match g {
                [one] => one.to_string(),
                _ => format!("{} .. {} ({} hosts)", g[0], g[g.len() - 1], g.len()),
            })
            .collect();
        let used = samples
            .iter()
            .map(|s| {
                let mut sum = vec![0.0; groups.len()];
                let mut count = vec![0usize; groups.len()];
                for (h, u) in &s.hosts {
                    let r = row_of[h.as_str()];
                    sum[r] += u;
                    count[r] += 1;
                }
                // Four decimals: the page cannot show more, and report.json stays small.
                sum.iter().zip(&count).map(|(s, &c)| ((s / c.max(1) as f64) * 1e4).round() / 1e4).collect()
            })
            .collect();
        HostHeat { rows, t_s: samples.iter().map(|s| s.t_s).collect(), used }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn it(start_ms: u64, end_ms: u64, ok: bool) -> Iteration {
        Iteration::sample(start_ms, end_ms, ok)
    }

    #[test]
    fn bins_cover_the_run_with_at_most_max_bins() {
        assert_eq!(bin_width_ms(50_000), 1000);
        assert_eq!(bin_width_ms(100_000), 1000);
        assert_eq!(bin_width_ms(100_001), 2000);
        assert_eq!(bin_width_ms(10_000_000_000), 7_200_000);
    }

    #[test]
    fn iterations_are_counted_where_they_start_and_end() {
        let t = Timeline::of(&[it(0, 2500, true), it(500, 1500, false), it(1200, 2600, true)], 3000);
        assert_eq!(t.bin_s, 1.0);
        let col = |f: fn(&TimeBin) -> usize| t.bins.iter().map(f).collect::<Vec<_>>();
        assert_eq!(col(|b| b.started), vec![2, 1, 0]);
        assert_eq!(col(|b| b.ok), vec![0, 0, 2]);
        assert_eq!(col(|b| b.failed), vec![0, 1, 0]);
        assert_eq!(col(|b| b.in_flight), vec![2, 2, 0]);
        assert_eq!(t.bins[2].boot_max_s, Some(2.5));
        assert_eq!(t.bins[0].boot_p50_s, None);
    }

    #[test]
    fn hosts_group_in_natural_order() {
        let s = HostSample {
            t_s: 0.0,
            hosts: (1..=128).rev().map(|i| (format!("compute-{i}"), if i <= 64 { 1.0 } else { 0.0 })).collect(),
        };
        let h = HostHeat::of(&[s]);
        assert_eq!(h.rows.len(), 64);
        assert_eq!(h.rows[0], "compute-1 .. compute-2 (2 hosts)");
        assert_eq!(h.rows[63], "compute-127 .. compute-128 (2 hosts)");
        assert_eq!(h.used[0][31], 1.0);
        assert_eq!(h.used[0][32], 0.0);
        let few = HostHeat::of(&[HostSample { t_s: 1.0, hosts: vec![("b".into(), 0.5), ("a".into(), 0.25)] }]);
        assert_eq!((few.rows, few.used), (vec!["a".to_string(), "b".to_string()], vec![vec![0.25, 0.5]]));
    }
}
