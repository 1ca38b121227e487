//! The filter scheduler's pure part: host states in, an ordered list of hosts out.
//!
//! Mirrors nova's `FilterScheduler._get_sorted_hosts`: (current era) keep the hosts placement
//! would return as allocation candidates, run the enabled filters in order, weigh the
//! survivors (each weigher's raw values normalised to [0, 1], times its multiplier, which a
//! host's aggregates may override, summed), sort by weight descending (stable), then pick
//! uniformly among the best `host_subset_size` and move that host to the front. The service
//! claims the hosts in this order and returns the first claimed one plus alternates.
//!
//! Two paths share every rule: the hot path ([`Workspace`], [`sorted_hosts`]) runs each host
//! through all filters at once, keeps no reasons and allocates nothing once its buffers have
//! grown; [`explain`] runs filter by filter and records why each host was dropped and every
//! weigher's raw and normalised value. A test checks that both order hosts identically.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::cpu_topology::{self, CpuTopology};
use crate::model::{Aggregate, ComputeNode, Flavor, GroupPolicy, Image, Inventory, Resources, SchedulerHints};
use crate::placement::CANDIDATE_LIMIT;
use crate::scenario::Era;
use image_props::{image_properties_node, ImageKey, ImageWants};

/// Everything the filters and weighers read about one host. Cheap to clone: the node
/// record and the aggregate view are shared.
#[derive(Debug, Clone)]
pub struct HostState {
    /// Shared: host states are rebuilt per request, the node record is not copied.
    pub node: Arc<ComputeNode>,
    pub service_up: bool,
    pub service_disabled: bool,
    /// Placement inventories, indexed by resource class.
    pub inventories: [Inventory; 3],
    pub used: Resources,
    pub failed_builds: u32,
    /// Members of the request's server group already on this host.
    pub group_members_here: u32,
    /// The host's aggregates, resolved once per aggregate change (see [`HostAggregates`]).
    pub aggregates: Arc<HostAggregates>,
    /// The host's IPv4 address as a big-endian u32 (SimpleCIDRAffinityFilter), if known.
    pub host_ip: Option<u32>,
}

impl HostState {
    /// A host that is up, enabled, in no aggregate, with no failures and no group members.
    pub fn new(node: Arc<ComputeNode>, inventories: [Inventory; 3], used: Resources) -> HostState {
        HostState {
            node,
            service_up: true,
            service_disabled: false,
            inventories,
            used,
            failed_builds: 0,
            group_members_here: 0,
            aggregates: HostAggregates::none(),
            host_ip: None,
        }
    }

    /// nova's HostState.free_ram_mb: total - reserved - used (no allocation ratio).
    pub fn free_ram_mb(&self) -> f64 {
        let inv = &self.inventories[1];
        inv.total as f64 - inv.reserved as f64 - self.used.0[1] as f64
    }
    /// nova's CPUWeigher: vcpus_total * cpu_allocation_ratio - vcpus_used.
    pub fn free_vcpus(&self) -> f64 {
        let inv = &self.inventories[0];
        inv.total as f64 * inv.allocation_ratio - self.used.0[0] as f64
    }
    /// nova's HostState.free_disk_mb: (total - reserved - used) in MB (no allocation ratio).
    pub fn free_disk_mb(&self) -> f64 {
        let inv = &self.inventories[2];
        (inv.total as f64 - inv.reserved as f64 - self.used.0[2] as f64) * 1024.0
    }

    /// Whether placement would offer this host for `resources` (allocation candidates).
    #[inline(always)]
    pub fn placement_fits(&self, resources: &Resources) -> bool {
        self.class_fits(0, resources.0[0]) && self.class_fits(1, resources.0[1]) && self.class_fits(2, resources.0[2])
    }

    #[inline(always)]
    fn class_fits(&self, class: usize, amount: u64) -> bool {
        let inv = &self.inventories[class];
        // used + amount <= floor(x) holds exactly when used + amount <= x (integers), so the
        // capacity needs no float-to-integer conversion here.
        amount == 0
            || (amount >= inv.min_unit
                && amount <= inv.max_unit
                && (inv.step_size <= 1 || amount.is_multiple_of(inv.step_size))
                && (self.used.0[class] + amount) as f64
                    <= inv.total.saturating_sub(inv.reserved) as f64 * inv.allocation_ratio)
    }

    /// Host attributes by nova's HostState attribute names (ComputeCapabilities, JsonFilter);
    /// a name that is no attribute, or one that is unset, reads the stats (as
    /// ComputeCapabilitiesFilter's `getattr(...) or stats.get(...)` does).
    fn attribute(&self, name: &str) -> Option<Attr<'_>> {
        Some(match name {
            "host" | "nodename" => Attr::Text(&self.node.host),
            "hypervisor_type" => Attr::Text(&self.node.hypervisor_type),
            "hypervisor_version" => Attr::Number(self.node.hypervisor_version as f64),
            "cpu_arch" => Attr::Text(&self.node.cpu_arch),
            "vcpus_total" => Attr::Number(self.inventories[0].total as f64),
            "vcpus_used" => Attr::Number(self.used.0[0] as f64),
            "memory_mb" | "total_usable_ram_mb" => Attr::Number(self.inventories[1].total as f64),
            "free_ram_mb" => Attr::Number(self.free_ram_mb().trunc()),
            "total_usable_disk_gb" => Attr::Number(self.inventories[2].total as f64),
            "free_disk_mb" => Attr::Number(self.free_disk_mb().trunc()),
            "num_instances" => Attr::Number(self.node.num_instances as f64),
            "num_io_ops" => Attr::Number(self.node.num_io_ops as f64),
            "failed_builds" => Attr::Number(self.failed_builds as f64),
            "cpu_info" if self.node.cpu_info.is_some() => Attr::Text(self.node.cpu_info.as_deref().unwrap_or_default()),
            _ => return self.node.stats.get(name).map(|s| Attr::Text(s)),
        })
    }
}

/// A host attribute's value: numbers compare as numbers in JsonFilter.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Attr<'a> {
    Text(&'a str),
    Number(f64),
}

impl Attr<'_> {
    fn to_text(self) -> String {
        match self {
            Attr::Text(s) => s.to_string(),
            // Integral numbers print without a fraction, as nova's str(int) does.
            Attr::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", n as i64),
            Attr::Number(n) => format!("{n}"),
        }
    }
}

/// One host's view of its aggregates, in the two shapes nova reads them:
/// `aggregate_values_from_key` (whole values) and `aggregate_metadata_get_by_host`
/// (values split on commas and trimmed). Built once per host when aggregates change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostAggregates {
    /// Aggregate names, in declaration order.
    pub names: Vec<String>,
    /// Metadata key to the set of whole values across the host's aggregates.
    pub values: BTreeMap<String, BTreeSet<String>>,
    /// Metadata key to the set of comma-split, trimmed values across the host's aggregates.
    pub metadata: BTreeMap<String, BTreeSet<String>>,
    /// Per-weigher multiplier overrides (`<weigher>_weight_multiplier`, the minimum of the
    /// aggregates' values, unparsable values ignored as nova does), by [`WeigherKind::index`].
    multipliers: [Option<f64>; WeigherKind::COUNT],
    has_multipliers: bool,
}

impl HostAggregates {
    pub fn new<'a>(aggregates: impl IntoIterator<Item = &'a Aggregate>) -> HostAggregates {
        let mut out = HostAggregates::default();
        for agg in aggregates {
            out.names.push(agg.name.clone());
            for (k, v) in &agg.metadata {
                out.values.entry(k.clone()).or_default().insert(v.clone());
                out.metadata.entry(k.clone()).or_default().extend(v.split(',').map(|x| x.trim().to_string()));
            }
        }
        for w in WeigherKind::ALL {
            let m = out.min_number(&w.aggregate_key());
            out.multipliers[w.index()] = m.map(|m| if w == WeigherKind::BuildFailure { -m } else { m });
        }
        out.has_multipliers = out.multipliers.iter().any(Option::is_some);
        out
    }

    /// The shared view of a host in no aggregate.
    pub fn none() -> Arc<HostAggregates> {
        static NONE: OnceLock<Arc<HostAggregates>> = OnceLock::new();
        NONE.get_or_init(|| Arc::new(HostAggregates::default())).clone()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// nova's `validate_num_values(..., based_on=min)`: the smallest value of `key` across the
    /// aggregates; `None` when no aggregate sets it or a value does not parse (nova then logs
    /// and falls back to the configured default).
    pub fn min_number(&self, key: &str) -> Option<f64> {
        let values = self.values.get(key)?;
        let mut min: Option<f64> = None;
        for v in values {
            let x: f64 = v.trim().parse().ok()?;
            min = Some(min.map_or(x, |m: f64| m.min(x)));
        }
        min
    }

    /// Integer variant (nova casts with `int()`: "8.5" is invalid and falls back).
    pub fn min_integer(&self, key: &str) -> Option<i64> {
        let values = self.values.get(key)?;
        let mut min: Option<i64> = None;
        for v in values {
            let x: i64 = v.trim().parse().ok()?;
            min = Some(min.map_or(x, |m: i64| m.min(x)));
        }
        min
    }

    /// The multiplier this host's aggregates set for `weigher`, if any (already negated for
    /// BuildFailure, whose configured multiplier nova negates).
    pub fn weigher_multiplier(&self, weigher: WeigherKind) -> Option<f64> {
        self.multipliers[weigher.index()]
    }
}

static NO_HINTS: SchedulerHints = SchedulerHints::NONE;

/// The request as the scheduler sees it. [`RequestView::new`] gives nova's defaults for
/// everything but the flavor and image.
#[derive(Debug, Clone)]
pub struct RequestView<'a> {
    pub flavor: &'a Flavor,
    pub image: &'a Image,
    /// The project (tenant) id, for AggregateMultiTenancyIsolation.
    pub project_id: &'a str,
    /// The requested availability zone, if any (AvailabilityZoneFilter).
    pub availability_zone: Option<&'a str>,
    pub hints: &'a SchedulerHints,
    /// Hosts of the instances `hints.same_host` names (the service resolves them).
    pub same_host_hosts: &'a [String],
    /// Hosts of the instances `hints.different_host` names.
    pub different_host_hosts: &'a [String],
    pub group_policy: Option<GroupPolicy>,
    pub group_max_per_host: u32,
    /// Hosts that already hold a member of the group (for affinity).
    pub group_hosts: &'a [String],
    /// Hosts already tried for this instance (RetryFilter).
    pub retry_hosts: &'a [String],
}

impl<'a> RequestView<'a> {
    pub fn new(flavor: &'a Flavor, image: &'a Image) -> RequestView<'a> {
        RequestView {
            flavor,
            image,
            project_id: "",
            availability_zone: None,
            hints: &NO_HINTS,
            same_host_hosts: &[],
            different_host_hosts: &[],
            group_policy: None,
            group_max_per_host: 1,
            group_hosts: &[],
            retry_hosts: &[],
        }
    }
}

macro_rules! filter_kinds {
    ($($kind:ident = $name:literal),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum FilterKind { $($kind),* }

        impl FilterKind {
            pub const ALL: &'static [FilterKind] = &[$(FilterKind::$kind),*];
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            /// nova's class name without the `Filter` suffix.
            pub fn name(self) -> &'static str {
                match self { $(FilterKind::$kind => $name),* }
            }
        }
    };
}

filter_kinds! {
    AllHosts = "AllHosts",
    Compute = "Compute",
    ComputeCapabilities = "ComputeCapabilities",
    ImageProperties = "ImageProperties",
    ServerGroupAffinity = "ServerGroupAffinity",
    ServerGroupAntiAffinity = "ServerGroupAntiAffinity",
    SameHost = "SameHost",
    DifferentHost = "DifferentHost",
    SimpleCidrAffinity = "SimpleCIDRAffinity",
    AggregateInstanceExtraSpecs = "AggregateInstanceExtraSpecs",
    AggregateImagePropertiesIsolation = "AggregateImagePropertiesIsolation",
    AggregateMultiTenancyIsolation = "AggregateMultiTenancyIsolation",
    AggregateTypeAffinity = "AggregateTypeAffinity",
    AvailabilityZone = "AvailabilityZone",
    IoOps = "IoOps",
    AggregateIoOps = "AggregateIoOps",
    NumInstances = "NumInstances",
    AggregateNumInstances = "AggregateNumInstances",
    IsolatedHosts = "IsolatedHosts",
    Json = "Json",
    Retry = "Retry",
    Ram = "Ram",
    AggregateRam = "AggregateRam",
    Core = "Core",
    AggregateCore = "AggregateCore",
    Disk = "Disk",
    AggregateDisk = "AggregateDisk",
    Metrics = "Metrics",
}

impl FilterKind {
    /// By nova's class name, with or without the `Filter` suffix.
    pub fn from_name(name: &str) -> Option<FilterKind> {
        let name = name.strip_suffix("Filter").unwrap_or(name);
        FilterKind::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// nova's default `enabled_filters` today.
    pub fn defaults() -> Vec<FilterKind> {
        vec![
            FilterKind::Compute,
            FilterKind::ComputeCapabilities,
            FilterKind::ImageProperties,
            FilterKind::ServerGroupAntiAffinity,
            FilterKind::ServerGroupAffinity,
        ]
    }

    /// Icehouse's default `scheduler_default_filters`.
    pub fn icehouse_defaults() -> Vec<FilterKind> {
        vec![
            FilterKind::Retry,
            FilterKind::AvailabilityZone,
            FilterKind::Ram,
            FilterKind::Compute,
            FilterKind::ComputeCapabilities,
            FilterKind::ImageProperties,
            FilterKind::ServerGroupAntiAffinity,
            FilterKind::ServerGroupAffinity,
        ]
    }

    /// Whether `host` passes this filter for `req`. `Err` carries the reason for rejecting.
    pub fn check(self, host: &HostState, req: &RequestView<'_>, config: &SchedulerConfig) -> Result<(), String> {
        let prepared = Prepared::new(req, config);
        let mut why = Reason(None);
        if passes(self, &prepared, host, req, config, &mut why) {
            Ok(())
        } else {
            Err(why.0.unwrap_or_else(|| "rejected".into()))
        }
    }

    /// Whether 2014.1 shipped this filter (AggregateIoOps, AggregateNumInstances and
    /// AggregateDisk came in Juno).
    pub fn in_icehouse(self) -> bool {
        !matches!(self, FilterKind::AggregateIoOps | FilterKind::AggregateNumInstances | FilterKind::AggregateDisk)
    }

    /// Whether the filter can reject anything for this request (no-ops are skipped).
    fn active(self, prepared: &Prepared<'_>, req: &RequestView<'_>, config: &SchedulerConfig) -> bool {
        match self {
            FilterKind::AllHosts => false,
            FilterKind::ComputeCapabilities => prepared.capabilities,
            FilterKind::ImageProperties => prepared.image.any(),
            FilterKind::ServerGroupAffinity => {
                req.group_policy == Some(GroupPolicy::Affinity) && !req.group_hosts.is_empty()
            }
            FilterKind::ServerGroupAntiAffinity => req.group_policy == Some(GroupPolicy::AntiAffinity),
            FilterKind::SameHost => !req.hints.same_host.is_empty(),
            FilterKind::DifferentHost => !req.hints.different_host.is_empty(),
            FilterKind::SimpleCidrAffinity => req.hints.build_near_host_ip.is_some(),
            FilterKind::AggregateInstanceExtraSpecs => !req.flavor.extra_specs.is_empty(),
            FilterKind::AvailabilityZone => req.availability_zone.is_some(),
            FilterKind::IsolatedHosts => {
                !(config.isolated_images.is_empty()
                    && (!config.restrict_isolated_hosts_to_isolated_images || config.isolated_hosts.is_empty()))
            }
            FilterKind::Json => req.hints.query.as_deref().is_some_and(|q| !q.is_empty()),
            FilterKind::Retry => !req.retry_hosts.is_empty(),
            FilterKind::Metrics => !config.metrics.weight_setting.is_empty(),
            _ => true,
        }
    }
}

/// Where a filter's reason for rejecting goes: nowhere on the hot path (the closure is never
/// called, so nothing is formatted or allocated), into a string for `explain`.
trait Why {
    fn say(&mut self, reason: impl FnOnce() -> String);
}

struct Quiet;

impl Why for Quiet {
    #[inline(always)]
    fn say(&mut self, _: impl FnOnce() -> String) {}
}

struct Reason(Option<String>);

impl Why for Reason {
    fn say(&mut self, reason: impl FnOnce() -> String) {
        self.0 = Some(reason());
    }
}

#[inline(always)]
fn reject(why: &mut impl Why, reason: impl FnOnce() -> String) -> bool {
    why.say(reason);
    false
}

/// Per-request work done once rather than per host.
struct Prepared<'r> {
    image: ImageWants<'r>,
    /// The flavor has extra_specs ComputeCapabilities looks at.
    capabilities: bool,
    json: Option<Result<serde_json::Value, String>>,
    /// The network for SimpleCIDRAffinity, or why the hint is unusable.
    cidr: Option<Result<Cidr, String>>,
    image_isolated: bool,
}

impl<'r> Prepared<'r> {
    fn new(req: &RequestView<'r>, config: &SchedulerConfig) -> Prepared<'r> {
        // nova's option takes only names of arch.ALL (the scenario refuses others).
        let default_arch =
            config.image_properties_default_architecture.as_deref().and_then(image_props::canonical_arch);
        let image = ImageWants::new(&req.image.properties, config.era, default_arch);
        let capabilities = req.flavor.extra_specs.keys().any(|k| {
            !k.contains(':')
                || k.starts_with("capabilities:")
                || (config.era == Era::Current && k == capabilities::MAXPHYSADDR_BITS)
        });
        let json =
            req.hints.query.as_deref().filter(|q| !q.is_empty()).map(|q| {
                serde_json::from_str::<serde_json::Value>(q).map_err(|e| format!("query hint is not JSON: {e}"))
            });
        let cidr = req
            .hints
            .build_near_host_ip
            .as_deref()
            .map(|ip| parse_cidr(ip, req.hints.cidr.as_deref().unwrap_or("/24")));
        let image_isolated = config.isolated_images.contains(&req.image.name);
        Prepared { image, capabilities, json, cidr, image_isolated }
    }
}

/// Parses an IPv4 address into a big-endian u32.
pub fn parse_ipv4(text: &str) -> Option<u32> {
    let mut parts = text.trim().split('.');
    let mut out = 0u32;
    for _ in 0..4 {
        let octet: u8 = parts.next()?.parse().ok()?;
        out = (out << 8) | octet as u32;
    }
    parts.next().is_none().then_some(out)
}

/// A network for SimpleCIDRAffinityFilter: nova's `netaddr.IPNetwork(build_near_host_ip +
/// cidr)`, IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address with the host bits cleared.
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `addr` with a `prefix`-bit mask; `Err` when the prefix is longer than
    /// the address (32 bits for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, String> {
        let width = address_width(addr);
        if u32::from(prefix) > width {
            return Err(format!("prefix /{prefix} is longer than an {} address ({width} bits)", family(addr)));
        }
        let mask = prefix_mask(prefix, width);
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask as u32)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)),
        };
        Ok(Cidr { network, prefix })
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// netaddr's `IPAddress(ip) in IPNetwork(...)`: an address of the other family is never
    /// inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let mask = prefix_mask(self.prefix, address_width(self.network));
        match (ip, self.network) {
            (IpAddr::V4(ip), IpAddr::V4(net)) => u32::from(ip) & mask as u32 == u32::from(net),
            (IpAddr::V6(ip), IpAddr::V6(net)) => u128::from(ip) & mask == u128::from(net),
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn address_width(addr: IpAddr) -> u32 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The top `prefix` of `width` bits set, in the low `width` bits of a u128.
fn prefix_mask(prefix: u8, width: u32) -> u128 {
    let host_bits = width - u32::from(prefix).min(width);
    let all = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
    if host_bits >= 128 {
        0
    } else {
        all & (u128::MAX << host_bits)
    }
}

/// `build_near_host_ip` + `cidr` as the network SimpleCIDRAffinityFilter keeps hosts in.
/// The address is IPv4 or IPv6; the cidr is a prefix length (`"/24"`, `"/64"`) or, for
/// IPv4, a netmask (`"/255.255.255.0"`), as netaddr accepts them. Errors name the hint and
/// what is wrong with it.
pub fn parse_cidr(ip: &str, cidr: &str) -> Result<Cidr, String> {
    let addr: IpAddr =
        ip.trim().parse().map_err(|_| format!("build_near_host_ip `{ip}` is not an IPv4 or IPv6 address"))?;
    let width = address_width(addr);
    let suffix = cidr.trim().strip_prefix('/').ok_or_else(|| {
        format!("cidr `{cidr}` is not a prefix length like \"/24\" (0 to {width} for an {} address)", family(addr))
    })?;
    let prefix = match (suffix.parse::<u32>(), suffix.parse::<Ipv4Addr>(), addr) {
        (Ok(bits), ..) if bits <= width => bits as u8,
        (Ok(bits), ..) => {
            return Err(format!(
                "cidr `{cidr}`: prefix /{bits} is longer than an {} address ({width} bits)",
                family(addr)
            ))
        }
        (Err(_), Ok(mask), IpAddr::V4(_)) => {
            let mask = u32::from(mask);
            if mask.leading_ones() + mask.trailing_zeros() != 32 {
                return Err(format!("cidr `{cidr}` is not a contiguous netmask"));
            }
            mask.leading_ones() as u8
        }
        _ => {
            return Err(format!(
                "cidr `{cidr}` is not a prefix length like \"/24\" (0 to {width} for an {} address)",
                family(addr)
            ))
        }
    };
    Cidr::new(addr, prefix)
}

/// One filter on one host. Every rule of the scheduler lives here; both paths call it.
#[inline]
fn passes(
    kind: FilterKind,
    prep: &Prepared<'_>,
    host: &HostState,
    req: &RequestView<'_>,
    config: &SchedulerConfig,
    why: &mut impl Why,
) -> bool {
    match kind {
        FilterKind::AllHosts => true,
        FilterKind::Compute => {
            if host.service_disabled {
                reject(why, || "service disabled".into())
            } else if !host.service_up {
                reject(why, || "service down (no heartbeat within service_down_time)".into())
            } else {
                true
            }
        }
        FilterKind::ComputeCapabilities => {
            !prep.capabilities || capabilities::compute_capabilities(host, req.flavor, config.era, why)
        }
        FilterKind::ImageProperties => !prep.image.any() || image_properties(host, &prep.image, why),
        FilterKind::ServerGroupAntiAffinity => {
            // Icehouse's groups had no rules: any member on the host is one too many.
            let max = if config.era == Era::Icehouse { 1 } else { req.group_max_per_host };
            match req.group_policy {
                Some(GroupPolicy::AntiAffinity) if host.group_members_here >= max => reject(why, || {
                    format!("{} group member(s) here, max_server_per_host {max}", host.group_members_here)
                }),
                _ => true,
            }
        }
        FilterKind::ServerGroupAffinity => match req.group_policy {
            Some(GroupPolicy::Affinity)
                if !req.group_hosts.is_empty() && !req.group_hosts.contains(&host.node.host) =>
            {
                reject(why, || "not a host of the affinity group".into())
            }
            _ => true,
        },
        FilterKind::SameHost => {
            req.hints.same_host.is_empty()
                || req.same_host_hosts.contains(&host.node.host)
                || reject(why, || format!("holds none of same_host {:?}", req.hints.same_host))
        }
        FilterKind::DifferentHost => {
            req.hints.different_host.is_empty()
                || !req.different_host_hosts.contains(&host.node.host)
                || reject(why, || format!("holds one of different_host {:?}", req.hints.different_host))
        }
        FilterKind::SimpleCidrAffinity => match &prep.cidr {
            None => true,
            Some(Err(e)) => reject(why, || e.clone()),
            Some(Ok(cidr)) => match host.host_ip.map(|ip| IpAddr::V4(Ipv4Addr::from(ip))) {
                Some(ip) if cidr.contains(ip) => true,
                Some(ip) => reject(why, || format!("host ip {ip} outside {cidr}")),
                None => reject(why, || "host has no known ip".into()),
            },
        },
        FilterKind::AggregateInstanceExtraSpecs => {
            aggregate_filters::instance_extra_specs(&host.aggregates, req.flavor, config.era, why)
        }
        FilterKind::AggregateImagePropertiesIsolation => {
            aggregate_filters::image_properties_isolation(&host.aggregates, req.image, config.era, why)
        }
        FilterKind::AggregateMultiTenancyIsolation => {
            aggregate_filters::multi_tenancy_isolation(&host.aggregates, req.project_id, config.era, why)
        }
        FilterKind::AggregateTypeAffinity => {
            aggregate_filters::type_affinity(&host.aggregates, &req.flavor.name, config.era, why)
        }
        FilterKind::AvailabilityZone => match req.availability_zone {
            None => true,
            Some(az) => match host.aggregates.values.get("availability_zone") {
                Some(zones) => {
                    zones.contains(az) || reject(why, || format!("host is in zone(s) {zones:?}, not `{az}`"))
                }
                None => {
                    az == config.default_availability_zone
                        || reject(why, || {
                            format!("host is in the default zone `{}`, not `{az}`", config.default_availability_zone)
                        })
                }
            },
        },
        FilterKind::IoOps | FilterKind::AggregateIoOps => {
            let max = if kind == FilterKind::AggregateIoOps {
                host.aggregates.min_integer("max_io_ops_per_host").unwrap_or(config.max_io_ops_per_host as i64)
            } else {
                config.max_io_ops_per_host as i64
            };
            (host.node.num_io_ops as i64) < max
                || reject(why, || format!("{} io ops, max_io_ops_per_host {max}", host.node.num_io_ops))
        }
        FilterKind::NumInstances | FilterKind::AggregateNumInstances => {
            let max = if kind == FilterKind::AggregateNumInstances {
                host.aggregates.min_integer("max_instances_per_host").unwrap_or(config.max_instances_per_host as i64)
            } else {
                config.max_instances_per_host as i64
            };
            (host.node.num_instances as i64) < max
                || reject(why, || format!("{} instances, max_instances_per_host {max}", host.node.num_instances))
        }
        FilterKind::IsolatedHosts => {
            let host_isolated = config.isolated_hosts.contains(&host.node.host);
            let ok = if config.isolated_images.is_empty() {
                !config.restrict_isolated_hosts_to_isolated_images || !host_isolated
            } else if config.restrict_isolated_hosts_to_isolated_images {
                prep.image_isolated == host_isolated
            } else {
                !prep.image_isolated || host_isolated
            };
            ok || reject(why, || {
                format!(
                    "host {} isolated, image {} isolated",
                    if host_isolated { "is" } else { "is not" },
                    if prep.image_isolated { "is" } else { "is not" }
                )
            })
        }
        FilterKind::Json => match &prep.json {
            None => true,
            Some(Err(e)) => reject(why, || e.clone()),
            Some(Ok(query)) => {
                let ok = match json_eval(query, host) {
                    JsonVal::Bool(b) => b,
                    JsonVal::Bools(v) => v.iter().any(|b| *b),
                    other => other.truthy(),
                };
                ok || reject(why, || format!("query {query} is false"))
            }
        },
        FilterKind::Retry => {
            !req.retry_hosts.contains(&host.node.host) || reject(why, || "already tried for this instance".into())
        }
        FilterKind::Metrics => metrics::metrics_filter(host, &config.metrics, why),
        FilterKind::Ram | FilterKind::AggregateRam => {
            let inv = &host.inventories[1];
            let ratio = aggregate_ratio(host, kind == FilterKind::AggregateRam, "ram_allocation_ratio", inv);
            // Icehouse: limit = total * ratio; used counts the reserved memory.
            let usable = inv.total as f64 * ratio - (inv.reserved + host.used.0[1]) as f64;
            usable >= req.flavor.ram_mb as f64
                || reject(why, || {
                    let note = ratio_fallback_note(host, kind == FilterKind::AggregateRam, "ram_allocation_ratio");
                    format!("{usable} MB usable RAM < {} MB requested{note}", req.flavor.ram_mb)
                })
        }
        FilterKind::Core | FilterKind::AggregateCore => {
            let inv = &host.inventories[0];
            if inv.total == 0 {
                return true; // nova: "VCPUs not set; assuming CPU collection broken"
            }
            let ratio = aggregate_ratio(host, kind == FilterKind::AggregateCore, "cpu_allocation_ratio", inv);
            let free = inv.total as f64 * ratio - host.used.0[0] as f64;
            free >= req.flavor.vcpus as f64
                || reject(why, || {
                    let note = ratio_fallback_note(host, kind == FilterKind::AggregateCore, "cpu_allocation_ratio");
                    format!("{free} usable vCPUs < {} requested{note}", req.flavor.vcpus)
                })
        }
        FilterKind::Disk | FilterKind::AggregateDisk => {
            let inv = &host.inventories[2];
            let ratio = aggregate_ratio(host, kind == FilterKind::AggregateDisk, "disk_allocation_ratio", inv);
            let usable_mb = inv.total as f64 * 1024.0 * ratio - ((inv.reserved + host.used.0[2]) * 1024) as f64;
            // Icehouse's DiskFilter: 1024 * (root_gb + ephemeral_gb) + swap MB.
            let wanted = req.flavor.disk_mb();
            usable_mb >= wanted as f64
                || reject(why, || {
                    let note = ratio_fallback_note(host, kind == FilterKind::AggregateDisk, "disk_allocation_ratio");
                    format!("{usable_mb} MB usable disk < {wanted} MB requested{note}")
                })
        }
    }
}

/// The allocation ratio an Aggregate{Core,Ram,Disk}Filter uses: the smallest of the host's
/// aggregates' values, or the configured ratio when none sets it or a value is not a number
/// (nova logs a warning and falls back).
fn aggregate_ratio(host: &HostState, per_aggregate: bool, key: &str, inv: &Inventory) -> f64 {
    if per_aggregate {
        host.aggregates.min_number(key).unwrap_or(inv.allocation_ratio)
    } else {
        inv.allocation_ratio
    }
}

/// For a rejection's reason: the aggregates' `key` values when they are not all numbers.
fn ratio_fallback_note(host: &HostState, per_aggregate: bool, key: &str) -> String {
    match host.aggregates.values.get(key) {
        Some(vals) if per_aggregate && host.aggregates.min_number(key).is_none() => {
            format!(" (aggregate {key} {vals:?} is not a number: the configured ratio applies)")
        }
        _ => String::new(),
    }
}

fn image_properties(host: &HostState, wants: &ImageWants<'_>, why: &mut impl Why) -> bool {
    image_properties_node(&host.node, wants, why)
}

/// nova's `convert_version_to_str`: 9001002 is "9.1.2".
pub fn version_string(version: u64) -> String {
    format!("{}.{}.{}", version / 1_000_000, version / 1_000 % 1_000, version % 1_000)
}

/// One clause of a version predicate: the comparison and the version as (major, minor, micro).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionClause {
    pub op: std::cmp::Ordering,
    /// `op` or equal (`<=`, `>=`), or not `op` (`!=`, with `op` Equal).
    pub or_equal: bool,
    pub negated: bool,
    pub version: [u64; 3],
}

/// Parses oslo's `VersionPredicate` text for ImagePropertiesFilter's
/// `img_hv_requested_version`: comma-separated clauses `<op> <version>` with ops
/// `< <= == != >= >`, versions of one to three integers.
pub fn parse_version_predicate(predicate: &str) -> Result<Vec<VersionClause>, String> {
    use std::cmp::Ordering::*;
    predicate
        .split(',')
        .map(|clause| {
            let clause = clause.trim();
            let split = clause.find(|c: char| c.is_ascii_digit()).unwrap_or(clause.len());
            let (op, wanted) = clause.split_at(split);
            let parts: Option<Vec<u64>> = wanted.trim().split('.').map(|p| p.parse().ok()).collect();
            let Some(mut parts) = parts.filter(|p| !p.is_empty() && p.len() <= 3) else {
                return Err(format!("`{clause}` has no version like 6.0 or 9.1.2"));
            };
            parts.resize(3, 0);
            let version = [parts[0], parts[1], parts[2]];
            let (op, or_equal, negated) = match op.trim() {
                "<" => (Less, false, false),
                "<=" => (Less, true, false),
                "==" => (Equal, false, false),
                "!=" => (Equal, false, true),
                ">=" => (Greater, true, false),
                ">" => (Greater, false, false),
                other => return Err(format!("`{other}` is not one of < <= == != >= >")),
            };
            Ok(VersionClause { op, or_equal, negated, version })
        })
        .collect()
}

/// oslo's `VersionPredicate(req).satisfied_by(version)`, versions compared as integer
/// tuples. A malformed predicate matches nothing (nova raises and the host fails).
pub fn version_satisfies(version: u64, predicate: &str) -> bool {
    let have = [version / 1_000_000, version / 1_000 % 1_000, version % 1_000];
    let Ok(clauses) = parse_version_predicate(predicate) else { return false };
    clauses.iter().all(|c| {
        let ord = have.cmp(&c.version);
        (ord == c.op || (c.or_equal && ord.is_eq())) != c.negated
    })
}

/// A JsonFilter value. Python compares across types by raising; here a comparison of
/// different types is simply false.
#[derive(Debug, Clone, PartialEq)]
enum JsonVal {
    Number(f64),
    Text(String),
    Bool(bool),
    /// `not` returns a list of negated arguments.
    Bools(Vec<bool>),
}

impl JsonVal {
    fn truthy(&self) -> bool {
        match self {
            JsonVal::Number(n) => *n != 0.0,
            JsonVal::Text(s) => !s.is_empty(),
            JsonVal::Bool(b) => *b,
            JsonVal::Bools(v) => !v.is_empty(),
        }
    }

    fn cmp(&self, other: &JsonVal) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (JsonVal::Number(a), JsonVal::Number(b)) => a.partial_cmp(b),
            (JsonVal::Text(a), JsonVal::Text(b)) => Some(a.cmp(b)),
            (JsonVal::Bool(a), JsonVal::Bool(b)) => Some(a.cmp(b)),
            (JsonVal::Bool(a), JsonVal::Number(b)) => (*a as u8 as f64).partial_cmp(b),
            (JsonVal::Number(a), JsonVal::Bool(b)) => a.partial_cmp(&(*b as u8 as f64)),
            _ => None,
        }
    }
}

/// nova's JsonFilter `_process_filter`: `[op, arg, ...]` with ops `= < > in <= >= not or and`;
/// strings starting with `$` read host attributes (`$stats.key` walks the stats map); an
/// unknown attribute is dropped from the arguments.
fn json_eval(query: &serde_json::Value, host: &HostState) -> JsonVal {
    use std::cmp::Ordering::*;
    let Some(items) = query.as_array().filter(|a| !a.is_empty()) else {
        return JsonVal::Bool(true);
    };
    let op = items[0].as_str().unwrap_or("");
    let mut args: Vec<JsonVal> = Vec::with_capacity(items.len() - 1);
    for arg in &items[1..] {
        let v = match arg {
            serde_json::Value::Array(_) => Some(json_eval(arg, host)),
            serde_json::Value::String(s) if s.is_empty() => None,
            serde_json::Value::String(s) => match s.strip_prefix('$') {
                None => Some(JsonVal::Text(s.clone())),
                Some(path) => {
                    let mut parts = path.split('.');
                    let first = parts.next().unwrap_or("");
                    match (first, parts.next()) {
                        ("stats", Some(key)) => host.node.stats.get(key).map(|v| JsonVal::Text(v.clone())),
                        (name, None) => host.attribute(name).map(|a| match a {
                            Attr::Number(n) => JsonVal::Number(n),
                            Attr::Text(t) => JsonVal::Text(t.to_string()),
                        }),
                        _ => None,
                    }
                }
            },
            serde_json::Value::Number(n) => n.as_f64().map(JsonVal::Number),
            serde_json::Value::Bool(b) => Some(JsonVal::Bool(*b)),
            _ => None,
        };
        args.extend(v);
    }
    let compare = |ok: fn(std::cmp::Ordering) -> bool| {
        JsonVal::Bool(args.len() >= 2 && args[1..].iter().all(|a| args[0].cmp(a).is_some_and(ok)))
    };
    match op {
        "=" => compare(|o| o == Equal),
        "<" => compare(|o| o == Less),
        ">" => compare(|o| o == Greater),
        "<=" => compare(|o| o != Greater),
        ">=" => compare(|o| o != Less),
        "in" => JsonVal::Bool(args.len() >= 2 && args[1..].contains(&args[0])),
        "not" => JsonVal::Bools(args.iter().map(|a| !a.truthy()).collect()),
        "or" => JsonVal::Bool(args.iter().any(JsonVal::truthy)),
        "and" => JsonVal::Bool(args.iter().all(JsonVal::truthy)),
        _ => JsonVal::Bool(false),
    }
}

/// Checks a JsonFilter query's shape (for scenario validation): JSON, lists headed by a
/// known operator.
pub fn validate_json_query(query: &str) -> Result<(), String> {
    fn walk(v: &serde_json::Value) -> Result<(), String> {
        let Some(items) = v.as_array() else { return Ok(()) };
        let Some(op) = items.first() else { return Ok(()) };
        let op = op.as_str().ok_or_else(|| format!("operator must be a string, got {op}"))?;
        if !["=", "<", ">", "in", "<=", ">=", "not", "or", "and"].contains(&op) {
            return Err(format!("unknown operator `{op}` (use = < > in <= >= not or and)"));
        }
        items[1..].iter().try_for_each(walk)
    }
    let v: serde_json::Value = serde_json::from_str(query).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_array() {
        return Err("a query is a JSON list such as [\">=\", \"$free_ram_mb\", 1024]".into());
    }
    walk(&v)
}

macro_rules! weigher_kinds {
    ($($kind:ident = $name:literal, $default:expr, $minval:expr);* $(;)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum WeigherKind { $($kind),* }

        impl WeigherKind {
            pub const ALL: [WeigherKind; WeigherKind::COUNT] = [$(WeigherKind::$kind),*];
            pub const NAMES: [&'static str; WeigherKind::COUNT] = [$($name),*];

            /// The scenario's name (`control.scheduler.weighers`), nova's option without
            /// `_weight_multiplier`.
            pub fn name(self) -> &'static str {
                match self { $(WeigherKind::$kind => $name),* }
            }

            /// nova's default multipliers (BuildFailure's as applied: nova negates its option).
            pub fn default_multiplier(self) -> f64 {
                match self { $(WeigherKind::$kind => $default),* }
            }

            /// nova's `minval`: raw values are clamped to it and normalisation starts there
            /// instead of at the smallest value.
            pub fn minval(self) -> Option<f64> {
                match self { $(WeigherKind::$kind => $minval),* }
            }
        }
    };
}

weigher_kinds! {
    Ram = "ram", 1.0, Some(0.0);
    Cpu = "cpu", 1.0, Some(0.0);
    Disk = "disk", 1.0, Some(0.0);
    IoOps = "io_ops", -1.0, Some(0.0);
    NumInstances = "num_instances", 0.0, None;
    HypervisorVersion = "hypervisor_version", 1.0, None;
    BuildFailure = "build_failure", -1_000_000.0, None;
    SoftAffinity = "soft_affinity", 1.0, None;
    SoftAntiAffinity = "soft_anti_affinity", 1.0, None;
    Metrics = "metrics", 1.0, None;
}

impl WeigherKind {
    pub const COUNT: usize = 10;

    pub fn from_name(name: &str) -> Option<WeigherKind> {
        WeigherKind::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Whether 2014.1 shipped this weigher (only `ram.py` and `metrics.py`).
    pub fn in_icehouse(self) -> bool {
        matches!(self, WeigherKind::Ram | WeigherKind::Metrics)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The aggregate metadata key that overrides the multiplier on a host.
    pub fn aggregate_key(self) -> String {
        format!("{}_weight_multiplier", self.name())
    }

    /// nova's `_weigh_object` (before the minval clamp).
    #[inline]
    pub fn raw(self, host: &HostState, req: &RequestView<'_>, config: &SchedulerConfig) -> f64 {
        match self {
            WeigherKind::Ram => host.free_ram_mb(),
            WeigherKind::Cpu => host.free_vcpus(),
            WeigherKind::Disk => host.free_disk_mb(),
            WeigherKind::IoOps => host.node.num_io_ops as f64,
            WeigherKind::NumInstances => host.node.num_instances as f64,
            WeigherKind::HypervisorVersion => host.node.hypervisor_version as f64,
            WeigherKind::BuildFailure => host.failed_builds as f64,
            WeigherKind::SoftAffinity => match req.group_policy {
                Some(GroupPolicy::SoftAffinity) => host.group_members_here as f64,
                _ => 0.0,
            },
            WeigherKind::SoftAntiAffinity => match req.group_policy {
                Some(GroupPolicy::SoftAntiAffinity) => -(host.group_members_here as f64),
                _ => 0.0,
            },
            WeigherKind::Metrics => metrics::metrics_weight(host, config),
        }
    }

    /// Whether every host weighs 0 for this request (soft-affinity weighers without a soft
    /// group, metrics without a weight_setting): skipping them changes no score.
    fn idle(self, req: &RequestView<'_>, config: &SchedulerConfig) -> bool {
        match self {
            WeigherKind::SoftAffinity => req.group_policy != Some(GroupPolicy::SoftAffinity),
            WeigherKind::SoftAntiAffinity => req.group_policy != Some(GroupPolicy::SoftAntiAffinity),
            WeigherKind::Metrics => config.metrics.weight_setting.is_empty(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    pub filters: Vec<FilterKind>,
    /// Weighers with their multipliers, applied in this (sorted) order.
    pub weighers: BTreeMap<WeigherKind, f64>,
    pub host_subset_size: usize,
    pub max_attempts: u32,
    /// Current era: only hosts placement offers (capacity, min/max unit, step) are filtered,
    /// at most `candidate_limit` of them in input order. Icehouse: no placement, every host.
    pub use_placement: bool,
    /// nova's `max_placement_results` (1000).
    pub candidate_limit: usize,
    /// IoOpsFilter's `max_io_ops_per_host` (8).
    pub max_io_ops_per_host: u64,
    /// NumInstancesFilter's `max_instances_per_host` (50).
    pub max_instances_per_host: u64,
    /// IsolatedHostsFilter's host and image (name) lists and its restrict flag (true).
    pub isolated_hosts: Vec<String>,
    pub isolated_images: Vec<String>,
    pub restrict_isolated_hosts_to_isolated_images: bool,
    /// Zone of hosts in no aggregate with an `availability_zone` ("nova").
    pub default_availability_zone: String,
    /// Whose filter semantics: today's nova or 2014.1's (see each filter).
    #[serde(default)]
    pub era: Era,
    /// `[metrics]`: MetricsFilter's and MetricsWeigher's setting.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// ImagePropertiesFilter's `image_properties_default_architecture`: the architecture of
    /// an image that names none (unset: none).
    #[serde(default)]
    pub image_properties_default_architecture: Option<String>,
}

impl Default for SchedulerConfig {
    /// nova today: default filters, every weigher at its default multiplier.
    fn default() -> Self {
        SchedulerConfig {
            filters: FilterKind::defaults(),
            weighers: WeigherKind::ALL.into_iter().map(|w| (w, w.default_multiplier())).collect(),
            host_subset_size: 1,
            max_attempts: 3,
            use_placement: true,
            candidate_limit: CANDIDATE_LIMIT,
            max_io_ops_per_host: 8,
            max_instances_per_host: 50,
            isolated_hosts: Vec::new(),
            isolated_images: Vec::new(),
            restrict_isolated_hosts_to_isolated_images: true,
            default_availability_zone: "nova".into(),
            era: Era::Current,
            metrics: MetricsConfig::default(),
            image_properties_default_architecture: None,
        }
    }
}

impl SchedulerConfig {
    /// Icehouse (2014.1): its default filters, the weighers it shipped (`all_weighers`: RAM
    /// and metrics), no placement.
    pub fn icehouse() -> SchedulerConfig {
        SchedulerConfig {
            filters: FilterKind::icehouse_defaults(),
            weighers: [(WeigherKind::Ram, 1.0), (WeigherKind::Metrics, 1.0)].into_iter().collect(),
            use_placement: false,
            era: Era::Icehouse,
            ..SchedulerConfig::default()
        }
    }
}

/// nova's `normalize` with a weigher's `minval`: map values to [0, 1] between
/// `minval` (or the smallest value) and the largest; all equal gives all 0.
pub fn normalize_with(values: &[f64], minval: Option<f64>) -> Vec<f64> {
    let (lo, hi) = bounds(values.iter().copied(), minval);
    values.iter().map(|&v| normalized(v, lo, hi)).collect()
}

/// Min-max normalisation (a weigher without `minval`).
pub fn normalize(values: &[f64]) -> Vec<f64> {
    normalize_with(values, None)
}

#[inline]
fn bounds(values: impl Iterator<Item = f64>, minval: Option<f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (minval.unwrap_or(lo), hi)
}

#[inline]
fn normalized(v: f64, lo: f64, hi: f64) -> f64 {
    if hi <= lo {
        0.0
    } else {
        (v - lo) / (hi - lo)
    }
}

/// Why no host was found: the step that left nothing, with the count it received.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoValidHost {
    pub reason: String,
}

impl std::fmt::Display for NoValidHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "No valid host was found. {}", self.reason)
    }
}

/// Buffers for one decision at a time. Keep one per scheduler (or strategy) and the hot path
/// allocates nothing once they have grown to the cluster's size.
#[derive(Debug, Default)]
pub struct Workspace {
    survivors: Vec<usize>,
    active: Vec<FilterKind>,
    /// The weighers whose raw values the filter pass records for each survivor.
    collected: Vec<WeigherKind>,
    /// Those raw values, one row per survivor, each weigher at its [`WeigherKind::index`]
    /// (fixed-size rows: no per-host `memmove` call, no per-weigher vector).
    rows: Vec<[f64; WeigherKind::COUNT]>,
    weights: Vec<f64>,
    keys: Vec<u128>,
    order: Vec<usize>,
    /// Per host index, what the hot path reads from the node record, so that it does not
    /// follow the node pointer (and its strings) on every decision. An entry is valid while
    /// it holds the same `Arc` as the host state: the clone it keeps means the node cannot
    /// change in place (`Arc::get_mut` fails) nor its address be reused.
    facts: Vec<Option<NodeFacts>>,
    /// ImageProperties verdicts per image class of [`Workspace::table_id`]'s table, for
    /// image generation `verdicts_for`.
    class_verdicts: Vec<u8>,
    verdicts_for: u64,
    /// The [`HostTable`] the class verdicts are for.
    table_id: u64,
    /// The table path's survivors (host indices; only the first n of a decision are its
    /// own: these buffers only grow), one weigher's clamped values over them, their scores,
    /// and the flags seen among them.
    picked: Vec<u32>,
    column: Vec<f64>,
    scores: Vec<f64>,
    flags_seen: u32,
    /// The survivors' clamped raw rows, their approximate weights, the positions whose
    /// exact weight is computed, and how many hosts the decision wants.
    cand: Vec<[f64; 8]>,
    approx: Vec<f64>,
    scored: Vec<u32>,
    wanted: usize,
    /// The image requirements the cached ImageProperties verdicts are for.
    image_key: Option<ImageKey>,
    image_generation: u64,
}

#[derive(Debug)]
struct NodeFacts {
    node: Arc<ComputeNode>,
    num_io_ops: f64,
    num_instances: f64,
    hypervisor_version: f64,
    /// ImagePropertiesFilter's verdict for `image_generation`.
    image_generation: u64,
    image_ok: bool,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace::default()
    }

    /// Placement (current era) then the configured filters; returns the surviving host
    /// indices in input order.
    pub fn filter(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        config: &SchedulerConfig,
    ) -> Result<&[usize], NoValidHost> {
        self.collected.clear();
        self.filter_pass(hosts, req, config)?;
        Ok(&self.survivors)
    }

    /// One pass over the hosts: placement's check, every active filter (short-circuiting),
    /// and for survivors the raw value of every weigher in `self.weighers`, while the host's
    /// state is in cache.
    fn filter_pass(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        config: &SchedulerConfig,
    ) -> Result<(), NoValidHost> {
        self.survivors.clear();
        if hosts.is_empty() {
            return Err(NoValidHost { reason: "no allocation candidates from placement".into() });
        }
        let prepared = Prepared::new(req, config);
        self.active.clear();
        self.active.extend(config.filters.iter().copied().filter(|f| f.active(&prepared, req, config)));
        self.rows.clear();
        if !self.image_key.as_ref().is_some_and(|k| prepared.image.same_key(k)) {
            self.image_key = Some(prepared.image.key());
            self.image_generation += 1;
        }
        if self.facts.len() < hosts.len() {
            self.facts.resize_with(hosts.len(), || None);
        }
        let generation = self.image_generation;
        let resources = req.flavor.resources();
        let limit = if config.use_placement { config.candidate_limit } else { usize::MAX };
        let mut candidates = 0usize;
        for (i, host) in hosts.iter().enumerate() {
            if config.use_placement {
                if candidates == limit {
                    break;
                }
                if !host.placement_fits(&resources) {
                    continue;
                }
                candidates += 1;
            }
            let facts = match &mut self.facts[i] {
                Some(f) if Arc::ptr_eq(&f.node, &host.node) => f,
                slot => slot.insert(NodeFacts {
                    node: host.node.clone(),
                    num_io_ops: host.node.num_io_ops as f64,
                    num_instances: host.node.num_instances as f64,
                    hypervisor_version: host.node.hypervisor_version as f64,
                    image_generation: 0,
                    image_ok: false,
                }),
            };
            let ok = self.active.iter().all(|&f| match f {
                FilterKind::ImageProperties => {
                    if facts.image_generation != generation {
                        facts.image_ok = image_properties(host, &prepared.image, &mut Quiet);
                        facts.image_generation = generation;
                    }
                    facts.image_ok
                }
                _ => passes(f, &prepared, host, req, config, &mut Quiet),
            });
            if ok {
                self.survivors.push(i);
                if !self.collected.is_empty() {
                    // The weighers' raw values while the host is in cache; the node's values
                    // come from the cached facts.
                    // Filled in place: a row built on the stack and copied costs store-forwarding
                    // stalls (scalar writes read back as vectors).
                    self.rows.push([0.0; WeigherKind::COUNT]);
                    let row = self.rows.last_mut().expect("just pushed");
                    for &w in &self.collected {
                        row[w.index()] = match w {
                            WeigherKind::IoOps => facts.num_io_ops,
                            WeigherKind::NumInstances => facts.num_instances,
                            WeigherKind::HypervisorVersion => facts.hypervisor_version,
                            _ => w.raw(host, req, config),
                        };
                    }
                }
            }
        }
        if self.survivors.is_empty() {
            // Slow path: name the step that left nothing, as nova's filter handler logs it.
            return Err(explain_filters(hosts, req, config, false)
                .1
                .unwrap_or_else(|| NoValidHost { reason: "no host passed the filters".into() }));
        }
        Ok(())
    }

    /// nova's weighing of the survivors from the columns the filter pass collected: fills
    /// `weights` in survivor order.
    fn weigh(&mut self, hosts: &[HostState], req: &RequestView<'_>, config: &SchedulerConfig) {
        let n = self.survivors.len();
        self.weights.clear();
        self.weights.resize(n, 0.0);
        // nova's weight handler leaves a single host unweighed.
        if n <= 1 {
            return;
        }
        // Aggregates override multipliers since Stein; not in Icehouse.
        let overrides =
            config.era == Era::Current && self.survivors.iter().any(|&i| hosts[i].aggregates.has_multipliers);
        self.rows.resize(n, [0.0; WeigherKind::COUNT]);
        for (&weigher, &multiplier) in &config.weighers {
            // A weigher off in the configuration still counts where an aggregate sets it.
            if weigher.idle(req, config) || (multiplier == 0.0 && !overrides) {
                continue;
            }
            let at = weigher.index();
            if !self.collected.contains(&weigher) {
                for (row, &i) in self.rows.iter_mut().zip(&self.survivors) {
                    row[at] = weigher.raw(&hosts[i], req, config);
                }
            }
            let per_host = overrides.then_some((hosts, &self.survivors[..]));
            add_column(&mut self.weights, &mut self.rows, at, weigher, multiplier, per_host);
        }
    }

    /// Filter, weigh and order `hosts`: indices with the subset pick first, then the rest
    /// in weight order (ties keep input order, as Python's stable sort does).
    pub fn sorted_hosts(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        config: &SchedulerConfig,
        rng: &mut dyn RngCore,
    ) -> Result<&[usize], NoValidHost> {
        self.ordered(hosts, req, config, rng, usize::MAX)
    }

    /// The first `k` hosts of [`Workspace::sorted_hosts`]'s order (the pick and its
    /// alternates), without ordering the rest: the same hosts in the same order, drawing
    /// the same random numbers.
    pub fn best_hosts(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        config: &SchedulerConfig,
        rng: &mut dyn RngCore,
        k: usize,
    ) -> Result<&[usize], NoValidHost> {
        self.ordered(hosts, req, config, rng, k)
    }

    fn ordered(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        config: &SchedulerConfig,
        rng: &mut dyn RngCore,
        k: usize,
    ) -> Result<&[usize], NoValidHost> {
        self.collect_weighers(req, config);
        self.filter_pass(hosts, req, config)?;
        metrics::required_metrics(self.survivors.iter().map(|&i| &hosts[i]), config)?;
        self.weigh(hosts, req, config);
        self.finish(config, rng, k)
    }

    fn collect_weighers(&mut self, req: &RequestView<'_>, config: &SchedulerConfig) {
        self.collected.clear();
        self.collected
            .extend(config.weighers.iter().filter(|(w, m)| **m != 0.0 && !w.idle(req, config)).map(|(w, _)| *w));
    }

    /// Orders the weighed survivors: the first `k` exactly (all when `k` is larger), then the
    /// subset pick moved to the front.
    fn finish(&mut self, config: &SchedulerConfig, rng: &mut dyn RngCore, k: usize) -> Result<&[usize], NoValidHost> {
        self.keys.clear();
        self.keys.extend(
            self.weights.iter().zip(&self.survivors).map(|(&w, &i)| ((descending_key(w) as u128) << 64) | i as u128),
        );
        // Ascending (key, index) is the stable descending order by weight.
        let n = self.keys.len();
        let subset = config.host_subset_size.clamp(1, n);
        let wanted = k.max(subset).min(n);
        if wanted < n {
            self.keys.select_nth_unstable(wanted - 1);
            self.keys[..wanted].sort_unstable();
        } else {
            self.keys.sort_unstable();
        }
        self.order.clear();
        self.order.extend(self.keys[..wanted].iter().map(|&key| key as u64 as usize));
        let pick = if subset > 1 { rng.gen_range(0..subset) } else { 0 };
        self.order[..=pick].rotate_right(1);
        self.order.truncate(k.min(n));
        Ok(&self.order)
    }
}

/// Clamps column `at` of `rows` to the weigher's minval, normalises it and adds multiplier * value to
/// `weights`; with `per_host`, each host's aggregates may override the multiplier.
fn add_column(
    weights: &mut [f64],
    rows: &mut [[f64; WeigherKind::COUNT]],
    at: usize,
    weigher: WeigherKind,
    multiplier: f64,
    per_host: Option<(&[HostState], &[usize])>,
) {
    // One pass: nova's minval clamp and the bounds (raw values are finite: no NaN care).
    let minval = weigher.minval();
    let floor = minval.unwrap_or(f64::NEG_INFINITY);
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for row in rows.iter_mut() {
        let v = &mut row[at];
        if *v < floor {
            *v = floor;
        }
        lo = if *v < lo { *v } else { lo };
        hi = if *v > hi { *v } else { hi };
    }
    let lo = minval.unwrap_or(lo);
    if hi <= lo {
        return; // every host normalises to 0
    }
    let range = hi - lo;
    match per_host {
        None => {
            for (w, row) in weights.iter_mut().zip(rows.iter()) {
                *w += multiplier * ((row[at] - lo) / range);
            }
        }
        Some((hosts, survivors)) => {
            for ((w, row), &i) in weights.iter_mut().zip(rows.iter()).zip(survivors) {
                let m = hosts[i].aggregates.weigher_multiplier(weigher).unwrap_or(multiplier);
                *w += m * ((row[at] - lo) / range);
            }
        }
    }
}

/// A u64 whose ascending order is `weight`'s descending order (total order on f64).
#[inline]
fn descending_key(weight: f64) -> u64 {
    let bits = weight.to_bits();
    let ascending = if bits >> 63 == 1 { !bits } else { bits | (1 << 63) };
    !ascending
}

/// Filter, weigh and order `hosts` for one request. Returns host indices: the subset pick
/// first, then the rest in weight order. Allocates its buffers; a caller deciding often
/// keeps a [`Workspace`] instead.
pub fn sorted_hosts<R: Rng>(
    hosts: &[HostState],
    req: &RequestView<'_>,
    config: &SchedulerConfig,
    rng: &mut R,
) -> Result<Vec<usize>, NoValidHost> {
    let mut ws = Workspace::new();
    ws.sorted_hosts(hosts, req, config, rng).map(<[usize]>::to_vec)
}

/// One filtering step of [`explain`]: placement or a filter, with what it kept and dropped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterStep {
    pub filter: String,
    /// False when the filter cannot reject anything for this request (nova still runs it).
    pub active: bool,
    pub kept: Vec<String>,
    pub rejected: Vec<Rejection>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    pub host: String,
    pub reason: String,
}

/// One weigher's values over the surviving hosts, in survivor order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeigherColumn {
    pub weigher: String,
    /// The configured multiplier (hosts' aggregates may override it per host).
    pub multiplier: f64,
    pub minval: Option<f64>,
    pub values: Vec<WeigherValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeigherValue {
    pub host: String,
    pub raw: f64,
    pub normalised: f64,
    pub multiplier: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostScore {
    pub host: String,
    pub index: usize,
    pub score: f64,
}

/// Why a request lands where it does (or gets NoValidHost): every step, every value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub flavor: String,
    pub image: String,
    pub hosts_in: usize,
    pub steps: Vec<FilterStep>,
    pub weighers: Vec<WeigherColumn>,
    /// Survivors by final score, best first (before the subset pick).
    pub scores: Vec<HostScore>,
    pub host_subset_size: usize,
    /// The host claimed first, and the alternates returned with it (max_attempts - 1).
    pub pick: Option<String>,
    pub alternates: Vec<String>,
    /// Host indices in claim order: exactly what [`sorted_hosts`] returns for the same rng.
    pub order: Vec<usize>,
    pub no_valid_host: Option<NoValidHost>,
    /// The guest CPU topology nova would choose for the flavor and image, or its error.
    pub cpu_topology: Result<CpuTopology, String>,
}

/// Filter step by step; also returns NoValidHost naming the first step that left no host.
/// With `detail`, each step records the hosts it kept and those it rejected with the reason;
/// without, it only counts (a NoValidHost's reason needs no more, and formatting a reason for
/// each of thousands of hosts would cost more than the decision).
fn explain_filters(
    hosts: &[HostState],
    req: &RequestView<'_>,
    config: &SchedulerConfig,
    detail: bool,
) -> (Vec<FilterStep>, Option<NoValidHost>, Vec<usize>) {
    let prepared = Prepared::new(req, config);
    let name = |i: usize| hosts[i].node.host.clone();
    let mut steps = Vec::new();
    let mut survivors: Vec<usize> = (0..hosts.len()).collect();
    if hosts.is_empty() {
        let nvh = NoValidHost { reason: "no allocation candidates from placement".into() };
        return (steps, Some(nvh), survivors);
    }
    if config.use_placement {
        let resources = req.flavor.resources();
        let mut step = FilterStep { filter: "Placement".into(), active: true, kept: vec![], rejected: vec![] };
        let mut kept = Vec::new();
        for i in survivors {
            if kept.len() == config.candidate_limit {
                if detail {
                    step.rejected.push(Rejection { host: name(i), reason: "beyond the candidate limit".into() });
                }
                continue;
            }
            let provider =
                crate::model::Provider { host: String::new(), inventories: hosts[i].inventories, used: hosts[i].used };
            match crate::placement::fits(&provider, &resources) {
                Ok(()) => kept.push(i),
                Err(unfit) if detail => step.rejected.push(Rejection { host: name(i), reason: unfit.to_string() }),
                Err(_) => {}
            }
        }
        if detail {
            step.kept = kept.iter().map(|&i| name(i)).collect();
        }
        let before = hosts.len();
        steps.push(step);
        survivors = kept;
        if survivors.is_empty() {
            let reason = format!("placement returned 0 allocation candidates of {before} hosts");
            return (steps, Some(NoValidHost { reason }), survivors);
        }
    }
    for &filter in &config.filters {
        let active = filter.active(&prepared, req, config);
        let mut step = FilterStep { filter: filter.name().into(), active, kept: vec![], rejected: vec![] };
        let before = survivors.len();
        if active && detail {
            survivors.retain(|&i| {
                let mut why = Reason(None);
                let ok = passes(filter, &prepared, &hosts[i], req, config, &mut why);
                if !ok {
                    step.rejected.push(Rejection { host: name(i), reason: why.0.unwrap_or_default() });
                }
                ok
            });
        } else if active {
            survivors.retain(|&i| passes(filter, &prepared, &hosts[i], req, config, &mut Quiet));
        }
        if detail {
            step.kept = survivors.iter().map(|&i| name(i)).collect();
        }
        steps.push(step);
        if survivors.is_empty() {
            let reason = format!("filter {} returned 0 of {before} hosts", filter.name());
            return (steps, Some(NoValidHost { reason }), survivors);
        }
    }
    (steps, None, survivors)
}

/// Explains one decision. Draws from `rng` exactly as [`sorted_hosts`] does, so the same
/// seed gives the same pick.
pub fn explain(
    hosts: &[HostState],
    req: &RequestView<'_>,
    config: &SchedulerConfig,
    rng: &mut dyn RngCore,
) -> Explanation {
    let (steps, nvh, survivors) = explain_filters(hosts, req, config, true);
    let mut out = Explanation {
        flavor: req.flavor.name.clone(),
        image: req.image.name.clone(),
        hosts_in: hosts.len(),
        steps,
        weighers: Vec::new(),
        scores: Vec::new(),
        host_subset_size: config.host_subset_size,
        pick: None,
        alternates: Vec::new(),
        order: Vec::new(),
        no_valid_host: nvh,
        cpu_topology: cpu_topology::best_cpu_topology(req.flavor, req.image).map_err(|e| e.to_string()),
    };
    if let Err(e) = metrics::required_metrics(survivors.iter().map(|&i| &hosts[i]), config) {
        out.no_valid_host = Some(e);
    }
    if out.no_valid_host.is_some() {
        return out;
    }
    let mut weights = vec![0.0; survivors.len()];
    if survivors.len() > 1 {
        let per_aggregate = config.era == Era::Current;
        let overrides = per_aggregate && survivors.iter().any(|&i| hosts[i].aggregates.has_multipliers);
        for (&weigher, &multiplier) in &config.weighers {
            let minval = weigher.minval();
            let floor = minval.unwrap_or(f64::NEG_INFINITY);
            let raw: Vec<f64> = survivors.iter().map(|&i| weigher.raw(&hosts[i], req, config).max(floor)).collect();
            let (lo, hi) = bounds(raw.iter().copied(), minval);
            let skipped = (multiplier == 0.0 && !overrides) || weigher.idle(req, config) || hi <= lo;
            let mut column = WeigherColumn { weigher: weigher.name().into(), multiplier, minval, values: Vec::new() };
            for (k, &i) in survivors.iter().enumerate() {
                let m = match per_aggregate {
                    true => hosts[i].aggregates.weigher_multiplier(weigher).unwrap_or(multiplier),
                    false => multiplier,
                };
                let n = normalized(raw[k], lo, hi);
                if !skipped {
                    weights[k] += if overrides { m * n } else { multiplier * ((raw[k] - lo) / (hi - lo)) };
                }
                column.values.push(WeigherValue {
                    host: hosts[i].node.host.clone(),
                    raw: raw[k],
                    normalised: n,
                    multiplier: m,
                });
            }
            out.weighers.push(column);
        }
    }
    let mut ranked: Vec<(usize, f64)> = survivors.iter().copied().zip(weights.iter().copied()).collect();
    ranked.sort_by_key(|&(i, w)| (descending_key(w), i));
    out.scores =
        ranked.iter().map(|&(i, w)| HostScore { host: hosts[i].node.host.clone(), index: i, score: w }).collect();
    let mut order: Vec<usize> = ranked.iter().map(|&(i, _)| i).collect();
    let subset = config.host_subset_size.clamp(1, order.len());
    let pick = if subset > 1 { rng.gen_range(0..subset) } else { 0 };
    order[..=pick].rotate_right(1);
    out.pick = Some(hosts[order[0]].node.host.clone());
    let alternates_max = config.max_attempts.saturating_sub(1) as usize;
    out.alternates = order[1..].iter().take(alternates_max).map(|&i| hosts[i].node.host.clone()).collect();
    out.order = order;
    out
}

mod aggregate_filters;
mod capabilities;
pub mod image_props;
mod metrics;
pub use metrics::{parse_weight_setting, MetricsConfig};
mod table;
pub use table::HostTable;

#[cfg(test)]
mod fidelity_tests;
#[cfg(test)]
mod tests;
