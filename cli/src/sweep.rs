//! `sweep`: many seeds of one scenario in parallel child processes, failing seeds grouped by
//! what failed, and a JSON summary that merges across shards (`sweep-merge`).
//!
//! The parent splits the seeds into batches and runs each batch in a child process, the same
//! binary's hidden `sweep-child` subcommand, which prints one `SWEEP-ROW {json}` line per seed
//! as it finishes. A seed that panics is caught in the child and reported as failing with the
//! panic's message and location; a child that dies (abort, signal, exit) fails the seed it
//! was running with its exit status, and the rest of its batch runs again in a new child, so
//! no other seed's result is lost.
//!
//! Everything but the `timing` object is a function of the scenario, the revision, the
//! overrides and the seed set: rows are sorted by seed and groups are a `BTreeMap`, so the same
//! sweep (whatever `--jobs`) writes the same JSON once `timing` is stripped.

use stackbed_core::sync::guard;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The prefix of a child's result lines; anything else it prints is ignored.
const ROW_MARK: &str = "SWEEP-ROW ";

/// Test hook: `STACKBED_SWEEP_FAULT=panic:N` makes the child panic instead of running seed N,
/// `abort:N` makes it abort (a crash), so tests can check that both are reported and that no
/// other seed is lost. Nothing else reads it.
const FAULT_ENV: &str = "STACKBED_SWEEP_FAULT";

#[derive(clap::Args)]
pub struct SweepArgs {
    /// The scenario file (TOML).
    pub scenario: PathBuf,
    /// Seeds A..B, both included (default: the scenario's seeds).
    #[arg(long)]
    pub seeds: Option<String>,
    /// Child processes at once (default: the machine's cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Run only shard I of N: the I-th seed of the range and every N-th after it (1-based).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Where the JSON summary goes (default: reports/<scenario name>/sweep/sweep.json, or
    /// shard-I-of-N.json with --shard).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write JUnit XML here: one test case per invariant and SLA criterion per seed.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// The `--set KEY=VALUE` overrides: they reach every child, every replay command, the
    /// summary's `overrides`, and the merge's check that shards ran the same experiment.
    #[command(flatten)]
    pub overrides: crate::Overrides,
}

impl SweepArgs {
    /// The `--set` overrides as KEY=VALUE strings.
    fn overrides(&self) -> Vec<String> {
        self.overrides.set.iter().map(|o| o.to_string()).collect()
    }
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Summaries written by `sweep` (typically one per shard).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Where the merged summary goes (default: reports/<scenario name>/sweep/sweep.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The hidden child: runs the given seeds one after the other, one JSON line each.
#[derive(clap::Args)]
pub struct ChildArgs {
    pub scenario: PathBuf,
    #[arg(long, value_delimiter = ',', required = true)]
    pub seeds_list: Vec<u64>,
    #[arg(long)]
    pub revision: String,
    #[command(flatten)]
    pub overrides: crate::Overrides,
}

/// One seed's result. Deterministic: no wall time here (see `Timing`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub seed: u64,
    pub passed: bool,
    /// The event-log digest (empty when the run did not produce a report).
    pub digest: String,
    /// The first violated invariant, if any.
    pub invariant: Option<String>,
    /// The group a failing seed falls in: the invariant's name, `aborted: time limit`,
    /// `aborted: could not start`, `panic at FILE:LINE:COL`, `crashed: signal N`, `error`.
    pub failure: Option<String>,
    /// The violation's detail, the abort reason, the panic message, the exit status.
    pub detail: Option<String>,
    pub simulated_s: f64,
    pub events: u64,
    /// The run's checks (run finished, each invariant, each SLA criterion), for `--junit`;
    /// empty when the seed produced no report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<stackbed_services::checks::Check>,
}

/// What a child prints per seed (after `ROW_MARK`).
#[derive(Serialize, Deserialize)]
struct ChildLine {
    row: Row,
    wall_s: f64,
}

/// The failing seeds that share one cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub count: usize,
    /// Compressed: `3, 7..9`.
    pub seeds: String,
    pub first_seed: u64,
    /// The command that replays the group's first seed.
    pub replay: String,
}

/// Wall-clock figures, the only part of a summary that differs between identical sweeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// The sweep's wall time (a merge: the sum of its inputs').
    pub wall_s: f64,
    /// Child processes at once (a merge: the largest of its inputs').
    pub jobs: usize,
    /// Each seed's wall time.
    pub seed_wall_s: BTreeMap<u64, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub scenario_file: String,
    pub world: String,
    pub revision: String,
    /// The `--set` overrides every seed ran with.
    pub overrides: Vec<String>,
    /// The `--seeds` range asked for (a merge of different ranges: each, comma-separated).
    pub range: String,
    /// The shards run, as `I/N`; empty: the whole range.
    pub shards: Vec<String>,
    /// The seeds in `rows`, compressed.
    pub seeds: String,
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub groups: BTreeMap<String, Group>,
    pub rows: Vec<Row>,
    pub timing: Timing,
}

// ---- pure parts -------------------------------------------------------------------------

/// `I/N` with 1 <= I <= N.
pub fn parse_shard(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("--shard wants I/N with 1 <= I <= N (e.g. 2/4), got `{text}`");
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let i: u64 = i.trim().parse().map_err(|_| bad())?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 || i == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

/// Shard I of N: the I-th seed of `seeds` and every N-th after it.
pub fn shard_seeds(seeds: &[u64], shard: Option<(u64, u64)>) -> Vec<u64> {
    match shard {
        None => seeds.to_vec(),
        Some((i, n)) => seeds.iter().skip((i - 1) as usize).step_by(n as usize).copied().collect(),
    }
}

/// Seeds per child: small enough that every job gets several batches (the progress bar moves
/// and a slow batch does not leave a core idle at the end), large enough to amortise start-up.
pub fn batch_size(seeds: usize, jobs: usize) -> usize {
    seeds.div_ceil(jobs.max(1) * 4).clamp(1, 32)
}

/// Seeds as ranges: `1..3, 7, 9..12` (sorted, duplicates dropped); `-` for none.
pub fn compress(seeds: &[u64]) -> String {
    let mut sorted = seeds.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        parts.push(if sorted[i] == start { start.to_string() } else { format!("{start}..{}", sorted[i]) });
        i += 1;
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

pub fn replay(world: &str, scenario_file: &str, seed: u64, overrides: &[String]) -> String {
    let mut out = format!("cargo {world} run {scenario_file} --seed {seed}");
    for o in overrides {
        out += &format!(" --set {o}");
    }
    out
}

/// The group of an aborted run: its reason without the run's particulars.
fn abort_group(reason: &str) -> String {
    if reason.starts_with("time limit") {
        "aborted: time limit".into()
    } else if reason.contains("registered within") {
        "aborted: could not start".into()
    } else {
        let head: String = reason.split([':', '.']).next().unwrap_or("").chars().take(60).collect();
        format!("aborted: {head}")
    }
}

/// `crashed: signal 6`, `crashed: exit code 101`.
fn crash_group(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "crashed: could not run the child".into(),
        Some(s) => match (s.code(), s.signal()) {
            (_, Some(sig)) => format!("crashed: signal {sig}"),
            (Some(code), _) => format!("crashed: exit code {code}"),
            _ => format!("crashed: {s}"),
        },
    }
}

impl Summary {
    /// Sorts the rows, counts, and groups the failing seeds.
    pub fn regroup(&mut self) {
        self.rows.sort_by_key(|r| r.seed);
        self.total = self.rows.len();
        self.passed = self.rows.iter().filter(|r| r.passed).count();
        self.failed = self.total - self.passed;
        self.seeds = compress(&self.rows.iter().map(|r| r.seed).collect::<Vec<_>>());
        let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for r in self.rows.iter().filter(|r| !r.passed) {
            by.entry(r.failure.clone().unwrap_or_else(|| "error".into())).or_default().push(r.seed);
        }
        self.groups = by
            .into_iter()
            .map(|(k, seeds)| {
                let group = Group {
                    count: seeds.len(),
                    seeds: compress(&seeds),
                    first_seed: seeds[0],
                    replay: replay(&self.world, &self.scenario_file, seeds[0], &self.overrides),
                };
                (k, group)
            })
            .collect();
    }
}

/// Merges shard summaries: the same scenario, world, revision and overrides; a seed in
/// several inputs must have the same result in each and is kept once.
pub fn merge(inputs: Vec<(String, Summary)>) -> Result<Summary, String> {
    let mut it = inputs.into_iter();
    let (first_name, mut out) = it.next().ok_or("sweep-merge: no summary to merge")?;
    let mut whole = out.shards.is_empty();
    let mut shards: BTreeSet<String> = out.shards.iter().cloned().collect();
    let mut ranges = vec![out.range.clone()];
    let mut rows: BTreeMap<u64, (Row, String)> = BTreeMap::new();
    for r in std::mem::take(&mut out.rows) {
        rows.insert(r.seed, (r, first_name.clone()));
    }
    for (name, s) in it {
        for (what, a, b) in [
            ("scenario", &out.scenario, &s.scenario),
            ("world", &out.world, &s.world),
            ("revision", &out.revision, &s.revision),
        ] {
            if a != b {
                return Err(format!(
                    "cannot merge: {first_name} is {what} `{a}` but {name} is {what} `{b}`; \
                     merge only shards of one sweep"
                ));
            }
        }
        if out.overrides != s.overrides {
            return Err(format!(
                "cannot merge: {first_name} ran with overrides [{}] but {name} with [{}]",
                out.overrides.join(" "),
                s.overrides.join(" ")
            ));
        }
        whole |= s.shards.is_empty();
        shards.extend(s.shards.iter().cloned());
        if !ranges.contains(&s.range) {
            ranges.push(s.range.clone());
        }
        out.timing.wall_s += s.timing.wall_s;
        out.timing.jobs = out.timing.jobs.max(s.timing.jobs);
        out.timing.seed_wall_s.extend(s.timing.seed_wall_s.iter().map(|(k, v)| (*k, *v)));
        for r in s.rows {
            match rows.get(&r.seed) {
                Some((have, from)) if *have != r => {
                    return Err(format!(
                        "cannot merge: seed {} differs between {from} (passed {}, digest {}) and {name} \
                         (passed {}, digest {}): not the same build or not deterministic",
                        r.seed, have.passed, have.digest, r.passed, r.digest
                    ))
                }
                Some(_) => {}
                None => {
                    rows.insert(r.seed, (r, name.clone()));
                }
            }
        }
    }
    out.range = ranges.join(", ");
    out.shards = if whole || complete(&shards) { Vec::new() } else { sort_shards(shards) };
    out.rows = rows.into_values().map(|(r, _)| r).collect();
    out.regroup();
    Ok(out)
}

/// Every shard 1/N..N/N of one N.
fn complete(shards: &BTreeSet<String>) -> bool {
    let parsed: Vec<(u64, u64)> = shards.iter().filter_map(|s| parse_shard(s).ok()).collect();
    let Some(&(_, n)) = parsed.first() else { return false };
    parsed.len() == shards.len() && parsed.iter().all(|&(_, m)| m == n) && (1..=n).all(|i| parsed.contains(&(i, n)))
}

fn sort_shards(shards: BTreeSet<String>) -> Vec<String> {
    let mut v: Vec<String> = shards.into_iter().collect();
    v.sort_by_key(|s| parse_shard(s).map(|(i, n)| (n, i)).unwrap_or((u64::MAX, u64::MAX)));
    v
}

/// The end-of-sweep table: counts, then one line per group with its replay command.
pub fn render(s: &Summary) -> String {
    let shard = if s.shards.is_empty() { String::new() } else { format!(" (shard {})", s.shards.join(", ")) };
    let mut out =
        format!("sweep {} | seeds {}{shard} | world {} | revision {}\n", s.scenario, s.range, s.world, s.revision);
    out += &format!("{} seeds run: {} passed, {} failed\n", s.total, s.passed, s.failed);
    if !s.groups.is_empty() {
        let w = s.groups.keys().map(|k| k.len()).max().unwrap_or(0).max(5);
        let ws = s.groups.values().map(|g| g.seeds.len()).max().unwrap_or(0).max(5);
        out += &format!("{:<w$} {:>6}  {:<ws$}  replay (first seed)\n", "group", "failed", "seeds");
        for (k, g) in &s.groups {
            out += &format!("{k:<w$} {:>6}  {:<ws$}  {}\n", g.count, g.seeds, g.replay);
        }
    }
    out
}

// ---- processes ----------------------------------------------------------------------------

/// The group a failed run falls in (None when it passed): its first violated invariant,
/// `aborted: ...`, `sla: CRITERION` or `error`. Sweeps group by it; `shrink` keeps it.
pub fn failure_group(r: &stackbed_services::report::Report) -> Option<String> {
    let v = r.first_violation.violation.as_ref();
    let sla = r.sla.iter().find(|c| !c.success);
    match (v, &r.aborted, sla) {
        _ if r.passed => None,
        (Some(v), _, _) => Some(v.invariant.to_string()),
        (None, Some(a), _) => Some(abort_group(a)),
        (None, None, Some(c)) => Some(format!("sla: {}", c.criterion)),
        (None, None, None) => Some("error".into()),
    }
}

fn row_of_report(r: &stackbed_services::report::Report) -> Row {
    let v = r.first_violation.violation.as_ref();
    let sla = r.sla.iter().find(|c| !c.success);
    let failure = failure_group(r);
    let detail = match (v, &r.aborted, sla) {
        _ if r.passed => None,
        (Some(v), _, _) => Some(format!("{} at {} ms (commit #{}): {}", v.invariant, v.at_ms, v.commit_seq, v.detail)),
        (None, Some(a), _) => Some(a.clone()),
        (None, None, c) => c.map(|c| format!("SLA {}: {}", c.criterion, c.detail)),
    };
    Row {
        seed: r.seed,
        passed: r.passed,
        digest: r.digest.clone(),
        invariant: v.map(|v| v.invariant.to_string()),
        failure,
        detail,
        simulated_s: r.simulated_s,
        events: r.events,
        checks: r.checks(),
    }
}

fn failed_row(seed: u64, failure: String, detail: String) -> Row {
    Row {
        seed,
        passed: false,
        digest: String::new(),
        invariant: None,
        failure: Some(failure),
        detail: Some(detail),
        simulated_s: 0.0,
        events: 0,
        checks: Vec::new(),
    }
}

/// The first panic's message and location since the last `take`.
static PANIC: Mutex<Option<(String, String)>> = Mutex::new(None);

/// The panic hook's record. Poisoning is ignored here only: the record is written whole,
/// and a panic hook must not panic.
fn panic_record() -> std::sync::MutexGuard<'static, Option<(String, String)>> {
    PANIC.lock().unwrap_or_else(|e| e.into_inner()) // panic hook
}

fn take_panic() -> Option<(String, String)> {
    panic_record().take()
}

/// `sweep-child`: runs each seed and prints its row. A panicking seed becomes a failing row.
pub fn child(args: ChildArgs) -> Result<bool, String> {
    let scenario = crate::load_with(&args.scenario, &args.overrides)?;
    let fault = std::env::var(FAULT_ENV).ok();
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let at = info.location().map_or("?".into(), |l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        // On stderr too, for the parent's report should the child then die.
        eprintln!("panicked at {at}: {msg}");
        panic_record().get_or_insert((msg, at));
    }));
    let mut stdout = std::io::stdout().lock();
    for seed in args.seeds_list {
        take_panic();
        if fault.as_deref() == Some(&format!("abort:{seed}")) {
            std::process::abort();
        }
        let started = Instant::now(); // wall clock, outside the simulation
        let opts = crate::options(&scenario, &args.scenario, seed, &args.revision);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if fault.as_deref() == Some(&format!("panic:{seed}")) {
                panic!("planted panic ({FAULT_ENV}) at seed {seed}");
            }
            crate::world::run(&opts)
        }));
        let row = match outcome {
            Ok(Ok(report)) => row_of_report(&report),
            Ok(Err(e)) => failed_row(seed, "error".into(), e),
            Err(_) => {
                let (msg, at) = take_panic().unwrap_or_else(|| ("(no message)".into(), "?".into()));
                failed_row(seed, format!("panic at {at}"), msg)
            }
        };
        let line = ChildLine { row, wall_s: started.elapsed().as_secs_f64() };
        let json = serde_json::to_string(&line).map_err(|e| e.to_string())?;
        writeln!(stdout, "{ROW_MARK}{json}").and_then(|()| stdout.flush()).map_err(|e| e.to_string())?;
    }
    Ok(true)
}

struct Batch<'a> {
    exe: &'a Path,
    scenario_file: &'a Path,
    revision: &'a str,
    overrides: &'a [String],
}

/// Runs `seeds` in one child, handing each row to `on_row` as it arrives. Returns the seeds
/// still to run when the child died (the seed it was running is reported failed).
fn run_batch(b: &Batch<'_>, seeds: &[u64], on_row: &dyn Fn(Row, f64)) -> Vec<u64> {
    let list: Vec<String> = seeds.iter().map(u64::to_string).collect();
    let mut cmd = Command::new(b.exe);
    cmd.arg("sweep-child")
        .arg(b.scenario_file)
        .arg("--seeds-list")
        .arg(list.join(","))
        .arg("--revision")
        .arg(b.revision);
    for o in b.overrides {
        cmd.arg("--set").arg(o);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut last = Instant::now(); // wall clock, outside the simulations
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            on_row(failed_row(seeds[0], crash_group(None), format!("cannot start {}: {e}", b.exe.display())), 0.0);
            return seeds[1..].to_vec();
        }
    };
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            let text = String::from_utf8_lossy(&buf);
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        })
    });
    let mut got = BTreeSet::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let Some(json) = line.strip_prefix(ROW_MARK) else { continue };
            let Ok(l) = serde_json::from_str::<ChildLine>(json) else { continue };
            if seeds.contains(&l.row.seed) && got.insert(l.row.seed) {
                on_row(l.row, l.wall_s);
                last = Instant::now();
            }
        }
    }
    let status = child.wait().ok();
    let tail = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let missing: Vec<u64> = seeds.iter().copied().filter(|s| !got.contains(s)).collect();
    let Some((&dead, rest)) = missing.split_first() else { return Vec::new() };
    let status_text = status.map_or("unknown status".into(), |s| s.to_string());
    let detail = if tail.is_empty() { status_text } else { format!("{status_text}; stderr: {tail}") };
    on_row(failed_row(dead, crash_group(status), detail), last.elapsed().as_secs_f64());
    rest.to_vec()
}

struct Progress {
    done: usize,
    failed: usize,
    rows: Vec<Row>,
    wall: BTreeMap<u64, f64>,
}

/// `sweep`: exit 0 when every seed passed, 1 when any failed; Err (exit 2) on bad input.
pub fn sweep(args: SweepArgs) -> Result<bool, String> {
    let scenario = crate::load_with(&args.scenario, &args.overrides)?;
    let shard = args.shard.as_deref().map(parse_shard).transpose()?;
    let range = match &args.seeds {
        Some(r) => r.trim().to_string(),
        None => {
            let s = scenario.scenario.seeds;
            format!("{}..{}", s.start, s.start + s.count.max(1) - 1)
        }
    };
    let seeds = shard_seeds(&crate::parse_seeds(&range)?, shard);
    let overrides = args.overrides();
    let revision = crate::revision();
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))?;
    let out_file = args.out.clone().unwrap_or_else(|| {
        let dir = PathBuf::from("reports").join(&scenario.scenario.name).join("sweep");
        match shard {
            Some((i, n)) => dir.join(format!("shard-{i}-of-{n}.json")),
            None => dir.join("sweep.json"),
        }
    });
    let size = batch_size(seeds.len(), jobs);
    let queue: Mutex<VecDeque<Vec<u64>>> = Mutex::new(seeds.chunks(size).map(<[u64]>::to_vec).collect());
    let threads = jobs.min(guard(&queue).len());
    let total = seeds.len();
    let progress = Mutex::new(Progress { done: 0, failed: 0, rows: Vec::new(), wall: BTreeMap::new() });
    let batch = Batch { exe: &exe, scenario_file: &args.scenario, revision: &revision, overrides: &overrides };
    let started = Instant::now(); // wall clock, outside the simulations
    if total > 0 {
        crate::progress_of("seeds", 0, total, 0);
    }
    let on_row = |row: Row, wall_s: f64| {
        let mut p = guard(&progress);
        p.done += 1;
        p.failed += usize::from(!row.passed);
        p.wall.insert(row.seed, wall_s);
        p.rows.push(row);
        crate::progress_of("seeds", p.done, total, p.failed);
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let next = guard(&queue).pop_front();
                let Some(seeds) = next else { break };
                let rest = run_batch(&batch, &seeds, &on_row);
                if !rest.is_empty() {
                    guard(&queue).push_front(rest);
                }
            });
        }
    });
    let p = progress.into_inner().expect("a sweep worker panicked holding the progress");
    let mut summary = Summary {
        scenario: scenario.scenario.name.clone(),
        scenario_file: args.scenario.display().to_string(),
        world: crate::world::NAME.to_string(),
        revision,
        overrides,
        range,
        shards: shard.map(|(i, n)| format!("{i}/{n}")).into_iter().collect(),
        seeds: String::new(),
        total: 0,
        passed: 0,
        failed: 0,
        groups: BTreeMap::new(),
        rows: p.rows,
        timing: Timing { wall_s: started.elapsed().as_secs_f64(), jobs, seed_wall_s: p.wall },
    };
    summary.regroup();
    crate::write_json(&out_file, &summary)?;
    let page = crate::pages::write_sweep_page(&out_file, &summary)?;
    print!("{}", render(&summary));
    println!("{} child processes at once, {:.1} s wall", jobs, summary.timing.wall_s);
    println!("summary: {} ({})", out_file.display(), page.display());
    let title = format!("stackbed sweep {}", summary.scenario);
    crate::pages::write_junit(args.junit.as_deref(), &title, &crate::pages::sweep_suites(&summary))?;
    Ok(summary.failed == 0)
}

/// `sweep-merge`: one summary from several, regrouped.
pub fn merge_files(args: MergeArgs) -> Result<bool, String> {
    let mut inputs = Vec::new();
    for f in &args.files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let s: Summary =
            serde_json::from_str(&text).map_err(|e| format!("{} is not a sweep summary: {e}", f.display()))?;
        inputs.push((f.display().to_string(), s));
    }
    let merged = merge(inputs)?;
    let out_file =
        args.out.unwrap_or_else(|| PathBuf::from("reports").join(&merged.scenario).join("sweep").join("sweep.json"));
    crate::write_json(&out_file, &merged)?;
    print!("{}", render(&merged));
    println!("merged {} summaries: {}", args.files.len(), out_file.display());
    Ok(merged.failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seed: u64, failure: Option<&str>) -> Row {
        Row {
            seed,
            passed: failure.is_none(),
            digest: format!("d{seed}"),
            invariant: failure.filter(|f| !f.contains(' ')).map(str::to_string),
            failure: failure.map(str::to_string),
            detail: None,
            simulated_s: 1.0,
            events: 10,
            checks: Vec::new(),
        }
    }

    fn summary(shard: Option<&str>, rows: Vec<Row>) -> Summary {
        let mut s = Summary {
            scenario: "quickstart".into(),
            scenario_file: "scenarios/quickstart.toml".into(),
            world: "sim".into(),
            revision: "abc".into(),
            overrides: Vec::new(),
            range: "1..10".into(),
            shards: shard.map(str::to_string).into_iter().collect(),
            seeds: String::new(),
            total: 0,
            passed: 0,
            failed: 0,
            groups: BTreeMap::new(),
            timing: Timing { wall_s: 1.0, jobs: 2, seed_wall_s: rows.iter().map(|r| (r.seed, 0.1)).collect() },
            rows,
        };
        s.regroup();
        s
    }

    #[test]
    fn seeds_parse() {
        assert_eq!(crate::parse_seeds("1..3").unwrap(), vec![1, 2, 3]);
        assert_eq!(crate::parse_seeds("5..5").unwrap(), vec![5]);
        assert!(crate::parse_seeds("3..1").is_err());
        assert!(crate::parse_seeds("1-3").is_err());
        assert!(crate::parse_seeds("a..3").is_err());
    }

    #[test]
    fn shards_parse_and_validate() {
        assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
        assert_eq!(parse_shard("4/4").unwrap(), (4, 4));
        for bad in ["0/4", "5/4", "1/0", "1", "a/b", "1/4/2", ""] {
            let e = parse_shard(bad).unwrap_err();
            assert!(e.contains("--shard wants I/N"), "{bad}: {e}");
        }
    }

    #[test]
    fn shards_partition_the_range() {
        let seeds: Vec<u64> = (1..=10).collect();
        assert_eq!(shard_seeds(&seeds, None), seeds);
        assert_eq!(shard_seeds(&seeds, Some((1, 3))), vec![1, 4, 7, 10]);
        assert_eq!(shard_seeds(&seeds, Some((2, 3))), vec![2, 5, 8]);
        assert_eq!(shard_seeds(&seeds, Some((3, 3))), vec![3, 6, 9]);
        assert_eq!(shard_seeds(&[1, 2], Some((3, 3))), Vec::<u64>::new());
        let mut all: Vec<u64> = (1..=7).flat_map(|i| shard_seeds(&seeds, Some((i, 7)))).collect();
        all.sort_unstable();
        assert_eq!(all, seeds);
    }

    #[test]
    fn batches_amortise_and_move() {
        assert_eq!(batch_size(40, 2), 5);
        assert_eq!(batch_size(3, 8), 1);
        assert_eq!(batch_size(0, 2), 1);
        assert_eq!(batch_size(100_000, 2), 32);
    }

    #[test]
    fn ranges_compress() {
        assert_eq!(compress(&[]), "-");
        assert_eq!(compress(&[5]), "5");
        assert_eq!(compress(&[9, 1, 2, 3, 7, 10, 11, 12, 2]), "1..3, 7, 9..12");
        assert_eq!(compress(&[4, 5]), "4..5");
    }

    #[test]
    fn failing_seeds_group_by_cause() {
        let s = summary(
            None,
            vec![
                row(4, Some("no_overcommit")),
                row(1, None),
                row(3, Some("no_overcommit")),
                row(2, Some("aborted: time limit")),
                row(7, Some("no_overcommit")),
            ],
        );
        assert_eq!(s.rows.iter().map(|r| r.seed).collect::<Vec<_>>(), vec![1, 2, 3, 4, 7]);
        assert_eq!((s.total, s.passed, s.failed), (5, 1, 4));
        assert_eq!(s.seeds, "1..4, 7");
        assert_eq!(s.groups.keys().collect::<Vec<_>>(), vec!["aborted: time limit", "no_overcommit"]);
        let g = &s.groups["no_overcommit"];
        assert_eq!((g.count, g.seeds.as_str(), g.first_seed), (3, "3..4, 7", 3));
        assert_eq!(g.replay, "cargo sim run scenarios/quickstart.toml --seed 3");
        let o = replay("sim", "x.toml", 2, &["a.b=1".into(), "c=d".into()]);
        assert_eq!(o, "cargo sim run x.toml --seed 2 --set a.b=1 --set c=d");
    }

    #[test]
    fn aborts_and_crashes_group_without_particulars() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(abort_group("time limit 21600s reached before the workload finished"), "aborted: time limit");
        assert_eq!(abort_group("only 3 of 16 compute services registered within 120s"), "aborted: could not start");
        assert_eq!(crash_group(Some(ExitStatus::from_raw(6))), "crashed: signal 6");
        assert_eq!(crash_group(Some(ExitStatus::from_raw(2 << 8))), "crashed: exit code 2");
    }

    #[test]
    fn shards_merge_into_the_whole() {
        let whole = summary(None, (1..=6).map(|s| row(s, (s % 3 == 0).then_some("no_instance_lost"))).collect());
        let part = |i: u64| {
            let rows = whole.rows.iter().filter(|r| (r.seed - 1) % 2 == i - 1).cloned().collect();
            ((format!("shard{i}.json")), summary(Some(&format!("{i}/2")), rows))
        };
        let merged = merge(vec![part(2), part(1), part(1)]).unwrap();
        assert_eq!(merged.shards, Vec::<String>::new());
        assert_eq!(merged.rows, whole.rows);
        assert_eq!(merged.groups, whole.groups);
        assert_eq!((merged.total, merged.failed, merged.seeds.as_str()), (6, 2, "1..6"));
        assert_eq!(merged.timing.wall_s, 3.0);
        let one = merge(vec![part(1)]).unwrap();
        assert_eq!(one.shards, vec!["1/2".to_string()]);
    }

    #[test]
    fn merge_refuses_different_sweeps() {
        let a = summary(Some("1/2"), vec![row(1, None)]);
        let mut b = summary(Some("2/2"), vec![row(2, None)]);
        b.revision = "def".into();
        let e = merge(vec![("a".into(), a.clone()), ("b".into(), b)]).unwrap_err();
        assert!(e.contains("revision `abc`") && e.contains("revision `def`"), "{e}");
        let mut c = summary(Some("2/2"), vec![row(2, None)]);
        c.scenario = "large".into();
        let e = merge(vec![("a".into(), a.clone()), ("c".into(), c)]).unwrap_err();
        assert!(e.contains("scenario"), "{e}");
        let mut d = summary(Some("2/2"), vec![row(1, None)]);
        d.rows[0].digest = "other".into();
        let e = merge(vec![("a".into(), a), ("d".into(), d)]).unwrap_err();
        assert!(e.contains("seed 1 differs"), "{e}");
    }

    #[test]
    fn summary_round_trips_through_json() {
        let s = summary(Some("1/2"), vec![row(1, None), row(3, Some("legal_transitions"))]);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&text).unwrap(), s);
    }
}
