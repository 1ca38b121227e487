//! The simulated message broker: a node that owns named queues and routes messages between
//! the services' connections, and the client side implementing the `Bus` seam over a simulated
//! connection (`conn`). Semantics follow RabbitMQ as oslo.messaging uses it: a queue with several
//! consumers delivers round-robin; messages to a queue nobody consumes wait in it; a call's
//! reply travels through the caller's own reply queue.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use madsim::net::Sender;
use tokio::sync::{mpsc, oneshot};

use stackbed_services::metrics::Metrics;
use stackbed_services::seams::{Bus, BusError, Incoming, ReplyTo, Rpc};

use crate::conn;

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
    /// Consuming connections, by number.
    consumers: Vec<u64>,
    next: usize,
    backlog: VecDeque<Delivery>,
}

#[derive(Default)]
struct Broker {
    queues: BTreeMap<String, Queue>,
    conns: BTreeMap<u64, Arc<Sender>>,
}

impl Broker {
    /// Routes `msg` from connection `from`; returns the deliveries to send.
    fn route(&mut self, from: u64, msg: ToBroker) -> Vec<(Arc<Sender>, Delivery)> {
        let mut out = Vec::new();
        let mut push = |q: &mut Queue, d: Delivery, conns: &BTreeMap<u64, Arc<Sender>>| {
            let c = q.consumers[q.next % q.consumers.len()];
            q.next += 1;
            if let Some(tx) = conns.get(&c) {
                out.push((tx.clone(), d));
            }
        };
        match msg {
            ToBroker::Subscribe { queue } => {
                let q = self.queues.entry(queue).or_default();
                if !q.consumers.contains(&from) {
                    q.consumers.push(from);
                }
                while let Some(d) = q.backlog.pop_front() {
                    push(q, d, &self.conns);
                }
            }
            ToBroker::Publish(d) => {
                let q = self.queues.entry(d.queue.clone()).or_default();
                if q.consumers.is_empty() {
                    q.backlog.push_back(d);
                } else {
                    push(q, d, &self.conns);
                }
            }
        }
        out
    }

    /// A connection closed: its consumers go, as RabbitMQ cancels a closed channel's.
    fn close(&mut self, conn: u64) {
        self.conns.remove(&conn);
        for q in self.queues.values_mut() {
            q.consumers.retain(|&c| c != conn);
        }
    }
}

/// The broker node's main loop: a connection per client. Returns only if its socket fails.
pub async fn serve(addr: SocketAddr) -> io::Result<()> {
    let broker: Arc<Mutex<Broker>> = Arc::default();
    conn::accept_each(addr, move |id, tx, mut rx| {
        let broker = broker.clone();
        broker.lock().unwrap_or_else(|e| e.into_inner()).conns.insert(id, Arc::new(tx));
        async move {
            while let Some(msg) = conn::recv::<ToBroker>(&mut rx).await {
                // Decide under the lock, send after it.
                let out = broker.lock().unwrap_or_else(|e| e.into_inner()).route(id, *msg);
                for (tx, d) in out {
                    let _ = conn::send(&tx, d).await;
                }
            }
            broker.lock().unwrap_or_else(|e| e.into_inner()).close(id);
        }
    })
    .await
}

#[derive(Default)]
struct ClientState {
    next_id: u64,
    pending: BTreeMap<u64, oneshot::Sender<Rpc>>,
    consumers: BTreeMap<String, mpsc::UnboundedSender<Incoming>>,
}

/// One service's connection to the broker.
pub struct SimBus {
    tx: Sender,
    reply_queue: String,
    state: Arc<Mutex<ClientState>>,
}

impl SimBus {
    /// Connects a client named `client` (unique per node: it names the reply queue).
    pub async fn connect(broker: SocketAddr, client: &str, metrics: Metrics) -> io::Result<Arc<SimBus>> {
        let (tx, mut rx, port) = conn::connect(broker).await?;
        let reply_queue = format!("reply_{client}_{port}");
        let state: Arc<Mutex<ClientState>> = Arc::default();
        let (rx_state, rq) = (state.clone(), reply_queue.clone());
        tokio::spawn(async move {
            while let Some(d) = conn::recv::<Delivery>(&mut rx).await {
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
        });
        let bus = Arc::new(SimBus { tx, reply_queue: reply_queue.clone(), state });
        bus.send(ToBroker::Subscribe { queue: reply_queue }).await?;
        Ok(bus)
    }

    async fn send(&self, msg: ToBroker) -> io::Result<()> {
        conn::send(&self.tx, msg).await
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
