//! Connections between simulated nodes: madsim's reliable, ordered channels, the ones its
//! simulated TCP is built on. AMQP and MySQL run over TCP, and so do these: a client opens
//! one connection to the server; messages on it arrive in order, each after the link's
//! latency (a clogged link holds them until it heals, as TCP retransmits); when either end
//! goes away, sends fail with a connection reset.
//!
//! Each message costs the simulator one timer (its arrival). Datagrams through
//! `Endpoint::send_to_raw` cost three (a random delay on send, the arrival, a random delay
//! on receive), which made the network most of a large run's cost.

use std::io;
use std::net::SocketAddr;

use madsim::net::{Endpoint, Payload, Receiver, Sender};

/// Opens a connection to `server` from a fresh local port; returns the port too.
pub async fn connect(server: SocketAddr) -> io::Result<(Sender, Receiver, u16)> {
    let ep = Endpoint::bind("0.0.0.0:0").await?;
    let port = ep.local_addr()?.port();
    // The sender and receiver keep the local port bound; the endpoint itself can go.
    let (tx, rx) = ep.connect1(server).await?;
    Ok((tx, rx, port))
}

/// Accepts connections at `addr` and runs `serve` on each, in a task of its own, with the
/// connection's sender and receiver and a connection number (from 0, in accept order).
/// Returns only if binding or accepting fails.
pub async fn accept_each<F, Fut>(addr: SocketAddr, serve: F) -> io::Result<()>
where
    F: Fn(u64, Sender, Receiver) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let ep = Endpoint::bind(addr).await?;
    let mut id = 0;
    loop {
        let (tx, rx, _from) = ep.accept1().await?;
        tokio::spawn(serve(id, tx, rx));
        id += 1;
    }
}

/// Receives the next message of type `T`; `None` when the connection is closed. A message
/// of another type is a programming error on the other end and is skipped.
pub async fn recv<T: 'static>(rx: &mut Receiver) -> Option<Box<T>> {
    loop {
        let payload: Payload = rx.recv().await.ok()?;
        if let Ok(msg) = payload.downcast::<T>() {
            return Some(msg);
        }
    }
}

/// Sends `msg` on the connection.
pub async fn send<T: Send + Sync + 'static>(tx: &Sender, msg: T) -> io::Result<()> {
    tx.send(Box::new(msg)).await
}
