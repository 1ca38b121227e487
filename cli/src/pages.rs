//! What the commands write for people and CI besides their JSON: `report.html` beside every
//! run's report.json (rendered by `stackbed-render` from the same `Report`), the summary
//! pages of a multi-seed run, a sweep and a compare, and the `--junit FILE` XML.

use std::path::{Path, PathBuf};

use stackbed_render::html::{document, tables::table, tables::verdict};
use stackbed_render::junit::{self, class_part, Suite};
use stackbed_render::xml::escape;
use stackbed_services::checks::Check;
use stackbed_services::report::Report;

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `file` (a report.json) and report.html beside it. Returns the page's path.
pub fn write_report(file: &Path, r: &Report) -> Result<PathBuf, String> {
    crate::write_json(file, r)?;
    let html = file.with_file_name("report.html");
    write(&html, &stackbed_render::html::report_page(r)?)?;
    Ok(html)
}

/// The JUnit suite of one run: `<scenario> seed N`, classnames `stackbed.<scenario>.seed-N`.
pub fn seed_suite(r: &Report, label: &str) -> Suite {
    let name = format!("{} {label}seed {}", r.scenario, r.seed);
    let classname = format!(
        "stackbed.{}.{}seed-{}",
        class_part(&r.scenario),
        if label.is_empty() { String::new() } else { format!("{}.", class_part(label.trim())) },
        r.seed
    );
    junit::suite(name, classname, r)
}

/// Writes `--junit FILE` when asked.
pub fn write_junit(path: Option<&Path>, title: &str, suites: &[Suite]) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    write(path, &junit::render(title, suites))?;
    println!("junit: {}", path.display());
    Ok(())
}

/// A link to a file relative to the page (the page and its targets move together).
fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", escape(href), escape(text))
}

/// The summary page of `run --seeds A..B`, beside its report.json: each seed with a link to
/// its own page.
pub fn write_multi_seed_page(file: &Path, s: &crate::MultiSeedSummary) -> Result<PathBuf, String> {
    let rows: Vec<Vec<String>> = s
        .seeds
        .iter()
        .map(|r| {
            vec![
                link(&format!("seed-{}/report.html", r.seed), &r.seed.to_string()),
                verdict(r.passed),
                r.boots_ok.to_string(),
                r.boots_failed.to_string(),
                format!("{:.2}", r.boot_p50_s),
                format!("{:.2}", r.boot_p95_s),
                r.reschedules.to_string(),
                r.no_valid_host.to_string(),
                escape(r.first_violation.as_deref().unwrap_or("")),
                format!("<code>{}</code>", escape(&r.digest[..16.min(r.digest.len())])),
            ]
        })
        .collect();
    let head = [
        "Seed",
        "Verdict",
        "Boots",
        "Failed",
        "boot p50",
        "boot p95",
        "Resched.",
        "NoValidHost",
        "First violation",
        "Digest",
    ];
    let [lo, mid, hi] = s.boot_p50_s_across_seeds;
    let body = format!(
        "<h1>{} | {} seeds | world {}</h1>\n<p>revision {} | {} passed, {} failed | boot_server median across \
         seeds: min {lo:.2} s, median {mid:.2} s, max {hi:.2} s</p>\n{}",
        escape(&s.scenario),
        s.seeds.len(),
        s.world,
        escape(&s.revision),
        s.passed,
        s.failed,
        table("seeds", &head, &rows)
    );
    let html = file.with_file_name("report.html");
    write(&html, &document(&format!("stackbed {} seeds", s.scenario), &body))?;
    Ok(html)
}

/// A sweep row's checks; a seed that produced no report (panic, crash, error) is one failed
/// `run.finished` with its group and detail.
pub fn row_checks(r: &crate::sweep::Row) -> Vec<Check> {
    if !r.checks.is_empty() {
        return r.checks.clone();
    }
    let message = match (&r.failure, &r.detail) {
        (Some(f), Some(d)) => format!("{f}: {d}"),
        (Some(f), None) => f.clone(),
        (None, d) => d.clone().unwrap_or_default(),
    };
    vec![Check { kind: "run".into(), name: "finished".into(), passed: r.passed, message }]
}

/// The sweep's page beside its JSON summary: counts, the failing groups with their seeds and
/// replay commands, and every seed by outcome.
pub fn write_sweep_page(json: &Path, s: &crate::sweep::Summary) -> Result<PathBuf, String> {
    let mut body = format!(
        "<h1>sweep {} | seeds {} | world {}</h1>\n<p>revision {} | overrides [{}] | {} seeds run: {} passed, {} \
         failed</p>\n",
        escape(&s.scenario),
        escape(&s.range),
        escape(&s.world),
        escape(&s.revision),
        escape(&s.overrides.join(" ")),
        s.total,
        s.passed,
        s.failed
    );
    if !s.groups.is_empty() {
        let rows: Vec<Vec<String>> = s
            .groups
            .iter()
            .map(|(k, g)| {
                vec![
                    escape(k),
                    g.count.to_string(),
                    escape(&g.seeds),
                    format!("<a href=\"#seed-{}\">{}</a>", g.first_seed, g.first_seed),
                    format!("<code>{}</code>", escape(&g.replay)),
                ]
            })
            .collect();
        body += "<h2>Failing seeds by cause</h2>\n";
        body += &table("checks", &["Group", "Failed", "Seeds", "First", "Replay (first seed)"], &rows);
    }
    body += "<h2>Seeds</h2>\n";
    let rows: Vec<Vec<String>> = s
        .rows
        .iter()
        .map(|r| {
            let replay = crate::sweep::replay(&s.world, &s.scenario_file, r.seed, &s.overrides);
            vec![
                format!("<span id=\"seed-{}\">{}</span>", r.seed, r.seed),
                verdict(r.passed),
                escape(r.failure.as_deref().unwrap_or("")),
                escape(r.detail.as_deref().unwrap_or("")),
                format!("{:.1}", r.simulated_s),
                format!("<code>{}</code>", escape(&replay)),
            ]
        })
        .collect();
    body += &table("checks", &["Seed", "Verdict", "Group", "Detail", "Simulated s", "Replay"], &rows);
    let html = json.with_extension("html");
    write(&html, &document(&format!("stackbed sweep {}", s.scenario), &body))?;
    Ok(html)
}

/// The JUnit suites of a sweep's rows.
pub fn sweep_suites(s: &crate::sweep::Summary) -> Vec<Suite> {
    s.rows
        .iter()
        .map(|r| Suite {
            name: format!("{} seed {}", s.scenario, r.seed),
            classname: format!("stackbed.{}.seed-{}", class_part(&s.scenario), r.seed),
            checks: row_checks(r),
            replay: crate::sweep::replay(&s.world, &s.scenario_file, r.seed, &s.overrides),
        })
        .collect()
}

/// The compare page beside compare.json: the strategies side by side with their 95%
/// intervals, links to each run's page, and the two plots inline.
pub fn write_compare_page(
    dir: &Path,
    c: &crate::compare::Comparison,
    svgs: &[(&str, &Path)],
) -> Result<PathBuf, String> {
    let seeds = match (c.seeds.first(), c.seeds.last()) {
        (Some(a), Some(b)) => format!("{a}..{b}"),
        _ => "-".into(),
    };
    let mut body = format!(
        "<h1>compare {} | seeds {seeds}</h1>\n<p>revision {} | mean ± 95% interval across seeds</p>\n",
        escape(&c.scenario),
        escape(&c.revision)
    );
    let mut head: Vec<&str> = vec!["Metric"];
    head.extend(c.strategies.iter().map(|s| s.strategy.as_str()));
    let mut rows: Vec<Vec<String>> = crate::compare::METRICS
        .iter()
        .map(|m| {
            let mut row = vec![escape(m)];
            for s in &c.strategies {
                let Some(i) = s.metrics.get(m) else { continue };
                row.push(if i.mean.abs() >= 100.0 {
                    format!("{:.0} ± {:.0}", i.mean, i.ci95)
                } else {
                    format!("{:.3} ± {:.3}", i.mean, i.ci95)
                });
            }
            row
        })
        .collect();
    let mut failed = vec!["failed runs".to_string()];
    failed.extend(c.strategies.iter().map(|s| format!("{} of {}", s.failed_runs, s.seeds)));
    rows.push(failed);
    body += &table("actions", &head, &rows);
    body += "<h2>Runs</h2>\n";
    let rows: Vec<Vec<String>> = c
        .runs
        .iter()
        .map(|r| {
            vec![
                link(
                    &format!("{}/seed-{}/report.html", r.strategy, r.seed),
                    &format!("{} seed {}", r.strategy, r.seed),
                ),
                verdict(r.passed),
                format!("{:.0}", r.accepted),
                format!("{:.0}", r.no_valid_host),
                format!("{:.3}", r.boot_p50_s),
                format!("{:.3}", r.boot_p99_s),
            ]
        })
        .collect();
    body += &table("runs", &["Run", "Verdict", "Accepted", "NoValidHost", "boot p50", "boot p99"], &rows);
    for (title, path) in svgs {
        let svg = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        // The plot's own file is a standalone SVG document: drop its XML declaration inline.
        let svg = svg.trim_start().strip_prefix("<?xml").and_then(|s| s.split_once("?>")).map_or(svg.as_str(), |p| p.1);
        body += &format!("<h2>{}</h2>\n<figure class=\"plot\">\n{}\n</figure>\n", escape(title), svg.trim());
    }
    let html = dir.join("report.html");
    write(&html, &document(&format!("stackbed compare {}", c.scenario), &body))?;
    Ok(html)
}
