//! The seams: every external system the control plane talks to sits behind one of these
//! traits, with a simulated implementation (crate `stackbed-sim`) and a real one (crate
//! `stackbed-real`). Services hold `Arc<dyn Trait>` and never know which world they run in.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use stackbed_core::model::{ComputeNode, Image, Instance, RequestSpec, ServiceRecord};
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
    /// One create request's servers (several for a multi-create), scheduled together.
    ScheduleAndBuildInstances {
        specs: Vec<RequestSpec>,
    },
    /// A compute's `Service.save()` (and the resource tracker's compute node, when it
    /// changed), which nova-compute cannot write itself: it has no database access and
    /// asks the conductor (`object_action`). Answered with [`Rpc::Saved`].
    ServiceUpdate {
        host: String,
        service: ServiceRecord,
        node: Option<ComputeNode>,
    },
    Saved,
    /// A compute asks for a reschedule: the remaining alternates and why the host failed.
    BuildInstances {
        spec: RequestSpec,
        alternates: Vec<String>,
        failure: String,
    },
    // scheduler
    /// One call for every server of a create request (nova's `num_instances`).
    SelectDestinations {
        specs: Vec<RequestSpec>,
    },
    /// Icehouse: the conductor casts the request to the scheduler, which casts to a compute.
    RunInstance {
        spec: RequestSpec,
    },
    /// Per server of the call, in its order: the claimed host first, then unclaimed
    /// alternates.
    Destinations {
        hosts: Vec<Vec<String>>,
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
    /// A server's call-monitor heartbeat: "still working on it" (not an answer).
    Heartbeat,
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
            Rpc::ServiceUpdate { .. } => "object_action",
            Rpc::Saved => "saved",
            Rpc::BuildInstances { .. } => "build_instances",
            Rpc::SelectDestinations { .. } => "select_destinations",
            Rpc::RunInstance { .. } => "run_instance",
            Rpc::Destinations { .. } => "destinations",
            Rpc::NoValidHost { .. } => "no_valid_host",
            Rpc::BuildAndRunInstance { .. } => "build_and_run_instance",
            Rpc::TerminateInstance { .. } => "terminate_instance",
            Rpc::Error(_) => "error",
            Rpc::Heartbeat => "heartbeat",
        }
    }
}

/// Where a call's reply goes: the caller's reply queue and its message id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    pub queue: String,
    pub msg_id: u64,
    /// oslo.messaging's `_call_monitor_timeout`: set on a monitored call, so that the
    /// server sends [`Rpc::Heartbeat`] every half of it while it works (see `reply.rs`).
    pub monitor_ms: Option<u64>,
    /// The run's serial number of this call, for the oracle only (the invariant that a
    /// reply completes its own call, once): the server copies it into its reply and no
    /// service reads it. 0 where nothing checks (real runs).
    pub call: u64,
}

impl ReplyTo {
    /// The reply address of call `msg_id` from `queue`, monitored when `monitor` is set;
    /// `call` is the oracle's number for it.
    pub fn new(queue: &str, msg_id: u64, monitor: Option<Duration>, call: u64) -> ReplyTo {
        let monitor_ms = monitor.map(|m| m.as_millis().try_into().unwrap_or(u64::MAX));
        ReplyTo { queue: queue.to_string(), msg_id, monitor_ms, call }
    }
}

/// Which delivery an ack is for: the tag the broker gave it on one connection. A client
/// that reconnected holds a new connection; acks of the old one's tags acknowledge nothing
/// (the broker requeued those messages when the old connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeliveryTag {
    /// The client's connection generation (1 for its first connection).
    pub connection: u64,
    pub tag: u64,
}

/// A message as a broker stores it (both brokers: the simulated node and the in-process
/// bus).
#[derive(Debug, Clone)]
pub struct Envelope {
    pub msg: Rpc,
    pub reply_to: Option<ReplyTo>,
    pub msg_id: String,
    /// Set on replies: the msg_id of the call answered.
    pub correlation: Option<u64>,
    /// On replies, the oracle's number of the call answered (`ReplyTo::call`); else 0.
    pub answers: u64,
}

/// A message delivered to a consumer of a topic.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub msg: Rpc,
    /// Set for calls; the consumer answers with [`Bus::reply`].
    pub reply_to: Option<ReplyTo>,
    /// oslo.messaging's `_unique_id`: the same for every copy of one publish (a
    /// redelivery, a duplicate), different for every publish, unique across processes.
    pub msg_id: String,
    /// The broker delivered this message before, to a connection that closed without
    /// acknowledging it.
    pub redelivered: bool,
    /// Acknowledge with [`Bus::ack`].
    pub tag: DeliveryTag,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BusError {
    /// No reply within the timeout (oslo.messaging's MessagingTimeout).
    #[error("no reply to {method} on {topic} within {timeout_ms} ms")]
    Timeout { topic: String, method: &'static str, timeout_ms: u64 },
    #[error("message bus unavailable: {0}")]
    Unavailable(String),
    /// The server answered with an exception (oslo.messaging's RemoteError).
    #[error("remote error: {0}")]
    Remote(String),
}

impl BusError {
    /// MessagingTimeout for a call of `method` on `topic` that waited `timeout`.
    pub fn timeout(topic: &str, method: &'static str, timeout: Duration) -> BusError {
        let timeout_ms = timeout.as_millis().try_into().unwrap_or(u64::MAX);
        BusError::Timeout { topic: topic.to_string(), method, timeout_ms }
    }
}

/// How a process declares its queues and publishes (oslo.messaging's options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BusOptions {
    /// `amqp_durable_queues`: topic queues declared durable and messages published
    /// persistent, so both survive a broker restart. Reply queues are always transient.
    pub durable: bool,
}

/// oslo.messaging's RPC over a broker: topics (queues), cast, call with timeout, reply
/// routing through per-process reply queues, acknowledgements.
///
/// Every delivery from [`Bus::consume`] must be acknowledged with [`Bus::ack`]; until it
/// is, the broker holds it and gives it to another consumer if this connection closes.
/// When to ack is the RPC server's choice (`rpc::serve`). A client whose connection is
/// lost reconnects by itself and consumes its topics again on the same channel.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Fire and forget.
    async fn cast(&self, topic: &str, msg: Rpc) -> Result<(), BusError>;
    /// Send and wait for the reply or the timeout.
    async fn call(&self, topic: &str, msg: Rpc, timeout: Duration) -> Result<Rpc, BusError> {
        self.call_monitored(topic, msg, timeout, None).await
    }
    /// A call that, with `monitor`, also fails (MessagingTimeout) once the server has sent
    /// no heartbeat for `monitor` (oslo.messaging's `call_monitor_timeout`).
    async fn call_monitored(
        &self,
        topic: &str,
        msg: Rpc,
        timeout: Duration,
        monitor: Option<Duration>,
    ) -> Result<Rpc, BusError>;
    /// Answer a call.
    async fn reply(&self, to: ReplyTo, msg: Rpc) -> Result<(), BusError>;
    /// Declare `topic`'s queue (durable or not as [`BusOptions`] say), so that what is
    /// published to it waits for a consumer; a publish to a queue nobody declared is lost,
    /// as through RabbitMQ's default exchange. Declared again after every reconnect.
    async fn declare(&self, topic: &str) -> Result<(), BusError>;
    /// Declare `topic` and consume it; deliveries arrive on the returned channel. It is
    /// unbounded as oslo's default prefetch (`rabbit_qos_prefetch_count = 0`) is: the broker
    /// pushes every ready message and the client buffers them unacknowledged; the broker's
    /// queue limit (`stackbed_core::queue::MAX_READY`) bounds them.
    async fn consume(&self, topic: &str) -> Result<tokio::sync::mpsc::UnboundedReceiver<Incoming>, BusError>;
    /// Acknowledge a delivery. An error: the connection it came on is gone, so the broker
    /// gives (or gave) it to a consumer again.
    async fn ack(&self, tag: DeliveryTag) -> Result<(), BusError>;
}

pub type BusRef = Arc<dyn Bus>;

// ---------------------------------------------------------------------------------------
// CPU
// ---------------------------------------------------------------------------------------

/// The CPU a service process computes on. In the simulator, code takes no time, so a
/// service says what its work costs (`scenario.model.service_time`) and the simulated CPU
/// makes it take that long: one process runs one piece of CPU work at a time (an eventlet
/// hub), and a slow-host fault stretches it. In the real world the code spends real CPU
/// and `spend` adds nothing.
#[async_trait]
pub trait Cpu: Send + Sync + 'static {
    /// Spends `cost` of this process's CPU, after the work queued before it.
    async fn spend(&self, cost: Duration);
}

pub type CpuRef = Arc<dyn Cpu>;

/// The real world's CPU: the work already took its time.
pub struct RealCpu;

#[async_trait]
impl Cpu for RealCpu {
    async fn spend(&self, _cost: Duration) {}
}

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

// ---------------------------------------------------------------------------------------
// HTTP (request/response): the REST calls of OpenStack (clients to nova-api, nova-api to
// keystone, scheduler, conductor and compute to placement). Only nova's internal RPC goes
// through the bus.
// ---------------------------------------------------------------------------------------

/// The HTTP services, by the name their endpoints are registered under (the node group
/// names of `stackbed_core::faults`).
pub const KEYSTONE: &str = "keystone";
pub const PLACEMENT: &str = "placement";
pub const NOVA_API: &str = "nova-api";

/// Every request waits at most this long for its response. keystoneauth's `timeout`, which
/// nova's `[placement]` and `[keystone_authtoken]` (`http_connect_timeout`) leave unset by
/// default, means no timeout at all; stackbed bounds every request instead (a stated limit,
/// not nova's behaviour), so a request to a partitioned service fails instead of hanging.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// Request and response bodies, typed (the JSON documents the APIs exchange). In the
/// simulator they travel by value, never serialised.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Empty,
    /// An error document: the message of a 4xx or 5xx.
    Error(String),
    // keystone
    /// POST /v3/auth/tokens, the password method scoped to a project.
    PasswordAuth {
        user: String,
        password: String,
        project: String,
    },
    /// The X-Subject-Token header: the token issued (POST) or to validate (GET).
    SubjectToken(String),
    /// GET /v3/auth/tokens: the validated token.
    TokenInfo(TokenPayload),
    // placement
    /// GET /allocation_candidates: every resource provider as one shared snapshot of the
    /// providers table (passed by value, not copied: the scheduler filters it itself).
    Providers(stackbed_core::store::Snapshot),
    /// GET /resource_providers/{uuid}/allocations: the consumers holding allocations there.
    Consumers(Vec<String>),
    /// PUT /allocations/{consumer}: the consumer's resources on one provider.
    Allocation {
        project: String,
        host: String,
        resources: stackbed_core::model::Resources,
    },
    // nova
    /// POST /servers.
    CreateServer {
        name: String,
        flavor: String,
        image: String,
        server_group: Option<String>,
        /// `min_count = max_count`: how many servers (1 unless a multi-create).
        count: u32,
    },
    /// A multi-create's answer: every new server's id, in order. (nova answers with the
    /// first server and, on request, a reservation id that lists the rest.)
    CreatedServers(Vec<String>),
    /// POST /os-server-groups.
    CreateServerGroup {
        name: String,
        policy: stackbed_core::model::GroupPolicy,
    },
    /// The id of what a POST created.
    Created(String),
    Server(crate::api::ServerView),
    Servers(Vec<crate::api::ServerView>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// `req-<caller node>-<boot>-<n>` (X-OpenStack-Request-ID); the client sets it.
    pub request_id: String,
    pub method: Method,
    pub path: String,
    /// X-Auth-Token.
    pub auth_token: Option<String>,
    pub body: Body,
}

impl HttpRequest {
    pub fn new(method: Method, path: impl Into<String>, body: Body) -> HttpRequest {
        HttpRequest { request_id: String::new(), method, path: path.into(), auth_token: None, body }
    }

    pub fn with_token(mut self, token: &str) -> HttpRequest {
        self.auth_token = Some(token.to_string());
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    /// The request's id, echoed as the server logged it.
    pub request_id: String,
    pub body: Body,
}

impl HttpResponse {
    pub fn new(status: u16, body: Body) -> HttpResponse {
        HttpResponse { status, request_id: String::new(), body }
    }

    pub fn error(status: u16, message: impl Into<String>) -> HttpResponse {
        HttpResponse::new(status, Body::Error(message.into()))
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What a client sees when no response comes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HttpError {
    /// Every endpoint of the service refused the connection (or none is registered).
    #[error("{service}: connection refused by every endpoint ({endpoints} tried)")]
    ConnectionRefused { service: String, endpoints: usize },
    /// The connection broke before the response (the server died mid-request): the request
    /// may or may not have been executed.
    #[error("{service}: connection reset by {endpoint} during {method} {path}")]
    ConnectionReset { service: String, endpoint: String, method: &'static str, path: String },
    /// No response within the request's timeout: it may or may not have been executed.
    #[error("{service}: no response to {method} {path} within {timeout_ms} ms")]
    Timeout { service: String, method: &'static str, path: String, timeout_ms: u64 },
    /// The server side could not start (its address is taken, say).
    #[error("cannot serve {service}: {reason}")]
    CannotServe { service: String, reason: String },
}

impl HttpError {
    /// `endpoint` of `service` broke the connection during `method path`.
    pub fn reset(service: &str, endpoint: &str, method: &'static str, path: String) -> HttpError {
        HttpError::ConnectionReset { service: service.to_string(), endpoint: endpoint.to_string(), method, path }
    }

    /// `service` did not answer `method path` within `timeout`.
    pub fn timeout(service: &str, method: &'static str, path: String, timeout: std::time::Duration) -> HttpError {
        HttpError::Timeout { service: service.to_string(), method, path, timeout_ms: timeout.as_millis() as u64 }
    }
}

/// Serves one service's requests: one call per request, concurrently.
#[async_trait]
pub trait HttpHandler: Send + Sync + 'static {
    async fn handle(&self, req: HttpRequest) -> HttpResponse;
}

pub type HandlerRef = Arc<dyn HttpHandler>;

/// A node's HTTP stack: the client side, through the service's endpoint list (a load
/// balancer in front of the workers: round-robin over the endpoints, the next one tried on
/// a refused connection; a reset or a timeout is returned, never retried, since the request
/// may have run), and the server side for the services this node runs.
#[async_trait]
pub trait Http: Send + Sync + 'static {
    /// Sends `req` (its request id set by the client) and waits at most `timeout`.
    async fn request(&self, service: &str, req: HttpRequest, timeout: Duration) -> Result<HttpResponse, HttpError>;
    /// Serves `service` on this node with `handler` until the node goes away; returns only
    /// if the service cannot be served (address in use, say).
    async fn serve(&self, service: &str, handler: HandlerRef) -> Result<(), HttpError>;
}

pub type HttpRef = Arc<dyn Http>;

/// Request ids unique across callers and restarts: the caller's node name, the instant
/// (ms) its HTTP stack started, and a counter.
#[derive(Debug)]
pub struct RequestIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    pub fn new(node: &str, started_ms: u64) -> RequestIds {
        RequestIds { prefix: format!("req-{node}-{started_ms}"), next: std::sync::atomic::AtomicU64::new(0) }
    }

    pub fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        format!("{}-{n}", self.prefix)
    }
}
