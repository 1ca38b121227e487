//! `stackbed`: run scenarios in the simulator (`cargo sim ...`, built with --cfg madsim) or
//! against real services (`cargo real ...`). Both builds share this file; only `world::run`
//! differs.
//!
//! A library too, so that a researcher's crate can add strategies of its own: register
//! them, then hand over to [`main`], which parses the command line as `stackbed` does
//! (`examples/custom-strategy/`):
//!
//! ```no_run
//! # use stackbed_cli::{register_strategy, Strategy};
//! # fn mine(_: &stackbed_core::scheduler::SchedulerConfig) -> Box<dyn Strategy> { unimplemented!() }
//! fn main() -> std::process::ExitCode {
//!     register_strategy("mine", mine).expect("a new name");
//!     stackbed_cli::main()
//! }
//! ```

use stackbed_core::sync::guard;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde::Serialize;

use stackbed_core::scenario::{Override, Scenario};
use stackbed_core::stats::percentile;
use stackbed_services::report::{Report, RunOptions};

pub use stackbed_core::strategy::{register as register_strategy, Factory, Strategy};

#[cfg(not(madsim))]
mod images_bench;

mod compare;
mod explain;
mod gate;
mod pages;
mod shrink;
mod sweep;

#[cfg(madsim)]
mod world {
    pub const NAME: &str = "sim";
    pub use stackbed_sim::run;
}

#[cfg(not(madsim))]
mod world {
    pub const NAME: &str = "real";
    pub use stackbed_real::run::run;
}

#[derive(Parser)]
#[command(name = "stackbed", about = "A test bed for the OpenStack VM-provisioning control plane", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario and print the per-action table, counters, invariants and digest.
    Run {
        /// The scenario file (TOML).
        scenario: PathBuf,
        /// Run one seed.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Run seeds A..B, both included (e.g. 1..20).
        #[arg(long)]
        seeds: Option<String>,
        /// Where report.json and report.html go (default: reports/<scenario name>).
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// Also write JUnit XML here: one test case per invariant and SLA criterion per seed,
        /// failures with the replay command.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Run every strategy on identical workloads and seeds and compare them: a table with 95%
    /// intervals across seeds, compare.json, compare.csv and SVG plots in the report dir.
    Compare {
        scenario: PathBuf,
        /// Strategies by name: spread, pack, random, first-fit, best-fit, p2c.
        #[arg(long, value_delimiter = ',', default_value = "spread,pack,random")]
        strategies: Vec<String>,
        /// Seeds A..B, both included (default: the scenario's seeds).
        #[arg(long)]
        seeds: Option<String>,
        /// Where the comparison goes (default: reports/<scenario name>/compare).
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// Runs at once (default: the machine's cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Also write JUnit XML here: one test case per invariant and SLA criterion per seed,
        /// failures with the replay command.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Explain one scheduling decision: each filter with the hosts it kept and rejected (and
    /// why), each weigher's raw and normalised values, the scores, the pick, the alternates and
    /// the guest CPU topology. Nothing runs: the hosts are the scenario's as they start.
    Explain {
        scenario: PathBuf,
        /// The workload's request number, from 0.
        #[arg(long, default_value_t = 0)]
        request: u32,
        #[arg(long)]
        seed: Option<u64>,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run many seeds in parallel child processes: a progress bar, failing seeds grouped by
    /// the violated invariant (or abort reason) with a replay command each, and a JSON summary
    /// (reports/<scenario name>/sweep/sweep.json) that `sweep-merge` merges across shards.
    Sweep(sweep::SweepArgs),
    /// Merge the JSON summaries of several sweeps (shards) of one scenario and revision.
    SweepMerge(sweep::MergeArgs),
    /// Internal: runs seeds for `sweep`, one JSON line each.
    #[command(hide = true)]
    SweepChild(sweep::ChildArgs),
    /// Shrink a failing seed to a minimal repro: while the same invariant still fails on the
    /// same seed, remove faults, requests, hosts and service nodes; write the smallest
    /// scenario found and print its replay command and the sizes before and after.
    Shrink(shrink::ShrinkArgs),
    /// Parse and validate a scenario without running it.
    Check {
        scenario: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Measure speed. With scenarios (default: scenarios/quickstart.toml and
    /// scenarios/large.toml): simulated seconds and boots per wall second. `bench images`
    /// (real build): image I/O against qemu-img side by side.
    ///
    /// The regression gate: `--save FILE` records the scenarios' simulated metrics per seed
    /// and wall-clock samples; `--baseline FILE` re-runs them, compares simulated metrics
    /// exactly (or within the scenario's `[bench] tolerance`) and wall-clock metrics side by
    /// side with the baseline build over alternating rounds, prints before, after, ratio and
    /// verdict for every metric and exits 1 on a regression. `--set` overrides apply to this
    /// build's runs only.
    Bench {
        /// Scenario files, or the word `images`.
        scenarios: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        gate: gate::GateArgs,
        #[command(flatten)]
        overrides: Overrides,
    },
}

/// `--set KEY=VALUE`, repeatable: scenario fields overridden before validation
/// (`Scenario::load_with`). Flatten it into any command that loads a scenario to run it, and
/// load with [`load_with`]; the replay commands repeat the overrides ([`set_args`]).
#[derive(clap::Args, Clone, Default)]
pub(crate) struct Overrides {
    /// Override a scenario field, e.g. `--set control.amqp_durable_queues=true` or
    /// `--set faults[0].duration=10s` (TOML values; anything else is a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) set: Vec<Override>,
}

/// HEAD's short hash, as reports name the revision; `unknown` outside a git checkout.
fn revision() -> String {
    gate::git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|_| "unknown".into())
}

fn parse_seeds(text: &str) -> Result<Vec<u64>, String> {
    let (a, b) = text.split_once("..").ok_or_else(|| format!("--seeds wants A..B, got `{text}`"))?;
    let a: u64 = a.trim().parse().map_err(|_| format!("--seeds: `{a}` is not a number"))?;
    let b: u64 = b.trim().trim_start_matches('=').parse().map_err(|_| format!("--seeds: `{b}` is not a number"))?;
    if b < a {
        return Err(format!("--seeds {text}: the end is below the start"));
    }
    Ok((a..=b).collect())
}

fn load(path: &Path) -> Result<Arc<Scenario>, String> {
    load_with(path, &Overrides::default())
}

fn load_with(path: &Path, overrides: &Overrides) -> Result<Arc<Scenario>, String> {
    Scenario::load_with(path, &overrides.set).map(Arc::new).map_err(|e| e.to_string())
}

/// ` --set KEY=VALUE` for each override `scenario` was loaded with, quoted for a shell.
fn set_args(scenario: &Scenario) -> String {
    let word = |s: &str| {
        if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._=/:,+-@%".contains(c)) {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', "'\\''"))
        }
    };
    scenario.overrides.iter().map(|o| format!(" --set {}", word(o))).collect()
}

fn options(scenario: &Arc<Scenario>, path: &Path, seed: u64, revision: &str) -> RunOptions {
    RunOptions {
        scenario: scenario.clone(),
        scenario_file: path.display().to_string(),
        seed,
        revision: revision.to_string(),
        replay: format!("cargo {} run {} --seed {seed}{}", world::NAME, path.display(), set_args(scenario)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[derive(Serialize)]
struct SeedRow {
    seed: u64,
    passed: bool,
    boots_ok: usize,
    boots_failed: usize,
    boot_p50_s: f64,
    boot_p95_s: f64,
    reschedules: u64,
    no_valid_host: u64,
    max_retries_exceeded: u64,
    first_violation: Option<String>,
    digest: String,
    report: String,
}

#[derive(Serialize)]
struct MultiSeedSummary {
    scenario: String,
    world: &'static str,
    revision: String,
    seeds: Vec<SeedRow>,
    passed: usize,
    failed: usize,
    boot_p50_s_across_seeds: [f64; 3],
}

fn progress(done: usize, total: usize, failed: usize) {
    progress_of("seeds", done, total, failed)
}

/// A progress bar redrawn in place on a terminal; elsewhere (a CI log) a line at every
/// tenth of the way, so a log does not get one redraw per seed.
fn progress_of(what: &str, done: usize, total: usize, failed: usize) {
    use std::io::IsTerminal;
    let width = 30;
    let filled = done * width / total.max(1);
    let bar = format!("[{}{}] {done}/{total} {what}, {failed} failed", "#".repeat(filled), ".".repeat(width - filled));
    if std::io::stderr().is_terminal() {
        eprint!("\r{bar}");
        if done == total {
            eprintln!();
        }
    } else {
        let tenth = |n: usize| n * 10 / total.max(1);
        if done == 0 || done == total || tenth(done) != tenth(done - 1) {
            eprintln!("{bar}");
        }
    }
}

fn cmd_run(
    path: &Path,
    seed: Option<u64>,
    seeds: Option<String>,
    report_dir: Option<PathBuf>,
    junit: Option<&Path>,
    overrides: &Overrides,
) -> Result<bool, String> {
    let scenario = load_with(path, overrides)?;
    let rev = revision();
    let dir = report_dir.unwrap_or_else(|| PathBuf::from("reports").join(&scenario.scenario.name));
    let seed_list = match seed {
        Some(s) => vec![s],
        None => scenario_seeds(&scenario, seeds)?,
    };
    if seed_list.len() == 1 {
        let report = world::run(&options(&scenario, path, seed_list[0], &rev))?;
        print!("{}", report.render());
        let file = dir.join("report.json");
        let page = pages::write_report(&file, &report)?;
        println!("report: {} ({})", file.display(), page.display());
        let title = format!("stackbed run {}", report.scenario);
        pages::write_junit(junit, &title, &[pages::seed_suite(&report, "")])?;
        if let Some(text) = report.failure_text() {
            eprint!("{text}");
        }
        return Ok(report.passed);
    }
    let mut rows = Vec::new();
    let mut suites = Vec::new();
    let mut failed = 0;
    progress(0, seed_list.len(), 0);
    for (i, &s) in seed_list.iter().enumerate() {
        let report = world::run(&options(&scenario, path, s, &rev))?;
        let file = dir.join(format!("seed-{s}")).join("report.json");
        pages::write_report(&file, &report)?;
        suites.push(pages::seed_suite(&report, ""));
        if !report.passed {
            failed += 1;
            if let Some(text) = report.failure_text() {
                eprint!("\n{text}");
            }
        }
        rows.push(seed_row(&report, &file));
        progress(i + 1, seed_list.len(), failed);
    }
    let summary = summarize(&scenario, &rev, rows);
    print!("{}", render_summary(&summary));
    let file = dir.join("report.json");
    write_json(&file, &summary)?;
    let page = pages::write_multi_seed_page(&file, &summary)?;
    println!("report: {} ({})", file.display(), page.display());
    pages::write_junit(junit, &format!("stackbed run {}", summary.scenario), &suites)?;
    Ok(summary.failed == 0)
}

fn seed_row(r: &Report, file: &Path) -> SeedRow {
    let boot = r.actions.iter().find(|a| a.action == "boot_server");
    SeedRow {
        seed: r.seed,
        passed: r.passed,
        boots_ok: r.iterations.ok,
        boots_failed: r.iterations.failed,
        boot_p50_s: boot.map_or(0.0, |a| a.median_s),
        boot_p95_s: boot.map_or(0.0, |a| a.p95_s),
        reschedules: r.counters.get("reschedules").copied().unwrap_or(0),
        no_valid_host: r.counters.get("no_valid_host").copied().unwrap_or(0),
        max_retries_exceeded: r.counters.get("max_retries_exceeded").copied().unwrap_or(0),
        first_violation: r.first_violation.violation.as_ref().map(|v| format!("{}: {}", v.invariant, v.detail)),
        digest: r.digest.clone(),
        report: file.display().to_string(),
    }
}

fn summarize(scenario: &Scenario, rev: &str, seeds: Vec<SeedRow>) -> MultiSeedSummary {
    let mut p50: Vec<f64> = seeds.iter().map(|s| s.boot_p50_s).collect();
    p50.sort_by(f64::total_cmp);
    let passed = seeds.iter().filter(|s| s.passed).count();
    MultiSeedSummary {
        scenario: scenario.scenario.name.clone(),
        world: world::NAME,
        revision: rev.to_string(),
        failed: seeds.len() - passed,
        passed,
        boot_p50_s_across_seeds: [
            p50.first().copied().unwrap_or(0.0),
            percentile(&p50, 50.0),
            p50.last().copied().unwrap_or(0.0),
        ],
        seeds,
    }
}

fn render_summary(s: &MultiSeedSummary) -> String {
    let mut out = format!("scenario {} | {} seeds | world {}\n", s.scenario, s.seeds.len(), s.world);
    out += &format!(
        "{:>6} {:>6} {:>8} {:>8} {:>9} {:>9} {:>6} {:>6} {:>6}  {}\n",
        "seed", "pass", "boots", "failed", "boot p50", "boot p95", "resch", "novh", "maxret", "digest"
    );
    for r in &s.seeds {
        out += &format!(
            "{:>6} {:>6} {:>8} {:>8} {:>9.2} {:>9.2} {:>6} {:>6} {:>6}  {}\n",
            r.seed,
            if r.passed { "ok" } else { "FAIL" },
            r.boots_ok,
            r.boots_failed,
            r.boot_p50_s,
            r.boot_p95_s,
            r.reschedules,
            r.no_valid_host,
            r.max_retries_exceeded,
            &r.digest[..16.min(r.digest.len())]
        );
    }
    out += &format!(
        "{} passed, {} failed | boot_server median across seeds: min {:.2} s, median {:.2} s, max {:.2} s\n",
        s.passed, s.failed, s.boot_p50_s_across_seeds[0], s.boot_p50_s_across_seeds[1], s.boot_p50_s_across_seeds[2]
    );
    out
}

fn scenario_seeds(scenario: &Scenario, seeds: Option<String>) -> Result<Vec<u64>, String> {
    match seeds {
        Some(r) => parse_seeds(&r),
        None => {
            let s = scenario.scenario.seeds;
            Ok((s.start..s.start + s.count.max(1)).collect())
        }
    }
}

fn cmd_compare(
    path: &Path,
    strategies: Vec<String>,
    seeds: Option<String>,
    report_dir: Option<PathBuf>,
    jobs: Option<usize>,
    junit: Option<&Path>,
    overrides: &Overrides,
) -> Result<bool, String> {
    let base = load_with(path, overrides)?;
    for s in &strategies {
        let known = stackbed_core::strategy::names();
        if !known.contains(s) {
            return Err(format!("unknown strategy `{s}`; known: {}", known.join(", ")));
        }
    }
    let seed_list = scenario_seeds(&base, seeds)?;
    let rev = revision();
    let dir = report_dir.unwrap_or_else(|| PathBuf::from("reports").join(&base.scenario.name).join("compare"));
    let mut work: Vec<(String, u64)> = Vec::new();
    for s in &strategies {
        for &seed in &seed_list {
            work.push((s.clone(), seed));
        }
    }
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let total = work.len();
    let queue = std::sync::Mutex::new(work.into_iter().enumerate());
    let results = std::sync::Mutex::new(Vec::new());
    let failed = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let started = std::time::Instant::now(); // wall clock, outside the simulations
    progress_of("runs", 0, total, 0);
    // Each run is its own simulation with its own runtime; runs share nothing, so running
    // them on several threads changes no result.
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(total) {
            scope.spawn(|| loop {
                let next = guard(&queue).next();
                let Some((k, (strategy, seed))) = next else { break };
                let mut scenario = (*base).clone();
                scenario.control.scheduler.strategy = strategy.clone();
                let scenario = Arc::new(scenario);
                let mut opts = options(&scenario, path, seed, &rev);
                opts.replay = format!(
                    "cargo {} compare {} --strategies {strategy} --seeds {seed}..{seed}{}",
                    world::NAME,
                    path.display(),
                    set_args(&base)
                );
                // Each run's report is written here, on the run's thread, not after all runs.
                let outcome = world::run(&opts).and_then(|r| {
                    let file = dir.join(&strategy).join(format!("seed-{}", r.seed)).join("report.json");
                    pages::write_report(&file, &r).map(|_| r)
                });
                if !matches!(&outcome, Ok(r) if r.passed) {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                guard(&results).push((k, strategy, outcome));
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress_of("runs", n, total, failed.load(std::sync::atomic::Ordering::Relaxed));
            });
        }
    });
    let mut results = results.into_inner().expect("a worker panicked holding the results");
    results.sort_by_key(|r| r.0);
    let mut figures = Vec::new();
    let mut first_reports: Vec<(String, Arc<Report>)> = Vec::new();
    let mut latencies: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut suites = Vec::new();
    for (_, strategy, outcome) in results {
        let report = Arc::new(outcome?);
        if let Some(text) = report.failure_text() {
            eprint!("{text}");
        }
        suites.push(pages::seed_suite(&report, &format!("{strategy} ")));
        figures.push(compare::figures(&strategy, &base, &report));
        latencies.entry(strategy.clone()).or_default().extend(compare::boot_latencies(&report));
        if !first_reports.iter().any(|(s, _)| *s == strategy) {
            first_reports.push((strategy, report));
        }
    }
    let comparison = compare::summarize(&base.scenario.name, &rev, &strategies, &seed_list, figures);
    print!("{}", compare::render(&comparison));
    println!("{total} runs on {} threads in {:.1} s wall", jobs.min(total), started.elapsed().as_secs_f64());
    let [json, csv, util_svg, cdf_svg] = compare::outputs(&dir);
    write_json(&json, &comparison)?;
    std::fs::write(&csv, compare::csv(&comparison)).map_err(|e| format!("cannot write {}: {e}", csv.display()))?;
    compare::plot_utilisation(&util_svg, &first_reports)?;
    let cdf: Vec<(String, Vec<f64>)> = strategies
        .iter()
        .map(|s| {
            let mut v = latencies.remove(s).unwrap_or_default();
            v.sort_by(f64::total_cmp);
            (s.clone(), v)
        })
        .collect();
    compare::plot_latency_cdf(&cdf_svg, &cdf)?;
    let svgs = [("Mean host utilisation", util_svg.as_path()), ("Boot latency CDF", cdf_svg.as_path())];
    let page = pages::write_compare_page(&dir, &comparison, &svgs)?;
    for f in [&json, &csv, &util_svg, &cdf_svg, &page] {
        println!("wrote {}", f.display());
    }
    pages::write_junit(junit, &format!("stackbed compare {}", comparison.scenario), &suites)?;
    Ok(comparison.strategies.iter().all(|s| s.failed_runs == 0))
}

#[derive(Serialize)]
struct BenchRow {
    scenario: String,
    world: &'static str,
    hosts: u32,
    boots: usize,
    seed: u64,
    simulated_s: f64,
    wall_s: f64,
    simulated_s_per_wall_s: f64,
    boots_per_wall_s: f64,
    events: u64,
    passed: bool,
    revision: String,
}

fn cmd_bench(
    scenarios: Vec<PathBuf>,
    seed: u64,
    json: Option<PathBuf>,
    gate: &gate::GateArgs,
    overrides: &Overrides,
) -> Result<bool, String> {
    if scenarios.len() == 1 && scenarios[0] == Path::new("images") {
        return images_bench(json);
    }
    let sets: Vec<String> = overrides.set.iter().map(|o| o.to_string()).collect();
    if gate.baseline.is_some() {
        if !scenarios.is_empty() {
            return Err("--baseline re-runs the cases its file recorded: give no scenarios".into());
        }
        return gate::check(gate, json.as_deref(), &sets);
    }
    let scenarios = if scenarios.is_empty() {
        vec![PathBuf::from("scenarios/quickstart.toml"), PathBuf::from("scenarios/large.toml")]
    } else {
        scenarios
    };
    if gate.save.is_some() {
        return gate::save(gate, &scenarios, seed, &sets);
    }
    let rev = revision();
    let mut rows = Vec::new();
    println!(
        "{:<28} {:>6} {:>7} {:>10} {:>9} {:>12} {:>12}",
        "scenario", "hosts", "boots", "sim s", "wall s", "sim s/wall s", "boots/wall s"
    );
    for path in &scenarios {
        let scenario = load_with(path, overrides)?;
        let r = world::run(&options(&scenario, path, seed, &rev))?;
        let row = BenchRow {
            scenario: r.scenario.clone(),
            world: world::NAME,
            hosts: scenario.host_count(),
            boots: r.iterations.total,
            seed,
            simulated_s: r.simulated_s,
            wall_s: r.wall_s,
            simulated_s_per_wall_s: r.simulated_s / r.wall_s.max(1e-9),
            boots_per_wall_s: r.iterations.total as f64 / r.wall_s.max(1e-9),
            events: r.events,
            passed: r.passed,
            revision: rev.clone(),
        };
        println!(
            "{:<28} {:>6} {:>7} {:>10.1} {:>9.2} {:>12.1} {:>12.1}",
            row.scenario,
            row.hosts,
            row.boots,
            row.simulated_s,
            row.wall_s,
            row.simulated_s_per_wall_s,
            row.boots_per_wall_s
        );
        rows.push(row);
    }
    if let Some(path) = json {
        write_json(&path, &rows)?;
        println!("json: {}", path.display());
    }
    Ok(rows.iter().all(|r| r.passed))
}

#[cfg(madsim)]
fn images_bench(_json: Option<PathBuf>) -> Result<bool, String> {
    Err("the image benchmark measures real files: run it in the real build, `cargo real bench images`".into())
}

#[cfg(not(madsim))]
fn images_bench(json: Option<PathBuf>) -> Result<bool, String> {
    let report = images_bench::run(revision())?;
    if let Some(path) = json {
        write_json(&path, &report)?;
        println!("json: {}", path.display());
    }
    Ok(report.checks.iter().all(|(_, ok, _)| *ok))
}

/// The `stackbed` command line: parses the arguments, runs the command, and returns its
/// exit code (0 pass, 1 a failed check, 2 bad input). Strategies registered before it are
/// known to every command by name.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { scenario, seed, seeds, report_dir, junit, overrides } => {
            cmd_run(&scenario, seed, seeds, report_dir, junit.as_deref(), &overrides)
        }
        Command::Compare { scenario, strategies, seeds, report_dir, jobs, junit, overrides } => {
            cmd_compare(&scenario, strategies, seeds, report_dir, jobs, junit.as_deref(), &overrides)
        }
        Command::Explain { scenario, request, seed, json } => load(&scenario).and_then(|s| {
            let seed = seed.unwrap_or(s.scenario.seeds.start);
            let e = explain::request(&s, seed, request)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e).map_err(|e| e.to_string())?);
            } else {
                print!("{}", explain::render(&e, request));
            }
            Ok(true)
        }),
        Command::Sweep(args) => sweep::sweep(args),
        Command::SweepMerge(args) => sweep::merge_files(args),
        Command::SweepChild(args) => sweep::child(args),
        Command::Shrink(args) => shrink::shrink(args),
        Command::Check { scenario, overrides } => load_with(&scenario, &overrides).map(|s| {
            println!(
                "{}: ok ({} hosts, {} boots)",
                scenario.display(),
                s.host_count(),
                s.workload.runner.times(&s.trace)
            );
            for (field, message) in s.warnings() {
                println!("warning: {field}: {message}");
            }
            let seed = s.scenario.seeds.start;
            match s.fault_schedule(seed) {
                Ok(schedule) if schedule.is_empty() => {}
                Ok(schedule) => println!("seed {seed}: {schedule}"),
                Err(e) => println!("seed {seed}: faults: {e}"),
            }
            true
        }),
        Command::Bench { scenarios, seed, json, gate, overrides } => {
            cmd_bench(scenarios, seed, json, &gate, &overrides)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
