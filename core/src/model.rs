//! Domain records shared by every service and stored through the database seam.
//!
//! Field names follow nova's where nova has one (`vm_state`, `task_state`, `power_state`,
//! `launched_at`), so that a reader who knows nova recognises them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::states::{PowerState, TaskState, VmState};

/// Milliseconds since the start of the run, on the run's clock (simulated or real).
pub type Millis = u64;

/// A resource class tracked by placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceClass {
    #[serde(rename = "VCPU")]
    Vcpu,
    #[serde(rename = "MEMORY_MB")]
    MemoryMb,
    #[serde(rename = "DISK_GB")]
    DiskGb,
}

impl ResourceClass {
    pub const ALL: [ResourceClass; 3] = [Self::Vcpu, Self::MemoryMb, Self::DiskGb];

    pub fn name(self) -> &'static str {
        match self {
            Self::Vcpu => "VCPU",
            Self::MemoryMb => "MEMORY_MB",
            Self::DiskGb => "DISK_GB",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Self::Vcpu => 0,
            Self::MemoryMb => 1,
            Self::DiskGb => 2,
        }
    }
}

/// Amounts of the three classes, indexed by [`ResourceClass::index`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources(pub [u64; 3]);

impl Resources {
    pub fn new(vcpus: u64, memory_mb: u64, disk_gb: u64) -> Self {
        Resources([vcpus, memory_mb, disk_gb])
    }
    pub fn get(&self, class: ResourceClass) -> u64 {
        self.0[class.index()]
    }
    pub fn add(&self, other: &Resources) -> Resources {
        Resources([self.0[0] + other.0[0], self.0[1] + other.0[1], self.0[2] + other.0[2]])
    }
    /// Subtraction that reports underflow instead of wrapping: an underflow is a bookkeeping bug.
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        Some(Resources([
            self.0[0].checked_sub(other.0[0])?,
            self.0[1].checked_sub(other.0[1])?,
            self.0[2].checked_sub(other.0[2])?,
        ]))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flavor {
    pub name: String,
    pub vcpus: u64,
    pub ram_mb: u64,
    /// The root disk (nova's `root_gb`).
    pub disk_gb: u64,
    /// nova's `ephemeral_gb`: local disk besides the root disk.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ephemeral_gb: u64,
    /// nova's `swap`, in MB.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub swap: u64,
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Flavor {
    /// What placement is asked for (nova's `resources_from_flavor`): DISK_GB is the root
    /// disk, the ephemeral disk and the swap rounded up to whole GB.
    pub fn resources(&self) -> Resources {
        Resources::new(self.vcpus, self.ram_mb, self.disk_gb + self.ephemeral_gb + self.swap.div_ceil(1024))
    }

    /// The local disk in MB as Icehouse's DiskFilter asks for it: 1024 * (root_gb +
    /// ephemeral_gb) + swap, the swap not rounded.
    pub fn disk_mb(&self) -> u64 {
        1024 * (self.disk_gb + self.ephemeral_gb) + self.swap
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub size_mb: u64,
    pub disk_format: String,
    /// Glance image properties, e.g. `hypervisor_type`, `hw_architecture`, `vm_mode`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// What a compute host reports about itself (nova's compute_nodes row, minus usage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputeNode {
    pub host: String,
    pub vcpus: u64,
    pub ram_mb: u64,
    pub disk_gb: u64,
    pub hypervisor_type: String,
    pub hypervisor_version: u64,
    pub cpu_arch: String,
    /// vm modes the hypervisor supports (`hvm`, `xen`, `exe`).
    pub vm_modes: Vec<String>,
    /// Resource tracker stats, refreshed by the compute's periodic task: instances on the
    /// host, and those in a build, resize, snapshot or migration task (nova's num_io_ops).
    #[serde(default)]
    pub num_instances: u64,
    #[serde(default)]
    pub num_io_ops: u64,
    /// Free-form stats from the scenario (ComputeCapabilities reads `capabilities:stats:x`).
    #[serde(default)]
    pub stats: BTreeMap<String, String>,
    /// nova's `supported_instances`: the (architecture, hypervisor type, vm mode) triples
    /// the hypervisor offers. `None`: one per vm mode from `cpu_arch` and
    /// `hypervisor_type`, and the same with `qemu` on a KVM host (libvirt lists both
    /// domain types); see [`ComputeNode::supported_instances`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_instances: Option<Vec<[String; 3]>>,
    /// nova's `cpu_info`: a JSON string (ComputeCapabilities loads it to walk
    /// `capabilities:cpu_info:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_info: Option<String>,
    /// Host metrics by name (nova's monitors' `MonitorMetric` values: MetricsFilter and
    /// MetricsWeigher).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

impl ComputeNode {
    /// The (architecture, hypervisor type, vm mode) triples the host advertises, as written
    /// (not canonicalised).
    pub fn supported_instances(&self) -> Vec<[&str; 3]> {
        let mut out = Vec::new();
        self.any_supported_instance(|t| {
            out.push(t);
            false
        });
        out
    }

    /// Whether `f` holds for one of [`ComputeNode::supported_instances`], in their order,
    /// without collecting them.
    pub fn any_supported_instance<'a>(&'a self, mut f: impl FnMut([&'a str; 3]) -> bool) -> bool {
        if let Some(list) = &self.supported_instances {
            return list.iter().any(|[a, h, m]| f([a.as_str(), h.as_str(), m.as_str()]));
        }
        let (arch, hv) = (self.cpu_arch.as_str(), self.hypervisor_type.as_str());
        let kvm = hv.eq_ignore_ascii_case("kvm");
        self.vm_modes.iter().any(|mode| f([arch, hv, mode.as_str()]) || (kvm && f([arch, "qemu", mode.as_str()])))
    }
}

/// nova's services row: heartbeat and operator/auto disable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub host: String,
    pub binary: String,
    pub last_seen_ms: Millis,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    /// Consecutive build failures (reset on a success), as nova's compute tracks them.
    pub failed_builds: u32,
}

/// One inventory of a resource provider.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub total: u64,
    pub reserved: u64,
    pub min_unit: u64,
    pub max_unit: u64,
    pub step_size: u64,
    pub allocation_ratio: f64,
}

impl Inventory {
    /// An inventory any amount from 1 to `total` can be taken from, one unit at a time.
    pub fn new(total: u64, reserved: u64, allocation_ratio: f64) -> Inventory {
        Inventory { total, reserved, min_unit: 1, max_unit: total, step_size: 1, allocation_ratio }
    }

    /// Placement's capacity: (total - reserved) * allocation_ratio, rounded down.
    pub fn capacity(&self) -> u64 {
        // `as` truncates toward zero: floor for these non-negative products, without the libm
        // call `floor` costs on the scheduler's hot path.
        ((self.total.saturating_sub(self.reserved)) as f64 * self.allocation_ratio) as u64
    }
}

/// A placement resource provider (one per compute node here). Its generation is the row
/// version held by the database seam, so every write is a compare-and-swap on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    pub host: String,
    /// Indexed by [`ResourceClass::index`].
    pub inventories: [Inventory; 3],
    pub used: Resources,
}

/// A consumer's allocation against one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub consumer: String,
    pub host: String,
    pub resources: Resources,
    pub project: String,
}

/// The request spec carried from the API through conductor and scheduler to the compute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    pub instance_uuid: String,
    pub project: String,
    pub user: String,
    pub flavor: Flavor,
    pub image: Image,
    pub server_group: Option<String>,
    /// Hosts already tried (Icehouse RetryFilter reads these; current nova keeps the list too).
    #[serde(default)]
    pub tried_hosts: Vec<String>,
    /// When the API accepted the request; the instance's created_at (so that boot latency
    /// from the server's timestamps covers the whole request, as a user sees it).
    #[serde(default)]
    pub accepted_at_ms: Millis,
}

/// The API's BuildRequest: exists until the conductor has created the instance in its cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRequest {
    pub spec: RequestSpec,
    pub created_at_ms: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub uuid: String,
    pub name: String,
    pub project: String,
    pub user: String,
    pub flavor: Flavor,
    pub image: String,
    pub vm_state: VmState,
    pub task_state: Option<TaskState>,
    pub power_state: PowerState,
    pub host: Option<String>,
    pub created_at_ms: Millis,
    pub launched_at_ms: Option<Millis>,
    pub deleted: bool,
    /// The last fault, as nova's instance_faults (message only).
    pub fault: Option<String>,
    /// Scheduling attempts made so far (1 for the first host).
    pub attempts: u32,
}

impl Instance {
    /// The status the API shows (nova's vm_state to status mapping, boot-relevant part).
    pub fn status(&self) -> &'static str {
        if self.deleted {
            return "DELETED";
        }
        match self.vm_state {
            VmState::Building => "BUILD",
            VmState::Active => "ACTIVE",
            VmState::Error => "ERROR",
            VmState::Deleted => "DELETED",
            VmState::Stopped => "SHUTOFF",
            VmState::Paused => "PAUSED",
            VmState::Suspended => "SUSPENDED",
            VmState::Rescued => "RESCUE",
            VmState::Resized => "VERIFY_RESIZE",
            VmState::SoftDeleted => "SOFT_DELETED",
            VmState::Shelved | VmState::ShelvedOffloaded => "SHELVED",
        }
    }
}

/// Per-project usage row maintained in the same transaction as the instance it counts
/// (an index, so that counting-mode quota is a read of one row, not a scan).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectUsage {
    pub instances: u64,
    pub cores: u64,
    pub ram_mb: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLimits {
    pub instances: i64,
    pub cores: i64,
    pub ram_mb: i64,
}

impl Default for QuotaLimits {
    /// nova's defaults: 10 instances, 20 cores, 51200 MB of RAM.
    fn default() -> Self {
        QuotaLimits { instances: 10, cores: 20, ram_mb: 51200 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupPolicy {
    Affinity,
    AntiAffinity,
    /// Weighed, not filtered: ServerGroupSoftAffinityWeigher prefers hosts with members.
    SoftAffinity,
    /// Weighed, not filtered: ServerGroupSoftAntiAffinityWeigher prefers hosts without.
    SoftAntiAffinity,
}

/// A host aggregate: a named set of hosts with metadata (`availability_zone`,
/// `filter_tenant_id`, `instance_type`, extra_specs keys, `*_weight_multiplier`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub name: String,
    pub hosts: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

/// nova's scheduler hints (`os:scheduler_hints`) the filters read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerHints {
    /// SameHostFilter: land on a host holding one of these instances (uuids or names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub same_host: Vec<String>,
    /// DifferentHostFilter: avoid hosts holding any of these instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub different_host: Vec<String>,
    /// SimpleCIDRAffinityFilter: an IPv4 address; hosts in `cidr` around it pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_near_host_ip: Option<String>,
    /// SimpleCIDRAffinityFilter's prefix length, written `/24` (nova's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// JsonFilter's query, a JSON string such as `[">=", "$free_ram_mb", 1024]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The server group (name or uuid) the instance joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl SchedulerHints {
    /// No hints at all (a `const` so that views can borrow it for any lifetime).
    pub const NONE: SchedulerHints = SchedulerHints {
        same_host: Vec::new(),
        different_host: Vec::new(),
        build_near_host_ip: None,
        cidr: None,
        query: None,
        group: None,
    };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerGroup {
    pub name: String,
    pub policy: GroupPolicy,
    /// Hard anti-affinity's `max_server_per_host` rule (default 1).
    pub max_server_per_host: u32,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub quota: QuotaLimits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub password_sha256: String,
    /// Role assignments on projects: project id to role names.
    pub roles: BTreeMap<String, Vec<String>>,
}

/// Every value the database seam stores. One enum keeps the seam typed without generics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    ComputeNode(ComputeNode),
    Service(ServiceRecord),
    Provider(Provider),
    Allocation(Allocation),
    BuildRequest(BuildRequest),
    Instance(Instance),
    ProjectUsage(ProjectUsage),
    ServerGroup(ServerGroup),
    Project(Project),
    User(User),
}

/// The tables. Keys are strings; ordered collections keep every scan deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Table {
    ComputeNodes,
    Services,
    Providers,
    Allocations,
    /// Placement's index of allocations by resource provider: key `{host}/{consumer}`,
    /// written in the same transaction as the allocation (the provider column's index in
    /// placement's schema), so a provider's allocations are a prefix scan.
    ProviderAllocations,
    BuildRequests,
    Instances,
    ProjectUsages,
    ServerGroups,
    Projects,
    Users,
}

impl Table {
    pub const ALL: [Table; 11] = [
        Table::ComputeNodes,
        Table::Services,
        Table::Providers,
        Table::Allocations,
        Table::ProviderAllocations,
        Table::BuildRequests,
        Table::Instances,
        Table::ProjectUsages,
        Table::ServerGroups,
        Table::Projects,
        Table::Users,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::ComputeNodes => "compute_nodes",
            Table::Services => "services",
            Table::Providers => "resource_providers",
            Table::Allocations => "allocations",
            Table::ProviderAllocations => "allocations_by_provider",
            Table::BuildRequests => "build_requests",
            Table::Instances => "instances",
            Table::ProjectUsages => "project_usages",
            Table::ServerGroups => "server_groups",
            Table::Projects => "projects",
            Table::Users => "users",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}
