//! `stackbed bench --save FILE` and `stackbed bench --baseline FILE`: the regression gate.
//!
//! `--save` runs each benchmark scenario and seed `--rounds` times in child processes
//! (`stackbed run`) and records its simulated metrics (exact: a seed always gives the same)
//! and its wall-clock samples. `--baseline` runs the same cases again and judges every
//! metric ([`stackbed_core::gate`]): simulated metrics against the file, exactly or within
//! the scenario's `[bench] tolerance`; wall-clock metrics side by side against the baseline
//! build (`--baseline-rev REV` built in a git worktree, `--baseline-bin`, or the file's own
//! revision), the two builds alternating round by round so that a machine that slows down
//! halfway slows both. The children are plain `run` commands reading `report.json`, so any
//! revision with `run --report-dir` can be the baseline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use stackbed_core::gate::{self, Better, Verdict};

#[derive(clap::Args)]
pub struct GateArgs {
    /// Record the scenarios' simulated metrics per seed and their wall-clock samples here.
    #[arg(long, value_name = "FILE", conflicts_with = "baseline")]
    pub save: Option<PathBuf>,
    /// Re-run the cases recorded in FILE and fail (exit 1) on a regression.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// With --baseline: build this revision in a git worktree (target/gate/) and time it
    /// side by side (default: the revision FILE was saved at).
    #[arg(long, value_name = "REV", requires = "baseline", conflicts_with = "baseline_bin")]
    pub baseline_rev: Option<String>,
    /// With --baseline: time this already built binary side by side instead.
    #[arg(long, value_name = "PATH", requires = "baseline")]
    pub baseline_bin: Option<PathBuf>,
    /// Rounds per build; each round runs every case once per build, alternating the order.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seeds A..B for --save (default: --seed); --baseline re-runs the file's seeds.
    #[arg(long)]
    pub seeds: Option<String>,
}

/// The file `--save` writes and `--baseline` reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct BaselineFile {
    pub version: u32,
    pub world: String,
    /// `git rev-parse HEAD` when saved, and whether tracked files differed from it.
    pub revision: String,
    pub dirty: bool,
    pub rounds: usize,
    pub cases: Vec<Case>,
}

/// One scenario and seed: what it simulated and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    pub scenario_file: String,
    pub seed: u64,
    /// `--set` overrides, as KEY=VALUE.
    #[serde(default)]
    pub overrides: Vec<String>,
    pub digest: String,
    pub events: u64,
    /// Name to (value, which way is better).
    pub simulated: BTreeMap<String, (f64, Better)>,
    /// Name (`wall_s`: the simulation, `process_s`: the whole command) to one sample per round.
    pub wall: BTreeMap<String, Vec<f64>>,
}

impl Case {
    fn label(&self) -> String {
        let name = Path::new(&self.scenario_file).file_stem().map(|s| s.to_string_lossy().into_owned());
        let mut label = format!("{} s{}", name.unwrap_or_default(), self.seed);
        for o in &self.overrides {
            label.push_str(&format!(" {o}"));
        }
        label
    }
}

/// One line of the verdict table.
#[derive(Debug, Serialize)]
pub struct Row {
    pub case: String,
    pub metric: String,
    pub before: Option<f64>,
    pub after: Option<f64>,
    pub ratio: Option<f64>,
    pub verdict: Verdict,
    pub wall: bool,
    /// Wall clock: the one-sided Mann-Whitney p-value in the direction of the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    /// Wall clock: each build's samples, one per round.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub before_samples: Vec<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after_samples: Vec<f64>,
}

pub fn save(args: &GateArgs, scenarios: &[PathBuf], seed: u64, overrides: &[String]) -> Result<bool, String> {
    let out = args.save.as_ref().expect("save mode");
    let seeds = match &args.seeds {
        Some(r) => crate::parse_seeds(r)?,
        None => vec![seed],
    };
    let this = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut cases: Vec<Case> = Vec::new();
    for path in scenarios {
        for &seed in &seeds {
            cases.push(empty_case(path, seed, overrides));
        }
    }
    let work = WorkDir::new()?;
    for round in 0..args.rounds.max(1) {
        for (i, case) in cases.iter_mut().enumerate() {
            let sample = run_case(&this, case, &work.path.join(format!("r{round}-c{i}")))?;
            absorb(case, sample)?;
        }
        eprintln!("round {}/{} done", round + 1, args.rounds.max(1));
    }
    let (revision, dirty) = git_revision()?;
    let file = BaselineFile {
        version: 1,
        world: crate::world::NAME.into(),
        revision,
        dirty,
        rounds: args.rounds.max(1),
        cases: cases.clone(),
    };
    crate::write_json(out, &file)?;
    println!("{:<32} {:>10} {:>10} {:>12} {:>9}", "case", "boot p90 s", "failed", "wall_s med", "events");
    for c in &cases {
        println!(
            "{:<32} {:>10.3} {:>10} {:>12.3} {:>9}",
            c.label(),
            c.simulated.get("boot_server.p90_s").map(|v| v.0).unwrap_or(f64::NAN),
            c.simulated.get("iterations.failed").map(|v| v.0).unwrap_or(f64::NAN),
            gate::median(c.wall.get("wall_s").map(Vec::as_slice).unwrap_or(&[])),
            c.events
        );
    }
    println!(
        "saved: {} ({} cases, {} rounds, revision {}{})",
        out.display(),
        cases.len(),
        file.rounds,
        file.revision,
        if dirty { ", with uncommitted changes" } else { "" }
    );
    Ok(true)
}

pub fn check(args: &GateArgs, json: Option<&Path>, extra_overrides: &[String]) -> Result<bool, String> {
    let path = args.baseline.as_ref().expect("baseline mode");
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: BaselineFile = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a baseline written by --save: {e}", path.display()))?;
    if file.world != crate::world::NAME {
        return Err(format!(
            "{} was saved by the {} build; this is the {} build",
            path.display(),
            file.world,
            crate::world::NAME
        ));
    }
    let this = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let rounds = args.rounds.max(1);
    let mut after: Vec<Case> = file
        .cases
        .iter()
        .map(|c| {
            let mut overrides = c.overrides.clone();
            overrides.extend(extra_overrides.iter().cloned());
            empty_case(Path::new(&c.scenario_file), c.seed, &overrides)
        })
        .collect();
    let mut before: Vec<Case> =
        file.cases.iter().map(|c| empty_case(Path::new(&c.scenario_file), c.seed, &c.overrides)).collect();
    // Each scenario's `[bench]` as the file reads now (its tolerances are part
    // of the change), loaded before anything runs so that a bad one costs no rounds.
    let benches: Vec<gate::BenchDecl> = after
        .iter()
        .map(|c| {
            let set = c.overrides.iter().map(|o| o.parse()).collect::<Result<Vec<_>, String>>()?;
            crate::load_with(Path::new(&c.scenario_file), &crate::Overrides { set }).map(|s| s.bench.clone())
        })
        .collect::<Result<_, String>>()?;
    let max_ratio = benches.iter().map(|b| b.max_wall_ratio).fold(gate::BenchDecl::default().max_wall_ratio, f64::max);
    let other = baseline_binary(args, &file, &this)?;
    let work = WorkDir::new()?;
    let started = Instant::now();
    // A warm-up run of each case on each build, not measured: the first start of a binary
    // just built or copied pays for reading it from disk.
    for (i, (a, b)) in after.iter().zip(&before).enumerate() {
        run_case(&this, a, &work.path.join(format!("warm-c{i}-after")))?;
        if let Some(bin) = &other {
            run_case(bin, b, &work.path.join(format!("warm-c{i}-before")))?;
        }
    }
    for round in 0..rounds {
        for i in 0..after.len() {
            // ABBA: the order flips every round, so neither build always runs first.
            let order: [bool; 2] = if round % 2 == 0 { [false, true] } else { [true, false] };
            for is_after in order {
                let dir = work.path.join(format!("r{round}-c{i}-{}", if is_after { "after" } else { "before" }));
                match (&other, is_after) {
                    (_, true) => {
                        let s = run_case(&this, &after[i], &dir)?;
                        absorb(&mut after[i], s)?;
                    }
                    (Some(bin), false) => {
                        let s = run_case(bin, &before[i], &dir)?;
                        absorb(&mut before[i], s)?;
                    }
                    (None, false) => {}
                }
            }
        }
        eprintln!("round {round_no}/{rounds} done", round_no = round + 1);
    }
    let side_by_side = other.is_some();
    if !side_by_side {
        // Only recorded samples to compare with: shown, never judged.
        before = file.cases.clone();
    }
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if side_by_side && rounds < 5 {
        notes.push(format!("{rounds} rounds: no wall-clock difference can be significant below 5"));
    }
    let mut totals: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (((saved, b), a), bench) in file.cases.iter().zip(&before).zip(&after).zip(&benches) {
        let label = a.label();
        if side_by_side && b.digest != saved.digest {
            notes.push(format!(
                "{label}: the baseline build gives digest {} where {} recorded {}: the file is from another tree",
                short(&b.digest),
                path.display(),
                short(&saved.digest)
            ));
        }
        if a.digest != saved.digest {
            notes.push(format!(
                "{label}: the simulation changed (digest {} -> {}, events {} -> {})",
                short(&saved.digest),
                short(&a.digest),
                saved.events,
                a.events
            ));
        }
        rows.extend(simulated_rows(&label, saved, a, bench));
        for (metric, samples) in &a.wall {
            let base = b.wall.get(metric).cloned().unwrap_or_default();
            let t = totals.entry(metric.as_str()).or_default();
            add_rounds(&mut t.0, &base);
            add_rounds(&mut t.1, samples);
            rows.push(wall_row(&label, metric, &base, samples, bench.max_wall_ratio, side_by_side));
        }
    }
    for (metric, (b, a)) in &totals {
        rows.push(wall_row("total", metric, b, a, max_ratio, side_by_side));
    }
    print_table(&rows);
    for n in &notes {
        println!("note: {n}");
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| r.verdict.fails()).collect();
    println!(
        "gate: {} metrics, {} failed; wall clock {} ({rounds} rounds, {:.0} s){}",
        rows.len(),
        failed.len(),
        match &other {
            Some(bin) => format!("side by side with {}", bin.display()),
            None => format!("against the samples in {} (not side by side: not judged)", path.display()),
        },
        started.elapsed().as_secs_f64(),
        if failed.is_empty() { "; pass".to_string() } else { "; FAIL".to_string() }
    );
    if let Some(out) = json {
        crate::write_json(
            out,
            &serde_json::json!({"baseline": path.display().to_string(), "rows": rows, "notes": notes}),
        )?;
        println!("json: {}", out.display());
    }
    Ok(failed.is_empty())
}

fn short(d: &str) -> &str {
    &d[..d.len().min(12)]
}

fn add_rounds(total: &mut Vec<f64>, samples: &[f64]) {
    if total.len() < samples.len() {
        total.resize(samples.len(), 0.0);
    }
    for (t, s) in total.iter_mut().zip(samples) {
        *t += s;
    }
}

fn simulated_rows(label: &str, saved: &Case, now: &Case, bench: &gate::BenchDecl) -> Vec<Row> {
    let row = |metric: &str, before: Option<f64>, after: Option<f64>, verdict: Verdict| Row {
        case: label.into(),
        metric: metric.into(),
        before,
        after,
        ratio: before.zip(after).filter(|(b, _)| *b != 0.0).map(|(b, a)| a / b),
        verdict,
        wall: false,
        p: None,
        before_samples: Vec::new(),
        after_samples: Vec::new(),
    };
    let mut rows = Vec::new();
    for (metric, &(before, better)) in &saved.simulated {
        rows.push(match now.simulated.get(metric) {
            Some(&(after, _)) => {
                let verdict = gate::compare(before, after, better, bench.tolerance_for(metric));
                row(metric, Some(before), Some(after), verdict)
            }
            None => row(metric, Some(before), None, Verdict::Missing),
        });
    }
    for (metric, &(after, _)) in &now.simulated {
        if !saved.simulated.contains_key(metric) {
            rows.push(row(metric, None, Some(after), Verdict::New));
        }
    }
    rows
}

fn wall_row(label: &str, metric: &str, before: &[f64], after: &[f64], max_ratio: f64, judged: bool) -> Row {
    let j = gate::wall(before, after, max_ratio);
    let verdict = if judged { j.verdict } else { Verdict::Unjudged };
    Row {
        case: label.into(),
        metric: metric.into(),
        before: (!before.is_empty()).then_some(j.before_median),
        after: (!after.is_empty()).then_some(j.after_median),
        ratio: (!before.is_empty() && !after.is_empty()).then_some(j.ratio),
        p: Some(if j.ratio >= 1.0 { j.p_slower } else { j.p_faster }),
        verdict,
        wall: true,
        before_samples: before.to_vec(),
        after_samples: after.to_vec(),
    }
}

fn print_table(rows: &[Row]) {
    let num = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    println!("{:<24} {:<44} {:>12} {:>12} {:>8} {:>7}  verdict", "case", "metric", "before", "after", "ratio", "p");
    for r in rows {
        println!(
            "{:<24} {:<44} {:>12} {:>12} {:>8} {:>7}  {}",
            r.case,
            r.metric,
            num(r.before),
            num(r.after),
            r.ratio.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into()),
            r.p.map(|v| format!("{v:.3}")).unwrap_or_default(),
            r.verdict.label(r.wall)
        );
    }
}

fn empty_case(path: &Path, seed: u64, overrides: &[String]) -> Case {
    Case {
        scenario_file: path.display().to_string(),
        seed,
        overrides: overrides.to_vec(),
        digest: String::new(),
        events: 0,
        simulated: BTreeMap::new(),
        wall: BTreeMap::new(),
    }
}

/// What one child run gave.
struct Sample {
    digest: String,
    events: u64,
    simulated: BTreeMap<String, (f64, Better)>,
    wall_s: f64,
    process_s: f64,
}

/// Adds a round's sample to its case; every round of a case must simulate the same run.
fn absorb(case: &mut Case, s: Sample) -> Result<(), String> {
    if case.digest.is_empty() {
        case.digest = s.digest;
        case.events = s.events;
        case.simulated = s.simulated;
    } else if case.digest != s.digest || case.simulated != s.simulated {
        return Err(format!(
            "{}: not deterministic: one round gave digest {}, another {}",
            case.label(),
            short(&case.digest),
            short(&s.digest)
        ));
    }
    case.wall.entry("wall_s".into()).or_default().push(s.wall_s);
    case.wall.entry("process_s".into()).or_default().push(s.process_s);
    Ok(())
}

/// Runs `bin run <scenario> --seed N --report-dir DIR` and reads its report.json.
fn run_case(bin: &Path, case: &Case, dir: &Path) -> Result<Sample, String> {
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg(&case.scenario_file).arg("--seed").arg(case.seed.to_string()).arg("--report-dir").arg(dir);
    for o in &case.overrides {
        cmd.arg("--set").arg(o);
    }
    let started = Instant::now();
    let out = cmd.output().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let process_s = started.elapsed().as_secs_f64();
    // 1 is a run whose checks failed: still a measurement (`passed` is a metric).
    if !matches!(out.status.code(), Some(0) | Some(1)) {
        return Err(format!(
            "{} run {} --seed {} failed ({}): {}",
            bin.display(),
            case.scenario_file,
            case.seed,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let report = dir.join("report.json");
    let text = std::fs::read_to_string(&report).map_err(|e| format!("cannot read {}: {e}", report.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", report.display()))?;
    let _ = std::fs::remove_dir_all(dir);
    let f = |p: &str| v.pointer(p).and_then(serde_json::Value::as_f64);
    let mut simulated = BTreeMap::new();
    let mut put = |name: String, value: Option<f64>, better: Better| {
        if let Some(x) = value {
            simulated.insert(name, (x, better));
        }
    };
    put("passed".into(), v.get("passed").and_then(|p| p.as_bool()).map(|b| b as u8 as f64), Better::Higher);
    put("iterations.ok".into(), f("/iterations/ok"), Better::Higher);
    put("iterations.failed".into(), f("/iterations/failed"), Better::Lower);
    put("simulated_s".into(), f("/simulated_s"), Better::Lower);
    let mut actions: Vec<&serde_json::Value> =
        v.get("actions").and_then(|a| a.as_array()).map(|a| a.iter().collect()).unwrap_or_default();
    if let Some(b) = v.get("boot_to_active") {
        actions.push(b);
    }
    for a in actions {
        let Some(name) = a.get("action").and_then(|n| n.as_str()) else { continue };
        for (field, better) in [
            ("median_s", Better::Lower),
            ("p90_s", Better::Lower),
            ("p95_s", Better::Lower),
            ("max_s", Better::Lower),
            ("mean_s", Better::Lower),
            ("success_pct", Better::Higher),
        ] {
            put(format!("{name}.{field}"), a.get(field).and_then(|x| x.as_f64()), better);
        }
    }
    Ok(Sample {
        digest: v.get("digest").and_then(|d| d.as_str()).unwrap_or_default().to_string(),
        events: v.get("events").and_then(|e| e.as_u64()).unwrap_or(0),
        simulated,
        wall_s: f("/wall_s").ok_or_else(|| format!("{}: no wall_s", report.display()))?,
        process_s,
    })
}

/// The binary to time side by side, or None when only the file's samples are available.
fn baseline_binary(args: &GateArgs, file: &BaselineFile, this: &Path) -> Result<Option<PathBuf>, String> {
    if let Some(bin) = &args.baseline_bin {
        if !bin.is_file() {
            return Err(format!("--baseline-bin {}: no such file", bin.display()));
        }
        return Ok(Some(bin.clone()));
    }
    let (rev, explicit) = match &args.baseline_rev {
        Some(r) => (r.clone(), true),
        None => (file.revision.clone(), false),
    };
    let commit = match git(&["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")]) {
        Ok(c) if !c.is_empty() => c,
        _ if explicit => return Err(format!("--baseline-rev {rev}: not a commit of this repository")),
        _ => {
            eprintln!("note: revision {rev} of the baseline is not in this repository: wall clock not judged");
            return Ok(None);
        }
    };
    let (head, dirty) = git_revision()?;
    if commit == head && !dirty {
        eprintln!("baseline revision {} is this tree: timing this binary against itself", short(&commit));
        return Ok(Some(this.to_path_buf()));
    }
    build_revision(&commit).map(Some)
}

/// Builds `commit` in a worktree under target/gate/ (once: the binary is kept by commit).
fn build_revision(commit: &str) -> Result<PathBuf, String> {
    let root = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    let gate_dir = root.join("target").join("gate");
    let world = crate::world::NAME;
    let bin = gate_dir.join("bin").join(format!("stackbed-{world}-{}", short(commit)));
    if bin.is_file() {
        eprintln!("baseline {}: {} (built before)", short(commit), bin.display());
        return Ok(bin);
    }
    let tree = gate_dir.join(format!("src-{}", short(commit)));
    let target = gate_dir.join(format!("target-{world}"));
    if tree.exists() {
        let _ = git(&["worktree", "remove", "--force", &tree.display().to_string()]);
        let _ = std::fs::remove_dir_all(&tree);
    }
    git(&["worktree", "add", "--detach", &tree.display().to_string(), commit])?;
    eprintln!("building baseline {} in {} (once per revision)", short(commit), tree.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&tree).args(["build", "--release", "-q", "--target-dir"]).arg(&target);
    if world == "sim" {
        cmd.args(["--config", "build.rustflags=['--cfg','madsim']"]);
    }
    cmd.args(["-p", "stackbed-cli", "--bin", "stackbed"]);
    // The parent cargo's settings must not leak into the baseline's build.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    let built = target.join("release").join("stackbed");
    let result = if status.success() && built.is_file() {
        std::fs::create_dir_all(bin.parent().expect("bin dir"))
            .and_then(|_| std::fs::copy(&built, &bin))
            .map(|_| bin.clone())
            .map_err(|e| format!("cannot keep the baseline binary at {}: {e}", bin.display()))
    } else {
        Err(format!("building revision {} failed ({status})", short(commit)))
    };
    let _ = git(&["worktree", "remove", "--force", &tree.display().to_string()]);
    result
}

/// Runs git with `args`; its trimmed stdout, or why it failed.
pub(crate) fn git(args: &[&str]) -> Result<String, String> {
    let out = Command::new("git").args(args).output().map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// HEAD's full hash, and whether tracked files differ from it.
fn git_revision() -> Result<(String, bool), String> {
    let head = git(&["rev-parse", "HEAD"]).unwrap_or_else(|_| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()).unwrap_or(false);
    Ok((head, dirty))
}

/// A scratch directory for the children's reports, removed when dropped.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new() -> Result<WorkDir, String> {
        let path = std::env::temp_dir().join(format!("stackbed-gate-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
