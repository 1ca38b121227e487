//! stackbed-sim: the simulated seams and the deterministic runner (madsim).
//!
//! Every service of the control plane runs, unchanged, on its own simulated node: a broker
//! node (RabbitMQ's role), a database node (MySQL's role), keystone, placement, conductor,
//! scheduler, nova-api workers, the Rally-style client and one node per compute host whose hypervisor is a latency and failure model.
//! Time, network and randomness come from the seed: same seed, same run, byte for byte.
//! Only built with `--cfg madsim` (`cargo sim ...`).
#![cfg(madsim)]

pub mod broker;
pub mod chaos;
pub mod conn;
pub mod cpu;
pub mod dbnode;
pub mod galera;
pub mod host;
pub mod http;
pub mod knobs;
pub mod nodes;
pub mod run;

pub use run::run;
