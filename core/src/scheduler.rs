//! The filter scheduler's pure part: host states in, an ordered list of hosts out.
//!
//! Mirrors nova's `FilterScheduler._get_sorted_hosts`: run the enabled filters in order,
//! weigh the survivors (each weigher min-max normalised over the candidates, times its
//! multiplier, summed), sort by weight descending (stable), then pick uniformly among the
//! best `host_subset_size` and move that host to the front. The service claims the hosts in
//! this order and returns the first claimed one plus alternates.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::extra_specs;
use crate::model::{ComputeNode, Flavor, GroupPolicy, Image, Inventory, Resources};

/// Everything the filters and weighers read about one host.
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
}

impl HostState {
    pub fn free_ram_mb(&self) -> f64 {
        let inv = &self.inventories[1];
        inv.total as f64 - inv.reserved as f64 - self.used.0[1] as f64
    }
    /// nova's CPUWeigher: vcpus_total * cpu_allocation_ratio - vcpus_used.
    pub fn free_vcpus(&self) -> f64 {
        let inv = &self.inventories[0];
        inv.total as f64 * inv.allocation_ratio - self.used.0[0] as f64
    }
    pub fn free_disk_gb(&self) -> f64 {
        let inv = &self.inventories[2];
        (inv.total as f64 - inv.reserved as f64) * inv.allocation_ratio - self.used.0[2] as f64
    }

    /// Host attributes by nova's HostState attribute names, for ComputeCapabilities.
    fn attribute(&self, name: &str) -> Option<String> {
        Some(match name {
            "host" => self.node.host.clone(),
            "hypervisor_type" => self.node.hypervisor_type.clone(),
            "hypervisor_version" => self.node.hypervisor_version.to_string(),
            "cpu_arch" => self.node.cpu_arch.clone(),
            "vcpus_total" => self.inventories[0].total.to_string(),
            "vcpus_used" => self.used.0[0].to_string(),
            "total_usable_ram_mb" => self.inventories[1].total.to_string(),
            "free_ram_mb" => (self.free_ram_mb() as i64).to_string(),
            "free_disk_mb" => ((self.free_disk_gb() * 1024.0) as i64).to_string(),
            "num_instances" => self.node.num_instances.to_string(),
            "num_io_ops" => self.node.num_io_ops.to_string(),
            _ => return self.node.stats.get(name).cloned(),
        })
    }
}

/// The request as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct RequestView<'a> {
    pub flavor: &'a Flavor,
    pub image: &'a Image,
    pub group_policy: Option<GroupPolicy>,
    pub group_max_per_host: u32,
    /// Hosts that already hold a member of the group (for affinity).
    pub group_hosts: &'a [String],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FilterKind {
    AllHosts,
    Compute,
    ComputeCapabilities,
    ImageProperties,
    ServerGroupAffinity,
    ServerGroupAntiAffinity,
}

impl FilterKind {
    pub fn from_name(name: &str) -> Option<FilterKind> {
        let name = name.strip_suffix("Filter").unwrap_or(name);
        Some(match name {
            "AllHosts" => FilterKind::AllHosts,
            "Compute" => FilterKind::Compute,
            "ComputeCapabilities" => FilterKind::ComputeCapabilities,
            "ImageProperties" => FilterKind::ImageProperties,
            "ServerGroupAffinity" => FilterKind::ServerGroupAffinity,
            "ServerGroupAntiAffinity" => FilterKind::ServerGroupAntiAffinity,
            _ => return None,
        })
    }

    pub const NAMES: [&'static str; 6] = [
        "AllHosts",
        "Compute",
        "ComputeCapabilities",
        "ImageProperties",
        "ServerGroupAffinity",
        "ServerGroupAntiAffinity",
    ];

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

    /// Whether `host` passes this filter for `req`. `Err` carries the reason for rejecting.
    pub fn check(self, host: &HostState, req: &RequestView<'_>) -> Result<(), String> {
        match self {
            FilterKind::AllHosts => Ok(()),
            FilterKind::Compute => {
                if host.service_disabled {
                    Err("service disabled".into())
                } else if !host.service_up {
                    Err("service down (no heartbeat within service_down_time)".into())
                } else {
                    Ok(())
                }
            }
            FilterKind::ComputeCapabilities => compute_capabilities(host, req.flavor),
            FilterKind::ImageProperties => image_properties(host, req.image),
            FilterKind::ServerGroupAntiAffinity => match req.group_policy {
                Some(GroupPolicy::AntiAffinity) if host.group_members_here >= req.group_max_per_host => {
                    Err(format!("{} group member(s) already here", host.group_members_here))
                }
                _ => Ok(()),
            },
            FilterKind::ServerGroupAffinity => match req.group_policy {
                Some(GroupPolicy::Affinity)
                    if !req.group_hosts.is_empty() && !req.group_hosts.contains(&host.node.host) =>
                {
                    Err("not a host of the affinity group".into())
                }
                _ => Ok(()),
            },
        }
    }
}

fn compute_capabilities(host: &HostState, flavor: &Flavor) -> Result<(), String> {
    for (key, req) in &flavor.extra_specs {
        let scope: Vec<&str> = key.split(':').collect();
        let path: &[&str] = if scope.len() == 1 {
            // Unscoped keys count only if the host has such an attribute (nova skips others).
            if host.attribute(key).is_none() {
                continue;
            }
            &scope
        } else if scope[0] == "capabilities" {
            &scope[1..]
        } else {
            continue;
        };
        // Nested capabilities (`capabilities:stats:x`) walk into the stats map.
        let value = match path {
            [name] => host.attribute(name),
            ["stats", name] => host.node.stats.get(*name).cloned(),
            _ => None,
        };
        let Some(value) = value else {
            return Err(format!("no capability `{}`", path.join(":")));
        };
        match extra_specs::matches(&value, req) {
            Ok(true) => {}
            Ok(false) => return Err(format!("{key}={value} does not satisfy `{req}`")),
            Err(e) => return Err(format!("{key}: {e}")),
        }
    }
    Ok(())
}

/// Whether the host supports (arch, hypervisor type, vm mode); `None` matches anything.
/// A libvirt KVM host also offers plain QEMU guests.
fn supports(node: &ComputeNode, arch: Option<&str>, hv_type: Option<&str>, vm_mode: Option<&str>) -> bool {
    let arch_ok = arch.is_none_or(|a| a.eq_ignore_ascii_case(&node.cpu_arch));
    let hv_ok = hv_type.is_none_or(|h| {
        h.eq_ignore_ascii_case(&node.hypervisor_type)
            || (h.eq_ignore_ascii_case("qemu") && node.hypervisor_type.eq_ignore_ascii_case("kvm"))
    });
    let mode_ok = vm_mode.is_none_or(|m| node.vm_modes.iter().any(|v| v.eq_ignore_ascii_case(m)));
    arch_ok && hv_ok && mode_ok && !node.vm_modes.is_empty()
}

fn image_properties(host: &HostState, image: &Image) -> Result<(), String> {
    let prop = |names: &[&str]| names.iter().find_map(|n| image.properties.get(*n)).map(String::as_str);
    let arch = prop(&["hw_architecture", "architecture"]);
    let hv_type = prop(&["img_hv_type", "hypervisor_type"]);
    let vm_mode = prop(&["hw_vm_mode", "vm_mode"]);
    let version = image.properties.get("img_hv_requested_version");
    if arch.is_none() && hv_type.is_none() && vm_mode.is_none() && version.is_none() {
        return Ok(());
    }
    if !supports(&host.node, arch, hv_type, vm_mode) {
        return Err(format!(
            "image wants arch={} hypervisor_type={} vm_mode={}, host is {} {} {:?}",
            arch.unwrap_or("*"),
            hv_type.unwrap_or("*"),
            vm_mode.unwrap_or("*"),
            host.node.cpu_arch,
            host.node.hypervisor_type,
            host.node.vm_modes
        ));
    }
    if let Some(req) = version {
        let have = host.node.hypervisor_version.to_string();
        if !extra_specs::matches(&have, req).unwrap_or(false) {
            return Err(format!("hypervisor version {have} does not satisfy `{req}`"));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WeigherKind {
    Ram,
    Cpu,
    Disk,
    IoOps,
    NumInstances,
    BuildFailure,
}

impl WeigherKind {
    pub fn from_name(name: &str) -> Option<WeigherKind> {
        Some(match name {
            "ram" => WeigherKind::Ram,
            "cpu" => WeigherKind::Cpu,
            "disk" => WeigherKind::Disk,
            "io_ops" => WeigherKind::IoOps,
            "num_instances" => WeigherKind::NumInstances,
            "build_failure" => WeigherKind::BuildFailure,
            _ => return None,
        })
    }

    pub const NAMES: [&'static str; 6] = ["ram", "cpu", "disk", "io_ops", "num_instances", "build_failure"];

    fn raw(self, host: &HostState) -> f64 {
        match self {
            WeigherKind::Ram => host.free_ram_mb(),
            WeigherKind::Cpu => host.free_vcpus(),
            WeigherKind::Disk => host.free_disk_gb(),
            WeigherKind::IoOps => host.node.num_io_ops as f64,
            WeigherKind::NumInstances => host.node.num_instances as f64,
            WeigherKind::BuildFailure => host.failed_builds as f64,
        }
    }

    /// nova's default multipliers.
    pub fn default_multiplier(self) -> f64 {
        match self {
            WeigherKind::Ram | WeigherKind::Cpu | WeigherKind::Disk => 1.0,
            WeigherKind::IoOps => -1.0,
            WeigherKind::NumInstances => 0.0,
            WeigherKind::BuildFailure => -1_000_000.0,
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
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let weighers =
            [WeigherKind::Ram, WeigherKind::Cpu, WeigherKind::Disk, WeigherKind::IoOps, WeigherKind::BuildFailure]
                .into_iter()
                .map(|w| (w, w.default_multiplier()))
                .collect();
        SchedulerConfig { filters: FilterKind::defaults(), weighers, host_subset_size: 1, max_attempts: 3 }
    }
}

/// nova's `normalize`: map values to [0, 1] by min-max; all equal gives all 0.
pub fn normalize(values: &[f64]) -> Vec<f64> {
    let (min, max) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if values.is_empty() || max <= min {
        return vec![0.0; values.len()];
    }
    values.iter().map(|v| (v - min) / (max - min)).collect()
}

/// Why no host was found: the first filter that left nothing, with the count it received.
#[derive(Debug, Clone, PartialEq)]
pub struct NoValidHost {
    pub reason: String,
}

/// Filter, weigh and order `hosts` for one request. Returns host indices: the subset pick
/// first, then the rest in weight order.
pub fn sorted_hosts<R: Rng>(
    hosts: &[HostState],
    req: &RequestView<'_>,
    config: &SchedulerConfig,
    rng: &mut R,
) -> Result<Vec<usize>, NoValidHost> {
    let mut survivors: Vec<usize> = (0..hosts.len()).collect();
    if survivors.is_empty() {
        return Err(NoValidHost { reason: "no allocation candidates from placement".into() });
    }
    for filter in &config.filters {
        let before = survivors.len();
        survivors.retain(|&i| filter.check(&hosts[i], req).is_ok());
        if survivors.is_empty() {
            return Err(NoValidHost { reason: format!("filter {filter:?} returned 0 of {before} hosts") });
        }
    }
    let mut weights = vec![0.0; survivors.len()];
    let mut raw = Vec::with_capacity(survivors.len());
    for (&weigher, &multiplier) in &config.weighers {
        if multiplier == 0.0 {
            continue;
        }
        raw.clear();
        raw.extend(survivors.iter().map(|&i| weigher.raw(&hosts[i])));
        for (w, n) in weights.iter_mut().zip(normalize(&raw)) {
            *w += multiplier * n;
        }
    }
    let mut order: Vec<usize> = (0..survivors.len()).collect();
    // Stable sort, descending: equal weights keep placement's order, as Python's sorted does.
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
    let mut ranked: Vec<usize> = order.into_iter().map(|k| survivors[k]).collect();
    let subset = config.host_subset_size.clamp(1, ranked.len());
    let pick = if subset > 1 { rng.gen_range(0..subset) } else { 0 };
    let chosen = ranked.remove(pick);
    ranked.insert(0, chosen);
    Ok(ranked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    fn inv(total: u64, ratio: f64) -> Inventory {
        Inventory::new(total, 0, ratio)
    }

    fn host(name: &str, free_ram: u64) -> HostState {
        HostState {
            node: Arc::new(ComputeNode {
                host: name.into(),
                vcpus: 8,
                ram_mb: 16384,
                disk_gb: 100,
                hypervisor_type: "kvm".into(),
                hypervisor_version: 9000000,
                cpu_arch: "x86_64".into(),
                vm_modes: vec!["hvm".into()],
                num_instances: 0,
                num_io_ops: 0,
                stats: BTreeMap::new(),
            }),
            service_up: true,
            service_disabled: false,
            inventories: [inv(8, 4.0), inv(16384, 1.0), inv(100, 1.0)],
            used: Resources::new(0, 16384 - free_ram, 0),
            failed_builds: 0,
            group_members_here: 0,
        }
    }

    fn flavor(extra: &[(&str, &str)]) -> Flavor {
        Flavor {
            name: "m1.small".into(),
            vcpus: 1,
            ram_mb: 2048,
            disk_gb: 20,
            extra_specs: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn image(props: &[(&str, &str)]) -> Image {
        Image {
            name: "cirros".into(),
            size_mb: 16,
            disk_format: "qcow2".into(),
            properties: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn check_filter(filter: FilterKind, host: &HostState, req: &RequestView<'_>, pass: bool) {
        assert_eq!(filter.check(host, req).is_ok(), pass, "{filter:?} on {}", host.node.host);
    }

    #[test]
    fn filters_pass_and_fail() {
        let f = flavor(&[]);
        let i = image(&[]);
        let req = RequestView { flavor: &f, image: &i, group_policy: None, group_max_per_host: 1, group_hosts: &[] };
        let mut down = host("a", 1000);
        check_filter(FilterKind::Compute, &down, &req, true);
        down.service_up = false;
        check_filter(FilterKind::Compute, &down, &req, false);

        let f = flavor(&[("capabilities:hypervisor_type", "kvm"), ("hw:cpu_policy", "dedicated")]);
        let req = RequestView { flavor: &f, ..req.clone() };
        check_filter(FilterKind::ComputeCapabilities, &host("a", 1), &req, true);
        let f2 = flavor(&[("capabilities:hypervisor_type", "xen")]);
        let req2 = RequestView { flavor: &f2, ..req.clone() };
        check_filter(FilterKind::ComputeCapabilities, &host("a", 1), &req2, false);
        let f3 = flavor(&[("free_ram_mb", ">= 4096")]);
        let req3 = RequestView { flavor: &f3, ..req.clone() };
        check_filter(FilterKind::ComputeCapabilities, &host("a", 4096), &req3, true);
        check_filter(FilterKind::ComputeCapabilities, &host("a", 1024), &req3, false);

        let qemu = image(&[("hypervisor_type", "qemu")]);
        let xen = image(&[("hypervisor_type", "xen")]);
        let arm = image(&[("hw_architecture", "aarch64")]);
        for (img, pass) in [(&qemu, true), (&xen, false), (&arm, false)] {
            let r = RequestView { image: img, ..req.clone() };
            check_filter(FilterKind::ImageProperties, &host("a", 1), &r, pass);
        }

        let mut crowded = host("b", 1);
        crowded.group_members_here = 1;
        let anti = RequestView { group_policy: Some(GroupPolicy::AntiAffinity), ..req.clone() };
        check_filter(FilterKind::ServerGroupAntiAffinity, &crowded, &anti, false);
        check_filter(FilterKind::ServerGroupAntiAffinity, &host("c", 1), &anti, true);
        let hosts = vec!["b".to_string()];
        let aff = RequestView { group_policy: Some(GroupPolicy::Affinity), group_hosts: &hosts, ..req.clone() };
        check_filter(FilterKind::ServerGroupAffinity, &crowded, &aff, true);
        check_filter(FilterKind::ServerGroupAffinity, &host("c", 1), &aff, false);
    }

    #[test]
    fn normalisation_is_min_max_and_zero_when_equal() {
        assert_eq!(normalize(&[2.0, 4.0, 3.0]), vec![0.0, 1.0, 0.5]);
        assert_eq!(normalize(&[5.0, 5.0]), vec![0.0, 0.0]);
        assert_eq!(normalize(&[]), Vec::<f64>::new());
    }

    #[test]
    fn ram_weigher_spreads_and_negative_multiplier_packs() {
        let hosts = vec![host("a", 1000), host("b", 9000), host("c", 5000)];
        let f = flavor(&[]);
        let i = image(&[]);
        let req = RequestView { flavor: &f, image: &i, group_policy: None, group_max_per_host: 1, group_hosts: &[] };
        let mut rng = SmallRng::seed_from_u64(1);
        let mut config =
            SchedulerConfig { weighers: [(WeigherKind::Ram, 1.0)].into_iter().collect(), ..Default::default() };
        assert_eq!(sorted_hosts(&hosts, &req, &config, &mut rng).unwrap(), vec![1, 2, 0]);
        config.weighers = [(WeigherKind::Ram, -1.0)].into_iter().collect();
        assert_eq!(sorted_hosts(&hosts, &req, &config, &mut rng).unwrap(), vec![0, 2, 1]);
    }

    #[test]
    fn subset_pick_stays_within_the_best_n() {
        let hosts: Vec<HostState> = (0..10).map(|i| host(&format!("h{i}"), 1000 * (i + 1))).collect();
        let f = flavor(&[]);
        let i = image(&[]);
        let req = RequestView { flavor: &f, image: &i, group_policy: None, group_max_per_host: 1, group_hosts: &[] };
        let config = SchedulerConfig { host_subset_size: 3, ..Default::default() };
        let mut seen = std::collections::BTreeSet::new();
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..200 {
            let order = sorted_hosts(&hosts, &req, &config, &mut rng).unwrap();
            assert!([9, 8, 7].contains(&order[0]));
            seen.insert(order[0]);
        }
        assert_eq!(seen.len(), 3, "every host of the subset gets picked");
    }

    #[test]
    fn no_valid_host_names_the_filter() {
        let mut h = host("a", 1000);
        h.service_up = false;
        let f = flavor(&[]);
        let i = image(&[]);
        let req = RequestView { flavor: &f, image: &i, group_policy: None, group_max_per_host: 1, group_hosts: &[] };
        let err = sorted_hosts(&[h], &req, &SchedulerConfig::default(), &mut SmallRng::seed_from_u64(1)).unwrap_err();
        assert!(err.reason.contains("Compute"), "{}", err.reason);
    }
}
