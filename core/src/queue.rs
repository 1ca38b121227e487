//! The broker's queues as one pure state machine, RabbitMQ's semantics as oslo.messaging
//! uses them. The simulated broker node and the in-process bus both drive it; neither
//! decides anything about delivery itself, they only move bytes.
//!
//! - A queue is declared durable or transient. A publish to a queue nobody declared is
//!   unroutable and dropped (the default exchange with `mandatory` off, oslo's casts).
//! - Consumers of one queue are served round-robin. Every delivery carries a tag and stays
//!   unacknowledged until its connection acks it, unless the consumer asked for
//!   `auto_ack` (oslo's reply queues). A message published while a queue has no consumer
//!   waits in it, up to [`MAX_READY`] messages (beyond that the oldest is dropped, as
//!   RabbitMQ's `x-max-length` with `drop-head` does; the limit is stated, never hit in the
//!   shipped scenarios, and counted when it is).
//! - A connection that closes (its client died, its socket reset, its heartbeats stopped)
//!   loses its consumers; its unacknowledged messages go back to the head of their queues
//!   marked `redelivered` and are delivered to the queue's other consumers.
//! - A broker restart closes every connection; transient queues are gone; durable queues keep
//!   their persistent messages (unacknowledged ones come back as `redelivered`) and lose the
//!   rest.

use std::collections::{BTreeMap, VecDeque};

/// A client connection, numbered by the world.
pub type ConnId = u64;
/// A delivery tag, unique over the broker's lifetime (including restarts).
pub type Tag = u64;

/// The most messages one queue holds ready; see the module documentation.
pub const MAX_READY: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq)]
struct Message<P> {
    payload: P,
    persistent: bool,
    redelivered: bool,
}

/// A message handed to a consumer: send `payload` to connection `conn`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<P> {
    pub conn: ConnId,
    pub queue: String,
    pub tag: Tag,
    pub payload: P,
    pub redelivered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// basic.consume on a queue that does not exist (AMQP 404 NOT_FOUND).
    #[error("no queue '{0}'")]
    NotFound(String),
}

#[derive(Debug, Clone)]
struct Consumer {
    conn: ConnId,
    auto_ack: bool,
}

#[derive(Debug)]
struct Queue<P> {
    durable: bool,
    consumers: Vec<Consumer>,
    /// Index of the consumer that gets the next message.
    next: usize,
    ready: VecDeque<Message<P>>,
}

#[derive(Debug)]
struct Unacked<P> {
    conn: ConnId,
    queue: String,
    msg: Message<P>,
}

/// What a broker restart lost, for the run's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestartLoss {
    /// Transient queues that are gone.
    pub queues: usize,
    /// Messages that are gone: every message of a transient queue, and the non-persistent
    /// messages of durable ones.
    pub messages: usize,
}

/// Every queue of one broker, and the deliveries not yet acknowledged.
#[derive(Debug)]
pub struct Queues<P> {
    queues: BTreeMap<String, Queue<P>>,
    unacked: BTreeMap<Tag, Unacked<P>>,
    next_tag: Tag,
    /// Messages dropped: unroutable publishes and `MAX_READY` overflows.
    dropped: u64,
}

impl<P> Default for Queues<P> {
    fn default() -> Self {
        Queues { queues: BTreeMap::new(), unacked: BTreeMap::new(), next_tag: 0, dropped: 0 }
    }
}

impl<P: Clone> Queues<P> {
    pub fn new() -> Queues<P> {
        Queues::default()
    }

    /// queue.declare: idempotent; a queue keeps the durability it was first declared with
    /// (RabbitMQ refuses an inequivalent redeclare; oslo's processes all declare alike).
    pub fn declare(&mut self, queue: &str, durable: bool) {
        self.queues.entry(queue.to_string()).or_insert_with(|| Queue {
            durable,
            consumers: Vec::new(),
            next: 0,
            ready: VecDeque::new(),
        });
    }

    pub fn exists(&self, queue: &str) -> bool {
        self.queues.contains_key(queue)
    }

    /// basic.consume: `conn` consumes `queue`; what waited in it is delivered now.
    pub fn consume(&mut self, conn: ConnId, queue: &str, auto_ack: bool) -> Result<Vec<Delivery<P>>, QueueError> {
        let q = self.queues.get_mut(queue).ok_or_else(|| QueueError::NotFound(queue.to_string()))?;
        if !q.consumers.iter().any(|c| c.conn == conn) {
            q.consumers.push(Consumer { conn, auto_ack });
        }
        Ok(self.dispatch(queue))
    }

    /// basic.publish to `queue` through the default exchange. `None`: unroutable (no such
    /// queue), the message is dropped.
    pub fn publish(&mut self, queue: &str, payload: P, persistent: bool) -> Option<Vec<Delivery<P>>> {
        let Some(q) = self.queues.get_mut(queue) else {
            self.dropped += 1;
            return None;
        };
        if q.ready.len() >= MAX_READY {
            q.ready.pop_front();
            self.dropped += 1;
        }
        q.ready.push_back(Message { payload, persistent, redelivered: false });
        Some(self.dispatch(queue))
    }

    /// basic.ack: true if `tag` was unacknowledged on `conn`. A tag of another connection,
    /// or of one that closed (its message was requeued), acknowledges nothing.
    pub fn ack(&mut self, conn: ConnId, tag: Tag) -> bool {
        match self.unacked.get(&tag) {
            Some(u) if u.conn == conn => {
                self.unacked.remove(&tag);
                true
            }
            _ => false,
        }
    }

    /// The connection closed: its consumers go, its unacknowledged messages are requeued
    /// (redelivered, at the head, in their original order) and delivered to the others.
    pub fn close(&mut self, conn: ConnId) -> Vec<Delivery<P>> {
        for q in self.queues.values_mut() {
            q.consumers.retain(|c| c.conn != conn);
        }
        let tags: Vec<Tag> = self.unacked.iter().filter(|(_, u)| u.conn == conn).map(|(&t, _)| t).collect();
        let mut touched = Vec::new();
        // Newest first, each pushed to the front: the oldest ends up first.
        for tag in tags.into_iter().rev() {
            let Unacked { queue, mut msg, .. } = self.unacked.remove(&tag).expect("listed above");
            msg.redelivered = true;
            if let Some(q) = self.queues.get_mut(&queue) {
                q.ready.push_front(msg);
                if !touched.contains(&queue) {
                    touched.push(queue);
                }
            }
        }
        touched.sort();
        touched.iter().flat_map(|q| self.dispatch(q)).collect()
    }

    /// The broker restarted: every connection is gone; see the module documentation.
    pub fn restart(&mut self) -> RestartLoss {
        let mut loss = RestartLoss::default();
        for (_, u) in std::mem::take(&mut self.unacked) {
            match self.queues.get_mut(&u.queue) {
                Some(q) => q.ready.push_front(Message { redelivered: true, ..u.msg }),
                None => loss.messages += 1,
            }
        }
        self.queues.retain(|_, q| {
            if !q.durable {
                loss.queues += 1;
                loss.messages += q.ready.len();
                return false;
            }
            q.consumers.clear();
            q.next = 0;
            let before = q.ready.len();
            q.ready.retain(|m| m.persistent);
            loss.messages += before - q.ready.len();
            true
        });
        loss
    }

    /// Messages ready in `queue` (waiting for a consumer).
    pub fn ready_len(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |q| q.ready.len())
    }

    /// Deliveries not yet acknowledged, on every connection.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// Messages dropped as unroutable or over [`MAX_READY`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Hands `queue`'s ready messages to its consumers, round-robin.
    fn dispatch(&mut self, queue: &str) -> Vec<Delivery<P>> {
        let mut out = Vec::new();
        let Some(q) = self.queues.get_mut(queue) else { return out };
        while !q.consumers.is_empty() {
            let Some(msg) = q.ready.pop_front() else { break };
            let idx = q.next % q.consumers.len();
            q.next = idx + 1;
            let c = q.consumers[idx].clone();
            self.next_tag += 1;
            let tag = self.next_tag;
            out.push(Delivery {
                conn: c.conn,
                queue: queue.to_string(),
                tag,
                payload: msg.payload.clone(),
                redelivered: msg.redelivered,
            });
            if !c.auto_ack {
                self.unacked.insert(tag, Unacked { conn: c.conn, queue: queue.to_string(), msg });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn unroutable_publishes_are_dropped() {
        let mut q: Queues<u32> = Queues::new();
        assert_eq!(q.publish("nowhere", 1, true), None);
        assert_eq!(q.dropped(), 1);
    }

    #[test]
    fn a_closed_connections_unacked_messages_go_to_the_next_consumer_redelivered() {
        let mut q: Queues<u32> = Queues::new();
        q.declare("conductor", false);
        q.consume(1, "conductor", false).unwrap();
        let d = q.publish("conductor", 7, false).unwrap();
        assert_eq!((d[0].conn, d[0].redelivered), (1, false));
        q.consume(2, "conductor", false).unwrap();
        let again = q.close(1);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].conn, again[0].payload, again[0].redelivered), (2, 7, true));
        assert!(!q.ack(1, d[0].tag), "the old tag acknowledges nothing");
        assert!(q.ack(2, again[0].tag));
        assert_eq!(q.unacked_len(), 0);
    }

    #[test]
    fn a_restart_keeps_persistent_messages_of_durable_queues_only() {
        let mut q: Queues<u32> = Queues::new();
        q.declare("durable", true);
        q.declare("transient", false);
        q.publish("durable", 1, true);
        q.publish("durable", 2, false);
        q.publish("transient", 3, true);
        q.consume(9, "durable", false).unwrap(); // 1 and 2 delivered, unacked
        let loss = q.restart();
        assert_eq!(loss, RestartLoss { queues: 1, messages: 2 });
        assert!(!q.exists("transient"));
        let d = q.consume(10, "durable", false).unwrap();
        assert_eq!(d.iter().map(|d| (d.payload, d.redelivered)).collect::<Vec<_>>(), vec![(1, true)]);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Declare(u8, bool),
        Consume(u8, u8, bool),
        Publish(u8, bool),
        Ack(u8),
        Close(u8),
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3u8, any::<bool>()).prop_map(|(q, d)| Step::Declare(q, d)),
            (0..4u8, 0..3u8, any::<bool>()).prop_map(|(c, q, a)| Step::Consume(c, q, a)),
            (0..3u8, any::<bool>()).prop_map(|(q, p)| Step::Publish(q, p)),
            (0..4u8).prop_map(Step::Ack),
            (0..4u8).prop_map(Step::Close),
            Just(Step::Restart),
        ]
    }

    proptest! {
        /// Conservation: every published message is, at every step, exactly one of ready,
        /// unacknowledged, acknowledged (or auto-acked on delivery), dropped as unroutable,
        /// or lost by a restart; no message is delivered to a connection that does not
        /// consume its queue; a message is marked redelivered only once it was delivered.
        #[test]
        fn messages_are_conserved(steps in proptest::collection::vec(step(), 1..80)) {
            let mut q: Queues<u64> = Queues::new();
            let (mut published, mut gone, mut next) = (0usize, 0usize, 0u64);
            let mut held: BTreeMap<u8, Vec<Tag>> = BTreeMap::new();
            let mut consuming: BTreeSet<(u8, u8)> = BTreeSet::new();
            let mut delivered: BTreeSet<u64> = BTreeSet::new();
            let mut seen = |ds: Vec<Delivery<u64>>, consuming: &BTreeSet<(u8, u8)>, held: &mut BTreeMap<u8, Vec<Tag>>, gone: &mut usize, q: &Queues<u64>| {
                for d in ds {
                    let qn: u8 = d.queue.parse().unwrap();
                    prop_assert!(consuming.contains(&(d.conn as u8, qn)), "delivered to a non-consumer");
                    prop_assert_eq!(d.redelivered, delivered.contains(&d.payload), "redelivered flag");
                    delivered.insert(d.payload);
                    if q.unacked.contains_key(&d.tag) {
                        held.entry(d.conn as u8).or_default().push(d.tag);
                    } else {
                        *gone += 1; // auto-acked
                    }
                }
                Ok(())
            };
            for s in steps {
                match s {
                    Step::Declare(n, d) => q.declare(&n.to_string(), d),
                    Step::Consume(c, n, a) => {
                        if let Ok(ds) = q.consume(c as u64, &n.to_string(), a) {
                            consuming.insert((c, n));
                            seen(ds, &consuming, &mut held, &mut gone, &q)?;
                        }
                    }
                    Step::Publish(n, p) => {
                        next += 1;
                        published += 1;
                        match q.publish(&n.to_string(), next, p) {
                            Some(ds) => seen(ds, &consuming, &mut held, &mut gone, &q)?,
                            None => gone += 1,
                        }
                    }
                    Step::Ack(c) => {
                        if let Some(tag) = held.get_mut(&c).and_then(|t| t.pop()) {
                            prop_assert!(q.ack(c as u64, tag));
                            gone += 1;
                        }
                    }
                    Step::Close(c) => {
                        held.remove(&c);
                        consuming.retain(|&(x, _)| x != c);
                        let ds = q.close(c as u64);
                        seen(ds, &consuming, &mut held, &mut gone, &q)?;
                    }
                    Step::Restart => {
                        held.clear();
                        consuming.clear();
                        gone += q.restart().messages;
                    }
                }
                let ready: usize = q.queues.values().map(|x| x.ready.len()).sum();
                prop_assert_eq!(published, ready + q.unacked_len() + gone, "conservation");
                let held_n: usize = held.values().map(|t| t.len()).sum();
                prop_assert_eq!(held_n, q.unacked_len(), "unacked = held by live connections");
            }
        }
    }
}
