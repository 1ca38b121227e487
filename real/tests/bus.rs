//! The in-process broker's own counters (backlog, late replies); its queue semantics are
//! `stackbed_services::conformance::bus`'s, run in `conformance.rs`.
#![cfg(not(madsim))]

use std::time::Duration;

use stackbed_real::bus::{InProcBroker, LATE_REPLIES_COUNTER};
use stackbed_services::metrics::Metrics;
use stackbed_services::seams::{Bus, BusError, Rpc};

fn token(s: &str) -> Rpc {
    Rpc::Token(s.to_string())
}

#[tokio::test]
async fn cast_before_any_consumer_waits_in_the_backlog() {
    let broker = InProcBroker::new();
    let api = broker.client("nova-api");
    api.declare("conductor").await.unwrap();
    for i in 0..3 {
        api.cast("conductor", token(&format!("m{i}"))).await.unwrap();
    }
    assert_eq!(broker.backlog_len("conductor"), 3);
    let conductor = broker.client("nova-conductor");
    let mut rx = conductor.consume("conductor").await.unwrap();
    assert_eq!(broker.backlog_len("conductor"), 0);
    for i in 0..3 {
        let m = rx.recv().await.unwrap();
        assert_eq!(m.msg, token(&format!("m{i}")));
        assert!(m.reply_to.is_none());
        conductor.ack(m.tag).await.unwrap();
    }
    // Later casts go straight to the consumer.
    api.cast("conductor", token("m3")).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().msg, token("m3"));
    assert_eq!(broker.backlog_len("conductor"), 0);
}

#[tokio::test]
async fn call_times_out_and_a_late_reply_is_dropped_and_counted() {
    let metrics = Metrics::default();
    let broker = InProcBroker::with_metrics(metrics.clone(), Default::default());
    let server = broker.client("nova-scheduler");
    let mut rx = server.consume("scheduler").await.unwrap();
    let client = broker.client("nova-conductor");
    let err =
        client.call("scheduler", Rpc::NoValidHost { reason: "x".into() }, Duration::from_millis(50)).await.unwrap_err();
    assert_eq!(err, BusError::Timeout { topic: "scheduler".into(), method: "no_valid_host", timeout_ms: 50 });
    // The request did reach the consumer; its reply comes too late.
    let m = rx.recv().await.unwrap();
    let to = m.reply_to.unwrap();
    assert_eq!(to.queue, client.reply_queue());
    server.reply(to.clone(), token("late")).await.unwrap();
    assert_eq!(broker.late_replies(), 1);
    assert_eq!(metrics.counter(LATE_REPLIES_COUNTER), 1);
    // A duplicate of it too, and a reply to an unknown queue.
    server.reply(to, token("late again")).await.unwrap();
    server.reply(stackbed_services::seams::ReplyTo::new("reply_nobody", 1, None, 0), token("x")).await.unwrap();
    assert_eq!(broker.late_replies(), 2, "the duplicate is late too");
    assert_eq!(metrics.counter("broker.unroutable"), 1, "a reply to a queue that does not exist is unroutable");
    // The client still works afterwards.
    let server2 = broker.client("nova-scheduler");
    let mut rx2 = server2.consume("echo").await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = rx2.recv().await {
            server2.reply(m.reply_to.unwrap(), m.msg).await.unwrap();
        }
    });
    assert_eq!(client.call("echo", token("hi"), Duration::from_secs(5)).await.unwrap(), token("hi"));
}

#[tokio::test]
async fn topics_are_independent() {
    let broker = InProcBroker::new();
    let c = broker.client("x");
    let mut a = c.consume("compute.compute-1").await.unwrap();
    let mut b = c.consume("compute.compute-2").await.unwrap();
    c.cast("compute.compute-2", token("for-2")).await.unwrap();
    c.cast("compute.compute-1", token("for-1")).await.unwrap();
    assert_eq!(a.recv().await.unwrap().msg, token("for-1"));
    assert_eq!(b.recv().await.unwrap().msg, token("for-2"));
}
