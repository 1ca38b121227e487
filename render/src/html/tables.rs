//! The report's tables as HTML: the Rally-style atomic actions (the terminal table's numbers,
//! formatted the same way), passes, invariants, SLA, explained decisions, faults, counters.

use stackbed_services::report::Report;

use crate::xml::escape;

/// A `<table>`: a header row and rows of cells already escaped (or markup).
pub fn table(class: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table class=\"{}\">\n<thead><tr>", escape(class));
    for h in head {
        out += &format!("<th>{}</th>", escape(h));
    }
    out += "</tr></thead>\n<tbody>\n";
    for r in rows {
        out += "<tr>";
        for c in r {
            out += &format!("<td>{c}</td>");
        }
        out += "</tr>\n";
    }
    out += "</tbody>\n</table>\n";
    out
}

/// A verdict cell.
pub fn verdict(ok: bool) -> String {
    if ok {
        "<span class=\"pass\">pass</span>".into()
    } else {
        "<span class=\"fail\">FAIL</span>".into()
    }
}

/// The atomic actions, as `Report::render` prints them.
pub fn actions(r: &Report) -> String {
    let rows: Vec<Vec<String>> = r
        .actions
        .iter()
        .chain(std::iter::once(&r.boot_to_active))
        .map(|a| {
            vec![
                escape(&a.action),
                a.count.to_string(),
                format!("{:.3}", a.min_s),
                format!("{:.3}", a.median_s),
                format!("{:.3}", a.p90_s),
                format!("{:.3}", a.p95_s),
                format!("{:.3}", a.max_s),
                format!("{:.3}", a.mean_s),
                format!("{:.1}%", a.success_pct),
            ]
        })
        .collect();
    let head = ["Action", "Count", "Min (s)", "Median", "90%ile", "95%ile", "Max", "Avg", "Success"];
    table("actions", &head, &rows)
        + "<p class=\"note\">The last row, <code>boot_to_active</code>, is the servers' own created_at to \
           launched_at (free of the client's polling); the terminal table prints the rows above it.</p>\n"
}

/// Each pass of a multi-pass workload, and last minus first per action.
pub fn passes(r: &Report) -> String {
    if r.passes.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = r
        .passes
        .iter()
        .map(|p| {
            vec![
                p.pass.to_string(),
                p.cache.to_string(),
                format!("{:.1}", p.start_s),
                format!("{:.1}", p.end_s),
                p.iterations_ok.to_string(),
                p.iterations_failed.to_string(),
            ]
        })
        .collect();
    let mut out = table("passes", &["Pass", "Image caches", "Start (s)", "End (s)", "OK", "Failed"], &rows);
    let pct = |p: Option<f64>| p.map_or("-".to_string(), |p| format!("{p:+.0}%"));
    let rows: Vec<Vec<String>> = r
        .pass_diff
        .iter()
        .map(|d| {
            vec![
                escape(&d.action),
                format!("{}/{}", d.first_count, d.last_count),
                format!("{:.3}", d.first_median_s),
                format!("{:.3}", d.last_median_s),
                format!("{:+.3}", d.median_diff_s),
                pct(d.median_diff_pct),
                format!("{:.3}", d.first_mean_s),
                format!("{:.3}", d.last_mean_s),
                format!("{:+.3}", d.mean_diff_s),
                pct(d.mean_diff_pct),
            ]
        })
        .collect();
    let head = [
        "Action",
        "Count",
        "Median first",
        "Median last",
        "diff (s)",
        "diff",
        "Avg first",
        "Avg last",
        "diff (s)",
        "diff",
    ];
    out += "<p>Per action, the first and the last pass, and last minus first:</p>\n";
    out += &table("actions", &head, &rows);
    out
}

/// Every invariant with its verdict, and the first violation with its event-log lines.
pub fn invariants(r: &Report) -> String {
    let rows: Vec<Vec<String>> = r
        .invariants
        .iter()
        .map(|i| {
            let first = i.first.as_ref().map_or(String::new(), |v| {
                escape(&format!("at {} ms (commit #{}): {}", v.at_ms, v.commit_seq, v.detail))
            });
            vec![
                escape(i.name),
                verdict(i.violations == 0),
                i.checked_events.to_string(),
                i.violations.to_string(),
                first,
            ]
        })
        .collect();
    let mut out = table("checks", &["Invariant", "Verdict", "Checked events", "Violations", "First violation"], &rows);
    if !r.first_violation.event.is_empty() {
        out += "<p>The first violating commit's event-log lines:</p>\n<pre>";
        for e in &r.first_violation.event {
            out += &escape(e);
            out += "\n";
        }
        out += "</pre>\n";
    }
    out
}

/// The `[sla]` criteria.
pub fn sla(r: &Report) -> String {
    if r.sla.is_empty() {
        return "<p>The scenario states no <code>[sla]</code>.</p>\n".into();
    }
    let rows: Vec<Vec<String>> =
        r.sla.iter().map(|c| vec![escape(&c.criterion), verdict(c.success), escape(&c.detail)]).collect();
    table("checks", &["Criterion", "Verdict", "Detail"], &rows)
}

/// The explained decisions: the terminal's line, then each filter's survivors and the best
/// scores.
pub fn explained(r: &Report) -> String {
    if r.explained.is_empty() {
        return "<p>No decision was explained (the scheduler decided nothing).</p>\n".into();
    }
    let mut out = String::new();
    for e in &r.explained {
        let x = &e.explanation;
        out += &format!(
            "<h3>{} ({}): request {}</h3>\n<p>{} ({}, {}): {} hosts in; {}</p>\n",
            escape(e.why),
            escape(&e.strategy),
            escape(&e.request),
            escape(&e.request),
            escape(&x.flavor),
            escape(&x.image),
            x.hosts_in,
            match (&x.no_valid_host, e.decided.split_first()) {
                (Some(nvh), _) => format!("<span class=\"fail\">NoValidHost</span>: {}", escape(&nvh.reason)),
                (None, Some((pick, alternates))) =>
                    format!("pick <b>{}</b>, then [{}]", escape(pick), escape(&alternates.join(", "))),
                (None, None) => "no pick".into(),
            }
        );
        let rows: Vec<Vec<String>> = x
            .steps
            .iter()
            .map(|s| {
                let mut reasons: Vec<String> =
                    s.rejected.iter().take(3).map(|j| format!("{}: {}", j.host, j.reason)).collect();
                if s.rejected.len() > 3 {
                    reasons.push(format!("and {} more", s.rejected.len() - 3));
                }
                vec![
                    escape(&s.filter),
                    if s.active { "yes".into() } else { "no".into() },
                    s.kept.len().to_string(),
                    s.rejected.len().to_string(),
                    escape(&reasons.join("; ")),
                ]
            })
            .collect();
        out += &table("explain", &["Filter", "Active", "Kept", "Rejected", "Rejections (first 3)"], &rows);
        if !x.scores.is_empty() {
            let rows: Vec<Vec<String>> =
                x.scores.iter().take(5).map(|s| vec![escape(&s.host), format!("{:.4}", s.score)]).collect();
            out += &table("explain", &["Host (best 5 by score)", "Score"], &rows);
        }
    }
    out + "<p class=\"note\">Every filter's kept and rejected hosts and every weigher's values are in \
           report.json (<code>explained</code>) and in <code>stackbed explain</code>.</p>\n"
}

/// The resolved fault schedule and what the executor applied of it.
pub fn faults(r: &Report) -> String {
    if r.faults.schedule.is_empty() && r.faults.applied.is_empty() {
        return "<p>No fault was scheduled in this run.</p>\n".into();
    }
    let mut out = format!("<pre>{}</pre>\n", escape(&r.faults.schedule.to_string()));
    let rows: Vec<Vec<String>> = r
        .faults
        .applied
        .iter()
        .map(|a| vec![format!("{:.3}", a.at_ms as f64 / 1000.0), escape(a.event), escape(&a.fault)])
        .collect();
    out += &table("faults", &["At (s)", "Event", "Fault"], &rows);
    if let Some(h) = r.faults.healed_at_ms {
        out += &format!("<p>Heal phase began at {:.3} s.</p>\n", h as f64 / 1000.0);
    }
    out
}

/// Counters, final states and the iterations' errors.
pub fn outcome(r: &Report) -> String {
    let it = &r.iterations;
    let mut out = format!("<p>Iterations: {} total, {} ok, {} failed.</p>\n", it.total, it.ok, it.failed);
    if !it.errors.is_empty() {
        let rows: Vec<Vec<String>> = it.errors.iter().map(|(e, n)| vec![n.to_string(), escape(e)]).collect();
        out += &table("errors", &["Count", "Error"], &rows);
    }
    let rows: Vec<Vec<String>> = r.final_states.iter().map(|(s, n)| vec![escape(s), n.to_string()]).collect();
    out += &table("states", &["Final state", "Instances"], &rows);
    let rows: Vec<Vec<String>> = r.counters.iter().map(|(k, v)| vec![escape(k), v.to_string()]).collect();
    out += &table("counters", &["Counter", "Value"], &rows);
    let rows: Vec<Vec<String>> = r.db_writes.iter().map(|(k, v)| vec![escape(k), v.to_string()]).collect();
    out += &table("counters", &["Table", "Committed writes"], &rows);
    out
}
