//! Rally's SLAs (`[sla]` in a scenario file), checked against a run's iterations. A run
//! whose SLA fails fails, as `rally task sla-check` does, and says which criterion failed
//! and by how much. Only `failure_rate` so far.

use serde::{Deserialize, Serialize};

/// `[sla]`: each criterion optional, absent ones not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sla {
    /// Rally's `failure_rate`: the percentage of failed iterations must lie in
    /// `[min, max]` (defaults 0 and 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<FailureRate>,
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
    /// `failure_rate`.
    pub criterion: &'static str,
    pub success: bool,
    /// What was measured against what was allowed.
    pub detail: String,
}

impl Sla {
    pub fn is_empty(&self) -> bool {
        self.failure_rate.is_none()
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
        Ok(())
    }

    /// Every criterion against `total` iterations of which `failed` failed.
    pub fn check(&self, total: usize, failed: usize) -> Vec<SlaResult> {
        let mut out = Vec::new();
        if let Some(f) = &self.failure_rate {
            // Rally: no iterations is a 0% failure rate.
            let rate = if total == 0 { 0.0 } else { 100.0 * failed as f64 / total as f64 };
            let success = rate >= f.min && rate <= f.max;
            let by = if rate > f.max { rate - f.max } else { f.min - rate };
            let mut detail =
                format!("{rate:.2}% of {total} iterations failed ({failed}); allowed {}% to {}%", f.min, f.max);
            if !success {
                detail += &format!(": {by:.2} points out");
            }
            out.push(SlaResult { criterion: "failure_rate", success, detail });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rally's failure_rate semantics: the bounds are inclusive percentages.
    #[test]
    fn failure_rate_is_checked_inclusively() {
        let sla = |min, max| Sla { failure_rate: Some(FailureRate { min, max }) };
        for (min, max, total, failed, success) in [
            (0.0, 0.0, 10, 0, true),
            (0.0, 0.0, 10, 1, false),
            (0.0, 10.0, 10, 1, true),
            (0.0, 10.0, 10, 2, false),
            (20.0, 100.0, 10, 1, false),
            (20.0, 100.0, 10, 2, true),
            (0.0, 0.0, 0, 0, true),
        ] {
            let r = sla(min, max).check(total, failed);
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].success, success, "{min}..{max} with {failed}/{total}: {}", r[0].detail);
        }
        assert!(Sla::default().check(10, 10).is_empty());
    }

    #[test]
    fn bounds_outside_percentages_are_refused() {
        let bad = Sla { failure_rate: Some(FailureRate { min: 0.0, max: 120.0 }) };
        assert_eq!(bad.validate().unwrap_err().0, "sla.failure_rate.max");
        let crossed = Sla { failure_rate: Some(FailureRate { min: 50.0, max: 10.0 }) };
        assert_eq!(crossed.validate().unwrap_err().0, "sla.failure_rate.min");
    }
}
