//! The cold-versus-warm image cache scenario: one run, the same boot storm twice (empty
//! `_base` caches, then warm ones), each pass and the difference in the report.
//! `cargo sim-test -p stackbed-tests --test images_cache`.
#![cfg(madsim)]

use std::sync::Arc;

use stackbed_core::scenario::Scenario;
use stackbed_services::report::{Report, RunOptions};
use stackbed_tests::root;

fn run(s: &Arc<Scenario>, seed: u64) -> Report {
    let opts = RunOptions {
        scenario: s.clone(),
        scenario_file: "scenarios/images-cache.toml".into(),
        seed,
        revision: "test".into(),
        replay: format!("cargo sim run scenarios/images-cache.toml --seed {seed}"),
    };
    stackbed_sim::run(&opts).unwrap()
}

fn summary<'a>(r: &'a Report, pass: usize, action: &str) -> &'a stackbed_core::stats::ActionSummary {
    let p = &r.passes[pass];
    p.actions.iter().find(|a| a.action == action).unwrap_or_else(|| panic!("pass {} has no {action}", p.pass))
}

#[test]
fn the_warm_pass_fetches_images_faster_than_the_cold_one() {
    let s = Arc::new(Scenario::load(&root().join("scenarios/images-cache.toml")).unwrap());
    assert_eq!(s.workload.passes, 2);
    let r = run(&s, 1);
    assert!(r.passed, "{}", r.failure_text().unwrap_or_default());
    assert_eq!(r.passes.len(), 2, "{}", r.render());
    assert_eq!((r.passes[0].cache, r.passes[1].cache), ("cold", "warm"));
    for p in &r.passes {
        assert_eq!((p.iterations_ok, p.iterations_failed), (120, 0), "pass {}\n{}", p.pass, r.render());
    }
    assert_eq!(r.iterations.total, 240);
    // Pass 1's servers were deleted before pass 2; pass 2's remain.
    assert_eq!(r.final_states.get("ACTIVE").copied(), Some(120), "{:?}", r.final_states);
    assert_eq!(r.counters.get("workload.pass_deletes").copied(), Some(120), "{:?}", r.counters);
    // Most cold boots find the image already fetched by an earlier boot on their host, so the
    // medians are close; the means and tails carry the downloads.
    for action in ["compute.spawn.image_fetch", "compute.spawn", "compute.build", "boot_server", "boot_to_active"] {
        let (cold, warm) = (summary(&r, 0, action), summary(&r, 1, action));
        assert!(
            warm.mean_s < cold.mean_s,
            "{action}: warm mean {} not below cold {}\n{}",
            warm.mean_s,
            cold.mean_s,
            r.render()
        );
        assert!(warm.max_s < cold.max_s, "{action}: warm max {} not below cold {}", warm.max_s, cold.max_s);
        let d = r.pass_diff.iter().find(|d| d.action == action).unwrap();
        assert!((d.mean_diff_s - (warm.mean_s - cold.mean_s)).abs() < 1e-9, "{d:?}");
        assert!(d.mean_diff_pct.unwrap() < 0.0, "{d:?}");
        assert_eq!((d.first_count, d.last_count), (120, 120), "{d:?}");
    }
    let (cold, warm) = (summary(&r, 0, "compute.spawn.image_fetch"), summary(&r, 1, "compute.spawn.image_fetch"));
    assert!(warm.mean_s < cold.mean_s / 10.0, "image_fetch mean: warm {}, cold {}", warm.mean_s, cold.mean_s);
    // Downloads happen in the cold pass only.
    assert!(r.passes[0].actions.iter().any(|a| a.action == "compute.spawn.image_download"));
    assert!(!r.passes[1].actions.iter().any(|a| a.action == "compute.spawn.image_download"), "{}", r.render());
    // Both passes in the table and in report.json.
    let text = r.render();
    assert!(text.contains("pass 1 (cold image caches)") && text.contains("pass 2 (warm image caches)"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["passes"].as_array().map(Vec::len), Some(2));
    assert!(json["pass_diff"].as_array().is_some_and(|d| d.iter().any(|d| d["action"] == "compute.spawn.image_fetch")));
    // Deterministic: same seed, same digest.
    let again = run(&s, 1);
    assert_eq!(r.digest, again.digest);
    assert_eq!(r.render().split("wall").nth(1), again.render().split("wall").nth(1));
}

#[test]
fn one_pass_scenarios_report_no_passes() {
    let s = Arc::new(Scenario::load(&root().join("scenarios/images-cold.toml")).unwrap());
    let r = run(&s, 1);
    assert!(r.passes.is_empty() && r.pass_diff.is_empty());
    let json = serde_json::to_value(&r).unwrap();
    assert!(json.get("passes").is_none() && json.get("pass_diff").is_none());
    assert!(!r.render().contains("pass 1"));
}
