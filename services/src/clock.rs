//! The clock seam. `tokio` here is madsim-tokio: under `--cfg madsim` its `Instant` and
//! `sleep` are the simulator's, otherwise the system's. This is the one place the swap
//! between real and simulated time happens.

use std::time::Duration;

use stackbed_core::model::Millis;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: tokio::time::Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock { start: tokio::time::Instant::now() }
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> Millis {
        self.start.elapsed().as_millis() as Millis
    }

    pub fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    pub fn secs_since(&self, t: tokio::time::Instant) -> f64 {
        t.elapsed().as_secs_f64()
    }

    pub async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await
    }
}
