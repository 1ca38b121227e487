//! An in-process message broker for the real build, on the same queue state machine as the
//! simulated broker (`stackbed_core::queue`): declared queues, round-robin consumers, acks,
//! unacknowledged deliveries requeued to the other consumers when a client goes away, a
//! call's reply routed back through the caller's reply queue.
//!
//! One [`InProcBroker`] is shared by the run; each service gets its own [`InProcBus`] client
//! (a connection of its own and a `reply_<name>_<n>` queue), as each nova process has. A
//! client whose consumer channel was dropped (its service stopped) is closed as a
//! connection would be: what it held goes to the next consumer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use stackbed_core::queue::{ConnId, Delivery, Queues};
use stackbed_services::clock::Clock;
use stackbed_services::metrics::Metrics;
use stackbed_services::reply;
use stackbed_services::seams::{Bus, BusError, BusOptions, DeliveryTag, Envelope, Incoming, ReplyTo, Rpc};

/// The counter a reply that found no waiting caller (late, after a timeout) increments.
pub const LATE_REPLIES_COUNTER: &str = "bus.late_replies";

#[derive(Default)]
struct Client {
    reply_queue: String,
    pending: BTreeMap<u64, reply::Pending>,
    consumers: BTreeMap<String, mpsc::UnboundedSender<Incoming>>,
}

struct State {
    queues: Queues<Envelope>,
    clients: BTreeMap<ConnId, Client>,
    next_client: ConnId,
    next_msg: u64,
    late_replies: u64,
}

/// The broker: queues, consumers and reply queues of one run.
pub struct InProcBroker {
    state: Mutex<State>,
    options: BusOptions,
    metrics: Option<Metrics>,
}

impl InProcBroker {
    pub fn new() -> Arc<InProcBroker> {
        InProcBroker::build(None, BusOptions::default())
    }

    /// A broker that also counts late replies in the run's metrics ([`LATE_REPLIES_COUNTER`]).
    pub fn with_metrics(metrics: Metrics, options: BusOptions) -> Arc<InProcBroker> {
        InProcBroker::build(Some(metrics), options)
    }

    fn build(metrics: Option<Metrics>, options: BusOptions) -> Arc<InProcBroker> {
        Arc::new(InProcBroker {
            state: Mutex::new(State {
                queues: Queues::new(),
                clients: BTreeMap::new(),
                next_client: 0,
                next_msg: 0,
                late_replies: 0,
            }),
            options,
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("in-process broker lock poisoned: a routing step panicked")
    }

    /// A client connection for one service, with its own reply queue `reply_<name>_<n>`.
    pub fn client(self: &Arc<Self>, name: &str) -> Arc<InProcBus> {
        let mut st = self.lock();
        st.next_client += 1;
        let conn = st.next_client;
        let reply_queue = format!("reply_{name}_{conn}");
        st.queues.declare(&reply_queue, false);
        let _ = st.queues.consume(conn, &reply_queue, true);
        st.clients.insert(conn, Client { reply_queue: reply_queue.clone(), ..Client::default() });
        Arc::new(InProcBus {
            broker: self.clone(),
            conn,
            reply_queue,
            name: format!("{name}_{conn}"),
            clock: Clock::start(),
        })
    }

    /// Replies that arrived when nobody waited for them any more (after the caller's timeout).
    pub fn late_replies(&self) -> u64 {
        self.lock().late_replies
    }

    /// Messages waiting in `topic` for a consumer.
    pub fn backlog_len(&self, topic: &str) -> usize {
        self.lock().queues.ready_len(topic)
    }

    /// Hands deliveries to their clients; a client whose consumer is gone is closed and
    /// what it held is delivered in turn.
    fn deliver(&self, st: &mut State, out: Vec<Delivery<Envelope>>) {
        // In order: a queue's messages reach a consumer in the order they were queued.
        let mut out = std::collections::VecDeque::from(out);
        while let Some(d) = out.pop_front() {
            let Some(client) = st.clients.get_mut(&d.conn) else { continue };
            if d.queue == client.reply_queue {
                let msg = d.payload.msg;
                let routed = d.payload.correlation.map(|id| reply::route(&mut client.pending, id, msg));
                if matches!(routed, None | Some(reply::Routed::Late)) {
                    st.late_replies += 1;
                    if let Some(m) = &self.metrics {
                        m.count(LATE_REPLIES_COUNTER, 1);
                    }
                }
                continue;
            }
            let incoming = Incoming {
                msg: d.payload.msg,
                reply_to: d.payload.reply_to,
                msg_id: d.payload.msg_id,
                redelivered: d.redelivered,
                tag: DeliveryTag { connection: 1, tag: d.tag },
            };
            let sent = client.consumers.get(&d.queue).map(|tx| tx.send(incoming).is_ok());
            if sent != Some(true) {
                st.clients.remove(&d.conn);
                out.extend(st.queues.close(d.conn));
            }
        }
    }

    fn publish(&self, topic: &str, env: Envelope, persistent: bool) {
        let mut st = self.lock();
        if let Some(out) = st.queues.publish(topic, env, persistent) {
            self.deliver(&mut st, out);
        } else if let Some(m) = &self.metrics {
            m.count("broker.unroutable", 1);
        }
    }
}

/// One service's connection to the broker.
pub struct InProcBus {
    broker: Arc<InProcBroker>,
    conn: ConnId,
    reply_queue: String,
    name: String,
    /// For the calls' timeouts (intervals only).
    clock: Clock,
}

impl InProcBus {
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    pub fn broker(&self) -> &Arc<InProcBroker> {
        &self.broker
    }

    fn next_id(&self) -> u64 {
        let mut st = self.broker.lock();
        st.next_msg += 1;
        st.next_msg
    }

    fn envelope(&self, id: u64, msg: Rpc, reply_to: Option<ReplyTo>, correlation: Option<u64>) -> Envelope {
        // Real runs have no oracle numbering calls: a reply answers call 0.
        Envelope { msg, reply_to, msg_id: format!("{}-{id}", self.name), correlation, answers: 0 }
    }
}

/// Removes the pending entry when a call ends for any reason, including being cancelled.
struct PendingGuard<'a> {
    bus: &'a InProcBus,
    msg_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.bus.broker.lock().clients.get_mut(&self.bus.conn) {
            c.pending.remove(&self.msg_id);
        }
    }
}

#[async_trait]
impl Bus for InProcBus {
    async fn cast(&self, topic: &str, msg: Rpc) -> Result<(), BusError> {
        let env = self.envelope(self.next_id(), msg, None, None);
        self.broker.publish(topic, env, self.broker.options.durable);
        Ok(())
    }

    async fn call_monitored(
        &self,
        topic: &str,
        msg: Rpc,
        timeout: Duration,
        monitor: Option<Duration>,
    ) -> Result<Rpc, BusError> {
        let method = msg.method();
        let id = self.next_id();
        let reply_to = ReplyTo::new(&self.reply_queue, id, monitor, 0);
        let env = self.envelope(id, msg, Some(reply_to), None);
        let (pending, waiter) = reply::pending(0);
        match self.broker.lock().clients.get_mut(&self.conn) {
            Some(c) => c.pending.insert(id, pending),
            None => return Err(BusError::Unavailable(format!("connection of {} closed", self.name))),
        };
        let _guard = PendingGuard { bus: self, msg_id: id };
        self.broker.publish(topic, env, self.broker.options.durable);
        waiter.wait(&self.clock, timeout, monitor).await.map_err(|e| e.error(topic, method, timeout, &self.reply_queue))
    }

    async fn reply(&self, to: ReplyTo, msg: Rpc) -> Result<(), BusError> {
        let env = Envelope { answers: to.call, ..self.envelope(self.next_id(), msg, None, Some(to.msg_id)) };
        self.broker.publish(&to.queue, env, false);
        Ok(())
    }

    async fn declare(&self, topic: &str) -> Result<(), BusError> {
        self.broker.lock().queues.declare(topic, self.broker.options.durable);
        Ok(())
    }

    async fn consume(&self, topic: &str) -> Result<mpsc::UnboundedReceiver<Incoming>, BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.broker.lock();
        let Some(c) = st.clients.get_mut(&self.conn) else {
            return Err(BusError::Unavailable(format!("connection of {} closed", self.name)));
        };
        c.consumers.insert(topic.to_string(), tx);
        st.queues.declare(topic, self.broker.options.durable);
        let out = st.queues.consume(self.conn, topic, false).map_err(|e| BusError::Unavailable(e.to_string()))?;
        self.broker.deliver(&mut st, out);
        Ok(rx)
    }

    async fn ack(&self, tag: DeliveryTag) -> Result<(), BusError> {
        self.broker.lock().queues.ack(self.conn, tag.tag);
        Ok(())
    }
}
