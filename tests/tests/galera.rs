//! A Galera cluster behind HAProxy in the simulator (`[topology.db] nodes = 3`): the same
//! boots pass on it; a writer that dies fails over; a backup that comes back catches up by
//! IST; crashes in quick succession lose acknowledged commits only in faithful mode with a
//! lazy log. `cargo sim-test -p stackbed-tests --test galera`.
#![cfg(madsim)]

use stackbed_tests::runs::{run, with_overrides};

const CLUSTER: &str = "topology.db.nodes=3";

fn kills(plan: &[(&str, &str, &str)]) -> String {
    let entries: Vec<String> = plan
        .iter()
        .map(|(target, at, duration)| {
            format!("{{kind = \"kill\", target = \"{target}\", at = \"{at}\", duration = \"{duration}\"}}")
        })
        .collect();
    format!("faults=[{}]", entries.join(", "))
}

#[test]
fn quickstart_passes_on_three_nodes_and_replays() {
    let s = with_overrides("quickstart.toml", &[CLUSTER]);
    let a = run(&s, 1);
    assert!(a.passed, "{}", a.failure_text().unwrap_or_default());
    assert_eq!(a.final_states.get("ACTIVE").copied(), Some(a.iterations.total));
    assert_eq!(a.anomalies.lost_commits, 0);
    assert_eq!(run(&s, 1).digest, a.digest, "same seed, same digest, on a cluster");
}

#[test]
fn a_backup_that_dies_changes_nothing_and_catches_up_by_ist() {
    let s = with_overrides("quickstart.toml", &[CLUSTER.to_string(), kills(&[("db-2", "20s", "60s")])]);
    let r = run(&s, 1);
    assert!(r.passed, "{}", r.failure_text().unwrap_or_default());
    assert_eq!(r.counters.get("db.ist").copied(), Some(1), "{:?}", r.counters);
    assert_eq!(r.anomalies.failovers, 0, "the writer stayed up: {:?}", r.counters);
}

#[test]
fn the_writer_dying_fails_over_to_the_first_backup() {
    let s = with_overrides("quickstart.toml", &[CLUSTER.to_string(), kills(&[("db-1", "20s", "60s")])]);
    let r = run(&s, 1);
    assert_eq!(r.anomalies.failovers, 1, "{:?}", r.counters);
    assert!(r.counters.get("db.proxy_marked_down").copied().unwrap_or(0) >= 1, "{:?}", r.counters);
    // Boots started after the failover (HA guide: 5 checks of 2 s) succeed on db-2.
    let after: Vec<_> = r.timeline.bins.iter().filter(|b| b.t_s >= 40.0).collect();
    assert!(after.iter().map(|b| b.ok).sum::<usize>() > 0, "no boot after the failover");
    assert_eq!(r.anomalies.lost_commits, 0);
}

#[test]
fn crashes_in_quick_succession_lose_commits_only_in_faithful_mode_with_a_lazy_log() {
    // Both backups, then the writer, within a second: the writer's last commits were in no
    // synced log. Table: mode, innodb_flush_log_at_trx_commit, whether commits are lost.
    let plan = kills(&[("db-2", "30s", "20s"), ("db-3", "30.5s", "20s"), ("db-1", "30.7s", "20s")]);
    for (mode, flush, lost) in [("strict", 2, false), ("faithful", 1, false), ("faithful", 2, true)] {
        let s = with_overrides(
            "quickstart.toml",
            &[
                CLUSTER.to_string(),
                plan.clone(),
                format!("topology.db.mode={mode}"),
                format!("topology.db.flush_log_at_trx_commit={flush}"),
            ],
        );
        let r = run(&s, 1);
        assert_eq!(r.anomalies.lost_commits > 0, lost, "{mode} flush {flush}: {:?}", r.anomalies);
    }
}

/// `scenarios/ha/galera-crash.toml` and `galera-writers.toml` (F10, F7), as shipped and with
/// their `# mitigation:` lines, on seeds 1 and 2: the effect is there, then it is gone, and
/// every run passes its checks either way.
#[test]
fn shipped_galera_scenarios_show_their_effect_and_their_mitigation_removes_it() {
    type Count = fn(&stackbed_services::report::Report) -> u64;
    let cases: [(&str, Count); 2] =
        [("ha/galera-crash.toml", |r| r.anomalies.lost_commits), ("ha/galera-writers.toml", |r| r.anomalies.deadlocks)];
    for (file, count) in cases {
        let flags = stackbed_tests::mitigation(&stackbed_tests::root().join("scenarios").join(file));
        assert!(!flags.is_empty(), "{file} has no mitigation line");
        let (shipped, mitigated) = (with_overrides::<&str>(file, &[]), with_overrides(file, &flags));
        for seed in 1..=2 {
            let r = run(&shipped, seed);
            assert!(r.passed, "{file} seed {seed}: {}", r.failure_text().unwrap_or_default());
            assert!(count(&r) > 0, "{file} seed {seed}: the effect is gone: {:?}", r.anomalies);
            let m = run(&mitigated, seed);
            assert!(m.passed, "{file} seed {seed} mitigated: {}", m.failure_text().unwrap_or_default());
            assert_eq!(count(&m), 0, "{file} seed {seed} mitigated: {:?}", m.anomalies);
        }
    }
}
