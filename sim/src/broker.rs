//! The simulated message broker: its state ([`BrokerState`], outside every node, so that a
//! restart of the broker node keeps what RabbitMQ keeps), the node that serves it over
//! simulated connections, and the client side implementing the `Bus` seam ([`SimBus`]).
//!
//! Every decision about a message (routing, round-robin, acks, requeue on a closed
//! connection, what a restart keeps) is `stackbed_core::queue`'s, the same state machine the
//! in-process bus drives; this file only moves messages. How a client holds its connection
//! (failover, backoff, heartbeats) is `stackbed_core::amqp_conn`'s policy.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use madsim::net::{Receiver, Sender};
use tokio::sync::{mpsc, oneshot, Notify};

use stackbed_core::amqp_conn::ConnPolicy;
use stackbed_core::queue::{ConnId, Delivery, Queues, Tag};
use stackbed_core::scenario::Control;
use stackbed_core::sync::guard;
use stackbed_services::clock::Clock;
use stackbed_services::metrics::Metrics;
use stackbed_services::monitor::MonitorRef;
use stackbed_services::reply::{self, NoReply};
use stackbed_services::seams::{Bus, BusError, BusOptions, DeliveryTag, Envelope, Incoming, ReplyTo, Rpc};

use crate::conn;
use crate::knobs::{Fate, Knobs, NodeCell};

#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // each message is boxed once as the network payload
enum ToBroker {
    Declare {
        queue: String,
        durable: bool,
    },
    Consume {
        queue: String,
        auto_ack: bool,
    },
    /// `confirm`: oslo's mandatory flag with a publisher confirm (its replies): the broker
    /// answers [`FromBroker::Confirm`] saying whether the message reached a queue.
    Publish {
        queue: String,
        env: Envelope,
        persistent: bool,
        confirm: Option<u64>,
    },
    Ack {
        tag: Tag,
    },
    Heartbeat,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum FromBroker {
    Deliver { queue: String, tag: Tag, env: Envelope, redelivered: bool },
    Confirm { id: u64, routed: bool },
    Heartbeat,
}

struct ConnEntry {
    /// Weak: the connection's task on the broker node owns it, so that killing the node
    /// closes the connection (the state outlives the node; its sockets do not).
    tx: Weak<Sender>,
    last_heard: Duration,
    last_sent: Duration,
}

struct BrokerInner {
    queues: Queues<Envelope>,
    conns: BTreeMap<ConnId, ConnEntry>,
    /// Connection numbers are never reused, across restarts too.
    next_conn: ConnId,
    starts: u64,
}

/// The broker's queues and messages, outside the broker node: a restart of the node keeps
/// the durable queues and their persistent messages, as RabbitMQ's message store does, and
/// loses the rest (`Queues::restart`). Cloning shares it.
#[derive(Clone)]
pub struct BrokerState(Arc<Mutex<BrokerInner>>);

impl Default for BrokerState {
    fn default() -> Self {
        BrokerState(Arc::new(Mutex::new(BrokerInner {
            queues: Queues::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            starts: 0,
        })))
    }
}

impl BrokerState {
    fn lock(&self) -> MutexGuard<'_, BrokerInner> {
        self.0.lock().expect("broker state lock poisoned: a routing step panicked half-way")
    }

    /// The node (re)starts on this state: after the first start, a restart.
    fn recover(&self, metrics: &Metrics) {
        let mut st = self.lock();
        st.starts += 1;
        if st.starts > 1 {
            st.conns.clear();
            let loss = st.queues.restart();
            metrics.count("broker.restarts", 1);
            metrics.count("broker.restart_lost_queues", loss.queues as u64);
            metrics.count("broker.restart_lost_messages", loss.messages as u64);
        }
    }

    /// Messages ready in `queue`.
    pub fn ready_len(&self, queue: &str) -> usize {
        self.lock().queues.ready_len(queue)
    }

    /// Closes `conn` (gone, reset or silent): its unacknowledged messages are requeued.
    fn close(&self, conn: ConnId) -> Vec<(Arc<Sender>, Delivery<Envelope>)> {
        let mut st = self.lock();
        if st.conns.remove(&conn).is_none() {
            return Vec::new();
        }
        let out = st.queues.close(conn);
        with_senders(&st, out)
    }
}

fn with_senders(st: &BrokerInner, out: Vec<Delivery<Envelope>>) -> Vec<(Arc<Sender>, Delivery<Envelope>)> {
    // A delivery to a connection already closed stays unacknowledged until `close` requeues
    // it; `close` ran first for every closed connection, so none is left here.
    out.into_iter().filter_map(|d| st.conns.get(&d.conn).and_then(|c| c.tx.upgrade()).map(|tx| (tx, d))).collect()
}

/// Sends deliveries; a connection whose send fails is closed, and what that requeues is
/// sent in turn.
async fn deliver(state: &BrokerState, now: Duration, out: Vec<(Arc<Sender>, Delivery<Envelope>)>) {
    // In order: a queue's messages reach a consumer in the order they were queued.
    let mut out = std::collections::VecDeque::from(out);
    while let Some((tx, d)) = out.pop_front() {
        let (conn, msg) =
            (d.conn, FromBroker::Deliver { queue: d.queue, tag: d.tag, env: d.payload, redelivered: d.redelivered });
        if conn::send(&tx, msg).await.is_err() {
            out.extend(state.close(conn));
        } else if let Some(e) = state.lock().conns.get_mut(&conn) {
            e.last_sent = now;
        }
    }
}

/// The broker node's main loop over `state`: one connection per client, heartbeats checked
/// as RabbitMQ does (a connection silent for the threshold is closed). Returns only if its
/// socket fails. Restart the node as `kill` then `start` (see `dbnode::serve`).
pub async fn serve(
    addr: SocketAddr,
    state: BrokerState,
    policy: ConnPolicy,
    clock: Clock,
    metrics: Metrics,
) -> io::Result<()> {
    state.recover(&metrics);
    let (s, c, m) = (state.clone(), clock.clone(), metrics.clone());
    let p = policy.clone();
    // AMQP heartbeats, the broker's side: every threshold/rate, a heartbeat to each
    // connection it sent nothing to since the last check, and a close of each connection
    // it heard nothing from for the threshold.
    tokio::spawn(async move {
        loop {
            c.sleep(p.heartbeat_interval()).await;
            let now = Duration::from_millis(c.now_ms());
            let (dead, quiet): (Vec<ConnId>, Vec<(ConnId, Arc<Sender>)>) = {
                let mut st = s.lock();
                let dead = st.conns.iter().filter(|(_, e)| p.is_dead(e.last_heard, now)).map(|(&id, _)| id).collect();
                let mut quiet = Vec::new();
                for (&id, e) in st.conns.iter_mut() {
                    if p.should_send_heartbeat(e.last_sent, now) {
                        e.last_sent = now;
                        if let Some(tx) = e.tx.upgrade() {
                            quiet.push((id, tx));
                        }
                    }
                }
                (dead, quiet)
            };
            for id in dead {
                m.count("broker.heartbeat_timeouts", 1);
                let out = s.close(id);
                deliver(&s, now, out).await;
            }
            for (id, tx) in quiet {
                if conn::send(&tx, FromBroker::Heartbeat).await.is_err() {
                    let out = s.close(id);
                    deliver(&s, now, out).await;
                }
            }
        }
    });
    conn::accept_each(addr, move |_, tx, rx| serve_conn(state.clone(), clock.clone(), metrics.clone(), tx, rx)).await
}

async fn serve_conn(state: BrokerState, clock: Clock, metrics: Metrics, tx: Sender, mut rx: Receiver) {
    let tx = Arc::new(tx);
    let id = {
        let mut st = state.lock();
        st.next_conn += 1;
        let id = st.next_conn;
        let now = Duration::from_millis(clock.now_ms());
        st.conns.insert(id, ConnEntry { tx: Arc::downgrade(&tx), last_heard: now, last_sent: now });
        id
    };
    while let Some(msg) = conn::recv::<ToBroker>(&mut rx).await {
        let now = Duration::from_millis(clock.now_ms());
        let mut confirmed = None;
        // Decide under the lock, send after it.
        let out = {
            let mut st = state.lock();
            match st.conns.get_mut(&id) {
                Some(e) => e.last_heard = now,
                // Closed by the heartbeat check: what still arrives on it is not read.
                None => break,
            }
            let out = match *msg {
                ToBroker::Declare { queue, durable } => {
                    st.queues.declare(&queue, durable);
                    Vec::new()
                }
                ToBroker::Consume { queue, auto_ack } => st.queues.consume(id, &queue, auto_ack).unwrap_or_default(),
                ToBroker::Publish { queue, env, persistent, confirm } => {
                    let out = st.queues.publish(&queue, env, persistent);
                    if out.is_none() {
                        metrics.count("broker.unroutable", 1);
                    }
                    if let Some(id) = confirm {
                        confirmed = Some((id, out.is_some()));
                    }
                    out.unwrap_or_default()
                }
                ToBroker::Ack { tag } => {
                    st.queues.ack(id, tag);
                    Vec::new()
                }
                ToBroker::Heartbeat => Vec::new(),
            };
            with_senders(&st, out)
        };
        if let Some((id, routed)) = confirmed {
            if conn::send(&tx, FromBroker::Confirm { id, routed }).await.is_err() {
                break;
            }
        }
        deliver(&state, now, out).await;
    }
    let out = state.close(id);
    deliver(&state, Duration::from_millis(clock.now_ms()), out).await;
}

/// The broker with oslo's default heartbeats and its own clock and counters, for harnesses
/// that build their own nodes (the seam tests).
pub async fn serve_default(addr: SocketAddr, state: BrokerState) -> io::Result<()> {
    let policy = ConnPolicy::from_control(&Control::default(), vec![addr.to_string()]);
    serve(addr, state, policy, Clock::start(), Metrics::default()).await
}

// ---------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------

/// What a client needs to know to connect: oslo's connection policy (which holds the
/// brokers' addresses), the queue options.
#[derive(Clone)]
pub struct SimBusConfig {
    pub policy: ConnPolicy,
    pub options: BusOptions,
    /// The run's oracle: numbers each call and checks that a reply completes its own call,
    /// once (`replies_complete_their_call_once`). None outside a checked run.
    pub oracle: Option<MonitorRef>,
}

impl SimBusConfig {
    /// A client of `brokers` (at least one).
    pub fn new(brokers: Vec<SocketAddr>, control: &Control) -> SimBusConfig {
        assert!(!brokers.is_empty(), "a bus client needs a broker address");
        let policy = ConnPolicy::from_control(control, brokers.iter().map(|a| a.to_string()).collect());
        SimBusConfig { policy, options: BusOptions { durable: control.amqp_durable_queues }, oracle: None }
    }
}

#[derive(Clone)]
struct Live {
    generation: u64,
    tx: Arc<Sender>,
}

#[derive(Default)]
struct ClientState {
    live: Option<Live>,
    next_id: u64,
    /// Calls waiting for a reply, by msg_id.
    pending: BTreeMap<u64, reply::Pending>,
    /// Mandatory publishes waiting for the broker's confirm, by id.
    confirms: BTreeMap<u64, oneshot::Sender<bool>>,
    consumers: BTreeMap<String, mpsc::UnboundedSender<Incoming>>,
    /// Topics declared (consumed or not), declared again on every new connection.
    declared: std::collections::BTreeSet<String>,
    last_sent: Duration,
    last_heard: Duration,
}

/// One process's connection to the broker, as oslo.messaging holds it: it reconnects by
/// itself and declares its queues (its reply queue too) and consumes them again. A publish
/// (cast, call, reply) while disconnected waits for the connection to come back, as oslo's
/// publishers retry without limit by default. A call keeps waiting for its reply across a
/// reconnect, until its timeout: oslo's reply waiter does, and the replier retries an
/// unroutable reply (its reply queue not declared again yet) for
/// `kombu_missing_consumer_retry_timeout`.
pub struct SimBus {
    cfg: SimBusConfig,
    /// `<node>.<incarnation>`: prefixes message ids and names the reply queue.
    name: String,
    reply_queue: String,
    state: Mutex<ClientState>,
    /// Woken when a connection comes up. Not a `tokio::sync::watch`: its wake-ups go
    /// through a shard chosen by tokio's unseeded RNG, so their order is not reproducible.
    up: Notify,
    clock: Clock,
    metrics: Metrics,
    /// The node's message faults (drop, delay, duplicate), drawn per publish.
    knobs: NodeCell,
}

impl SimBus {
    /// A client for process `name` (`<node>.<incarnation>`); its connection manager runs
    /// from now on, on the calling node.
    pub fn connect(cfg: SimBusConfig, name: &str, clock: Clock, metrics: Metrics, knobs: NodeCell) -> Arc<SimBus> {
        let bus = Arc::new(SimBus {
            knobs,
            cfg,
            name: name.to_string(),
            reply_queue: format!("reply_{name}"),
            state: Mutex::default(),
            up: Notify::new(),
            clock,
            metrics,
        });
        tokio::spawn(bus.clone().manage());
        bus
    }

    /// A client of the broker at `broker` with oslo's defaults, for harnesses.
    pub fn connect_default(broker: SocketAddr, name: &str) -> Arc<SimBus> {
        let cfg = SimBusConfig::new(vec![broker], &Control::default());
        SimBus::connect(cfg, name, Clock::start(), Metrics::default(), Knobs::new(0).node(name))
    }

    fn lock(&self) -> MutexGuard<'_, ClientState> {
        self.state.lock().expect("bus client lock poisoned: a routing step panicked")
    }

    fn now(&self) -> Duration {
        Duration::from_millis(self.clock.now_ms())
    }

    /// Connects, serves the connection until it dies, reconnects; for ever.
    async fn manage(self: Arc<Self>) {
        let policy = &self.cfg.policy;
        let (mut attempt, mut failures, mut generation) = (0u64, 0u32, 0u64);
        let mut last_addr = None;
        loop {
            // Round-robin over the brokers, as the policy says.
            let addr: SocketAddr = policy
                .address(attempt)
                .and_then(|a| a.parse().ok())
                .expect("SimBusConfig::new gave the policy at least one broker address, each a socket address");
            attempt += 1;
            let connected = self.clock.timeout(policy.connect_timeout, conn::connect(addr)).await;
            if let Some(Ok((tx, rx, _))) = connected {
                generation += 1;
                let tx = Arc::new(tx);
                if self.subscribe_all(&tx).await.is_ok() {
                    failures = 0;
                    {
                        let mut st = self.lock();
                        st.live = Some(Live { generation, tx });
                        st.last_heard = self.now();
                        st.last_sent = self.now();
                    }
                    self.up.notify_waiters();
                    if generation > 1 {
                        self.metrics.count("bus.reconnects", 1);
                    }
                    // A failover: the connection now goes to another broker than the last.
                    if last_addr.is_some_and(|a| a != addr) {
                        self.metrics.count("bus.failovers", 1);
                    }
                    last_addr = Some(addr);
                    self.run_connection(generation, rx).await;
                    self.lost(generation);
                    self.metrics.count("bus.connections_lost", 1);
                    // kombu reconnects at once after a loss; the backoff is for failures.
                    continue;
                }
            }
            failures += 1;
            self.clock.sleep(policy.backoff(failures)).await;
        }
    }

    /// Declares the reply queue and every consumed topic on a new connection and consumes
    /// them, before anything else is sent on it.
    async fn subscribe_all(&self, tx: &Sender) -> io::Result<()> {
        let rq = self.reply_queue.clone();
        conn::send(tx, ToBroker::Declare { queue: rq.clone(), durable: false }).await?;
        conn::send(tx, ToBroker::Consume { queue: rq, auto_ack: true }).await?;
        let (declared, consumed): (Vec<String>, Vec<String>) = {
            let st = self.lock();
            (st.declared.iter().cloned().collect(), st.consumers.keys().cloned().collect())
        };
        for queue in declared {
            conn::send(tx, ToBroker::Declare { queue, durable: self.cfg.options.durable }).await?;
        }
        for queue in consumed {
            conn::send(tx, ToBroker::Consume { queue, auto_ack: false }).await?;
        }
        Ok(())
    }

    /// Reads the connection and checks its heartbeats until it ends or falls silent.
    async fn run_connection(&self, generation: u64, mut rx: Receiver) {
        let policy = &self.cfg.policy;
        // An alarm, not a sleep: the check's timer is polled beside every frame.
        let mut check = self.clock.alarm(policy.heartbeat_interval());
        loop {
            tokio::select! {
                biased;
                m = conn::recv::<FromBroker>(&mut rx) => {
                    let Some(m) = m else { return };
                    self.lock().last_heard = self.now();
                    if let FromBroker::Confirm { id, routed } = *m {
                        if let Some(tx) = self.lock().confirms.remove(&id) {
                            let _ = tx.send(routed);
                        }
                    } else if let FromBroker::Deliver { queue, tag, env, redelivered } = *m {
                        if !self.route(generation, queue, tag, env, redelivered) {
                            // A consumer went away: close the connection, as a process
                            // that stops does, so the broker gives what it held to others.
                            self.metrics.count("bus.consumer_gone", 1);
                            return;
                        }
                    }
                }
                _ = &mut check => {
                    check = self.clock.alarm(policy.heartbeat_interval());
                    let (now, last_heard, last_sent, live) = {
                        let st = self.lock();
                        (self.now(), st.last_heard, st.last_sent, st.live.clone())
                    };
                    if policy.is_dead(last_heard, now) {
                        self.metrics.count("bus.heartbeat_timeouts", 1);
                        return;
                    }
                    if policy.should_send_heartbeat(last_sent, now) {
                        if let Some(l) = live {
                            if conn::send(&l.tx, ToBroker::Heartbeat).await.is_err() {
                                return;
                            }
                            self.lock().last_sent = now;
                        }
                    }
                }
            }
        }
    }

    /// Hands a delivery to its waiter or consumer; false if the consumer went away.
    fn route(&self, generation: u64, queue: String, tag: Tag, env: Envelope, redelivered: bool) -> bool {
        let mut st = self.lock();
        if queue == self.reply_queue {
            // A reply whose caller timed out already is dropped, as oslo.messaging does.
            match env.correlation.map(|id| reply::route(&mut st.pending, id, env.msg)) {
                Some(reply::Routed::Completed { call }) => {
                    drop(st);
                    if let Some(oracle) = &self.cfg.oracle {
                        guard(oracle).on_reply(self.clock.now_ms(), call, env.answers);
                    }
                }
                Some(reply::Routed::Heartbeat) => {}
                Some(reply::Routed::Late) | None => self.metrics.count("bus.late_replies", 1),
            }
            return true;
        }
        if let Some(tx) = st.consumers.get(&queue) {
            let incoming = Incoming {
                msg: env.msg,
                reply_to: env.reply_to,
                msg_id: env.msg_id,
                redelivered,
                tag: DeliveryTag { connection: generation, tag },
            };
            if tx.send(incoming).is_err() {
                st.consumers.remove(&queue);
                return false;
            }
        }
        true
    }

    /// The connection `generation` died. Confirms it owed never come: their waiters see a
    /// closed channel and publish again on the next connection.
    fn lost(&self, generation: u64) {
        let mut st = self.lock();
        if st.live.as_ref().is_some_and(|l| l.generation == generation) {
            st.live = None;
        }
        st.confirms.clear();
    }

    /// The live connection, waiting for one if there is none.
    async fn live(&self) -> Live {
        loop {
            // Registered before the check, so that a connection coming up in between wakes it.
            let up = self.up.notified();
            if let Some(l) = self.lock().live.clone() {
                return l;
            }
            up.await;
        }
    }

    /// Sends `msg` on the live connection, waiting for one and resending after a failure.
    async fn send(&self, msg: ToBroker) {
        loop {
            let l = self.live().await;
            if conn::send(&l.tx, msg.clone()).await.is_ok() {
                self.lock().last_sent = self.now();
                return;
            }
            // The manager sees the connection end and reconnects; wait for it.
            self.lock().live = None;
        }
    }

    /// Publishes with a publisher confirm, as oslo does (`confirm_publish`): a publish whose
    /// confirm did not come before its connection died is published again on the next one
    /// (a copy may then arrive twice, with the same message id). Returns whether it reached
    /// a queue (the mandatory flag's answer; a cast does not look).
    ///
    /// The node's message faults apply to each publish once: a dropped one is lost after
    /// the broker confirmed it (the publisher believes it went out), a delayed one waits
    /// before it is sent, a duplicated one reaches the queue twice with the same message id.
    async fn publish(&self, queue: &str, env: Envelope, persistent: bool) -> bool {
        match self.knobs.fate() {
            Fate::Deliver => {}
            Fate::Drop => {
                self.metrics.count("bus.faults.dropped", 1);
                return true;
            }
            Fate::Delay(ms) => {
                self.metrics.count("bus.faults.delayed", 1);
                self.clock.sleep(Duration::from_millis(ms)).await;
            }
            Fate::Duplicate => {
                self.metrics.count("bus.faults.duplicated", 1);
                let copy = ToBroker::Publish { queue: queue.to_string(), env: env.clone(), persistent, confirm: None };
                self.send(copy).await;
            }
        }
        loop {
            let (confirm, routed) = {
                let mut st = self.lock();
                st.next_id += 1;
                let id = st.next_id;
                let (tx, rx) = oneshot::channel();
                st.confirms.insert(id, tx);
                (id, rx)
            };
            let msg =
                ToBroker::Publish { queue: queue.to_string(), env: env.clone(), persistent, confirm: Some(confirm) };
            self.send(msg).await;
            match routed.await {
                Ok(routed) => return routed,
                Err(_) => self.metrics.count("bus.republished", 1),
            }
        }
    }

    fn next_msg(&self) -> (u64, String) {
        let mut st = self.lock();
        st.next_id += 1;
        let id = st.next_id;
        (id, format!("{}-{id}", self.name))
    }
}

/// oslo's `kombu_missing_consumer_retry_timeout`: how long a reply is retried while its
/// reply queue does not exist, and the sleep between tries.
const MISSING_CONSUMER_RETRY: Duration = Duration::from_secs(60);
const MISSING_CONSUMER_SLEEP: Duration = Duration::from_millis(250);

#[async_trait]
impl Bus for SimBus {
    async fn cast(&self, topic: &str, msg: Rpc) -> Result<(), BusError> {
        let (_, msg_id) = self.next_msg();
        let env = Envelope { msg, reply_to: None, msg_id, correlation: None, answers: 0 };
        self.publish(topic, env, self.cfg.options.durable).await;
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
        let (id, msg_id) = self.next_msg();
        let call = self.cfg.oracle.as_ref().map_or(0, |o| guard(o).start_call());
        let (pending, waiter) = reply::pending(call);
        self.lock().pending.insert(id, pending);
        let reply_to = Some(ReplyTo::new(&self.reply_queue, id, monitor, call));
        let env = Envelope { msg, reply_to, msg_id, correlation: None, answers: 0 };
        // oslo bounds the publish by the call's timeout (the socket timeout it sets around
        // it), then waits as long again for the reply: a call made while the broker is
        // unreachable fails with MessagingTimeout instead of waiting for the reconnect.
        let sent = self.clock.timeout(timeout, self.publish(topic, env, self.cfg.options.durable)).await;
        let reply = match sent {
            Some(_) => waiter.wait(&self.clock, timeout, monitor).await,
            None => {
                self.metrics.count("bus.publish_timeouts", 1);
                Err(NoReply::Timeout)
            }
        };
        reply.map_err(|e| {
            self.lock().pending.remove(&id);
            e.error(topic, method, timeout, &self.reply_queue)
        })
    }

    /// oslo's reply: mandatory, so an unroutable reply (the caller's reply queue is gone,
    /// for now) comes back and is tried again every 250 ms for up to 60 s; then it is
    /// dropped and the caller times out.
    async fn reply(&self, to: ReplyTo, msg: Rpc) -> Result<(), BusError> {
        let (_, msg_id) = self.next_msg();
        let env = Envelope { msg, reply_to: None, msg_id, correlation: Some(to.msg_id), answers: to.call };
        let start = self.clock.now();
        while !self.publish(&to.queue, env.clone(), false).await {
            if self.clock.since(start) >= MISSING_CONSUMER_RETRY {
                self.metrics.count("bus.replies_undeliverable", 1);
                return Err(BusError::Unavailable(format!("reply queue {} does not exist", to.queue)));
            }
            self.metrics.count("bus.reply_retries", 1);
            self.clock.sleep(MISSING_CONSUMER_SLEEP).await;
        }
        Ok(())
    }

    async fn declare(&self, topic: &str) -> Result<(), BusError> {
        self.lock().declared.insert(topic.to_string());
        let durable = self.cfg.options.durable;
        // Also declared by every reconnect; a second declare is a no-op.
        self.send(ToBroker::Declare { queue: topic.to_string(), durable }).await;
        Ok(())
    }

    async fn consume(&self, topic: &str) -> Result<mpsc::UnboundedReceiver<Incoming>, BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().consumers.insert(topic.to_string(), tx);
        self.declare(topic).await?;
        // Also consumed by every reconnect; a second consume is a no-op.
        self.send(ToBroker::Consume { queue: topic.to_string(), auto_ack: false }).await;
        Ok(rx)
    }

    async fn ack(&self, tag: DeliveryTag) -> Result<(), BusError> {
        let live = self.lock().live.clone();
        match live {
            Some(l) if l.generation == tag.connection => {
                if conn::send(&l.tx, ToBroker::Ack { tag: tag.tag }).await.is_ok() {
                    self.lock().last_sent = self.now();
                }
            }
            // Its connection is gone: the broker requeues the message (or did).
            _ => {
                self.metrics.count("bus.stale_acks", 1);
                return Err(BusError::Unavailable("the delivery's connection is gone".into()));
            }
        }
        Ok(())
    }
}
