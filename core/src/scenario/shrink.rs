//! `cargo sim shrink`: the smallest scenario that still fails the same way on the same seed.
//!
//! The reducer is pure: it edits the scenario's TOML document and asks a `test` whether a
//! candidate still fails with the same invariant ([`Verdict::Same`]); anything else (it
//! passes, fails another way, no longer validates) rejects the candidate. The command line
//! supplies a `test` that runs the simulator; the unit tests supply predicates of their own.
//!
//! What it removes, in this order, each pass: `[[faults]]` entries (last first), the
//! `[random_faults]` table; then it writes the events `[random_faults]` drew for the seed
//! out as `[[faults]]` entries (so the next pass removes them one by one), sets each
//! remaining rate to 0, removes host groups, and brings down the numbers that size the run,
//! each to its least value that still fails (its minimum first, then a bisection between
//! the minimum and the value): requests (`times`, `concurrency`, `passes`,
//! `servers_per_request`), hosts per group, workers per service, Galera nodes, controllers
//! and their cores. A pass that changed anything is followed by another, until one changes
//! nothing or the run budget is spent. The search is greedy (a failure need not be monotone
//! in any of these), so the result is the smallest found, not the smallest there is.

use toml_edit::{DocumentMut, Item};

use super::{apply_overrides, Override, Runner, Scenario};
use crate::faults::{FaultAction, Trigger};

/// What a candidate did when run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Failed with the same invariant: the candidate is kept.
    Same,
    /// Passed, failed another way, or was refused (why, for the log).
    Other(String),
}

/// The sizes the command prints before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Faults this seed resolves to (`[[faults]]` and the ones `[random_faults]` draws).
    pub faults: usize,
    /// Servers requested: boots times passes times servers per request.
    pub requests: u64,
    pub hosts: u32,
    /// Service nodes: broker, database and every worker of every control service.
    pub nodes: usize,
}

impl Sizes {
    pub fn of(s: &Scenario, seed: u64) -> Sizes {
        let hosts = s.host_count();
        Sizes {
            faults: s.fault_schedule(seed).map(|f| f.faults.len()).unwrap_or(0),
            requests: u64::from(s.workload.runner.times(&s.trace))
                * u64::from(s.workload.passes)
                * u64::from(s.workload.servers_per_request),
            hosts,
            nodes: crate::faults::nodes(s).len().saturating_sub(hosts as usize),
        }
    }
}

impl std::fmt::Display for Sizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} faults, {} requests, {} hosts, {} service nodes",
            self.faults, self.requests, self.hosts, self.nodes
        )
    }
}

/// What [`shrink`] found.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The smallest scenario text that failed the same way.
    pub text: String,
    /// Candidates run.
    pub runs: usize,
    /// The reductions kept, in order (`removed faults[1]`, `workload.runner.times 300 -> 12`).
    pub kept: Vec<String>,
    /// True when the budget ran out before a pass changed nothing.
    pub budget_spent: bool,
}

/// One way to make the scenario smaller.
enum Reduction {
    /// A candidate text, whole.
    Edit { what: String, text: String },
    /// A number at `key` to bring down from `value` towards `min`.
    Number { key: String, value: u64, min: u64 },
}

/// Shrinks `text` (which must fail the same way on `seed`: the caller checked) with at most
/// `max_runs` calls of `test`.
pub fn shrink(text: &str, seed: u64, max_runs: usize, mut test: impl FnMut(&str) -> Verdict) -> Shrunk {
    let mut out = Shrunk { text: text.to_string(), runs: 0, kept: Vec::new(), budget_spent: false };
    let mut probe = |candidate: &str, out: &mut Shrunk| -> Option<bool> {
        if out.runs >= max_runs {
            out.budget_spent = true;
            return None;
        }
        out.runs += 1;
        Some(test(candidate) == Verdict::Same)
    };
    'passes: loop {
        let mut changed = false;
        for reduction in reductions(&out.text, seed) {
            match reduction {
                Reduction::Edit { what, text } => match probe(&text, &mut out) {
                    None => break 'passes,
                    Some(true) => {
                        out.text = text;
                        out.kept.push(what);
                        // Indices moved: list the reductions of the new text.
                        continue 'passes;
                    }
                    Some(false) => {}
                },
                Reduction::Number { key, value, min } => {
                    let base = out.text.clone();
                    let at = |v: u64| set(&base, &key, v);
                    // Bisection over (lo, hi]: hi fails the same way, lo is the last that did not.
                    let (mut lo, mut hi) = (min, value);
                    let mut best: Option<(u64, String)> = None;
                    if let Some(t) = at(min) {
                        match probe(&t, &mut out) {
                            None => break 'passes,
                            Some(true) => best = Some((min, t)),
                            Some(false) => {}
                        }
                    }
                    if best.is_none() {
                        while hi - lo > 1 {
                            let mid = lo + (hi - lo) / 2;
                            let Some(t) = at(mid) else { break };
                            match probe(&t, &mut out) {
                                None => break,
                                Some(true) => {
                                    hi = mid;
                                    best = Some((mid, t));
                                }
                                Some(false) => lo = mid,
                            }
                        }
                    }
                    if let Some((v, t)) = best {
                        out.text = t;
                        out.kept.push(format!("{key} {value} -> {v}"));
                        changed = true;
                    }
                    if out.budget_spent {
                        break 'passes;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    out
}

/// `text` with the number at `key` set to `value`; None when the key cannot be set.
fn set(text: &str, key: &str, value: u64) -> Option<String> {
    apply_overrides(text, &[Override { key: key.to_string(), value: value.to_string() }]).ok()
}

/// Every reduction of `text`, in the order they are tried.
fn reductions(text: &str, seed: u64) -> Vec<Reduction> {
    let Ok(doc) = text.parse::<DocumentMut>() else { return Vec::new() };
    // The scenario as it resolves (None: it does not validate, so only edits are offered).
    let parsed = Scenario::parse("shrink", text).ok();
    let mut out = Vec::new();
    let edit = |what: String, f: &dyn Fn(&mut DocumentMut) -> bool| {
        let mut d = doc.clone();
        f(&mut d).then(|| Reduction::Edit { what, text: d.to_string() })
    };
    for i in (0..array_len(doc.get("faults"))).rev() {
        out.extend(edit(format!("removed faults[{i}]"), &|d| remove_at(d.as_table_mut().get_mut("faults"), i)));
    }
    if let Some(Item::Table(random)) = doc.get("random_faults") {
        out.extend(edit("removed [random_faults]".into(), &|d| d.remove("random_faults").is_some()));
        if let Some((n, text)) = parsed.as_ref().and_then(|s| materialised(&doc, s, seed)) {
            out.push(Reduction::Edit { what: format!("[random_faults] events as {n} [[faults]] entries"), text });
        }
        for (key, value) in random.iter() {
            let rate = value.as_float().or_else(|| value.as_integer().map(|i| i as f64));
            if (key.ends_with("_per_minute") || key.ends_with("_rate")) && rate.is_some_and(|r| r > 0.0) {
                let key = key.to_string();
                out.extend(edit(format!("random_faults.{key} = 0"), &|d| {
                    d["random_faults"][key.as_str()] = toml_edit::value(0.0);
                    true
                }));
            }
        }
    }
    let hosts = doc.get("topology").and_then(|t| t.get("hosts"));
    let groups = array_len(hosts);
    if groups > 1 {
        for i in (0..groups).rev() {
            out.extend(edit(format!("removed topology.hosts[{i}]"), &|d| {
                remove_at(d.get_mut("topology").and_then(|t| t.get_mut("hosts")), i)
            }));
        }
    }
    // The numbers, read from the scenario as it resolves them (a worker count the file
    // leaves to its default is set explicitly).
    let Some(s) = parsed else { return out };
    let mut number = |key: String, value: u64| {
        if value > 1 {
            out.push(Reduction::Number { key, value, min: 1 });
        }
    };
    match s.workload.runner {
        Runner::Constant { concurrency, times } => {
            number("workload.runner.times".into(), times.into());
            number("workload.runner.concurrency".into(), concurrency.into());
        }
        Runner::Rps { times, .. } => number("workload.runner.times".into(), times.into()),
        Runner::Trace { .. } => {}
    }
    number("workload.passes".into(), s.workload.passes.into());
    number("workload.servers_per_request".into(), s.workload.servers_per_request.into());
    for (i, g) in s.topology.hosts.iter().enumerate() {
        number(format!("topology.hosts[{i}].count"), g.count.into());
    }
    let w = s.topology.workers();
    for (name, n) in [
        ("api", w.api),
        ("conductor", w.conductor),
        ("scheduler", w.scheduler),
        ("placement", w.placement),
        ("keystone", w.keystone),
    ] {
        number(format!("topology.workers.{name}"), n.into());
    }
    number("topology.db.nodes".into(), s.topology.db.nodes.into());
    if let Some(c) = &s.topology.controller {
        number("topology.controller.count".into(), c.count.into());
        number("topology.controller.cores".into(), c.cores.into());
    }
    out
}

/// The document with `[random_faults]`' events as this seed draws them written out as
/// `[[faults]]` entries (their rates set to 0), so that each can be removed on its own; with
/// how many. Partitions stay drawn (their other side is every other target, which one entry
/// cannot name), and so do the message rates. Each rate draws from a stream of its own, so
/// the events are the ones the run had.
fn materialised(doc: &DocumentMut, s: &Scenario, seed: u64) -> Option<(usize, String)> {
    let schedule = s.fault_schedule(seed).ok()?;
    let mut d = doc.clone();
    let mut zeroed = std::collections::BTreeSet::new();
    let mut entries = Vec::new();
    for f in &schedule.faults {
        let Some(key) = f.source.strip_prefix("random_faults.").filter(|k| k.ends_with("_per_minute")) else {
            continue;
        };
        let (Trigger::At { at_ms }, [target]) = (&f.trigger, f.targets.as_slice()) else { continue };
        let mut t = toml_edit::Table::new();
        t["kind"] = toml_edit::value(f.action.name());
        t["target"] = toml_edit::value(target.as_str());
        t["at"] = toml_edit::value(format!("{at_ms}ms"));
        if let Some(ms) = f.duration_ms {
            t["duration"] = toml_edit::value(format!("{ms}ms"));
        }
        match &f.action {
            FaultAction::Partition { .. } => continue,
            FaultAction::ClockSkew { offset_ms, drift_ppm } => {
                t["offset"] = toml_edit::value(format!("{offset_ms}ms"));
                t["drift_ppm"] = toml_edit::value(*drift_ppm);
            }
            FaultAction::Slow { multiplier } => t["multiplier"] = toml_edit::value(*multiplier),
            _ => {}
        }
        zeroed.insert(key.to_string());
        entries.push(t);
    }
    if entries.is_empty() {
        return None;
    }
    for key in &zeroed {
        d["random_faults"][key.as_str()] = toml_edit::value(0.0);
    }
    let n = entries.len();
    match d.as_table_mut().entry("faults").or_insert(Item::ArrayOfTables(Default::default())) {
        Item::ArrayOfTables(a) => entries.into_iter().for_each(|t| a.push(t)),
        _ => return None,
    }
    Some((n, d.to_string()))
}

fn array_len(item: Option<&Item>) -> usize {
    match item {
        Some(Item::ArrayOfTables(a)) => a.len(),
        Some(Item::Value(toml_edit::Value::Array(a))) => a.len(),
        _ => 0,
    }
}

/// Removes entry `i` of an array (of tables or inline); the key stays, possibly empty.
fn remove_at(item: Option<&mut Item>, i: usize) -> bool {
    match item {
        Some(Item::ArrayOfTables(a)) if i < a.len() => {
            a.remove(i);
            true
        }
        Some(Item::Value(toml_edit::Value::Array(a))) if i < a.len() => {
            a.remove(i);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[scenario]
name = "s"

[topology]
workers = { api = 4 }

[[topology.hosts]]
count = 16
vcpus = 8
ram_mb = 16384
disk_gb = 100

[[topology.hosts]]
name_prefix = "big"
count = 4
vcpus = 64
ram_mb = 262144
disk_gb = 4000

[[flavors]]
name = "m1.small"
vcpus = 1
ram_mb = 2048
disk_gb = 20

[[images]]
name = "cirros"
size_mb = 21
disk_format = "qcow2"

[[tenants]]
name = "demo"

[workload]
runner = { kind = "constant", concurrency = 20, times = 300 }
flavors = { "m1.small" = 1.0 }
images = { "cirros" = 1.0 }

[[faults]]
kind = "restart"
target = "broker"
at = "10s"

[[faults]]
kind = "kill"
target = "compute-3"
at = "20s"
duration = "5s"

[[faults]]
kind = "pause"
target = "nova-api-2"
at = "30s"
duration = "5s"
"#;

    /// A predicate over the parsed candidate: the failure needs what `needs` says.
    fn run(needs: impl Fn(&Scenario) -> bool, max_runs: usize) -> (Shrunk, Scenario) {
        assert!(needs(&Scenario::parse("base", BASE).unwrap()), "the base must fail");
        let shrunk = shrink(BASE, 1, max_runs, |text| match Scenario::parse("candidate", text) {
            Ok(s) if needs(&s) => Verdict::Same,
            Ok(_) => Verdict::Other("passes".into()),
            Err(e) => Verdict::Other(e.to_string()),
        });
        let s = Scenario::parse("shrunk", &shrunk.text).expect("the shrunk scenario validates");
        (shrunk, s)
    }

    fn has_fault(s: &Scenario, target: &str) -> bool {
        s.faults.iter().any(|f| f.target == target)
    }

    #[test]
    fn keeps_only_what_the_failure_needs_each_at_its_least() {
        // Table: what the failure needs, and what the shrunk scenario must then be.
        type Needs = fn(&Scenario) -> bool;
        let cases: &[(&str, Needs, usize, u32, u64, u32)] = &[
            // (name, needs, faults left, hosts, boots, api workers)
            ("nothing but a broker restart", |s| has_fault(s, "broker"), 1, 1, 1, 1),
            (
                "a killed compute-3 and 37 boots",
                |s| has_fault(s, "compute-3") && s.workload.runner.times(&s.trace) >= 37,
                1,
                3,
                37,
                1,
            ),
            (
                "two api workers and 5 hosts, no fault",
                |s| s.topology.workers().api >= 2 && s.host_count() >= 5,
                0,
                5,
                1,
                2,
            ),
        ];
        for &(name, needs, faults, hosts, boots, api) in cases {
            let (shrunk, s) = run(needs, 1000);
            assert!(!shrunk.budget_spent, "{name}: budget spent after {} runs", shrunk.runs);
            assert_eq!(s.faults.len(), faults, "{name}: faults left\n{}", shrunk.text);
            assert_eq!(s.host_count(), hosts, "{name}: hosts\n{}", shrunk.text);
            assert_eq!(s.workload.runner.times(&s.trace) as u64, boots, "{name}: boots\n{}", shrunk.text);
            assert_eq!(s.topology.workers().api, api, "{name}: api workers\n{}", shrunk.text);
            assert!(needs(&s), "{name}: the shrunk scenario no longer fails");
        }
    }

    #[test]
    fn stops_at_its_budget_with_a_candidate_that_still_fails() {
        let (shrunk, s) = run(|s| has_fault(s, "broker"), 3);
        assert!(shrunk.budget_spent);
        assert_eq!(shrunk.runs, 3);
        assert!(has_fault(&s, "broker"));
        // Three runs: faults[2] and faults[1] removed, faults[0] kept (the third run).
        assert_eq!(shrunk.kept, vec!["removed faults[2]", "removed faults[1]"]);
    }

    #[test]
    fn random_faults_go_whole_or_rate_by_rate() {
        let text = format!(
            "{BASE}\n[phases]\nchaos = \"60s\"\n\n[random_faults]\ntargets = [\"compute\"]\nkill_per_minute = 2.0\npause_per_minute = 1.0\n"
        );
        let pauses = |s: &Scenario| s.random_faults.as_ref().is_some_and(|r| r.pause_per_minute > 0.0);
        let shrunk = shrink(&text, 1, 1000, |t| match Scenario::parse("c", t) {
            Ok(s) if pauses(&s) => Verdict::Same,
            _ => Verdict::Other("no".into()),
        });
        let s = Scenario::parse("shrunk", &shrunk.text).unwrap();
        let r = s.random_faults.as_ref().expect("kept: the failure needs its pauses");
        assert_eq!((r.kill_per_minute, r.pause_per_minute), (0.0, 1.0), "{}", shrunk.text);
        // The kills went, written out and removed one by one, or their rate set to 0.
        assert!(s.faults.is_empty(), "{}", shrunk.text);
    }

    #[test]
    fn random_events_are_written_out_and_all_but_the_one_needed_removed() {
        let text = format!(
            "{BASE}\n[phases]\nchaos = \"300s\"\n\n[random_faults]\ntargets = [\"compute\"]\nkill_per_minute = 2.0\nslow_per_minute = 1.0\n"
        );
        let kills = |s: &Scenario| -> Vec<(String, u64)> {
            let schedule = s.fault_schedule(1).unwrap();
            schedule
                .faults
                .iter()
                .filter(|f| f.action == FaultAction::Kill)
                .filter_map(|f| match f.trigger {
                    Trigger::At { at_ms } => Some((f.targets[0].clone(), at_ms)),
                    _ => None,
                })
                .collect()
        };
        let drawn = kills(&Scenario::parse("base", &text).unwrap());
        assert!(drawn.len() >= 4, "{drawn:?}");
        let needed = drawn[drawn.len() / 2].clone();
        let shrunk = shrink(&text, 1, 1000, |t| match Scenario::parse("c", t) {
            Ok(s) if kills(&s).contains(&needed) => Verdict::Same,
            _ => Verdict::Other("no".into()),
        });
        let s = Scenario::parse("shrunk", &shrunk.text).unwrap();
        assert_eq!(kills(&s), vec![needed.clone()], "{}", shrunk.text);
        assert_eq!(s.faults.len(), 1, "{}", shrunk.text);
        assert_eq!(s.faults[0].target, needed.0);
        assert!(s.random_faults.is_none(), "{}", shrunk.text);
        assert!(shrunk.kept.iter().any(|k| k.starts_with("[random_faults] events as ")), "{:?}", shrunk.kept);
    }

    #[test]
    fn sizes_count_faults_requests_hosts_and_service_nodes() {
        let s = Scenario::parse("base", BASE).unwrap();
        // broker, db, keystone, placement, conductor, scheduler, 4 nova-api.
        assert_eq!(Sizes::of(&s, 1), Sizes { faults: 3, requests: 300, hosts: 20, nodes: 10 });
    }
}
