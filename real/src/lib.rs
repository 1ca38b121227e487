//! stackbed-real: the seams for real, on tokio.
//!
//! - [`bus::InProcBus`]: an in-process message broker with RabbitMQ's queue semantics
//!   (durable topic queues, round-robin consumers, per-client reply queues).
//! - [`sqlite::SqliteDb`]: the database seam on an embedded SQLite file, with exactly the
//!   transaction semantics of `stackbed_core::store::MemStore`.
//! - [`http::InProcNet`]: the HTTP seam in-process (direct dispatch to the services'
//!   handlers), with the simulator's endpoint semantics.
//! - [`libvirt::LibvirtHypervisor`]: the hypervisor seam through libvirt (`virt` crate).
//! - [`run::run`]: one run of a scenario with every service as a tokio task.
//!
//! The crate is empty in simulator builds (`--cfg madsim`).
#![cfg(not(madsim))]

pub mod bus;
pub mod http;
pub mod libvirt;
pub mod run;
pub mod sqlite;
