//! stackbed-core: the control plane's pure logic. Nothing here performs I/O, reads a clock
//! or imports an async runtime: time and randomness come in as arguments, decisions go out
//! as values (the sans-IO style). `tests/tests/architecture.rs` enforces that.

pub mod amqp_conn;
pub mod cpu_topology;
pub mod db_retry;
pub mod dist;
pub mod extra_specs;
pub mod faults;
pub mod galera;
pub mod gate;
pub mod image_model;
pub mod invariants;
pub mod model;
pub mod placement;
pub mod policy;
pub mod proxy;
pub mod queue;
pub mod quota;
pub mod scenario;
pub mod scheduler;
pub mod sla;
pub mod states;
pub mod stats;
pub mod store;
pub mod strategy;
pub mod sync;
pub mod token;
pub mod trace;
