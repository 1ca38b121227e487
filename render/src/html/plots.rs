//! The report's plots, each an SVG document drawn by plotters into a string: latency CDF per
//! atomic action, boot_server's phases as stacked bars, boots in flight, throughput and
//! boot latency over simulated time, the fault timeline, and host utilisation as a heatmap.
//! The time plots share one width, margins and x range, so they line up on the page, and
//! each shades the faults' intervals.

use plotters::coord::Shift;
use plotters::prelude::*;

use stackbed_services::report::Report;
use stackbed_services::timeline::TimeBin;

/// Each plot's size in pixels.
pub const TIME_PLOT: (u32, u32) = (1000, 260);
pub const SMALL_PLOT: (u32, u32) = (330, 220);

const Y_LABELS: u32 = 70;
const X_LABELS: u32 = 36;

pub const COLORS: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 128),
    RGBColor(255, 215, 0),
];
const FAULT: RGBColor = RGBColor(214, 39, 40);

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("cannot draw the {what} plot: {e}")
}

/// Draws into a fresh SVG string of `size`.
fn svg(
    size: (u32, u32),
    what: &'static str,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<String, String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(err(what))?;
        draw(&root)?;
        root.present().map_err(err(what))?;
    }
    Ok(buf)
}

/// A fault's interval on the time axis, with its label (action and targets).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpan {
    pub label: String,
    pub start_s: f64,
    pub end_s: f64,
    /// False when it was still on when the run ended.
    pub ended: bool,
}

/// The applied faults as intervals: each `start` paired with the next `end` or `heal` of the
/// same fault; one never ended lasts to `until_s`.
pub fn fault_spans(r: &Report, until_s: f64) -> Vec<FaultSpan> {
    let mut out: Vec<FaultSpan> = Vec::new();
    for a in &r.faults.applied {
        let t = a.at_ms as f64 / 1000.0;
        if a.event == "start" {
            out.push(FaultSpan { label: a.fault.clone(), start_s: t, end_s: until_s, ended: false });
        } else if let Some(open) = out.iter_mut().find(|s| !s.ended && s.label == a.fault) {
            open.end_s = t;
            open.ended = true;
        }
    }
    out
}

/// The x range every time plot shares: the run, its timeline bins and its faults.
pub fn time_range(r: &Report) -> f64 {
    let bins = r.timeline.bins.last().map_or(0.0, |b| b.t_s + r.timeline.bin_s);
    let samples = r.host_utilisation.t_s.last().copied().unwrap_or(0.0);
    let faults = r.faults.applied.iter().map(|a| a.at_ms as f64 / 1000.0).fold(0.0, f64::max);
    r.simulated_s.max(bins).max(samples).max(faults).max(1.0)
}

type TimeChart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A time chart over `[0, t_max]` with the faults shaded behind the data.
fn time_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    y_desc: &str,
    t_max: f64,
    y_max: f64,
    faults: &[FaultSpan],
    what: &'static str,
) -> Result<TimeChart<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(X_LABELS)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(err(what))?;
    chart.configure_mesh().x_desc("simulated seconds").y_desc(y_desc).draw().map_err(err(what))?;
    chart
        .draw_series(
            faults.iter().map(|f| Rectangle::new([(f.start_s, 0.0), (f.end_s, y_max)], FAULT.mix(0.12).filled())),
        )
        .map_err(err(what))?;
    Ok(chart)
}

fn legend<'a, 'b: 'a>(chart: &mut TimeChart<'a, 'b>, what: &'static str) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err(what))
}

/// One action's latency CDF from its percentiles 0..=100.
pub fn latency_cdf(action: &str, quantiles: &[f64], color: RGBColor) -> Result<String, String> {
    let x_max = quantiles.last().copied().unwrap_or(0.0).max(1e-3) * 1.05;
    svg(SMALL_PLOT, "latency CDF", |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(action, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(0.0..x_max, 0.0..1.0)
            .map_err(err("latency CDF"))?;
        chart.configure_mesh().x_desc("seconds").x_labels(5).y_labels(5).draw().map_err(err("latency CDF"))?;
        let points = quantiles.iter().enumerate().map(|(p, &x)| (x, p as f64 / 100.0));
        chart.draw_series(LineSeries::new(points, color.stroke_width(2))).map_err(err("latency CDF"))?;
        Ok(())
    })
}

/// Stacked bars: each bar a name and its segments' (phase, seconds), phases in stack order.
pub fn stacked_bars(caption: &str, bars: &[(String, Vec<(String, f64)>)]) -> Result<String, String> {
    let what = "phase bars";
    let y_max = bars.iter().map(|(_, segs)| segs.iter().map(|s| s.1).sum::<f64>()).fold(0.0, f64::max).max(1e-3) * 1.1;
    let phases: Vec<&String> = {
        let mut v: Vec<&String> = Vec::new();
        for (_, segs) in bars {
            for (p, _) in segs {
                if !v.contains(&p) {
                    v.push(p);
                }
            }
        }
        v
    };
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let label = move |x: &f64| {
        let k = x.round();
        if (x - k).abs() < 1e-6 && k >= 0.0 {
            names.get(k as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    svg((TIME_PLOT.0, 300 + 18 * phases.len() as u32), what, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(X_LABELS)
            .y_label_area_size(Y_LABELS)
            .build_cartesian_2d(-0.5..(bars.len() as f64 + 1.5), 0.0..y_max)
            .map_err(err(what))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len() + 3)
            .x_label_formatter(&label)
            .y_desc("seconds per boot")
            .draw()
            .map_err(err(what))?;
        for (k, phase) in phases.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let rects: Vec<Rectangle<(f64, f64)>> = bars
                .iter()
                .enumerate()
                .filter_map(|(b, (_, segs))| {
                    let i = segs.iter().position(|s| &s.0 == *phase)?;
                    let below: f64 = segs[..i].iter().map(|s| s.1).sum();
                    let x = b as f64;
                    Some(Rectangle::new([(x - 0.3, below), (x + 0.3, below + segs[i].1)], color.filled()))
                })
                .collect();
            chart
                .draw_series(rects)
                .map_err(err(what))?
                .label(phase.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err(what))
    })
}

/// Boots in flight at each bin's end.
pub fn in_flight(r: &Report, t_max: f64, faults: &[FaultSpan]) -> Result<String, String> {
    let what = "boots in flight";
    let bins = &r.timeline.bins;
    let y_max = bins.iter().map(|b| b.in_flight).max().unwrap_or(0).max(1) as f64 * 1.1;
    svg(TIME_PLOT, what, |root| {
        let mut chart = time_chart(root, "boots in flight", "iterations", t_max, y_max, faults, what)?;
        let w = r.timeline.bin_s;
        let points = std::iter::once((0.0, 0.0)).chain(bins.iter().map(|b| (b.t_s + w, b.in_flight as f64)));
        chart
            .draw_series(LineSeries::new(points, COLORS[0].stroke_width(2)))
            .map_err(err(what))?
            .label("in flight at the bin's end")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], COLORS[0].stroke_width(2)));
        legend(&mut chart, what)
    })
}

/// Boots ended per second, successful and failed, per bin.
pub fn throughput(r: &Report, t_max: f64, faults: &[FaultSpan]) -> Result<String, String> {
    let what = "throughput";
    let w = r.timeline.bin_s.max(1e-9);
    let bins = &r.timeline.bins;
    let y_max = bins.iter().map(|b| b.ok.max(b.failed)).max().unwrap_or(0).max(1) as f64 / w * 1.1;
    svg(TIME_PLOT, what, |root| {
        let caption = format!("boots ended per second ({} s bins)", r.timeline.bin_s);
        let mut chart = time_chart(root, &caption, "per second", t_max, y_max, faults, what)?;
        for (k, name, f) in [(2, "ACTIVE", (|b: &TimeBin| b.ok) as fn(&TimeBin) -> usize), (3, "failed", |b| b.failed)]
        {
            let color = COLORS[k];
            let points = bins.iter().map(|b| (b.t_s + w / 2.0, f(b) as f64 / w));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(err(what))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        legend(&mut chart, what)
    })
}

/// Median and maximum boot latency of the boots that ended in each bin.
pub fn latency_over_time(r: &Report, t_max: f64, faults: &[FaultSpan]) -> Result<String, String> {
    let what = "latency over time";
    let w = r.timeline.bin_s;
    let bins = &r.timeline.bins;
    let y_max = bins.iter().filter_map(|b| b.boot_max_s).fold(0.0, f64::max).max(1e-3) * 1.1;
    svg(TIME_PLOT, what, |root| {
        let mut chart = time_chart(
            root,
            "boot_server latency of the boots ending in each bin",
            "seconds",
            t_max,
            y_max,
            faults,
            what,
        )?;
        for (k, name, f) in
            [(0, "median", (|b: &TimeBin| b.boot_p50_s) as fn(&TimeBin) -> Option<f64>), (1, "max", |b| b.boot_max_s)]
        {
            let color = COLORS[k];
            // One line per run of bins with a successful boot: a bin without one is a gap.
            let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for b in bins {
                match f(b) {
                    Some(v) => runs.last_mut().map_or((), |r| r.push((b.t_s + w / 2.0, v))),
                    None if runs.last().is_some_and(|r| !r.is_empty()) => runs.push(Vec::new()),
                    None => {}
                }
            }
            for run in runs.iter().filter(|r| r.len() == 1) {
                chart.draw_series(run.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err(what))?;
            }
            chart
                .draw_series(
                    runs.into_iter().filter(|r| r.len() > 1).map(|r| PathElement::new(r, color.stroke_width(2))),
                )
                .map_err(err(what))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        legend(&mut chart, what)
    })
}

/// Each fault as a bar from its start to its end, one row each, on the shared time axis.
pub fn fault_timeline(faults: &[FaultSpan], t_max: f64, healed_at_s: Option<f64>) -> Result<String, String> {
    let what = "fault timeline";
    let n = faults.len().max(1);
    let height = 120 + 30 * n as u32;
    svg((TIME_PLOT.0, height), what, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("faults applied (red: on; dashed: heal)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(X_LABELS)
            .y_label_area_size(Y_LABELS)
            .build_cartesian_2d(0.0..t_max, 0.0..n as f64)
            .map_err(err(what))?;
        let row = |y: &f64| format!("#{}", n as i64 - y.floor() as i64);
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .y_label_formatter(&row)
            .x_desc("simulated seconds")
            .draw()
            .map_err(err(what))?;
        chart
            .draw_series(faults.iter().enumerate().map(|(i, f)| {
                let y = (n - 1 - i) as f64;
                Rectangle::new(
                    [(f.start_s, y + 0.2), (f.end_s.max(f.start_s + t_max / 500.0), y + 0.8)],
                    FAULT.filled(),
                )
            }))
            .map_err(err(what))?;
        chart
            .draw_series(faults.iter().enumerate().map(|(i, f)| {
                let y = (n - 1 - i) as f64 + 0.5;
                let label: String = f.label.chars().take(90).collect();
                Text::new(label, (f.start_s, y), ("sans-serif", 12).into_font().color(&BLACK))
            }))
            .map_err(err(what))?;
        if let Some(h) = healed_at_s {
            chart
                .draw_series(DashedLineSeries::new([(h, 0.0), (h, n as f64)], 6, 4, BLACK.stroke_width(1)))
                .map_err(err(what))?;
        }
        Ok(())
    })
}

/// The utilisation colour: white (idle) to dark blue (full).
fn heat(u: f64) -> RGBColor {
    let u = u.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * u).round() as u8;
    RGBColor(mix(255, 8), mix(255, 48), mix(255, 107))
}

/// Host utilisation over time: one row per host (or group of hosts), one column per sample.
pub fn heatmap(r: &Report, t_max: f64) -> Result<String, String> {
    let what = "utilisation heatmap";
    let h = &r.host_utilisation;
    let rows = h.rows.len().max(1);
    let height = 110 + (8 * rows as u32).clamp(80, 520);
    let labels = h.rows.clone();
    let row_label = move |y: &f64| {
        let k = y.floor();
        if (y - k - 0.5).abs() < 1e-6 && k >= 0.0 {
            let label = labels.get(labels.len().saturating_sub(1 + k as usize)).cloned().unwrap_or_default();
            // The axis is as wide as the time plots' (so the time axes line up): short labels.
            let first = label.split(" ..").next().unwrap_or("");
            let n = first.chars().count();
            first.chars().skip(n.saturating_sub(11)).collect()
        } else {
            String::new()
        }
    };
    svg((TIME_PLOT.0, height), what, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("host utilisation (fullest of vCPU, RAM, disk: used / capacity)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(X_LABELS)
            .y_label_area_size(Y_LABELS)
            .build_cartesian_2d(0.0..t_max, 0.0..rows as f64)
            .map_err(err(what))?;
        let every = rows.div_ceil(16).max(1);
        // Every `every`-th row labelled, counting from the top row (the first host).
        let shown = move |y: &f64| {
            let from_top = (rows - 1).saturating_sub(y.floor().max(0.0) as usize);
            if from_top.is_multiple_of(every) {
                row_label(y)
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .y_labels(rows * 2 + 1)
            .y_label_formatter(&shown)
            .x_desc("simulated seconds")
            .draw()
            .map_err(err(what))?;
        let mut cells = Vec::new();
        for (i, t) in h.t_s.iter().enumerate() {
            let next = h.t_s.get(i + 1).copied().unwrap_or(t_max.max(*t));
            for (k, u) in h.used[i].iter().enumerate() {
                let y = (rows - 1 - k) as f64;
                cells.push(Rectangle::new([(*t, y), (next, y + 1.0)], heat(*u).filled()));
            }
        }
        chart.draw_series(cells).map_err(err(what))?;
        Ok(())
    })
}
