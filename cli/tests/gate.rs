//! The benchmark gate through the built binary: `bench --save FILE` then
//! `bench --baseline FILE`. An unchanged build passes five times out of five; a scenario
//! change that raises boot p90 fails on the simulated metrics; a commit that makes the
//! scheduler slower fails on wall clock, timed side by side against the revision before it
//! built in a worktree (`--baseline-rev`). `cargo sim-test -p stackbed-cli --test gate`.
#![cfg(madsim)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stackbed-gate-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stackbed(bin: &Path, cwd: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin).current_dir(cwd).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// A shipped scenario copied to `dir` with `edits` (from, to) applied, each of which must apply.
fn scenario_copy(dir: &Path, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(root().join("scenarios").join(name)).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{name} no longer has `{from}`: update the test");
        text = text.replacen(from, to, 1);
    }
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The verdict column of the table rows whose metric is `metric`.
fn verdicts<'a>(table: &'a str, metric: &str) -> Vec<&'a str> {
    table
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == metric))
        .filter_map(|l| l.split_whitespace().last())
        .collect()
}

/// The tests time builds against each other: one at a time, so one's build does not load
/// the other's rounds.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // The lock guards no data: a test that failed holding it left nothing half-changed.
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const SPAWN: &str = "spawn = { dist = \"lognormal\", median_s = 1.5,";
const LARGE_TIMES: &str = "times = 10000";

#[test]
fn an_unchanged_build_passes_five_times_and_a_scenario_raising_boot_p90_fails() {
    let _one = one_at_a_time();
    let bin = Path::new(env!("CARGO_BIN_EXE_stackbed"));
    let d = out_dir("unchanged");
    let quick = scenario_copy(&d, "quickstart.toml", &[]);
    let large = scenario_copy(&d, "large.toml", &[(LARGE_TIMES, "times = 1000")]);
    let base = d.join("base.json");
    let (q, l, b) = (quick.to_str().unwrap(), large.to_str().unwrap(), base.to_str().unwrap());
    let (rc, text) = stackbed(bin, &root(), &["bench", q, l, "--save", b, "--rounds", "5"]);
    assert_eq!(rc, 0, "{text}");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&base).unwrap()).unwrap();
    assert_eq!(saved["cases"].as_array().unwrap().len(), 2, "{saved}");
    assert_eq!(saved["cases"][0]["wall"]["wall_s"].as_array().unwrap().len(), 5);

    let gate = ["bench", "--baseline", b, "--baseline-bin", bin.to_str().unwrap(), "--rounds", "5"];
    for attempt in 1..=5 {
        let (rc, text) = stackbed(bin, &root(), &gate);
        assert_eq!(rc, 0, "unchanged, attempt {attempt} of 5 failed:\n{text}");
        assert!(text.contains("0 failed") && text.contains("; pass"), "{text}");
        assert_eq!(verdicts(&text, "boot_server.p90_s"), ["same", "same"], "{text}");
        for metric in ["wall_s", "process_s"] {
            let v = verdicts(&text, metric);
            assert_eq!(v.len(), 3, "{metric} judged per case and in total: {text}");
            assert!(v.iter().all(|v| ["same", "noise", "faster"].contains(v)), "{text}");
        }
    }

    // Boots that spawn twice as slowly: the simulated p90 rises, the gate fails and says so.
    scenario_copy(&d, "quickstart.toml", &[(SPAWN, "spawn = { dist = \"lognormal\", median_s = 3.0,")]);
    let (rc, text) = stackbed(bin, &root(), &gate);
    assert_eq!(rc, 1, "a raised boot p90 must fail the gate:\n{text}");
    assert_eq!(verdicts(&text, "boot_server.p90_s"), ["WORSE", "same"], "{text}");
    assert!(text.contains("the simulation changed"), "{text}");
    assert!(text.contains("FAIL"), "{text}");

    // The same change within a tolerance the scenario states passes.
    let text = std::fs::read_to_string(&quick).unwrap() + "\n[bench]\ntolerance = { \"*\" = 2.0 }\n";
    std::fs::write(&quick, text).unwrap();
    let (rc, text) = stackbed(bin, &root(), &gate);
    assert_eq!(rc, 0, "within the stated tolerance:\n{text}");

    // A baseline from the other world, or not a baseline at all, is bad input (exit 2).
    std::fs::write(&base, "{}").unwrap();
    let (rc, text) = stackbed(bin, &root(), &gate);
    assert_eq!(rc, 2, "{text}");
    assert!(text.contains("not a baseline written by --save"), "{text}");
}

/// The planted regression: a commit that runs the scheduler's filter and weigher pass 60
/// extra times per request (same decisions: the simulated metrics cannot see it).
const PLANT_ANCHOR: &str = "let decided = strategy.select_table(&table.table, &req, rng, k);";
const PLANT: &str = "for _ in 0..60 {\n            std::hint::black_box(strategy.select_table(&table.table, &req, &mut rng.clone(), k).is_ok());\n        }\n        let decided = strategy.select_table(&table.table, &req, rng, k);";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the test's worktree however the test ends.
struct Worktree(PathBuf);

impl Drop for Worktree {
    fn drop(&mut self) {
        let _ = Command::new("git").current_dir(root()).args(["worktree", "remove", "--force"]).arg(&self.0).output();
        let _ = Command::new("git").current_dir(root()).args(["worktree", "prune"]).output();
    }
}

#[test]
fn a_commit_that_slows_the_scheduler_fails_side_by_side_against_the_revision_before_it() {
    let _one = one_at_a_time();
    let d = out_dir("plant");
    let head = git(&root(), &["rev-parse", "HEAD"]);
    let tree = d.join("tree");
    git(&root(), &["worktree", "add", "--detach", tree.to_str().unwrap(), &head]);
    let _guard = Worktree(tree.clone());
    let file = tree.join("services/src/scheduler/mod.rs");
    let src = std::fs::read_to_string(&file).unwrap();
    assert!(src.contains(PLANT_ANCHOR), "the scheduler no longer has `{PLANT_ANCHOR}`: update the plant");
    std::fs::write(&file, src.replacen(PLANT_ANCHOR, PLANT, 1)).unwrap();
    git(&tree, &["-c", "user.name=stackbed", "-c", "user.email=ci@stackbed.invalid", "commit", "-qam", "plant"]);

    // Built into the directory the gate builds its baseline in, so that build reuses the
    // dependencies; the binary is copied out before the gate's build replaces it.
    let target = tree.join("target/gate/target-sim");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&tree)
        .args(["build", "--release", "-q", "--target-dir", target.to_str().unwrap()])
        .args(["--config", "build.rustflags=['--cfg','madsim']", "-p", "stackbed-cli", "--bin", "stackbed"])
        .status()
        .unwrap();
    assert!(status.success(), "building the planted tree failed");
    let planted = d.join("stackbed-planted");
    std::fs::copy(target.join("release/stackbed"), &planted).unwrap();

    let large = scenario_copy(&d, "large.toml", &[(LARGE_TIMES, "times = 2000")]);
    let base = d.join("base.json");
    let json = d.join("gate.json");
    let (l, b, j) = (large.to_str().unwrap(), base.to_str().unwrap(), json.to_str().unwrap());
    let (rc, text) = stackbed(&planted, &tree, &["bench", l, "--save", b, "--rounds", "1"]);
    assert_eq!(rc, 0, "{text}");
    let (rc, text) =
        stackbed(&planted, &tree, &["bench", "--baseline", b, "--baseline-rev", &head, "--rounds", "5", "--json", j]);
    let samples: Vec<String> = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| v["rows"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
        .iter()
        .filter(|r| r["wall"] == true)
        .map(|r| format!("{} {}: {} vs {}", r["case"], r["metric"], r["before_samples"], r["after_samples"]))
        .collect();
    // The table and the samples in the test's output, for the record (`--nocapture`).
    eprintln!("{text}\n{}", samples.join("\n"));
    assert_eq!(rc, 1, "the slower scheduler went unnoticed");
    assert_eq!(verdicts(&text, "wall_s"), ["SLOWER", "SLOWER"], "per case and in total:\n{text}");
    assert!(text.contains(&format!("building baseline {}", &head[..12])), "{text}");
    // Only the wall clock saw it: every simulated metric is the same.
    let simulated_fails = text.lines().filter(|l| l.ends_with("WORSE") || l.ends_with("MISSING")).count();
    assert_eq!(simulated_fails, 0, "{text}");
}
