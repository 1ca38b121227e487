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
//! 2. the survivors' raw weigher values (one cache line per host, four lanes when only the
//!    RAM, CPU, disk and io_ops weighers can separate hosts) clamped to nova's minval, and
//!    each column's bounds;
//! 3. an approximate weight per survivor, `(v - lo) * (multiplier / range)` summed, within
//!    a proven bound of the exact one, and the `max(k, host_subset_size)`-th best of them;
//!    only the survivors within twice the bound of it can be among the best;
//! 4. for those, the exact weight: `multiplier * ((v - lo) / range)` added weigher by weigher
//!    in the configured order, the general path's floating-point operations in its order,
//!    so the same bits; the best kept inline (no sort), ties to the lower host index, and
//!    the subset pick.
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
    /// soft-affinity ones depend on the request), before the minval clamp; one cache line
    /// per host.
    raw: Vec<Raw>,
    /// One node per image class, and the class of each key.
    classes: Vec<Arc<ComputeNode>>,
    class_of: BTreeMap<ClassKey, u32>,
    /// For the columns past [`NARROW`] (instances, hypervisor version, failed builds): how
    /// many hosts have each value (by its bits), and how many rows are counted (rows are
    /// counted in order as the table is built).
    fixed_values: [BTreeMap<u64, u32>; RAW_COLUMNS - NARROW],
    counted: usize,
}

/// The weighers of the first four columns (RAM, CPU, disk, io_ops) are usually the only
/// ones that separate hosts: the weighing then reads four lanes instead of eight.
const NARROW: usize = 4;

/// The weighers whose raw values usage does not change.
const FIXED: [WeigherKind; 4] =
    [WeigherKind::IoOps, WeigherKind::NumInstances, WeigherKind::HypervisorVersion, WeigherKind::BuildFailure];

const RAW_COLUMNS: usize = 7;

/// A host's raw weigher values in the first [`RAW_COLUMNS`] lanes, the last lane 0.
type Raw = [f64; 8];

/// (cpu_arch, hypervisor_type, vm_modes, hypervisor_version, supported_instances,
/// cpu_info): all ImagePropertiesFilter reads.
type ClassKey = (String, String, Vec<String>, u64, Option<Vec<[String; 3]>>, Option<String>);

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
/// A raw weigher value is not finite (an infinite or NaN allocation ratio).
const NONFINITE: u32 = 8;

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
            fixed_values: self.fixed_values.clone(),
            counted: self.counted,
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
            raw: vec![[0.0; 8]; n],
            classes: Vec::new(),
            class_of: BTreeMap::new(),
            fixed_values: Default::default(),
            counted: 0,
        };
        assert!(u32::try_from(n).is_ok(), "a host table holds fewer than 2^32 hosts");
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
        let key: ClassKey = (
            node.cpu_arch.clone(),
            node.hypervisor_type.clone(),
            node.vm_modes.clone(),
            node.hypervisor_version,
            node.supported_instances.clone(),
            node.cpu_info.clone(),
        );
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
        let values = [
            h.node.num_io_ops as f64,
            h.node.num_instances as f64,
            h.node.hypervisor_version as f64,
            h.failed_builds as f64,
        ];
        let first = self.counted <= i;
        for (w, v) in FIXED.into_iter().zip(values) {
            let slot = &mut self.raw[i][w.index()];
            if w.index() >= NARROW {
                let counts = &mut self.fixed_values[w.index() - NARROW];
                if !first {
                    let old = slot.to_bits();
                    let count = counts.get_mut(&old).expect("every row's value is counted");
                    *count -= 1;
                    if *count == 0 {
                        counts.remove(&old);
                    }
                }
                *counts.entry(v.to_bits()).or_insert(0) += 1;
            }
            *slot = v;
        }
        self.counted = self.counted.max(i + 1);
        self.check_finite(i);
    }

    /// Whether the raw values of column `c` (one of those past [`NARROW`], none with a
    /// minval) are one value across the table: the column then normalises to 0 whatever
    /// the survivors.
    fn constant(&self, c: usize) -> bool {
        c >= NARROW && self.fixed_values[c - NARROW].len() == 1
    }

    fn check_finite(&mut self, i: usize) {
        let row = &mut self.fit[i];
        row.flags &= !NONFINITE;
        if !self.raw[i].iter().all(|v| v.is_finite()) {
            row.flags |= NONFINITE;
        }
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
        let raw = &mut self.raw[i];
        raw[WeigherKind::Ram.index()] = h.free_ram_mb();
        raw[WeigherKind::Cpu.index()] = h.free_vcpus();
        raw[WeigherKind::Disk.index()] = h.free_disk_mb();
        self.check_finite(i);
    }
}

/// A class's ImageProperties verdict: not known yet for the image, fails, passes.
const UNKNOWN: u8 = 0;
const FAILS: u8 = 1;
const PASSES: u8 = 2;

/// What the filtering pass asks of each row, fixed for a decision.
struct Scan {
    asked: [u64; 3],
    limit: usize,
    /// Flags a row must have (UP with ComputeFilter).
    up_mask: u32,
    /// Flags that send a row's placement check to the exact rule (SLOW with placement).
    rare_mask: u32,
    /// Every row's placement check takes the exact rule (a huge request).
    all_rare: bool,
    check_image: bool,
    /// Other filters are active.
    filters: bool,
}

/// The questions the filtering pass hands back: placement's exact rule for a host, the
/// ImageProperties verdict for a class, the other active filters for a host.
#[derive(Clone, Copy)]
enum Rare {
    Fit,
    Image,
    Filters,
}

impl Scan {
    /// One pass over the rows in table order, stopping at `limit` candidates: survivors'
    /// indices into `out`; returns their number and the union of their flags. `rare`
    /// answers what the rows do not hold.
    #[inline(never)]
    fn run(
        &self,
        fit: &[FitRow],
        verdicts: &mut [u8],
        out: &mut [u32],
        rare: &mut dyn FnMut(usize, Rare) -> bool,
    ) -> (usize, u32) {
        let [a0, a1, a2] = self.asked;
        let mut candidates = 0usize;
        let mut n = 0usize;
        let mut seen = 0u32;
        for (i, row) in fit.iter().enumerate() {
            if candidates == self.limit {
                break;
            }
            let mut fits = (a0 <= row.limit[0]) & (a1 <= row.limit[1]) & (a2 <= row.limit[2]);
            if self.all_rare | (row.flags & self.rare_mask != 0) {
                fits = rare(i, Rare::Fit);
            }
            if !fits {
                continue;
            }
            candidates += 1;
            if row.flags & self.up_mask != self.up_mask {
                continue;
            }
            if self.check_image {
                let class = row.class as usize;
                let mut verdict = verdicts[class];
                if verdict == UNKNOWN {
                    verdict = if rare(class, Rare::Image) { PASSES } else { FAILS };
                    verdicts[class] = verdict;
                }
                if verdict != PASSES {
                    continue;
                }
            }
            if self.filters && !rare(i, Rare::Filters) {
                continue;
            }
            out[n] = i as u32;
            n += 1;
            seen |= row.flags;
        }
        (n, seen)
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
        let n = self.table_filter(table, req, config);
        if n == 0 {
            return Err(explain_filters(hosts, req, config, false)
                .1
                .unwrap_or_else(|| NoValidHost { reason: "no host passed the filters".into() }));
        }
        metrics::required_metrics(self.picked[..n].iter().map(|&i| &hosts[i as usize]), config)?;
        if self.table_needs_general_weighing(req, config) {
            // Per-host multipliers or request-dependent weighers: the general weighing.
            self.survivors.extend(self.picked[..n].iter().map(|&i| i as usize));
            self.rows.clear();
            for &i in &self.survivors {
                let mut row = [0.0; WeigherKind::COUNT];
                row[..RAW_COLUMNS].copy_from_slice(&table.raw[i][..RAW_COLUMNS]);
                for w in [WeigherKind::SoftAffinity, WeigherKind::SoftAntiAffinity, WeigherKind::Metrics] {
                    row[w.index()] = w.raw(&hosts[i], req, config);
                }
                self.rows.push(row);
            }
            self.collected.clear();
            self.collected.extend(WeigherKind::ALL);
            self.weigh(hosts, req, config);
            return self.finish(config, rng, k);
        }
        let n_wanted = k.max(config.host_subset_size.clamp(1, n)).min(n);
        if n_wanted > INLINE_TOP {
            // Many hosts wanted: every weight, then the general ordering.
            let all = self.table_scores(table, req, config, n, false);
            self.survivors.extend(self.picked[..n].iter().map(|&i| i as usize));
            self.weights.clear();
            self.weights.extend_from_slice(&self.scores[..all]);
            self.weights.resize(n, 0.0);
            return self.finish(config, rng, k);
        }
        let subset = config.host_subset_size.clamp(1, n);
        let wanted = n_wanted;
        self.wanted = wanted;
        let prune = self.flags_seen & NONFINITE == 0;
        let scored = self.table_scores(table, req, config, n, prune);
        self.order.clear();
        if scored == 0 {
            // Every weight 0: the stable order is the survivors' order.
            self.order.extend(self.picked[..wanted].iter().map(|&i| i as usize));
        } else {
            let best = top(&self.scores[..scored], wanted);
            self.order
                .extend(best[..wanted].iter().map(|&(_, t)| self.picked[self.scored[t as usize] as usize] as usize));
        }
        let pick = if subset > 1 { rng.gen_range(0..subset) } else { 0 };
        self.order[..=pick].rotate_right(1);
        self.order.truncate(k.min(n));
        Ok(&self.order)
    }

    /// Placement's check (current era, at most `candidate_limit` candidates in table order)
    /// and the active filters: the surviving host indices go to `picked[..n]`; returns n.
    fn table_filter(&mut self, table: &HostTable, req: &RequestView<'_>, config: &SchedulerConfig) -> usize {
        let hosts = &table.hosts[..];
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
        if !self.image_key.as_ref().is_some_and(|k| prepared.image.same_key(k)) {
            self.image_key = Some(prepared.image.key());
            self.image_generation += 1;
        }
        if self.table_id != table.id || self.verdicts_for != self.image_generation {
            self.table_id = table.id;
            self.verdicts_for = self.image_generation;
            self.class_verdicts.clear();
        }
        if self.class_verdicts.len() < table.classes.len() {
            self.class_verdicts.resize(table.classes.len(), UNKNOWN);
        }
        let asked = req.flavor.resources();
        let use_placement = config.use_placement;
        let limit = if use_placement { config.candidate_limit } else { usize::MAX };
        let most = hosts.len().min(limit);
        if self.picked.len() < most {
            self.picked.resize(most, 0);
        }
        let scan = Scan {
            // Without placement every host is a candidate: nothing to ask for.
            asked: if use_placement { asked.0 } else { [0; 3] },
            limit,
            up_mask: if check_up { UP } else { 0 },
            rare_mask: if use_placement { SLOW } else { 0 },
            all_rare: use_placement && asked.0.iter().any(|&a| a >= EXACT),
            check_image,
            filters: !self.active.is_empty(),
        };
        let active = &self.active[..];
        let (n, seen) =
            scan.run(&table.fit, &mut self.class_verdicts, &mut self.picked[..most], &mut |i, rare| match rare {
                Rare::Fit => hosts[i].placement_fits(&asked),
                Rare::Image => image_properties_node(&table.classes[i], &prepared.image, &mut Quiet),
                Rare::Filters => active.iter().all(|&f| passes(f, &prepared, &hosts[i], req, config, &mut Quiet)),
            });
        self.flags_seen = seen;
        n
    }

    /// Whether the survivors need [`Workspace::weigh`]: an aggregate overrides a multiplier,
    /// or a soft-affinity or metrics weigher runs.
    fn table_needs_general_weighing(&self, req: &RequestView<'_>, config: &SchedulerConfig) -> bool {
        self.flags_seen & MULTIPLIERS != 0
            || config.weighers.iter().any(|(w, m)| {
                matches!(w, WeigherKind::SoftAffinity | WeigherKind::SoftAntiAffinity | WeigherKind::Metrics)
                    && *m != 0.0
                    && !w.idle(req, config)
            })
    }

    /// The survivors' weights without per-host multipliers, with the same bits as
    /// [`Workspace::weigh`] gives. Fills `scored[..m]` with survivor positions (ascending)
    /// and `scores[..m]` with their weights, and returns m: every survivor, or with `prune`,
    /// a subset that surely holds the best `max(k, host_subset_size)`. Returns 0 when every
    /// weight is 0 (no weigher separates the hosts, or a single host).
    fn table_scores(
        &mut self,
        table: &HostTable,
        req: &RequestView<'_>,
        config: &SchedulerConfig,
        n: usize,
        prune: bool,
    ) -> usize {
        // nova's weight handler leaves a single host unweighed.
        if n <= 1 {
            return 0;
        }
        if self.cand.len() < n {
            self.cand.resize(n, [0.0; 8]);
            self.scores.resize(n, 0.0);
            self.approx.resize(n, 0.0);
            self.column.resize(n, 0.0);
            self.scored.resize(n, 0);
        }
        // The survivors' rows, clamped to each weigher's minval, and each column's bounds,
        // as the general path's weighers compute them (lanes: NaN ignored; no raw value is
        // NaN here anyway, see NONFINITE).
        let mut floor = [f64::NEG_INFINITY; 8];
        for w in &WeigherKind::ALL[..RAW_COLUMNS] {
            floor[w.index()] = w.minval().unwrap_or(f64::NEG_INFINITY);
        }
        // Four lanes when no weigher past them can separate the hosts.
        let narrow = config
            .weighers
            .iter()
            .all(|(w, m)| *m == 0.0 || w.idle(req, config) || w.index() < NARROW || table.constant(w.index()));
        let picked = &self.picked[..n];
        let (lo, hi) = match narrow {
            true => gather_rows::<NARROW>(&table.raw, picked, &floor, &mut self.cand[..n]),
            false => gather_rows::<8>(&table.raw, picked, &floor, &mut self.cand[..n]),
        };
        // The weighers that change a weight, in the configured order: (column, multiplier,
        // lo, range).
        let mut active = [(0usize, 0.0, 0.0, 0.0); RAW_COLUMNS];
        let mut count = 0;
        for (&weigher, &multiplier) in &config.weighers {
            if weigher.idle(req, config) || multiplier == 0.0 {
                continue;
            }
            let c = weigher.index();
            debug_assert!(c < RAW_COLUMNS, "soft-affinity and metrics weighers take the general path");
            if narrow && c >= NARROW {
                continue; // constant over the table: normalises to 0
            }
            let lo = weigher.minval().unwrap_or(lo[c]);
            if hi[c] <= lo {
                continue; // every host normalises to 0
            }
            active[count] = (c, multiplier, lo, hi[c] - lo);
            count += 1;
        }
        let active = &active[..count];
        if active.is_empty() {
            return 0;
        }
        let m = if prune { self.prune(active, n, narrow) } else { None };
        let m = match m {
            Some(m) => m,
            None => {
                for (t, slot) in self.scored[..n].iter_mut().enumerate() {
                    *slot = t as u32;
                }
                n
            }
        };
        // The exact weights of the positions kept: nova's sum, weigher by weigher.
        let scored = &self.scored[..m];
        let scores = &mut self.scores[..m];
        let column = &mut self.column[..m];
        for (a, &(c, multiplier, lo, range)) in active.iter().enumerate() {
            for (v, &t) in column.iter_mut().zip(scored) {
                *v = self.cand[t as usize][c];
            }
            if a == 0 {
                // The general path adds to weights that start at 0.0; so does this.
                for (w, &v) in scores.iter_mut().zip(column.iter()) {
                    *w = 0.0 + multiplier * ((v - lo) / range);
                }
            } else {
                for (w, &v) in scores.iter_mut().zip(column.iter()) {
                    *w += multiplier * ((v - lo) / range);
                }
            }
        }
        m
    }

    /// Positions (into `scored`) of the survivors whose weight may be among the best
    /// `wanted`, found with an approximate weight, multiplications instead of divisions,
    /// that is within `slack` of the exact one: every survivor whose approximate weight is
    /// within `2 * slack` of the `wanted`-th best approximate weight. `None` when the bound
    /// does not hold (non-finite multipliers) or nothing would be pruned.
    fn prune(&mut self, active: &[(usize, f64, f64, f64)], n: usize, narrow: bool) -> Option<usize> {
        // Each exact term is m * ((v - lo) / range) with (v - lo) / range in [0, 1]; the
        // approximate one, (v - lo) * (m / range), differs by a few units in the last place
        // of |m|, and each sum of at most seven terms adds as many again: 2^-44 of the sum
        // of |m| is hundreds of times the worst case.
        let total: f64 = active.iter().map(|a| a.1.abs()).sum();
        if !total.is_finite() {
            return None;
        }
        let slack = total / (1u64 << 44) as f64;
        let mut scale = [0.0; 8];
        let mut base = [0.0; 8];
        for &(c, multiplier, lo, range) in active {
            scale[c] = multiplier / range;
            base[c] = lo;
        }
        if !scale.iter().chain(&base).all(|x| x.is_finite()) {
            return None;
        }
        let wanted = self.wanted;
        let approx = &mut self.approx[..n];
        let best = match narrow {
            true => approximate::<NARROW>(&self.cand[..n], &scale, &base, approx, wanted),
            false => approximate::<8>(&self.cand[..n], &scale, &base, approx, wanted),
        };
        let threshold = best - 2.0 * slack;
        let mut m = 0;
        for (t, &a) in approx.iter().enumerate() {
            self.scored[m] = t as u32;
            m += (a >= threshold) as usize;
        }
        // The best `wanted` approximate weights are at or above the threshold, so m >= wanted
        // (a guard all the same: with fewer, weigh every survivor).
        (m >= wanted).then_some(m)
    }
}

/// The first `L` lanes of the rows at `picked`, each clamped to `floor` as the general path
/// clamps to minval, into `out`; returns each lane's smallest and largest value (lanes past
/// `L`: infinite bounds, as of no value).
#[inline(never)]
fn gather_rows<const L: usize>(raw: &[Raw], picked: &[u32], floor: &Raw, out: &mut [Raw]) -> (Raw, Raw) {
    let mut lo = [f64::INFINITY; 8];
    let mut hi = [f64::NEG_INFINITY; 8];
    for (o, &i) in out.iter_mut().zip(picked) {
        let r = &raw[i as usize];
        for l in 0..L {
            let v = if r[l] < floor[l] { floor[l] } else { r[l] };
            o[l] = v;
            lo[l] = if v < lo[l] { v } else { lo[l] };
            hi[l] = if v > hi[l] { v } else { hi[l] };
        }
    }
    (lo, hi)
}

/// Approximate weights `sum((v - base) * scale)` over the first `L` lanes of `rows` into
/// `out`; returns the `wanted`-th largest.
#[inline(never)]
fn approximate<const L: usize>(rows: &[Raw], scale: &Raw, base: &Raw, out: &mut [f64], wanted: usize) -> f64 {
    let mut best = [f64::NEG_INFINITY; INLINE_TOP];
    let mut worst = f64::NEG_INFINITY;
    let mut len = 0;
    for (o, r) in out.iter_mut().zip(rows) {
        let mut lanes = [0.0; 8];
        for l in 0..L {
            lanes[l] = (r[l] - base[l]) * scale[l];
        }
        let mut a = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
        if L > 4 {
            a += (lanes[4] + lanes[5]) + (lanes[6] + lanes[7]);
        }
        *o = a;
        if len == wanted {
            if a <= worst {
                continue;
            }
            len -= 1;
        }
        let mut at = len;
        while at > 0 && best[at - 1] < a {
            best[at] = best[at - 1];
            at -= 1;
        }
        best[at] = a;
        len += 1;
        worst = best[len - 1];
    }
    best[wanted - 1]
}

/// The best `wanted` (key, position) pairs of `scores`, in ascending order: ascending key
/// is descending weight, and among equal keys the earlier position (the lower host index)
/// stays ahead, as the general path's stable order keeps it.
#[inline]
fn top(scores: &[f64], wanted: usize) -> [(u64, u32); INLINE_TOP] {
    let mut best = [(u64::MAX, 0u32); INLINE_TOP];
    let mut len = 0usize;
    let mut worst = u64::MAX;
    for (j, &w) in scores.iter().enumerate() {
        let key = descending_key(w);
        if len == wanted {
            if key >= worst {
                continue;
            }
            len -= 1;
        }
        let mut at = len;
        while at > 0 && best[at - 1].0 > key {
            best[at] = best[at - 1];
            at -= 1;
        }
        best[at] = (key, j as u32);
        len += 1;
        if len == wanted {
            worst = best[wanted - 1].0;
        }
    }
    best
}
