//! Counting-mode quota maths (nova Pike+): usage is counted from live records; a request
//! passes when usage plus its deltas stays within every limit. A limit of -1 is unlimited.

use thiserror::Error;

use crate::model::{ProjectUsage, QuotaLimits};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("quota exceeded for {resource}: requested {requested}, used {used}, limit {limit}")]
pub struct OverQuota {
    pub resource: &'static str,
    pub requested: u64,
    pub used: u64,
    pub limit: i64,
}

/// Checks `usage + delta` against `limits`, naming the first resource that would be over.
pub fn check(usage: &ProjectUsage, delta: &ProjectUsage, limits: &QuotaLimits) -> Result<(), OverQuota> {
    let rows = [
        ("instances", usage.instances, delta.instances, limits.instances),
        ("cores", usage.cores, delta.cores, limits.cores),
        ("ram", usage.ram_mb, delta.ram_mb, limits.ram_mb),
    ];
    for (resource, used, requested, limit) in rows {
        if limit >= 0 && used + requested > limit as u64 {
            return Err(OverQuota { resource, requested, used, limit });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_at_and_over_the_limit() {
        let limits = QuotaLimits::default();
        let one = ProjectUsage { instances: 1, cores: 2, ram_mb: 4096 };
        let used = ProjectUsage { instances: 9, cores: 18, ram_mb: 40000 };
        assert!(check(&used, &one, &limits).is_ok());
        let full = ProjectUsage { instances: 10, cores: 18, ram_mb: 40000 };
        let err = check(&full, &one, &limits).unwrap_err();
        assert_eq!(err.resource, "instances");
        let cores = ProjectUsage { instances: 1, cores: 19, ram_mb: 0 };
        assert_eq!(check(&cores, &one, &limits).unwrap_err().resource, "cores");
        let unlimited = QuotaLimits { instances: -1, cores: -1, ram_mb: -1 };
        assert!(check(&full, &one, &unlimited).is_ok());
    }
}
