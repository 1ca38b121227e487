//! `stackbed sweep` and `sweep-merge` through the built binary, on a few seeds of the
//! quickstart scenario (each runs in a fraction of a second). `cargo sim-test -p stackbed-cli`.
//! Simulator build only: the real build's runs are neither this fast nor these digests.
#![cfg(madsim)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stackbed-sweep-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stackbed(args: &[&str], env: Option<(&str, &str)>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stackbed"));
    cmd.current_dir(root()).args(args);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// The summary without its wall-clock part.
fn load(path: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("timing");
    v
}

#[test]
fn shards_merge_to_the_whole_sweep_and_jobs_change_nothing() {
    let d = out_dir("merge");
    let f = |n: &str| d.join(n).display().to_string();
    let q = "scenarios/quickstart.toml";
    let (rc, text) = stackbed(&["sweep", q, "--seeds", "1..3", "--jobs", "2", "--out", &f("whole.json")], None);
    assert_eq!(rc, 0, "{text}");
    assert!(text.contains("3 seeds run: 3 passed, 0 failed"), "{text}");
    let (rc, text) = stackbed(&["sweep", q, "--seeds", "1..3", "--jobs", "1", "--out", &f("one.json")], None);
    assert_eq!(rc, 0, "{text}");
    assert_eq!(load(&d.join("whole.json")), load(&d.join("one.json")));
    for i in 1..=2 {
        let shard = format!("{i}/2");
        let (rc, text) =
            stackbed(&["sweep", q, "--seeds", "1..3", "--shard", &shard, "--out", &f(&format!("s{i}.json"))], None);
        assert_eq!(rc, 0, "{text}");
    }
    let (rc, text) = stackbed(&["sweep-merge", &f("s2.json"), &f("s1.json"), "--out", &f("merged.json")], None);
    assert_eq!(rc, 0, "{text}");
    let whole = load(&d.join("whole.json"));
    assert_eq!(load(&d.join("merged.json")), whole);
    // A sweep's seed is the same run as `run --seed`: the same digest.
    let (rc, text) = stackbed(&["run", q, "--seed", "1", "--report-dir", &f("run1")], None);
    assert_eq!(rc, 0, "{text}");
    let digest = text.lines().find_map(|l| l.strip_prefix("digest: ")).and_then(|l| l.split(' ').next());
    assert_eq!(whole["rows"][0]["digest"].as_str(), digest, "{text}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_panic_and_a_crash_fail_their_seed_only() {
    let d = out_dir("faults");
    let q = "scenarios/quickstart.toml";
    for (fault, group) in [("panic:2", "panic at "), ("abort:2", "crashed: signal 6")] {
        let out = d.join("s.json").display().to_string();
        let (rc, text) = stackbed(
            &["sweep", q, "--seeds", "1..4", "--jobs", "1", "--out", &out],
            Some(("STACKBED_SWEEP_FAULT", fault)),
        );
        assert_eq!(rc, 1, "{text}");
        let s = load(Path::new(&out));
        assert_eq!(s["total"], 4, "{s}");
        assert_eq!(s["failed"], 1, "{s}");
        let groups = s["groups"].as_object().unwrap();
        let (key, g) = groups.iter().next().unwrap();
        assert!(key.starts_with(group), "{key}");
        assert_eq!(g["seeds"], "2");
        assert_eq!(g["replay"], "cargo sim run scenarios/quickstart.toml --seed 2");
        assert!(text.contains("cargo sim run scenarios/quickstart.toml --seed 2"), "{text}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_input_exits_2() {
    let (rc, text) = stackbed(&["sweep", "scenarios/quickstart.toml", "--seeds", "1..3", "--shard", "0/2"], None);
    assert_eq!(rc, 2, "{text}");
    assert!(text.contains("--shard wants I/N"), "{text}");
    let (rc, text) = stackbed(&["sweep-merge", "no/such/file.json"], None);
    assert_eq!(rc, 2, "{text}");
}
