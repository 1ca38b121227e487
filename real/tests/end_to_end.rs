//! Whole runs on real seams: every service as a tokio task, the in-process broker, SQLite
//! and libvirt's test driver.
#![cfg(not(madsim))]

use std::sync::Arc;

use stackbed_core::scenario::Scenario;
use stackbed_real::run::{run_with, RealConfig};
use stackbed_services::report::{Report, RunOptions};

/// Two host groups (so host naming across groups is exercised), two tenants, a small
/// constant-concurrency boot storm with quick polling.
const SCENARIO: &str = r#"
[scenario]
name = "real-smoke"
seeds = { start = 1, count = 1 }

[topology]
[[topology.hosts]]
count = 2
name_prefix = "compute"
vcpus = 8
ram_mb = 16384
disk_gb = 200

[[topology.hosts]]
count = 1
name_prefix = "big"
vcpus = 32
ram_mb = 65536
disk_gb = 1000

[control]
max_concurrent_builds = 4

[control.scheduler]
filters = ["Compute", "ComputeCapabilities", "ImageProperties"]
weighers = { ram = 1.0 }

[[flavors]]
name = "m1.small"
vcpus = 1
ram_mb = 2048
disk_gb = 20

[[flavors]]
name = "m1.medium"
vcpus = 2
ram_mb = 4096
disk_gb = 40

[[images]]
name = "cirros"
size_mb = 16
disk_format = "qcow2"

[[tenants]]
name = "demo"
count = 2
quota = { instances = 20, cores = 40, ram_mb = 81920 }

[workload]
runner = { kind = "constant", concurrency = 4, times = ACTIONS }
action = "ACTION"
flavors = { "m1.small" = 0.5, "m1.medium" = 0.5 }
images = { "cirros" = 1.0 }
prepoll_delay = "100ms"
poll_interval = "100ms"
liveness_bound = "60s"
"#;

fn options(action: &str, times: u32, seed: u64) -> RunOptions {
    let text = SCENARIO.replace("ACTIONS", &times.to_string()).replace("ACTION", action);
    let scenario = Scenario::parse("real-smoke.toml", &text).unwrap();
    RunOptions {
        scenario: Arc::new(scenario),
        scenario_file: "real-smoke.toml".into(),
        seed,
        revision: "test".into(),
        replay: format!("cargo real run real-smoke.toml --seed {seed}"),
    }
}

fn assert_clean(r: &Report) {
    assert!(r.aborted.is_none(), "aborted: {:?}\n{}", r.aborted, r.render());
    assert!(r.first_violation.violation.is_none(), "{}", r.failure_text().unwrap_or_default());
    assert!(r.invariants.iter().all(|i| i.violations == 0), "{}", r.render());
    assert!(r.passed, "{}", r.render());
    assert_eq!(r.world, "real");
    assert_eq!(r.hypervisor, "test");
}

#[test]
fn boot_storm_goes_all_active() {
    let r = run_with(&options("boot", 12, 1), &RealConfig::default()).unwrap();
    assert_clean(&r);
    assert_eq!(r.iterations.total, 12, "{}", r.render());
    assert_eq!(r.iterations.ok, 12, "{}", r.render());
    assert_eq!(r.final_states.get("ACTIVE"), Some(&12), "{}", r.render());
    assert_eq!(r.final_states.len(), 1, "{}", r.render());
    let hosts: std::collections::BTreeSet<_> = r.instances.iter().filter_map(|i| i.host.clone()).collect();
    assert!(hosts.iter().all(|h| ["compute-1", "compute-2", "big-1"].contains(&h.as_str())), "{hosts:?}");
    // The libvirt phases were timed for every spawn.
    for phase in ["compute.spawn.define", "compute.spawn.start", "compute.spawn", "boot_server"] {
        let a = r.actions.iter().find(|a| a.action == phase).unwrap_or_else(|| panic!("no {phase}\n{}", r.render()));
        assert_eq!(a.count, 12, "{phase}");
    }
    assert!(r.events > 0 && r.wall_s > 0.0);
    eprintln!("{}", r.render());
}

#[test]
fn boot_and_delete_destroys_every_guest() {
    let cfg = RealConfig { db_path: Some(":memory:".into()), ..RealConfig::default() };
    let r = run_with(&options("boot_and_delete", 8, 2), &cfg).unwrap();
    assert_clean(&r);
    assert_eq!(r.iterations.ok, 8, "{}", r.render());
    assert_eq!(r.final_states.get("DELETED"), Some(&8), "{}", r.render());
    let terminate = r.actions.iter().find(|a| a.action == "compute.terminate").expect("terminate timed");
    assert_eq!((terminate.count, terminate.success_pct), (8, 100.0));
}

/// The repository's quickstart scenario (120 boots on 16 hosts, concurrency 10): about
/// 12 s of wall time, bounded by the runner's 1 s polling.
#[test]
fn quickstart_scenario_goes_all_active() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/quickstart.toml");
    let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let times = scenario.workload.runner.times(&scenario.trace) as usize;
    let opts = RunOptions {
        scenario: Arc::new(scenario),
        scenario_file: "scenarios/quickstart.toml".into(),
        seed: 1,
        revision: "test".into(),
        replay: "cargo real run scenarios/quickstart.toml --seed 1".into(),
    };
    let r = run_with(&opts, &RealConfig::default()).unwrap();
    assert_clean(&r);
    assert_eq!((r.iterations.total, r.iterations.ok), (times, times), "{}", r.render());
    assert_eq!(r.final_states.get("ACTIVE"), Some(&times), "{}", r.render());
    assert_eq!(r.final_states.len(), 1, "{}", r.render());
}
