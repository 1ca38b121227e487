//! An in-process message broker with the queue semantics oslo.messaging relies on in
//! RabbitMQ: every topic is a durable queue; several consumers of one queue are served
//! round-robin; messages published to a queue nobody consumes yet wait in its backlog and
//! go to the first consumer that appears; a call carries a reply queue and a message id,
//! and the reply is routed back to the caller waiting on that reply queue.
//!
//! One [`InProcBroker`] is shared by the run; each service gets its own [`InProcBus`] client
//! handle (cheap: an `Arc` and its reply queue), as each nova process has its own
//! connection and `reply_<uuid>` queue.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use stackbed_services::metrics::Metrics;
use stackbed_services::seams::{Bus, BusError, Incoming, ReplyTo, Rpc};

/// The counter a reply that found no waiting caller (late, after a timeout) increments.
pub const LATE_REPLIES_COUNTER: &str = "bus.late_replies";

#[derive(Default)]
struct Queue {
    consumers: Vec<mpsc::UnboundedSender<Incoming>>,
    /// Index of the consumer that gets the next message.
    next: usize,
    /// Messages published while the queue had no live consumer.
    backlog: VecDeque<Incoming>,
}

impl Queue {
    /// Hands `msg` to the next live consumer (dropping consumers whose receiver is gone),
    /// or keeps it in the backlog when there is none.
    fn deliver(&mut self, mut msg: Incoming) {
        while !self.consumers.is_empty() {
            let idx = self.next % self.consumers.len();
            match self.consumers[idx].send(msg) {
                Ok(()) => {
                    self.next = idx + 1;
                    return;
                }
                Err(mpsc::error::SendError(back)) => {
                    // The consumer went away (its service stopped): forget it, try the next.
                    self.consumers.remove(idx);
                    self.next = idx;
                    msg = back;
                }
            }
        }
        self.backlog.push_back(msg);
    }
}

type Pending = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Rpc>>>>;

#[derive(Default)]
struct State {
    queues: BTreeMap<String, Queue>,
    /// Reply queues by name: the calls each client is waiting on, by message id.
    reply_queues: BTreeMap<String, Pending>,
}

/// The broker: queues, consumers and reply queues of one run.
pub struct InProcBroker {
    state: Mutex<State>,
    next_msg_id: AtomicU64,
    next_client: AtomicU64,
    late_replies: AtomicU64,
    metrics: Option<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing in the broker's critical sections panics; if something did, the state is
    // still consistent (every section is a single insert, remove or send).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InProcBroker {
    pub fn new() -> Arc<InProcBroker> {
        InProcBroker::build(None)
    }

    /// A broker that also counts late replies in the run's metrics ([`LATE_REPLIES_COUNTER`]).
    pub fn with_metrics(metrics: Metrics) -> Arc<InProcBroker> {
        InProcBroker::build(Some(metrics))
    }

    fn build(metrics: Option<Metrics>) -> Arc<InProcBroker> {
        Arc::new(InProcBroker {
            state: Mutex::new(State::default()),
            next_msg_id: AtomicU64::new(0),
            next_client: AtomicU64::new(0),
            late_replies: AtomicU64::new(0),
            metrics,
        })
    }

    /// A client connection for one service, with its own reply queue `reply_<name>_<n>`.
    pub fn client(self: &Arc<Self>, name: &str) -> Arc<InProcBus> {
        let n = self.next_client.fetch_add(1, Ordering::Relaxed) + 1;
        let reply_queue = format!("reply_{name}_{n}");
        let pending: Pending = Arc::default();
        lock(&self.state).reply_queues.insert(reply_queue.clone(), pending.clone());
        Arc::new(InProcBus { broker: self.clone(), reply_queue, pending })
    }

    /// Replies that arrived when nobody waited for them any more (after the caller's timeout).
    pub fn late_replies(&self) -> u64 {
        self.late_replies.load(Ordering::Relaxed)
    }

    /// Messages waiting in `topic`'s backlog for a consumer.
    pub fn backlog_len(&self, topic: &str) -> usize {
        lock(&self.state).queues.get(topic).map_or(0, |q| q.backlog.len())
    }

    fn publish(&self, topic: &str, msg: Incoming) {
        lock(&self.state).queues.entry(topic.to_string()).or_default().deliver(msg);
    }

    fn subscribe(&self, topic: &str) -> mpsc::UnboundedReceiver<Incoming> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = lock(&self.state);
        let q = st.queues.entry(topic.to_string()).or_default();
        q.consumers.push(tx);
        for msg in std::mem::take(&mut q.backlog) {
            q.deliver(msg);
        }
        rx
    }

    fn route_reply(&self, to: ReplyTo, msg: Rpc) {
        let pending = lock(&self.state).reply_queues.get(&to.queue).cloned();
        let waiter = pending.and_then(|p| lock(&p).remove(&to.msg_id));
        let delivered = match waiter {
            Some(tx) => tx.send(msg).is_ok(),
            None => false,
        };
        if !delivered {
            self.late_replies.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.metrics {
                m.count(LATE_REPLIES_COUNTER, 1);
            }
        }
    }
}

/// One service's connection to the broker.
pub struct InProcBus {
    broker: Arc<InProcBroker>,
    reply_queue: String,
    pending: Pending,
}

impl InProcBus {
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    pub fn broker(&self) -> &Arc<InProcBroker> {
        &self.broker
    }
}

/// Removes the pending entry when a call ends for any reason, including being cancelled.
struct PendingGuard<'a> {
    pending: &'a Pending,
    msg_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.msg_id);
    }
}

#[async_trait]
impl Bus for InProcBus {
    async fn cast(&self, topic: &str, msg: Rpc) -> Result<(), BusError> {
        self.broker.publish(topic, Incoming { msg, reply_to: None });
        Ok(())
    }

    async fn call(&self, topic: &str, msg: Rpc, timeout: Duration) -> Result<Rpc, BusError> {
        let method = msg.method();
        let msg_id = self.broker.next_msg_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(msg_id, tx);
        let _guard = PendingGuard { pending: &self.pending, msg_id };
        let reply_to = ReplyTo { queue: self.reply_queue.clone(), msg_id };
        self.broker.publish(topic, Incoming { msg, reply_to: Some(reply_to) });
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(BusError::Unavailable(format!("reply queue {} closed", self.reply_queue))),
            Err(_) => Err(BusError::Timeout {
                topic: topic.to_string(),
                method,
                timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
            }),
        }
    }

    async fn reply(&self, to: ReplyTo, msg: Rpc) -> Result<(), BusError> {
        self.broker.route_reply(to, msg);
        Ok(())
    }

    async fn consume(&self, topic: &str) -> Result<mpsc::UnboundedReceiver<Incoming>, BusError> {
        Ok(self.broker.subscribe(topic))
    }
}
