//! The architecture's invariants that are absences, checked on the source itself
//! (ARCHITECTURE.md lists them). Each test names the rule it enforces.

use stackbed_tests::{root, rust_files};

fn dependencies(manifest: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(manifest)).expect("manifest readable");
    let value: toml_edit::DocumentMut = text.parse().expect("manifest parses");
    let mut out = Vec::new();
    for (name, item) in value.iter() {
        if name == "dependencies" {
            if let Some(t) = item.as_table_like() {
                out.extend(t.iter().map(|(k, _)| k.to_string()));
            }
        }
        if name == "target" {
            if let Some(targets) = item.as_table_like() {
                for (_, t) in targets.iter() {
                    if let Some(deps) = t.get("dependencies").and_then(|d| d.as_table_like()) {
                        out.extend(deps.iter().map(|(k, _)| k.to_string()));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_pure_crate_imports_no_runtime() {
    let deps = dependencies("core/Cargo.toml");
    for forbidden in ["tokio", "madsim", "madsim-tokio", "async-trait", "futures", "rusqlite", "virt"] {
        assert!(!deps.iter().any(|d| d == forbidden), "core depends on {forbidden}");
    }
    for file in rust_files("core/src") {
        let text = std::fs::read_to_string(&file).unwrap();
        for word in
            ["async fn", ".await", "std::time::Instant", "SystemTime", "std::fs::File", "std::net", "thread::spawn"]
        {
            // Scenario loading reads its file with std::fs::read_to_string: that is the one I/O allowed.
            assert!(!text.contains(word), "{} uses `{word}`", file.display());
        }
    }
}

#[test]
fn services_import_only_madsim_tokio_as_runtime() {
    let deps = dependencies("services/Cargo.toml");
    for forbidden in ["madsim", "rusqlite", "virt", "lapin", "sqlx", "stackbed-sim", "stackbed-real"] {
        assert!(!deps.iter().any(|d| d == forbidden), "services depend on {forbidden}");
    }
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(text.contains("tokio = { version = \"0.2\", package = \"madsim-tokio\""), "tokio must be madsim-tokio");
}

#[test]
fn the_simulator_build_needs_no_system_library() {
    // Real-only crates are target-gated to cfg(not(madsim)).
    let text = std::fs::read_to_string(root().join("real/Cargo.toml")).unwrap();
    let gated = text.split("[target.'cfg(not(madsim))'.dependencies]").nth(1).unwrap_or("");
    for dep in ["rusqlite", "virt"] {
        assert!(gated.contains(dep), "{dep} must be a cfg(not(madsim)) dependency");
        let ungated = text.split("[target.'cfg(not(madsim))'.dependencies]").next().unwrap_or("");
        assert!(!ungated.contains(&format!("{dep}.workspace")), "{dep} must not be an unconditional dependency");
    }
    for krate in ["real", "images"] {
        let lib = std::fs::read_to_string(root().join(krate).join("src/lib.rs")).unwrap();
        assert!(lib.contains("#![cfg(not(madsim))]"), "the {krate} crate compiles to nothing under madsim");
    }
}

/// The code that runs under the simulator: the pure crate, the services and the world.
fn simulated_files() -> Vec<std::path::PathBuf> {
    let mut files = rust_files("core/src");
    files.extend(rust_files("services/src"));
    files.extend(rust_files("sim/src"));
    files
}

#[test]
fn simulated_code_has_no_nondeterminism_sources() {
    for file in simulated_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        // A line marked `wall clock` measures the run from outside the simulation (allowed).
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.contains("wall clock")) {
            for word in [
                "thread::spawn",
                "thread_rng",
                "JoinSet",
                "from_entropy",
                "OsRng",
                "SystemTime::now",
                "std::time::Instant",
                // tokio's watch wakes its receivers through a shard picked by tokio's own
                // unseeded RNG: the wake-up order differs from run to run.
                "watch::",
            ] {
                assert!(
                    !line.contains(word),
                    "{}:{}: `{word}` is not deterministic under madsim",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}

/// tokio's `select!` polls its branches in an order drawn from tokio's own unseeded RNG
/// unless told `biased;`: when two branches are ready at once, which one wins differs from
/// run to run. Simulated code always says `biased;` on the line after.
#[test]
fn simulated_selects_are_biased() {
    for file in simulated_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            if line.contains("select! {") {
                let next = lines.get(n + 1).copied().unwrap_or("");
                assert!(
                    next.trim() == "biased;",
                    "{}:{}: `select!` without `biased;` is not deterministic under madsim",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}

/// A poisoned lock is never swallowed (`core/src/sync.rs` says why): locks go through
/// `stackbed_core::sync::guard`. The one exception is the sweep's panic hook, whose record
/// of the panic is what reports it; its lines say `panic hook`.
#[test]
fn poisoned_locks_are_not_swallowed() {
    for dir in ["core/src", "services/src", "sim/src", "real/src", "images/src", "cli/src", "benches"] {
        for file in rust_files(dir) {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let swallowed = line.contains("e.into_inner())") || line.contains("PoisonError::into_inner");
                assert!(
                    !swallowed || line.contains("panic hook"),
                    "{}:{}: a poisoned lock swallowed; use stackbed_core::sync::guard",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}

/// Every time read and wait in the services goes through the clock seam
/// (`services/src/clock.rs`), so a node's clock can be skewed and one place swaps real and
/// simulated time. The conformance suites, which run against the seams from outside any
/// service, may wait on tokio directly.
#[test]
fn services_read_time_only_through_the_clock_seam() {
    for file in rust_files("services/src") {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "clock.rs" || name.contains("conformance") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for word in ["tokio::time::sleep", "tokio::time::timeout", "Instant::now", ".elapsed()", "sleep_until("] {
                let via_clock = word == "sleep_until(" && line.contains("clock.sleep_until(");
                assert!(
                    via_clock || !line.contains(word),
                    "{}:{}: `{word}` reads time around the clock seam; use `ctx.clock`",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}

/// nova's MySQL connection has no read timeout by default, and its DB API retries only
/// deadlocks, through one wrapper: the simulated database client enforces no timeout of its
/// own, and no service hand-writes a deadlock retry.
#[test]
fn the_database_client_has_no_timeout_and_deadlocks_retry_in_one_place() {
    for file in rust_files("sim/src") {
        let text = std::fs::read_to_string(&file).unwrap();
        for word in ["DB_TIMEOUT", "DbClients"] {
            assert!(!text.contains(word), "{}: `{word}`: the database client has no timeout", file.display());
        }
    }
    for file in rust_files("services/src") {
        if file.ends_with("db_retry.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for word in ["DbError::Deadlock", "DbError::LockWaitTimeout", "DbRetryState"] {
            assert!(
                !text.contains(word),
                "{}: `{word}`: deadlocks are retried only by services/src/db_retry.rs",
                file.display()
            );
        }
    }
}

#[test]
fn shipped_scenarios_parse() {
    let mut paths = Vec::new();
    for dir in ["scenarios", "scenarios/faults"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "toml") {
                paths.push(e.path());
            }
        }
    }
    paths.sort();
    for path in &paths {
        stackbed_core::scenario::Scenario::load(path).unwrap_or_else(|err| panic!("{err}"));
    }
    assert!(paths.len() >= 4, "expected the shipped scenarios, found {}", paths.len());
}

/// A fault scenario that shows a failure says how to mitigate it in one line users run
/// as is, and the flags parse as overrides of that scenario.
#[test]
fn fault_scenarios_state_a_runnable_mitigation() {
    for e in std::fs::read_dir(root().join("scenarios/faults")).unwrap().flatten() {
        let path = e.path();
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.contains("# mitigation:") {
            continue;
        }
        let flags = stackbed_tests::mitigation(&path);
        assert!(!flags.is_empty(), "{}: `# mitigation:` without `--set KEY=VALUE`", path.display());
        let overrides: Vec<stackbed_core::scenario::Override> =
            flags.iter().map(|f| f.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()))).collect();
        stackbed_core::scenario::Scenario::load_with(&path, &overrides)
            .unwrap_or_else(|err| panic!("{}: the mitigation does not apply: {err}", path.display()));
    }
}

#[test]
fn architecture_md_names_every_crate() {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    for dir in [
        "core/",
        "services/",
        "sim/",
        "real/",
        "images/",
        "cli/",
        "render/",
        "tests/",
        "scenarios/",
        "traces/",
        "benches/",
        "reports/",
    ] {
        assert!(text.contains(&format!("`{dir}")), "ARCHITECTURE.md codemap misses {dir}");
    }
}
