//! The files `run`, `sweep` and `compare` write for people and CI, through the built binary:
//! report.html beside every report.json, the sweep and compare pages, `--junit FILE`, and
//! the exit codes (0 pass, 1 a failed check, 2 bad input). `cargo sim-test -p stackbed-cli`.
//! The pages' content is checked in `tests/tests/reports.rs`.
#![cfg(madsim)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stackbed-reports-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stackbed(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stackbed")).current_dir(root()).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const OUTAGE: &str = "scenarios/faults/broker-outage.toml";
const MITIGATION: &str = "control.service_down_time=180s";

#[test]
fn run_writes_report_html_and_junit_and_exits_by_its_checks() {
    let d = out_dir("run");
    let f = |n: &str| d.join(n).display().to_string();
    let (rc, text) = stackbed(&["run", OUTAGE, "--seed", "1", "--report-dir", &f("fail"), "--junit", &f("fail.xml")]);
    assert_eq!(rc, 1, "a failed SLA exits 1: {text}");
    assert!(d.join("fail/report.json").exists() && d.join("fail/report.html").exists(), "{text}");
    let xml = read(&d.join("fail.xml"));
    assert_eq!(xml.matches("<failure ").count(), 1, "{xml}");
    assert!(xml.contains(&format!("replay: cargo sim run {OUTAGE} --seed 1</failure>")), "{xml}");
    let set = format!("--set={MITIGATION}");
    let (rc, text) =
        stackbed(&["run", OUTAGE, "--seed", "1", &set, "--report-dir", &f("pass"), "--junit", &f("pass.xml")]);
    assert_eq!(rc, 0, "{text}");
    let xml = read(&d.join("pass.xml"));
    assert!(xml.contains("failures=\"0\"") && !xml.contains("<failure"), "{xml}");
    assert!(xml.contains(&format!("cargo sim run {OUTAGE} --seed 1 --set {MITIGATION}")), "{xml}");
    // The same seed in another process: the same page, byte for byte.
    let (rc, text) = stackbed(&["run", OUTAGE, "--seed", "1", "--report-dir", &f("again")]);
    assert_eq!(rc, 1, "{text}");
    assert!(
        read(&d.join("again/report.html")) == read(&d.join("fail/report.html")),
        "report.html differs between runs"
    );
    // Several seeds: a page per seed and one linking them, a suite per seed.
    let (rc, text) = stackbed(&["run", OUTAGE, "--seeds", "1..2", "--report-dir", &f("multi"), "--junit", &f("m.xml")]);
    assert_eq!(rc, 1, "{text}");
    for p in ["multi/report.html", "multi/seed-1/report.html", "multi/seed-2/report.html"] {
        assert!(d.join(p).exists(), "{p}: {text}");
    }
    assert!(read(&d.join("multi/report.html")).contains("href=\"seed-2/report.html\""));
    assert_eq!(read(&d.join("m.xml")).matches("<testsuite ").count(), 2);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sweep_and_compare_write_pages_and_junit() {
    let d = out_dir("sweep");
    let f = |n: &str| d.join(n).display().to_string();
    let (rc, text) =
        stackbed(&["sweep", OUTAGE, "--seeds", "1..2", "--jobs", "1", "--out", &f("s.json"), "--junit", &f("s.xml")]);
    assert_eq!(rc, 1, "{text}");
    let page = read(&d.join("s.html"));
    assert!(page.contains("sla: failure_rate") && page.contains("id=\"seed-2\""), "{page}");
    let xml = read(&d.join("s.xml"));
    assert_eq!(xml.matches("<testsuite ").count(), 2, "{xml}");
    assert_eq!(xml.matches("<failure ").count(), 2, "{xml}");
    assert!(xml.contains(&format!("replay: cargo sim run {OUTAGE} --seed 2</failure>")), "{xml}");
    let set = format!("--set={MITIGATION}");
    let (rc, text) =
        stackbed(&["sweep", OUTAGE, "--seeds", "1..2", &set, "--out", &f("m.json"), "--junit", &f("m.xml")]);
    assert_eq!(rc, 0, "{text}");
    assert!(!read(&d.join("m.xml")).contains("<failure"));
    let q = "scenarios/quickstart.toml";
    let args = [
        "compare",
        q,
        "--strategies",
        "spread,pack",
        "--seeds",
        "1..1",
        "--report-dir",
        &f("c"),
        "--junit",
        &f("c.xml"),
    ];
    let (rc, text) = stackbed(&args);
    assert_eq!(rc, 0, "{text}");
    for p in ["c/report.html", "c/spread/seed-1/report.html", "c/pack/seed-1/report.html"] {
        assert!(d.join(p).exists(), "{p}: {text}");
    }
    let page = read(&d.join("c/report.html"));
    assert!(page.contains("<th>spread</th><th>pack</th>") && page.matches("<svg").count() == 2, "{page}");
    let xml = read(&d.join("c.xml"));
    assert!(xml.contains("classname=\"stackbed.quickstart.pack.seed-1.invariant\""), "{xml}");
    pages_render_in_chromium(&d, &read(&d.join("s.html")), &page);
    let _ = std::fs::remove_dir_all(&d);
}

/// The sweep page and the compare page in headless Chromium: each renders, makes no request,
/// and the compare page's plots are drawn (well-formed SVGs with a data line, and a
/// screenshot well beyond the same page without them). The run's page: tests/tests/reports.rs.
fn pages_render_in_chromium(dir: &Path, sweep: &str, compare: &str) {
    use stackbed_tests::chromium;
    if !chromium::available() {
        return;
    }
    for svg in compare.split("<svg").skip(1) {
        let svg = format!("<svg{}", &svg[..svg.find("</svg>").expect("svg closed") + 6]);
        let svg = stackbed_tests::parse_xml(&svg).unwrap_or_else(|e| panic!("a compare plot is not well-formed: {e}"));
        assert!(stackbed_tests::svg_has_data(&svg), "a compare plot has nothing drawn but its axes");
    }
    let (_, fetch_log) = chromium::shoot(dir, "fetching", chromium::FETCHING);
    assert!(chromium::page_requested(&fetch_log), "the control page's request is not in the net log");
    for (name, page) in [("sweep", sweep), ("compare", compare)] {
        let (size, log) = chromium::shoot(dir, name, page);
        assert!(!chromium::page_requested(&log), "the {name} page made a request");
        assert!(size > 20_000, "the {name} page's screenshot is nearly blank: {size} bytes");
    }
    let (with, _) = chromium::shoot(dir, "compare-plots", compare);
    let (without, _) = chromium::shoot(dir, "compare-bare", &chromium::without_svgs(compare));
    assert!(with > without * 3 / 2, "the compare plots add little: {with} bytes against {without} without them");
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let (rc, text) = stackbed(&["run", "no/such/scenario.toml", "--seed", "1"]);
    assert_eq!(rc, 2, "{text}");
    assert!(text.contains("error:"), "{text}");
    let (rc, text) = stackbed(&["run", "scenarios/quickstart.toml", "--seed", "1", "--set", "no.such.key=1"]);
    assert_eq!(rc, 2, "{text}");
    assert!(text.contains("--set"), "{text}");
    let (rc, text) = stackbed(&["run", "scenarios/quickstart.toml", "--seed", "x"]);
    assert_eq!(rc, 2, "clap's usage errors exit 2 too: {text}");
    // A JUnit file that cannot be written is an error after the run, not a panic.
    let d = out_dir("bad");
    let blocker = d.join("file");
    std::fs::write(&blocker, "").unwrap();
    let junit = blocker.join("j.xml").display().to_string();
    let rd = d.join("r").display().to_string();
    let (rc, text) =
        stackbed(&["run", "scenarios/quickstart.toml", "--seed", "1", "--report-dir", &rd, "--junit", &junit]);
    assert_eq!(rc, 2, "{text}");
    assert!(text.contains("cannot create") && !text.contains("panicked"), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}
