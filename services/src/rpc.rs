//! oslo.messaging's RPC server, once for every service: consume a topic, take each message
//! up when a worker of the executor pool is free, acknowledge it before or after dispatch
//! (`control.rpc_ack`), drop duplicates by message id, run the handler, send its reply.
//!
//! - The pool: `executor_thread_pool_size` (64) workers per process. A message waits in
//!   the client, delivered but unacknowledged, until a worker takes it, so a process that
//!   dies with a backlog gives it back to the broker, as oslo's does.
//! - `before_dispatch` (oslo's default for RPC): the worker acknowledges, then handles. A
//!   process that dies mid-request loses the request (at most once). A message that cannot
//!   be acknowledged (its connection died while it waited for a worker) is not handled: the
//!   broker redelivers it.
//! - `after_dispatch`: the worker handles, then acknowledges. A process that dies
//!   mid-request gets the request redelivered to another worker (at least once); handlers
//!   must tolerate a redelivery (`Incoming::redelivered`).
//! - The duplicate filter: oslo's `_MsgIdCache` of the last [`DUP_MSG_CHECK_SIZE`] message
//!   ids of the process; a message whose id is in it when a worker takes it up is
//!   acknowledged and dropped. An id is added when its message is acknowledged, as oslo
//!   does, and, with `after_dispatch`, already when it is taken up, so that a copy arriving
//!   while the first is still being handled is dropped too.
//! - Call monitoring: a call that carries a monitor timeout gets a heartbeat reply every
//!   half of it while its handler runs (see `reply.rs`).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stackbed_core::scenario::{PlantedBug, RpcAck};

use crate::ctx::Ctx;
use crate::seams::{BusError, Incoming, Rpc};

/// oslo.messaging's `executor_thread_pool_size`.
pub const EXECUTOR_POOL_SIZE: usize = 64;
/// oslo.messaging's `DUP_MSG_CHECK_SIZE`.
pub const DUP_MSG_CHECK_SIZE: usize = 16;

/// The last message ids a process took up.
#[derive(Debug, Default)]
pub struct MsgIdCache {
    ids: VecDeque<String>,
}

impl MsgIdCache {
    pub fn contains(&self, id: &str) -> bool {
        self.ids.iter().any(|x| x == id)
    }

    /// Remembers `id`, forgetting the oldest beyond [`DUP_MSG_CHECK_SIZE`].
    pub fn add(&mut self, id: &str) {
        if self.contains(id) {
            return;
        }
        if self.ids.len() == DUP_MSG_CHECK_SIZE {
            self.ids.pop_front();
        }
        self.ids.push_back(id.to_string());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    pub ack: RpcAck,
    pub dup_filter: bool,
    pub pool: usize,
}

impl ServeOptions {
    /// The scenario's choice for `service` (`conductor`, `scheduler`, `compute`), with the
    /// planted bug `AckAfterDispatchWithoutDupFilter` applied to the conductor.
    pub fn of(ctx: &Ctx, service: &str) -> ServeOptions {
        let mut o = ServeOptions { ack: ctx.scenario.control.rpc_ack, dup_filter: true, pool: EXECUTOR_POOL_SIZE };
        if service == "conductor" && ctx.scenario.debug.plant_bug == Some(PlantedBug::AckAfterDispatchWithoutDupFilter)
        {
            o.ack = RpcAck::AfterDispatch;
            o.dup_filter = false;
        }
        o
    }
}

/// What a handler is given: the message and whether the broker delivered it before.
pub struct Request {
    pub msg: Rpc,
    pub redelivered: bool,
}

/// Serves `topic` until the bus goes away for good. `handler` returns the reply to a call
/// (ignored for a cast).
pub async fn serve<H, Fut>(ctx: &Ctx, topic: &str, opts: ServeOptions, handler: H) -> Result<(), BusError>
where
    H: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Rpc>> + Send + 'static,
{
    let mut rx = ctx.bus.consume(topic).await?;
    let pool = Arc::new(tokio::sync::Semaphore::new(opts.pool));
    let cache = Arc::new(Mutex::new(MsgIdCache::default()));
    let handler = Arc::new(handler);
    while let Some(Incoming { msg, reply_to, msg_id, redelivered, tag }) = rx.recv().await {
        let Ok(permit) = pool.clone().acquire_owned().await else { break };
        let (ctx, cache, handler) = (ctx.clone(), cache.clone(), handler.clone());
        ctx.metrics.delivered(&msg_id);
        tokio::spawn(async move {
            let remember = |id: &str| cache.lock().expect("msg id cache lock poisoned").add(id);
            let duplicate = opts.dup_filter && cache.lock().expect("msg id cache lock poisoned").contains(&msg_id);
            if duplicate {
                ctx.metrics.count("rpc.duplicates_dropped", 1);
                let _ = ctx.bus.ack(tag).await;
                return;
            }
            if redelivered {
                ctx.metrics.count("rpc.redelivered", 1);
            }
            // oslo's RPC server: "Can not acknowledge message. Skip processing" (the broker
            // redelivers it, to this process after its reconnect or to another).
            match opts.ack {
                RpcAck::BeforeDispatch => {
                    if ctx.bus.ack(tag).await.is_err() {
                        ctx.metrics.count("rpc.ack_failed_skipped", 1);
                        return;
                    }
                    remember(&msg_id);
                }
                RpcAck::AfterDispatch => remember(&msg_id),
            }
            let work = handler(Request { msg, redelivered });
            let reply = match reply_to.as_ref().and_then(|to| to.monitor_ms.map(|m| (to, m))) {
                // A monitored call: heartbeats every half of the monitor timeout until the
                // handler is done (oslo's server-side `heartbeat` of the incoming message).
                Some((to, monitor_ms)) => {
                    let beat = async {
                        loop {
                            // An alarm: this future is polled each time the handler wakes.
                            ctx.clock.alarm(Duration::from_millis((monitor_ms / 2).max(1))).await;
                            let _ = ctx.bus.reply(to.clone(), Rpc::Heartbeat).await;
                        }
                    };
                    tokio::select! {
                        biased;
                        reply = work => reply,
                        never = beat => never,
                    }
                }
                None => work.await,
            };
            if let (Some(to), Some(reply)) = (reply_to, reply) {
                let _ = ctx.bus.reply(to, reply).await;
            }
            if opts.ack == RpcAck::AfterDispatch {
                let _ = ctx.bus.ack(tag).await;
            }
            drop(permit);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_remembers_the_last_sixteen_ids() {
        let mut c = MsgIdCache::default();
        for i in 0..16 {
            assert!(!c.contains(&i.to_string()));
            c.add(&i.to_string());
        }
        assert!(c.contains("0"), "still among the last 16");
        c.add("0");
        c.add("16");
        assert!(!c.contains("0"), "0 fell out when 16 came in");
        assert!(c.contains("1") && c.contains("16"));
    }
}
