//! The run driver shared by both worlds, and the report: `report.json` and the Rally-style
//! table printed in the terminal.

use stackbed_core::sync::guard;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

use stackbed_core::invariants::InvariantResult;
use stackbed_core::model::{Provider, Record, Resources, Table};
use stackbed_core::scenario::Runner;
use stackbed_core::stats::{self, ActionSummary, UtilSample};

use crate::api::NovaClient;
use crate::ctx::Ctx;
use crate::metrics::ExplainedDecision;
use crate::monitor::{FirstViolation, MonitorRef};
use crate::runner::{final_instances, FinalInstance, Iteration, PassWindow, Workload};
use crate::timeline::{HostHeat, HostSample, Timeline};

/// What one run produced, before it is dressed as a report.
pub struct RunData {
    pub iterations: Vec<Iteration>,
    /// Host utilisation every `workload.sample_interval` while the workload ran.
    pub utilisation: Vec<UtilSample>,
    /// The same samples, host by host.
    pub host_samples: Vec<HostSample>,
    pub instances: Vec<FinalInstance>,
    pub simulated_ms: u64,
    /// Set when the run could not start or finish (computes never registered, time limit).
    pub aborted: Option<String>,
    /// The workload's passes (one unless `workload.passes` says more).
    pub passes: Vec<PassWindow>,
}

/// How long the runner waits for the compute services to register.
pub const COMPUTE_REGISTRATION_WAIT: Duration = Duration::from_secs(120);

fn lock(m: &MonitorRef) -> std::sync::MutexGuard<'_, crate::monitor::Monitor> {
    guard(m)
}

/// Runs the workload against nova-api through `api`, waits for quiet, runs the quiet checks.
/// `submitted` is told when the workload has been submitted (the fault executor's heal phase
/// starts then at the latest), before the wait for every request to become terminal.
pub async fn drive(ctx: Ctx, api: NovaClient, monitor: MonitorRef, submitted: Option<oneshot::Sender<()>>) -> RunData {
    let workload = Workload::new(ctx.clone(), api);
    let mut aborted = None;
    let mut iterations = Vec::new();
    let samples = Arc::new(std::sync::Mutex::new((Vec::new(), Vec::new())));
    if let Err(e) = workload.wait_for_computes(COMPUTE_REGISTRATION_WAIT).await {
        aborted = Some(e);
    } else {
        let sampler = tokio::spawn(sample_utilisation(ctx.clone(), samples.clone()));
        match ctx.clock.timeout(ctx.scenario.scenario.time_limit.0, workload.clone().run()).await {
            Some(its) => iterations = its,
            None => {
                aborted = Some(format!(
                    "time limit {:?} reached before the workload finished",
                    ctx.scenario.scenario.time_limit.0
                ))
            }
        }
        sampler.abort();
    }
    if let Some(tx) = submitted {
        // The executor outlives the workload; if it is gone, nothing is owed to it.
        let _ = tx.send(());
    }
    // Quiet: every accepted request terminal and every deleted instance's allocation
    // released, bounded by the liveness bound.
    let t0 = ctx.clock.now();
    while lock(&monitor).owed() > 0 && ctx.clock.since(t0) < ctx.scenario.workload.liveness_bound.0 {
        ctx.clock.sleep(Duration::from_secs(1)).await;
    }
    let now = ctx.clock.now_ms();
    {
        let mut m = lock(&monitor);
        m.tick(now);
        m.check_quiet(now);
    }
    let instances = final_instances(&ctx).await;
    if matches!(ctx.scenario.workload.runner, Runner::Trace { .. }) {
        // Trace requests are not polled: whether they went ACTIVE is read off the servers.
        let by_id: BTreeMap<&str, &FinalInstance> = instances.iter().map(|i| (i.id.as_str(), i)).collect();
        for it in iterations.iter_mut() {
            if let Some(i) = it.servers.first().and_then(|id| by_id.get(id.as_str())) {
                it.ok = i.launched_at_ms.is_some();
                it.end_ms = i.launched_at_ms.unwrap_or(it.end_ms).max(it.start_ms);
                if !it.ok {
                    it.error = Some(i.fault.clone().unwrap_or_else(|| format!("server went {}", i.status)));
                }
            }
        }
    }
    let (utilisation, host_samples) = std::mem::take(&mut *guard(&samples));
    let passes = workload.pass_windows();
    RunData { iterations, utilisation, host_samples, instances, simulated_ms: now, aborted, passes }
}

/// Samples placement's view of every host until aborted.
async fn sample_utilisation(ctx: Ctx, out: Arc<std::sync::Mutex<(Vec<UtilSample>, Vec<HostSample>)>>) {
    let smallest = ctx
        .scenario
        .flavors
        .iter()
        .map(|f| f.resources())
        .min_by_key(|r| (r.0[1], r.0[0], r.0[2]))
        .unwrap_or(Resources::new(1, 1, 1));
    loop {
        if let Ok(rows) = crate::dbx::scan(&*ctx.db, Table::Providers, "").await {
            let providers: Vec<Provider> = rows
                .into_iter()
                .filter_map(|(_, r)| match r.value {
                    Record::Provider(p) => Some(p),
                    _ => None,
                })
                .collect();
            let t_s = ctx.clock.now_ms() as f64 / 1000.0;
            let sample = stats::utilisation(t_s, &providers, &smallest);
            let hosts = HostSample::of(t_s, &providers);
            let mut out = guard(&out);
            out.0.push(sample);
            out.1.push(hosts);
        }
        ctx.clock.sleep(ctx.scenario.workload.sample_interval.0).await;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IterationSummary {
    pub total: usize,
    pub ok: usize,
    pub failed: usize,
    /// Failure messages with how often each occurred.
    pub errors: BTreeMap<String, usize>,
}

/// One pass of a multi-pass workload (`workload.passes`).
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    /// Counting from 1.
    pub pass: u32,
    /// `cold`: the hosts' image caches were empty when the pass started (the first pass,
    /// unless `model.images.prewarmed`); `warm`: they held what the earlier passes fetched.
    pub cache: &'static str,
    pub start_s: f64,
    pub end_s: f64,
    pub iterations_ok: usize,
    pub iterations_failed: usize,
    /// The actions recorded while the pass ran, and `boot_to_active` of its servers.
    pub actions: Vec<ActionSummary>,
}

/// One action's latency in the last pass minus the first (warm minus cold).
#[derive(Debug, Clone, Serialize)]
pub struct PassDiff {
    pub action: String,
    pub first_count: u64,
    pub last_count: u64,
    pub first_median_s: f64,
    pub last_median_s: f64,
    pub median_diff_s: f64,
    /// Relative to the first pass; none when the first pass's figure is 0.
    pub median_diff_pct: Option<f64>,
    pub first_mean_s: f64,
    pub last_mean_s: f64,
    pub mean_diff_s: f64,
    pub mean_diff_pct: Option<f64>,
}

fn pct(diff: f64, base: f64) -> Option<f64> {
    (base != 0.0).then(|| diff / base * 100.0)
}

fn pass_reports(ctx: &Ctx, data: &RunData) -> (Vec<PassReport>, Vec<PassDiff>) {
    if data.passes.len() < 2 {
        return (Vec::new(), Vec::new());
    }
    let prewarmed = ctx.scenario.model.images.enabled && ctx.scenario.model.images.prewarmed;
    let passes: Vec<PassReport> = data
        .passes
        .iter()
        .map(|w| {
            let mut actions = ctx.metrics.summaries_between(&w.from, &w.to);
            let boots: Vec<(f64, bool)> = data
                .instances
                .iter()
                .filter(|i| (w.start_ms..w.end_ms).contains(&i.created_at_ms))
                .map(|i| match i.launched_at_ms {
                    Some(l) => (l.saturating_sub(i.created_at_ms) as f64 / 1000.0, true),
                    None => (0.0, false),
                })
                .collect();
            actions.push(stats::summarize("boot_to_active", &boots));
            let its = data.iterations.iter().filter(|i| i.pass == w.pass);
            let (ok, failed) = its.fold((0, 0), |(o, f), i| if i.ok { (o + 1, f) } else { (o, f + 1) });
            PassReport {
                pass: w.pass + 1,
                cache: if w.pass == 0 && !prewarmed { "cold" } else { "warm" },
                start_s: w.start_ms as f64 / 1000.0,
                end_s: w.end_ms as f64 / 1000.0,
                iterations_ok: ok,
                iterations_failed: failed,
                actions,
            }
        })
        .collect();
    let (first, last) = (&passes[0], &passes[passes.len() - 1]);
    let diffs = first
        .actions
        .iter()
        .filter_map(|a| {
            let b = last.actions.iter().find(|b| b.action == a.action)?;
            let (dm, da) = (b.median_s - a.median_s, b.mean_s - a.mean_s);
            Some(PassDiff {
                action: a.action.clone(),
                first_count: a.count,
                last_count: b.count,
                first_median_s: a.median_s,
                last_median_s: b.median_s,
                median_diff_s: dm,
                median_diff_pct: pct(dm, a.median_s),
                first_mean_s: a.mean_s,
                last_mean_s: b.mean_s,
                mean_diff_s: da,
                mean_diff_pct: pct(da, a.mean_s),
            })
        })
        .collect();
    (passes, diffs)
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub scenario_file: String,
    pub seed: u64,
    /// `sim` (madsim) or `real` (tokio).
    pub world: &'static str,
    /// Which hypervisor ran the guests: `sim`, `test` (libvirt test driver), `qemu-tcg` (QEMU without KVM), `kvm`.
    pub hypervisor: String,
    pub revision: String,
    pub parameters: serde_json::Value,
    pub actions: Vec<ActionSummary>,
    /// Boot latency from the servers' own timestamps (created_at to launched_at), free of
    /// the client's polling interval.
    pub boot_to_active: ActionSummary,
    /// Each pass of a multi-pass workload (empty for one pass).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub passes: Vec<PassReport>,
    /// Per action: the last pass minus the first (warm minus cold), absolute and in %.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pass_diff: Vec<PassDiff>,
    pub counters: BTreeMap<String, u64>,
    /// The scheduler's first decision and first NoValidHosts, explained filter by filter
    /// and weigher by weigher (what `stackbed explain` prints for a scenario's request).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub explained: Vec<ExplainedDecision>,
    pub utilisation: Vec<UtilSample>,
    /// Each host's utilisation at each sample (hosts grouped beyond 64 rows).
    pub host_utilisation: HostHeat,
    /// Per action, the successful samples' durations at each whole percentile 0..=100.
    pub latency_quantiles: Vec<(String, Vec<f64>)>,
    /// Iterations started, ended and in flight over simulated time.
    pub timeline: Timeline,
    pub iterations: IterationSummary,
    pub final_states: BTreeMap<String, usize>,
    pub instances: Vec<FinalInstance>,
    pub invariants: Vec<InvariantResult>,
    pub first_violation: FirstViolation,
    pub aborted: Option<String>,
    pub digest: String,
    pub events: u64,
    /// Committed database writes per table.
    pub db_writes: BTreeMap<&'static str, u64>,
    pub simulated_s: f64,
    pub wall_s: f64,
    /// The fault schedule resolved for this seed and what the executor applied of it.
    #[serde(skip_serializing_if = "FaultsReport::is_empty")]
    pub faults: FaultsReport,
    /// Losses, retries, duplicates and failovers underneath the workload, and what each
    /// fault cost it (downtime, MTTR, throughput): `anomalies.rs`.
    pub anomalies: crate::anomalies::Anomalies,
    /// The scenario's `[sla]` criteria, each with its verdict.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sla: Vec<stackbed_core::sla::SlaResult>,
    pub passed: bool,
    pub replay: String,
}

/// What a world adds to the run's options when it reports.
pub struct ReportContext<'a> {
    pub opts: &'a RunOptions,
    pub world: &'static str,
    pub hypervisor: String,
    pub wall_s: f64,
    /// The faults the world ran (the real world runs none yet).
    pub faults: FaultsReport,
}

/// One thing the fault executor did, as it did it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppliedFault {
    pub at_ms: u64,
    /// `start`, `end` (its duration ran out) or `heal` (the heal phase ended it).
    pub event: &'static str,
    /// The action and its targets, as [`stackbed_core::faults::ResolvedFault`] prints them.
    pub fault: String,
}

/// The resolved fault schedule of the run's seed and what was applied of it, in order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultsReport {
    pub schedule: stackbed_core::faults::FaultSchedule,
    pub applied: Vec<AppliedFault>,
    /// When the heal phase began (every fault cleared, every node back), if it did.
    pub healed_at_ms: Option<u64>,
}

impl FaultsReport {
    fn is_empty(&self) -> bool {
        self.schedule.is_empty() && self.applied.is_empty()
    }
}

impl Report {
    pub fn build(ctx: &Ctx, monitor: &MonitorRef, data: RunData, rc: ReportContext<'_>) -> Report {
        let m = lock(monitor);
        let (digest, events) = m.digest();
        let mut errors = BTreeMap::new();
        for it in data.iterations.iter().filter(|i| !i.ok) {
            let e = it.error.clone().unwrap_or_default();
            // Group by the message's first sentence so that ids do not split the counts.
            let key: String = e.split(['.', ':']).next().unwrap_or("").chars().take(80).collect();
            *errors.entry(key).or_insert(0) += 1;
        }
        let ok = data.iterations.iter().filter(|i| i.ok).count();
        let failed = data.iterations.len() - ok;
        let mut final_states = BTreeMap::new();
        for i in &data.instances {
            *final_states.entry(i.status.to_string()).or_insert(0) += 1;
        }
        let invariants = m.results();
        let first_violation = m.first_violation().clone();
        let samples: Vec<stackbed_core::sla::IterationSample> = data
            .iterations
            .iter()
            .map(|i| stackbed_core::sla::IterationSample { duration_s: i.duration_ms as f64 / 1000.0, ok: i.ok })
            .collect();
        let sla = ctx.scenario.sla.check(&samples, &ctx.metrics.successful());
        let passed = data.aborted.is_none() && first_violation.violation.is_none() && sla.iter().all(|c| c.success);
        let (passes, pass_diff) = pass_reports(ctx, &data);
        let counters = ctx.metrics.counters();
        let anomalies = crate::anomalies::Anomalies::of(&counters, &data.iterations, &rc.faults);
        Report {
            scenario: ctx.scenario.scenario.name.clone(),
            scenario_file: rc.opts.scenario_file.clone(),
            seed: rc.opts.seed,
            world: rc.world,
            hypervisor: rc.hypervisor,
            revision: rc.opts.revision.clone(),
            parameters: serde_json::to_value(&*ctx.scenario).unwrap_or_default(),
            actions: ctx.metrics.summaries(),
            boot_to_active: stats::summarize(
                "boot_to_active",
                &data
                    .instances
                    .iter()
                    .map(|i| match i.launched_at_ms {
                        Some(l) => (l.saturating_sub(i.created_at_ms) as f64 / 1000.0, true),
                        None => (0.0, false),
                    })
                    .collect::<Vec<_>>(),
            ),
            passes,
            pass_diff,
            counters,
            explained: ctx.metrics.explanations(),
            utilisation: data.utilisation,
            host_utilisation: HostHeat::of(&data.host_samples),
            latency_quantiles: ctx.metrics.quantiles(),
            timeline: Timeline::of(&data.iterations, data.simulated_ms),
            iterations: IterationSummary { total: data.iterations.len(), ok, failed, errors },
            final_states,
            instances: data.instances,
            invariants,
            first_violation,
            aborted: data.aborted,
            digest,
            events,
            db_writes: m.writes_by_table(),
            simulated_s: data.simulated_ms as f64 / 1000.0,
            wall_s: rc.wall_s,
            faults: rc.faults,
            anomalies,
            sla,
            passed,
            replay: rc.opts.replay.clone(),
        }
    }

    /// The Rally-style table, counters, final states, invariants and digest.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let line = format!(
            "+{}+",
            [
                "-".repeat(32),
                "-".repeat(7),
                "-".repeat(9),
                "-".repeat(9),
                "-".repeat(9),
                "-".repeat(9),
                "-".repeat(9),
                "-".repeat(9),
                "-".repeat(9)
            ]
            .join("+")
        );
        let time = if self.world == "sim" {
            format!("{:.1} s simulated in {:.2} s wall", self.simulated_s, self.wall_s)
        } else {
            format!("{:.2} s wall", self.wall_s)
        };
        out += &format!(
            "scenario {} | seed {} | world {} | hypervisor {} | {time}\n",
            self.scenario, self.seed, self.world, self.hypervisor
        );
        out += &line;
        out += "\n";
        out += &format!(
            "| {:<30} | {:>5} | {:>7} | {:>7} | {:>7} | {:>7} | {:>7} | {:>7} | {:>7} |\n",
            "Action", "Count", "Min (s)", "Median", "90%ile", "95%ile", "Max", "Avg", "Success"
        );
        out += &line;
        out += "\n";
        for a in &self.actions {
            out += &format!(
                "| {:<30} | {:>5} | {:>7.3} | {:>7.3} | {:>7.3} | {:>7.3} | {:>7.3} | {:>7.3} | {:>6.1}% |\n",
                a.action, a.count, a.min_s, a.median_s, a.p90_s, a.p95_s, a.max_s, a.mean_s, a.success_pct
            );
        }
        out += &line;
        out += "\n";
        out += &self.render_passes();
        out += &self.render_explained();
        if !self.faults.is_empty() {
            out += &format!("{}\n", self.faults.schedule);
            for a in &self.faults.applied {
                out += &format!("  {:>9.1}s {:<5} {}\n", a.at_ms as f64 / 1000.0, a.event, a.fault);
            }
        }
        let counters: Vec<String> = self.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out += &format!("counters: {}\n", if counters.is_empty() { "-".to_string() } else { counters.join(" ") });
        out += &self.anomalies.render();
        let states: Vec<String> = self.final_states.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out += &format!(
            "iterations: {} ok, {} failed | final states: {}\n",
            self.iterations.ok,
            self.iterations.failed,
            if states.is_empty() { "-".to_string() } else { states.join(" ") }
        );
        for (err, n) in &self.iterations.errors {
            out += &format!("  {n} x {err}\n");
        }
        let bad: Vec<String> = self
            .invariants
            .iter()
            .filter(|i| i.violations > 0)
            .map(|i| format!("{} ({})", i.name, i.violations))
            .collect();
        out += &format!(
            "invariants: {} checked after each of {} commits: {}\n",
            self.invariants.len(),
            self.invariants.first().map_or(0, |i| i.checked_events),
            if bad.is_empty() { "all hold".to_string() } else { format!("VIOLATED {}", bad.join(", ")) }
        );
        for c in &self.sla {
            out += &format!("sla {}: {} ({})\n", c.criterion, if c.success { "pass" } else { "FAIL" }, c.detail);
        }
        if let Some(a) = &self.aborted {
            out += &format!("ABORTED: {a}\n");
        }
        out += &format!("digest: {} ({} events)\n", self.digest, self.events);
        out
    }

    /// One line per explained decision: the filters' survivors, then the pick or the reason
    /// for NoValidHost; the full explanation is in report.json (`explained`).
    fn render_explained(&self) -> String {
        let mut out = String::new();
        for e in &self.explained {
            let x = &e.explanation;
            let steps: Vec<String> = x
                .steps
                .iter()
                .filter(|s| s.active)
                .map(|s| format!("{} {}", s.filter.trim_end_matches("Filter"), s.kept.len()))
                .collect();
            let outcome = match (&x.no_valid_host, e.decided.split_first()) {
                (Some(nvh), _) => format!("NoValidHost: {}", nvh.reason),
                (None, Some((pick, alternates))) => format!("pick {pick}, then [{}]", alternates.join(", ")),
                (None, None) => "no pick".to_string(),
            };
            out += &format!(
                "explained ({}, {}): request {} ({}, {}): {} hosts -> {} -> {}\n",
                e.why,
                e.strategy,
                e.request,
                x.flavor,
                x.image,
                x.hosts_in,
                if steps.is_empty() { "no active filter".to_string() } else { steps.join(" -> ") },
                outcome
            );
        }
        out
    }

    /// The passes of a multi-pass workload: per action, the first and the last pass's median
    /// and mean, and last minus first (empty for one pass).
    fn render_passes(&self) -> String {
        let (Some(first), Some(last)) = (self.passes.first(), self.passes.last()) else {
            return String::new();
        };
        let mut out = String::new();
        for p in &self.passes {
            out += &format!(
                "pass {} ({} image caches): {:.1}-{:.1} s, {} ok, {} failed\n",
                p.pass, p.cache, p.start_s, p.end_s, p.iterations_ok, p.iterations_failed
            );
        }
        let widths = [32, 11, 10, 10, 10, 8, 10, 10, 10, 8];
        let line = format!("+{}+\n", widths.map(|w| "-".repeat(w)).join("+"));
        let (a, b) = (format!("{} {}", first.pass, first.cache), format!("{} {}", last.pass, last.cache));
        out += &format!(
            "per action: pass {} ({}) and pass {} ({}), and the difference (pass {} minus pass {})\n",
            first.pass, first.cache, last.pass, last.cache, last.pass, first.pass
        );
        out += &line;
        out += &format!(
            "| {:<30} | {:>9} | {:>8} | {:>8} | {:>8} | {:>6} | {:>8} | {:>8} | {:>8} | {:>6} |\n",
            "Action", "Count", "Median", "Median", "diff (s)", "diff", "Avg", "Avg", "diff (s)", "diff"
        );
        out += &format!(
            "| {:<30} | {:>9} | {:>8} | {:>8} | {:>8} | {:>6} | {:>8} | {:>8} | {:>8} | {:>6} |\n",
            "", "", a, b, "", "%", a, b, "", "%"
        );
        out += &line;
        let pct = |p: Option<f64>| p.map_or("-".to_string(), |p| format!("{p:+.0}%"));
        for d in &self.pass_diff {
            out += &format!(
                "| {:<30} | {:>9} | {:>8.3} | {:>8.3} | {:>+8.3} | {:>6} | {:>8.3} | {:>8.3} | {:>+8.3} | {:>6} |\n",
                d.action,
                format!("{}/{}", d.first_count, d.last_count),
                d.first_median_s,
                d.last_median_s,
                d.median_diff_s,
                pct(d.median_diff_pct),
                d.first_mean_s,
                d.last_mean_s,
                d.mean_diff_s,
                pct(d.mean_diff_pct)
            );
        }
        out += &line;
        out
    }

    /// What to print when the run failed: seed, first violating event, replay command.
    pub fn failure_text(&self) -> Option<String> {
        if self.passed {
            return None;
        }
        let mut out = format!("FAILED: scenario {} seed {}\n", self.scenario, self.seed);
        if !self.faults.schedule.is_empty() {
            out += &format!("{}\n", self.faults.schedule);
        }
        if let Some(v) = &self.first_violation.violation {
            out += &format!(
                "first violation: {} at {} ms (commit #{}): {}\n",
                v.invariant, v.at_ms, v.commit_seq, v.detail
            );
            for e in &self.first_violation.event {
                out += &format!("  event: {e}\n");
            }
        }
        if let Some(a) = &self.aborted {
            out += &format!("aborted: {a}\n");
        }
        for c in self.sla.iter().filter(|c| !c.success) {
            out += &format!("SLA {} failed: {}\n", c.criterion, c.detail);
        }
        out += &format!("replay: {}\n", self.replay);
        Some(out)
    }
}

/// What the CLI hands either world's `run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: Arc<stackbed_core::scenario::Scenario>,
    pub scenario_file: String,
    pub seed: u64,
    pub revision: String,
    /// The exact command that replays this run.
    pub replay: String,
}
