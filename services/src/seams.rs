//! The seams: every external system the control plane talks to sits behind one of these
//! traits, with a simulated implementation (crate `stackbed-sim`) and a real one (crate
//! `stackbed-real`). Services hold `Arc<dyn Trait>` and never know which world they run in.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use stackbed_core::model::{ComputeNode, Image, Instance, RequestSpec};
use stackbed_core::store::{DbError, Op, OpResult};
use stackbed_core::token::TokenPayload;

// ---------------------------------------------------------------------------------------
// Database
// ---------------------------------------------------------------------------------------

/// Transactions with compare-and-swap (see `stackbed_core::store` for the semantics).
#[async_trait]
pub trait Database: Send + Sync + 'static {
    async fn execute(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, DbError>;
}

pub type Db = Arc<dyn Database>;

// ---------------------------------------------------------------------------------------
// Message bus
// ---------------------------------------------------------------------------------------

/// Every RPC the services exchange, as oslo.messaging methods with their arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Rpc {
    // identity (keystone)
    Authenticate {
        user: String,
        password: String,
        project: String,
    },
    Token(String),
    ValidateToken {
        token: String,
    },
    TokenInfo(TokenPayload),
    // conductor
    ScheduleAndBuildInstances {
        spec: RequestSpec,
    },
    /// A compute asks for a reschedule: the remaining alternates and why the host failed.
    BuildInstances {
        spec: RequestSpec,
        alternates: Vec<String>,
        failure: String,
    },
    // scheduler
    SelectDestinations {
        spec: RequestSpec,
    },
    /// Icehouse: the conductor casts the request to the scheduler, which casts to a compute.
    RunInstance {
        spec: RequestSpec,
    },
    /// The claimed host first, then unclaimed alternates.
    Destinations {
        hosts: Vec<String>,
    },
    NoValidHost {
        reason: String,
    },
    // compute
    BuildAndRunInstance {
        spec: RequestSpec,
        alternates: Vec<String>,
    },
    TerminateInstance {
        uuid: String,
    },
    /// A remote error, as oslo.messaging re-raises it on the caller's side.
    Error(String),
}

impl Rpc {
    /// oslo.messaging method name, for logs and the event digest.
    pub fn method(&self) -> &'static str {
        match self {
            Rpc::Authenticate { .. } => "authenticate",
            Rpc::Token(_) => "token",
            Rpc::ValidateToken { .. } => "validate_token",
            Rpc::TokenInfo(_) => "token_info",
            Rpc::ScheduleAndBuildInstances { .. } => "schedule_and_build_instances",
            Rpc::BuildInstances { .. } => "build_instances",
            Rpc::SelectDestinations { .. } => "select_destinations",
            Rpc::RunInstance { .. } => "run_instance",
            Rpc::Destinations { .. } => "destinations",
            Rpc::NoValidHost { .. } => "no_valid_host",
            Rpc::BuildAndRunInstance { .. } => "build_and_run_instance",
            Rpc::TerminateInstance { .. } => "terminate_instance",
            Rpc::Error(_) => "error",
        }
    }
}

/// Where a call's reply goes: the caller's reply queue and its message id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    pub queue: String,
    pub msg_id: u64,
}

/// A message delivered to a consumer of a topic.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub msg: Rpc,
    /// Set for calls; the consumer answers with [`Bus::reply`].
    pub reply_to: Option<ReplyTo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BusError {
    /// No reply within the timeout (oslo.messaging's MessagingTimeout).
    #[error("no reply to {method} on {topic} within {timeout_ms} ms")]
    Timeout { topic: String, method: &'static str, timeout_ms: u64 },
    #[error("message bus unavailable: {0}")]
    Unavailable(String),
}

/// oslo.messaging's RPC over a broker: topics (queues), cast, call with timeout, reply
/// routing through per-process reply queues.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Fire and forget.
    async fn cast(&self, topic: &str, msg: Rpc) -> Result<(), BusError>;
    /// Send and wait for the reply or the timeout.
    async fn call(&self, topic: &str, msg: Rpc, timeout: Duration) -> Result<Rpc, BusError>;
    /// Answer a call.
    async fn reply(&self, to: ReplyTo, msg: Rpc) -> Result<(), BusError>;
    /// Start consuming `topic`; messages arrive on the returned channel.
    async fn consume(&self, topic: &str) -> Result<tokio::sync::mpsc::UnboundedReceiver<Incoming>, BusError>;
}

pub type BusRef = Arc<dyn Bus>;

// ---------------------------------------------------------------------------------------
// Hypervisor (and, for now, the host's share of networking)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HvError {
    /// Unexpected failure: nova reschedules the build to an alternate host.
    #[error("reschedulable: {0}")]
    Reschedule(String),
    /// Build aborted (network, image, flavor-size errors): ERROR, no reschedule.
    #[error("build aborted: {0}")]
    Abort(String),
}

/// Time spent in the sub-phases of a spawn, for the per-action table.
pub type PhaseTimings = Vec<(&'static str, f64)>;

/// nova's virt driver interface, boot-relevant part.
#[async_trait]
pub trait Hypervisor: Send + Sync + 'static {
    /// The host's capabilities as the compute reports them (compute_nodes row).
    fn node_info(&self) -> ComputeNode;
    /// Which hypervisor actually runs guests here: `sim`, `test`, `kvm` or `qemu` (TCG).
    fn kind(&self) -> &'static str;
    /// Network allocation for the instance (ports, IPs); neutron's share of the build.
    async fn allocate_network(&self, instance: &Instance) -> Result<(), HvError>;
    async fn deallocate_network(&self, instance: &Instance) -> Result<(), HvError>;
    /// Block device mapping (root disk from the image here).
    async fn block_device_mapping(&self, instance: &Instance) -> Result<(), HvError>;
    /// driver.spawn: fetch the image into the cache, create the disk, define and start the
    /// guest, wait for network-vif-plugged and for the guest to come up.
    async fn spawn(&self, instance: &Instance, image: &Image) -> Result<PhaseTimings, HvError>;
    async fn destroy(&self, instance: &Instance) -> Result<(), HvError>;
    /// The uuids of the guests the hypervisor runs or keeps defined (nova's
    /// `driver.list_instance_uuids`): what survives a nova-compute restart, because libvirt
    /// keeps its domains when the service dies; a host power-off loses them.
    async fn list_instance_uuids(&self) -> Result<Vec<String>, HvError>;
}

pub type HvRef = Arc<dyn Hypervisor>;
