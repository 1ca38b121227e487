use super::*;

pub(super) const GOOD: &str = r#"
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

pub(super) fn error_of(text: &str) -> ScenarioError {
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

pub(super) const AGGREGATES: &str = r#"
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
fn servers_per_request_is_checked_with_line_and_field() {
    let line_of = |text: &str, needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    for value in ["0", "10001"] {
        let text = GOOD.replace("images = {", &format!("servers_per_request = {value}\nimages = {{"));
        let e = error_of(&text);
        assert_eq!(e.field, "workload.servers_per_request", "{e}");
        assert_eq!(e.line, line_of(&text, "servers_per_request"), "{e}");
        assert!(e.message.contains("within 1..=10000"), "{e}");
    }
    let many = GOOD.replace("images = {", "servers_per_request = 40\nimages = {");
    assert_eq!(Scenario::parse("t.toml", &many).unwrap().workload.servers_per_request, 40);
    assert_eq!(Scenario::parse("t.toml", GOOD).unwrap().workload.servers_per_request, 1);
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

/// A small deployment for fault tests: four computes, two schedulers, one of everything else.
fn fault_base() -> String {
    format!("{}\n[topology.workers]\nscheduler = 2\n", GOOD.replace("count = 2", "count = 4"))
}

/// Appends `extra` to [`fault_base`] and compares with `expect`: seed 1's schedule as
/// printed, or `error <field> @<line in extra>: <start of the message>`.
fn check(extra: &str, expect: &str) {
    let base = fault_base();
    let text = format!("{base}{extra}");
    let got = match Scenario::parse("f.toml", &text) {
        Ok(s) => s.fault_schedule(1).map_or_else(|e| format!("resolve error: {e}"), |f| f.to_string()),
        Err(e) => format!("error {} @{}: {}", e.field, e.line as i64 - base.lines().count() as i64, e.message),
    };
    let expect = expect.trim();
    if expect.starts_with("error") {
        assert!(got.starts_with(expect), "\n{extra}\n  got: {got}\n want: {expect}");
    } else {
        let expect: Vec<&str> = expect.lines().map(str::trim).collect();
        let got_lines: Vec<&str> = got.lines().map(str::trim).collect();
        assert_eq!(got_lines, expect, "\n{extra}\n  got:\n{got}");
    }
}

#[test]
fn no_faults_means_an_empty_schedule() {
    check("", "faults: none");
    let s = Scenario::parse("t.toml", GOOD).unwrap();
    assert_eq!(s.fault_schedule(7).unwrap(), crate::faults::FaultSchedule::default());
    let json = serde_json::to_value(&s).unwrap();
    for key in ["faults", "random_faults", "phases", "overrides"] {
        assert!(json.get(key).is_none(), "{key} reaches report.json without faults");
    }
}

#[test]
fn every_fault_form_resolves() {
    check(
        r#"
[phases]
chaos = "10m"
heal = "all"
liveness_bound = "20m"

[[faults]]
kind = "kill"
target = "nova-scheduler-2"
at = "60s"
duration = "30s"

[[faults]]
kind = "partition"
target = "broker"
other = "compute-[1-2]"
direction = "one_way"
at = ["30s", "90s"]
duration = ["5s", "60s"]

[[faults]]
kind = "kill"
target = "compute:random"
during = "spawning"
nth = 3
duration = "30s"

[[faults]]
kind = "pause"
target = "nova-scheduler:random"
during = "networking"

[[faults]]
kind = "restart"
target = "db"
at = "2m"

[[faults]]
kind = "resume"
target = "nova-scheduler"
at = "3m"

[[faults]]
kind = "power_off"
target = "compute-4"
at = "100s"
duration = "1m"

[[faults]]
kind = "clog"
target = "placement"
at = "10s"
duration = "250ms"

[[faults]]
kind = "drop"
target = "compute-*"
at = "0s"
rate = 0.1

[[faults]]
kind = "delay"
target = "nova-conductor"
at = "5s"
rate = [0.2, 0.4]
by = ["100ms", "200ms"]

[[faults]]
kind = "duplicate"
target = "nova-api"
at = "5s"
rate = 1

[[faults]]
kind = "clock_skew"
target = "compute-1"
at = "0s"
offset = "-2s"
drift_ppm = [-100, 100]

[[faults]]
kind = "slow"
target = "keystone"
at = "1s"
multiplier = 4.0

[[faults]]
kind = "hypervisor_errors"
target = "compute-[3-4]"
at = "1s"
duration = "5m"
rate = 0.5
"#,
        r#"
faults: 14 | chaos 600s | heal all
at 60s kill nova-scheduler-2 for 30s (faults[0])
at 50.832s partition broker -> compute-1,compute-2 for 35.944s (faults[1])
when instance #3 reaches spawning kill its host for 30s (faults[2])
when instance #1 reaches networking pause nova-scheduler-2 (faults[3])
at 120s restart db (faults[4])
at 180s resume nova-scheduler-1,nova-scheduler-2 (faults[5])
at 100s power_off compute-4 for 60s (faults[6])
at 10s clog placement-1 for 0.25s (faults[7])
at 0s drop compute-1,compute-2,compute-3,compute-4 rate 0.1 (faults[8])
at 5s delay nova-conductor-1 rate 0.2659 by 0.16s (faults[9])
at 5s duplicate nova-api-1 rate 1 (faults[10])
at 0s clock_skew compute-1 offset -2000ms drift 82ppm (faults[11])
at 1s slow keystone-1 x4 (faults[12])
at 1s hypervisor_errors compute-3,compute-4 rate 0.5 for 300s (faults[13])
"#,
    );
}

#[test]
fn fault_declarations_are_checked_with_line_and_field() {
    let fault = |body: &str| format!("\n[[faults]]\n{body}\n");
    for (body, expect) in [
        ("kind = \"explode\"\ntarget = \"db\"\nat = \"1s\"", "error faults.0.kind @3: unknown variant `explode`"),
        ("kind = \"kill\"\ntarget = \"gpu-*\"\nat = \"1s\"", "error faults.0.target @4: `gpu-*` names no node"),
        ("kind = \"kill\"\ntarget = \"rally\"\nat = \"1s\"", "error faults.0.target @4: `rally` is the Rally client"),
        (
            "kind = \"kill\"\ntarget = \"compute-[9-12]\"\nat = \"1s\"",
            "error faults.0.target @4: `compute-[9-12]` names no node",
        ),
        (
            "kind = \"partition\"\ntarget = \"broker\"\nat = \"1s\"",
            "error faults.0.other @2: a partition needs `other`",
        ),
        (
            "kind = \"partition\"\ntarget = \"db\"\nother = \"db\"\nat = \"1s\"",
            "error faults.0.other @5: `db` names no node outside",
        ),
        (
            "kind = \"kill\"\ntarget = \"db\"\nother = \"broker\"\nat = \"1s\"",
            "error faults.0.other @5: only a partition",
        ),
        (
            "kind = \"kill\"\ntarget = \"db\"\ndirection = \"one_way\"\nat = \"1s\"",
            "error faults.0.direction @5: only a partition",
        ),
        (
            "kind = \"partition\"\ntarget = \"db\"\nother = \"broker\"\ndirection = \"sideways\"\nat = \"1s\"",
            "error faults.0.direction @6: unknown variant",
        ),
        ("kind = \"kill\"\ntarget = \"db\"", "error faults.0.kind @3: say when"),
        (
            "kind = \"kill\"\ntarget = \"db\"\nat = \"1s\"\nduring = \"spawning\"",
            "error faults.0.during @6: give `at` or `during`",
        ),
        ("kind = \"kill\"\ntarget = \"db\"\nat = [\"90s\", \"30s\"]", "error faults.0.at @5: empty range"),
        (
            "kind = \"kill\"\ntarget = \"db\"\nat = [\"1s\", \"2s\", \"3s\"]",
            "error faults.0.at @5: a range is two values",
        ),
        (
            "kind = \"kill\"\ntarget = \"db\"\nat = \"soon\"",
            "error faults.0.at @5: expected a duration like \"10s\" or a range",
        ),
        (
            "kind = \"kill\"\ntarget = \"compute:random\"\nduring = \"deleting\"",
            "error faults.0.during @5: a boot never reaches `deleting`",
        ),
        (
            "kind = \"kill\"\ntarget = \"compute:random\"\nduring = \"resizing\"",
            "error faults.0.during @5: unknown variant `resizing`",
        ),
        (
            "kind = \"kill\"\ntarget = \"compute:random\"\nduring = \"spawning\"\nnth = 5",
            "error faults.0.nth @6: the workload makes 4 requests",
        ),
        (
            "kind = \"kill\"\ntarget = \"compute:random\"\nduring = \"spawning\"\nnth = 0",
            "error faults.0.nth @6: counts from 1",
        ),
        ("kind = \"kill\"\ntarget = \"db\"\nat = \"1s\"\nnth = 2", "error faults.0.nth @6: `nth` counts instances"),
        (
            "kind = \"restart\"\ntarget = \"db\"\nat = \"1s\"\nduration = \"5s\"",
            "error faults.0.duration @6: restart happens at once",
        ),
        (
            "kind = \"kill\"\ntarget = \"db\"\nat = \"1s\"\nduration = \"0s\"",
            "error faults.0.duration @6: must be above 0",
        ),
        ("kind = \"drop\"\ntarget = \"db\"\nat = \"1s\"", "error faults.0.rate @2: drop needs `rate`"),
        ("kind = \"drop\"\ntarget = \"db\"\nat = \"1s\"\nrate = 1.5", "error faults.0.rate @6: must be within 0..1"),
        ("kind = \"drop\"\ntarget = \"db\"\nat = \"1s\"\nrate = [0.5, 0.1]", "error faults.0.rate @6: empty range"),
        (
            "kind = \"kill\"\ntarget = \"db\"\nat = \"1s\"\nrate = 0.5",
            "error faults.0.rate @6: kill takes no values, not `rate`",
        ),
        ("kind = \"delay\"\ntarget = \"db\"\nat = \"1s\"\nrate = 0.5", "error faults.0.by @2: delay needs `by`"),
        (
            "kind = \"slow\"\ntarget = \"db\"\nat = \"1s\"\nmultiplier = 0",
            "error faults.0.multiplier @6: must be a positive number",
        ),
        ("kind = \"clock_skew\"\ntarget = \"db\"\nat = \"1s\"", "error faults.0.kind @3: clock_skew needs `offset`"),
        (
            "kind = \"power_off\"\ntarget = \"db\"\nat = \"1s\"",
            "error faults.0.target @4: power_off hits compute hosts only",
        ),
        (
            "kind = \"kill\"\ntarget = \"db\"\nat = \"1s\"\ncolour = \"red\"",
            "error faults.0.colour @6: unknown field `colour`",
        ),
    ] {
        check(&fault(body), expect);
    }
    check(
        "\n[phases]\nchaos = \"1m\"\n[[faults]]\nkind = \"kill\"\ntarget = \"db\"\nat = \"2m\"\n",
        "error faults.0.at @7: starts after the chaos phase",
    );
    check("\n[phases]\nchaos = \"0s\"\n", "error phases.chaos @3: must be above 0");
    check("\n[phases]\nheal = \"some\"\n", "error phases.heal @3: unknown variant `some`");
}

#[test]
fn random_faults_are_drawn_per_seed_in_the_chaos_phase() {
    let random = r#"
[phases]
chaos = "5m"

[random_faults]
targets = ["compute", "nova-scheduler"]
duration = ["10s", "30s"]
kill_per_minute = 0.5
partition_per_minute = 1.0
power_off_per_minute = 0.2
drop_rate = 0.01
"#;
    check(
        random,
        r#"
faults: 10 | chaos 300s | heal all
at 0s drop nova-scheduler-1,nova-scheduler-2,compute-1,compute-2,compute-3,compute-4 rate 0.01 (random_faults.drop_rate)
at 72.089s kill nova-scheduler-2 for 18.604s (random_faults.kill_per_minute)
at 88.653s kill compute-4 for 20.628s (random_faults.kill_per_minute)
at 118.932s kill nova-scheduler-1 for 24.944s (random_faults.kill_per_minute)
at 158.492s partition nova-scheduler-2 <-> nova-scheduler-1,compute-1,compute-2,compute-3,compute-4 for 20.137s (random_faults.partition_per_minute)
at 181.797s kill compute-4 for 21.246s (random_faults.kill_per_minute)
at 194.11s partition nova-scheduler-1 <-> nova-scheduler-2,compute-1,compute-2,compute-3,compute-4 for 13.726s (random_faults.partition_per_minute)
at 238.045s power_off compute-4 for 16.193s (random_faults.power_off_per_minute)
at 271.078s partition compute-3 <-> nova-scheduler-1,nova-scheduler-2,compute-1,compute-2,compute-4 for 28.278s (random_faults.partition_per_minute)
at 291.836s partition compute-1 <-> nova-scheduler-1,nova-scheduler-2,compute-2,compute-3,compute-4 for 21.507s (random_faults.partition_per_minute)
"#,
    );
    let s = Scenario::parse("r.toml", &format!("{}{random}", fault_base())).unwrap();
    assert_eq!(s.fault_schedule(3).unwrap(), s.fault_schedule(3).unwrap(), "pure");
    assert_ne!(s.fault_schedule(3).unwrap(), s.fault_schedule(4).unwrap(), "drawn per seed");
    for seed in 1..50 {
        for f in s.fault_schedule(seed).unwrap().faults {
            let crate::faults::Trigger::At { at_ms } = f.trigger else { panic!("{f}") };
            assert!(at_ms < 300_000, "{f}");
        }
    }
    for (extra, expect) in [
        (
            "[random_faults]\ntargets = [\"compute\"]\nkill_per_minute = 1.0\n",
            "error random_faults.kill_per_minute @4: random faults start in the chaos phase",
        ),
        (
            "[phases]\nchaos = \"1m\"\n[random_faults]\ntargets = [\"gpu\"]\n",
            "error random_faults.targets.0 @5: `gpu` names no node",
        ),
        (
            "[phases]\nchaos = \"1m\"\n[random_faults]\ntargets = [\"compute:random\"]\n",
            "error random_faults.targets.0 @5: targets are already drawn from",
        ),
        (
            "[phases]\nchaos = \"1m\"\n[random_faults]\ntargets = [\"db\"]\npower_off_per_minute = 1.0\n",
            "error random_faults.power_off_per_minute @6: power_off hits compute hosts only",
        ),
        (
            "[phases]\nchaos = \"1m\"\n[random_faults]\ntargets = [\"db\"]\ndrop_rate = 2.0\n",
            "error random_faults.drop_rate @6: must be within 0..1",
        ),
        (
            "[phases]\nchaos = \"1h\"\n[random_faults]\ntargets = [\"db\"]\nkill_per_minute = 500.0\n",
            "error random_faults.targets @5: the rates come to 30000 faults",
        ),
        (
            "[phases]\nchaos = \"1m\"\n[random_faults]\ntargets = [\"db\"]\nduration = [\"5s\", \"1s\"]\n",
            "error random_faults.duration @6: empty range",
        ),
    ] {
        check(&format!("\n{extra}"), expect);
    }
}

#[test]
fn each_fault_draws_from_its_own_stream() {
    let one = "\n[[faults]]\nkind = \"kill\"\ntarget = \"compute:random\"\nat = [\"1s\", \"100s\"]\n";
    let before = Scenario::parse("a.toml", &format!("{}{one}", fault_base())).unwrap();
    let extra = "\n[[faults]]\nkind = \"pause\"\ntarget = \"nova-scheduler:random\"\nat = [\"1s\", \"9s\"]\n";
    let after = Scenario::parse("b.toml", &format!("{}{one}{extra}", fault_base())).unwrap();
    for seed in 1..20 {
        assert_eq!(before.fault_schedule(seed).unwrap().faults[0], after.fault_schedule(seed).unwrap().faults[0]);
    }
}

#[test]
fn phases_liveness_bound_wins_over_the_workload_one() {
    let s =
        Scenario::parse("p.toml", &format!("{}\n[phases]\nliveness_bound = \"20m\"\nheal = \"none\"\n", fault_base()))
            .unwrap();
    assert_eq!(s.workload.liveness_bound.ms(), 1_200_000);
    assert!(!s.fault_schedule(1).unwrap().phases.heal);
    let s = Scenario::parse("p.toml", &fault_base()).unwrap();
    assert_eq!(s.workload.liveness_bound.ms(), 600_000);
}

fn overridden(sets: &[&str]) -> Result<Scenario, ScenarioError> {
    let overrides: Vec<Override> = sets.iter().map(|s| s.parse().unwrap()).collect();
    Scenario::parse_with("o.toml", &fault_base(), &overrides)
}

#[test]
fn overrides_change_fields_before_checks() {
    let s = overridden(&[
        "control.amqp_durable_queues=true",
        "control.service_down_time=180s",
        "topology.workers.scheduler=3",
        "workload.runner.times=7",
        "control.scheduler.filters=[\"Compute\", \"ImageProperties\"]",
        "workload.flavors.\"m1.small\"=2",
        "topology.hosts[0].count=5",
    ])
    .unwrap();
    assert!(s.control.amqp_durable_queues);
    assert_eq!(s.control.service_down_time.ms(), 180_000);
    assert_eq!(s.topology.workers().scheduler, 3);
    assert_eq!(s.workload.runner.times(&[]), 7);
    assert_eq!(s.control.scheduler.filters.as_deref(), Some(&["Compute".to_string(), "ImageProperties".into()][..]));
    assert_eq!(s.workload.flavors["m1.small"], 2.0);
    assert_eq!(s.host_count(), 5);
    assert_eq!(s.overrides[0], "control.amqp_durable_queues=true");
    assert_eq!(serde_json::to_value(&s).unwrap()["overrides"][1], "control.service_down_time=180s");
    // Tables the file does not have are created (here `[topology.workers]` and `[phases]`).
    let o: Vec<Override> = ["topology.workers.scheduler=2", "phases.chaos=10m", "control.scheduler.strategy=pack"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let s = Scenario::parse_with("o.toml", GOOD, &o).unwrap();
    assert_eq!((s.topology.workers().scheduler, s.phases.chaos), (2, Some(Dur::secs(600))));
    assert_eq!(s.control.scheduler.strategy, "pack");
    // A later override wins; an override of a fault entry reaches its schedule.
    let base = format!("{}\n[[faults]]\nkind = \"kill\"\ntarget = \"db\"\nat = \"1s\"\n", fault_base());
    let o: Vec<Override> =
        ["faults[0].duration=10s", "faults.0.duration=20s"].iter().map(|s| s.parse().unwrap()).collect();
    let s = Scenario::parse_with("o.toml", &base, &o).unwrap();
    assert_eq!(s.fault_schedule(1).unwrap().faults[0].duration_ms, Some(20_000));
}

#[test]
fn override_errors_name_the_field() {
    for (set, field, message) in [
        ("control.colour=3", "control.colour", "unknown field `colour`"),
        ("control.service_down_time=soon", "control.service_down_time", "is not a duration"),
        (
            "control.amqp_durable_queues=maybe",
            "control.amqp_durable_queues",
            "invalid type: string \"maybe\", expected a boolean",
        ),
        ("topology.workers.scheduler=-1", "topology.workers.scheduler", "invalid value"),
        ("faults[0].duration=10s", "faults.0.duration", "`faults` has 0 entries: [0] is past its end"),
        ("topology.hosts[3].count=1", "topology.hosts.3.count", "`topology.hosts` has 1 entries: [3] is past its end"),
        ("scenario.name.first=x", "scenario.name.first", "`scenario.name` is a value, not a table"),
    ] {
        let e = overridden(&[set]).unwrap_err();
        assert_eq!(e.field, field, "{set}: {e}");
        assert!(e.message.contains(message), "{set}: {e}");
        assert!(e.message.contains("--set"), "{set}: {e}");
    }
    for bad in ["nokey", "=1", "a..b=1", "a[x]=1", "a[0]b=1"] {
        assert!(bad.parse::<Override>().is_err(), "{bad}");
    }
}

#[test]
fn random_events_do_not_hit_a_node_twice_at_once() {
    let text = format!(
        "{}\n[phases]\nchaos = \"30m\"\n[random_faults]\ntargets = [\"compute\"]\nkill_per_minute = 2.0\nduration = [\"1m\", \"5m\"]\n",
        fault_base()
    );
    let s = Scenario::parse("r.toml", &text).unwrap();
    for seed in 1..20 {
        let faults = s.fault_schedule(seed).unwrap().faults;
        for (i, a) in faults.iter().enumerate() {
            for b in &faults[i + 1..] {
                let (crate::faults::Trigger::At { at_ms: x }, crate::faults::Trigger::At { at_ms: y }) =
                    (&a.trigger, &b.trigger)
                else {
                    panic!()
                };
                let overlap = x.max(y) < &(x + a.duration_ms.unwrap()).min(y + b.duration_ms.unwrap());
                assert!(!(a.targets == b.targets && overlap), "seed {seed}: {a} and {b}");
            }
        }
    }
}

/// The fault example in README's scenario section parses, on a deployment with two schedulers.
#[test]
fn readme_fault_example_parses() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("`[random_faults]` (TOML cannot").unwrap();
    let block = &readme[start..];
    let block = &block[block.find("```toml").unwrap() + 7..];
    let block = &block[..block.find("```").unwrap()];
    let base = fault_base().replace("count = 4", "count = 8");
    let s = Scenario::parse("readme.toml", &format!("{base}{block}")).unwrap_or_else(|e| panic!("{e}"));
    let faults = s.fault_schedule(1).unwrap().faults;
    let sources: Vec<&str> = faults.iter().map(|f| f.source.as_str()).take(6).collect();
    assert_eq!(sources, ["faults[0]", "faults[1]", "faults[2]", "faults[3]", "faults[4]", "random_faults.drop_rate"]);
}

/// `[topology.controller]` sets nova's per-CPU worker defaults (API, conductor, scheduler:
/// `count × cores`; placement and keystone one each); a count the file gives wins.
#[test]
fn controller_cores_set_nova_s_worker_defaults() {
    let with =
        |extra: &str| Scenario::parse("t.toml", &GOOD.replace("[topology]\n", &format!("[topology]\n{extra}\n")));
    let w = |s: &Scenario| {
        let w = s.topology.workers();
        (w.api, w.conductor, w.scheduler, w.placement, w.keystone)
    };
    for (extra, expect) in [
        ("", (1, 1, 1, 1, 1)),
        ("controller = { cores = 8 }", (8, 8, 8, 1, 1)),
        ("controller = { count = 3, cores = 4 }", (12, 12, 12, 1, 1)),
        ("controller = { count = 3, cores = 4 }\nworkers = { scheduler = 2, placement = 5 }", (12, 12, 2, 5, 1)),
        ("workers = { api = 6 }", (6, 1, 1, 1, 1)),
    ] {
        let s = with(extra).unwrap_or_else(|e| panic!("{extra}: {e}"));
        assert_eq!(w(&s), expect, "{extra}");
        // The nodes the run starts follow the resolved counts.
        let apis = crate::faults::nodes(&s).iter().filter(|n| n.group == crate::faults::NOVA_API).count();
        assert_eq!(apis as u32, expect.0, "{extra}");
    }
    for (extra, field, message) in [
        ("controller = { cores = 0 }", "topology.controller.cores", "must be within 1..=1024, got 0"),
        ("controller = { count = 0, cores = 2 }", "topology.controller.count", "must be within 1..=64, got 0"),
        ("controller = { count = 2 }", "topology.controller.cores", "missing field `cores`"),
        (
            "workers = { conductor = 0 }",
            "topology.workers.conductor",
            "conductor workers must be within 1..=254, got 0",
        ),
        (
            "controller = { count = 16, cores = 16 }",
            "topology.controller",
            "api workers must be within 1..=254, got 256",
        ),
    ] {
        let e = with(extra).unwrap_err();
        assert_eq!(e.field, field, "{extra}: {e}");
        assert!(e.message.contains(message), "{extra}: {e}");
        assert!(e.line > 0, "{extra}: {e}");
    }
}

/// `[topology.db]`: one embedded node by default (the node named `db`), a Galera cluster of
/// `db-1`..`db-N` behind `haproxy` above one; bad values named with their line.
#[test]
fn topology_db_names_the_cluster_s_nodes_and_refuses_bad_values() {
    let with =
        |extra: &str| Scenario::parse("t.toml", &GOOD.replace("[topology]\n", &format!("[topology]\n{extra}\n")));
    let names = |s: &Scenario| -> Vec<String> {
        crate::faults::nodes(s)
            .into_iter()
            .filter(|n| [crate::faults::DATABASE, crate::faults::PROXY].contains(&n.group.as_str()))
            .map(|n| n.name)
            .collect()
    };
    let one = with("").unwrap();
    assert!(!one.topology.db.clustered());
    assert_eq!(names(&one), ["db"]);
    let three =
        with("db = { nodes = 3, mode = \"faithful\", flush_log_at_trx_commit = 2, proxy = \"tripleo\" }").unwrap();
    assert_eq!(names(&three), ["db-1", "db-2", "db-3", "haproxy"]);
    let g = three.topology.db.galera();
    assert_eq!((g.nodes, g.mode, g.flush), (3, crate::galera::Mode::Faithful, crate::galera::Flush::PerSecond));
    assert!(three.topology.db.proxy_config().servers.iter().all(|s| s.backup), "TripleO: every server a backup");
    for (extra, field, message) in [
        ("db = { nodes = 0 }", "topology.db.nodes", "must be within 1..=9, got 0"),
        ("db = { nodes = 10 }", "topology.db.nodes", "must be within 1..=9, got 10"),
        ("db = { nodes = 3, flush_log_at_trx_commit = 3 }", "topology.db.flush_log_at_trx_commit", "0, 1 or 2"),
        ("db = { nodes = 3, wsrep_sync_wait = 16 }", "topology.db.wsrep_sync_wait", "within 0..=15"),
        ("db = { nodes = 3, gcache_writesets = 0 }", "topology.db.gcache_writesets", "must be above 0"),
        ("db = { nodes = 3, proxy = \"f5\" }", "topology.db.proxy", "unknown proxy set-up `f5`"),
        ("db = { nodes = 3, mode = \"loose\" }", "topology.db.mode", "unknown variant `loose`"),
    ] {
        let e = with(extra).unwrap_err();
        assert_eq!(e.field, field, "{extra}: {e}");
        assert!(e.message.contains(message), "{extra}: {e}");
        assert!(e.line > 0, "{extra}: {e}");
    }
}
