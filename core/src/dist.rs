//! Latency distributions for the simulated host model, sampled from a seeded RNG.

use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "lowercase", deny_unknown_fields)]
pub enum Dist {
    Fixed {
        value_s: f64,
    },
    Uniform {
        min_s: f64,
        max_s: f64,
    },
    /// Normal, truncated at zero.
    Normal {
        mean_s: f64,
        stddev_s: f64,
    },
    /// Log-normal given its median (e^mu) and sigma: the usual shape of service latencies.
    LogNormal {
        median_s: f64,
        sigma: f64,
    },
    Exponential {
        mean_s: f64,
    },
}

impl Dist {
    pub fn validate(&self) -> Result<(), String> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        let fine = match *self {
            Dist::Fixed { value_s } => ok(value_s),
            Dist::Uniform { min_s, max_s } => ok(min_s) && ok(max_s) && min_s <= max_s,
            Dist::Normal { mean_s, stddev_s } => ok(mean_s) && ok(stddev_s),
            Dist::LogNormal { median_s, sigma } => ok(median_s) && median_s > 0.0 && ok(sigma),
            Dist::Exponential { mean_s } => ok(mean_s),
        };
        if fine {
            Ok(())
        } else {
            Err(format!("invalid distribution parameters {self:?} (all must be finite and >= 0, min <= max)"))
        }
    }

    /// Draws one value in seconds.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> f64 {
        match *self {
            Dist::Fixed { value_s } => value_s,
            Dist::Uniform { min_s, max_s } => {
                if max_s > min_s {
                    rng.gen_range(min_s..max_s)
                } else {
                    min_s
                }
            }
            Dist::Normal { mean_s, stddev_s } => (mean_s + stddev_s * standard_normal(rng)).max(0.0),
            Dist::LogNormal { median_s, sigma } => median_s * (sigma * standard_normal(rng)).exp(),
            Dist::Exponential { mean_s } => {
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                -mean_s * u.ln()
            }
        }
    }
}

/// Box-Muller; one value per call keeps the RNG stream simple to reason about.
fn standard_normal<R: Rng>(rng: &mut R) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    fn median_of(d: Dist) -> f64 {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut v: Vec<f64> = (0..20001).map(|_| d.sample(&mut rng)).collect();
        v.sort_by(f64::total_cmp);
        v[10000]
    }

    #[test]
    fn medians_land_where_the_parameters_say() {
        assert!((median_of(Dist::LogNormal { median_s: 2.0, sigma: 0.5 }) - 2.0).abs() < 0.05);
        assert!((median_of(Dist::Uniform { min_s: 1.0, max_s: 3.0 }) - 2.0).abs() < 0.05);
        assert!((median_of(Dist::Normal { mean_s: 5.0, stddev_s: 1.0 }) - 5.0).abs() < 0.05);
        assert!((median_of(Dist::Exponential { mean_s: 1.0 }) - std::f64::consts::LN_2).abs() < 0.05);
        assert_eq!(median_of(Dist::Fixed { value_s: 0.5 }), 0.5);
    }

    #[test]
    fn invalid_parameters_are_refused() {
        assert!(Dist::Uniform { min_s: 3.0, max_s: 1.0 }.validate().is_err());
        assert!(Dist::LogNormal { median_s: 0.0, sigma: 1.0 }.validate().is_err());
        assert!(Dist::Fixed { value_s: f64::NAN }.validate().is_err());
    }
}
