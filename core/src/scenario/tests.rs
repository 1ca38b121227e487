use super::*;

const GOOD: &str = r#"
[scenario]
name = "t"

[topology]
[[topology.hosts]]
count = 2
vcpus = 8
ram_mb = 16384
disk_gb = 100

[[flavors]]
name = "m1.small"
vcpus = 1
ram_mb = 2048
disk_gb = 20

[[images]]
name = "cirros"
size_mb = 16
disk_format = "qcow2"

[[tenants]]
name = "demo"

[workload]
runner = { kind = "constant", concurrency = 2, times = 4 }
flavors = { "m1.small" = 1.0 }
images = { "cirros" = 1.0 }
"#;

#[test]
fn good_file_parses_with_nova_defaults() {
    let s = Scenario::parse("t.toml", GOOD).unwrap();
    assert_eq!(s.host_count(), 2);
    assert_eq!(s.control.max_concurrent_builds, 10);
    assert_eq!(s.control.service_down_time.ms(), 60_000);
    assert_eq!(s.topology.hosts[0].reserved.ram_mb, 512);
    assert_eq!(s.scheduler_config(), SchedulerConfig::default());
}

fn error_of(text: &str) -> ScenarioError {
    Scenario::parse("bad.toml", text).unwrap_err()
}

#[test]
fn type_error_names_line_and_field() {
    let e = error_of(&GOOD.replace("ram_mb = 16384", "ram_mb = \"lots\""));
    assert_eq!(e.file, "bad.toml");
    assert_eq!(e.line, 9, "{e}");
    assert_eq!(e.field, "topology.hosts.0.ram_mb", "{e}");
}

#[test]
fn unknown_field_is_refused() {
    let e = error_of(&GOOD.replace("disk_gb = 100", "disk_gb = 100\ncolour = 3"));
    assert!(e.message.contains("colour"), "{e}");
    assert_eq!(e.line, 11, "{e}");
}

#[test]
fn dangling_flavor_reference_names_the_field() {
    let e = error_of(&GOOD.replace("flavors = { \"m1.small\" = 1.0 }", "flavors = { \"m1.huge\" = 1.0 }"));
    assert_eq!(e.field, "workload.flavors.m1.huge");
    assert!(e.message.contains("no flavor named"), "{e}");
    assert_eq!(e.line, 28, "{e}");
}

#[test]
fn bad_duration_and_syntax() {
    let e = error_of(&format!("{GOOD}\n[control]\nreport_interval = \"10 parsecs\"\n"));
    assert!(e.message.contains("unit"), "{e}");
    assert_eq!(e.field, "control.report_interval", "{e}");
    let e = error_of("[scenario\nname = 1");
    assert_eq!(e.line, 1, "{e}");
}

#[test]
fn unknown_filter() {
    let e = error_of(&format!("{GOOD}\n[control.scheduler]\nfilters = [\"Compute\", \"Bogus\"]\n"));
    assert_eq!(e.field, "control.scheduler.filters.1");
    assert!(e.message.contains("Bogus"));
}

#[test]
fn guest_section() {
    let g = Scenario::parse("t.toml", &format!("{GOOD}\n[guest]\nkernel = \"k\"\ninitrd = \"i\"\n")).unwrap();
    let g = g.guest.unwrap();
    assert_eq!((g.cmdline.as_str(), g.libvirt_uri.as_str()), ("console=ttyS0 quiet", "qemu:///system"));
    assert!(Scenario::parse("t.toml", GOOD).unwrap().guest.is_none());
    let e = error_of(&format!("{GOOD}\n[guest]\nkernel = \"k\"\ninitrd = \"i\"\nboot_timeout = \"0s\"\n"));
    assert_eq!(e.field, "guest.boot_timeout", "{e}");
    assert_eq!(e.line, GOOD.lines().count() + 5, "{e}");
    let e = error_of(&format!("{GOOD}\n[guest]\nkernel = \"k\"\n"));
    assert!(e.message.contains("initrd"), "{e}");
}

const AGGREGATES: &str = r#"
[[aggregates]]
name = "fast"
hosts = ["compute-2"]
availability_zone = "az1"
metadata = { ssd = "true", ram_weight_multiplier = "-1.0" }
"#;

#[test]
fn aggregates_resolve_by_name_prefix_and_range() {
    let s = Scenario::parse("t.toml", &format!("{GOOD}{AGGREGATES}")).unwrap();
    assert_eq!(s.aggregates_of("compute-2")[0].metadata["availability_zone"], "az1");
    assert!(s.aggregates_of("compute-1").is_empty());
    let views = s.host_aggregates();
    assert!(views["compute-1"].is_empty());
    assert_eq!(views["compute-2"].weigher_multiplier(WeigherKind::Ram), Some(-1.0));
    assert_eq!(s.availability_zones().into_iter().collect::<Vec<_>>(), vec!["az1", "nova"]);
    for (selector, host, expect) in [
        ("compute-*", "compute-12", true),
        ("compute-[2-4]", "compute-3", true),
        ("compute-[2-4]", "compute-5", false),
        ("compute-1", "compute-12", false),
        ("compute-[x-4]", "compute-3", false),
    ] {
        assert_eq!(AggregateDecl::selects(selector, host), expect, "{selector} {host}");
    }
}

#[test]
fn scheduling_declarations_are_checked_with_line_and_field() {
    let with = |extra: &str| error_of(&format!("{GOOD}{extra}"));
    let e = with(&AGGREGATES.replace("[\"compute-2\"]", "[\"compute-2\", \"gpu-*\"]"));
    assert_eq!(e.field, "aggregates.0.hosts.1", "{e}");
    assert_eq!(e.line, 33, "{e}");
    let e = with(&AGGREGATES.replace("\"-1.0\"", "\"lots\""));
    assert_eq!(e.field, "aggregates.0.metadata.ram_weight_multiplier", "{e}");
    let e = with(&AGGREGATES.replace("ram_weight", "colour_weight"));
    assert!(e.message.contains("no weigher `colour`"), "{e}");
    let e = with("\n[control.scheduler]\nstrategy = \"magic\"\n");
    assert_eq!(e.field, "control.scheduler.strategy", "{e}");
    assert!(e.message.contains("p2c"), "{e}");
    let e = with("\n[control.scheduler]\nweighers = { ram = 1.0, gpu = 2.0 }\n");
    assert_eq!(e.field, "control.scheduler.weighers.gpu", "{e}");
    let hints = GOOD.replace("images = {", "hints = { query = '[\"~\", 1]' }\nimages = {");
    let e = error_of(&hints);
    assert_eq!(e.field, "workload.hints.query", "{e}");
    assert!(e.message.contains("unknown operator"), "{e}");
    let near = GOOD.replace("images = {", "hints = { build_near_host_ip = \"10.0.0.300\" }\nimages = {");
    assert_eq!(error_of(&near).field, "workload.hints.build_near_host_ip");
    let zone = GOOD.replace("images = {", "availability_zone = \"az9\"\nimages = {");
    let e = error_of(&zone);
    assert_eq!(e.field, "workload.availability_zone", "{e}");
    assert!(e.message.contains("nova"), "{e}");
}

#[test]
fn workload_passes_are_checked_with_line_and_field() {
    let line_of = |text: &str, needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    for (value, why) in [("0", "within 1..=16"), ("17", "within 1..=16")] {
        let text = GOOD.replace("images = {", &format!("passes = {value}\nimages = {{"));
        let e = error_of(&text);
        assert_eq!(e.field, "workload.passes", "{e}");
        assert_eq!(e.line, line_of(&text, "passes"), "{e}");
        assert!(e.message.contains(why), "{e}");
    }
    let text = GOOD.replace("images = {", "passes = \"two\"\nimages = {");
    assert_eq!(error_of(&text).field, "workload.passes");
    let two = GOOD.replace("images = {", "passes = 2\nimages = {");
    assert_eq!(Scenario::parse("t.toml", &two).unwrap().workload.passes, 2);
    assert_eq!(Scenario::parse("t.toml", GOOD).unwrap().workload.passes, 1);
}

#[test]
fn scheduler_knobs_reach_the_config() {
    let text = format!(
        "{GOOD}\n[control.scheduler]\nstrategy = \"pack\"\nmax_io_ops_per_host = 4\nweighers = {{ hypervisor_version = -2.0 }}\n"
    );
    let s = Scenario::parse("t.toml", &text).unwrap();
    assert_eq!(s.control.scheduler.strategy, "pack");
    let c = s.scheduler_config();
    assert_eq!(c.max_io_ops_per_host, 4);
    assert_eq!(c.weighers[&WeigherKind::HypervisorVersion], -2.0);
    assert_eq!(c.weighers[&WeigherKind::Ram], 1.0);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
    assert_eq!(parse_duration("1.5s").unwrap().as_millis(), 1500);
    assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("-1s").is_err());
}

mod fuzz {
    use proptest::prelude::*;

    const BASE: &str = include_str!("../../../scenarios/quickstart.toml");

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// Any edit of a good file either parses or gives an error with a line; never a panic.
        #[test]
        fn edited_scenarios_never_panic(cut in 0usize..BASE.len(), len in 0usize..40, insert in "[a-z0-9=\\[\\]\"{}.,\\n -]{0,12}") {
            let mut text = BASE.to_string();
            let start = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            let end = (start + len..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
            text.replace_range(start..end, &insert);
            if let Err(e) = crate::scenario::Scenario::parse("fuzz.toml", &text) {
                prop_assert!(e.line >= 1, "{e}");
                prop_assert!(!e.message.is_empty());
            }
        }
    }
}

mod missing_fields {
    #[test]
    fn a_missing_field_is_named() {
        let e = crate::scenario::Scenario::parse("m.toml", "[scenario]\nname = \"x\"\n").unwrap_err();
        assert_eq!(e.field, "topology", "{e}");
    }
}
