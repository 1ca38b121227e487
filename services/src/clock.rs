//! The clock seam. `tokio` here is madsim-tokio: under `--cfg madsim` its `Instant` and
//! `sleep` are the simulator's, otherwise the system's. This is the one place the swap
//! between real and simulated time happens.
//!
//! A node's clock can be skewed ([`Skew`]): its wall-clock reads (`now_ms`, the timestamps
//! services write, such as a service's last report or a token's expiry) are off by an
//! offset and drift from the moment the skew was set; intervals and sleeps are not, as a
//! process measures them with a monotonic clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stackbed_core::model::Millis;

/// A node's clock error: `offset_ms`, plus `drift_ppm` parts per million of the time
/// since it was set.
#[derive(Clone, Default)]
pub struct Skew(Arc<Mutex<Option<(i64, i64, tokio::time::Instant)>>>);

impl Skew {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(i64, i64, tokio::time::Instant)>> {
        // One assignment or copy per critical section.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, offset_ms: i64, drift_ppm: i64) {
        *self.lock() = Some((offset_ms, drift_ppm, tokio::time::Instant::now()));
    }

    pub fn clear(&self) {
        *self.lock() = None;
    }

    /// The error now, in milliseconds.
    fn error_ms(&self) -> i64 {
        match *self.lock() {
            None => 0,
            Some((offset, drift, since)) => offset + (since.elapsed().as_millis() as i64 * drift) / 1_000_000,
        }
    }
}

#[derive(Clone)]
pub struct Clock {
    start: tokio::time::Instant,
    skew: Option<Skew>,
}

impl Clock {
    pub fn start() -> Clock {
        Clock { start: tokio::time::Instant::now(), skew: None }
    }

    /// The same run's clock as a node with its own `skew` reads it.
    pub fn skewed(&self, skew: Skew) -> Clock {
        Clock { start: self.start, skew: Some(skew) }
    }

    /// Milliseconds since the run started, as this node's wall clock says.
    pub fn now_ms(&self) -> Millis {
        let true_ms = self.start.elapsed().as_millis() as i64;
        let error = self.skew.as_ref().map_or(0, Skew::error_ms);
        (true_ms + error).max(0) as Millis
    }

    pub fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    pub fn secs_since(&self, t: tokio::time::Instant) -> f64 {
        self.since(t).as_secs_f64()
    }

    /// How long ago `t` was (a monotonic interval: skew does not touch it).
    pub fn since(&self, t: tokio::time::Instant) -> Duration {
        t.elapsed()
    }

    pub async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await
    }

    pub async fn sleep_until(&self, t: tokio::time::Instant) {
        tokio::time::sleep_until(t).await
    }

    /// `fut`, or `None` after `d`.
    pub async fn timeout<F: std::future::Future>(&self, d: Duration, fut: F) -> Option<F::Output> {
        tokio::time::timeout(d, fut).await.ok()
    }
}
