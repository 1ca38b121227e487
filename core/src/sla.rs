//! Rally's SLAs (`[sla]` in a scenario file), checked against a run's iterations. A run
//! whose SLA fails fails, as `rally task sla-check` does, and says which criterion failed
//! and by how much. Each criterion has the semantics of Rally's plugin of that name
//! (`rally/plugins/common/sla/`): `failure_rate`, `max_seconds_per_iteration`,
//! `max_avg_duration`, `max_avg_duration_per_atomic`, `outliers`, `performance_degradation`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[sla]`: each criterion optional, absent ones not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sla {
    /// Rally's `failure_rate`: the percentage of failed iterations must lie in
    /// `[min, max]` (defaults 0 and 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<FailureRate>,
    /// Rally's `max_seconds_per_iteration`: no iteration, failed ones included, lasts longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seconds_per_iteration: Option<f64>,
    /// Rally's `max_avg_duration`: the mean duration of the successful iterations, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_avg_duration: Option<f64>,
    /// Rally's `max_avg_duration_per_atomic`: per atomic action (`boot_server`,
    /// `api.create`, ...), the mean of its successful samples, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_avg_duration_per_atomic: Option<BTreeMap<String, f64>>,
    /// Rally's `outliers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outliers: Option<Outliers>,
    /// Rally's `performance_degradation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_degradation: Option<Degradation>,
}

/// Rally's `outliers`: a successful iteration is an outlier when, from the
/// `min_iterations`-th on, it lasts longer than the mean plus `sigmas` standard deviations
/// of the successful iterations before it; at most `max` of them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outliers {
    #[serde(default)]
    pub max: u32,
    #[serde(default = "three")]
    pub min_iterations: u32,
    #[serde(default = "three_sigmas")]
    pub sigmas: f64,
}

/// Rally's `performance_degradation`: the slowest successful iteration is at most
/// `max_degradation` percent slower than the fastest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Degradation {
    pub max_degradation: f64,
}

fn three() -> u32 {
    3
}

fn three_sigmas() -> f64 {
    3.0
}

/// One iteration as the SLAs see it, in iteration order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterationSample {
    pub duration_s: f64,
    pub ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRate {
    #[serde(default)]
    pub min: f64,
    #[serde(default = "hundred")]
    pub max: f64,
}

fn hundred() -> f64 {
    100.0
}

/// One criterion's verdict, as report.json and the table show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlaResult {
    /// `failure_rate`, `max_avg_duration_per_atomic.boot_server`, ...
    pub criterion: String,
    pub success: bool,
    /// What was measured against what was allowed.
    pub detail: String,
}

impl Sla {
    pub fn is_empty(&self) -> bool {
        *self == Sla::default()
    }

    /// The checks serde cannot do: a dotted field and a message.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(f) = &self.failure_rate {
            for (name, v) in [("min", f.min), ("max", f.max)] {
                if !(0.0..=100.0).contains(&v) {
                    return Err((format!("sla.failure_rate.{name}"), format!("is a percentage, 0 to 100; got {v}")));
                }
            }
            if f.min > f.max {
                return Err(("sla.failure_rate.min".into(), format!("{} is above max {}", f.min, f.max)));
            }
        }
        let positive = |field: String, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err((field, format!("is a number of seconds above 0; got {v}")))
            }
        };
        if let Some(v) = self.max_seconds_per_iteration {
            positive("sla.max_seconds_per_iteration".into(), v)?;
        }
        if let Some(v) = self.max_avg_duration {
            positive("sla.max_avg_duration".into(), v)?;
        }
        for (action, &v) in self.max_avg_duration_per_atomic.iter().flatten() {
            positive(format!("sla.max_avg_duration_per_atomic.{action}"), v)?;
        }
        if let Some(o) = &self.outliers {
            if !(o.sigmas.is_finite() && o.sigmas > 0.0) {
                return Err(("sla.outliers.sigmas".into(), format!("must be above 0; got {}", o.sigmas)));
            }
            if o.min_iterations < 3 {
                // Rally's schema: at least 3, a standard deviation needs a few samples.
                return Err((
                    "sla.outliers.min_iterations".into(),
                    format!("must be 3 or more; got {}", o.min_iterations),
                ));
            }
        }
        if let Some(d) = &self.performance_degradation {
            if !(d.max_degradation.is_finite() && d.max_degradation >= 0.0) {
                return Err((
                    "sla.performance_degradation.max_degradation".into(),
                    format!("is a percentage, 0 or more; got {}", d.max_degradation),
                ));
            }
        }
        Ok(())
    }

    /// Every criterion against the run's iterations (in order) and each atomic action's
    /// successful samples' durations.
    pub fn check(&self, iterations: &[IterationSample], atomic: &BTreeMap<String, Vec<f64>>) -> Vec<SlaResult> {
        let mut out = Vec::new();
        let mut push = |criterion: &str, success: bool, detail: String| {
            out.push(SlaResult { criterion: criterion.to_string(), success, detail })
        };
        let ok: Vec<f64> = iterations.iter().filter(|i| i.ok).map(|i| i.duration_s).collect();
        if let Some(f) = &self.failure_rate {
            let (total, failed) = (iterations.len(), iterations.len() - ok.len());
            // Rally: no iterations is a 0% failure rate.
            let rate = if total == 0 { 0.0 } else { 100.0 * failed as f64 / total as f64 };
            let success = rate >= f.min && rate <= f.max;
            let by = if rate > f.max { rate - f.max } else { f.min - rate };
            let mut detail =
                format!("{rate:.2}% of {total} iterations failed ({failed}); allowed {}% to {}%", f.min, f.max);
            if !success {
                detail += &format!(": {by:.2} points out");
            }
            push("failure_rate", success, detail);
        }
        if let Some(limit) = self.max_seconds_per_iteration {
            // Rally's IterationTime looks at every iteration, failed ones too.
            let max = iterations.iter().map(|i| i.duration_s).fold(0.0, f64::max);
            push("max_seconds_per_iteration", max <= limit, over("the longest iteration", max, limit));
        }
        if let Some(limit) = self.max_avg_duration {
            match mean(&ok) {
                Some(avg) => {
                    push("max_avg_duration", avg <= limit, over("the successful iterations' mean", avg, limit))
                }
                None => push("max_avg_duration", true, "no successful iteration".into()),
            }
        }
        for (action, &limit) in self.max_avg_duration_per_atomic.iter().flatten() {
            let name = format!("max_avg_duration_per_atomic.{action}");
            match atomic.get(action).and_then(|d| mean(d)) {
                Some(avg) => push(&name, avg <= limit, over(&format!("{action}'s mean"), avg, limit)),
                // Rally checks the atomic actions the iterations ran.
                None => push(&name, true, format!("no successful {action}")),
            }
        }
        if let Some(o) = &self.outliers {
            let n = outliers(&ok, o);
            let detail = format!(
                "{n} outliers (above mean + {} sigmas, from iteration {}) among {} successful iterations; allowed {}",
                o.sigmas,
                o.min_iterations,
                ok.len(),
                o.max
            );
            push("outliers", n <= o.max, detail);
        }
        if let Some(d) = &self.performance_degradation {
            let deg = degradation(&ok);
            let detail = format!(
                "{deg:.2}% from the fastest to the slowest successful iteration; allowed {}%",
                d.max_degradation
            );
            push("performance_degradation", deg <= d.max_degradation, detail);
        }
        out
    }
}

fn over(what: &str, value: f64, limit: f64) -> String {
    let mut s = format!("{what} {value:.3} s; allowed {limit} s");
    if value > limit {
        s += &format!(": {:.3} s over", value - limit);
    }
    s
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Rally's `Outliers.add_iteration`, one successful duration after another: the current
/// one is compared with the threshold of those before it (mean + sigmas × sample standard
/// deviation, known from the second on), counted from the `min_iterations`-th.
fn outliers(durations: &[f64], o: &Outliers) -> u32 {
    let (mut n, mut count, mut mean, mut m2) = (0u32, 0u64, 0.0f64, 0.0f64);
    let mut threshold: Option<f64> = None;
    for &d in durations {
        count += 1;
        if count >= u64::from(o.min_iterations) && threshold.is_some_and(|t| d > t) {
            n += 1;
        }
        // Welford's streaming mean and variance, as Rally's StdDevComputation.
        let delta = d - mean;
        mean += delta / count as f64;
        m2 += delta * (d - mean);
        if count >= 2 {
            threshold = Some(mean + o.sigmas * (m2 / (count - 1) as f64).sqrt());
        }
    }
    n
}

/// Rally's DegradationComputation: (slowest / fastest - 1) × 100; 0 with no sample.
fn degradation(durations: &[f64]) -> f64 {
    let min = durations.iter().copied().fold(f64::INFINITY, f64::min);
    let max = durations.iter().copied().fold(0.0, f64::max);
    if durations.is_empty() || max == 0.0 {
        0.0
    } else if min == 0.0 {
        f64::INFINITY
    } else {
        (max / min - 1.0) * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rally's failure_rate semantics: the bounds are inclusive percentages.
    #[test]
    fn failure_rate_is_checked_inclusively() {
        let sla = |min, max| Sla { failure_rate: Some(FailureRate { min, max }), ..Sla::default() };
        for (min, max, total, failed, success) in [
            (0.0, 0.0, 10, 0, true),
            (0.0, 0.0, 10, 1, false),
            (0.0, 10.0, 10, 1, true),
            (0.0, 10.0, 10, 2, false),
            (20.0, 100.0, 10, 1, false),
            (20.0, 100.0, 10, 2, true),
            (0.0, 0.0, 0, 0, true),
        ] {
            let its: Vec<IterationSample> =
                (0..total).map(|i| IterationSample { duration_s: 1.0, ok: i >= failed }).collect();
            let r = sla(min, max).check(&its, &BTreeMap::new());
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].success, success, "{min}..{max} with {failed}/{total}: {}", r[0].detail);
        }
        let failed = vec![IterationSample { duration_s: 1.0, ok: false }; 10];
        assert!(Sla::default().check(&failed, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn bounds_outside_percentages_are_refused() {
        let bad = Sla { failure_rate: Some(FailureRate { min: 0.0, max: 120.0 }), ..Sla::default() };
        assert_eq!(bad.validate().unwrap_err().0, "sla.failure_rate.max");
        let crossed = Sla { failure_rate: Some(FailureRate { min: 50.0, max: 10.0 }), ..Sla::default() };
        assert_eq!(crossed.validate().unwrap_err().0, "sla.failure_rate.min");
    }

    fn its(durations: &[(f64, bool)]) -> Vec<IterationSample> {
        durations.iter().map(|&(duration_s, ok)| IterationSample { duration_s, ok }).collect()
    }

    /// Each duration criterion as Rally's plugin decides it: (criterion, iterations,
    /// atomic samples, passes).
    #[test]
    fn duration_criteria_follow_rally() {
        let atomic: BTreeMap<String, Vec<f64>> = [("boot_server".to_string(), vec![4.0, 6.0])].into();
        let per_atomic = |limit| Sla {
            max_avg_duration_per_atomic: Some([("boot_server".to_string(), limit)].into()),
            ..Sla::default()
        };
        let cases: Vec<(&str, Sla, Vec<IterationSample>, bool)> = vec![
            // The longest iteration counts, a failed one too.
            (
                "max_seconds_per_iteration",
                Sla { max_seconds_per_iteration: Some(5.0), ..Sla::default() },
                its(&[(5.0, true), (1.0, true)]),
                true,
            ),
            (
                "max_seconds_per_iteration",
                Sla { max_seconds_per_iteration: Some(5.0), ..Sla::default() },
                its(&[(1.0, true), (9.0, false)]),
                false,
            ),
            // The mean of successful iterations only.
            (
                "max_avg_duration",
                Sla { max_avg_duration: Some(2.0), ..Sla::default() },
                its(&[(1.0, true), (3.0, true), (60.0, false)]),
                true,
            ),
            (
                "max_avg_duration",
                Sla { max_avg_duration: Some(2.0), ..Sla::default() },
                its(&[(1.0, true), (3.5, true)]),
                false,
            ),
            ("max_avg_duration", Sla { max_avg_duration: Some(2.0), ..Sla::default() }, its(&[(9.0, false)]), true),
            ("max_avg_duration_per_atomic.boot_server", per_atomic(5.0), its(&[]), true),
            ("max_avg_duration_per_atomic.boot_server", per_atomic(4.9), its(&[]), false),
            // Slowest over fastest, successful only.
            (
                "performance_degradation",
                Sla { performance_degradation: Some(Degradation { max_degradation: 50.0 }), ..Sla::default() },
                its(&[(2.0, true), (3.0, true), (10.0, false)]),
                true,
            ),
            (
                "performance_degradation",
                Sla { performance_degradation: Some(Degradation { max_degradation: 50.0 }), ..Sla::default() },
                its(&[(2.0, true), (3.1, true)]),
                false,
            ),
        ];
        for (criterion, sla, iterations, passes) in cases {
            let r = sla.check(&iterations, &atomic);
            assert_eq!(r.len(), 1, "{criterion}");
            assert_eq!(r[0].criterion, criterion);
            assert_eq!(r[0].success, passes, "{criterion} over {iterations:?}: {}", r[0].detail);
        }
    }

    /// Rally's streaming outliers: the threshold comes from the iterations before, and
    /// none counts before `min_iterations`.
    #[test]
    fn outliers_are_counted_as_rally_streams_them() {
        let o = |max, min_iterations, sigmas| Outliers { max, min_iterations, sigmas };
        // Steady, then one far above: one outlier.
        let steady = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 10.0];
        assert_eq!(outliers(&steady, &o(0, 3, 3.0)), 1);
        // The same spike as the third iteration: the threshold of two samples catches it.
        assert_eq!(outliers(&[1.0, 1.1, 10.0], &o(0, 3, 3.0)), 1);
        // ... but not when counting starts later.
        assert_eq!(outliers(&[1.0, 1.1, 10.0], &o(0, 4, 3.0)), 0);
        // A wide spread raises the threshold: nothing is an outlier.
        assert_eq!(outliers(&[1.0, 5.0, 1.0, 5.0, 6.0], &o(0, 3, 3.0)), 0);
        let sla = Sla { outliers: Some(o(0, 3, 3.0)), ..Sla::default() };
        let mut v: Vec<(f64, bool)> = steady.iter().map(|&d| (d, true)).collect();
        assert!(!sla.check(&its(&v), &BTreeMap::new())[0].success);
        // A failed iteration is not looked at.
        v.last_mut().expect("one").1 = false;
        assert!(sla.check(&its(&v), &BTreeMap::new())[0].success);
    }

    #[test]
    fn bad_duration_criteria_are_refused_by_field() {
        let s = Sla { max_avg_duration_per_atomic: Some([("boot_server".to_string(), 0.0)].into()), ..Sla::default() };
        assert_eq!(s.validate().unwrap_err().0, "sla.max_avg_duration_per_atomic.boot_server");
        let s = Sla { outliers: Some(Outliers { max: 0, min_iterations: 2, sigmas: 3.0 }), ..Sla::default() };
        assert_eq!(s.validate().unwrap_err().0, "sla.outliers.min_iterations");
        let s = Sla { max_seconds_per_iteration: Some(-1.0), ..Sla::default() };
        assert_eq!(s.validate().unwrap_err().0, "sla.max_seconds_per_iteration");
    }
}
