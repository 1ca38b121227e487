//! stackbed-services: the control plane's services as async code over the seams.
//!
//! The only runtime this crate imports is `tokio`, which is `madsim-tokio`: real tokio in a
//! normal build, the madsim simulator under `--cfg madsim`. It never names a concrete
//! seam implementation: those live in `stackbed-sim` and `stackbed-real`.

pub mod anomalies;
pub mod api;
pub mod checks;
pub mod clock;
pub mod compute;
pub mod conductor;
pub mod conformance;
pub mod ctx;
pub mod db_retry;
pub mod dbx;
pub mod identity;
pub mod metrics;
pub mod monitor;
pub mod placement;
pub mod reply;
pub mod report;
pub mod rpc;
pub mod runner;
pub mod scheduler;
pub mod seams;
pub mod timeline;
