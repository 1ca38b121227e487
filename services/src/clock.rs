//! The clock seam. `tokio` here is madsim-tokio: under `--cfg madsim` its `Instant` and
//! `sleep` are the simulator's, otherwise the system's. This is the one place the swap
//! between real and simulated time happens.
//!
//! A node's clock can be skewed ([`Skew`]): its wall-clock reads (`now_ms`, the timestamps
//! services write, such as a service's last report or a token's expiry) are off by an
//! offset and drift from the moment the skew was set; intervals and sleeps are not, as a
//! process measures them with a monotonic clock.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use stackbed_core::model::Millis;
use stackbed_core::sync::guard;

/// A node's clock error: `offset_ms`, plus `drift_ppm` parts per million of the time
/// since it was set.
#[derive(Clone, Default)]
pub struct Skew(Arc<Mutex<Option<(i64, i64, tokio::time::Instant)>>>);

impl Skew {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(i64, i64, tokio::time::Instant)>> {
        // One assignment or copy per critical section.
        guard(&self.0)
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
    /// A node's clock keeps its timeouts and alarms here (see [`Deadlines`]); the run's
    /// clock, shared by every node, has none and uses the runtime's timers.
    deadlines: Option<Deadlines>,
}

impl Clock {
    pub fn start() -> Clock {
        Clock { start: tokio::time::Instant::now(), skew: None, deadlines: None }
    }

    /// The same run's clock as one node (one incarnation of it) reads it: with its own
    /// `skew`, and its own [`Deadlines`], which must not outlive the node's tasks.
    pub fn skewed(&self, skew: Skew) -> Clock {
        Clock { start: self.start, skew: Some(skew), deadlines: Some(Deadlines::default()) }
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

    /// Completes after `d`; to be polled in a `select!` beside other branches, where a
    /// plain sleep would, under the simulator, leave a timer behind per wake-up (see
    /// [`Deadlines`]).
    pub fn alarm(&self, d: Duration) -> Alarm {
        match &self.deadlines {
            Some(dl) => Alarm::Registered(Expiry::new(dl.clone(), tokio::time::Instant::now() + d)),
            None => Alarm::Runtime(Box::pin(tokio::time::sleep(d))),
        }
    }

    /// `fut`, or `None` after `d`.
    pub async fn timeout<F: Future>(&self, d: Duration, fut: F) -> Option<F::Output> {
        match &self.deadlines {
            Some(dl) => {
                let expiry = Expiry::new(dl.clone(), tokio::time::Instant::now() + d);
                tokio::select! {
                    biased;
                    v = fut => Some(v),
                    _ = expiry => None,
                }
            }
            None => tokio::time::timeout(d, fut).await.ok(),
        }
    }
}

/// A node's pending deadlines, cancelled when what they bound finishes first.
///
/// madsim's timers cannot be cancelled: a `Sleep` adds one to the simulator's heap each
/// time a poll finds it pending, and each stays until its deadline. A node that bounds
/// every call by 60 s and every connection's frames by a heartbeat check would keep
/// hundreds of thousands of dead timers in that heap at 10,000 hosts, and pay a heap pop
/// for each. Here a deadline is an entry in the node's own ordered map, removed when its
/// future is dropped; one ringer task sleeps until the earliest entry (a new one only when
/// an earlier entry arrives), wakes what expired and sleeps again until the next.
#[derive(Clone, Default)]
pub struct Deadlines(Arc<Mutex<Pending>>);

#[derive(Default)]
struct Pending {
    next_id: u64,
    waiting: BTreeMap<(tokio::time::Instant, u64), Waker>,
    /// When the ringer tasks now sleeping wake.
    ringers: BTreeSet<tokio::time::Instant>,
}

impl Deadlines {
    /// Makes sure a ringer wakes no later than the earliest waiting deadline.
    fn arm(&self) {
        let first = {
            let mut p = guard(&self.0);
            let Some(&(first, _)) = p.waiting.keys().next() else { return };
            if p.ringers.first().is_some_and(|&r| r <= first) {
                return;
            }
            p.ringers.insert(first);
            first
        };
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(first).await;
            let expired = {
                let mut p = guard(&me.0);
                p.ringers.remove(&first);
                let later = p.waiting.split_off(&(tokio::time::Instant::now(), u64::MAX));
                std::mem::replace(&mut p.waiting, later)
            };
            for (_, waker) in expired {
                waker.wake();
            }
            me.arm();
        });
    }
}

/// Ready at `deadline`; its entry goes when it is dropped.
pub struct Expiry {
    deadlines: Deadlines,
    deadline: tokio::time::Instant,
    id: Option<u64>,
}

impl Expiry {
    fn new(deadlines: Deadlines, deadline: tokio::time::Instant) -> Expiry {
        Expiry { deadlines, deadline, id: None }
    }
}

impl Future for Expiry {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if tokio::time::Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let id = {
            let mut p = guard(&self.deadlines.0);
            let id = match self.id {
                Some(id) => id,
                None => {
                    p.next_id += 1;
                    p.next_id
                }
            };
            match p.waiting.get_mut(&(deadline, id)) {
                Some(w) if w.will_wake(cx.waker()) => {}
                Some(w) => *w = cx.waker().clone(),
                None => {
                    p.waiting.insert((deadline, id), cx.waker().clone());
                }
            }
            id
        };
        if self.id.is_none() {
            self.id = Some(id);
            self.deadlines.arm();
        }
        Poll::Pending
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            guard(&self.deadlines.0).waiting.remove(&(self.deadline, id));
        }
    }
}

/// See [`Clock::alarm`].
pub enum Alarm {
    Registered(Expiry),
    Runtime(Pin<Box<tokio::time::Sleep>>),
}

impl Future for Alarm {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut *self {
            Alarm::Registered(e) => Pin::new(e).poll(cx),
            Alarm::Runtime(s) => s.as_mut().poll(cx),
        }
    }
}
