//! The in-process broker: durable queues with a backlog, call/reply routing through
//! per-client reply queues, call timeouts and late replies, round-robin consumers.
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
    }
    // Later casts go straight to the consumer.
    api.cast("conductor", token("m3")).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().msg, token("m3"));
    assert_eq!(broker.backlog_len("conductor"), 0);
}

#[tokio::test]
async fn call_and_reply_are_routed_to_the_caller() {
    let broker = InProcBroker::new();
    let server = broker.client("keystone");
    let mut rx = server.consume("keystone").await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let Rpc::ValidateToken { token: t } = m.msg else { continue };
            server.reply(m.reply_to.unwrap(), Rpc::Token(format!("ok:{t}"))).await.unwrap();
        }
    });
    let a = broker.client("nova-api");
    let b = broker.client("nova-api");
    assert_ne!(a.reply_queue(), b.reply_queue());
    let (ra, rb) = tokio::join!(
        a.call("keystone", Rpc::ValidateToken { token: "a".into() }, Duration::from_secs(5)),
        b.call("keystone", Rpc::ValidateToken { token: "b".into() }, Duration::from_secs(5)),
    );
    assert_eq!(ra.unwrap(), token("ok:a"));
    assert_eq!(rb.unwrap(), token("ok:b"));
    assert_eq!(broker.late_replies(), 0);
}

#[tokio::test]
async fn call_times_out_and_a_late_reply_is_dropped_and_counted() {
    let metrics = Metrics::default();
    let broker = InProcBroker::with_metrics(metrics.clone());
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
    server
        .reply(stackbed_services::seams::ReplyTo { queue: "reply_nobody".into(), msg_id: 1 }, token("x"))
        .await
        .unwrap();
    assert_eq!(broker.late_replies(), 3);
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
async fn consumers_of_one_topic_are_served_round_robin() {
    let broker = InProcBroker::new();
    let s1 = broker.client("nova-scheduler");
    let s2 = broker.client("nova-scheduler");
    let mut r1 = s1.consume("scheduler").await.unwrap();
    let mut r2 = s2.consume("scheduler").await.unwrap();
    let c = broker.client("nova-conductor");
    for i in 0..6 {
        c.cast("scheduler", token(&i.to_string())).await.unwrap();
    }
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    for _ in 0..3 {
        got1.push(r1.recv().await.unwrap().msg);
        got2.push(r2.recv().await.unwrap().msg);
    }
    assert_eq!(got1, vec![token("0"), token("2"), token("4")]);
    assert_eq!(got2, vec![token("1"), token("3"), token("5")]);
    assert!(r1.try_recv().is_err() && r2.try_recv().is_err());

    // A consumer that went away no longer gets messages; the other gets them all.
    drop(r1);
    for i in 6..9 {
        c.cast("scheduler", token(&i.to_string())).await.unwrap();
    }
    for i in 6..9 {
        assert_eq!(r2.recv().await.unwrap().msg, token(&i.to_string()));
    }
    // When the last consumer is gone, messages wait for the next one.
    drop(r2);
    c.cast("scheduler", token("9")).await.unwrap();
    assert_eq!(broker.backlog_len("scheduler"), 1);
    let mut r3 = broker.client("nova-scheduler").consume("scheduler").await.unwrap();
    assert_eq!(r3.recv().await.unwrap().msg, token("9"));
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
