//! The scenario side of the scheduler's fidelity fixes: what nova refuses is an error with
//! its line and field, what nova tolerates (an aggregate ratio that is not a number) loads.

use super::tests::{error_of, GOOD};
use super::*;

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn image_and_host_records_nova_refuses_are_named() {
    let image = |props: &str| {
        GOOD.replace("disk_format = \"qcow2\"", &format!("disk_format = \"qcow2\"\nproperties = {{ {props} }}"))
    };
    let host = |extra: &str| GOOD.replace("disk_gb = 100", &format!("disk_gb = 100\n{extra}"));
    let icehouse = |text: String| format!("{text}\n[control]\nera = \"icehouse\"\n");
    // (text, field, message fragment); None: loads.
    let cases: Vec<(String, Option<(&str, &str)>)> = vec![
        (image("hw_architecture = \"x64\""), Some(("images.0.properties.hw_architecture", "x86_64"))),
        (image("architecture = \"AMD64\", vm_mode = \"pv\", hypervisor_type = \"xapi\""), None),
        (image("hypervisor_type = \"esx\""), Some(("images.0.properties.hypervisor_type", "hypervisor type"))),
        (icehouse(image("hypervisor_type = \"esx\"")), None),
        (icehouse(image("vm_mode = \"baremetal\"")), Some(("images.0.properties.vm_mode", "vm mode"))),
        (
            image("hypervisor_version_requires = \"newest\""),
            Some(("images.0.properties.hypervisor_version_requires", "predicate")),
        ),
        (host("supported_instances = [[\"x86_64\", \"kvm\", \"hvm\"], [\"i686\", \"qemu\", \"hvm\"]]"), None),
        (host("supported_instances = []"), None),
        (
            host("supported_instances = [[\"x86_64\", \"kvm\", \"hvm\"], [\"x86_64\", \"esx\", \"hvm\"]]"),
            Some(("topology.hosts.0.supported_instances.1", "esx")),
        ),
        (host("cpu_info = '{\"vendor\": \"Intel\"}'"), None),
        (host("cpu_info = 'Intel'"), Some(("topology.hosts.0.cpu_info", "JSON"))),
        (host("metrics = { \"cpu.percent\" = 0.25 }"), None),
    ];
    for (text, expect) in cases {
        let got = Scenario::parse("t.toml", &text);
        match (got, expect) {
            (Ok(_), None) => {}
            (Err(e), Some((field, fragment))) => {
                assert_eq!(e.field, field, "{e}");
                assert!(e.message.contains(fragment), "{e}");
                let needle = field.rsplit('.').find(|p| p.parse::<usize>().is_err()).unwrap();
                assert_eq!(e.line, line_of(&text, needle), "{e}");
            }
            (got, expect) => panic!("{text}\nexpected {expect:?}, got {got:?}"),
        }
    }
    let s = Scenario::parse("t.toml", &host("supported_instances = []\nmetrics = { \"cpu.percent\" = 0.25 }")).unwrap();
    let node = s.topology.hosts[0].node("compute-1");
    assert_eq!(node.supported_instances, Some(vec![]));
    assert_eq!(node.metrics["cpu.percent"], 0.25);
}

#[test]
fn flavors_take_ephemeral_disk_and_swap() {
    let text = GOOD.replace("disk_gb = 20", "disk_gb = 20\nephemeral_gb = 10\nswap = 1536");
    let s = Scenario::parse("t.toml", &text).unwrap();
    let f = &s.flavors[0];
    assert_eq!((f.ephemeral_gb, f.swap), (10, 1536));
    // nova's DISK_GB: root + ephemeral + ceil(swap / 1024).
    assert_eq!(f.resources().0[2], 32);
    let e = error_of(&GOOD.replace("disk_gb = 20", "disk_gb = 20\nswap = -1"));
    assert_eq!(e.field, "flavors.0.swap", "{e}");
}

#[test]
fn aggregate_numbers_that_are_not_numbers_load_with_a_warning() {
    let aggregates = r#"
[[aggregates]]
name = "odd"
hosts = ["compute-1"]
metadata = { cpu_allocation_ratio = "lots", ram_weight_multiplier = "heavy", max_io_ops_per_host = "8.5", disk_allocation_ratio = "2.0" }
"#;
    let s = Scenario::parse("t.toml", &format!("{GOOD}{aggregates}")).unwrap();
    let fields: Vec<String> = s.warnings().into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        fields,
        [
            "aggregates.0.metadata.cpu_allocation_ratio",
            "aggregates.0.metadata.max_io_ops_per_host",
            "aggregates.0.metadata.ram_weight_multiplier"
        ]
    );
    assert!(s.warnings()[0].1.contains("configured value"), "{:?}", s.warnings());
    assert!(Scenario::parse("t.toml", GOOD).unwrap().warnings().is_empty());
    // An unknown weigher is still a mistake in the file.
    let e = error_of(&format!("{GOOD}{}", aggregates.replace("ram_weight", "colour_weight")));
    assert_eq!(e.field, "aggregates.0.metadata.colour_weight_multiplier", "{e}");
}

#[test]
fn metrics_knobs_reach_the_config() {
    let text = format!(
        "{GOOD}\n[control.scheduler]\nfilters = [\"Compute\", \"Metrics\"]\nweighers = {{ metrics = -2.0 }}\n\n[control.scheduler.metrics]\nweight_setting = \"cpu.percent=1.0, bogus, mem=-0.5\"\nrequired = false\nweight_of_unavailable = -50.0\n"
    );
    let s = Scenario::parse("t.toml", &text).unwrap();
    let c = s.scheduler_config();
    assert_eq!(c.filters, vec![FilterKind::Compute, FilterKind::Metrics]);
    assert_eq!(c.weighers[&WeigherKind::Metrics], -2.0);
    assert_eq!(c.metrics.weight_setting, vec![("cpu.percent".to_string(), 1.0), ("mem".to_string(), -0.5)]);
    assert_eq!((c.metrics.required, c.metrics.weight_of_unavailable), (false, -50.0));
    let warnings = s.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].0, "control.scheduler.metrics.weight_setting");
    assert!(warnings[0].1.contains("bogus"), "{warnings:?}");
    // Defaults: nova's.
    let d = Scenario::parse("t.toml", GOOD).unwrap().scheduler_config();
    assert_eq!(
        (d.metrics.weight_setting.len(), d.metrics.required, d.metrics.weight_of_unavailable),
        (0, true, -10000.0)
    );
    let e = error_of(&format!("{GOOD}\n[control.scheduler.metrics]\nweight_settings = \"a=1\"\n"));
    assert!(e.message.contains("weight_settings"), "{e}");
}

#[test]
fn default_architecture_knob_takes_nova_s_names_only() {
    let with =
        |arch: &str| format!("{GOOD}\n[control.scheduler]\nimage_properties_default_architecture = \"{arch}\"\n");
    let s = Scenario::parse("t.toml", &with("aarch64")).unwrap();
    assert_eq!(s.scheduler_config().image_properties_default_architecture.as_deref(), Some("aarch64"));
    let text = with("amd64");
    let e = error_of(&text);
    assert_eq!(e.field, "control.scheduler.image_properties_default_architecture", "{e}");
    assert_eq!(e.line, line_of(&text, "image_properties_default_architecture"), "{e}");
    assert_eq!(Scenario::parse("t.toml", GOOD).unwrap().scheduler_config().image_properties_default_architecture, None);
}

#[test]
fn icehouse_scenarios_name_only_2014_1_filters_and_weighers() {
    let icehouse =
        |scheduler: &str| format!("{GOOD}\n[control]\nera = \"icehouse\"\n\n[control.scheduler]\n{scheduler}\n");
    let current = |scheduler: &str| format!("{GOOD}\n[control.scheduler]\n{scheduler}\n");
    let cases = [
        (icehouse("filters = [\"Retry\", \"AggregateCore\", \"Metrics\"]"), None),
        (icehouse("filters = [\"Retry\", \"AggregateDisk\"]"), Some(("control.scheduler.filters.1", "Juno"))),
        (icehouse("filters = [\"AggregateIoOps\"]"), Some(("control.scheduler.filters.0", "Juno"))),
        (current("filters = [\"AggregateIoOps\", \"AggregateDisk\"]"), None),
        (icehouse("weighers = { ram = -1.0, metrics = 2.0 }"), None),
        (icehouse("weighers = { cpu = 1.0 }"), Some(("control.scheduler.weighers.cpu", "ram, metrics"))),
        (current("weighers = { cpu = 1.0 }"), None),
    ];
    for (text, expect) in cases {
        match (Scenario::parse("t.toml", &text), expect) {
            (Ok(_), None) => {}
            (Err(e), Some((field, fragment))) => {
                assert_eq!(e.field, field, "{e}");
                assert!(e.message.contains(fragment), "{e}");
            }
            (got, expect) => panic!("{text}\nexpected {expect:?}, got {got:?}"),
        }
    }
    // 2014.1's all_weighers: RAM and metrics.
    let s = Scenario::parse("t.toml", &icehouse("")).unwrap();
    assert_eq!(
        s.scheduler_config().weighers.keys().copied().collect::<Vec<_>>(),
        [WeigherKind::Ram, WeigherKind::Metrics]
    );
}
