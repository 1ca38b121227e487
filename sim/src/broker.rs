//! The simulated message broker: a node that owns named queues and routes messages between
//! the services' endpoints, and the client side implementing the `Bus` seam over madsim's
//! network. Semantics follow RabbitMQ as oslo.messaging uses it: a queue with several
//! consumers delivers round-robin; messages to a queue nobody consumes wait in it; a call's
//! reply travels through the caller's own reply queue.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use madsim::net::Endpoint;
use tokio::sync::{mpsc, oneshot};

use stackbed_services::metrics::Metrics;
use stackbed_services::seams::{Bus, BusError, Incoming, ReplyTo, Rpc};

/// The madsim message tag the bus uses.
const TAG: u64 = 0xb05;

#[derive(Debug, Clone)]
struct Delivery {
    queue: String,
    msg: Rpc,
    reply_to: Option<ReplyTo>,
    /// Set on replies: the msg_id of the call answered.
    correlation: Option<u64>,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // each message is boxed once as the network payload
enum ToBroker {
    Subscribe { queue: String },
    Publish(Delivery),
}

#[derive(Default)]
struct Queue {
    consumers: Vec<SocketAddr>,
    next: usize,
    backlog: VecDeque<Delivery>,
}

/// madsim charges every socket receive and send at least 1 ms of the calling task's time,
/// so one receive loop tops out near 1,000 messages per simulated second. Endpoints that
/// carry many messages therefore receive on several tasks, the way a server has several
/// threads; each message still pays the simulated network latency.
pub const SERVER_RECEIVERS: usize = 256;
pub const CLIENT_RECEIVERS: usize = 16;

/// Runs `handler` on every message arriving at `ep` for `tag`, from `receivers` tasks.
/// Returns when every receiver stopped (the socket failed).
pub async fn receive_on<F, Fut>(ep: Arc<Endpoint>, tag: u64, receivers: usize, handler: F)
where
    F: Fn(madsim::net::Payload, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tasks = Vec::with_capacity(receivers);
    for _ in 0..receivers {
        let (ep, handler) = (ep.clone(), handler.clone());
        tasks.push(tokio::spawn(async move {
            while let Ok((payload, from)) = ep.recv_from_raw(tag).await {
                handler(payload, from).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// The broker node's main loop. Returns only if its socket fails.
pub async fn serve(addr: SocketAddr) -> io::Result<()> {
    let ep = Arc::new(Endpoint::bind(addr).await?);
    let queues: Arc<Mutex<BTreeMap<String, Queue>>> = Arc::default();
    let sender = ep.clone();
    receive_on(ep, TAG, SERVER_RECEIVERS, move |payload, from| {
        let (queues, ep) = (queues.clone(), sender.clone());
        async move {
            let Ok(msg) = payload.downcast::<ToBroker>() else { return };
            // Decide under the lock, send after it: sends take simulated time.
            let mut out = Vec::new();
            {
                let mut queues = queues.lock().unwrap_or_else(|e| e.into_inner());
                match *msg {
                    ToBroker::Subscribe { queue } => {
                        let q = queues.entry(queue).or_default();
                        if !q.consumers.contains(&from) {
                            q.consumers.push(from);
                        }
                        while let Some(d) = q.backlog.pop_front() {
                            out.push((q.consumers[q.next % q.consumers.len()], d));
                            q.next += 1;
                        }
                    }
                    ToBroker::Publish(d) => {
                        let q = queues.entry(d.queue.clone()).or_default();
                        if q.consumers.is_empty() {
                            q.backlog.push_back(d);
                        } else {
                            out.push((q.consumers[q.next % q.consumers.len()], d));
                            q.next += 1;
                        }
                    }
                }
            }
            for (dst, d) in out {
                let _ = ep.send_to_raw(dst, TAG, Box::new(d)).await;
            }
        }
    })
    .await;
    Err(io::Error::new(io::ErrorKind::BrokenPipe, "broker socket closed"))
}

#[derive(Default)]
struct ClientState {
    next_id: u64,
    pending: BTreeMap<u64, oneshot::Sender<Rpc>>,
    consumers: BTreeMap<String, mpsc::UnboundedSender<Incoming>>,
}

/// One service's connection to the broker.
pub struct SimBus {
    ep: Arc<Endpoint>,
    broker: SocketAddr,
    reply_queue: String,
    state: Arc<Mutex<ClientState>>,
}

impl SimBus {
    /// Connects a client named `client` (unique per node: it names the reply queue).
    pub async fn connect(broker: SocketAddr, client: &str, metrics: Metrics) -> io::Result<Arc<SimBus>> {
        let ep = Arc::new(Endpoint::bind("0.0.0.0:0").await?);
        let reply_queue = format!("reply_{client}_{}", ep.local_addr()?.port());
        let state: Arc<Mutex<ClientState>> = Arc::default();
        let (rx_state, rq) = (state.clone(), reply_queue.clone());
        tokio::spawn(receive_on(ep.clone(), TAG, CLIENT_RECEIVERS, move |payload, _| {
            let (rx_state, rq, metrics) = (rx_state.clone(), rq.clone(), metrics.clone());
            async move {
                let Ok(d) = payload.downcast::<Delivery>() else { return };
                let mut st = rx_state.lock().unwrap_or_else(|e| e.into_inner());
                if d.queue == rq {
                    match d.correlation.and_then(|id| st.pending.remove(&id)) {
                        Some(tx) => {
                            let _ = tx.send(d.msg);
                        }
                        // The caller timed out already: oslo.messaging drops such replies.
                        None => metrics.count("bus.late_replies", 1),
                    }
                } else if let Some(tx) = st.consumers.get(&d.queue) {
                    let _ = tx.send(Incoming { msg: d.msg, reply_to: d.reply_to });
                }
            }
        }));
        let bus = Arc::new(SimBus { ep, broker, reply_queue: reply_queue.clone(), state });
        bus.send(ToBroker::Subscribe { queue: reply_queue }).await?;
        Ok(bus)
    }

    async fn send(&self, msg: ToBroker) -> io::Result<()> {
        self.ep.send_to_raw(self.broker, TAG, Box::new(msg)).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unavailable(e: io::Error) -> BusError {
    BusError::Unavailable(e.to_string())
}

#[async_trait]
impl Bus for SimBus {
    async fn cast(&self, topic: &str, msg: Rpc) -> Result<(), BusError> {
        let d = Delivery { queue: topic.to_string(), msg, reply_to: None, correlation: None };
        self.send(ToBroker::Publish(d)).await.map_err(unavailable)
    }

    async fn call(&self, topic: &str, msg: Rpc, timeout: Duration) -> Result<Rpc, BusError> {
        let method = msg.method();
        let (tx, rx) = oneshot::channel();
        let msg_id = {
            let mut st = self.lock();
            st.next_id += 1;
            let id = st.next_id;
            st.pending.insert(id, tx);
            id
        };
        let reply_to = Some(ReplyTo { queue: self.reply_queue.clone(), msg_id });
        let d = Delivery { queue: topic.to_string(), msg, reply_to, correlation: None };
        if let Err(e) = self.send(ToBroker::Publish(d)).await {
            self.lock().pending.remove(&msg_id);
            return Err(unavailable(e));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(BusError::Unavailable("reply channel closed".into())),
            Err(_) => {
                self.lock().pending.remove(&msg_id);
                Err(BusError::Timeout { topic: topic.to_string(), method, timeout_ms: timeout.as_millis() as u64 })
            }
        }
    }

    async fn reply(&self, to: ReplyTo, msg: Rpc) -> Result<(), BusError> {
        let d = Delivery { queue: to.queue, msg, reply_to: None, correlation: Some(to.msg_id) };
        self.send(ToBroker::Publish(d)).await.map_err(unavailable)
    }

    async fn consume(&self, topic: &str) -> Result<mpsc::UnboundedReceiver<Incoming>, BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().consumers.insert(topic.to_string(), tx);
        self.send(ToBroker::Subscribe { queue: topic.to_string() }).await.map_err(unavailable)?;
        Ok(rx)
    }
}
