//! Whole runs in the simulator: determinism, the shipped failure scenarios, and evidence
//! that the invariant checker catches planted bugs. `cargo sim-test -p stackbed-tests`.
#![cfg(madsim)]

use std::sync::Arc;

use stackbed_core::scenario::Scenario;
use stackbed_services::report::Report;
use stackbed_tests::root;
use stackbed_tests::runs::{run, with_overrides};

fn scenario(name: &str) -> Arc<Scenario> {
    Arc::new(Scenario::load(&root().join("scenarios").join(name)).unwrap())
}

/// `name` with its `# mitigation:` line's overrides applied, exactly as users run it.
fn mitigated(name: &str) -> Arc<Scenario> {
    let flags = stackbed_tests::mitigation(&root().join("scenarios").join(name));
    assert!(!flags.is_empty(), "{name} has no `# mitigation: --set ...` line");
    with_overrides(name, &flags)
}

#[test]
fn quickstart_passes_and_is_deterministic() {
    let s = scenario("quickstart.toml");
    let a = run(&s, 1);
    assert!(a.passed, "{}", a.failure_text().unwrap_or_default());
    assert!(a.iterations.total >= 100 && a.iterations.failed == 0, "{:?}", a.iterations);
    assert_eq!(a.final_states.get("ACTIVE").copied(), Some(a.iterations.total));
    assert!(s.host_count() >= 16);
    let b = run(&s, 1);
    assert_eq!(a.digest, b.digest, "same seed, same digest");
    assert_eq!(a.events, b.events);
    let c = run(&s, 2);
    assert_ne!(a.digest, c.digest, "another seed, another digest");
}

#[test]
fn failures_scenario_reschedules_and_exceeds_retries() {
    let s = scenario("failures.toml");
    let r = run(&s, 1);
    assert!(r.passed, "{}", r.failure_text().unwrap_or_default());
    assert!(r.counters.get("reschedules").copied().unwrap_or(0) > 0, "{:?}", r.counters);
    assert!(r.counters.get("max_retries_exceeded").copied().unwrap_or(0) > 0, "{:?}", r.counters);
    let errored: Vec<_> = r.instances.iter().filter(|i| i.status == "ERROR").collect();
    assert!(!errored.is_empty());
    for i in errored {
        assert!(i.fault.as_deref().unwrap_or("").contains("MaxRetriesExceeded"), "{:?}", i);
        assert_eq!(i.attempts, 3, "{:?}", i);
    }
    assert!(r.actions.iter().any(|a| a.action == "conductor.reschedule"));
}

#[test]
fn capacity_scenario_ends_in_no_valid_host_without_overcommit() {
    let s = scenario("capacity.toml");
    let r = run(&s, 1);
    assert!(r.passed, "{}", r.failure_text().unwrap_or_default());
    let novh = r.counters.get("no_valid_host").copied().unwrap_or(0);
    assert!(novh > 0);
    assert_eq!(r.final_states.get("ERROR").copied().unwrap_or(0) as u64, novh);
    // 8 hosts x 16 vCPU x 4.0 = 512 vCPU and 8 x 128 GiB: 128 m1.large fit by RAM.
    assert_eq!(r.final_states.get("ACTIVE").copied(), Some(128));
    // The report explains the first decision and the first NoValidHosts.
    let first = r.explained.iter().find(|e| e.why == "first decision").expect("first decision explained");
    assert!(first.explanation.pick.is_some() && first.explanation.no_valid_host.is_none());
    assert_eq!(first.explanation.hosts_in, 8);
    let nvh: Vec<_> = r.explained.iter().filter(|e| e.why == "no valid host").collect();
    assert_eq!(nvh.len(), 3, "{:?}", r.explained.iter().map(|e| e.why).collect::<Vec<_>>());
    for e in nvh {
        assert!(e.explanation.pick.is_none() && e.explanation.no_valid_host.is_some(), "{:?}", e.explanation);
        assert!(r.instances.iter().any(|i| i.id == e.request && i.status == "ERROR"), "{}", e.request);
    }
    assert!(r.render().contains("explained (no valid host, spread)"), "{}", r.render());
    assert_eq!(first.strategy, "spread");
    assert_eq!(first.explanation.pick.as_ref(), first.decided.first(), "spread decides as nova explains");
}

fn with_bug(name: &str, edit: impl Fn(&mut Scenario)) -> Arc<Scenario> {
    let mut s = (*scenario(name)).clone();
    edit(&mut s);
    Arc::new(s)
}

/// The CI seed budget for planted bugs: the checker must bite on every one of these seeds.
const BUG_SEEDS: std::ops::RangeInclusive<u64> = 1..=3;

#[test]
fn a_scheduler_that_skips_the_claim_is_caught() {
    let s = with_bug("capacity.toml", |s| {
        s.debug.plant_bug = Some(stackbed_core::scenario::PlantedBug::SchedulerSkipsClaim)
    });
    for seed in BUG_SEEDS {
        let r = run(&s, seed);
        assert!(!r.passed, "seed {seed}: the planted bug went unnoticed");
        let v = r.first_violation.violation.as_ref().expect("a violation");
        assert!(
            ["no_overcommit", "allocations_match_instances"].contains(&v.invariant),
            "seed {seed}: caught as {}: {}",
            v.invariant,
            v.detail
        );
        assert!(v.commit_seq > 0, "caught at a commit, not only at the end");
        assert!(r.failure_text().unwrap().contains("replay: cargo sim run"));
    }
}

/// `replies_complete_their_call_once` and its planted bug: the conductor dies with
/// select_destinations calls in flight (each takes 3 s in the scheduler) and is back half a
/// second later. Its new incarnation's calls get new reply queue and msg ids, as oslo's
/// reply_<uuid4> per process, so the old calls' late replies are dropped. With the bug the
/// new incarnation reuses the old reply queue and ids: a late reply completes a new call
/// that has the same id, with another request's hosts. (The requests the dead conductor had
/// taken are lost either way: it acked them before dispatch, nova's at-most-once.)
#[test]
fn a_reply_queue_reused_after_a_restart_is_caught() {
    let overrides = [
        "faults.0.target=nova-conductor-1",
        "faults.0.at=2s",
        "faults.0.duration=500ms",
        "topology.workers.scheduler=8",
        "workload.runner.rate=2.0",
        "workload.runner.times=60",
        "model.service_time.scheduler_per_request=3s",
    ];
    let s = with_overrides("faults/scheduler-kill.toml", &overrides);
    let bugged = with_overrides(
        "faults/scheduler-kill.toml",
        &[&overrides[..], &["debug.plant_bug=reply_queue_reused_after_restart"]].concat(),
    );
    let replies = |r: &Report| {
        r.invariants.iter().find(|i| i.name == "replies_complete_their_call_once").cloned().expect("checked")
    };
    for seed in BUG_SEEDS {
        let clean = replies(&run(&s, seed));
        assert!(clean.checked_events > 0 && clean.violations == 0, "seed {seed}: {clean:?}");
        let caught = replies(&run(&bugged, seed));
        assert!(caught.violations > 0, "seed {seed}: the reused reply queue went unnoticed");
        let v = caught.first.expect("the first violation");
        assert!(v.detail.contains("completed call #"), "seed {seed}: {}", v.detail);
    }
}

#[test]
fn skipped_quota_checks_are_caught() {
    let s = with_bug("quickstart.toml", |s| {
        s.debug.plant_bug = Some(stackbed_core::scenario::PlantedBug::QuotaNotChecked);
        for t in &mut s.tenants {
            t.quota.instances = 5;
        }
    });
    for seed in BUG_SEEDS {
        let r = run(&s, seed);
        let v = r.first_violation.violation.as_ref().expect("a violation");
        assert_eq!(v.invariant, "quota_respected", "seed {seed}: {}", v.detail);
    }
}

#[test]
fn quota_is_enforced_when_checks_are_on() {
    let s = with_bug("quickstart.toml", |s| {
        for t in &mut s.tenants {
            t.quota.instances = 5;
        }
    });
    let r = run(&s, 1);
    assert!(r.passed, "{}", r.failure_text().unwrap_or_default());
    assert!(r.final_states.get("ACTIVE").copied().unwrap_or(0) <= 4 * 5);
    assert!(r.counters.get("api.create.403").copied().unwrap_or(0) > 0, "{:?}", r.counters);
}

#[test]
fn boot_and_delete_leaves_nothing_allocated() {
    let s = with_bug("quickstart.toml", |s| s.workload.action = stackbed_core::scenario::Action::BootAndDelete);
    let r = run(&s, 3);
    assert!(r.passed, "{}", r.failure_text().unwrap_or_default());
    assert_eq!(r.final_states.get("DELETED").copied(), Some(r.iterations.total));
    assert!(r.actions.iter().any(|a| a.action == "delete_server" && a.success_pct == 100.0));
}

#[test]
fn anti_affinity_spreads_a_group() {
    let s = with_bug("quickstart.toml", |s| {
        s.workload.server_group = Some(stackbed_core::model::GroupPolicy::AntiAffinity);
        s.workload.runner = stackbed_core::scenario::Runner::Constant { concurrency: 1, times: 32 };
    });
    let r = run(&s, 1);
    assert!(r.passed, "{}", r.failure_text().unwrap_or_default());
    // 4 tenants, one group each, 16 hosts: 8 members per group, each on its own host.
    let mut per_group_host = std::collections::BTreeSet::new();
    for i in r.instances.iter().filter(|i| i.status == "ACTIVE") {
        let project = i.id.rsplit_once('-').unwrap().0.to_string();
        assert!(per_group_host.insert((project, i.host.clone())), "two members of a group on {:?}", i.host);
    }
    assert_eq!(per_group_host.len(), 32);
}

#[test]
fn icehouse_reschedules_through_the_scheduler_and_gives_up_after_max_attempts() {
    // Half the spawns fail: an eighth of the boots fail on all three hosts.
    let s = with_bug("icehouse.toml", |s| s.model.spawn_failure_probability = 0.5);
    let r = run(&s, 1);
    assert!(r.passed, "{}", r.failure_text().unwrap_or_default());
    assert!(r.counters.get("reschedules").copied().unwrap_or(0) > 0, "{:?}", r.counters);
    // No scheduler-side claims in Icehouse: placement's conductor path never runs.
    assert!(
        !r.actions.iter().any(|a| a.action == "scheduler.select_destinations"),
        "Icehouse has no select_destinations call"
    );
    let errored: Vec<_> = r.instances.iter().filter(|i| i.status == "ERROR").collect();
    assert!(!errored.is_empty(), "with 50% failures some request fails 3 times");
    for i in errored {
        assert!(i.fault.as_deref().unwrap_or("").contains("Exceeded max scheduling attempts"), "{i:?}");
        assert_eq!(i.attempts, 3, "{i:?}");
    }
    assert!(r.instances.iter().any(|i| i.status == "ACTIVE" && i.attempts > 1), "a rescheduled boot that succeeded");
    let ratios = s.control.ratios();
    assert_eq!((ratios.cpu, ratios.ram, ratios.disk), (16.0, 1.5, 1.0));
}

/// A full cloud with churn: deletes free capacity while new boots claim it. The compute
/// must leave the host (delete the row, or nil its host) before it gives the allocation back,
/// or for a moment more is placed on a host than it holds. With the order reversed, this
/// seed of the compare scenario caught it (no_overcommit at commit #218941).
#[test]
fn churn_on_a_full_cloud_never_overcommits() {
    let s = with_bug("compare.toml", |s| s.control.scheduler.strategy = "random".into());
    let r = run(&s, 5);
    assert!(r.passed, "{}", r.failure_text().unwrap_or_default());
    assert!(r.counters.get("no_valid_host").copied().unwrap_or(0) > 0, "the cloud must be full: {:?}", r.counters);
}

/// `scenarios/faults/compute-crash.toml`: computes killed while spawning and restarted 30 s
/// later; nova's init_host puts the builds they left in ERROR and frees their allocations,
/// every invariant holds, and the run with its kills and restarts replays byte for byte.
#[test]
fn compute_crash_recovers_through_init_host_and_replays() {
    let s = scenario("faults/compute-crash.toml");
    let r = run(&s, 1);
    assert!(r.passed, "{}", r.failure_text().unwrap_or_default());
    let errored = r.counters.get("compute.init_host.builds_errored").copied().unwrap_or(0)
        + r.counters.get("compute.init_host.interrupted_builds_errored").copied().unwrap_or(0);
    assert!(errored > 0, "init_host recovered nothing: {:?}", r.counters);
    assert_eq!(r.counters.get("faults.kill.start").copied(), Some(2), "{:?}", r.counters);
    assert_eq!(r.faults.applied.len(), 4, "two kills and two restarts");
    assert_eq!(run(&s, 1).digest, r.digest, "same seed, same digest, with kills and restarts");
}

/// `scenarios/faults/broker-restart.toml` (F1): with oslo's transient queues a broker restart
/// loses the casts waiting in them, their servers never leave BUILD and the run fails on the
/// liveness check with a replay; with the file's mitigation (durable queues, persistent
/// messages) the same seeds pass. Both replay byte for byte.
#[test]
fn broker_restart_loses_casts_on_transient_queues_and_durable_queues_keep_them() {
    let s = scenario("faults/broker-restart.toml");
    let r = run(&s, 1);
    assert!(!r.passed, "the restart lost nothing: {:?}", r.counters);
    let v = r.first_violation.violation.as_ref().expect("a violation");
    assert!(["requests_terminal", "no_instance_lost"].contains(&v.invariant), "{v:?}");
    assert!(r.counters.get("broker.restart_lost_messages").copied().unwrap_or(0) > 0, "{:?}", r.counters);
    // report.json's anomalies: the lost casts had been confirmed to nova; the restart's
    // downtime runs to the lost boots' end at the liveness bound.
    let a = &r.anomalies;
    assert!(a.lost_acked_messages > 0, "{a:?}");
    assert_eq!(a.faults.len(), 1, "{a:?}");
    assert!(a.faults[0].failed > 0 && a.faults[0].downtime_s > 60.0, "{a:?}");
    assert!(r.failure_text().unwrap_or_default().contains("replay: cargo sim run"), "a failure prints its replay");
    assert_eq!(run(&s, 1).digest, r.digest, "same seed, same digest, with a broker restart");

    let m = mitigated("faults/broker-restart.toml");
    for seed in 1..=2 {
        let r = run(&m, seed);
        assert!(r.passed, "seed {seed} with the mitigation: {}", r.failure_text().unwrap_or_default());
        assert_eq!(r.counters.get("broker.restart_lost_messages").copied().unwrap_or(0), 0, "{:?}", r.counters);
        let a = &r.anomalies;
        assert_eq!((a.lost_acked_messages, a.faults[0].failed, a.faults[0].downtime_s), (0, 0, 0.0), "{a:?}");
        // The unacknowledged casts came again: delivered twice, counted from outside.
        assert!(a.duplicate_deliveries > 0, "{a:?}");
        assert!(
            r.counters.get("rpc.redelivered").copied().unwrap_or(0) > 0,
            "nothing was redelivered: {:?}",
            r.counters
        );
    }
}

/// Rally's duration SLAs over a real run: each criterion set just above what the run measured
/// passes, set just below fails the run and names the criterion; the seed's run is the same
/// either way.
#[test]
fn duration_slas_pass_above_the_measured_values_and_fail_below() {
    let base = run(&scenario("quickstart.toml"), 1);
    let boot = base.actions.iter().find(|a| a.action == "boot_server").expect("boot_server");
    let criteria = [
        ("max_avg_duration_per_atomic.boot_server", "sla.max_avg_duration_per_atomic.boot_server", boot.mean_s),
        // Every quickstart iteration is one boot: the iteration lasts at least as long as its boot.
        ("max_seconds_per_iteration", "sla.max_seconds_per_iteration", boot.max_s),
    ];
    for (criterion, key, measured) in criteria {
        let verdict = |limit: f64| {
            let r = run(&with_overrides("quickstart.toml", &[format!("{key}={limit}")]), 1);
            assert_eq!(r.digest, base.digest, "an SLA does not change the run");
            let c = r.sla.iter().find(|c| c.criterion == criterion).expect("the criterion is checked");
            assert_eq!(c.success, r.passed, "{criterion}: {}", c.detail);
            c.success
        };
        assert!(verdict(measured * 1.5 + 1.0), "{criterion} above {measured}");
        assert!(!verdict(measured * 0.5), "{criterion} below {measured}");
    }
}

/// A run in which state reports failed and the fleet was marked down (F6's shape): it fails,
/// on its SLA only (no invariant broken, nothing lost), every failed boot is a NoValidHost,
/// and nova-api answered all `creates` creates.
fn assert_fleet_marked_down(r: &Report, creates: u64) {
    assert!(!r.passed, "nothing broke: {:?}", r.counters);
    assert!(r.first_violation.violation.is_none(), "nothing may be lost: {:?}", r.first_violation);
    let nvh = r.counters.get("no_valid_host").copied().unwrap_or(0);
    assert!(nvh > 0, "no NoValidHost: {:?}", r.counters);
    assert_eq!(nvh as usize, r.iterations.failed, "every failure is a NoValidHost: {:?}", r.iterations.errors);
    assert!(r.counters.get("compute.report_state_failed").copied().unwrap_or(0) > 0, "{:?}", r.counters);
    assert!(r.sla.iter().any(|c| c.criterion == "failure_rate" && !c.success), "{:?}", r.sla);
    let create = r.actions.iter().find(|a| a.action == "api.create").expect("api.create");
    assert_eq!((create.count, create.success_pct), (creates, 100.0), "the API answered every create");
}

/// `scenarios/faults/broker-outage.toml` (F6): the computes cannot reach the broker for 90 s,
/// so their state reports (RPC calls to the conductor) fail; once the last one is older than
/// `service_down_time` every host is down and the boots scheduled then get NoValidHost,
/// while the API (and keystone behind it) answers every create. Nothing else breaks: every
/// invariant holds, and the run fails on the file's SLA only. With the mitigation
/// (`service_down_time=180s`) no host is ever down and every boot succeeds.
#[test]
fn broker_outage_marks_every_host_down_and_a_longer_service_down_time_does_not() {
    let s = scenario("faults/broker-outage.toml");
    let r = run(&s, 1);
    assert_fleet_marked_down(&r, 240);
    // The NoValidHosts fall in the window: hosts last reported before the cut at 60 s,
    // count as down 60 s later, and report again once the link is back at 150 s.
    for i in r.instances.iter().filter(|i| i.status == "ERROR") {
        assert!((100_000..=170_000).contains(&i.created_at_ms), "{} failed at {} ms", i.id, i.created_at_ms);
    }

    let m = mitigated("faults/broker-outage.toml");
    for seed in 1..=2 {
        let r = run(&m, seed);
        assert!(r.passed, "seed {seed} with the mitigation: {}", r.failure_text().unwrap_or_default());
        assert_eq!(r.counters.get("no_valid_host").copied().unwrap_or(0), 0, "{:?}", r.counters);
        assert!(r.counters.get("compute.report_state_failed").copied().unwrap_or(0) > 0, "{:?}", r.counters);
    }
}

/// `scenarios/faults/conductor-overload.toml`: issue 9's overload question, nova's part.
/// Boots arrive faster than the one scheduler decides; every conductor executor thread
/// waits in select_destinations, the state reports queue behind them and time out, the
/// fleet is marked down and boots get NoValidHost on idle hosts. What the model used to add
/// is gone: nova-api answers every create (no 500 "database unavailable": the database
/// client has no timeout nova's lacks, and no commit that happened is reported failed),
/// nothing is lost (every invariant holds) and the run fails on its SLA only. With enough
/// scheduler workers nothing waits and every boot succeeds.
#[test]
fn an_overloaded_conductor_marks_the_fleet_down_and_enough_schedulers_do_not() {
    let s = scenario("faults/conductor-overload.toml");
    let r = run(&s, 1);
    assert_fleet_marked_down(&r, 2400);

    let m = mitigated("faults/conductor-overload.toml");
    let r = run(&m, 1);
    assert!(r.passed, "with the mitigation: {}", r.failure_text().unwrap_or_default());
    assert_eq!(r.counters.get("compute.report_state_failed").copied().unwrap_or(0), 0, "{:?}", r.counters);
}

/// `scenarios/faults/scheduler-kill.toml` (F4's dead worker): one of two schedulers dies with
/// calls in flight; with call monitoring each lost call fails a minute later (no heartbeat)
/// instead of after long_rpc_timeout, nova's retry_select_destinations sends it again, and
/// it lands on the live worker: every request ends, every invariant holds. The control: the
/// same seed with the call unmonitored and a timeout as long as long_rpc_timeout leaves the
/// lost call's request stuck past the liveness bound.
#[test]
fn a_killed_scheduler_s_calls_fail_by_call_monitoring_and_the_retry_lands_on_the_live_worker() {
    let s = scenario("faults/scheduler-kill.toml");
    for seed in 1..=2 {
        let r = run(&s, seed);
        assert!(r.passed, "seed {seed}: {}", r.failure_text().unwrap_or_default());
        assert!(r.counters.get("conductor.select_destinations_retries").copied().unwrap_or(0) > 0, "{:?}", r.counters);
        let select = r.actions.iter().find(|a| a.action == "scheduler.select_destinations").expect("select");
        // A lost call fails by the 60 s monitor, not after long_rpc_timeout: the retries
        // above happened in a run shorter than that timeout.
        assert!(select.max_s < 120.0, "slowest select_destinations {} s", select.max_s);
        assert!(r.simulated_s < s.control.long_rpc_timeout.0.as_secs_f64(), "{} s simulated", r.simulated_s);
        // A retry fails only when the dead worker had claimed already (AllocationUpdateFailed).
        for err in r.iterations.errors.keys() {
            assert!(err.starts_with("AllocationUpdateFailed"), "seed {seed}: {:?}", r.iterations.errors);
        }
    }
    let unmonitored = with_overrides(
        "faults/scheduler-kill.toml",
        &["control.rpc_call_monitoring=false", "control.rpc_response_timeout=1800s"],
    );
    let r = run(&unmonitored, 1);
    let v = r.first_violation.violation.as_ref().expect("a request stuck on the dead worker");
    assert_eq!(v.invariant, "requests_terminal", "{v:?}");
}

/// `scenarios/faults/scheduler-overload.toml` (F4): one multi-create of 400 servers takes
/// the scheduler longer than the pre-Stein 60 s timeout; the conductor's retry finds the
/// first call's claims (AllocationUpdateFailed), every server goes to ERROR and the claims
/// leak. With call monitoring (the file's mitigation) the heartbeats keep the call alive
/// past 60 s and all 400 boot.
#[test]
fn a_multi_create_outlasting_the_pre_stein_timeout_fails_and_call_monitoring_saves_it() {
    let s = scenario("faults/scheduler-overload.toml");
    let r = run(&s, 1);
    assert!(!r.passed, "the overload broke nothing: {:?}", r.counters);
    assert_eq!(r.counters.get("conductor.select_destinations_retries").copied(), Some(1), "{:?}", r.counters);
    assert_eq!(r.final_states.get("ERROR").copied(), Some(400), "{:?}", r.final_states);
    assert!(r.instances.iter().all(|i| i.fault.as_deref().unwrap_or("").starts_with("AllocationUpdateFailed")));
    let v = r.first_violation.violation.as_ref().expect("the abandoned call's claims leak");
    assert_eq!(v.invariant, "allocations_match_instances", "{v:?}");

    let m = mitigated("faults/scheduler-overload.toml");
    let r = run(&m, 1);
    assert!(r.passed, "with call monitoring: {}", r.failure_text().unwrap_or_default());
    assert_eq!(r.final_states.get("ACTIVE").copied(), Some(400), "{:?}", r.final_states);
    let select = r.actions.iter().find(|a| a.action == "scheduler.select_destinations").expect("select");
    assert_eq!(select.count, 1, "one call for the whole multi-create");
    assert!(select.max_s > 60.0, "the call outlasted rpc_response_timeout: {} s", select.max_s);
}

/// `scenarios/faults/chaos.toml`: random kills, power-offs, partitions, skew and slow nodes
/// with the mitigations on; the first seeds pass with faults applied, including a delete
/// whose allocation removal failed and was healed by the compute's periodic task (seed 7).
#[test]
fn chaos_with_the_mitigations_on_passes() {
    let s = scenario("faults/chaos.toml");
    for seed in [1, 7] {
        let r = run(&s, seed);
        assert!(r.passed, "seed {seed}: {}", r.failure_text().unwrap_or_default());
        assert!(r.faults.applied.len() >= 4, "seed {seed}: {:?}", r.faults.applied);
        if seed == 7 {
            let healed = r.counters.get("compute.deleted_instance_allocations_removed").copied();
            assert!(healed.unwrap_or(0) > 0, "{:?}", r.counters);
        }
    }
}

/// Acks after dispatch through a broker restart: copies of a create arrive again (redelivered,
/// or republished after a lost confirm). A copy that finds the BuildRequest gone because an
/// earlier copy already created the instance must leave the instance's claim alone (it once
/// took it for a server deleted while scheduling and released it: a seed caught that).
#[test]
fn a_second_copy_of_a_create_leaves_the_first_copy_s_claim_alone() {
    let s = with_overrides(
        "faults/broker-restart.toml",
        &["control.amqp_durable_queues=true", "control.rpc_ack=after_dispatch"],
    );
    // Seeds on which a copy meets the gone BuildRequest (as of this tree: every seed of 1..=8),
    // and a redelivered copy's claim meets the first copy's: it builds on that claim (before,
    // its AllocationUpdateFailed buried the instance while the first copy's claim stayed).
    for seed in [4, 5] {
        let r = run(&s, seed);
        assert!(r.passed, "seed {seed}: {}", r.failure_text().unwrap_or_default());
        for counter in ["conductor.duplicate_request_skipped", "conductor.redelivered_claim_resumed"] {
            assert!(r.counters.get(counter).copied().unwrap_or(0) > 0, "seed {seed}: no {counter}: {:?}", r.counters);
        }
    }
}

/// `scenarios/faults/duplicate-casts.toml`: nova-api's casts duplicated with the same message
/// id, acks after dispatch; the duplicate filter drops every copy and every boot finishes.
/// The planted bug: a conductor that acks after dispatch without the filter handles both
/// copies, fails boots that had a host and leaks their claims; the checker catches it.
#[test]
fn a_conductor_that_acks_after_dispatch_without_the_duplicate_filter_is_caught() {
    let s = scenario("faults/duplicate-casts.toml");
    let r = run(&s, 1);
    assert!(r.passed, "{}", r.failure_text().unwrap_or_default());
    let dropped = r.counters.get("rpc.duplicates_dropped").copied().unwrap_or(0);
    assert!(dropped > 0 && Some(dropped) == r.counters.get("bus.faults.duplicated").copied(), "{:?}", r.counters);

    let bug = with_bug("faults/duplicate-casts.toml", |s| {
        s.debug.plant_bug = Some(stackbed_core::scenario::PlantedBug::AckAfterDispatchWithoutDupFilter)
    });
    let r = run(&bug, 1);
    assert!(!r.passed, "the planted bug went unnoticed: {:?}", r.counters);
    let v = r.first_violation.violation.as_ref().expect("a violation");
    assert!(["allocations_match_instances", "no_valid_host_is_true"].contains(&v.invariant), "{v:?}");
}

/// The planted bug: a restarted compute that skips init_host leaves its interrupted builds
/// in BUILD, and the liveness check catches it.
#[test]
fn a_compute_that_skips_init_host_is_caught() {
    let s = with_bug("faults/compute-crash.toml", |s| {
        s.debug.plant_bug = Some(stackbed_core::scenario::PlantedBug::ComputeSkipsInitHost)
    });
    let r = run(&s, 1);
    assert!(!r.passed, "the planted bug went unnoticed");
    let v = r.first_violation.violation.as_ref().expect("a violation");
    assert!(
        ["requests_terminal", "guests_match_instances", "allocations_match_instances"].contains(&v.invariant),
        "{v:?}"
    );
}

/// Each control service's CPU time reaches the action that pays it: a cost of 2 s raises
/// that action's minimum latency on quickstart by at least 1.5 s.
#[test]
fn each_service_s_cpu_time_is_charged_where_it_does_the_work() {
    let base = run(&with_overrides("quickstart.toml", &["workload.runner.times=8"]), 1);
    for (set, action, at_least_s) in [
        // nova-api's own timing starts after the request's share: the client sees it.
        ("model.service_time.api_per_request=2s", "boot_server", 1.5),
        ("model.service_time.api_per_instance=2s", "api.create", 1.5),
        ("model.service_time.keystone_per_request=2s", "keystone.authenticate", 1.5),
        ("model.service_time.conductor_per_instance=2s", "conductor.schedule_and_build", 1.5),
        ("model.service_time.conductor_per_call=2s", "boot_server", 1.5),
        // 16 providers at 125 ms each, per allocation candidates request.
        ("model.service_time.placement_per_provider=125ms", "scheduler.select_destinations", 1.5),
        ("model.service_time.placement_per_request=1s", "scheduler.select_destinations", 1.5),
        ("model.service_time.scheduler_per_request=2s", "scheduler.select_destinations", 1.5),
    ] {
        let s = with_overrides("quickstart.toml", &[set, "workload.runner.times=8"]);
        let r = run(&s, 1);
        let a = r.actions.iter().find(|a| a.action == action).unwrap_or_else(|| panic!("{set}: no {action}"));
        let b = base.actions.iter().find(|a| a.action == action).expect("the action without the override");
        assert!(a.min_s - b.min_s >= at_least_s, "{set}: {action} min {} s, {} s without", a.min_s, b.min_s);
    }
}

/// `[topology.controller]`: the processes on a controller share its cores. Four schedulers
/// that each own a core decide four requests at once; on a one-core controller they take
/// turns (with every other control process), so the same decisions take more than twice
/// as long.
#[test]
fn workers_on_one_controller_share_its_cores() {
    let base = ["topology.workers.scheduler=4", "model.service_time.scheduler_per_request=1s"];
    let mean = |extra: &[&str]| {
        let s = with_overrides("quickstart.toml", &[&base[..], extra].concat());
        let r = run(&s, 1);
        assert!(r.passed, "{extra:?}: {}", r.failure_text().unwrap_or_default());
        r.actions.iter().find(|a| a.action == "scheduler.select_destinations").expect("select").mean_s
    };
    let own = mean(&[]);
    let shared = mean(&["topology.controller={ count = 1, cores = 1 }"]);
    let four = mean(&["topology.controller={ count = 1, cores = 4 }"]);
    assert!(shared > 2.0 * own, "one core for four schedulers: {shared} s against {own} s with a core each");
    assert!(four < 1.5 * own, "four cores for four schedulers: {four} s against {own} s");
}
