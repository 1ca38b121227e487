//! What people and CI read of a run: report.html (self-contained, every plot drawn, the same
//! bytes for the same seed, rendered in headless Chromium) and the JUnit XML of a failing
//! run and of the same run with its mitigation. `cargo sim-test -p stackbed-tests --test reports`.
#![cfg(madsim)]

use std::sync::Arc;

use stackbed_core::scenario::Scenario;
use stackbed_render::{html, junit};
use stackbed_services::report::{Report, RunOptions};
use stackbed_tests::{chromium, mitigation, parse_xml, root, svg_has_data, Element};

/// broker-outage fails its SLA as shipped (a fault, its phases, utilisation samples, an
/// explained decision: every section of the page has data) and passes with its mitigation.
const SCENARIO: &str = "scenarios/faults/broker-outage.toml";

/// The scenario with `overrides`, run as `cargo sim run SCENARIO --seed N [--set ...]` would.
fn run(seed: u64, overrides: &[String]) -> Report {
    let parsed: Vec<_> = overrides.iter().map(|o| o.parse().unwrap()).collect();
    let s = Arc::new(Scenario::load_with(&root().join(SCENARIO), &parsed).unwrap());
    let sets: String = overrides.iter().map(|o| format!(" --set {o}")).collect();
    let opts = RunOptions {
        scenario: s,
        scenario_file: SCENARIO.into(),
        seed,
        revision: "test".into(),
        replay: format!("cargo sim run {SCENARIO} --seed {seed}{sets}"),
    };
    stackbed_sim::run(&opts).unwrap()
}

/// The page's `<figure class="plot" id=...>` blocks: (id, the SVG element inside, parsed).
fn plots(page: &str) -> Vec<(String, Element)> {
    let mut out = Vec::new();
    for part in page.split("<figure class=\"plot\" id=\"").skip(1) {
        let id = part.split('"').next().unwrap().to_string();
        let body = &part[..part.find("</figure>").expect("figure closed")];
        assert_eq!(body.matches("<svg").count(), 1, "plot {id}: one <svg> each");
        let svg = &body[body.find("<svg").unwrap()..body.rfind("</svg>").expect("svg closed") + 6];
        let svg = parse_xml(svg).unwrap_or_else(|e| panic!("plot {id}: the SVG is not well-formed: {e}"));
        out.push((id, svg));
    }
    out
}

#[test]
fn report_html_is_self_contained_and_every_plot_has_drawn_content() {
    let r = run(1, &[]);
    let page = html::report_page(&r).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"), "{}", &page[..100]);
    // The terminal table's numbers, formatted the same way.
    for a in &r.actions {
        for cell in [format!("<td>{}</td>", a.action), format!("<td>{:.3}</td>", a.median_s)] {
            assert!(page.contains(&cell), "the actions table lacks {cell}");
        }
    }
    let plots = plots(&page);
    let ids: Vec<&str> = plots.iter().map(|(id, _)| id.as_str()).collect();
    let mut want: Vec<String> = r.latency_quantiles.iter().map(|(a, _)| format!("cdf-{a}")).collect();
    want.extend(["phases", "faults", "latency-over-time", "throughput", "in-flight", "utilisation"].map(String::from));
    assert_eq!(ids, want, "one plot per atomic action's CDF, then the phase bars and the time plots");
    assert!(r.latency_quantiles.len() >= 10, "{:?}", r.latency_quantiles.iter().map(|q| &q.0).collect::<Vec<_>>());
    for (id, svg) in &plots {
        assert!(svg_has_data(svg), "plot {id} has nothing drawn but its axes");
    }
    // The fault is on the fault timeline and shaded on the time plots.
    assert!(!r.faults.applied.is_empty());
    assert!(page.contains("partition broker"), "the fault timeline names the fault");
    // Nothing that would make a request: no script, stylesheet, image, frame or font, no
    // remote reference; the only URLs are the SVG namespace, which is a name, not a fetch.
    for word in ["<script", "<link", "<img", "<iframe", "<object", "<embed", "@import", "url(", "src="] {
        assert!(!page.contains(word), "report.html contains `{word}`");
    }
    for attr in ["href=\"http", "href='http", "href=\"//", "xlink:href"] {
        assert!(!page.contains(attr), "report.html contains `{attr}`");
    }
    let urls = page.matches("http://").count() + page.matches("https://").count();
    assert_eq!(
        urls,
        page.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "a URL other than the SVG namespace"
    );
    assert!(page.contains("default-src 'none'"), "the page forbids itself any fetch");
    // The sections beyond the plots.
    for section in ["Invariants", "SLA", "Explained decisions", "Resolved parameters", "Replay"] {
        assert!(page.contains(&format!("<h2>{section}</h2>")), "no {section} section");
    }
    assert!(page.contains(&format!("<pre>cargo sim run {SCENARIO} --seed 1</pre>")), "the replay command");
    // The same seed renders to the same bytes; another seed does not.
    assert_eq!(html::report_page(&run(1, &[])).unwrap(), page, "the same seed, another page");
    assert_ne!(html::report_page(&run(2, &[])).unwrap(), page);
}

/// A `<failure>`'s message and text.
type Failure = (String, String);

/// The `<testcase>`s of a JUnit document: (classname, name, failure).
fn cases(doc: &Element) -> Vec<(String, String, Option<Failure>)> {
    doc.all("testcase")
        .iter()
        .map(|c| {
            let failure = c.all("failure").first().map(|f| (f.attr("message").unwrap().to_string(), f.text.clone()));
            (c.attr("classname").unwrap().to_string(), c.attr("name").unwrap().to_string(), failure)
        })
        .collect()
}

#[test]
fn junit_of_a_failing_run_and_its_mitigation() {
    let fixed = mitigation(&root().join(SCENARIO));
    assert!(!fixed.is_empty(), "{SCENARIO} has a `# mitigation:` line");
    let failing = run(1, &[]);
    let passing = run(1, &fixed);
    assert!(!failing.passed && passing.passed, "the shipped file fails, its mitigation passes");
    for (r, passed) in [(&failing, false), (&passing, true)] {
        let suite = junit::suite(format!("broker-outage seed {}", r.seed), "stackbed.broker-outage.seed-1".into(), r);
        let xml = junit::render("stackbed run broker-outage", &[suite]);
        let doc = parse_xml(&xml).unwrap_or_else(|e| panic!("JUnit XML not well-formed: {e}\n{xml}"));
        assert_eq!(doc.name, "testsuites");
        let cases = cases(&doc);
        // One case per check: the run finished, each invariant, each SLA criterion.
        let mut want = vec![("stackbed.broker-outage.seed-1.run".to_string(), "finished".to_string())];
        want.extend(r.invariants.iter().map(|i| ("stackbed.broker-outage.seed-1.invariant".into(), i.name.into())));
        want.push(("stackbed.broker-outage.seed-1.sla".into(), "failure_rate".into()));
        assert_eq!(cases.iter().map(|c| (c.0.clone(), c.1.clone())).collect::<Vec<_>>(), want);
        assert!(r.invariants.len() >= 10);
        let failed: Vec<_> = cases.iter().filter_map(|c| c.2.as_ref().map(|f| (c.1.as_str(), f))).collect();
        let suite = &doc.all("testsuite")[0];
        assert_eq!(suite.attr("tests"), Some(want.len().to_string().as_str()));
        assert_eq!(doc.attr("failures"), Some(if passed { "0" } else { "1" }));
        if passed {
            assert!(failed.is_empty(), "{failed:?}");
        } else {
            let [(name, (message, text))] = failed[..] else { panic!("one failure expected: {failed:?}") };
            assert_eq!(name, "failure_rate");
            let sla = &r.sla[0];
            assert_eq!(message, &sla.detail);
            assert!(message.contains("points out"), "{message}");
            assert!(text.ends_with(&format!("replay: {}", r.replay)), "{text}");
            assert_eq!(r.replay, format!("cargo sim run {SCENARIO} --seed 1"));
        }
    }
    assert!(passing.replay.ends_with(&format!("--set {}", fixed[0])), "{}", passing.replay);
}

/// The page in headless Chromium: it renders (a screenshot well beyond the same page without
/// its plots) and makes no request. Skipped when chromium is absent, unless
/// STACKBED_REQUIRE_CHROMIUM=1 (scripts/test.sh installs it and sets that).
#[test]
fn report_html_renders_in_headless_chromium_without_a_request() {
    if !chromium::available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("stackbed-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let page = html::report_page(&run(1, &[])).unwrap();
    // The controls: the plots' sections alone, and the same without their SVGs (what a
    // blank canvas would look like); and a page that does fetch, which shows that the net
    // log would see a request from the page.
    let (a, b) = (page.find("<h2>Latency CDF").unwrap(), page.find("<h2>Invariants").unwrap());
    let plots_only = format!("{}{}</body></html>", &page[..page.find("<body>").unwrap() + 6], &page[a..b]);
    let bare = chromium::without_svgs(&plots_only);
    let shoot = |name: &str, html: &str| chromium::shoot(&dir, name, html);
    let (_, full_log) = shoot("report", &page);
    let (full, _) = shoot("plots", &plots_only);
    let (plain, _) = shoot("bare", &bare);
    let (_, fetch_log) = shoot("fetching", chromium::FETCHING);
    assert!(chromium::page_requested(&fetch_log), "the control page's request is not in the net log");
    assert!(!chromium::page_requested(&full_log), "report.html made a request");
    assert!(full > 50_000, "the screenshot is nearly blank: {full} bytes");
    assert!(full > plain * 2, "the plots add little to the screenshot: {full} bytes against {plain} without them");
    let _ = std::fs::remove_dir_all(&dir);
}
