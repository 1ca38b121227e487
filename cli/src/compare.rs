//! `compare`: every strategy on identical workloads and seeds, one table with 95% intervals
//! across seeds, written as JSON and CSV, with SVG plots (utilisation over time, boot latency
//! CDF per strategy).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plotters::prelude::*;
use serde::Serialize;

use stackbed_core::scenario::Scenario;
use stackbed_core::stats::{mean_ci95, percentile};
use stackbed_services::report::Report;

/// One run's figures, the columns of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub strategy: String,
    pub seed: u64,
    pub passed: bool,
    pub accepted: f64,
    pub no_valid_host: f64,
    pub reschedules: f64,
    pub boot_p50_s: f64,
    pub boot_p99_s: f64,
    /// Per class (VCPU, MEMORY_MB, DISK_GB), averaged over the samples taken while requests
    /// were arriving.
    pub util_mean: [f64; 3],
    pub util_std: [f64; 3],
    pub stranded: [f64; 3],
    pub hosts_in_use: f64,
    pub digest: String,
}

/// A metric across seeds: mean and the 95% interval's half-width.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Interval {
    pub mean: f64,
    pub ci95: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StrategyRow {
    pub strategy: String,
    pub seeds: usize,
    pub failed_runs: usize,
    pub metrics: BTreeMap<&'static str, Interval>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub revision: String,
    pub seeds: Vec<u64>,
    pub strategies: Vec<StrategyRow>,
    pub runs: Vec<RunFigures>,
}

/// Boot latencies (created_at to launched_at) of every server that went ACTIVE, sorted.
pub fn boot_latencies(r: &Report) -> Vec<f64> {
    let mut v: Vec<f64> = r
        .instances
        .iter()
        .filter_map(|i| i.launched_at_ms.map(|l| l.saturating_sub(i.created_at_ms) as f64 / 1000.0))
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

pub fn figures(strategy: &str, scenario: &Scenario, r: &Report) -> RunFigures {
    let lat = boot_latencies(r);
    // Utilisation while requests arrive: samples up to the last arrival (the whole run
    // for the closed-loop runners).
    let last_arrival = scenario.trace.last().map(|t| t.arrival_s).unwrap_or(f64::INFINITY);
    let during: Vec<_> = r.utilisation.iter().filter(|s| s.t_s <= last_arrival && s.hosts_in_use > 0).collect();
    let n = during.len().max(1) as f64;
    let avg = |f: &dyn Fn(&stackbed_core::stats::UtilSample) -> f64| during.iter().map(|s| f(s)).sum::<f64>() / n;
    let counter = |k: &str| r.counters.get(k).copied().unwrap_or(0) as f64;
    RunFigures {
        strategy: strategy.to_string(),
        seed: r.seed,
        passed: r.passed,
        accepted: r.iterations.ok as f64,
        no_valid_host: counter("no_valid_host"),
        reschedules: counter("reschedules"),
        boot_p50_s: percentile(&lat, 50.0),
        boot_p99_s: percentile(&lat, 99.0),
        util_mean: [0, 1, 2].map(|c| avg(&|s| s.mean[c])),
        util_std: [0, 1, 2].map(|c| avg(&|s| s.std[c])),
        stranded: [0, 1, 2].map(|c| avg(&|s| s.stranded[c] as f64)),
        hosts_in_use: avg(&|s| s.hosts_in_use as f64),
        digest: r.digest.clone(),
    }
}

pub(crate) const METRICS: [&str; 14] = [
    "accepted",
    "no_valid_host",
    "reschedules",
    "boot_p50_s",
    "boot_p99_s",
    "util_vcpu_mean",
    "util_vcpu_std",
    "util_ram_mean",
    "util_ram_std",
    "util_disk_mean",
    "util_disk_std",
    "stranded_vcpu",
    "stranded_ram_mb",
    "hosts_in_use",
];

fn metric(f: &RunFigures, name: &str) -> f64 {
    match name {
        "accepted" => f.accepted,
        "no_valid_host" => f.no_valid_host,
        "reschedules" => f.reschedules,
        "boot_p50_s" => f.boot_p50_s,
        "boot_p99_s" => f.boot_p99_s,
        "util_vcpu_mean" => f.util_mean[0],
        "util_vcpu_std" => f.util_std[0],
        "util_ram_mean" => f.util_mean[1],
        "util_ram_std" => f.util_std[1],
        "util_disk_mean" => f.util_mean[2],
        "util_disk_std" => f.util_std[2],
        "stranded_vcpu" => f.stranded[0],
        "stranded_ram_mb" => f.stranded[1],
        "hosts_in_use" => f.hosts_in_use,
        _ => f64::NAN,
    }
}

pub fn summarize(
    scenario: &str,
    revision: &str,
    strategies: &[String],
    seeds: &[u64],
    runs: Vec<RunFigures>,
) -> Comparison {
    let rows = strategies
        .iter()
        .map(|s| {
            let mine: Vec<&RunFigures> = runs.iter().filter(|r| &r.strategy == s).collect();
            let metrics = METRICS
                .iter()
                .map(|&m| {
                    let values: Vec<f64> = mine.iter().map(|r| metric(r, m)).collect();
                    let (mean, ci95) = mean_ci95(&values);
                    (m, Interval { mean, ci95 })
                })
                .collect();
            StrategyRow {
                strategy: s.clone(),
                seeds: mine.len(),
                failed_runs: mine.iter().filter(|r| !r.passed).count(),
                metrics,
            }
        })
        .collect();
    Comparison {
        scenario: scenario.to_string(),
        revision: revision.to_string(),
        seeds: seeds.to_vec(),
        strategies: rows,
        runs,
    }
}

pub fn render(c: &Comparison) -> String {
    let seeds = match (c.seeds.first(), c.seeds.last()) {
        (Some(a), Some(b)) => format!("{a}..{b}"),
        _ => "-".into(),
    };
    let mut out = format!("compare {} | seeds {seeds} | mean ± 95% interval across seeds\n", c.scenario);
    let cols: Vec<&str> = METRICS.to_vec();
    out += &format!("{:<24}", "metric");
    for s in &c.strategies {
        out += &format!(" {:>22}", s.strategy);
    }
    out += "\n";
    for m in cols {
        out += &format!("{m:<24}");
        for s in &c.strategies {
            let i = s.metrics[m];
            let cell = if i.mean.abs() >= 100.0 {
                format!("{:.0} ± {:.0}", i.mean, i.ci95)
            } else {
                format!("{:.3} ± {:.3}", i.mean, i.ci95)
            };
            out += &format!(" {cell:>22}");
        }
        out += "\n";
    }
    let failed: usize = c.strategies.iter().map(|s| s.failed_runs).sum();
    out += &format!("runs with a violated invariant or aborted: {failed}\n");
    out
}

pub fn csv(c: &Comparison) -> String {
    let mut out = String::from("strategy,metric,mean,ci95\n");
    for s in &c.strategies {
        for (m, i) in &s.metrics {
            out += &format!("{},{m},{},{}\n", s.strategy, i.mean, i.ci95);
        }
    }
    out
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn plot_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> String + '_ {
    move |e| format!("cannot draw {}: {e}", path.display())
}

/// Mean vCPU and RAM utilisation over simulated time, one line pair per strategy (first seed).
pub fn plot_utilisation(path: &Path, series: &[(String, Arc<Report>)]) -> Result<(), String> {
    let t_max = series.iter().flat_map(|(_, r)| r.utilisation.iter().map(|s| s.t_s)).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("mean host utilisation (solid: vCPU, dashed: RAM)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..t_max, 0.0..1.0)
        .map_err(plot_err(path))?;
    chart.configure_mesh().x_desc("simulated seconds").y_desc("used / capacity").draw().map_err(plot_err(path))?;
    for (k, (name, r)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(r.utilisation.iter().map(|s| (s.t_s, s.mean[0])), color.stroke_width(2)))
            .map_err(plot_err(path))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(DashedLineSeries::new(r.utilisation.iter().map(|s| (s.t_s, s.mean[1])), 6, 4, color.into()))
            .map_err(plot_err(path))?;
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(plot_err(path))?;
    root.present().map_err(plot_err(path))
}

/// The CDF of boot latency per strategy, pooled over seeds.
pub fn plot_latency_cdf(path: &Path, series: &[(String, Vec<f64>)]) -> Result<(), String> {
    let x_max = series.iter().filter_map(|(_, v)| v.last().copied()).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("boot latency CDF (API accept to ACTIVE)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..1.0)
        .map_err(plot_err(path))?;
    chart.configure_mesh().x_desc("seconds").y_desc("fraction of boots").draw().map_err(plot_err(path))?;
    for (k, (name, lat)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let n = lat.len().max(1) as f64;
        // At most ~2,000 points per line keeps the SVG small.
        let step = (lat.len() / 2000).max(1);
        let points = lat.iter().enumerate().step_by(step).map(|(i, &x)| (x, (i + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_err(path))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(plot_err(path))?;
    root.present().map_err(plot_err(path))
}

/// Where the comparison's files go.
pub fn outputs(dir: &Path) -> [PathBuf; 4] {
    [dir.join("compare.json"), dir.join("compare.csv"), dir.join("utilisation.svg"), dir.join("latency-cdf.svg")]
}
