//! `report.html`: one self-contained page per run, from the [`Report`] that is written to
//! report.json beside it. Inline CSS and inline SVG only: no script, stylesheet, font,
//! image or link that a browser would fetch. Wall-clock figures are left out (they are in
//! report.json), so the same seed renders to the same bytes.

pub mod plots;
pub mod tables;

use stackbed_services::report::Report;

use crate::xml::escape;

/// The page's stylesheet, inline.
const STYLE: &str = "
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1060px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
h3 { font-size: 1em; margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; vertical-align: top; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
table.checks td:last-child, table.faults td:last-child, table.explain td:last-child,
table.errors td:last-child { text-align: left; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; font-size: 0.85em; }
.pass { color: #1a7f37; font-weight: bold; }
.fail { color: #c62828; font-weight: bold; }
.note { color: #666; font-size: 0.85em; }
.grid { display: flex; flex-wrap: wrap; gap: 4px; }
.grid figure { width: 340px; }
figure { margin: 0.5em 0; }
figcaption { font-size: 0.8em; color: #666; }
";

/// A complete page around `body`.
pub fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

/// A plot on the page: its SVG inline, under an id, with a caption.
fn figure(id: &str, svg: &str, caption: &str) -> String {
    // plotters writes an XML declaration-free <svg> element; nothing in it refers outside.
    format!(
        "<figure class=\"plot\" id=\"{}\">\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
        escape(id),
        escape(caption)
    )
}

/// The boot flow's phases that `boot_server` is made of, in order, as the report has them:
/// the spawn's sub-phases when the world reports them, `compute.spawn` otherwise.
const PHASES: [&str; 4] =
    ["api.create", "scheduler.select_destinations", "compute.networking", "compute.block_device_mapping"];

/// Parts of `compute.spawn.image_fetch` the simulated host also reports on their own (for
/// the boot that fetched): stacked with it they would count twice.
const INSIDE_IMAGE_FETCH: [&str; 3] =
    ["compute.spawn.image_download", "compute.spawn.image_verify", "compute.spawn.image_convert"];

/// One stacked bar: each phase's seconds per successful boot_server (its successful samples'
/// total over boot_server's successes: a phase not every boot has, such as a download, counts
/// by how often it happened), and what of boot_server's mean the phases do not cover
/// (queues, polling). None without phase data.
fn phase_bar(actions: &[stackbed_core::stats::ActionSummary]) -> Option<Vec<(String, f64)>> {
    let successes = |a: &stackbed_core::stats::ActionSummary| (a.count as f64 * a.success_pct / 100.0).round();
    let boot = actions.iter().find(|a| a.action == "boot_server" && successes(a) > 0.0)?;
    let boots = successes(boot);
    let per_boot = |a: &stackbed_core::stats::ActionSummary| (a.action.clone(), a.mean_s * successes(a) / boots);
    let find = |name: &str| actions.iter().find(|a| a.action == name && successes(a) > 0.0);
    let mut segs: Vec<(String, f64)> = PHASES.iter().filter_map(|p| find(p).map(per_boot)).collect();
    let spawn: Vec<(String, f64)> = actions
        .iter()
        .filter(|a| a.action.starts_with("compute.spawn.") && !INSIDE_IMAGE_FETCH.contains(&a.action.as_str()))
        .filter(|a| successes(a) > 0.0)
        .map(per_boot)
        .collect();
    if spawn.is_empty() {
        segs.extend(find("compute.spawn").map(per_boot));
    } else {
        segs.extend(spawn);
    }
    if !segs.iter().any(|(p, _)| p.starts_with("compute.")) {
        return None;
    }
    let covered: f64 = segs.iter().map(|s| s.1).sum();
    segs.push(("other (queues, polling)".to_string(), (boot.mean_s - covered).max(0.0)));
    Some(segs)
}

/// The report's page.
pub fn report_page(r: &Report) -> Result<String, String> {
    let verdict = if r.passed { "<span class=\"pass\">PASSED</span>" } else { "<span class=\"fail\">FAILED</span>" };
    let mut body = format!(
        "<h1>{} seed {} {verdict}</h1>\n<p>world {} | hypervisor {} | revision {} | {:.1} s simulated | \
         {} events, digest <code>{}</code> | scenario file <code>{}</code></p>\n",
        escape(&r.scenario),
        r.seed,
        escape(r.world),
        escape(&r.hypervisor),
        escape(&r.revision),
        r.simulated_s,
        r.events,
        escape(&r.digest),
        escape(&r.scenario_file)
    );
    body += &format!("<h2>Replay</h2>\n<pre>{}</pre>\n", escape(&r.replay));
    if let Some(text) = r.failure_text() {
        body += &format!("<pre class=\"fail\">{}</pre>\n", escape(&text));
    }
    if let Some(a) = &r.aborted {
        body += &format!("<p class=\"fail\">Aborted: {}</p>\n", escape(a));
    }
    body += "<h2>Atomic actions</h2>\n";
    body += &tables::actions(r);
    body += &tables::passes(r);

    body += "<h2>Latency CDF per atomic action</h2>\n<div class=\"grid\">\n";
    for (k, (action, q)) in r.latency_quantiles.iter().enumerate() {
        let color = plots::COLORS[k % plots::COLORS.len()];
        let svg = plots::latency_cdf(action, q, color)?;
        body +=
            &figure(&format!("cdf-{action}"), &svg, &format!("{action}: fraction of successful samples by seconds"));
    }
    body += "</div>\n";
    if r.latency_quantiles.is_empty() {
        body += "<p>No action has a successful sample.</p>\n";
    }

    body += "<h2>boot_server by phase</h2>\n";
    let mut bars: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    if let Some(b) = phase_bar(&r.actions) {
        bars.push(("whole run".into(), b));
    }
    for p in &r.passes {
        if let Some(b) = phase_bar(&p.actions) {
            bars.push((format!("pass {} ({})", p.pass, p.cache), b));
        }
    }
    if bars.is_empty() {
        body += "<p>This report has no phase data for boot_server.</p>\n";
    } else {
        let svg = plots::stacked_bars("boot_server: seconds per successful boot, by phase", &bars)?;
        body += &figure(
            "phases",
            &svg,
            "each phase's successful samples' total per successful boot_server, stacked (image_fetch includes its download, verify and convert); the top segment is what of boot_server's mean the phases do not cover",
        );
    }

    let t_max = plots::time_range(r);
    let faults = plots::fault_spans(r, t_max);
    body += "<h2>Over simulated time</h2>\n";
    body += "<p class=\"note\">Every plot below shares one time axis; faults are shaded red.</p>\n";
    if faults.is_empty() {
        body += "<p>No fault was applied in this run.</p>\n";
    } else {
        let healed = r.faults.healed_at_ms.map(|h| h as f64 / 1000.0);
        body += &figure("faults", &plots::fault_timeline(&faults, t_max, healed)?, "faults, from start to end or heal");
    }
    if r.timeline.bins.is_empty() {
        body += "<p>No iteration ran.</p>\n";
    } else {
        body += &figure("latency-over-time", &plots::latency_over_time(r, t_max, &faults)?, "boot latency per bin");
        body += &figure("throughput", &plots::throughput(r, t_max, &faults)?, "boots ended per second, and errors");
        body += &figure("in-flight", &plots::in_flight(r, t_max, &faults)?, "boots in flight");
    }
    if r.host_utilisation.t_s.is_empty() {
        body += "<p>No utilisation sample was taken.</p>\n";
    } else {
        let caption = format!(
            "{} rows, {} samples every workload.sample_interval; white: idle, dark blue: full",
            r.host_utilisation.rows.len(),
            r.host_utilisation.t_s.len()
        );
        body += &figure("utilisation", &plots::heatmap(r, t_max)?, &caption);
    }

    body += "<h2>Invariants</h2>\n";
    body += &tables::invariants(r);
    body += "<h2>SLA</h2>\n";
    body += &tables::sla(r);
    body += "<h2>Faults</h2>\n";
    body += &tables::faults(r);
    body += "<h2>Explained decisions</h2>\n";
    body += &tables::explained(r);
    body += "<h2>Outcome</h2>\n";
    body += &tables::outcome(r);
    body += "<h2>Resolved parameters</h2>\n";
    let params = serde_json::to_string_pretty(&r.parameters).map_err(|e| e.to_string())?;
    body += &format!("<details><summary>the scenario as run (report.json's <code>parameters</code>)</summary>\n<pre>{}</pre>\n</details>\n", escape(&params));
    body += "<p class=\"note\">Rendered from the same data as report.json beside this file; wall-clock \
             figures are only there.</p>\n";
    Ok(document(&format!("stackbed {} seed {}", r.scenario, r.seed), &body))
}
