//! The checks serde cannot do: names that refer to each other, ranges, sizes. Each error
//! is a dotted field and a message; `Scenario::parse` turns the field into a line.

use std::collections::BTreeMap;

use super::{AggregateDecl, Era, Runner, Scenario, MAX_PASSES, MAX_SERVERS_PER_REQUEST, MAX_WORKERS};
use crate::scheduler::{FilterKind, WeigherKind};

/// The most controller hosts, and cores per controller, a scenario may declare.
const MAX_CONTROLLERS: u32 = 64;
const MAX_CONTROLLER_CORES: u32 = 1024;

impl Scenario {
    /// Checks what serde cannot: names that refer to each other, ranges, sizes.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let err = |field: &str, message: String| Err((field.to_string(), message));
        self.sla.validate()?;
        self.bench.validate()?;
        if let Some(g) = &self.guest {
            for (field, v) in
                [("guest.kernel", &g.kernel), ("guest.initrd", &g.initrd), ("guest.libvirt_uri", &g.libvirt_uri)]
            {
                if v.trim().is_empty() {
                    return err(field, "must not be empty".into());
                }
            }
            if g.boot_timeout.0.is_zero() {
                return err("guest.boot_timeout", "must be above 0".into());
            }
        }
        if self.topology.hosts.is_empty() || self.topology.hosts.iter().all(|h| h.count == 0) {
            return err("topology.hosts", "the topology needs at least one host".into());
        }
        if let Some(c) = self.topology.controller {
            if !(1..=MAX_CONTROLLERS).contains(&c.count) {
                return err(
                    "topology.controller.count",
                    format!("must be within 1..={MAX_CONTROLLERS}, got {}", c.count),
                );
            }
            if !(1..=MAX_CONTROLLER_CORES).contains(&c.cores) {
                return err(
                    "topology.controller.cores",
                    format!("must be within 1..={MAX_CONTROLLER_CORES}, got {}", c.cores),
                );
            }
        }
        let db = &self.topology.db;
        if !(1..=super::MAX_DB_NODES).contains(&db.nodes) {
            return err("topology.db.nodes", format!("must be within 1..={}, got {}", super::MAX_DB_NODES, db.nodes));
        }
        if db.flush_log_at_trx_commit > 2 {
            return err(
                "topology.db.flush_log_at_trx_commit",
                format!("innodb_flush_log_at_trx_commit is 0, 1 or 2, got {}", db.flush_log_at_trx_commit),
            );
        }
        if db.wsrep_sync_wait > 15 {
            return err(
                "topology.db.wsrep_sync_wait",
                format!("wsrep_sync_wait is a bitmask within 0..=15, got {}", db.wsrep_sync_wait),
            );
        }
        if db.gcache_writesets == 0 {
            return err("topology.db.gcache_writesets", "must be above 0".into());
        }
        if !super::DB_PROXIES.contains(&db.proxy.as_str()) {
            return err(
                "topology.db.proxy",
                format!("unknown proxy set-up `{}`; known: {}", db.proxy, super::DB_PROXIES.join(", ")),
            );
        }
        let (declared, resolved) = (self.topology.workers, self.topology.workers());
        for (name, set, count) in [
            ("api", declared.api, resolved.api),
            ("conductor", declared.conductor, resolved.conductor),
            ("scheduler", declared.scheduler, resolved.scheduler),
            ("placement", declared.placement, resolved.placement),
            ("keystone", declared.keystone, resolved.keystone),
        ] {
            if !(1..=MAX_WORKERS).contains(&count) {
                let (field, why) = match set {
                    Some(_) => (format!("topology.workers.{name}"), String::new()),
                    None => ("topology.controller".to_string(), " (count × cores, nova's default)".to_string()),
                };
                return err(&field, format!("{name} workers must be within 1..={MAX_WORKERS}, got {count}{why}"));
            }
        }
        for (i, h) in self.topology.hosts.iter().enumerate() {
            if h.vcpus == 0 || h.ram_mb == 0 {
                return err(&format!("topology.hosts.{i}.vcpus"), "hosts need vcpus and ram_mb above 0".into());
            }
            if h.reserved.ram_mb >= h.ram_mb {
                return err(
                    &format!("topology.hosts.{i}.reserved.ram_mb"),
                    "reserved RAM must be below the host's RAM".into(),
                );
            }
        }
        self.validate_host_records()?;
        for (i, f) in self.flavors.iter().enumerate() {
            if f.vcpus == 0 || f.ram_mb == 0 {
                return err(
                    &format!("flavors.{i}.vcpus"),
                    format!("flavor `{}` needs vcpus and ram_mb above 0", f.name),
                );
            }
        }
        let r = &self.control.ratios();
        for (name, v) in [("cpu", r.cpu), ("ram", r.ram), ("disk", r.disk)] {
            if !(v.is_finite() && v > 0.0) {
                return err(&format!("control.allocation_ratio.{name}"), format!("must be a positive number, got {v}"));
            }
        }
        for (i, f) in self.control.scheduler.filters.iter().flatten().enumerate() {
            match FilterKind::from_name(f) {
                None => {
                    return err(
                        &format!("control.scheduler.filters.{i}"),
                        format!("unknown filter `{f}`; known: {}", FilterKind::NAMES.join(", ")),
                    )
                }
                Some(k) if self.control.era == Era::Icehouse && !k.in_icehouse() => {
                    return err(
                        &format!("control.scheduler.filters.{i}"),
                        format!("`{f}` is not a 2014.1 filter (it came in Juno); era is \"icehouse\""),
                    )
                }
                Some(_) => {}
            }
        }
        for name in self.control.scheduler.weighers.keys() {
            match WeigherKind::from_name(name) {
                None => {
                    return err(
                        &format!("control.scheduler.weighers.{name}"),
                        format!("unknown weigher `{name}`; known: {}", WeigherKind::NAMES.join(", ")),
                    )
                }
                Some(w) if self.control.era == Era::Icehouse && !w.in_icehouse() => {
                    return err(
                        &format!("control.scheduler.weighers.{name}"),
                        format!("2014.1 had no `{name}` weigher (its weighers: ram, metrics); era is \"icehouse\""),
                    )
                }
                Some(_) => {}
            }
        }
        if self.control.scheduler.max_attempts == 0 {
            return err("control.scheduler.max_attempts", "must be at least 1".into());
        }
        self.validate_scheduling()?;
        if self.control.max_concurrent_builds == 0 {
            return err("control.max_concurrent_builds", "must be at least 1".into());
        }
        if self.tenants.is_empty() {
            return err("tenants", "at least one tenant is needed to run a workload".into());
        }
        let flavor_names: Vec<&str> = self.flavors.iter().map(|f| f.name.as_str()).collect();
        if !matches!(self.workload.runner, Runner::Trace { .. }) || !self.workload.flavors.is_empty() {
            check_weights("flavor", &self.workload.flavors, &flavor_names)?;
        }
        let image_names: Vec<&str> = self.images.iter().map(|i| i.name.as_str()).collect();
        check_weights("image", &self.workload.images, &image_names)?;
        match self.workload.runner {
            Runner::Constant { concurrency: 0, .. } => {
                return err("workload.runner.concurrency", "must be at least 1".into())
            }
            Runner::Rps { rate, .. } if !(rate.is_finite() && rate > 0.0) => {
                return err("workload.runner.rate", format!("must be a positive number, got {rate}"))
            }
            _ => {}
        }
        let per_request = self.workload.servers_per_request;
        if !(1..=MAX_SERVERS_PER_REQUEST).contains(&per_request) {
            return err(
                "workload.servers_per_request",
                format!("must be within 1..={MAX_SERVERS_PER_REQUEST}, got {per_request}"),
            );
        }
        if per_request > 1 && matches!(self.workload.runner, Runner::Trace { .. }) {
            return err("workload.servers_per_request", "a trace's rows are one server each".into());
        }
        if !(1..=MAX_PASSES).contains(&self.workload.passes) {
            return err("workload.passes", format!("must be within 1..={MAX_PASSES}, got {}", self.workload.passes));
        }
        if self.workload.passes > 1 && matches!(self.workload.runner, Runner::Trace { .. }) {
            return err("workload.passes", "a trace runs once: passes above 1 need a constant or rps runner".into());
        }
        let p = self.model.spawn_failure_probability;
        if !(0.0..=1.0).contains(&p) {
            return err("model.spawn_failure_probability", format!("must be within [0, 1], got {p}"));
        }
        for (name, d) in [
            ("image_fetch", &self.model.image_fetch),
            ("network_allocate", &self.model.network_allocate),
            ("block_device_mapping", &self.model.block_device_mapping),
            ("spawn", &self.model.spawn),
            ("vif_plugged", &self.model.vif_plugged),
            ("guest_boot", &self.model.guest_boot),
            ("destroy", &self.model.destroy),
        ] {
            d.validate().map_err(|m| (format!("model.{name}"), m))?;
        }
        self.validate_faults()?;
        Ok(())
    }

    /// What the hosts advertise and the images ask for, as nova reads them: canonical
    /// architectures, hypervisor types and vm modes, `cpu_info` as JSON, finite metrics.
    fn validate_host_records(&self) -> Result<(), (String, String)> {
        use crate::scheduler::image_props::{canonical_arch, canonical_hv_type, canonical_vm_mode};
        let era = self.control.era;
        for (i, h) in self.topology.hosts.iter().enumerate() {
            for (j, [arch, hv, mode]) in h.supported_instances.iter().flatten().enumerate() {
                // nova's HVSpec fields canonicalise and refuse unknown names (Icehouse kept
                // the driver's strings as they were).
                let bad = match era {
                    Era::Icehouse => None,
                    Era::Current if canonical_arch(arch).is_none() => Some(format!("architecture `{arch}`")),
                    Era::Current if canonical_hv_type(hv).is_none() => Some(format!("hypervisor type `{hv}`")),
                    Era::Current if canonical_vm_mode(mode, era).is_none() => Some(format!("vm mode `{mode}`")),
                    Era::Current => None,
                };
                if let Some(bad) = bad {
                    return Err((
                        format!("topology.hosts.{i}.supported_instances.{j}"),
                        format!("{bad} is not one nova knows; a triple is [arch, hypervisor_type, vm_mode]"),
                    ));
                }
            }
            if let Some(info) = &h.cpu_info {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(info) {
                    return Err((format!("topology.hosts.{i}.cpu_info"), format!("must be a JSON string: {e}")));
                }
            }
            for (name, v) in &h.metrics {
                if !v.is_finite() {
                    return Err((format!("topology.hosts.{i}.metrics.{name}"), format!("must be a number, got {v}")));
                }
            }
        }
        for (i, image) in self.images.iter().enumerate() {
            crate::scheduler::image_props::validate_image_properties(&image.properties, era)
                .map_err(|(name, message)| (format!("images.{i}.properties.{name}"), message))?;
        }
        Ok(())
    }

    /// Aggregates, strategy, hints, zone: the scheduling declarations' cross-checks.
    fn validate_scheduling(&self) -> Result<(), (String, String)> {
        let err = |field: String, message: String| Err((field, message));
        let knobs = &self.control.scheduler;
        let known = crate::strategy::names();
        if !known.contains(&knobs.strategy) {
            return err(
                "control.scheduler.strategy".into(),
                format!("unknown strategy `{}`; known: {}", knobs.strategy, known.join(", ")),
            );
        }
        if let Some(arch) = &knobs.image_properties_default_architecture {
            // An oslo option with choices=arch.ALL: exact names only.
            if !crate::scheduler::image_props::ARCHITECTURES.contains(&arch.as_str()) {
                return err(
                    "control.scheduler.image_properties_default_architecture".into(),
                    format!(
                        "`{arch}` is not one of nova's architectures ({})",
                        crate::scheduler::image_props::ARCHITECTURES.join(", ")
                    ),
                );
            }
        }
        if !knobs.metrics.weight_of_unavailable.is_finite() {
            return err(
                "control.scheduler.metrics.weight_of_unavailable".into(),
                format!("must be a number, got {}", knobs.metrics.weight_of_unavailable),
            );
        }
        for (name, m) in &knobs.weighers {
            if !m.is_finite() {
                return err(format!("control.scheduler.weighers.{name}"), format!("must be a number, got {m}"));
            }
        }
        let host_names: Vec<String> = self.hosts().into_iter().map(|(n, _)| n).collect();
        for (i, h) in knobs.isolated_hosts.iter().enumerate() {
            if !host_names.contains(h) {
                return err(format!("control.scheduler.isolated_hosts.{i}"), format!("no host named `{h}`"));
            }
        }
        let image_names: Vec<&str> = self.images.iter().map(|i| i.name.as_str()).collect();
        for (i, name) in knobs.isolated_images.iter().enumerate() {
            if !image_names.contains(&name.as_str()) {
                return err(format!("control.scheduler.isolated_images.{i}"), format!("no image named `{name}`"));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, agg) in self.aggregates.iter().enumerate() {
            if !seen.insert(agg.name.as_str()) {
                return err(format!("aggregates.{i}.name"), format!("aggregate `{}` is declared twice", agg.name));
            }
            for (j, sel) in agg.hosts.iter().enumerate() {
                if !host_names.iter().any(|h| AggregateDecl::selects(sel, h)) {
                    return err(
                        format!("aggregates.{i}.hosts.{j}"),
                        format!(
                            "`{sel}` selects no host (write a name, a prefix like \"compute-*\" or a range like \"compute-[1-8]\")"
                        ),
                    );
                }
            }
            if agg.availability_zone.is_some() && agg.metadata.contains_key("availability_zone") {
                return err(
                    format!("aggregates.{i}.availability_zone"),
                    "set the zone once: availability_zone or metadata.availability_zone".into(),
                );
            }
            // A ratio, multiplier or limit that is not a number is not refused: nova's
            // validate_num_values raises, the filter or weigher logs a warning and uses the
            // configured value (see `Scenario::warnings`).
            for key in agg.metadata.keys() {
                if key.ends_with("_weight_multiplier") && !WeigherKind::ALL.iter().any(|w| w.aggregate_key() == *key) {
                    return err(
                        format!("aggregates.{i}.metadata.{key}"),
                        format!(
                            "no weigher `{}`; known: {}",
                            key.trim_end_matches("_weight_multiplier"),
                            WeigherKind::NAMES.join(", ")
                        ),
                    );
                }
            }
        }
        let hints = &self.workload.hints;
        if let Some(q) = &hints.query {
            crate::scheduler::validate_json_query(q).map_err(|m| ("workload.hints.query".to_string(), m))?;
        }
        if let Some(ip) = &hints.build_near_host_ip {
            crate::scheduler::parse_cidr(ip, hints.cidr.as_deref().unwrap_or("/24"))
                .map_err(|m| ("workload.hints.build_near_host_ip".to_string(), m))?;
        } else if hints.cidr.is_some() {
            return err("workload.hints.cidr".into(), "cidr needs build_near_host_ip".into());
        }
        if let Some(az) = &self.workload.availability_zone {
            let zones = self.availability_zones();
            if !zones.contains(az) {
                return err(
                    "workload.availability_zone".into(),
                    format!("no zone `{az}` (have: {})", zones.into_iter().collect::<Vec<_>>().join(", ")),
                );
            }
        }
        Ok(())
    }
}

impl Scenario {
    /// What nova would log a warning for and then go on: `[metrics] weight_setting` elements
    /// that do not parse (ignored), aggregate metadata that should be a number and is not
    /// (the configured value applies instead). Each is a field and a message.
    pub fn warnings(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let (_, bad) = crate::scheduler::parse_weight_setting(&self.control.scheduler.metrics.weight_setting);
        if !bad.is_empty() {
            out.push((
                "control.scheduler.metrics.weight_setting".to_string(),
                format!("ignoring `{}` (not name=ratio), as nova does", bad.join("`, `")),
            ));
        }
        for (i, agg) in self.aggregates.iter().enumerate() {
            for (key, value) in &agg.metadata {
                let numeric = key.ends_with("_weight_multiplier") || key.ends_with("_allocation_ratio");
                let integer = key == "max_io_ops_per_host" || key == "max_instances_per_host";
                if (numeric && value.trim().parse::<f64>().is_err())
                    || (integer && value.trim().parse::<i64>().is_err())
                {
                    out.push((
                        format!("aggregates.{i}.metadata.{key}"),
                        format!(
                            "`{value}` is not a {}: nova logs a warning and uses the configured value",
                            if integer { "whole number" } else { "number" }
                        ),
                    ));
                }
            }
        }
        out
    }
}

/// `workload.<kind>s`: a non-empty map of known names to positive weights.
fn check_weights(kind: &str, weights: &BTreeMap<String, f64>, known: &[&str]) -> Result<(), (String, String)> {
    if weights.is_empty() {
        return Err((format!("workload.{kind}s"), format!("name at least one {kind}")));
    }
    for (name, w) in weights {
        let field = format!("workload.{kind}s.{name}");
        if !known.contains(&name.as_str()) {
            return Err((field, format!("no {kind} named `{name}` (have: {})", known.join(", "))));
        }
        if !(w.is_finite() && *w > 0.0) {
            return Err((field, format!("weight must be positive, got {w}")));
        }
    }
    Ok(())
}
