//! [`HostTable`]: host states kept between decisions, with what the default pipeline reads
//! packed per host, and [`Workspace::table_best_hosts`], the decision over it.
//!
//! The decision is the one [`Workspace::best_hosts`] makes over the same host states (same
//! hosts, same order, same random draws; tests check it), computed in passes over compact
//! arrays:
//! 1. placement's check against a per-host limit per class precomputed on every usage change
//!    (`asked <= min(max_unit, floor(capacity) - used)`), ComputeFilter from a flag,
//!    ImagePropertiesFilter from a verdict per *image class* (hosts with the same arch,
//!    hypervisor type and version and vm modes), any other active filter through the
//!    shared rule; survivor indices are collected;
//! 2. per active weigher, its column gathered over the survivors with nova's minval clamp
//!    and the bounds, then `multiplier * ((v - lo) / range)` added to each survivor's weight,
//!    weigher by weigher in the configured order (the same floating-point operations in
//!    the same order as the general path, so the same bits);
//! 3. the best `max(k, host_subset_size)` kept inline (no sort) and the subset pick.
//!
//! Aggregate multiplier overrides among the survivors and the soft-affinity weighers go
//! through the general weighing code; rows whose inventories have min_unit or step_size
//! above 1, or values beyond 2^52, through placement's exact check.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// Host states with their hot fields packed per host, for a scheduler that keeps its view
/// of the hosts between decisions (the scheduler service, a researcher's harness, a
/// benchmark): usage changes in place through [`HostTable::claim`], [`HostTable::release`]
/// and [`HostTable::set_usage`], anything else through [`HostTable::update`].
/// [`Workspace::table_best_hosts`] decides over it with the same rules and results as
/// [`Workspace::best_hosts`] over [`HostTable::hosts`].
#[derive(Debug)]
pub struct HostTable {
    /// Unique per table (and per clone): the workspace's class verdicts are per table.
    id: u64,
    hosts: Vec<HostState>,
    fit: Vec<FitRow>,
    /// Weigher raw values per host by [`WeigherKind::index`] (the first seven weighers; the
    /// soft-affinity ones depend on the request), before the minval clamp.
    raw: [Vec<f64>; RAW_COLUMNS],
    /// One node per image class, and the class of each key.
    classes: Vec<Arc<ComputeNode>>,
    class_of: BTreeMap<ClassKey, u32>,
}

const RAW_COLUMNS: usize = 7;

/// (cpu_arch, hypervisor_type, vm_modes, hypervisor_version): all ImagePropertiesFilter reads.
type ClassKey = (String, String, Vec<String>, u64);

/// What placement's check and ComputeFilter read about a host.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct FitRow {
    /// Per class, the largest positive amount placement accepts: min(max_unit,
    /// floor(capacity) - used), 0 when full; `u64::MAX` on [`SLOW`] rows.
    limit: [u64; 3],
    class: u32,
    flags: u32,
}

/// Service enabled and up (ComputeFilter).
const UP: u32 = 1;
/// Placement's check needs the exact rule (min_unit or step_size above 1, huge values).
const SLOW: u32 = 2;
/// The host's aggregates override a weigher multiplier.
const MULTIPLIERS: u32 = 4;

/// Integers up to here convert to f64 exactly, and so do sums of two of them.
const EXACT: u64 = 1 << 52;

static NEXT_TABLE: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_TABLE.fetch_add(1, Ordering::Relaxed)
}

impl Clone for HostTable {
    fn clone(&self) -> HostTable {
        HostTable {
            id: next_id(),
            hosts: self.hosts.clone(),
            fit: self.fit.clone(),
            raw: self.raw.clone(),
            classes: self.classes.clone(),
            class_of: self.class_of.clone(),
        }
    }
}

/// Placement's per-class limits of `h`, or `None` when the fast rule would not be exact.
fn limits(h: &HostState) -> Option<[u64; 3]> {
    let mut out = [0; 3];
    for (c, inv) in h.inventories.iter().enumerate() {
        let used = h.used.0[c];
        let capacity = inv.total.saturating_sub(inv.reserved) as f64 * inv.allocation_ratio;
        if inv.min_unit > 1 || inv.step_size > 1 || used >= EXACT || !(0.0..EXACT as f64).contains(&capacity) {
            return None;
        }
        // For integers x < 2^53: x <= capacity exactly when x <= floor(capacity).
        let room = (capacity as u64).saturating_sub(used);
        out[c] = room.min(inv.max_unit);
    }
    Some(out)
}

impl HostTable {
    pub fn new(hosts: Vec<HostState>) -> HostTable {
        let n = hosts.len();
        let mut table = HostTable {
            id: next_id(),
            hosts,
            fit: vec![FitRow::default(); n],
            raw: std::array::from_fn(|_| vec![0.0; n]),
            classes: Vec::new(),
            class_of: BTreeMap::new(),
        };
        for i in 0..n {
            table.fit[i].class = table.intern(i);
            table.refresh_row(i);
            table.refresh_usage(i);
        }
        table
    }

    pub fn hosts(&self) -> &[HostState] {
        &self.hosts
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Changes host `i` through `f` (service state, node record, aggregates, usage...) and
    /// recomputes everything derived from it.
    pub fn update(&mut self, i: usize, f: impl FnOnce(&mut HostState)) {
        let node = self.hosts[i].node.clone();
        f(&mut self.hosts[i]);
        if !Arc::ptr_eq(&node, &self.hosts[i].node) {
            self.fit[i].class = self.intern(i);
        }
        self.refresh_row(i);
        self.refresh_usage(i);
    }

    /// Sets host `i`'s placement inventories and usage (the per-request refresh from
    /// placement's provider rows); nothing is recomputed when they are unchanged.
    pub fn set_usage(&mut self, i: usize, inventories: [Inventory; 3], used: Resources) {
        let h = &mut self.hosts[i];
        if h.inventories == inventories && h.used == used {
            return;
        }
        h.inventories = inventories;
        h.used = used;
        self.refresh_usage(i);
    }

    /// Adds an allocation to host `i`'s usage (the caller checked that it fits).
    pub fn claim(&mut self, i: usize, resources: &Resources) {
        self.hosts[i].used = self.hosts[i].used.add(resources);
        self.refresh_usage(i);
    }

    /// Removes an allocation from host `i`'s usage.
    ///
    /// # Panics
    /// When more is released than is used: a bookkeeping bug in the caller.
    pub fn release(&mut self, i: usize, resources: &Resources) {
        self.hosts[i].used = self.hosts[i].used.checked_sub(resources).expect("release more than was claimed");
        self.refresh_usage(i);
    }

    /// The image class of host `i`'s node, interned.
    fn intern(&mut self, i: usize) -> u32 {
        let node = &self.hosts[i].node;
        let key: ClassKey =
            (node.cpu_arch.clone(), node.hypervisor_type.clone(), node.vm_modes.clone(), node.hypervisor_version);
        let next = self.classes.len() as u32;
        let class = *self.class_of.entry(key).or_insert(next);
        if class == next {
            self.classes.push(node.clone());
        }
        class
    }

    /// Flags and the weigher inputs usage does not change.
    fn refresh_row(&mut self, i: usize) {
        let h = &self.hosts[i];
        let row = &mut self.fit[i];
        row.flags = (row.flags & SLOW)
            | if h.service_up && !h.service_disabled { UP } else { 0 }
            | if h.aggregates.has_multipliers { MULTIPLIERS } else { 0 };
        self.raw[WeigherKind::IoOps.index()][i] = h.node.num_io_ops as f64;
        self.raw[WeigherKind::NumInstances.index()][i] = h.node.num_instances as f64;
        self.raw[WeigherKind::HypervisorVersion.index()][i] = h.node.hypervisor_version as f64;
        self.raw[WeigherKind::BuildFailure.index()][i] = h.failed_builds as f64;
    }

    /// Placement's limits and the free-capacity weigher inputs (the same expressions as
    /// [`WeigherKind::raw`]).
    fn refresh_usage(&mut self, i: usize) {
        let h = &self.hosts[i];
        let row = &mut self.fit[i];
        match limits(h) {
            Some(limit) => {
                row.limit = limit;
                row.flags &= !SLOW;
            }
            None => {
                row.limit = [u64::MAX; 3];
                row.flags |= SLOW;
            }
        }
        self.raw[WeigherKind::Ram.index()][i] = h.free_ram_mb();
        self.raw[WeigherKind::Cpu.index()][i] = h.free_vcpus();
        self.raw[WeigherKind::Disk.index()][i] = h.free_disk_mb();
    }
}

/// The largest `max(k, host_subset_size)` kept inline; beyond it, a sort.
const INLINE_TOP: usize = 16;

impl Workspace {
    /// [`Workspace::best_hosts`] over a [`HostTable`]: the same hosts in the same order for
    /// the same `rng`, faster because the filters and weighers read packed columns.
    pub fn table_best_hosts(
        &mut self,
        table: &HostTable,
        req: &RequestView<'_>,
        config: &SchedulerConfig,
        rng: &mut dyn RngCore,
        k: usize,
    ) -> Result<&[usize], NoValidHost> {
        let hosts = &table.hosts[..];
        self.survivors.clear();
        if hosts.is_empty() {
            return Err(NoValidHost { reason: "no allocation candidates from placement".into() });
        }
        let prepared = Prepared::new(req, config);
        self.active.clear();
        let (mut check_up, mut check_image) = (false, false);
        for &f in &config.filters {
            if f.active(&prepared, req, config) {
                match f {
                    FilterKind::Compute => check_up = true,
                    FilterKind::ImageProperties => check_image = true,
                    _ => self.active.push(f),
                }
            }
        }
        if !self.image_key.as_ref().is_some_and(|k| same_image_key(k, &prepared.image)) {
            self.image_key = Some(image_key(&prepared.image));
            self.image_generation += 1;
        }
        if self.table_id != table.id {
            self.table_id = table.id;
            self.class_verdicts.clear();
        }
        if self.class_verdicts.len() < table.classes.len() {
            self.class_verdicts.resize(table.classes.len(), (0, false));
        }
        let generation = self.image_generation;
        let asked = req.flavor.resources();
        let use_placement = config.use_placement;
        // Without placement every host is a candidate: nothing to ask for.
        let fast_asked = if use_placement { asked.0 } else { [0; 3] };
        let exact_all = use_placement && asked.0.iter().any(|&a| a >= EXACT);
        let limit = if use_placement { config.candidate_limit } else { usize::MAX };
        let mut candidates = 0usize;
        let mut flags_seen = 0u32;
        for (i, row) in table.fit.iter().enumerate() {
            if candidates == limit {
                break;
            }
            let mut fits =
                fast_asked[0] <= row.limit[0] && fast_asked[1] <= row.limit[1] && fast_asked[2] <= row.limit[2];
            if use_placement && (row.flags & SLOW != 0 || exact_all) {
                fits = hosts[i].placement_fits(&asked);
            }
            if !fits {
                continue;
            }
            candidates += 1;
            if check_up && row.flags & UP == 0 {
                continue;
            }
            if check_image {
                let verdict = &mut self.class_verdicts[row.class as usize];
                if verdict.0 != generation {
                    let node = &table.classes[row.class as usize];
                    *verdict = (generation, image_properties_node(node, &prepared.image, &mut Quiet));
                }
                if !verdict.1 {
                    continue;
                }
            }
            if !self.active.is_empty()
                && !self.active.iter().all(|&f| passes(f, &prepared, &hosts[i], req, config, &mut Quiet))
            {
                continue;
            }
            self.survivors.push(i);
            flags_seen |= row.flags;
        }
        if self.survivors.is_empty() {
            return Err(explain_filters(hosts, req, config)
                .1
                .unwrap_or_else(|| NoValidHost { reason: "no host passed the filters".into() }));
        }
        let soft = config.weighers.iter().any(|(w, m)| {
            matches!(w, WeigherKind::SoftAffinity | WeigherKind::SoftAntiAffinity) && *m != 0.0 && !w.idle(req)
        });
        if flags_seen & MULTIPLIERS != 0 || soft {
            // Per-host multipliers or request-dependent weighers: the general weighing.
            self.rows.clear();
            for &i in &self.survivors {
                let mut row = [0.0; WeigherKind::COUNT];
                for (c, column) in table.raw.iter().enumerate() {
                    row[c] = column[i];
                }
                for w in [WeigherKind::SoftAffinity, WeigherKind::SoftAntiAffinity] {
                    row[w.index()] = w.raw(&hosts[i], req);
                }
                self.rows.push(row);
            }
            self.collected.clear();
            self.collected.extend(WeigherKind::ALL);
            self.weigh(hosts, req, config);
            return self.finish(config, rng, k);
        }
        self.weigh_columns(table, req, config);
        let n = self.survivors.len();
        let subset = config.host_subset_size.clamp(1, n);
        let wanted = k.max(subset).min(n);
        if wanted > INLINE_TOP {
            return self.finish(config, rng, k);
        }
        // The best `wanted` (key, survivor) pairs in ascending order: ascending key is
        // descending weight, and among equal keys the earlier survivor (lower host index)
        // stays ahead, as the stable sort keeps it.
        let mut best = [(u64::MAX, 0usize); INLINE_TOP];
        let mut len = 0usize;
        for (j, &w) in self.weights.iter().enumerate() {
            let key = descending_key(w);
            if len == wanted {
                if key >= best[wanted - 1].0 {
                    continue;
                }
                len -= 1;
            }
            let mut at = len;
            while at > 0 && best[at - 1].0 > key {
                best[at] = best[at - 1];
                at -= 1;
            }
            best[at] = (key, j);
            len += 1;
        }
        self.order.clear();
        self.order.extend(best[..wanted].iter().map(|&(_, j)| self.survivors[j]));
        let pick = if subset > 1 { rng.gen_range(0..subset) } else { 0 };
        self.order[..=pick].rotate_right(1);
        self.order.truncate(k.min(n));
        Ok(&self.order)
    }

    /// The general path's weighing without per-host multipliers, column by column over the
    /// survivors: fills `weights` in survivor order with the same bits as
    /// [`Workspace::weigh`].
    fn weigh_columns(&mut self, table: &HostTable, req: &RequestView<'_>, config: &SchedulerConfig) {
        let n = self.survivors.len();
        self.weights.clear();
        self.weights.resize(n, 0.0);
        // nova's weight handler leaves a single host unweighed.
        if n <= 1 {
            return;
        }
        for (&weigher, &multiplier) in &config.weighers {
            if weigher.idle(req) || multiplier == 0.0 {
                continue;
            }
            // Soft-affinity weighers that run take the general path.
            let raw = &table.raw[weigher.index()];
            let minval = weigher.minval();
            let floor = minval.unwrap_or(f64::NEG_INFINITY);
            self.column.clear();
            self.column.extend(self.survivors.iter().map(|&i| {
                let v = raw[i];
                if v < floor {
                    floor
                } else {
                    v
                }
            }));
            let (lo, hi) = column_bounds(&self.column);
            let lo = minval.unwrap_or(lo);
            if hi <= lo {
                continue; // every host normalises to 0
            }
            let range = hi - lo;
            for (w, &v) in self.weights.iter_mut().zip(&self.column) {
                *w += multiplier * ((v - lo) / range);
            }
        }
    }
}

/// The smallest and largest value (NaN ignored, as the general path's comparisons do), in
/// four independent lanes so that the comparisons do not wait on each other.
#[inline]
fn column_bounds(values: &[f64]) -> (f64, f64) {
    let mut lo = [f64::INFINITY; 4];
    let mut hi = [f64::NEG_INFINITY; 4];
    let chunks = values.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..4 {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
        }
    }
    for (l, &v) in rest.iter().enumerate() {
        lo[l] = if v < lo[l] { v } else { lo[l] };
        hi[l] = if v > hi[l] { v } else { hi[l] };
    }
    let min = |a: f64, b: f64| if b < a { b } else { a };
    let max = |a: f64, b: f64| if b > a { b } else { a };
    (min(min(lo[0], lo[1]), min(lo[2], lo[3])), max(max(hi[0], hi[1]), max(hi[2], hi[3])))
}
