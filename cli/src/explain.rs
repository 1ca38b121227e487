//! `explain`: why a request lands where it does, or gets NoValidHost. The hosts are the
//! scenario's as they start (empty, services up), the request is the workload's request N
//! as the runner would draw it for the seed: nothing runs.

use std::sync::Arc;

use rand::{rngs::SmallRng, SeedableRng};

use stackbed_core::model::Resources;
use stackbed_core::scenario::Scenario;
use stackbed_core::scheduler::{explain, Explanation, HostAggregates, HostState, RequestView};
use stackbed_services::ctx::fnv1a;

/// Explains request `n` of `scenario` for `seed`.
pub fn request(scenario: &Scenario, seed: u64, n: u32) -> Result<Explanation, String> {
    let (flavor, image, project) = stackbed_services::runner::request_shape(scenario, seed, n)?;
    let mut aggregates = scenario.host_aggregates();
    let ratios = scenario.control.ratios();
    let hosts: Vec<HostState> = scenario
        .hosts()
        .into_iter()
        .enumerate()
        .map(|(i, (name, group))| {
            let node = Arc::new(group.node(&name));
            let inventories = stackbed_services::compute::inventories(&node, group, &ratios);
            HostState {
                inventories,
                used: Resources::default(),
                service_up: true,
                service_disabled: false,
                failed_builds: 0,
                group_members_here: 0,
                aggregates: aggregates.remove(&name).unwrap_or_else(HostAggregates::none),
                host_ip: Some(stackbed_services::scheduler::host_ip(i)),
                node,
            }
        })
        .collect();
    let workload = &scenario.workload;
    let req = RequestView {
        project_id: &project,
        hints: &workload.hints,
        availability_zone: workload.availability_zone.as_deref(),
        ..RequestView::new(&flavor, &image)
    };
    // The scheduler's own generator for this seed: the subset pick matches a real run's first decision.
    let mut rng = SmallRng::seed_from_u64(seed ^ fnv1a(b"scheduler"));
    Ok(explain(&hosts, &req, &scenario.scheduler_config(), &mut rng))
}

fn short(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// The explanation as text: filters with kept and rejected hosts, weighers, scores, pick.
pub fn render(e: &Explanation, n: u32) -> String {
    let list = |v: &[String]| {
        if v.len() > 12 {
            format!("{} ... ({} hosts)", v[..12].join(", "), v.len())
        } else {
            v.join(", ")
        }
    };
    let mut out = format!("request {n}: flavor {} image {} on {} hosts\n", e.flavor, e.image, e.hosts_in);
    out += "filters, in order:\n";
    for step in &e.steps {
        out += &format!(
            "  {:<36} kept {:>5}  rejected {:>5}{}\n",
            step.filter,
            step.kept.len(),
            step.rejected.len(),
            if step.active { "" } else { "  (nothing to check for this request)" }
        );
        for r in step.rejected.iter().take(8) {
            out += &format!("      rejected {}: {}\n", r.host, r.reason);
        }
        if step.rejected.len() > 8 {
            out += &format!("      ... and {} more rejected\n", step.rejected.len() - 8);
        }
    }
    if let Some(nvh) = &e.no_valid_host {
        out += &format!("NoValidHost: {}\n", nvh.reason);
    }
    if !e.weighers.is_empty() {
        out += "weighers (raw -> normalised x multiplier), best hosts:\n";
        let top: Vec<&str> = e.scores.iter().take(8).map(|s| s.host.as_str()).collect();
        for w in &e.weighers {
            out += &format!("  {} (multiplier {})\n", w.weigher, short(w.multiplier));
            for v in w.values.iter().filter(|v| top.contains(&v.host.as_str())) {
                out += &format!(
                    "      {:<16} {:>12} -> {:.3} x {}\n",
                    v.host,
                    short(v.raw),
                    v.normalised,
                    short(v.multiplier)
                );
            }
        }
        out += "final scores:\n";
        for s in e.scores.iter().take(8) {
            out += &format!("  {:<16} {}\n", s.host, short(s.score));
        }
        if e.scores.len() > 8 {
            out += &format!("  ... and {} more\n", e.scores.len() - 8);
        }
    }
    out += &format!("host_subset_size {}: pick {}\n", e.host_subset_size, e.pick.as_deref().unwrap_or("none"));
    out += &format!("alternates: {}\n", if e.alternates.is_empty() { "none".to_string() } else { list(&e.alternates) });
    out += &match &e.cpu_topology {
        Ok(t) => format!("guest CPU topology: {} sockets x {} cores x {} threads\n", t.sockets, t.cores, t.threads),
        Err(err) => format!("guest CPU topology: error: {err}\n"),
    };
    out
}
