//! Conformance suites for the seams: the same checks run against every implementation
//! (simulated and real). Each check panics with a message naming the broken rule, so a
//! test calls it and nothing else. Only behaviour visible through the trait is checked.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use stackbed_core::model::{ProjectUsage, Record, Table};
use stackbed_core::store::{DbError, Expect, Op, OpResult};

use crate::seams::{
    Body, BusError, BusRef, Database, HandlerRef, HttpError, HttpHandler, HttpRef, HttpRequest, HttpResponse, Method,
    Rpc,
};

fn usage(n: u64) -> Record {
    Record::ProjectUsage(ProjectUsage { instances: n, cores: n, ram_mb: n })
}

fn put(key: &str, n: u64, expect: Expect) -> Op {
    Op::Put { table: Table::ProjectUsages, key: key.into(), value: usage(n), expect }
}

fn get(key: &str) -> Op {
    Op::Get { table: Table::ProjectUsages, key: key.into() }
}

fn version(r: &OpResult) -> Option<u64> {
    match r {
        OpResult::Row(Some(row)) => Some(row.version),
        OpResult::Written(v) => Some(*v),
        _ => None,
    }
}

/// The database seam: compare-and-swap expectations, atomicity, versions, scans.
pub async fn database(db: &dyn Database) {
    // Insert expecting absence, then the same again conflicts.
    let r = db.execute(vec![put("p1", 1, Expect::Absent)]).await.expect("insert into an empty table");
    let v1 = version(&r[0]).expect("a put returns the new version");
    let err = db.execute(vec![put("p1", 2, Expect::Absent)]).await.expect_err("second insert must conflict");
    assert!(matches!(err, DbError::Conflict { .. }), "Expect::Absent on an existing row: {err:?}");

    // Compare-and-swap on the version.
    let r = db.execute(vec![get("p1")]).await.expect("get");
    assert_eq!(version(&r[0]), Some(v1), "a get returns the row's version");
    let r = db.execute(vec![put("p1", 3, Expect::Version(v1))]).await.expect("CAS with the current version");
    let v2 = version(&r[0]).expect("new version");
    assert!(v2 > v1, "versions grow: {v1} then {v2}");
    let err = db.execute(vec![put("p1", 4, Expect::Version(v1))]).await.expect_err("stale CAS must conflict");
    assert!(matches!(err, DbError::Conflict { .. }), "stale version: {err:?}");

    // All or nothing: a failing expectation leaves every write of the transaction undone.
    let err = db
        .execute(vec![put("p2", 1, Expect::Absent), put("p1", 5, Expect::Version(v1))])
        .await
        .expect_err("one bad expectation fails the transaction");
    assert!(matches!(err, DbError::Conflict { .. }));
    let r = db.execute(vec![get("p2")]).await.expect("get");
    assert_eq!(r[0], OpResult::Row(None), "the other write of a failed transaction must not apply");

    // Two writes to one key in one transaction are refused.
    let err = db
        .execute(vec![put("p3", 1, Expect::Any), put("p3", 2, Expect::Any)])
        .await
        .expect_err("two writes to one key");
    assert!(matches!(err, DbError::Invalid(_)), "{err:?}");

    // Reads see the state before the transaction's writes.
    let r = db.execute(vec![get("p1"), put("p1", 6, Expect::Version(v2))]).await.expect("read then write");
    match &r[0] {
        OpResult::Row(Some(row)) => assert_eq!(row.value, usage(3), "a read sees the pre-transaction row"),
        other => panic!("get returned {other:?}"),
    }
    let v3 = version(&r[1]).expect("written");

    // Delete and re-insert: the version never repeats.
    db.execute(vec![Op::Delete { table: Table::ProjectUsages, key: "p1".into(), expect: Expect::Version(v3) }])
        .await
        .expect("delete with the current version");
    let r = db.execute(vec![put("p1", 7, Expect::Absent)]).await.expect("re-insert after delete");
    let v4 = version(&r[0]).expect("written");
    assert!(v4 > v3, "a re-inserted row gets a fresh version ({v3} then {v4})");

    // Scans by prefix, in key order.
    db.execute(vec![put("s/b", 1, Expect::Any), put("s/a", 1, Expect::Any), put("t/a", 1, Expect::Any)])
        .await
        .expect("inserts");
    let r = db.execute(vec![Op::Scan { table: Table::ProjectUsages, prefix: "s/".into() }]).await.expect("scan");
    let keys: Vec<String> = match &r[0] {
        OpResult::Rows(rows) => rows.iter().map(|(k, _)| k.clone()).collect(),
        other => panic!("scan returned {other:?}"),
    };
    assert_eq!(keys, vec!["s/a".to_string(), "s/b".to_string()], "scan: prefix only, key order");

    // A snapshot holds the whole table as it was, whatever is written after it.
    let r = db.execute(vec![Op::Snapshot { table: Table::ProjectUsages }]).await.expect("snapshot");
    let snap = match r.into_iter().next() {
        Some(OpResult::Snapshot(s)) => s,
        other => panic!("snapshot returned {other:?}"),
    };
    let keys: Vec<&String> = snap.keys().collect();
    assert_eq!(keys, vec!["p1", "s/a", "s/b", "t/a"], "snapshot: every row, key order");
    db.execute(vec![put("s/a", 9, Expect::Any)]).await.expect("write after the snapshot");
    assert_eq!(snap.get("s/a").map(|r| &r.value), Some(&usage(1)), "a snapshot does not see later writes");
}

/// A database restart (the node for the simulator, the file reopened for SQLite):
/// `restart` restarts it and returns a client (a new one, or the old one, which must
/// reconnect by itself). Committed rows survive (every commit is synced, as with MariaDB's
/// `innodb_flush_log_at_trx_commit=1`) and row versions never repeat after it.
pub async fn database_restart<F, Fut>(db: &dyn Database, restart: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = std::sync::Arc<dyn Database>>,
{
    let r = db.execute(vec![put("r1", 1, Expect::Absent)]).await.expect("insert before the restart");
    let v1 = version(&r[0]).expect("a put returns the new version");
    let r = db.execute(vec![put("r2", 1, Expect::Absent)]).await.expect("insert before the restart");
    let v2 = version(&r[0]).expect("a put returns the new version");
    db.execute(vec![Op::Delete { table: Table::ProjectUsages, key: "r2".into(), expect: Expect::Version(v2) }])
        .await
        .expect("delete before the restart");
    let db = restart().await;
    // A client may need a few attempts while the database comes back; none may fail
    // otherwise than by a lost connection.
    let mut rows = None;
    for _ in 0..100 {
        match db.execute(vec![get("r1"), get("r2")]).await {
            Ok(r) => {
                rows = Some(r);
                break;
            }
            Err(DbError::ConnectionLost(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("after a restart: {e}"),
        }
    }
    let rows = rows.expect("the database answers again after its restart");
    assert_eq!(version(&rows[0]), Some(v1), "a committed row survives the restart with its version");
    assert_eq!(rows[1], OpResult::Row(None), "a committed delete survives the restart");
    let r = db.execute(vec![put("r2", 2, Expect::Absent)]).await.expect("re-insert after the restart");
    let v3 = version(&r[0]).expect("a put returns the new version");
    assert!(v3 > v2, "versions never repeat after a restart: {v2} before it, {v3} after");
    let r = db.execute(vec![put("r1", 2, Expect::Version(v1))]).await.expect("CAS on a pre-restart version");
    assert!(version(&r[0]).expect("new version") > v1, "versions of a row grow across the restart");
}

/// The next delivery on `rx`, or a panic naming `what` after 5 s.
async fn recv(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<crate::seams::Incoming>,
    what: &str,
) -> crate::seams::Incoming {
    let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    next.unwrap_or_else(|_| panic!("{what}")).expect("open")
}

/// The bus seam: declared queues and their backlog, unroutable casts, round-robin
/// consumers, acks and redelivery, call/reply routing, call timeouts. `client(name)`
/// connects a new client with its own reply queue.
pub async fn bus<F, Fut>(client: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = BusRef>,
{
    let token = |s: &str| Rpc::Token(s.to_string());

    // Casts to a declared queue nobody consumes wait for the first consumer.
    let sender = client("sender".into()).await;
    sender.declare("conformance.backlog").await.expect("declare");
    for i in 0..3 {
        sender.cast("conformance.backlog", token(&format!("m{i}"))).await.expect("cast");
    }
    // A cast to a queue nobody declared is lost.
    sender.cast("conformance.nowhere", token("lost")).await.expect("cast");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let consumer = client("consumer".into()).await;
    let mut rx = consumer.consume("conformance.backlog").await.expect("consume");
    let mut got = Vec::new();
    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        let m = recv(&mut rx, "backlog delivered").await;
        assert!(m.reply_to.is_none(), "a cast carries no reply address");
        assert!(!m.redelivered, "a first delivery is not marked redelivered");
        got.push(m.msg.clone());
        ids.insert(m.msg_id.clone());
        consumer.ack(m.tag).await.expect("ack");
    }
    assert_eq!(got, vec![token("m0"), token("m1"), token("m2")], "the backlog is delivered once each, in order");
    assert_eq!(ids.len(), 3, "each publish has its own message id");
    let mut nowhere = consumer.consume("conformance.nowhere").await.expect("consume");
    let late = tokio::time::timeout(Duration::from_secs(1), nowhere.recv()).await;
    assert!(late.is_err(), "a cast to an undeclared queue was kept: {late:?}");

    // Two consumers of one queue share its messages round-robin.
    let c1 = client("c1".into()).await;
    let c2 = client("c2".into()).await;
    let mut rx1 = c1.consume("conformance.rr").await.expect("consume");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rx2 = c2.consume("conformance.rr").await.expect("consume");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..4 {
        sender.cast("conformance.rr", token(&format!("r{i}"))).await.expect("cast");
    }
    let (mut n1, mut n2) = (0, 0);
    for _ in 0..4 {
        tokio::select! {
            biased;
            Some(m) = rx1.recv() => { n1 += 1; c1.ack(m.tag).await.expect("ack") }
            Some(m) = rx2.recv() => { n2 += 1; c2.ack(m.tag).await.expect("ack") }
            _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("round-robin casts not delivered ({n1} + {n2} of 4)"),
        }
    }
    assert_eq!((n1, n2), (2, 2), "round-robin between two consumers");

    // A delivery not acknowledged by a consumer that went away goes to the other consumer,
    // marked redelivered, with its message id.
    sender.cast("conformance.rr", token("held")).await.expect("cast");
    let held = recv(&mut rx1, "the next in turn is c1's").await;
    assert_eq!(held.msg, token("held"));
    drop(rx1);
    let mut seen = Vec::new();
    for i in 0..4 {
        sender.cast("conformance.rr", token(&format!("after{i}"))).await.expect("cast");
    }
    while !seen.iter().any(|(m, _, _): &(Rpc, bool, String)| *m == token("held")) || seen.len() < 5 {
        let m = recv(&mut rx2, "the held message is redelivered to c2").await;
        c2.ack(m.tag).await.expect("ack");
        seen.push((m.msg, m.redelivered, m.msg_id));
    }
    let (_, redelivered, id) = seen.iter().find(|(m, _, _)| *m == token("held")).expect("seen");
    assert!(*redelivered, "the held message comes back marked redelivered");
    assert_eq!(*id, held.msg_id, "a redelivery keeps the message id");
    assert_eq!(seen.len(), 5, "every message once: {seen:?}");

    // Calls get their own replies back, through their own reply queues.
    let server = client("server".into()).await;
    let mut srx = server.consume("conformance.echo").await.expect("consume");
    // The queue exists once the broker has the declare: a call before it would be lost.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let srv = server.clone();
    tokio::spawn(async move {
        while let Some(m) = srx.recv().await {
            if let (Rpc::ValidateToken { token: t }, Some(to)) = (m.msg, m.reply_to) {
                let _ = srv.reply(to, Rpc::Token(format!("echo:{t}"))).await;
            }
        }
    });
    let a = client("caller-a".into()).await;
    let b = client("caller-b".into()).await;
    let timeout = Duration::from_secs(5);
    let (ra, rb) = tokio::join!(
        a.call("conformance.echo", Rpc::ValidateToken { token: "a".into() }, timeout),
        b.call("conformance.echo", Rpc::ValidateToken { token: "b".into() }, timeout),
    );
    assert_eq!(ra.expect("reply to a"), token("echo:a"), "a's reply goes to a");
    assert_eq!(rb.expect("reply to b"), token("echo:b"), "b's reply goes to b");

    // A call nobody answers times out.
    let _silent = client("silent".into()).await.consume("conformance.silent").await.expect("consume");
    let err = a
        .call("conformance.silent", Rpc::ValidateToken { token: "x".into() }, Duration::from_millis(300))
        .await
        .expect_err("no reply");
    assert!(matches!(err, BusError::Timeout { .. }), "{err:?}");

    // Call monitoring: a monitored call carries its monitor timeout; a server that sends
    // heartbeats keeps it alive past the monitor timeout, and a silent one fails it after
    // the monitor timeout, long before the call's own timeout.
    let monitor = Duration::from_millis(300);
    let busy = client("busy".into()).await;
    let mut brx = busy.consume("conformance.busy").await.expect("consume");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let srv = busy.clone();
    tokio::spawn(async move {
        while let Some(m) = brx.recv().await {
            let Some(to) = m.reply_to else { continue };
            assert_eq!(to.monitor_ms, Some(300), "the call carries its monitor timeout");
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = srv.reply(to.clone(), Rpc::Heartbeat).await;
            }
            let _ = srv.reply(to, token("done")).await;
        }
    });
    let long = Duration::from_secs(30);
    let r = a.call_monitored("conformance.busy", token("work"), long, Some(monitor)).await;
    assert_eq!(r.expect("heartbeats keep a monitored call alive"), token("done"));
    let t0 = tokio::time::Instant::now();
    let err = a
        .call_monitored("conformance.silent", token("work"), long, Some(monitor))
        .await
        .expect_err("a silent server fails a monitored call");
    assert!(matches!(err, BusError::Timeout { .. }), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "failed after {:?}, not by the monitor", t0.elapsed());
}

/// The service name and worker nodes the HTTP suite serves; a world's harness registers
/// these endpoints (in this order) before it runs the suite.
pub const HTTP_SERVICE: &str = "conformance";
pub const HTTP_WORKERS: [&str; 2] = ["conformance-1", "conformance-2"];

/// How long the suite's slow requests take to answer.
pub const HTTP_SLOW: Duration = Duration::from_secs(5);

/// Answers `<worker>:<path>` with 200; `/slow` after [`HTTP_SLOW`].
struct Echo(String);

#[async_trait::async_trait]
impl HttpHandler for Echo {
    async fn handle(&self, req: HttpRequest) -> HttpResponse {
        if req.path == "/slow" {
            tokio::time::sleep(HTTP_SLOW).await;
        }
        HttpResponse::new(200, Body::Created(format!("{}:{}", self.0, req.path)))
    }
}

/// Stops a server started by the harness (kills its node, aborts its task).
pub type Stop = Box<dyn FnOnce() + Send>;

/// The HTTP seam: refused without a server, status, body and request ids, round-robin over
/// the endpoints, failover when one stops, timeout, reset of a request in flight when its
/// server stops. `start(worker, handler)` serves [`HTTP_SERVICE`] on that worker and returns
/// how to stop it; `client(name)` is a client node's stack.
pub async fn http<S, SFut, C, CFut>(start: S, client: C)
where
    S: Fn(String, HandlerRef) -> SFut,
    SFut: Future<Output = Stop>,
    C: Fn(String) -> CFut,
    CFut: Future<Output = HttpRef>,
{
    let timeout = Duration::from_secs(10);
    let get = |path: &str| HttpRequest::new(Method::Get, path, Body::Empty);
    let body = |r: Result<HttpResponse, HttpError>| match r {
        Ok(HttpResponse { status: 200, body: Body::Created(b), .. }) => b,
        other => panic!("expected 200 from an echo server, got {other:?}"),
    };
    let a = client("client-a".into()).await;
    let b = client("client-b".into()).await;

    let err = a.request(HTTP_SERVICE, get("/x"), timeout).await.expect_err("no server: no response");
    assert!(matches!(err, HttpError::ConnectionRefused { .. }), "no server listening: refused, got {err:?}");

    let [w1, w2] = HTTP_WORKERS.map(String::from);
    let stop1 = start(w1.clone(), std::sync::Arc::new(Echo(w1.clone()))).await;
    let r1 = a.request(HTTP_SERVICE, get("/x"), timeout).await.expect("one server: answered");
    let r2 = a.request(HTTP_SERVICE, get("/y"), timeout).await.expect("answered");
    let r3 = b.request(HTTP_SERVICE, get("/z"), timeout).await.expect("answered");
    assert_eq!(r1.body, Body::Created(format!("{w1}:/x")), "the handler's status and body reach the client");
    let ids = [&r1.request_id, &r2.request_id, &r3.request_id];
    assert!(ids.iter().all(|id| id.starts_with("req-")), "request ids are req-...: {ids:?}");
    assert!(r1.request_id.contains("client-a") && r3.request_id.contains("client-b"), "ids name the caller: {ids:?}");
    let distinct: BTreeSet<&String> = ids.into_iter().collect();
    assert_eq!(distinct.len(), 3, "request ids are unique across requests and callers");

    // Two workers: round-robin, each endpoint in turn.
    let stop2 = start(w2.clone(), std::sync::Arc::new(Echo(w2.clone()))).await;
    let mut served = BTreeSet::new();
    let mut per_worker = [0, 0];
    for _ in 0..4 {
        let got = body(a.request(HTTP_SERVICE, get("/rr"), timeout).await);
        per_worker[usize::from(got.starts_with(&w2))] += 1;
        served.insert(got);
    }
    assert_eq!(per_worker, [2, 2], "round-robin over two live endpoints: {served:?}");

    // A slow answer past the timeout.
    let err = a.request(HTTP_SERVICE, get("/slow"), Duration::from_millis(500)).await.expect_err("too slow");
    assert!(matches!(err, HttpError::Timeout { .. }), "slow handler: timeout, got {err:?}");

    // One worker stops: every request is answered by the other. (A stop may take effect at
    // the stopped task's next scheduling: give it a moment.)
    stop2();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..3 {
        let got = body(a.request(HTTP_SERVICE, get("/after"), timeout).await);
        assert_eq!(got, format!("{w1}:/after"), "request {i} after {w2} stopped: failover to {w1}");
    }

    // The last worker stops while a request runs there: the request is reset.
    let c = a.clone();
    let in_flight = tokio::spawn(async move { c.request(HTTP_SERVICE, get("/slow"), Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop1();
    let err = in_flight.await.expect("the request task").expect_err("its server stopped");
    assert!(matches!(err, HttpError::ConnectionReset { .. }), "server stopped mid-request: reset, got {err:?}");
    let err = b.request(HTTP_SERVICE, get("/x"), timeout).await.expect_err("no server left");
    assert!(matches!(err, HttpError::ConnectionRefused { .. }), "every worker gone: refused, got {err:?}");
}
