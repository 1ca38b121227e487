//! Scenario files: one TOML file describes a run (topology, flavors, images, tenants,
//! control knobs, workload, host model, seeds). Parsing never panics: a malformed file gives
//! a [`ScenarioError`] naming the file, the line and the field.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::dist::Dist;
use crate::model::{Aggregate, Flavor, Image, QuotaLimits, SchedulerHints};
use crate::scheduler::{FilterKind, HostAggregates, SchedulerConfig, WeigherKind};

#[cfg(test)]
mod fidelity_tests;
mod overrides;
mod schedule;
pub mod shrink;
mod spans;
#[cfg(test)]
mod tests;
mod validate;

pub use overrides::{apply_overrides, Override};
pub use schedule::{
    FaultDecl, FaultKind, Heal, Offset, PhasesDecl, RandomFaults, RangeValue, Ranged, MAX_RANDOM_FAULTS,
};
use spans::{field_at, line_col, span_of};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}:{line}:{column}: field `{field}`: {message}")]
pub struct ScenarioError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// A duration written as `"250ms"`, `"10s"`, `"1.5s"`, `"10m"` or `"2h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn ms(self) -> u64 {
        self.0.as_millis() as u64
    }
    pub fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("`{text}` is not a duration like \"10s\", \"250ms\", \"5m\", \"2h\""))?;
    let scale = match unit.trim() {
        "us" | "µs" => 0.000_001,
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("`{text}` needs a unit (us, ms, s, m, h)")),
        u => return Err(format!("unknown unit `{u}` in `{text}` (use us, ms, s, m, h)")),
    };
    if !value.is_finite() || value < 0.0 {
        return Err(format!("`{text}` must be a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.subsec_nanos() % 1_000_000 {
            0 => s.serialize_str(&format!("{}ms", self.0.as_millis())),
            _ => s.serialize_str(&format!("{}us", self.0.as_micros())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub scenario: Meta,
    pub topology: Topology,
    #[serde(default)]
    pub control: Control,
    /// Flavors the workload names (a trace adds its own).
    #[serde(default)]
    pub flavors: Vec<Flavor>,
    pub images: Vec<Image>,
    pub tenants: Vec<TenantGroup>,
    pub workload: Workload,
    /// Host aggregates (`[[aggregates]]`): metadata for the aggregate filters and weighers.
    #[serde(default)]
    pub aggregates: Vec<AggregateDecl>,
    #[serde(default)]
    pub model: HostModel,
    #[serde(default)]
    pub debug: Debug,
    /// Real guests (`[guest]`): the real build boots this kernel and initramfs for every
    /// instance (see `docs/real-guest.md`); the simulator ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Guest>,
    /// Scheduled faults (`[[faults]]`); see `schedule.rs` and [`Scenario::fault_schedule`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultDecl>,
    /// Faults drawn per seed in the chaos phase (`[random_faults]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_faults: Option<RandomFaults>,
    /// Chaos, heal and the liveness bound (`[phases]`).
    #[serde(default, skip_serializing_if = "PhasesDecl::is_default")]
    pub phases: PhasesDecl,
    /// Rally's SLAs (`[sla]`): a run that misses one fails.
    #[serde(default, skip_serializing_if = "crate::sla::Sla::is_empty")]
    pub sla: crate::sla::Sla,
    /// How `stackbed bench --baseline` judges this scenario (`[bench]`).
    #[serde(default, skip_serializing_if = "crate::gate::BenchDecl::is_default")]
    pub bench: crate::gate::BenchDecl,
    /// The `--set KEY=VALUE` overrides applied to the file, in order (`Scenario::load_with`);
    /// never read from the file, written to report.json so a replay can repeat them.
    #[serde(skip_deserializing, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    /// The trace the runner replays (`runner.kind = "trace"`), loaded with the scenario.
    #[serde(skip)]
    pub trace: Vec<crate::trace::TraceRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seeds a multi-seed run uses when the command line gives none.
    #[serde(default = "default_seeds")]
    pub seeds: SeedRange,
    /// Simulated time after which the run is stopped and reported as not finished.
    #[serde(default = "default_time_limit")]
    pub time_limit: Dur,
}

fn default_seeds() -> SeedRange {
    SeedRange { start: 1, count: 1 }
}
fn default_time_limit() -> Dur {
    Dur::secs(6 * 3600)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRange {
    pub start: u64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub hosts: Vec<HostGroup>,
    /// Worker processes per control service (`[topology.workers]`); unset counts take
    /// their defaults from the controller ([`Topology::workers`]).
    #[serde(default)]
    pub workers: WorkersDecl,
    /// The controller hosts the control services run on (`[topology.controller]`). Unset:
    /// every worker process has a core of its own, as if the controller had as many cores
    /// as processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<Controller>,
    /// The database (`[topology.db]`): one embedded node (the default), or a Galera
    /// cluster behind HAProxy.
    #[serde(default, skip_serializing_if = "DbTopology::is_default")]
    pub db: DbTopology,
}

/// `[topology.db]`. With `nodes = 1` (the default) the database is one node and nothing
/// else here applies; with more, nodes `db-1`..`db-N` form a Galera cluster
/// (`stackbed_core::galera`) that the services reach through one HAProxy node (`haproxy`,
/// `stackbed_core::proxy`) set up as `proxy` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbTopology {
    #[serde(default = "one_u32")]
    pub nodes: u32,
    /// `strict` (what Galera promises) or `faithful` (crashes lose what a lazy log had not
    /// synced, as Jepsen observed).
    #[serde(default)]
    pub mode: GaleraMode,
    /// `innodb_flush_log_at_trx_commit`: 1 (MariaDB's default) syncs at every commit; 0 and
    /// 2 about once a second.
    #[serde(default = "one_u32")]
    pub flush_log_at_trx_commit: u32,
    /// `wsrep_sync_wait` (0, Galera's default: a read may miss a commit made through
    /// another node; bit 1 set: reads wait for every certified write-set).
    #[serde(default)]
    pub wsrep_sync_wait: u32,
    /// How long after certification the other nodes apply a write-set.
    #[serde(default = "default_replication")]
    pub replication: Dur,
    /// How many write-sets a donor keeps for IST (gcache); further behind, a node gets an SST.
    #[serde(default = "default_gcache")]
    pub gcache_writesets: u32,
    /// HAProxy's set-up: `ha_guide` (default: one writer, the others `backup`, `inter 2000
    /// rise 2 fall 5`), `kolla`, `openstack_ansible`, `tripleo`, or `roundrobin` (every
    /// node a writer, HAProxy's default checks).
    #[serde(default = "default_proxy")]
    pub proxy: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GaleraMode {
    #[default]
    Strict,
    Faithful,
}

/// The most Galera nodes a scenario may have.
pub const MAX_DB_NODES: u32 = 9;

/// The proxy set-ups `[topology.db] proxy` names.
pub const DB_PROXIES: [&str; 5] = ["ha_guide", "kolla", "openstack_ansible", "tripleo", "roundrobin"];

fn default_replication() -> Dur {
    Dur(std::time::Duration::from_millis(1))
}
fn default_gcache() -> u32 {
    100_000
}
fn default_proxy() -> String {
    "ha_guide".into()
}

impl Default for DbTopology {
    fn default() -> DbTopology {
        DbTopology {
            nodes: 1,
            mode: GaleraMode::Strict,
            flush_log_at_trx_commit: 1,
            wsrep_sync_wait: 0,
            replication: default_replication(),
            gcache_writesets: default_gcache(),
            proxy: default_proxy(),
        }
    }
}

impl DbTopology {
    fn is_default(&self) -> bool {
        *self == DbTopology::default()
    }

    /// Whether the database is a Galera cluster.
    pub fn clustered(&self) -> bool {
        self.nodes > 1
    }

    /// The cluster's options for `stackbed_core::galera`.
    pub fn galera(&self) -> crate::galera::Options {
        crate::galera::Options {
            nodes: self.nodes as usize,
            mode: match self.mode {
                GaleraMode::Strict => crate::galera::Mode::Strict,
                GaleraMode::Faithful => crate::galera::Mode::Faithful,
            },
            flush: if self.flush_log_at_trx_commit == 1 {
                crate::galera::Flush::EachCommit
            } else {
                crate::galera::Flush::PerSecond
            },
            replication_ms: self.replication.ms(),
            sync_wait: self.wsrep_sync_wait & 1 == 1,
            gcache_writesets: self.gcache_writesets as usize,
        }
    }

    /// HAProxy's configuration over the cluster's nodes (`db-1`..).
    pub fn proxy_config(&self) -> crate::proxy::ProxyConfig {
        let names: Vec<String> = (1..=self.nodes).map(|i| format!("db-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        match self.proxy.as_str() {
            "kolla" => crate::proxy::ProxyConfig::kolla(&names),
            "openstack_ansible" => crate::proxy::ProxyConfig::openstack_ansible(&names),
            "tripleo" => crate::proxy::ProxyConfig::tripleo(&names),
            "roundrobin" => crate::proxy::ProxyConfig::haproxy(&names),
            _ => crate::proxy::ProxyConfig::ha_guide(&names),
        }
    }
}

/// `[topology.workers]` as written: how many processes of each control service run, each
/// on its own simulated node with its own connections and RNG stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersDecl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conductor: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystone: Option<u32>,
}

/// The most worker processes of one service (the simulated HTTP workers' addresses run
/// out after 254 per service).
pub const MAX_WORKERS: u32 = 254;

/// `[topology.controller]`: `count` controller hosts of `cores` CPU cores each. The
/// control services' workers are spread over them in turn (worker i on controller
/// `(i - 1) % count`), and every process on a controller computes on its cores: a piece of
/// work waits for its own process (one eventlet hub) and then for a free core of its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controller {
    #[serde(default = "one_u32")]
    pub count: u32,
    pub cores: u32,
}

/// The worker counts a run starts: [`Topology::workers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Workers {
    pub api: u32,
    pub conductor: u32,
    pub scheduler: u32,
    pub placement: u32,
    pub keystone: u32,
}

impl Topology {
    /// The worker counts, unset ones defaulted as the services default them. nova's API,
    /// conductor and scheduler run one worker per CPU of their host (`osapi_compute_workers`,
    /// `[conductor] workers`, `[scheduler] workers`: `processutils.get_worker_count()`), so
    /// with a `[topology.controller]` each runs `count × cores` workers; without one, one
    /// each. placement and keystone run under a WSGI server whose process count the
    /// deployment sets: one unless the scenario says more.
    pub fn workers(&self) -> Workers {
        let per_cpu = self.controller.map_or(1, |c| c.count.saturating_mul(c.cores));
        let w = self.workers;
        Workers {
            api: w.api.unwrap_or(per_cpu),
            conductor: w.conductor.unwrap_or(per_cpu),
            scheduler: w.scheduler.unwrap_or(per_cpu),
            placement: w.placement.unwrap_or(1),
            keystone: w.keystone.unwrap_or(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostGroup {
    pub count: u32,
    #[serde(default = "default_prefix")]
    pub name_prefix: String,
    pub vcpus: u64,
    pub ram_mb: u64,
    pub disk_gb: u64,
    #[serde(default = "default_hv_type")]
    pub hypervisor_type: String,
    #[serde(default = "default_hv_version")]
    pub hypervisor_version: u64,
    #[serde(default = "default_arch")]
    pub cpu_arch: String,
    #[serde(default)]
    pub reserved: Reserved,
    /// Free-form host stats (ComputeCapabilities reads `capabilities:stats:x`).
    #[serde(default)]
    pub stats: BTreeMap<String, String>,
    /// nova's `supported_instances`: `[[arch, hypervisor_type, vm_mode], ...]`. Unset: one
    /// triple from `cpu_arch`, `hypervisor_type` and `hvm` (and the same with `qemu` on a KVM
    /// host); `[]`: none (ImagePropertiesFilter then refuses any image that asks for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_instances: Option<Vec<[String; 3]>>,
    /// nova's `cpu_info`, a JSON object as a string (`capabilities:cpu_info:vendor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_info: Option<String>,
    /// Host metrics by name for MetricsFilter and MetricsWeigher (`{ "cpu.percent" = 0.4 }`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

impl HostGroup {
    /// The compute node a host of this group reports.
    pub fn node(&self, host: &str) -> crate::model::ComputeNode {
        crate::model::ComputeNode {
            host: host.to_string(),
            vcpus: self.vcpus,
            ram_mb: self.ram_mb,
            disk_gb: self.disk_gb,
            hypervisor_type: self.hypervisor_type.clone(),
            hypervisor_version: self.hypervisor_version,
            cpu_arch: self.cpu_arch.clone(),
            vm_modes: vec!["hvm".into()],
            num_instances: 0,
            num_io_ops: 0,
            stats: self.stats.clone(),
            supported_instances: self.supported_instances.clone(),
            cpu_info: self.cpu_info.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

fn default_prefix() -> String {
    "compute".into()
}
fn default_hv_type() -> String {
    "kvm".into()
}
fn default_hv_version() -> u64 {
    // libvirt 9.0.0 as nova encodes it: major * 1_000_000 + minor * 1_000 + micro.
    9_000_000
}
fn default_arch() -> String {
    "x86_64".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reserved {
    #[serde(default)]
    pub vcpus: u64,
    /// nova's reserved_host_memory_mb default.
    #[serde(default = "default_reserved_ram")]
    pub ram_mb: u64,
    #[serde(default)]
    pub disk_gb: u64,
}

fn default_reserved_ram() -> u64 {
    512
}

impl Default for Reserved {
    fn default() -> Self {
        Reserved { vcpus: 0, ram_mb: default_reserved_ram(), disk_gb: 0 }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Era {
    /// Placement, alternates, counting quota with recheck, ratios 4/1/1.
    #[default]
    Current,
    /// 2014.1: no placement; the scheduler gets a cast and casts to the compute, which
    /// claims on its own resource tracker; reschedules go back to the scheduler with the
    /// tried hosts (RetryFilter); ratios 16/1.5/1.
    Icehouse,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationRatio {
    pub cpu: f64,
    pub ram: f64,
    pub disk: f64,
}

impl Default for AllocationRatio {
    /// Initial defaults since 2023.1.
    fn default() -> Self {
        AllocationRatio { cpu: 4.0, ram: 1.0, disk: 1.0 }
    }
}

impl AllocationRatio {
    /// Icehouse (2014.1) defaults: cpu 16.0, ram 1.5, disk 1.0.
    pub fn icehouse() -> AllocationRatio {
        AllocationRatio { cpu: 16.0, ram: 1.5, disk: 1.0 }
    }
}

/// `[[aggregates]]`: a host aggregate. `hosts` selects by exact name (`compute-3`), name
/// prefix (`compute-*`) or numbered range (`compute-[1-8]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateDecl {
    pub name: String,
    pub hosts: Vec<String>,
    /// Aggregate metadata: extra_specs keys, `filter_tenant_id`, `instance_type`,
    /// `max_io_ops_per_host`, `<weigher>_weight_multiplier`, `cpu_allocation_ratio`, ...
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Makes the aggregate an availability zone (metadata `availability_zone`).
    #[serde(default)]
    pub availability_zone: Option<String>,
}

impl AggregateDecl {
    /// Whether `selector` (exact, `prefix*` or `prefix[a-b]`) names `host`.
    pub fn selects(selector: &str, host: &str) -> bool {
        if let Some(prefix) = selector.strip_suffix('*') {
            return host.starts_with(prefix);
        }
        if let Some((prefix, range)) = selector.strip_suffix(']').and_then(|s| s.rsplit_once('[')) {
            let Some((lo, hi)) = range.split_once('-') else { return false };
            let (Ok(lo), Ok(hi)) = (lo.trim().parse::<u64>(), hi.trim().parse::<u64>()) else { return false };
            return host.strip_prefix(prefix).and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| lo <= n && n <= hi);
        }
        selector == host
    }

    /// The aggregate with its hosts resolved against `hosts` and the zone in its metadata.
    pub fn resolve<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> Aggregate {
        let mut metadata = self.metadata.clone();
        if let Some(az) = &self.availability_zone {
            metadata.insert("availability_zone".into(), az.clone());
        }
        let hosts = hosts
            .into_iter()
            .filter(|h| self.hosts.iter().any(|s| AggregateDecl::selects(s, h)))
            .map(str::to_string)
            .collect();
        Aggregate { name: self.name.clone(), hosts, metadata }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerKnobs {
    /// Unset: the era's defaults (today's five; Icehouse adds Retry, AvailabilityZone, Ram).
    #[serde(default)]
    pub filters: Option<Vec<String>>,
    /// Weigher multipliers by name; weighers not named keep nova's default multiplier.
    #[serde(default)]
    pub weighers: BTreeMap<String, f64>,
    #[serde(default = "one")]
    pub host_subset_size: usize,
    #[serde(default = "three")]
    pub max_attempts: u32,
    /// The strategy ordering hosts, by its CLI name (`spread`, `pack`, `random`,
    /// `first-fit`, `best-fit`, `p2c`; see `strategy.rs`).
    #[serde(default = "default_strategy")]
    pub strategy: String,
    /// IoOpsFilter's limit (nova's `max_io_ops_per_host`, 8).
    #[serde(default = "default_max_io_ops")]
    pub max_io_ops_per_host: u64,
    /// NumInstancesFilter's limit (nova's `max_instances_per_host`, 50).
    #[serde(default = "default_max_instances")]
    pub max_instances_per_host: u64,
    /// IsolatedHostsFilter: hosts and images (by name) kept for each other.
    #[serde(default)]
    pub isolated_hosts: Vec<String>,
    #[serde(default)]
    pub isolated_images: Vec<String>,
    #[serde(default = "yes")]
    pub restrict_isolated_hosts_to_isolated_images: bool,
    /// The zone of hosts in no zone aggregate (nova's `default_availability_zone`).
    #[serde(default = "default_zone")]
    pub default_availability_zone: String,
    /// nova's `[metrics]` (MetricsFilter, MetricsWeigher; its multiplier is `weighers.metrics`).
    #[serde(default)]
    pub metrics: MetricsKnobs,
    /// ImagePropertiesFilter's architecture for images that name none (unset: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_properties_default_architecture: Option<String>,
}

/// `[control.scheduler.metrics]`: nova's `[metrics]` options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsKnobs {
    /// `"name1=1.0, name2=-1.0"`, as in nova.conf (elements that do not parse are ignored
    /// with a warning, as nova does).
    #[serde(default)]
    pub weight_setting: String,
    /// A host to weigh without one of the metrics fails the request (true).
    #[serde(default = "yes")]
    pub required: bool,
    /// The weight of such a host when not `required` (-10000.0).
    #[serde(default = "default_weight_of_unavailable")]
    pub weight_of_unavailable: f64,
}

fn default_weight_of_unavailable() -> f64 {
    -10000.0
}

impl Default for MetricsKnobs {
    fn default() -> Self {
        MetricsKnobs { weight_setting: String::new(), required: true, weight_of_unavailable: -10000.0 }
    }
}

fn default_strategy() -> String {
    "spread".into()
}
fn default_max_io_ops() -> u64 {
    8
}
fn default_max_instances() -> u64 {
    50
}
fn default_zone() -> String {
    "nova".into()
}
fn one() -> usize {
    1
}
fn three() -> u32 {
    3
}

impl Default for SchedulerKnobs {
    fn default() -> Self {
        SchedulerKnobs {
            filters: None,
            weighers: BTreeMap::new(),
            host_subset_size: 1,
            max_attempts: 3,
            strategy: default_strategy(),
            max_io_ops_per_host: default_max_io_ops(),
            max_instances_per_host: default_max_instances(),
            isolated_hosts: Vec::new(),
            isolated_images: Vec::new(),
            restrict_isolated_hosts_to_isolated_images: true,
            default_availability_zone: default_zone(),
            metrics: MetricsKnobs::default(),
            image_properties_default_architecture: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    #[serde(default = "default_era")]
    pub era: Era,
    #[serde(default)]
    pub scheduler: SchedulerKnobs,
    /// Unset: the era's defaults (current 4/1/1, Icehouse 16/1.5/1); see [`Control::ratios`].
    #[serde(default)]
    pub allocation_ratio: Option<AllocationRatio>,
    #[serde(default = "default_max_builds")]
    pub max_concurrent_builds: usize,
    #[serde(default = "default_report_interval")]
    pub report_interval: Dur,
    #[serde(default = "default_service_down_time")]
    pub service_down_time: Dur,
    #[serde(default = "yes")]
    pub quota_recheck: bool,
    #[serde(default = "default_rpc_timeout")]
    pub rpc_response_timeout: Dur,
    #[serde(default = "default_long_rpc_timeout")]
    pub long_rpc_timeout: Dur,
    /// nova's consecutive_build_service_disable_threshold (0 disables the feature).
    #[serde(default = "default_disable_threshold")]
    pub consecutive_build_service_disable_threshold: u32,
    /// nova's `instance_build_timeout` (0: off, nova's default): a compute's periodic task
    /// puts its own instances still building after this long in ERROR.
    #[serde(default = "zero_dur")]
    pub instance_build_timeout: Dur,
    /// nova's call monitoring for long calls (Stein and later): select_destinations waits up
    /// to `long_rpc_timeout`, and fails after `rpc_response_timeout` without a heartbeat from
    /// the server (which sends one every half of it). Off: the pre-Stein behaviour, the call
    /// times out after `rpc_response_timeout` however busy the scheduler is.
    #[serde(default = "yes")]
    pub rpc_call_monitoring: bool,
    /// oslo.messaging `amqp_durable_queues`: queues declared durable and messages sent
    /// persistent, so they survive a broker restart. Upstream default false.
    #[serde(default)]
    pub amqp_durable_queues: bool,
    /// When an RPC server acks a message: oslo's default `before_dispatch` (at most once: a
    /// server that dies mid-request never sees it again) or `after_dispatch` (at least once:
    /// redelivered after a crash, filtered by the last 16 msg_ids).
    #[serde(default)]
    pub rpc_ack: RpcAck,
    /// oslo.messaging `heartbeat_timeout_threshold` (60 s) and `heartbeat_rate` (3): a
    /// connection with no traffic for the threshold is dead; checked threshold/rate often.
    #[serde(default = "default_heartbeat_threshold")]
    pub heartbeat_timeout_threshold: Dur,
    #[serde(default = "default_heartbeat_rate")]
    pub heartbeat_rate: u32,
    /// oslo.messaging reconnect backoff: `rabbit_retry_interval` (1 s) growing by
    /// `rabbit_retry_backoff` (2 s) up to `rabbit_interval_max` (30 s).
    #[serde(default = "default_retry_interval")]
    pub rabbit_retry_interval: Dur,
    #[serde(default = "default_retry_backoff")]
    pub rabbit_retry_backoff: Dur,
    #[serde(default = "default_interval_max")]
    pub rabbit_interval_max: Dur,
    /// oslo.db pool: `max_pool_size` (5) kept connections and `max_overflow` (50) more.
    #[serde(default = "default_pool_size")]
    pub db_max_pool_size: usize,
    #[serde(default = "default_pool_overflow")]
    pub db_max_overflow: usize,
    /// nova's `wrap_db_retry(max_retries=5, retry_on_deadlock=True)` on its hot writes.
    #[serde(default = "default_db_retries")]
    pub db_max_retries: u32,
}

/// When an RPC server acknowledges a message (see [`Control::rpc_ack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcAck {
    #[default]
    BeforeDispatch,
    AfterDispatch,
}

fn zero_dur() -> Dur {
    Dur(Duration::ZERO)
}
fn default_heartbeat_threshold() -> Dur {
    Dur::secs(60)
}
fn default_heartbeat_rate() -> u32 {
    3
}
fn default_retry_interval() -> Dur {
    Dur::secs(1)
}
fn default_retry_backoff() -> Dur {
    Dur::secs(2)
}
fn default_interval_max() -> Dur {
    Dur::secs(30)
}
fn default_pool_size() -> usize {
    5
}
fn default_pool_overflow() -> usize {
    50
}
fn default_db_retries() -> u32 {
    5
}

fn default_era() -> Era {
    Era::Current
}
fn default_max_builds() -> usize {
    10
}
fn default_report_interval() -> Dur {
    Dur::secs(10)
}
fn default_service_down_time() -> Dur {
    Dur::secs(60)
}
fn yes() -> bool {
    true
}
fn default_rpc_timeout() -> Dur {
    Dur::secs(60)
}
fn default_long_rpc_timeout() -> Dur {
    Dur::secs(1800)
}
fn default_disable_threshold() -> u32 {
    10
}

impl Control {
    /// The allocation ratios in force: the scenario's, or the era's defaults.
    pub fn ratios(&self) -> AllocationRatio {
        self.allocation_ratio.unwrap_or(match self.era {
            Era::Current => AllocationRatio::default(),
            Era::Icehouse => AllocationRatio { cpu: 16.0, ram: 1.5, disk: 1.0 },
        })
    }
}

impl Default for Control {
    fn default() -> Self {
        Control {
            era: Era::Current,
            scheduler: SchedulerKnobs::default(),
            allocation_ratio: None,
            max_concurrent_builds: 10,
            report_interval: default_report_interval(),
            service_down_time: default_service_down_time(),
            quota_recheck: true,
            rpc_response_timeout: default_rpc_timeout(),
            long_rpc_timeout: default_long_rpc_timeout(),
            consecutive_build_service_disable_threshold: 10,
            instance_build_timeout: zero_dur(),
            rpc_call_monitoring: true,
            amqp_durable_queues: false,
            rpc_ack: RpcAck::BeforeDispatch,
            heartbeat_timeout_threshold: default_heartbeat_threshold(),
            heartbeat_rate: default_heartbeat_rate(),
            rabbit_retry_interval: default_retry_interval(),
            rabbit_retry_backoff: default_retry_backoff(),
            rabbit_interval_max: default_interval_max(),
            db_max_pool_size: default_pool_size(),
            db_max_overflow: default_pool_overflow(),
            db_max_retries: default_db_retries(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantGroup {
    pub name: String,
    /// How many projects of this shape (named `<name>-<i>` when more than one).
    #[serde(default = "one_u32")]
    pub count: u32,
    #[serde(default)]
    pub quota: QuotaLimits,
    /// The role the workload's user has on the project.
    #[serde(default = "default_role")]
    pub role: String,
}

fn one_u32() -> u32 {
    1
}
fn default_role() -> String {
    "member".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Runner {
    /// `concurrency` users, each booting and waiting, until `times` boots were started.
    Constant { concurrency: u32, times: u32 },
    /// Start a boot every 1/`rate` seconds until `times` boots were started.
    Rps { rate: f64, times: u32 },
    /// Replay a VM request trace (CSV, see `trace.rs`; the path is relative to the scenario
    /// file): each row boots at its arrival and is deleted at the end of its lifetime.
    /// At most `times` rows when given.
    Trace { file: String, times: Option<u32> },
}

impl Runner {
    /// Requests the runner makes; for a trace, once the scenario loaded it.
    pub fn times(&self, trace: &[crate::trace::TraceRow]) -> u32 {
        match *self {
            Runner::Constant { times, .. } | Runner::Rps { times, .. } => times,
            Runner::Trace { times, .. } => times.map_or(trace.len() as u32, |t| t.min(trace.len() as u32)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Boot,
    BootAndDelete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub runner: Runner,
    #[serde(default = "default_action")]
    pub action: Action,
    /// Flavor names with relative weights (a trace brings its own shapes).
    #[serde(default)]
    pub flavors: BTreeMap<String, f64>,
    /// Image names with relative weights.
    pub images: BTreeMap<String, f64>,
    /// Rally's nova_server_boot_prepoll_delay and poll interval.
    #[serde(default = "default_prepoll")]
    pub prepoll_delay: Dur,
    #[serde(default = "default_poll")]
    pub poll_interval: Dur,
    /// Every accepted request must be ACTIVE or ERROR within this much simulated time.
    #[serde(default = "default_liveness")]
    pub liveness_bound: Dur,
    /// Put every boot into one server group with this policy.
    #[serde(default)]
    pub server_group: Option<crate::model::GroupPolicy>,
    /// Scheduler hints sent with every request (`same_host`, `different_host`,
    /// `build_near_host_ip`, `cidr`, `query`, `group`).
    #[serde(default)]
    pub hints: SchedulerHints,
    /// The availability zone every request asks for (AvailabilityZoneFilter).
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// How often the report samples host utilisation (simulated time in the simulator).
    #[serde(default = "default_sample_interval")]
    pub sample_interval: Dur,
    /// How often the whole workload runs in one run (1). Every pass makes the same requests;
    /// before the next pass starts, the servers of the previous one are deleted (host image
    /// caches keep what it fetched, so pass 1 runs cold and the others warm). The report
    /// shows each pass's per-action latency and the last pass minus the first.
    #[serde(default = "default_passes", skip_serializing_if = "is_one")]
    pub passes: u32,
    /// Servers per create request: nova's multi-create, `min_count = max_count` of
    /// POST /servers (Rally's `boot_servers` with `count`). The conductor schedules them in
    /// one select_destinations call; the iteration succeeds when every one goes ACTIVE.
    #[serde(default = "one_u32", skip_serializing_if = "is_one")]
    pub servers_per_request: u32,
}

/// The most servers one create request may ask for.
pub const MAX_SERVERS_PER_REQUEST: u32 = 10_000;

/// The most passes a workload may make.
pub const MAX_PASSES: u32 = 16;

fn default_passes() -> u32 {
    1
}
fn is_one(n: &u32) -> bool {
    *n == 1
}

fn default_sample_interval() -> Dur {
    Dur::secs(30)
}

fn default_action() -> Action {
    Action::Boot
}
fn default_prepoll() -> Dur {
    Dur::secs(1)
}
fn default_poll() -> Dur {
    Dur::secs(1)
}
fn default_liveness() -> Dur {
    Dur::secs(600)
}

/// Per-phase latency distributions and failure probabilities of the simulated hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostModel {
    #[serde(default = "d_fetch")]
    pub image_fetch: Dist,
    #[serde(default = "d_net")]
    pub network_allocate: Dist,
    #[serde(default = "d_bdm")]
    pub block_device_mapping: Dist,
    #[serde(default = "d_spawn")]
    pub spawn: Dist,
    #[serde(default = "d_vif")]
    pub vif_plugged: Dist,
    #[serde(default = "d_boot")]
    pub guest_boot: Dist,
    #[serde(default = "d_destroy")]
    pub destroy: Dist,
    /// Probability that one spawn fails with an unexpected error (nova reschedules it).
    #[serde(default)]
    pub spawn_failure_probability: f64,
    /// Image fetches are cached per host (nova's `_base`): only the first boot pays.
    #[serde(default = "yes")]
    pub image_cache: bool,
    /// The image path's cost model (`[model.images]`; off by default, see `image_model`).
    #[serde(default)]
    pub images: crate::image_model::ImageModel,
    /// The control services' CPU time per operation (`[model.service_time]`).
    #[serde(default)]
    pub service_time: ServiceTime,
}

/// CPU time the control services spend per operation, in the simulator (the real build
/// spends real CPU). A nova service process is one eventlet hub: it runs one greenthread's
/// CPU work at a time, so each process serves its work one piece after another (and, with
/// a `[topology.controller]`, shares its host's cores with the other processes there).
/// A scheduler worker saturates at `1 / (per_request + per_host × hosts)` decisions per
/// second. Defaults and where they come from: `docs/calibration.md`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTime {
    /// Per select_destinations call: the request spec, the host manager's bookkeeping.
    #[serde(default = "d_sched_request")]
    pub scheduler_per_request: Dur,
    /// Per host through the filters and weighers, per instance placed.
    #[serde(default = "d_sched_host")]
    pub scheduler_per_host: Dur,
    /// Per request nova-api serves: WSGI, keystonemiddleware (a cached token), policy,
    /// the database reads and the response's view.
    #[serde(default = "d_api_request")]
    pub api_per_request: Dur,
    /// Per server of a create, on top: quota, build request, request spec, mappings.
    #[serde(default = "d_api_instance")]
    pub api_per_instance: Dur,
    /// Per RPC message nova-conductor handles (a state report: the object's
    /// deserialisation, its update, the reply).
    #[serde(default = "d_conductor_call")]
    pub conductor_per_call: Dur,
    /// Per instance of schedule_and_build_instances, on top: the instance record, its
    /// block device mappings, the mapping updates, the cast to its compute.
    #[serde(default = "d_conductor_instance")]
    pub conductor_per_instance: Dur,
    /// Per request placement serves: WSGI, auth, the SQL and the JSON.
    #[serde(default = "d_placement_request")]
    pub placement_per_request: Dur,
    /// Per resource provider an allocation candidates request goes over.
    #[serde(default = "d_placement_provider")]
    pub placement_per_provider: Dur,
    /// Per request keystone serves (a token issued or validated: fernet, the assignment
    /// and catalog reads).
    #[serde(default = "d_keystone_request")]
    pub keystone_per_request: Dur,
}

fn d_sched_request() -> Dur {
    Dur(Duration::from_millis(20))
}
fn d_sched_host() -> Dur {
    Dur(Duration::from_micros(200))
}
fn d_api_request() -> Dur {
    Dur(Duration::from_millis(10))
}
fn d_api_instance() -> Dur {
    Dur(Duration::from_millis(30))
}
fn d_conductor_call() -> Dur {
    Dur(Duration::from_millis(2))
}
fn d_conductor_instance() -> Dur {
    Dur(Duration::from_millis(30))
}
fn d_placement_request() -> Dur {
    Dur(Duration::from_millis(5))
}
fn d_placement_provider() -> Dur {
    Dur(Duration::from_micros(20))
}
fn d_keystone_request() -> Dur {
    Dur(Duration::from_millis(10))
}

impl Default for ServiceTime {
    fn default() -> Self {
        ServiceTime {
            scheduler_per_request: d_sched_request(),
            scheduler_per_host: d_sched_host(),
            api_per_request: d_api_request(),
            api_per_instance: d_api_instance(),
            conductor_per_call: d_conductor_call(),
            conductor_per_instance: d_conductor_instance(),
            placement_per_request: d_placement_request(),
            placement_per_provider: d_placement_provider(),
            keystone_per_request: d_keystone_request(),
        }
    }
}

// Defaults shaped after the published warm-image build of about 7 s: IP allocation
// 0.12 s, overlay create 0.14 s, libvirt start about 1.5 s, vif-plugged 3.6 s.
fn d_fetch() -> Dist {
    Dist::LogNormal { median_s: 4.0, sigma: 0.4 }
}
fn d_net() -> Dist {
    Dist::LogNormal { median_s: 0.12, sigma: 0.3 }
}
fn d_bdm() -> Dist {
    Dist::LogNormal { median_s: 0.14, sigma: 0.3 }
}
fn d_spawn() -> Dist {
    Dist::LogNormal { median_s: 1.5, sigma: 0.25 }
}
fn d_vif() -> Dist {
    Dist::LogNormal { median_s: 3.6, sigma: 0.3 }
}
fn d_boot() -> Dist {
    Dist::LogNormal { median_s: 0.5, sigma: 0.3 }
}
fn d_destroy() -> Dist {
    Dist::LogNormal { median_s: 1.5, sigma: 0.2 }
}

impl Default for HostModel {
    fn default() -> Self {
        HostModel {
            image_fetch: d_fetch(),
            network_allocate: d_net(),
            block_device_mapping: d_bdm(),
            spawn: d_spawn(),
            vif_plugged: d_vif(),
            guest_boot: d_boot(),
            destroy: d_destroy(),
            spawn_failure_probability: 0.0,
            image_cache: true,
            images: crate::image_model::ImageModel::default(),
            service_time: ServiceTime::default(),
        }
    }
}

/// Bugs a test can plant on purpose, to show that the invariant checker catches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlantedBug {
    /// The scheduler returns a host without claiming it in placement.
    SchedulerSkipsClaim,
    /// The conductor skips the quota re-check and the API skips its check.
    QuotaNotChecked,
    /// A restarted nova-compute skips `init_host`'s recovery of interrupted builds.
    ComputeSkipsInitHost,
    /// RPC servers ack after dispatch but forget the duplicate-message filter.
    AckAfterDispatchWithoutDupFilter,
    /// The database retry wrapper also retries writes whose commit is in doubt.
    RetryNonIdempotentWrites,
    /// A restarted process's bus client takes the reply queue and msg ids its previous
    /// incarnation had (a fixed name instead of oslo's reply_<uuid4>), so a late reply to
    /// a dead caller's call completes a new call that happens to have the same id.
    ReplyQueueReusedAfterRestart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debug {
    #[serde(default)]
    pub plant_bug: Option<PlantedBug>,
}

/// `[guest]`: what a real QEMU guest boots (direct kernel boot, no bootloader). Paths are
/// relative to the scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guest {
    pub kernel: String,
    pub initrd: String,
    /// The kernel command line (`console=ttyS0` sends the guest's console to its log).
    #[serde(default = "default_guest_cmdline")]
    pub cmdline: String,
    /// How long a spawn waits for the guest to print its metadata.
    #[serde(default = "default_guest_boot_timeout")]
    pub boot_timeout: Dur,
    /// The libvirt URI of every compute host (`STACKBED_LIBVIRT_URI` overrides it).
    #[serde(default = "default_guest_uri")]
    pub libvirt_uri: String,
}

fn default_guest_cmdline() -> String {
    "console=ttyS0 quiet".into()
}
fn default_guest_boot_timeout() -> Dur {
    Dur::secs(300)
}
fn default_guest_uri() -> String {
    "qemu:///system".into()
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        Scenario::load_with(path, &[])
    }

    /// Reads a scenario file, applies `--set` overrides to it, and validates the result.
    pub fn load_with(path: &Path, overrides: &[Override]) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            field: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        Scenario::load_text(path, &text, overrides)
    }

    /// [`Scenario::load_with`] of `text` as if it were the file at `path`: errors name
    /// `path`, and the trace and guest files it names are found beside it.
    pub fn load_text(path: &Path, text: &str, overrides: &[Override]) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let mut scenario = Scenario::parse_with(&file, text, overrides)?;
        if let Some(g) = &mut scenario.guest {
            let dir = path.parent().unwrap_or(Path::new("."));
            for p in [&mut g.kernel, &mut g.initrd] {
                *p = dir.join(&*p).display().to_string();
            }
        }
        if let Runner::Trace { file: trace_file, .. } = &scenario.workload.runner {
            let trace_path = path.parent().unwrap_or(Path::new(".")).join(trace_file);
            let field_error = |message: String| {
                let offset = span_of(text, "workload.runner.file").unwrap_or(0);
                let (line, column) = line_col(text, offset);
                ScenarioError { file: file.clone(), line, column, field: "workload.runner.file".into(), message }
            };
            let trace_text = std::fs::read_to_string(&trace_path)
                .map_err(|e| field_error(format!("cannot read trace {}: {e}", trace_path.display())))?;
            let rows = crate::trace::parse(&trace_text)
                .map_err(|e| field_error(format!("trace {}: {e}", trace_path.display())))?;
            scenario.set_trace(rows);
        }
        Ok(scenario)
    }

    /// Installs a trace: its rows, and a flavor for every request shape it uses.
    pub fn set_trace(&mut self, rows: Vec<crate::trace::TraceRow>) {
        for row in &rows {
            if !self.flavors.iter().any(|f| f.name == row.flavor_name()) {
                self.flavors.push(row.flavor());
            }
        }
        self.trace = rows;
    }

    /// [`Scenario::parse`] after applying `overrides` (see `overrides.rs`). An error in a
    /// field an override set says so; the overrides are kept in [`Scenario::overrides`].
    pub fn parse_with(file: &str, text: &str, overrides: &[Override]) -> Result<Scenario, ScenarioError> {
        let edited = apply_overrides(text, overrides).map_err(|(field, message)| ScenarioError {
            file: file.to_string(),
            line: 0,
            column: 0,
            field,
            message,
        })?;
        let mut scenario = Scenario::parse(file, &edited).map_err(|mut e| {
            let set_here = overrides.iter().rev().find(|o| {
                let f = o.field();
                e.field == f || e.field.starts_with(&format!("{f}.")) || f.starts_with(&format!("{}.", e.field))
            });
            if let Some(o) = set_here {
                e.message = format!("{} (set by --set {o})", e.message);
            }
            e
        })?;
        scenario.overrides = overrides.iter().map(Override::to_string).collect();
        Ok(scenario)
    }

    /// Parses and validates scenario text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let mut scenario: Scenario = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let (line, column) = line_col(text, offset);
            // serde names a missing field only in its message: take it from there.
            let missing = e.message().strip_prefix("missing field `").and_then(|m| m.split('`').next());
            let field = match (field_at(text, offset), missing) {
                (Some(at), Some(m)) if e.span().is_some_and(|s| s.start > 0) => format!("{at}.{m}"),
                (Some(at), None) => at,
                (_, Some(m)) => m.to_string(),
                (None, None) => "-".into(),
            };
            // Some TOML syntax errors carry no message of their own (a stray `=` at the end).
            let message = match e.message() {
                "" => "invalid TOML syntax here".to_string(),
                m => m.to_string(),
            };
            ScenarioError { file: file.to_string(), line, column, field, message }
        })?;
        // `[phases] liveness_bound` wins over `workload.liveness_bound`: the services read
        // the latter, so the former is copied there.
        if let Some(bound) = scenario.phases.liveness_bound {
            scenario.workload.liveness_bound = bound;
        }
        scenario.validate().map_err(|(field, message)| {
            let offset = span_of(text, &field).unwrap_or(0);
            let (line, column) = line_col(text, offset);
            ScenarioError { file: file.to_string(), line, column, field, message }
        })?;
        Ok(scenario)
    }

    /// Every compute host: `{name_prefix}-{n}`, numbered from 1 per prefix, in file order.
    pub fn hosts(&self) -> Vec<(String, &HostGroup)> {
        let mut next: BTreeMap<&str, u32> = BTreeMap::new();
        let mut out = Vec::new();
        for g in &self.topology.hosts {
            for _ in 0..g.count {
                let n = next.entry(g.name_prefix.as_str()).or_insert(0);
                *n += 1;
                out.push((format!("{}-{n}", g.name_prefix), g));
            }
        }
        out
    }

    pub fn host_count(&self) -> u32 {
        self.topology.hosts.iter().map(|h| h.count).sum()
    }

    /// Every availability zone: the aggregates' and the default one.
    pub fn availability_zones(&self) -> std::collections::BTreeSet<String> {
        let mut zones: std::collections::BTreeSet<String> = self
            .aggregates
            .iter()
            .filter_map(|a| a.availability_zone.clone().or_else(|| a.metadata.get("availability_zone").cloned()))
            .collect();
        zones.insert(self.control.scheduler.default_availability_zone.clone());
        zones
    }

    /// The aggregates with their host lists resolved, in declaration order.
    pub fn aggregates(&self) -> Vec<Aggregate> {
        let names: Vec<String> = self.hosts().into_iter().map(|(n, _)| n).collect();
        self.aggregates.iter().map(|a| a.resolve(names.iter().map(String::as_str))).collect()
    }

    /// The aggregates `host` belongs to.
    pub fn aggregates_of(&self, host: &str) -> Vec<Aggregate> {
        self.aggregates
            .iter()
            .filter(|a| a.hosts.iter().any(|s| AggregateDecl::selects(s, host)))
            .map(|a| a.resolve([host]))
            .collect()
    }

    /// Every host's aggregate view for `HostState::aggregates`, built once per run: hosts in
    /// no aggregate share one empty view.
    pub fn host_aggregates(&self) -> BTreeMap<String, std::sync::Arc<HostAggregates>> {
        let aggregates = self.aggregates();
        let none = HostAggregates::none();
        self.hosts()
            .into_iter()
            .map(|(name, _)| {
                let mine: Vec<&Aggregate> = aggregates.iter().filter(|a| a.hosts.contains(&name)).collect();
                let view = if mine.is_empty() { none.clone() } else { std::sync::Arc::new(HostAggregates::new(mine)) };
                (name, view)
            })
            .collect()
    }

    /// The scheduler configuration the scenario resolves to (validated names only).
    pub fn scheduler_config(&self) -> SchedulerConfig {
        let knobs = &self.control.scheduler;
        // The era's scheduler: today's filters and weighers with placement, or Icehouse's
        // filters and RAM weigher without it.
        let era = match self.control.era {
            Era::Current => SchedulerConfig::default(),
            Era::Icehouse => SchedulerConfig::icehouse(),
        };
        let mut config = SchedulerConfig {
            filters: match &knobs.filters {
                Some(names) => names.iter().filter_map(|f| FilterKind::from_name(f)).collect(),
                None => era.filters.clone(),
            },
            host_subset_size: knobs.host_subset_size.max(1),
            max_attempts: knobs.max_attempts.max(1),
            max_io_ops_per_host: knobs.max_io_ops_per_host,
            max_instances_per_host: knobs.max_instances_per_host,
            isolated_hosts: knobs.isolated_hosts.clone(),
            isolated_images: knobs.isolated_images.clone(),
            restrict_isolated_hosts_to_isolated_images: knobs.restrict_isolated_hosts_to_isolated_images,
            default_availability_zone: knobs.default_availability_zone.clone(),
            metrics: crate::scheduler::MetricsConfig {
                weight_setting: crate::scheduler::parse_weight_setting(&knobs.metrics.weight_setting).0,
                required: knobs.metrics.required,
                weight_of_unavailable: knobs.metrics.weight_of_unavailable,
            },
            image_properties_default_architecture: knobs.image_properties_default_architecture.clone(),
            ..era
        };
        for (name, m) in &knobs.weighers {
            if let Some(w) = WeigherKind::from_name(name) {
                config.weighers.insert(w, *m);
            }
        }
        config
    }
}
