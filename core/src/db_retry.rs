//! oslo.db's `wrap_db_retry` as a pure policy: which errors a wrapped database call retries
//! and how long it sleeps before each retry. The async shell that runs a call under it
//! (drawing jitter from a seeded RNG, sleeping on the clock seam) is
//! `stackbed_services::db_retry`.
//!
//! The arithmetic follows oslo.db's `wrap_db_retry` (`oslo_db/api.py`, current master):
//! the first retry sleeps `retry_interval`; after each failed attempt the interval `n`
//! doubles (it is not capped itself) and the next sleep is `n`, or, for a deadlock, a
//! uniform draw from `[0, n)` (jitter is always on for DBDeadlock); every sleep is capped at
//! `max_retry_interval`. After `max_retries` retries the error is raised. With nova's
//! `max_retries=5` and the defaults a deadlocked call sleeps 1 s, then U(0, 2), U(0, 4),
//! U(0, 8), min(U(0, 16), 10) seconds, six attempts in all.

use std::time::Duration;

use crate::scenario::{Control, Debug, PlantedBug};
use crate::store::DbError;

/// One wrapped call's retry settings (`wrap_db_retry`'s arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbRetryPolicy {
    /// `retry_interval`: the first sleep (1 s).
    pub retry_interval: Duration,
    /// `inc_retry_interval`: double the interval after each retry (true).
    pub inc_retry_interval: bool,
    /// `max_retry_interval`: cap on every sleep (10 s).
    pub max_retry_interval: Duration,
    /// `max_retries`: retries after the first attempt (nova passes 5).
    pub max_retries: u32,
    /// `retry_on_deadlock`: retry DBDeadlock (MySQL 1213 and 1205). nova asks for it.
    pub retry_on_deadlock: bool,
    /// `jitter` for errors other than a deadlock (off; a deadlock always jitters).
    pub jitter: bool,
    /// Wrong on purpose (`PlantedBug::RetryNonIdempotentWrites`): also retry a commit in
    /// doubt, which applies a write twice when its first attempt did commit.
    pub retry_in_doubt: bool,
}

impl DbRetryPolicy {
    /// nova's `oslo_db_api.wrap_db_retry(max_retries=N, retry_on_deadlock=True)` with
    /// oslo.db's other defaults.
    pub fn nova(max_retries: u32) -> DbRetryPolicy {
        DbRetryPolicy {
            retry_interval: Duration::from_secs(1),
            inc_retry_interval: true,
            max_retry_interval: Duration::from_secs(10),
            max_retries,
            retry_on_deadlock: true,
            jitter: false,
            retry_in_doubt: false,
        }
    }

    /// The policy a scenario gives nova's wrapped calls (`control.db_max_retries`, and the
    /// planted bug if any).
    pub fn from_scenario(control: &Control, debug: &Debug) -> DbRetryPolicy {
        DbRetryPolicy {
            retry_in_doubt: debug.plant_bug == Some(PlantedBug::RetryNonIdempotentWrites),
            ..DbRetryPolicy::nova(control.db_max_retries)
        }
    }

    /// Whether a call failing with `e` is tried again. Never a connection lost before the
    /// send or a non-primary node (DBConnectionError: nova runs `use_db_reconnect=False`),
    /// never a compare-and-swap conflict (the caller's own re-read loop handles it), and
    /// never a commit in doubt (it may have committed: trying again may apply it twice).
    pub fn retries(&self, e: &DbError) -> bool {
        (self.retry_on_deadlock && e.is_deadlock()) || (self.retry_in_doubt && e.is_in_doubt())
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryDecision {
    /// Sleep this long, then try again.
    Sleep(Duration),
    /// Raise the error to the caller.
    GiveUp,
}

/// The retry state of one wrapped call, from its first attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbRetryState {
    /// The sleep before the next retry.
    sleep: Duration,
    /// oslo's `n`, doubling after each retry (uncapped; only sleeps are capped).
    next_interval: Duration,
    remaining: u32,
}

impl DbRetryState {
    pub fn new(policy: &DbRetryPolicy) -> DbRetryState {
        DbRetryState {
            sleep: policy.retry_interval,
            next_interval: policy.retry_interval,
            remaining: policy.max_retries,
        }
    }

    /// Retries left.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// After an attempt failed with `e`: sleep and retry, or give up. `uniform` is a draw
    /// from `[0, 1)`, used only for a deadlock's jitter (so the caller's RNG stream does not
    /// depend on which errors came).
    pub fn on_error(&mut self, policy: &DbRetryPolicy, e: &DbError, uniform: impl FnOnce() -> f64) -> RetryDecision {
        if !policy.retries(e) || self.remaining == 0 {
            return RetryDecision::GiveUp;
        }
        let sleep = self.sleep;
        if policy.inc_retry_interval {
            self.next_interval = self.next_interval.saturating_mul(2);
            let jitter = e.is_deadlock() || policy.jitter;
            let next = if jitter { self.next_interval.mul_f64(uniform().clamp(0.0, 1.0)) } else { self.next_interval };
            self.sleep = next.min(policy.max_retry_interval);
        }
        self.remaining -= 1;
        RetryDecision::Sleep(sleep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadlock() -> DbError {
        DbError::Deadlock("instances/a".into())
    }

    /// The sleeps of one call failing with `e` every time, with jitter draws `u`.
    fn sleeps(policy: &DbRetryPolicy, e: &DbError, u: f64) -> Vec<f64> {
        let mut state = DbRetryState::new(policy);
        let mut out = Vec::new();
        while let RetryDecision::Sleep(d) = state.on_error(policy, e, || u) {
            out.push(d.as_secs_f64());
            assert!(out.len() <= 100, "a retry loop without end");
        }
        out
    }

    #[test]
    fn a_deadlock_sleeps_one_second_then_jittered_doubling_capped_at_ten() {
        let nova = DbRetryPolicy::nova(5);
        assert_eq!(sleeps(&nova, &deadlock(), 0.5), [1.0, 1.0, 2.0, 4.0, 8.0]);
        assert_eq!(sleeps(&nova, &deadlock(), 0.0), [1.0, 0.0, 0.0, 0.0, 0.0]);
        // Near the top of each range; the last would be 16 s and is capped.
        let high = sleeps(&nova, &deadlock(), 0.999);
        let expected = [1.0, 1.998, 3.996, 7.992, 10.0];
        assert!(high.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-9), "{high:?}");
        // 1205 is DBDeadlock too.
        assert_eq!(sleeps(&nova, &DbError::LockWaitTimeout("x".into()), 0.5).len(), 5);
    }

    #[test]
    fn without_jitter_the_interval_doubles_and_oslo_defaults_retry_twenty_times() {
        let mut policy = DbRetryPolicy { retry_in_doubt: true, ..DbRetryPolicy::nova(20) };
        let in_doubt = DbError::InDoubt("x".into());
        let s = sleeps(&policy, &in_doubt, 0.5);
        assert_eq!(s[..6], [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]);
        assert_eq!(s.len(), 20);
        policy.inc_retry_interval = false;
        assert!(sleeps(&policy, &in_doubt, 0.5).iter().all(|s| *s == 1.0));
    }

    #[test]
    fn only_deadlocks_are_retried_unless_the_bug_is_planted() {
        let nova = DbRetryPolicy::nova(5);
        for e in [
            DbError::InDoubt("sent, answer lost".into()),
            DbError::ConnectionLost("reset".into()),
            DbError::NonPrimary { node: "galera-2".into() },
            DbError::Conflict {
                table: "instances".into(),
                key: "a".into(),
                expected: crate::store::Expect::Absent,
                found: Some(1),
            },
            DbError::Backend("x".into()),
        ] {
            assert!(!nova.retries(&e), "{e}");
            assert_eq!(DbRetryState::new(&nova).on_error(&nova, &e, || 0.5), RetryDecision::GiveUp);
        }
        assert!(nova.retries(&deadlock()));
        assert!(!DbRetryPolicy { retry_on_deadlock: false, ..nova }.retries(&deadlock()));
        let buggy = DbRetryPolicy { retry_in_doubt: true, ..nova };
        assert!(buggy.retries(&DbError::InDoubt("x".into())));
        assert!(!buggy.retries(&DbError::ConnectionLost("x".into())));
    }

    #[test]
    fn max_retries_zero_gives_up_at_once() {
        assert!(sleeps(&DbRetryPolicy::nova(0), &deadlock(), 0.5).is_empty());
    }

    #[test]
    fn messages_carry_the_mysql_code() {
        for (e, code) in [
            (deadlock(), "1213"),
            (DbError::LockWaitTimeout("x".into()), "1205"),
            (DbError::NonPrimary { node: "n".into() }, "1047"),
            (DbError::ConnectionLost("x".into()), "2006"),
            (DbError::InDoubt("x".into()), "2013"),
        ] {
            assert!(e.to_string().contains(&format!("MySQL {code}")), "{e}");
            assert_eq!(e.mysql_code().map(|c| c.to_string()).as_deref(), Some(code));
        }
    }
}
