//! `shrink` through the built binary: a failing shipped scenario shrinks to a smaller file
//! that still fails with the same invariant on the same seed when run as its replay line
//! says; a seed that passes (or a mitigation that makes it pass) is refused with exit 2.
//! `cargo sim-test -p stackbed-cli --test shrink`. The reducer itself is unit-tested in
//! `core/src/scenario/shrink.rs`.
#![cfg(madsim)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stackbed(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stackbed")).current_dir(root()).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// `N faults, N requests, N hosts, N service nodes` after `label`, as numbers.
fn sizes(text: &str, label: &str) -> [u64; 4] {
    let line = text.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no `{label}` in\n{text}"));
    let n: Vec<u64> = line.split([' ', ',']).filter_map(|w| w.parse().ok()).collect();
    n.try_into().unwrap_or_else(|n| panic!("{line}: {n:?}"))
}

const RESTART: &str = "scenarios/faults/broker-restart.toml";

#[test]
fn a_failing_seed_shrinks_to_a_smaller_scenario_that_fails_the_same_way() {
    let dir = std::env::temp_dir().join(format!("stackbed-shrink-{}", std::process::id()));
    let out = dir.join("small.toml");
    let out_s = out.display().to_string();
    let (rc, text) = stackbed(&["shrink", RESTART, "--seed", "1", "--out", &out_s]);
    assert_eq!(rc, 0, "{text}");
    assert!(text.contains("fails: requests_terminal (seed 1)"), "{text}");
    let (before, after) = (sizes(&text, "before:"), sizes(&text, "after:"));
    assert_eq!(before, [1, 300, 16, 10], "{text}");
    // The broker restart is what loses the casts: it stays; the boot storm does not.
    assert_eq!(after[0], 1, "{text}");
    assert!(after[1] * 5 <= before[1], "requests not cut to a fifth: {text}");
    assert!(after.iter().zip(&before).all(|(a, b)| a <= b), "{text}");
    let replay = format!("replay: cargo sim run {out_s} --seed 1");
    assert!(text.contains(&replay), "{text}");
    let small = std::fs::read_to_string(&out).unwrap();
    assert!(small.starts_with("# Shrunk by `stackbed shrink"), "{small}");
    // The replay line, run: the same invariant fails first.
    let (rc, run) = stackbed(&["run", &out_s, "--seed", "1", "--report-dir", &dir.join("r").display().to_string()]);
    assert_eq!(rc, 1, "{run}");
    assert!(run.contains("first violation: requests_terminal"), "{run}");
    // And the file's mitigation still works on the small one.
    let set = "--set=control.amqp_durable_queues=true";
    let (rc, run) =
        stackbed(&["run", &out_s, "--seed", "1", set, "--report-dir", &dir.join("m").display().to_string()]);
    assert_eq!(rc, 0, "{run}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_seed_that_passes_is_refused() {
    for args in [
        &["shrink", "scenarios/quickstart.toml", "--seed", "1"][..],
        &["shrink", RESTART, "--seed", "1", "--set", "control.amqp_durable_queues=true"][..],
    ] {
        let (rc, text) = stackbed(args);
        assert_eq!(rc, 2, "{args:?}: {text}");
        assert!(text.contains("passes on seed 1: nothing to shrink"), "{args:?}: {text}");
    }
    let (rc, text) = stackbed(&["shrink", "scenarios/no-such.toml", "--seed", "1"]);
    assert_eq!(rc, 2, "{text}");
    assert!(text.contains("scenarios/no-such.toml"), "{text}");
}
