//! Tables from nova's documented semantics for the places where a simpler reading gives a
//! different answer: image property names and canonical values, supported_instances,
//! nested and JSON capabilities, ephemeral disk and swap, metrics, the Icehouse filters and
//! unparsable aggregate ratios. Each row is one case through `check` (the explained and the
//! hot path agree).

use super::image_props::*;
use super::tests::{check, flavor, host, image, in_aggregates, with_node};
use super::*;
use rand::SeedableRng;

type Props<'a> = &'a [(&'a str, &'a str)];

/// A host advertising `triples` (`None`: derived from its kvm / x86_64 / hvm record).
fn advertising(triples: Option<&[[&str; 3]]>) -> HostState {
    with_node(host("a", 1), |n| {
        n.supported_instances = triples.map(|t| t.iter().map(|t| t.map(str::to_string)).collect());
    })
}

#[test]
fn image_properties_under_legacy_and_current_names() {
    let cfg = SchedulerConfig::default();
    let f = flavor(&[]);
    // The node is x86_64, kvm (so qemu too), hvm, version 9.0.0.
    let cases: &[(Props, bool)] = &[
        // Legacy names read as the current ones.
        (&[("architecture", "x86_64")], true),
        (&[("architecture", "aarch64")], false),
        (&[("hypervisor_type", "xen")], false),
        (&[("vm_mode", "exe")], false),
        (&[("vm_mode", "hvm")], true),
        // hypervisor_version_requires is img_hv_requested_version (checked with an arch).
        (&[("architecture", "x86_64"), ("hypervisor_version_requires", ">= 10.0")], false),
        (&[("architecture", "x86_64"), ("hypervisor_version_requires", ">= 8.0")], true),
        (&[("hw_architecture", "x86_64"), ("hypervisor_version_requires", "< 9.0")], false),
        // Both names set: the current one wins.
        (&[("architecture", "aarch64"), ("hw_architecture", "x86_64")], true),
        (&[("architecture", "x86_64"), ("hw_architecture", "aarch64")], false),
        (&[("hypervisor_type", "kvm"), ("img_hv_type", "xen")], false),
        (&[("vm_mode", "exe"), ("hw_vm_mode", "hvm")], true),
        (
            &[
                ("hw_architecture", "x86_64"),
                ("img_hv_requested_version", ">= 8.0"),
                ("hypervisor_version_requires", ">= 10.0"),
            ],
            true,
        ),
    ];
    for (props, pass) in cases {
        let img = image(props);
        check(FilterKind::ImageProperties, &host("a", 1), &RequestView::new(&f, &img), &cfg, *pass);
    }
    // The map itself: every legacy name of nova's map reads as its current name.
    let props: BTreeMap<String, String> = LEGACY_NAMES.iter().map(|(l, _)| (l.to_string(), format!("v-{l}"))).collect();
    for (legacy, current) in LEGACY_NAMES {
        assert_eq!(image_property(&props, current), Some(format!("v-{legacy}").as_str()), "{legacy} -> {current}");
        assert_eq!(current_name(legacy), current);
        assert!(IMAGE_META_FIELDS.contains(&current) || current == "img_block_device_mapping", "{current}");
    }
    assert_eq!(image_property(&props, "hw_cpu_cores"), None);
}

#[test]
fn canonical_values_before_comparing() {
    // nova's Architecture, HVType and VMMode canonicalize.
    for (name, canonical) in [
        ("x86_64", Some("x86_64")),
        ("X86_64", Some("x86_64")),
        ("amd64", Some("x86_64")),
        ("AMD64", Some("x86_64")),
        ("i386", Some("i686")),
        ("i486", Some("i686")),
        ("i586", Some("i686")),
        ("x86_32", Some("i686")),
        ("x86_32p", Some("i686")),
        ("PPC64LE", Some("ppc64le")),
        ("armv7l", Some("armv7l")),
        ("arm64", None),
        ("x64", None),
    ] {
        assert_eq!(canonical_arch(name), canonical, "arch {name}");
    }
    for (name, canonical) in
        [("xapi", Some("xen")), ("XAPI", Some("xen")), ("KVM", Some("kvm")), ("vz", Some("vz")), ("esx", None)]
    {
        assert_eq!(canonical_hv_type(name), canonical, "hv_type {name}");
    }
    for (name, era, canonical) in [
        ("hv", Era::Current, Some("hvm")),
        ("pv", Era::Current, Some("xen")),
        ("baremetal", Era::Current, Some("hvm")),
        ("HVM", Era::Current, Some("hvm")),
        ("baremetal", Era::Icehouse, None),
        ("pv", Era::Icehouse, Some("xen")),
        ("paravirt", Era::Current, None),
    ] {
        assert_eq!(canonical_vm_mode(name, era), canonical, "vm_mode {name} in {era:?}");
    }

    let cfg = SchedulerConfig::default();
    let f = flavor(&[]);
    let xen = advertising(Some(&[["x86_64", "xen", "xen"], ["i686", "xen", "hvm"]]));
    let cases: &[(Props, &HostState, bool)] = &[
        (&[("hw_vm_mode", "hv")], &host("a", 1), true),
        (&[("hw_vm_mode", "baremetal")], &host("a", 1), true),
        (&[("vm_mode", "pv")], &xen, true),
        (&[("vm_mode", "pv")], &host("a", 1), false),
        (&[("architecture", "amd64")], &host("a", 1), true),
        (&[("hw_architecture", "X86_64")], &host("a", 1), true),
        (&[("architecture", "i386")], &xen, true),
        (&[("architecture", "i386"), ("vm_mode", "hvm")], &xen, true),
        (&[("architecture", "i386"), ("vm_mode", "exe")], &xen, false),
        (&[("hypervisor_type", "xapi")], &xen, true),
        (&[("hypervisor_type", "XEN")], &xen, true),
        (&[("hypervisor_type", "QEMU")], &host("a", 1), true),
        // Values nova refuses make an invalid image: no host passes.
        (&[("hw_architecture", "x64")], &host("a", 1), false),
        (&[("hw_vm_mode", "paravirt")], &host("a", 1), false),
    ];
    for (props, h, pass) in cases {
        let img = image(props);
        check(FilterKind::ImageProperties, h, &RequestView::new(&f, &img), &cfg, *pass);
    }
    // The host side is canonicalised too.
    let shouting = advertising(Some(&[["AMD64", "XAPI", "PV"]]));
    let img = image(&[("hw_architecture", "x86_64"), ("img_hv_type", "xen"), ("hw_vm_mode", "xen")]);
    check(FilterKind::ImageProperties, &shouting, &RequestView::new(&f, &img), &cfg, true);
}

#[test]
fn hosts_with_several_triples_or_none() {
    let cfg = SchedulerConfig::default();
    let f = flavor(&[]);
    let multi = advertising(Some(&[["x86_64", "kvm", "hvm"], ["i686", "qemu", "hvm"], ["aarch64", "qemu", "hvm"]]));
    let none = advertising(Some(&[]));
    let no_modes = with_node(host("a", 1), |n| n.vm_modes.clear());
    let cases: &[(Props, &HostState, bool)] = &[
        // Any one triple holding every requested value passes.
        (&[("hw_architecture", "aarch64")], &multi, true),
        (&[("hw_architecture", "aarch64"), ("img_hv_type", "qemu")], &multi, true),
        (&[("hw_architecture", "aarch64"), ("img_hv_type", "kvm")], &multi, false),
        (&[("hw_architecture", "i686"), ("img_hv_type", "kvm")], &multi, false),
        (&[("hw_architecture", "x86_64"), ("img_hv_type", "kvm"), ("hw_vm_mode", "hvm")], &multi, true),
        (&[("hw_architecture", "ppc64le")], &multi, false),
        // The derived triples of a kvm host include qemu.
        (&[("img_hv_type", "qemu")], &advertising(None), true),
        (&[("img_hv_type", "lxc")], &advertising(None), false),
        // nova compares membership in the triple, not position: `xen` as a vm mode is
        // found as the hypervisor type of (x86_64, xen, hvm).
        (&[("hw_vm_mode", "xen")], &advertising(Some(&[["x86_64", "xen", "hvm"]])), true),
        // No triples: only an image that asks for nothing passes.
        (&[], &none, true),
        (&[("hw_architecture", "x86_64")], &none, false),
        (&[("hw_vm_mode", "hvm")], &no_modes, false),
        (&[("img_hv_requested_version", ">= 1.0")], &none, true),
        (&[("os_type", "linux")], &none, true),
        // The version is checked once a triple matches; a host without a version passes.
        (&[("hw_architecture", "i686"), ("img_hv_requested_version", ">= 10.0")], &multi, false),
        (
            &[("hw_architecture", "i686"), ("img_hv_requested_version", ">= 10.0")],
            &with_node(multi.clone(), |n| n.hypervisor_version = 0),
            true,
        ),
    ];
    for (props, h, pass) in cases {
        let img = image(props);
        check(FilterKind::ImageProperties, h, &RequestView::new(&f, &img), &cfg, *pass);
    }
}

#[test]
fn table_path_reads_supported_instances() {
    // Two hosts alike but for their triples are two image classes of the table.
    let hosts = vec![advertising(Some(&[["aarch64", "kvm", "hvm"]])), advertising(None)];
    let table = HostTable::new(hosts);
    let f = flavor(&[]);
    let config = SchedulerConfig { use_placement: false, ..Default::default() };
    let mut ws = Workspace::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    for (arch, expect) in [("aarch64", vec![0]), ("x86_64", vec![1]), ("amd64", vec![1])] {
        let img = image(&[("architecture", arch)]);
        let got = ws.table_best_hosts(&table, &RequestView::new(&f, &img), &config, &mut rng, 5).unwrap();
        assert_eq!(got, expect, "{arch}");
    }
}

#[test]
fn invalid_image_properties_are_named() {
    let props = |p: Props| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    for (p, era, bad) in [
        (&[("hw_architecture", "x64")][..], Era::Current, Some("hw_architecture")),
        (&[("architecture", "amd64")][..], Era::Current, None),
        (&[("hypervisor_type", "esx")][..], Era::Current, Some("hypervisor_type")),
        (&[("hypervisor_type", "esx")][..], Era::Icehouse, None),
        (&[("vm_mode", "baremetal")][..], Era::Icehouse, Some("vm_mode")),
        (&[("vm_mode", "baremetal")][..], Era::Current, None),
        (&[("img_hv_requested_version", "newest")][..], Era::Current, Some("img_hv_requested_version")),
        (&[("hypervisor_version_requires", ">= 6.0, < 9")][..], Era::Icehouse, None),
        (&[("os_type", "anything")][..], Era::Current, None),
    ] {
        let got = validate_image_properties(&props(p), era);
        assert_eq!(got.as_ref().err().map(|e| e.0.as_str()), bad, "{p:?} in {era:?}: {got:?}");
    }
}

#[test]
fn ephemeral_disk_and_swap_count_as_nova_counts_them() {
    // (root_gb, ephemeral_gb, swap MB, nova's DISK_GB: root + ephemeral + ceil(swap / 1024),
    // Icehouse's DiskFilter MB: 1024 * (root + ephemeral) + swap)
    for (root, ephemeral, swap, disk_gb, disk_mb) in [
        (20, 0, 0, 20, 20_480),
        (20, 10, 0, 30, 30_720),
        (20, 0, 512, 21, 20_992),
        (20, 0, 1024, 21, 21_504),
        (20, 0, 1025, 22, 21_505),
        (0, 5, 2048, 7, 7_168),
    ] {
        let f = Flavor { disk_gb: root, ephemeral_gb: ephemeral, swap, ..flavor(&[]) };
        assert_eq!(f.resources().0[2], disk_gb, "{root}/{ephemeral}/{swap}");
        assert_eq!(f.disk_mb(), disk_mb, "{root}/{ephemeral}/{swap}");
    }
    // The host has 100 GB of disk at `ratio` with `used` GB taken.
    let i = image(&[]);
    let cases = [
        // (root, ephemeral, swap, ratio, used, placement offers it, Icehouse's DiskFilter passes)
        (20, 10, 0, 1.0, 70, true, true),
        (20, 10, 0, 1.0, 71, false, false),
        (20, 0, 512, 1.0, 79, true, true),
        (20, 0, 512, 1.0, 80, false, false),
        (10, 10, 2048, 1.0, 78, true, true),
        (10, 10, 2049, 1.0, 78, false, false),
        // 100.6 GB: placement's 21 GB (512 MB of swap rounded up) does not fit, the filter's
        // 20.5 GB does.
        (20, 0, 512, 1.006, 80, false, true),
        (20, 0, 0, 1.006, 80, true, true),
    ];
    for (root, ephemeral, swap, ratio, used, offered, disk_ok) in cases {
        let f = Flavor { disk_gb: root, ephemeral_gb: ephemeral, swap, ..flavor(&[]) };
        let mut h = host("a", 8192);
        h.inventories[2].allocation_ratio = ratio;
        h.used.0[2] = used;
        let req = RequestView::new(&f, &i);
        let what = format!("{root}/{ephemeral}/{swap} at {ratio} with {used} used");
        assert_eq!(h.placement_fits(&f.resources()), offered, "placement {what}");
        let current = SchedulerConfig { filters: vec![], ..Default::default() };
        assert_eq!(Workspace::new().filter(std::slice::from_ref(&h), &req, &current).is_ok(), offered, "{what}");
        check(FilterKind::Disk, &h, &req, &SchedulerConfig::icehouse(), disk_ok);
    }
}

#[test]
fn aggregate_ratio_that_is_not_a_number_falls_back_to_the_configured_one() {
    let cfg = SchedulerConfig::default();
    let f = flavor(&[]);
    let i = image(&[]);
    let req = RequestView::new(&f, &i);
    // 8 vCPUs at the configured 4.0, all 32 used; RAM 1024 MB free of 16384 at 1.0.
    let mut cpu_full = host("a", 8192);
    cpu_full.used.0[0] = 32;
    let ram_short = host("b", 1024);
    type Aggs<'a> = &'a [&'a [(&'a str, &'a str)]];
    let cases: &[(FilterKind, &HostState, Aggs, bool)] = &[
        (FilterKind::AggregateCore, &cpu_full, &[&[("cpu_allocation_ratio", "16")]], true),
        (FilterKind::AggregateCore, &cpu_full, &[&[("cpu_allocation_ratio", " 16 ")]], true),
        (FilterKind::AggregateCore, &cpu_full, &[&[("cpu_allocation_ratio", "1e1")]], true),
        (FilterKind::AggregateCore, &cpu_full, &[&[("cpu_allocation_ratio", "lots")]], false),
        (FilterKind::AggregateCore, &cpu_full, &[&[("cpu_allocation_ratio", "16,8")]], false),
        // One value that is not a number spoils them all (nova casts every value).
        (
            FilterKind::AggregateCore,
            &cpu_full,
            &[&[("cpu_allocation_ratio", "16")], &[("cpu_allocation_ratio", "x")]],
            false,
        ),
        (FilterKind::AggregateRam, &ram_short, &[&[("ram_allocation_ratio", "1.5")]], true),
        (FilterKind::AggregateRam, &ram_short, &[&[("ram_allocation_ratio", "one and a half")]], false),
        (FilterKind::AggregateDisk, &with_used_disk(100), &[&[("disk_allocation_ratio", "2.0")]], true),
        (FilterKind::AggregateDisk, &with_used_disk(100), &[&[("disk_allocation_ratio", "double")]], false),
    ];
    for (filter, h, aggs, pass) in cases {
        check(*filter, &in_aggregates((*h).clone(), aggs), &req, &cfg, *pass);
    }
    // The reason says why the aggregate's value did not count.
    let garbled = in_aggregates(cpu_full.clone(), &[&[("cpu_allocation_ratio", "lots")]]);
    let why = FilterKind::AggregateCore.check(&garbled, &req, &cfg).unwrap_err();
    assert!(why.contains("not a number") && why.contains("lots"), "{why}");
    let why = FilterKind::Core.check(&garbled, &req, &cfg).unwrap_err();
    assert!(!why.contains("not a number"), "CoreFilter reads no aggregate: {why}");
    // Multipliers and limits fall back the same way.
    let agg = HostAggregates::new(&[Aggregate {
        name: "x".into(),
        hosts: vec![],
        metadata: [("ram_weight_multiplier".to_string(), "heavy".to_string())].into_iter().collect(),
    }]);
    assert_eq!(agg.weigher_multiplier(WeigherKind::Ram), None);
}

fn with_used_disk(used: u64) -> HostState {
    let mut h = host("a", 8192);
    h.used.0[2] = used;
    h
}

#[test]
fn compute_capabilities_walk_nested_scopes_and_json_strings() {
    let cpu_info = r#"{"arch": "x86_64", "vendor": "Intel", "model": "Cascadelake-Server",
        "topology": {"sockets": 2, "cores": 8, "threads": 2, "numa": {"nodes": 2}},
        "features": ["avx2", "vmx"], "maxphysaddr": {"mode": "passthrough", "bits": 46}}"#;
    let h = with_node(host("a", 1), |n| {
        n.cpu_info = Some(cpu_info.into());
        n.stats.insert("gpu".into(), r#"{"model": "a100", "count": 4, "mig": {"enabled": true}}"#.into());
        n.stats.insert("rack".into(), "r1".into());
        n.stats.insert("nested".into(), r#""{\"deep\": \"yes\"}""#.into());
    });
    let bare = host("b", 1);
    let current = SchedulerConfig::default();
    let icehouse = SchedulerConfig::icehouse();
    // (extra_specs, host, passes today, passes in Icehouse)
    let cases: &[(Props, &HostState, bool, bool)] = &[
        // cpu_info is a JSON string: loaded, then walked at any depth.
        (&[("capabilities:cpu_info:vendor", "Intel")], &h, true, false),
        (&[("capabilities:cpu_info:vendor", "AMD")], &h, false, false),
        (&[("capabilities:cpu_info:topology:cores", ">= 8")], &h, true, false),
        (&[("capabilities:cpu_info:topology:numa:nodes", "== 2")], &h, true, false),
        (&[("capabilities:cpu_info:topology:numa:nodes", ">= 3")], &h, false, false),
        (&[("capabilities:cpu_info:maxphysaddr:bits", ">= 40")], &h, true, false),
        (&[("capabilities:cpu_info:features", "<in> avx2")], &h, true, false),
        (&[("capabilities:cpu_info:topology:dies", "1")], &h, false, false),
        // Past a value that is neither a dict nor a string there is nothing.
        (&[("capabilities:cpu_info:topology:cores:x", "8")], &h, false, false),
        (&[("capabilities:hypervisor_version:major", "9")], &h, false, false),
        // A host without cpu_info has no such capability.
        (&[("capabilities:cpu_info:vendor", "Intel")], &bare, false, false),
        // Stats, through `stats:` or straight from the host, and JSON inside a stat.
        (&[("capabilities:stats:rack", "r1")], &h, true, true),
        (&[("capabilities:rack", "r1")], &h, true, true),
        (&[("capabilities:stats:gpu:model", "a100")], &h, true, false),
        (&[("capabilities:gpu:count", ">= 4")], &h, true, false),
        (&[("capabilities:gpu:mig:enabled", "True")], &h, true, false),
        (&[("capabilities:stats:rack:x", "r1")], &h, false, false),
        // A string is loaded once per level: JSON text inside a JSON string is a string
        // there, with nothing under it.
        (&[("capabilities:nested:deep", "yes")], &h, false, false),
        // The whole value as Python prints it.
        (&[("capabilities:cpu_info:features", "['avx2', 'vmx']")], &h, true, false),
        // Unscoped keys: host attributes and stats count, others are skipped today and fail
        // the host in Icehouse.
        (&[("rack", "r1")], &h, true, true),
        (&[("hypervisor_type", "kvm")], &h, true, true),
        (&[("free_ram_mb", ">= 2")], &h, false, false),
        (&[("color", "blue")], &h, true, false),
        // Other scopes are never the filter's.
        (&[("hw:cpu_policy", "dedicated"), ("aggregate_instance_extra_specs:ssd", "true")], &h, true, true),
    ];
    let f0 = flavor(&[]);
    let i = image(&[]);
    for (specs, host, today, then) in cases {
        let f =
            Flavor { extra_specs: specs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..f0.clone() };
        let req = RequestView::new(&f, &i);
        check(FilterKind::ComputeCapabilities, host, &req, &current, *today);
        check(FilterKind::ComputeCapabilities, host, &req, &icehouse, *then);
    }
}

#[test]
fn icehouse_filters_keep_their_2014_1_semantics() {
    let current = SchedulerConfig::default();
    let icehouse = SchedulerConfig::icehouse();
    use FilterKind as F;
    type Aggs<'a> = &'a [&'a [(&'a str, &'a str)]];
    let f = flavor(&[]); // m1.small
    let i = image(&[]);
    let req = RequestView::new(&f, &i);
    let extra = |specs: Props| Flavor {
        extra_specs: specs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..f.clone()
    };
    let (ssd, ssd_scoped, ssd_whole) = (
        extra(&[("ssd", "true")]),
        extra(&[("aggregate_instance_extra_specs:ssd", "maybe")]),
        extra(&[("ssd", "true, fast")]),
    );
    let props =
        |p: Props| Image { properties: p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..i.clone() };
    let (linux, legacy_arch, arm, custom) = (
        props(&[("os_type", "linux")]),
        props(&[("architecture", "aarch64")]),
        props(&[("hw_architecture", "AMD64")]),
        props(&[("ssd", "false")]),
    );
    // (filter, aggregates' metadata, flavor, image, project, passes today, passes in Icehouse)
    let cases: &[(F, Aggs, &Flavor, &Image, &str, bool, bool)] = &[
        // AggregateInstanceExtraSpecs: values split on commas today, whole in 2014.1.
        (F::AggregateInstanceExtraSpecs, &[&[("ssd", "true")]], &ssd, &i, "p", true, true),
        (F::AggregateInstanceExtraSpecs, &[&[("ssd", "false, true")]], &ssd, &i, "p", true, false),
        (F::AggregateInstanceExtraSpecs, &[&[("ssd", "false,maybe")]], &ssd_scoped, &i, "p", true, false),
        (F::AggregateInstanceExtraSpecs, &[&[("ssd", "true, fast")]], &ssd_whole, &i, "p", false, true),
        (F::AggregateInstanceExtraSpecs, &[&[("hdd", "true")]], &ssd, &i, "p", false, false),
        // AggregateImagePropertiesIsolation: split values today, whole in 2014.1; today only
        // ImageMetaProps fields count (under current or legacy name, canonical), in 2014.1
        // any property under the aggregate's key as written.
        (F::AggregateImagePropertiesIsolation, &[&[("os_type", "windows, linux")]], &f, &linux, "p", true, false),
        (F::AggregateImagePropertiesIsolation, &[&[("os_type", "windows")]], &f, &linux, "p", false, false),
        (F::AggregateImagePropertiesIsolation, &[&[("hw_architecture", "x86_64")]], &f, &legacy_arch, "p", false, true),
        (F::AggregateImagePropertiesIsolation, &[&[("architecture", "x86_64")]], &f, &legacy_arch, "p", true, false),
        (F::AggregateImagePropertiesIsolation, &[&[("hw_architecture", "x86_64")]], &f, &arm, "p", true, false),
        (F::AggregateImagePropertiesIsolation, &[&[("ssd", "true")]], &f, &custom, "p", true, false),
        // AggregateMultiTenancyIsolation: every filter_tenant_id* key, comma-split, today;
        // only filter_tenant_id, whole, in 2014.1.
        (F::AggregateMultiTenancyIsolation, &[&[("filter_tenant_id", "p1")]], &f, &i, "p1", true, true),
        (F::AggregateMultiTenancyIsolation, &[&[("filter_tenant_id", "p1")]], &f, &i, "p2", false, false),
        (F::AggregateMultiTenancyIsolation, &[&[("filter_tenant_id", "p1,p2")]], &f, &i, "p2", true, false),
        (F::AggregateMultiTenancyIsolation, &[&[("filter_tenant_id", "p1,p2")]], &f, &i, "p1,p2", false, true),
        (F::AggregateMultiTenancyIsolation, &[&[("filter_tenant_id_2", "p3")]], &f, &i, "p3", true, true),
        (F::AggregateMultiTenancyIsolation, &[&[("filter_tenant_id_2", "p3")]], &f, &i, "p4", false, true),
        (
            F::AggregateMultiTenancyIsolation,
            &[&[("filter_tenant_id", "p1"), ("filter_tenant_id_2", "p3")]],
            &f,
            &i,
            "p3",
            true,
            false,
        ),
        // AggregateTypeAffinity: a comma list of flavor names today, one name in 2014.1.
        (F::AggregateTypeAffinity, &[&[("instance_type", "m1.small")]], &f, &i, "p", true, true),
        (F::AggregateTypeAffinity, &[&[("instance_type", "m1.tiny, m1.small")]], &f, &i, "p", true, false),
        (F::AggregateTypeAffinity, &[&[("instance_type", "m1.tiny")]], &f, &i, "p", false, false),
    ];
    for (filter, aggs, flavor, image, project, today, then) in cases {
        let h = in_aggregates(host("a", 1), aggs);
        let r = RequestView { flavor, image, project_id: project, ..req.clone() };
        check(*filter, &h, &r, &current, *today);
        check(*filter, &h, &r, &icehouse, *then);
    }
    // Server groups had no rules: one member is one too many whatever max_server_per_host.
    let mut crowded = host("b", 1);
    crowded.group_members_here = 1;
    let anti = RequestView { group_policy: Some(GroupPolicy::AntiAffinity), group_max_per_host: 2, ..req.clone() };
    check(F::ServerGroupAntiAffinity, &crowded, &anti, &current, true);
    check(F::ServerGroupAntiAffinity, &crowded, &anti, &icehouse, false);
    // Image properties: legacy names only, arch and hypervisor type as written.
    for (p, today, then) in [
        (&[("hw_architecture", "aarch64")][..], false, true),
        (&[("architecture", "aarch64")][..], false, false),
        (&[("architecture", "AMD64")][..], true, false),
        (&[("hypervisor_type", "QEMU")][..], true, false),
        (&[("hypervisor_type", "qemu")][..], true, true),
        (&[("vm_mode", "hv")][..], true, true),
        (&[("architecture", "x86_64"), ("hypervisor_version_requires", ">= 10")][..], false, false),
        (&[("architecture", "x86_64"), ("img_hv_requested_version", ">= 10")][..], false, true),
    ] {
        let img = props(p);
        let r = RequestView::new(&f, &img);
        check(F::ImageProperties, &host("a", 1), &r, &current, today);
        check(F::ImageProperties, &host("a", 1), &r, &icehouse, then);
    }
}

#[test]
fn icehouse_weighers_ignore_aggregate_multipliers() {
    let f = flavor(&[]);
    let i = image(&[]);
    let req = RequestView::new(&f, &i);
    // a has the least free RAM but its aggregate's multiplier of -1 today makes it... still
    // last; b's aggregate sets 0, which today drops it below c.
    let hosts =
        vec![host("a", 1000), in_aggregates(host("b", 9000), &[&[("ram_weight_multiplier", "0")]]), host("c", 5000)];
    let only_ram = |era_config: SchedulerConfig| SchedulerConfig {
        weighers: [(WeigherKind::Ram, 1.0)].into_iter().collect(),
        use_placement: false,
        filters: vec![],
        ..era_config
    };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let today = sorted_hosts(&hosts, &req, &only_ram(SchedulerConfig::default()), &mut rng).unwrap();
    let then = sorted_hosts(&hosts, &req, &only_ram(SchedulerConfig::icehouse()), &mut rng).unwrap();
    assert_eq!(today, vec![2, 0, 1]);
    assert_eq!(then, vec![1, 2, 0]);
    let e = explain(&hosts, &req, &only_ram(SchedulerConfig::icehouse()), &mut rng);
    assert_eq!(e.order, then);
    assert_eq!(e.weighers[0].values[1].multiplier, 1.0);
    let table = HostTable::new(hosts.clone());
    let mut ws = Workspace::new();
    let got = ws.table_best_hosts(&table, &req, &only_ram(SchedulerConfig::icehouse()), &mut rng, 3).unwrap();
    assert_eq!(got, then);
}

fn with_metrics(name: &str, metrics: &[(&str, f64)]) -> HostState {
    with_node(host(name, 4096), |n| n.metrics = metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect())
}

fn metrics_config(setting: &str, required: bool, multiplier: f64) -> SchedulerConfig {
    SchedulerConfig {
        filters: vec![],
        use_placement: false,
        weighers: [(WeigherKind::Metrics, multiplier)].into_iter().collect(),
        metrics: MetricsConfig {
            weight_setting: parse_weight_setting(setting).0,
            required,
            weight_of_unavailable: -10000.0,
        },
        ..Default::default()
    }
}

#[test]
fn weight_setting_parses_as_nova_parse_options() {
    for (setting, good, bad) in [
        ("", vec![], vec![]),
        ("cpu.percent=1.0", vec![("cpu.percent", 1.0)], vec![]),
        ("a=1.0, b=-2.5 ,c=1e1", vec![("a", 1.0), ("b", -2.5), ("c", 10.0)], vec![]),
        ("a=x, =1.0, b, c=2", vec![("c", 2.0)], vec!["a=x", "=1.0", "b"]),
        ("a=1=2", vec![], vec!["a=1=2"]),
    ] {
        let (g, b) = parse_weight_setting(setting);
        let g: Vec<(&str, f64)> = g.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        assert_eq!((g, b), (good, bad.iter().map(|s| s.to_string()).collect::<Vec<_>>()), "{setting}");
    }
}

#[test]
fn metrics_filter_and_weigher() {
    let f = flavor(&[]);
    let i = image(&[]);
    let req = RequestView::new(&f, &i);
    // MetricsFilter: every metric of the setting, whatever the ratio.
    for (setting, metrics, pass) in [
        ("", &[][..], true),
        ("cpu.percent=1.0", &[("cpu.percent", 0.5)][..], true),
        ("cpu.percent=1.0, mem=0", &[("cpu.percent", 0.5)][..], false),
        ("cpu.percent=1.0", &[("cpu.frequency", 2.0)][..], false),
    ] {
        check(FilterKind::Metrics, &with_metrics("a", metrics), &req, &metrics_config(setting, true, 1.0), pass);
    }
    // MetricsWeigher: sum of value * ratio, normalised, times the multiplier.
    let hosts = vec![
        with_metrics("a", &[("cpu", 0.9), ("mem", 0.1)]),
        with_metrics("b", &[("cpu", 0.2), ("mem", 0.5)]),
        with_metrics("c", &[("cpu", 0.5), ("mem", 0.9)]),
        with_metrics("d", &[("mem", 0.0)]),
    ];
    let three = &hosts[..3];
    let order = |hosts: &[HostState], config: &SchedulerConfig| {
        let mut ws = Workspace::new();
        let rng = &mut rand::rngs::SmallRng::seed_from_u64(1);
        let general = ws.best_hosts(hosts, &req, config, rng, 10).map(<[usize]>::to_vec);
        let table = HostTable::new(hosts.to_vec());
        let fast = ws.table_best_hosts(&table, &req, config, rng, 10).map(<[usize]>::to_vec);
        assert_eq!(general, fast, "the table path agrees");
        let e = explain(hosts, &req, config, rng);
        assert_eq!(general.as_ref().err(), e.no_valid_host.as_ref(), "explain agrees");
        if let Ok(o) = &general {
            assert_eq!(&e.order, o, "explain agrees");
        }
        general.map_err(|e| e.reason)
    };
    // (hosts, setting, required, multiplier, expected order or the error's start)
    type Case<'a> = (&'a [HostState], &'a str, bool, f64, Result<Vec<usize>, &'a str>);
    let cases: &[Case] = &[
        (three, "cpu=1.0", true, 1.0, Ok(vec![0, 2, 1])),
        (three, "cpu=-1.0", true, 1.0, Ok(vec![1, 2, 0])),
        (three, "cpu=1.0", true, -1.0, Ok(vec![1, 2, 0])),
        // a: 0.9 - 0.1 = 0.8, b: 0.2 - 0.5, c: 0.5 - 0.9.
        (three, "cpu=1.0, mem=-1.0", true, 1.0, Ok(vec![0, 1, 2])),
        (three, "cpu=1.0, mem=2.0", true, 1.0, Ok(vec![2, 1, 0])),
        // No setting: the weigher weighs nothing (input order).
        (three, "", true, 1.0, Ok(vec![0, 1, 2])),
        (three, "cpu=1.0", true, 0.0, Ok(vec![0, 1, 2])),
        // d lacks cpu: required raises (whatever the multiplier); otherwise it weighs
        // weight_of_unavailable, unless ratio * multiplier is 0.
        (&hosts, "cpu=1.0", true, 1.0, Err("ComputeHostMetricNotFound")),
        (&hosts, "cpu=1.0", true, 0.0, Err("ComputeHostMetricNotFound")),
        (&hosts, "cpu=1.0", false, 1.0, Ok(vec![0, 2, 1, 3])),
        (&hosts, "cpu=1.0", false, -1.0, Ok(vec![3, 1, 2, 0])),
        (&hosts, "cpu=0.0, mem=1.0", false, 1.0, Ok(vec![2, 1, 0, 3])),
        // A single host is not weighed, so nothing raises.
        (&hosts[3..], "cpu=1.0", true, 1.0, Ok(vec![0])),
    ];
    for (hosts, setting, required, m, expect) in cases {
        let got = order(hosts, &metrics_config(setting, *required, *m));
        match (got, expect) {
            (Ok(got), Ok(want)) => assert_eq!(&got, want, "{setting} required={required} x {m}"),
            (Err(e), Err(start)) => assert!(e.starts_with(start), "{e}"),
            (got, want) => panic!("{setting} required={required} x {m}: got {got:?}, want {want:?}"),
        }
    }
    // An aggregate's metrics_weight_multiplier overrides the configured one (today).
    let packed = vec![
        hosts[0].clone(),
        in_aggregates(hosts[1].clone(), &[&[("metrics_weight_multiplier", "-1")]]),
        hosts[2].clone(),
    ];
    // a: 0.9/0.9 = 1, b: -1 * 0.2/0.9, c: 0.5/0.9.
    assert_eq!(order(&packed, &metrics_config("cpu=1.0", true, 1.0)), Ok(vec![0, 2, 1]));
    let icehouse = SchedulerConfig { era: Era::Icehouse, ..metrics_config("cpu=1.0", true, -1.0) };
    assert_eq!(order(&packed, &icehouse), Ok(vec![1, 2, 0]));
}

#[test]
fn default_architecture_and_physical_address_bits() {
    let f = flavor(&[]);
    let defaulted =
        SchedulerConfig { image_properties_default_architecture: Some("aarch64".into()), ..Default::default() };
    let arm = advertising(Some(&[["aarch64", "kvm", "hvm"]]));
    let x86 = host("a", 1);
    let cpu = |bits: &str| {
        with_node(host("a", 1), |n| {
            n.cpu_info = Some(format!(r#"{{"maxphysaddr": {{"mode": "passthrough", "bits": {bits}}}}}"#))
        })
    };
    let (b40, b46, b0) = (cpu("40"), cpu("46"), cpu("0"));
    let cases: &[(Props, &HostState, &SchedulerConfig, bool)] = &[
        // image_properties_default_architecture stands in for a missing hw_architecture.
        (&[], &x86, &defaulted, false),
        (&[], &arm, &defaulted, true),
        (&[("architecture", "x86_64")], &x86, &defaulted, true),
        (&[], &x86, &SchedulerConfig::default(), true),
        // hw_maxphysaddr_bits, checked once a triple matches, against cpu_info's bits.
        (&[("hw_architecture", "x86_64"), ("hw_maxphysaddr_bits", "42")], &b46, &SchedulerConfig::default(), true),
        (&[("hw_architecture", "x86_64"), ("hw_maxphysaddr_bits", "42")], &b40, &SchedulerConfig::default(), false),
        (&[("hw_architecture", "x86_64"), ("hw_maxphysaddr_bits", "42")], &b0, &SchedulerConfig::default(), true),
        (&[("hw_architecture", "x86_64"), ("hw_maxphysaddr_bits", "42")], &x86, &SchedulerConfig::default(), true),
        // Without an arch, hypervisor type or vm mode nothing is checked.
        (&[("hw_maxphysaddr_bits", "42")], &b40, &SchedulerConfig::default(), true),
        (&[("hw_architecture", "x86_64"), ("hw_maxphysaddr_bits", "42")], &b40, &SchedulerConfig::icehouse(), true),
    ];
    for (props, h, cfg, pass) in cases {
        let img = image(props);
        check(FilterKind::ImageProperties, h, &RequestView::new(&f, &img), cfg, *pass);
    }
    // The flavor's hw:maxphysaddr_bits is ComputeCapabilities' cpu_info:maxphysaddr:bits >= N.
    let i = image(&[]);
    for (bits, h, today, then) in [("42", &b46, true, true), ("42", &b40, false, true), ("42", &x86, false, true)] {
        let f = flavor(&[("hw:maxphysaddr_bits", bits)]);
        let req = RequestView::new(&f, &i);
        check(FilterKind::ComputeCapabilities, h, &req, &SchedulerConfig::default(), today);
        check(FilterKind::ComputeCapabilities, h, &req, &SchedulerConfig::icehouse(), then);
    }
}
