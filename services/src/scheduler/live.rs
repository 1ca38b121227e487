//! The scheduler's host table, kept between requests and brought up to date from three
//! shared table snapshots: placement's resource providers (read per request), and the
//! compute nodes and services rows (read every [`super::HOST_STATE_REFRESH`]).
//!
//! Keeping it up to date costs, per request, a diff of placement's snapshot against the
//! one read before (the two share every subtree no claim touched), and per refresh one
//! pass over the nodes and services snapshots comparing row pointers (most of their
//! leaves change within a second: heartbeats), with no lookup, copy, allocation or even a
//! read of the rows that did not change. The store makes a new shared row for every write
//! and the live table holds the rows it read, so their addresses cannot be reused: an
//! entry pointing at the row read last time is the same row at the same place.
//! Keys only ever get added (a compute registers; nothing deletes a provider, node or
//! service), so a snapshot of the size read last holds the same keys in the same order;
//! anything else, and any changed entry under an unexpected key, rebuilds the table.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use stackbed_core::model::{Record, ServiceRecord};
use stackbed_core::scheduler::{HostAggregates, HostState, HostTable};
use stackbed_core::store::{DiffItem, Row, Snapshot};

/// What the scenario fixes for a host and never changes during a run.
pub(super) struct StaticHost {
    pub aggregates: Arc<HostAggregates>,
    pub ip: u32,
}

/// One table's snapshot as the live table last read it, by position in key order.
#[derive(Default)]
struct Tracked {
    keys: Vec<String>,
    /// The rows read, held (see the module's comment).
    held: Vec<Arc<Row>>,
    /// The table row each entry feeds (an entry may feed none: a provider whose compute
    /// node is not registered yet, a services row of another binary).
    rows: Vec<Option<u32>>,
}

impl Tracked {
    fn push(&mut self, key: &str, held: &Arc<Row>, row: Option<usize>) {
        self.keys.push(key.to_string());
        self.held.push(held.clone());
        self.rows.push(row.map(|r| r as u32));
    }

    /// Calls `apply(row, value)` for every entry written since the last read, and holds
    /// the new rows. False when `snap` does not hold the tracked keys (a
    /// rebuild is due; what was applied so far is thrown away by it).
    fn changed(&mut self, snap: &Snapshot, mut apply: impl FnMut(usize, &Row) -> bool) -> bool {
        if snap.len() != self.keys.len() {
            return false;
        }
        for (pos, (key, row)) in snap.iter().enumerate() {
            if Arc::ptr_eq(&self.held[pos], row) {
                continue;
            }
            if self.keys[pos] != *key {
                return false;
            }
            if let Some(r) = self.rows[pos] {
                if !apply(r as usize, row) {
                    return false;
                }
            }
            self.held[pos] = row.clone();
        }
        true
    }
}

/// What the scheduler reads of a host's services row.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ServiceView {
    last_seen_ms: u64,
    disabled: bool,
    failed_builds: u32,
}

impl ServiceView {
    fn of(row: &Row) -> Option<ServiceView> {
        match &row.value {
            Record::Service(ServiceRecord { last_seen_ms, disabled, failed_builds, .. }) => {
                Some(ServiceView { last_seen_ms: *last_seen_ms, disabled: *disabled, failed_builds: *failed_builds })
            }
            _ => None,
        }
    }
}

/// The three snapshots a decision reads.
pub(super) struct Inputs<'a> {
    pub providers: &'a Snapshot,
    pub nodes: &'a Snapshot,
    pub services: &'a Snapshot,
}

pub(super) struct LiveTable {
    pub table: HostTable,
    /// The providers snapshot read last.
    providers: Snapshot,
    nodes: Tracked,
    services: Tracked,
    /// The nodes and services snapshots read last (compared by identity: most requests
    /// see the same ones).
    read: Option<(Snapshot, Snapshot)>,
    /// Per row: its services row (None: no row, the host counts as disabled and down).
    service: Vec<Option<ServiceView>>,
    /// ComputeFilter's liveness was computed at `liveness_at`; no row that was up then
    /// goes down before `next_down_ms`.
    liveness_at: u64,
    next_down_ms: u64,
    /// Row by host name, for group members.
    by_name: HashMap<String, usize>,
    /// Rows whose group_members_here was set by the last request.
    grouped: Vec<usize>,
}

impl Default for LiveTable {
    fn default() -> LiveTable {
        LiveTable {
            table: HostTable::new(Vec::new()),
            providers: Snapshot::new(),
            nodes: Tracked::default(),
            services: Tracked::default(),
            read: None,
            service: Vec::new(),
            liveness_at: 0,
            next_down_ms: 0,
            by_name: HashMap::new(),
            grouped: Vec::new(),
        }
    }
}

impl LiveTable {
    /// Brings the rows up to date with `inputs`, liveness at `now_ms` and the request's
    /// group members per host.
    pub fn sync(
        &mut self,
        inputs: &Inputs,
        statics: &HashMap<String, StaticHost>,
        now_ms: u64,
        down_after_ms: u64,
        members_per_host: &BTreeMap<String, u32>,
    ) {
        if !self.refresh(inputs, now_ms, down_after_ms) {
            self.rebuild(inputs, statics);
        }
        self.liveness(now_ms, down_after_ms);
        for i in std::mem::take(&mut self.grouped) {
            self.table.update(i, |h| h.group_members_here = 0);
        }
        for (host, &n) in members_per_host {
            if let Some(&i) = self.by_name.get(host) {
                self.table.update(i, |h| h.group_members_here = n);
                self.grouped.push(i);
            }
        }
    }

    /// Applies what changed since the last read; false when a rebuild is due.
    fn refresh(&mut self, inputs: &Inputs, now_ms: u64, down_after_ms: u64) -> bool {
        let table = &mut self.table;
        // Placement's usage is read per request, and between two requests of one worker
        // only the few providers claimed against changed: a diff of the two snapshots
        // visits only the subtrees they do not share.
        let mut usage = true;
        for item in self.providers.diff(inputs.providers) {
            let DiffItem::Update { new: (key, row), .. } = item else {
                // A provider added: a compute registered.
                usage = false;
                break;
            };
            match (&row.value, self.by_name.get(key)) {
                (Record::Provider(p), Some(&i)) => table.set_usage(i, p.inventories, p.used),
                // A provider whose compute node is not registered yet has no row.
                (Record::Provider(_), None) => {}
                _ => {
                    usage = false;
                    break;
                }
            }
        }
        if !usage {
            return false;
        }
        self.providers = inputs.providers.clone();
        let same = |a: &Snapshot, b: &Snapshot| a.ptr_eq(b);
        if self.read.as_ref().is_some_and(|(n, s)| same(n, inputs.nodes) && same(s, inputs.services)) {
            return true;
        }
        let nodes = self.nodes.changed(inputs.nodes, |i, row| match &row.value {
            Record::ComputeNode(n) => {
                let node = Arc::new(n.clone());
                table.update(i, |h| h.node = node);
                true
            }
            _ => false,
        });
        let service = &mut self.service;
        let next_down = &mut self.next_down_ms;
        let services = nodes
            && self.services.changed(inputs.services, |i, row| {
                let view = ServiceView::of(row);
                if view.is_none() {
                    return false;
                }
                let (disabled, failed) = (disabled(view), failed_builds(view));
                // A new report: this row's liveness now, and when it may go down. The
                // others' still hold until the earliest of those (see `liveness`).
                let up = is_up(view, now_ms, down_after_ms);
                if up {
                    *next_down = (*next_down).min(down_at(view, down_after_ms));
                }
                let h = &table.hosts()[i];
                if h.service_disabled != disabled || h.failed_builds != failed || h.service_up != up {
                    table.update(i, |h| {
                        h.service_disabled = disabled;
                        h.failed_builds = failed;
                        h.service_up = up;
                    });
                }
                service[i] = view;
                true
            });
        if !services {
            return false;
        }
        self.read = Some((inputs.nodes.clone(), inputs.services.clone()));
        true
    }

    /// ComputeFilter's view of every row, recomputed only when one may have gone down
    /// without a new report: once the earliest up row's report grows too old, or when the
    /// clock went back (skew). A row that was down stays down until it reports again,
    /// which `refresh` applies as it reads it.
    fn liveness(&mut self, now_ms: u64, down_after_ms: u64) {
        if now_ms < self.next_down_ms && now_ms >= self.liveness_at {
            return;
        }
        let mut next_down = u64::MAX;
        for (i, &s) in self.service.iter().enumerate() {
            let up = is_up(s, now_ms, down_after_ms);
            if up {
                next_down = next_down.min(down_at(s, down_after_ms));
            }
            if self.table.hosts()[i].service_up != up {
                self.table.update(i, |h| h.service_up = up);
            }
        }
        self.liveness_at = now_ms;
        self.next_down_ms = next_down;
    }

    /// Rows for every provider with a compute node, in host name order.
    fn rebuild(&mut self, inputs: &Inputs, statics: &HashMap<String, StaticHost>) {
        let (mut nodes, mut services) = (Tracked::default(), Tracked::default());
        let mut hosts = Vec::with_capacity(inputs.providers.len());
        let mut names: Vec<&String> = Vec::with_capacity(inputs.providers.len());
        let mut node_rows = inputs.nodes.iter().peekable();
        for (key, row) in inputs.providers.iter() {
            while let Some((k, r)) = node_rows.next_if(|(k, _)| *k < key) {
                nodes.push(k, r, None);
            }
            let node = match (&row.value, node_rows.next_if(|(k, _)| *k == key)) {
                (Record::Provider(p), Some((k, r))) => match &r.value {
                    Record::ComputeNode(n) => {
                        nodes.push(k, r, Some(hosts.len()));
                        Some((p, n))
                    }
                    _ => {
                        nodes.push(k, r, None);
                        None
                    }
                },
                (_, Some((k, r))) => {
                    nodes.push(k, r, None);
                    None
                }
                (_, None) => None,
            };
            let Some((p, n)) = node else { continue };
            let fixed = statics.get(key);
            hosts.push(HostState {
                node: Arc::new(n.clone()),
                service_up: false,
                service_disabled: true,
                inventories: p.inventories,
                used: p.used,
                failed_builds: 0,
                group_members_here: 0,
                aggregates: fixed.map_or_else(HostAggregates::none, |h| h.aggregates.clone()),
                host_ip: fixed.map(|h| h.ip),
            });
            names.push(key);
        }
        for (k, r) in node_rows {
            nodes.push(k, r, None);
        }
        // Services rows are keyed by host name too: a merge, not a lookup per host.
        let mut service = vec![None; hosts.len()];
        let mut row = 0;
        for (key, r) in inputs.services.iter() {
            while row < names.len() && names[row] < key {
                row += 1;
            }
            let here = (row < names.len() && names[row] == key).then_some(row);
            if let Some(i) = here {
                let view = ServiceView::of(r);
                hosts[i].service_disabled = disabled(view);
                hosts[i].failed_builds = failed_builds(view);
                service[i] = view;
            }
            services.push(key, r, here);
        }
        self.by_name = names.iter().enumerate().map(|(i, n)| ((*n).clone(), i)).collect();
        self.table = HostTable::new(hosts);
        (self.providers, self.nodes, self.services) = (inputs.providers.clone(), nodes, services);
        self.service = service;
        self.read = Some((inputs.nodes.clone(), inputs.services.clone()));
        self.grouped.clear();
        self.next_down_ms = 0;
    }
}

/// ComputeFilter's liveness: a services row seen within `down_after_ms`.
fn is_up(s: Option<ServiceView>, now_ms: u64, down_after_ms: u64) -> bool {
    s.is_some_and(|s| now_ms.saturating_sub(s.last_seen_ms) <= down_after_ms)
}

/// The first instant at which a row that is up goes down without a new report.
fn down_at(s: Option<ServiceView>, down_after_ms: u64) -> u64 {
    s.map_or(0, |s| s.last_seen_ms).saturating_add(down_after_ms).saturating_add(1)
}

/// A host without a services row counts as disabled.
fn disabled(s: Option<ServiceView>) -> bool {
    s.is_none_or(|s| s.disabled)
}

fn failed_builds(s: Option<ServiceView>) -> u32 {
    s.map_or(0, |s| s.failed_builds)
}

#[cfg(test)]
mod tests {
    //! The live table against a table built afresh from the same snapshots: after usage,
    //! node, service, liveness, registration and group changes, both hold the same host
    //! states and decide alike.

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use stackbed_core::model::{ComputeNode, Flavor, Image, Inventory, Provider, Resources};
    use stackbed_core::scheduler::{RequestView, SchedulerConfig};
    use stackbed_core::strategy;

    use super::*;

    struct World {
        version: u64,
        providers: Snapshot,
        nodes: Snapshot,
        services: Snapshot,
    }

    impl World {
        fn next(&mut self) -> u64 {
            self.version += 1;
            self.version
        }

        fn provider(&mut self, host: &str, used: Resources) {
            let inventories =
                [Inventory::new(16, 0, 4.0), Inventory::new(65536, 512, 1.0), Inventory::new(500, 0, 1.0)];
            let value = Record::Provider(Provider { host: host.into(), inventories, used });
            let version = self.next();
            self.providers.insert(host.into(), Arc::new(Row { version, value }));
        }

        fn node(&mut self, host: &str, instances: u64) {
            let value = Record::ComputeNode(ComputeNode {
                host: host.into(),
                vcpus: 16,
                ram_mb: 65536,
                disk_gb: 500,
                hypervisor_type: "kvm".into(),
                hypervisor_version: 9_000_000,
                cpu_arch: "x86_64".into(),
                vm_modes: vec!["hvm".into()],
                num_instances: instances,
                num_io_ops: 0,
                stats: Default::default(),
                supported_instances: None,
                cpu_info: None,
                metrics: Default::default(),
            });
            let version = self.next();
            self.nodes.insert(host.into(), Arc::new(Row { version, value }));
        }

        fn service(&mut self, host: &str, seen: u64, disabled: bool, failed_builds: u32) {
            let value = Record::Service(ServiceRecord {
                host: host.into(),
                binary: "nova-compute".into(),
                last_seen_ms: seen,
                disabled,
                disabled_reason: None,
                failed_builds,
            });
            let version = self.next();
            self.services.insert(host.into(), Arc::new(Row { version, value }));
        }

        fn inputs(&self) -> Inputs<'_> {
            Inputs { providers: &self.providers, nodes: &self.nodes, services: &self.services }
        }
    }

    /// What each row says, field by field (host states hold shared pointers, not values).
    fn states(t: &HostTable) -> Vec<String> {
        t.hosts()
            .iter()
            .map(|h| {
                format!(
                    "{} {:?} up={} disabled={} inv={:?} used={:?} failed={} group={}",
                    h.node.host,
                    h.node,
                    h.service_up,
                    h.service_disabled,
                    h.inventories,
                    h.used,
                    h.failed_builds,
                    h.group_members_here
                )
            })
            .collect()
    }

    #[test]
    fn a_synced_table_matches_a_fresh_one() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut names: Vec<String> = (0..40).map(|i| format!("host-{i:02}")).collect();
        let mut w = World { version: 0, providers: Snapshot::new(), nodes: Snapshot::new(), services: Snapshot::new() };
        for n in &names {
            w.provider(n, Resources::default());
            // A few hosts register their compute node later, one has no services row.
            if !n.ends_with('7') {
                w.node(n, 0);
            }
            if n != "host-13" {
                w.service(n, 0, false, 0);
            }
        }
        // A services row no host has (another binary's host).
        w.service("controller", 0, false, 0);
        let statics = HashMap::new();
        let mut live = LiveTable::default();
        let mut strategy = strategy::builtin("spread", &SchedulerConfig::default()).expect("built in");
        let flavor = Flavor {
            name: "m1".into(),
            vcpus: 2,
            ram_mb: 4096,
            disk_gb: 20,
            ephemeral_gb: 0,
            swap: 0,
            extra_specs: Default::default(),
        };
        let image =
            Image { name: "i".into(), size_mb: 10, disk_format: "qcow2".into(), properties: Default::default() };
        let req = RequestView::new(&flavor, &image);
        let (mut rebuilt, mut kept) = (0, 0);
        for round in 0..120u64 {
            // Placement usage moves on a few hosts (a new row version each).
            for _ in 0..rng.gen_range(0..6) {
                let n = names[rng.gen_range(0..names.len())].clone();
                let used = Resources::new(rng.gen_range(0..64), rng.gen_range(0..60000), rng.gen_range(0..400));
                w.provider(&n, used);
            }
            // Every few rounds the host cache refreshes: nodes, services and heartbeats change.
            if round % 3 == 0 {
                for n in names.clone() {
                    if rng.gen_bool(0.2) && w.nodes.contains_key(&n) {
                        w.node(&n, rng.gen_range(0..30));
                    }
                    if rng.gen_bool(0.5) && w.services.contains_key(&n) {
                        w.service(&n, rng.gen_range(0..round * 1000 + 1), rng.gen_bool(0.1), rng.gen_range(0..3));
                    }
                }
            }
            // Now and then a compute registers: a node row, or a whole new host.
            if round % 17 == 5 {
                let late = names.iter().find(|n| !w.nodes.contains_key(*n)).cloned();
                match late {
                    Some(n) => w.node(&n, 0),
                    None => {
                        let n = format!("host-{}", names.len());
                        w.provider(&n, Resources::default());
                        w.node(&n, 0);
                        w.service(&n, round * 1000, false, 0);
                        names.push(n);
                    }
                }
            }
            let before = live.table.len();
            let now = round * 1000 + rng.gen_range(0..900);
            let mut members = BTreeMap::new();
            if rng.gen_bool(0.5) {
                members.insert(names[rng.gen_range(0..names.len())].clone(), rng.gen_range(1..4));
            }
            let id_before = live.table.hosts().as_ptr();
            live.sync(&w.inputs(), &statics, now, 30_000, &members);
            if live.table.hosts().as_ptr() == id_before && before > 0 {
                kept += 1;
            } else {
                rebuilt += 1;
            }
            let mut fresh = LiveTable::default();
            fresh.sync(&w.inputs(), &statics, now, 30_000, &members);
            assert_eq!(states(&live.table), states(&fresh.table), "round {round}");
            let seed = rng.gen();
            let a = strategy.select_table(&live.table, &req, &mut SmallRng::seed_from_u64(seed), 3);
            let b = strategy.select_table(&fresh.table, &req, &mut SmallRng::seed_from_u64(seed), 3);
            assert_eq!(a.map_err(|e| e.reason), b.map_err(|e| e.reason), "round {round}");
            // The same snapshots again a little later (no refresh in between), as most
            // requests see them: liveness may still move.
            let later = now + rng.gen_range(0..40_000);
            live.sync(&w.inputs(), &statics, later, 30_000, &members);
            let mut fresh = LiveTable::default();
            fresh.sync(&w.inputs(), &statics, later, 30_000, &members);
            assert_eq!(states(&live.table), states(&fresh.table), "round {round}, same snapshots at {later}");
        }
        // Both paths ran: most rounds updated the rows in place, registrations rebuilt them.
        assert!(kept > 80 && rebuilt >= 5, "kept {kept}, rebuilt {rebuilt}");
    }
}
