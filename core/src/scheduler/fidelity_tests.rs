//! Tables from nova's documented semantics for the places where a simpler reading gives a
//! different answer: image property names and canonical values, supported_instances,
//! nested and JSON capabilities, ephemeral disk and swap, metrics, the Icehouse filters and
//! unparsable aggregate ratios. Each row is one case through `check` (the explained and the
//! hot path agree).

use super::image_props::*;
use super::tests::{check, flavor, host, image, with_node};
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
