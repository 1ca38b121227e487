//! Scheduling strategies: what the scheduler service asks to order hosts for a request.
//!
//! A strategy receives the host states (with their placement usage) and the request, and
//! returns host indices in the order the service should try to claim them; the first is
//! the pick, the ones after it are the fallbacks and alternates. Every built-in applies the
//! configured filters (and, in the current era, placement's candidate check) first, through
//! [`Workspace::filter`], so they differ only in how they order the survivors.
//!
//! Built in, by CLI name ([`builtin`]):
//! - `spread`: nova's filters and weighers as configured (default: spread by free RAM/CPU/disk);
//! - `pack`: the same with a negative RAM multiplier (fill hosts with the least free RAM);
//! - `random`: a uniformly random order of the survivors;
//! - `first-fit`: the survivors in input (placement) order;
//! - `best-fit`: least normalised free capacity left after the request, first;
//! - `p2c`: power of two choices: of two random survivors, the less loaded first.
//!
//! A researcher adds a strategy in their own crate by implementing [`Strategy`]:
//!
//! ```
//! use rand::RngCore;
//! use stackbed_core::scheduler::{HostState, NoValidHost, RequestView, SchedulerConfig, Workspace};
//! use stackbed_core::strategy::Strategy;
//!
//! /// Prefer the host with the fewest instances; ties in input order.
//! struct FewestInstances {
//!     config: SchedulerConfig,
//!     workspace: Workspace,
//! }
//!
//! impl Strategy for FewestInstances {
//!     fn name(&self) -> &str {
//!         "fewest-instances"
//!     }
//!
//!     fn select(
//!         &mut self,
//!         hosts: &[HostState],
//!         req: &RequestView<'_>,
//!         _rng: &mut dyn RngCore,
//!     ) -> Result<Vec<usize>, NoValidHost> {
//!         // Placement's check and the configured filters, as every built-in does.
//!         let mut order = self.workspace.filter(hosts, req, &self.config)?.to_vec();
//!         order.sort_by_key(|&i| (hosts[i].node.num_instances, i));
//!         Ok(order)
//!     }
//! }
//!
//! # use std::sync::Arc;
//! # use stackbed_core::model::{ComputeNode, Flavor, Image, Inventory, Resources};
//! # let node = |name: &str, instances: u64| Arc::new(ComputeNode {
//! #     host: name.into(), vcpus: 8, ram_mb: 16384, disk_gb: 100, hypervisor_type: "kvm".into(),
//! #     hypervisor_version: 9_000_000, cpu_arch: "x86_64".into(), vm_modes: vec!["hvm".into()],
//! #     num_instances: instances, num_io_ops: 0, stats: Default::default(),
//! #     supported_instances: None, cpu_info: None, metrics: Default::default(),
//! # });
//! # let inv = [Inventory::new(8, 0, 4.0), Inventory::new(16384, 512, 1.0), Inventory::new(100, 0, 1.0)];
//! # let hosts = vec![
//! #     HostState::new(node("a", 5), inv, Resources::default()),
//! #     HostState::new(node("b", 1), inv, Resources::default()),
//! # ];
//! # let flavor = Flavor { name: "m1.small".into(), vcpus: 1, ram_mb: 2048, disk_gb: 20, ephemeral_gb: 0, swap: 0, extra_specs: Default::default() };
//! # let image = Image { name: "cirros".into(), size_mb: 16, disk_format: "qcow2".into(), properties: Default::default() };
//! let mut strategy = FewestInstances { config: SchedulerConfig::default(), workspace: Workspace::new() };
//! let req = RequestView::new(&flavor, &image);
//! let mut rng = rand::rngs::mock::StepRng::new(0, 1);
//! assert_eq!(strategy.select(&hosts, &req, &mut rng).unwrap(), vec![1, 0]);
//! ```

use rand::{Rng, RngCore};

use crate::model::ResourceClass;
use crate::scheduler::{HostState, HostTable, NoValidHost, RequestView, SchedulerConfig, WeigherKind, Workspace};

/// A scheduling strategy. `select` returns host indices into `hosts` in the order to try
/// claims: the first is the pick. Every random choice must come from `rng` (the run's
/// seeded generator) so that runs replay.
pub trait Strategy: Send {
    fn name(&self) -> &str;
    fn select(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<usize>, NoValidHost>;

    /// The first `k` hosts of `select`'s order (a decision: the pick and its alternates),
    /// for the same `rng` state. Override when they can be found without the full order.
    fn select_top(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        rng: &mut dyn RngCore,
        k: usize,
    ) -> Result<Vec<usize>, NoValidHost> {
        let mut order = self.select(hosts, req, rng)?;
        order.truncate(k);
        Ok(order)
    }

    /// [`Strategy::select_top`] over a [`HostTable`]'s hosts: exactly what
    /// `select_top(table.hosts(), req, rng, k)` returns, drawing the same random numbers.
    /// Override when the table's packed columns give the answer faster (`spread` and
    /// `pack` do).
    fn select_table(
        &mut self,
        table: &HostTable,
        req: &RequestView<'_>,
        rng: &mut dyn RngCore,
        k: usize,
    ) -> Result<Vec<usize>, NoValidHost> {
        self.select_top(table.hosts(), req, rng, k)
    }
}

/// The built-in strategies' CLI names.
pub const BUILTIN: [&str; 6] = ["spread", "pack", "random", "first-fit", "best-fit", "p2c"];

/// A built-in strategy by CLI name, configured from `config` (filters, weighers, subset).
pub fn builtin(name: &str, config: &SchedulerConfig) -> Option<Box<dyn Strategy>> {
    let config = config.clone();
    let workspace = Workspace::new();
    Some(match name {
        "spread" => Box::new(Spread { name: "spread", config, workspace }),
        "pack" => Box::new(Spread { name: "pack", config: pack_config(config), workspace }),
        "random" => Box::new(Random { config, workspace }),
        "first-fit" => Box::new(FirstFit { config, workspace }),
        "best-fit" => Box::new(BestFit { config, workspace, keys: Vec::new() }),
        "p2c" => Box::new(PowerOfTwo { config, workspace }),
        _ => return None,
    })
}

/// Makes a strategy configured from the scenario's scheduler settings.
pub type Factory = fn(&SchedulerConfig) -> Box<dyn Strategy>;

/// Strategies registered from outside the tree, by name ([`register`]). Ordered, so the
/// names list the same way every run.
static REGISTERED: std::sync::Mutex<std::collections::BTreeMap<String, Factory>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn registered() -> std::sync::MutexGuard<'static, std::collections::BTreeMap<String, Factory>> {
    crate::sync::guard(&REGISTERED)
}

/// Registers a strategy from outside the tree under `name`, for `run`, `compare`, `explain`
/// and `sweep` (and scenario files' `control.scheduler.strategy`) to find. Call it before
/// `stackbed_cli::main()`; a sweep's child processes run the same `main` and register the
/// same names. Refuses a built-in name, a name taken, and an empty one.
pub fn register(name: &str, factory: Factory) -> Result<(), String> {
    if name.is_empty() || name.contains(',') || name.chars().any(char::is_whitespace) {
        return Err(format!("strategy name `{name}`: empty, or with a comma or a space"));
    }
    if BUILTIN.contains(&name) {
        return Err(format!("strategy `{name}` is built in"));
    }
    let mut r = registered();
    if r.contains_key(name) {
        return Err(format!("strategy `{name}` is registered twice"));
    }
    r.insert(name.to_string(), factory);
    Ok(())
}

/// A strategy by name: a built-in one, or one [`register`]ed.
pub fn by_name(name: &str, config: &SchedulerConfig) -> Option<Box<dyn Strategy>> {
    builtin(name, config).or_else(|| registered().get(name).map(|f| f(config)))
}

/// Every strategy name `by_name` knows: the built-in ones, then the registered ones.
pub fn names() -> Vec<String> {
    BUILTIN.iter().map(|s| s.to_string()).chain(registered().keys().cloned()).collect()
}

/// `pack`: nova's documented packing set-up, a negative RAM weigher multiplier.
pub fn pack_config(mut config: SchedulerConfig) -> SchedulerConfig {
    let ram = config.weighers.get(&WeigherKind::Ram).copied().unwrap_or(1.0);
    config.weighers.insert(WeigherKind::Ram, -ram.abs().max(1.0));
    config
}

/// nova's filter scheduler: filters, weighers, subset pick.
struct Spread {
    name: &'static str,
    config: SchedulerConfig,
    workspace: Workspace,
}

impl Strategy for Spread {
    fn name(&self) -> &str {
        self.name
    }
    fn select(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<usize>, NoValidHost> {
        self.workspace.sorted_hosts(hosts, req, &self.config, rng).map(<[usize]>::to_vec)
    }
    fn select_top(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        rng: &mut dyn RngCore,
        k: usize,
    ) -> Result<Vec<usize>, NoValidHost> {
        self.workspace.best_hosts(hosts, req, &self.config, rng, k).map(<[usize]>::to_vec)
    }
    fn select_table(
        &mut self,
        table: &HostTable,
        req: &RequestView<'_>,
        rng: &mut dyn RngCore,
        k: usize,
    ) -> Result<Vec<usize>, NoValidHost> {
        self.workspace.table_best_hosts(table, req, &self.config, rng, k).map(<[usize]>::to_vec)
    }
}

struct Random {
    config: SchedulerConfig,
    workspace: Workspace,
}

impl Strategy for Random {
    fn name(&self) -> &str {
        "random"
    }
    fn select(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<usize>, NoValidHost> {
        let mut order = self.workspace.filter(hosts, req, &self.config)?.to_vec();
        // Fisher-Yates, drawing from the run's generator.
        for i in (1..order.len()).rev() {
            let j = rng.gen_range(0..=i);
            order.swap(i, j);
        }
        Ok(order)
    }
}

struct FirstFit {
    config: SchedulerConfig,
    workspace: Workspace,
}

impl Strategy for FirstFit {
    fn name(&self) -> &str {
        "first-fit"
    }
    fn select(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        _rng: &mut dyn RngCore,
    ) -> Result<Vec<usize>, NoValidHost> {
        Ok(self.workspace.filter(hosts, req, &self.config)?.to_vec())
    }
}

/// Placement capacity of each class: (total - reserved) * allocation_ratio.
fn capacity(host: &HostState, class: ResourceClass) -> f64 {
    host.inventories[class.index()].capacity() as f64
}

/// Fraction of the host's capacity free after placing `req`, summed over the classes the
/// request uses (lower: tighter fit).
fn leftover_after(host: &HostState, req: &RequestView<'_>) -> f64 {
    let asked = req.flavor.resources();
    ResourceClass::ALL
        .into_iter()
        .filter(|c| asked.get(*c) > 0)
        .map(|c| {
            let cap = capacity(host, c);
            if cap <= 0.0 {
                return 0.0;
            }
            (cap - host.used.get(c) as f64 - asked.get(c) as f64) / cap
        })
        .sum()
}

/// The host's most used class, as a fraction of its capacity (p2c's load).
fn load(host: &HostState) -> f64 {
    ResourceClass::ALL
        .into_iter()
        .map(|c| {
            let cap = capacity(host, c);
            if cap <= 0.0 {
                1.0
            } else {
                host.used.get(c) as f64 / cap
            }
        })
        .fold(0.0, f64::max)
}

struct BestFit {
    config: SchedulerConfig,
    workspace: Workspace,
    keys: Vec<(f64, usize)>,
}

impl Strategy for BestFit {
    fn name(&self) -> &str {
        "best-fit"
    }
    fn select(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        _rng: &mut dyn RngCore,
    ) -> Result<Vec<usize>, NoValidHost> {
        let survivors = self.workspace.filter(hosts, req, &self.config)?;
        self.keys.clear();
        self.keys.extend(survivors.iter().map(|&i| (leftover_after(&hosts[i], req), i)));
        self.keys.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        Ok(self.keys.iter().map(|&(_, i)| i).collect())
    }
}

struct PowerOfTwo {
    config: SchedulerConfig,
    workspace: Workspace,
}

impl Strategy for PowerOfTwo {
    fn name(&self) -> &str {
        "p2c"
    }
    fn select(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<usize>, NoValidHost> {
        let survivors = self.workspace.filter(hosts, req, &self.config)?;
        let n = survivors.len();
        if n == 1 {
            return Ok(survivors.to_vec());
        }
        let a = rng.gen_range(0..n);
        let mut b = rng.gen_range(0..n - 1);
        if b >= a {
            b += 1;
        }
        let (first, second) = if load(&hosts[survivors[b]]) < load(&hosts[survivors[a]]) { (b, a) } else { (a, b) };
        // Fallbacks: the other sampled host, then the rest from a random starting point.
        let start = rng.gen_range(0..n);
        let mut order = Vec::with_capacity(n);
        order.push(survivors[first]);
        order.push(survivors[second]);
        order.extend((0..n).map(|k| (start + k) % n).filter(|&k| k != first && k != second).map(|k| survivors[k]));
        Ok(order)
    }
}

#[cfg(test)]
mod tests;
