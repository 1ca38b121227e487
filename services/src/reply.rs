//! The caller's side of an RPC call, once for both brokers' clients (oslo.messaging's
//! `ReplyWaiter`): a pending call waits for its reply until its timeout and, when the call
//! is monitored, also fails once the server has sent nothing for the monitor timeout.
//!
//! Call monitoring (oslo.messaging's `call_monitor_timeout`, which nova sets on
//! select_destinations since Stein): the caller puts the monitor timeout in the message;
//! the server, while it works on the call, sends a heartbeat reply every half of it
//! (`rpc::serve`); the caller resets its monitor on each. A dead server stops the heartbeats,
//! so the call fails after the monitor timeout instead of the (long) call timeout; a busy
//! one keeps it alive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::clock::Clock;
use crate::seams::{BusError, Rpc};

/// What a client keeps for a call it is waiting on, by the call's id.
pub struct Pending {
    reply: oneshot::Sender<Rpc>,
    heard: Arc<Notify>,
    /// The oracle's number of the call (`ReplyTo::call`).
    call: u64,
}

/// What the caller waits on.
pub struct Waiter {
    reply: oneshot::Receiver<Rpc>,
    heard: Arc<Notify>,
}

/// How a wait ended without a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReply {
    /// No reply within the call's timeout, or no heartbeat within the monitor timeout
    /// (both MessagingTimeout to oslo's caller).
    Timeout,
    /// The client dropped the pending call (its reply queue went away for good).
    Closed,
}

impl NoReply {
    /// The caller's error for a call of `method` on `topic` whose replies come to
    /// `reply_queue`.
    pub fn error(self, topic: &str, method: &'static str, timeout: Duration, reply_queue: &str) -> BusError {
        match self {
            NoReply::Timeout => BusError::timeout(topic, method, timeout),
            NoReply::Closed => BusError::Unavailable(format!("reply queue {reply_queue} closed")),
        }
    }
}

/// A new pending call (the oracle's number `call`) and its waiter.
pub fn pending(call: u64) -> (Pending, Waiter) {
    let (tx, rx) = oneshot::channel();
    let heard = Arc::new(Notify::new());
    (Pending { reply: tx, heard: heard.clone(), call }, Waiter { reply: rx, heard })
}

/// What became of a message on the reply queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Nobody waits for it any more (the caller timed out: oslo drops such replies).
    Late,
    /// A heartbeat: the call's monitor starts again.
    Heartbeat,
    /// It answered the pending call the oracle numbers `call`.
    Completed { call: u64 },
}

/// Hands a message that arrived on the reply queue for call `id` to its waiter: a
/// heartbeat resets its monitor, anything else answers it.
pub fn route(pending: &mut BTreeMap<u64, Pending>, id: u64, msg: Rpc) -> Routed {
    if msg == Rpc::Heartbeat {
        return match pending.get(&id) {
            Some(p) => {
                p.heard.notify_one();
                Routed::Heartbeat
            }
            None => Routed::Late,
        };
    }
    match pending.remove(&id) {
        Some(p) => {
            let call = p.call;
            match p.reply.send(msg) {
                Ok(()) => Routed::Completed { call },
                Err(_) => Routed::Late,
            }
        }
        None => Routed::Late,
    }
}

impl Waiter {
    /// The reply, within `timeout` of now and, with `monitor`, with no silence from the
    /// server longer than `monitor`.
    pub async fn wait(mut self, clock: &Clock, timeout: Duration, monitor: Option<Duration>) -> Result<Rpc, NoReply> {
        let deadline = clock.now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(clock.now());
            let wait = monitor.map_or(left, |m| m.min(left));
            tokio::select! {
                biased;
                r = &mut self.reply => return r.map_err(|_| NoReply::Closed),
                _ = self.heard.notified() => continue,
                _ = clock.alarm(wait) => return Err(NoReply::Timeout),
            }
        }
    }
}
