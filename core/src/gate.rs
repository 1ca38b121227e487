//! The benchmark gate's verdicts (`stackbed bench --baseline FILE`), and the scenario's
//! `[bench]` section that tunes them.
//!
//! Two kinds of metric, judged differently:
//! - **simulated** metrics (boot latency percentiles, failures, simulated seconds) are
//!   deterministic for a seed, so they are compared exactly, or within a relative tolerance
//!   the scenario states ([`compare`]);
//! - **wall-clock** metrics are noisy, so the gate runs the baseline build and this build in
//!   alternating rounds on the same machine and calls a change only when the median ratio
//!   passes `max_wall_ratio` *and* a one-sided Mann-Whitney U test over the rounds says it is
//!   not noise ([`wall`]). The test is exact (no normal approximation) and assumes nothing
//!   about the distribution of run times, which on a shared machine is anything but normal.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The significance level of the wall-clock test: a slowdown is called when the chance of
/// rounds this separated arising from one distribution is below 1%. With 5 rounds a side
/// that takes at least 24 of the 25 pairs the same way (the smallest p-value of 5 against 5
/// is 1/252); with 4 or fewer rounds no difference can be significant.
pub const ALPHA: f64 = 0.01;

/// Wall-clock medians closer than this are the same, whatever the ratio: a process's start
/// and exit alone vary by a few milliseconds.
pub const MIN_WALL_DELTA_S: f64 = 0.02;

/// `[bench]`: how the gate judges this scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchDecl {
    /// Relative tolerance per simulated metric, by the name the gate's table prints
    /// (`"boot_server.p90_s" = 0.05` allows 5% worse), `"*"` for every metric without its
    /// own entry. Absent: exact.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tolerance: BTreeMap<String, f64>,
    /// A wall-clock metric fails when this build's median over the baseline's exceeds this
    /// ratio and the rounds are significantly apart.
    #[serde(default = "default_max_wall_ratio")]
    pub max_wall_ratio: f64,
}

fn default_max_wall_ratio() -> f64 {
    1.10
}

impl Default for BenchDecl {
    fn default() -> Self {
        BenchDecl { tolerance: BTreeMap::new(), max_wall_ratio: default_max_wall_ratio() }
    }
}

impl BenchDecl {
    pub fn is_default(&self) -> bool {
        *self == BenchDecl::default()
    }

    /// The tolerance that applies to `metric`.
    pub fn tolerance_for(&self, metric: &str) -> f64 {
        self.tolerance.get(metric).or_else(|| self.tolerance.get("*")).copied().unwrap_or(0.0)
    }

    /// `Err((field, message))` for the scenario loader.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (name, t) in &self.tolerance {
            if !t.is_finite() || *t < 0.0 {
                return Err((format!("bench.tolerance.{name}"), format!("must be a fraction of at least 0, got {t}")));
            }
        }
        if !self.max_wall_ratio.is_finite() || self.max_wall_ratio < 1.0 {
            return Err(("bench.max_wall_ratio".into(), format!("must be at least 1, got {}", self.max_wall_ratio)));
        }
        Ok(())
    }
}

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

/// What the gate concludes about one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Equal (simulated: within the tolerance; wall: within `max_wall_ratio`).
    Same,
    Better,
    Worse,
    /// Wall clock past `max_wall_ratio` either way, but not significantly.
    Noise,
    /// In the baseline, not in this run.
    Missing,
    /// In this run, not in the baseline.
    New,
    /// Wall clock with no baseline build to time side by side: shown, not judged.
    Unjudged,
}

impl Verdict {
    pub fn fails(self) -> bool {
        matches!(self, Verdict::Worse | Verdict::Missing)
    }

    pub fn label(self, wall: bool) -> &'static str {
        match (self, wall) {
            (Verdict::Same, _) => "same",
            (Verdict::Better, false) => "better",
            (Verdict::Better, true) => "faster",
            (Verdict::Worse, false) => "WORSE",
            (Verdict::Worse, true) => "SLOWER",
            (Verdict::Noise, _) => "noise",
            (Verdict::Missing, _) => "MISSING",
            (Verdict::New, _) => "new",
            (Verdict::Unjudged, _) => "not judged",
        }
    }
}

/// A simulated metric: `after` against `before`, allowed to be worse by `tolerance`
/// (relative to `before`; 0 is exact). A change in the good direction passes as `Better`.
pub fn compare(before: f64, after: f64, better: Better, tolerance: f64) -> Verdict {
    if after == before || (after - before).abs() <= tolerance * before.abs() {
        return Verdict::Same;
    }
    let worse = match better {
        Better::Lower => after > before,
        Better::Higher => after < before,
    };
    if worse {
        Verdict::Worse
    } else {
        Verdict::Better
    }
}

/// The wall-clock judgement of one metric over the rounds of both builds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WallJudgement {
    pub before_median: f64,
    pub after_median: f64,
    /// After over before, of the medians.
    pub ratio: f64,
    /// One-sided Mann-Whitney p-value of "this build is slower".
    pub p_slower: f64,
    /// One-sided Mann-Whitney p-value of "this build is faster".
    pub p_faster: f64,
    pub verdict: Verdict,
}

/// Judges wall-clock samples where lower is better (seconds).
pub fn wall(before: &[f64], after: &[f64], max_ratio: f64) -> WallJudgement {
    let before_median = median(before);
    let after_median = median(after);
    let ratio = if before_median > 0.0 { after_median / before_median } else { 1.0 };
    let p_slower = mann_whitney_greater(after, before);
    let p_faster = mann_whitney_greater(before, after);
    let verdict = if before.is_empty() || after.is_empty() {
        if before.is_empty() {
            Verdict::New
        } else {
            Verdict::Missing
        }
    } else if (after_median - before_median).abs() < MIN_WALL_DELTA_S {
        Verdict::Same
    } else if ratio > max_ratio {
        if p_slower < ALPHA {
            Verdict::Worse
        } else {
            Verdict::Noise
        }
    } else if ratio < 1.0 / max_ratio {
        if p_faster < ALPHA {
            Verdict::Better
        } else {
            Verdict::Noise
        }
    } else {
        Verdict::Same
    };
    WallJudgement { before_median, after_median, ratio, p_slower, p_faster, verdict }
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    crate::stats::percentile(&v, 50.0)
}

/// The exact one-sided p-value of the Mann-Whitney U test that `xs` tend to exceed `ys`:
/// the chance, were both samples drawn from one distribution, of a U at least as large as
/// the observed (U counts the pairs with x > y, a tie as a half; a half is rounded down,
/// which can only raise the p-value). 1 for an empty sample.
pub fn mann_whitney_greater(xs: &[f64], ys: &[f64]) -> f64 {
    let (n, m) = (xs.len(), ys.len());
    if n == 0 || m == 0 {
        return 1.0;
    }
    let twice_u: usize = xs
        .iter()
        .map(|x| {
            ys.iter()
                .map(|y| match x.total_cmp(y) {
                    std::cmp::Ordering::Greater => 2,
                    std::cmp::Ordering::Equal => 1,
                    std::cmp::Ordering::Less => 0,
                })
                .sum::<usize>()
        })
        .sum();
    let u = twice_u / 2;
    let counts = u_distribution(n, m);
    let total: f64 = counts.iter().sum();
    counts[u..].iter().sum::<f64>() / total
}

/// How many of the orderings of `n` x's and `m` y's give each U (0..=n*m): the recurrence
/// f(n, m, u) = f(n-1, m, u-m) + f(n, m-1, u), by whether the largest value is an x (it
/// beats all m y's) or a y.
fn u_distribution(n: usize, m: usize) -> Vec<f64> {
    // table[i][j] = distribution for i x's and j y's.
    let mut table: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); m + 1]; n + 1];
    for i in 0..=n {
        for j in 0..=m {
            table[i][j] = if i == 0 || j == 0 {
                vec![1.0]
            } else {
                let mut d = vec![0.0; i * j + 1];
                for (u, c) in table[i - 1][j].iter().enumerate() {
                    d[u + j] += c;
                }
                for (u, c) in table[i][j - 1].iter().enumerate() {
                    d[u] += c;
                }
                d
            };
        }
    }
    std::mem::take(&mut table[n][m])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_metrics_compare_exactly_unless_a_tolerance_is_stated() {
        use Better::{Higher, Lower};
        use Verdict::{Same, Worse};
        let table: &[(f64, f64, Better, f64, Verdict)] = &[
            (10.0, 10.0, Lower, 0.0, Same),
            (10.0, 10.000001, Lower, 0.0, Worse),
            (10.0, 9.99, Lower, 0.0, Verdict::Better),
            (10.0, 10.4, Lower, 0.05, Same),
            (10.0, 10.6, Lower, 0.05, Worse),
            (100.0, 99.0, Higher, 0.0, Worse),
            (100.0, 101.0, Higher, 0.0, Verdict::Better),
            (100.0, 99.0, Higher, 0.02, Same),
            (0.0, 0.0, Lower, 0.5, Same),
            (0.0, 1.0, Lower, 0.5, Worse),
        ];
        for &(before, after, better, tol, want) in table {
            assert_eq!(compare(before, after, better, tol), want, "{before} -> {after} {better:?} tol {tol}");
        }
    }

    #[test]
    fn mann_whitney_p_values_match_the_exact_tables() {
        // Complete separation: 1 / C(n+m, n).
        let p = mann_whitney_greater(&[6.0, 7.0, 8.0, 9.0, 10.0], &[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!((p - 1.0 / 252.0).abs() < 1e-12, "{p}");
        let p = mann_whitney_greater(&[4.0, 5.0, 6.0], &[1.0, 2.0, 3.0]);
        assert!((p - 0.05).abs() < 1e-12, "{p}");
        // The other direction: every ordering has U >= 0.
        assert_eq!(mann_whitney_greater(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 1.0);
        // n = m = 3, U = 8 (one inversion): 2 of 20 orderings have U >= 8.
        let p = mann_whitney_greater(&[3.5, 5.0, 6.0], &[1.0, 2.0, 4.0]);
        assert!((p - 0.10).abs() < 1e-12, "{p}");
        // Identical samples: U is half of n*m, p above one half.
        let p = mann_whitney_greater(&[1.0; 5], &[1.0; 5]);
        assert!(p > 0.5, "{p}");
    }

    #[test]
    fn the_u_distribution_sums_to_the_number_of_orderings() {
        let d = u_distribution(5, 4);
        assert_eq!(d.iter().sum::<f64>(), 126.0);
        assert_eq!(d.len(), 21);
        // Symmetric around n*m/2.
        for u in 0..d.len() {
            assert_eq!(d[u], d[d.len() - 1 - u]);
        }
    }

    #[test]
    fn wall_clock_needs_both_a_large_ratio_and_significance() {
        let base = [1.00, 1.02, 0.98, 1.01, 0.99];
        // Five rounds a side can be significant at 1%, four cannot.
        assert!(mann_whitney_greater(&[2.0; 5], &base) < ALPHA);
        assert!(mann_whitney_greater(&[2.0, 2.1, 2.2, 2.3], &base[..4]) > ALPHA);
        // Milliseconds apart: the same, whatever the ratio.
        assert_eq!(wall(&[0.010; 5], &[0.020; 5], 1.10).verdict, Verdict::Same);
        // 30% slower in every round: caught.
        let slow: Vec<f64> = base.iter().map(|x| x * 1.3).collect();
        assert_eq!(wall(&base, &slow, 1.10).verdict, Verdict::Worse);
        assert_eq!(wall(&slow, &base, 1.10).verdict, Verdict::Better);
        // 5% slower: under the ratio, the same.
        let bit: Vec<f64> = base.iter().map(|x| x * 1.05).collect();
        assert_eq!(wall(&base, &bit, 1.10).verdict, Verdict::Same);
        // One stall in one round moves the median little and is not significant.
        let noisy = [1.0, 3.0, 0.97, 1.3, 1.25];
        let j = wall(&base, &noisy, 1.10);
        assert!(j.ratio > 1.10, "{j:?}");
        assert_eq!(j.verdict, Verdict::Noise, "{j:?}");
        assert_eq!(wall(&[], &base, 1.1).verdict, Verdict::New);
        assert_eq!(wall(&base, &[], 1.1).verdict, Verdict::Missing);
    }

    #[test]
    fn tolerances_fall_back_to_the_star_entry() {
        let mut b = BenchDecl::default();
        assert_eq!(b.tolerance_for("boot_server.p90_s"), 0.0);
        b.tolerance.insert("*".into(), 0.01);
        b.tolerance.insert("boot_server.p90_s".into(), 0.05);
        assert_eq!(b.tolerance_for("boot_server.p90_s"), 0.05);
        assert_eq!(b.tolerance_for("iterations.ok"), 0.01);
        b.max_wall_ratio = 0.9;
        assert_eq!(b.validate().unwrap_err().0, "bench.max_wall_ratio");
    }
}
