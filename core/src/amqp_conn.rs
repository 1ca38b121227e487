//! How an oslo.messaging process holds its broker connection, as a pure policy the simulated
//! and real clients share: which address to try next, how long to wait before a reconnect,
//! how often to send a heartbeat and when a silent connection is dead.
//!
//! oslo.messaging's rabbit driver (`impl_rabbit.py`) with kombu:
//! - `transport_url` lists the brokers; a reconnect moves to the next one, round-robin
//!   (`kombu_failover_strategy = round-robin`);
//! - the sleep before reconnect attempt `n` (from 1) is `rabbit_retry_interval` +
//!   (n - 1) x `rabbit_retry_backoff`, capped at `rabbit_interval_max`: 1, 3, 5, ... 29, 30 s
//!   with the defaults;
//! - heartbeats: `heartbeat_timeout_threshold` (60 s) with `heartbeat_rate` (3): the client
//!   checks threshold / rate often (every 20 s), sends a heartbeat when it sent nothing in
//!   that time, and declares the connection dead when it heard nothing for the threshold,
//!   so a partition that resets no socket is still detected; the broker does the same on
//!   its side and closes the connection, requeueing what it had not had acknowledged.
//!
//! After a reconnect the client declares its queues (its reply queue too) again and consumes
//! them again. A call pending across the reconnect keeps waiting until its timeout, as oslo's
//! reply waiter does: its reply reaches it through the redeclared reply queue, since the
//! replier retries a reply that found no queue (`direct_mandatory_flag`,
//! `kombu_missing_consumer_retry_timeout`).

use std::time::Duration;

use crate::scenario::Control;

#[derive(Debug, Clone, PartialEq)]
pub struct ConnPolicy {
    pub addresses: Vec<String>,
    pub retry_interval: Duration,
    pub retry_backoff: Duration,
    pub interval_max: Duration,
    pub heartbeat_threshold: Duration,
    pub heartbeat_rate: u32,
    /// How long one connection attempt may take before it counts as failed. oslo has no
    /// option for it; the model bounds it by the heartbeat threshold, so a connect into a
    /// partition fails as a silent connection would.
    pub connect_timeout: Duration,
}

impl ConnPolicy {
    /// The scenario's settings (oslo's defaults unless it changes them) over `addresses`.
    pub fn from_control(control: &Control, addresses: Vec<String>) -> ConnPolicy {
        ConnPolicy {
            addresses,
            retry_interval: control.rabbit_retry_interval.0,
            retry_backoff: control.rabbit_retry_backoff.0,
            interval_max: control.rabbit_interval_max.0,
            heartbeat_threshold: control.heartbeat_timeout_threshold.0,
            heartbeat_rate: control.heartbeat_rate.max(1),
            connect_timeout: control.heartbeat_timeout_threshold.0,
        }
    }

    /// The address of connection attempt `attempt` (0 is the first ever).
    pub fn address(&self, attempt: u64) -> Option<&str> {
        if self.addresses.is_empty() {
            return None;
        }
        Some(&self.addresses[(attempt % self.addresses.len() as u64) as usize])
    }

    /// The sleep before reconnect attempt `n` (1 is the first after a loss).
    pub fn backoff(&self, n: u32) -> Duration {
        let grow = self.retry_backoff.saturating_mul(n.saturating_sub(1));
        (self.retry_interval + grow).min(self.interval_max)
    }

    /// How often the heartbeat check runs: threshold / rate.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_threshold / self.heartbeat_rate
    }

    /// Whether the check at `now` sends a heartbeat, given when the client last sent.
    pub fn should_send_heartbeat(&self, last_sent: Duration, now: Duration) -> bool {
        now.saturating_sub(last_sent) >= self.heartbeat_interval()
    }

    /// Whether a connection last heard from at `last_heard` is dead at `now`.
    pub fn is_dead(&self, last_heard: Duration, now: Duration) -> bool {
        now.saturating_sub(last_heard) > self.heartbeat_threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ConnPolicy {
        ConnPolicy::from_control(&Control::default(), vec!["a".into(), "b".into(), "c".into()])
    }

    #[test]
    fn backoff_grows_by_two_seconds_to_thirty() {
        let p = policy();
        let secs: Vec<u64> = (1..=17).map(|n| p.backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 30, 30]);
    }

    #[test]
    fn failover_is_round_robin() {
        let p = policy();
        let seq: Vec<&str> = (0..5).map(|i| p.address(i).unwrap()).collect();
        assert_eq!(seq, vec!["a", "b", "c", "a", "b"]);
    }

    #[test]
    fn a_connection_silent_for_the_threshold_is_dead() {
        let p = policy();
        assert_eq!(p.heartbeat_interval(), Duration::from_secs(20));
        assert!(!p.is_dead(Duration::from_secs(10), Duration::from_secs(70)));
        assert!(p.is_dead(Duration::from_secs(10), Duration::from_secs(71)));
        assert!(p.should_send_heartbeat(Duration::from_secs(0), Duration::from_secs(20)));
        assert!(!p.should_send_heartbeat(Duration::from_secs(5), Duration::from_secs(20)));
    }
}
