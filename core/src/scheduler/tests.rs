use super::*;
use rand::{rngs::SmallRng, SeedableRng};

pub(super) fn inv(total: u64, ratio: f64) -> Inventory {
    Inventory::new(total, 0, ratio)
}

pub(super) fn node(name: &str) -> ComputeNode {
    ComputeNode {
        host: name.into(),
        vcpus: 8,
        ram_mb: 16384,
        disk_gb: 100,
        hypervisor_type: "kvm".into(),
        hypervisor_version: 9000000,
        cpu_arch: "x86_64".into(),
        vm_modes: vec!["hvm".into()],
        num_instances: 0,
        num_io_ops: 0,
        stats: BTreeMap::new(),
        supported_instances: None,
        cpu_info: None,
        metrics: BTreeMap::new(),
    }
}

pub(super) fn host(name: &str, free_ram: u64) -> HostState {
    HostState::new(
        Arc::new(node(name)),
        [inv(8, 4.0), inv(16384, 1.0), inv(100, 1.0)],
        Resources::new(0, 16384 - free_ram, 0),
    )
}

pub(super) fn with_node(mut h: HostState, edit: impl FnOnce(&mut ComputeNode)) -> HostState {
    let mut n = (*h.node).clone();
    edit(&mut n);
    h.node = Arc::new(n);
    h
}

pub(super) fn in_aggregates(mut h: HostState, aggs: &[&[(&str, &str)]]) -> HostState {
    let aggs: Vec<Aggregate> = aggs
        .iter()
        .enumerate()
        .map(|(i, md)| Aggregate {
            name: format!("agg{i}"),
            hosts: vec![h.node.host.clone()],
            metadata: md.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        })
        .collect();
    h.aggregates = Arc::new(HostAggregates::new(&aggs));
    h
}

pub(super) fn flavor(extra: &[(&str, &str)]) -> Flavor {
    Flavor {
        name: "m1.small".into(),
        vcpus: 1,
        ram_mb: 2048,
        disk_gb: 20,
        ephemeral_gb: 0,
        swap: 0,
        extra_specs: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

pub(super) fn image(props: &[(&str, &str)]) -> Image {
    Image {
        name: "cirros".into(),
        size_mb: 16,
        disk_format: "qcow2".into(),
        properties: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// The one helper of the filter table: `filter` on `host` for `req` passes or not, and the
/// hot path agrees with `check` (which gives the reason).
pub(super) fn check(filter: FilterKind, host: &HostState, req: &RequestView<'_>, config: &SchedulerConfig, pass: bool) {
    let got = filter.check(host, req, config);
    assert_eq!(got.is_ok(), pass, "{filter:?} on {}: {got:?}", host.node.host);
    if let Err(reason) = got {
        assert!(!reason.is_empty(), "{filter:?} gives a reason");
    }
    let config = SchedulerConfig { filters: vec![filter], use_placement: false, ..config.clone() };
    let fast = Workspace::new().filter(std::slice::from_ref(host), req, &config).is_ok();
    assert_eq!(fast, pass, "hot path of {filter:?} on {}", host.node.host);
}

#[test]
fn filter_table() {
    let cfg = SchedulerConfig::default();
    let f = flavor(&[]);
    let i = image(&[]);
    let req = RequestView::new(&f, &i);
    use FilterKind as F;

    check(F::AllHosts, &host("a", 1), &req, &cfg, true);

    // Compute: enabled and up.
    check(F::Compute, &host("a", 1), &req, &cfg, true);
    let mut down = host("a", 1);
    down.service_up = false;
    check(F::Compute, &down, &req, &cfg, false);
    let mut disabled = host("a", 1);
    disabled.service_disabled = true;
    check(F::Compute, &disabled, &req, &cfg, false);

    // ComputeCapabilities: scoped keys, unscoped host attributes, stats, other scopes skipped.
    type Case<'a> = (&'a [(&'a str, &'a str)], u64, bool);
    let cases: &[Case] = &[
        (&[("capabilities:hypervisor_type", "kvm"), ("hw:cpu_policy", "dedicated")], 1, true),
        (&[("capabilities:hypervisor_type", "xen")], 1, false),
        (&[("free_ram_mb", ">= 4096")], 4096, true),
        (&[("free_ram_mb", ">= 4096")], 1024, false),
        (&[("capabilities:stats:ssd", "true")], 1, false),
        (&[("capabilities:cpu_arch", "<in> x86")], 1, true),
        (&[("unknown_key", "x")], 1, true),
    ];
    for (specs, free, pass) in cases {
        let f = flavor(specs);
        check(F::ComputeCapabilities, &host("a", *free), &RequestView::new(&f, &i), &cfg, *pass);
    }
    let f_ssd = flavor(&[("capabilities:stats:ssd", "true")]);
    let ssd = with_node(host("a", 1), |n| {
        n.stats.insert("ssd".into(), "true".into());
    });
    check(F::ComputeCapabilities, &ssd, &RequestView::new(&f_ssd, &i), &cfg, true);

    // ImageProperties: arch, hypervisor type (qemu runs on kvm), vm mode, version.
    for (props, pass) in [
        (&[("hypervisor_type", "qemu")][..], true),
        (&[("hypervisor_type", "xen")][..], false),
        (&[("hw_architecture", "aarch64")][..], false),
        (&[("hw_vm_mode", "hvm")][..], true),
        (&[("hw_vm_mode", "exe")][..], false),
        (&[("hw_architecture", "x86_64"), ("img_hv_requested_version", ">=8.0")][..], true),
        (&[("hw_architecture", "x86_64"), ("img_hv_requested_version", ">= 10.0")][..], false),
        (&[("hw_architecture", "x86_64"), ("img_hv_requested_version", ">=6.0,<9.0")][..], false),
        (&[("hw_architecture", "x86_64"), ("img_hv_requested_version", ">=6.0, <=9.0.0")][..], true),
        (&[("hw_architecture", "x86_64"), ("img_hv_requested_version", "newest")][..], false),
        // A version requirement alone asks for nothing nova checks (`not any(...)`).
        (&[("img_hv_requested_version", ">= 10.0")][..], true),
    ] {
        let img = image(props);
        check(F::ImageProperties, &host("a", 1), &RequestView::new(&f, &img), &cfg, pass);
    }

    // Server groups: hard anti-affinity counts members, affinity needs a group host.
    let mut crowded = host("b", 1);
    crowded.group_members_here = 1;
    let anti = RequestView { group_policy: Some(GroupPolicy::AntiAffinity), ..req.clone() };
    check(F::ServerGroupAntiAffinity, &crowded, &anti, &cfg, false);
    check(F::ServerGroupAntiAffinity, &host("c", 1), &anti, &cfg, true);
    let anti2 = RequestView { group_max_per_host: 2, ..anti.clone() };
    check(F::ServerGroupAntiAffinity, &crowded, &anti2, &cfg, true);
    let soft = RequestView { group_policy: Some(GroupPolicy::SoftAntiAffinity), ..req.clone() };
    check(F::ServerGroupAntiAffinity, &crowded, &soft, &cfg, true);
    let group_hosts = vec!["b".to_string()];
    let aff = RequestView { group_policy: Some(GroupPolicy::Affinity), group_hosts: &group_hosts, ..req.clone() };
    check(F::ServerGroupAffinity, &crowded, &aff, &cfg, true);
    check(F::ServerGroupAffinity, &host("c", 1), &aff, &cfg, false);

    // SameHost / DifferentHost: hint instances resolved to hosts.
    let hints =
        SchedulerHints { same_host: vec!["vm-1".into()], different_host: vec!["vm-2".into()], ..Default::default() };
    let near = vec!["a".to_string()];
    let hinted = RequestView { hints: &hints, same_host_hosts: &near, different_host_hosts: &near, ..req.clone() };
    check(F::SameHost, &host("a", 1), &hinted, &cfg, true);
    check(F::SameHost, &host("b", 1), &hinted, &cfg, false);
    check(F::DifferentHost, &host("a", 1), &hinted, &cfg, false);
    check(F::DifferentHost, &host("b", 1), &hinted, &cfg, true);
    check(F::SameHost, &host("b", 1), &req, &cfg, true);

    // SimpleCIDRAffinity: default /24, explicit cidr, hosts without an ip.
    let cidr = SchedulerHints { build_near_host_ip: Some("10.0.1.7".into()), ..Default::default() };
    let cidr16 = SchedulerHints { cidr: Some("/16".into()), ..cidr.clone() };
    let mut h_in = host("a", 1);
    h_in.host_ip = parse_ipv4("10.0.1.200");
    let mut h_out = host("b", 1);
    h_out.host_ip = parse_ipv4("10.0.2.1");
    let r = RequestView { hints: &cidr, ..req.clone() };
    check(F::SimpleCidrAffinity, &h_in, &r, &cfg, true);
    check(F::SimpleCidrAffinity, &h_out, &r, &cfg, false);
    check(F::SimpleCidrAffinity, &host("c", 1), &r, &cfg, false);
    check(F::SimpleCidrAffinity, &h_out, &RequestView { hints: &cidr16, ..req.clone() }, &cfg, true);

    // AggregateInstanceExtraSpecs: scoped or unscoped keys must be in an aggregate and match.
    let ssd_agg = in_aggregates(host("a", 1), &[&[("ssd", "true")], &[("ssd", "false, maybe")]]);
    for (specs, h, pass) in [
        (&[("aggregate_instance_extra_specs:ssd", "true")][..], &ssd_agg, true),
        (&[("ssd", "maybe")][..], &ssd_agg, true),
        (&[("ssd", "no")][..], &ssd_agg, false),
        (&[("ssd", "true")][..], &host("b", 1), false),
        (&[("hw:cpu_policy", "dedicated")][..], &host("b", 1), true),
        (&[("capabilities:hypervisor_type", "kvm")][..], &host("b", 1), true),
    ] {
        let f = flavor(specs);
        check(F::AggregateInstanceExtraSpecs, h, &RequestView::new(&f, &i), &cfg, pass);
    }

    // AggregateImagePropertiesIsolation: image props must be among the aggregate's values.
    let win = in_aggregates(host("a", 1), &[&[("os_type", "windows")]]);
    for (props, h, pass) in [
        (&[("os_type", "windows")][..], &win, true),
        (&[("os_type", "linux")][..], &win, false),
        (&[][..], &win, true),
        (&[("os_type", "linux")][..], &host("b", 1), true),
    ] {
        let img = image(props);
        check(F::AggregateImagePropertiesIsolation, h, &RequestView::new(&f, &img), &cfg, pass);
    }

    // AggregateMultiTenancyIsolation: filter_tenant_id* keys restrict the hosts.
    let tenants = in_aggregates(host("a", 1), &[&[("filter_tenant_id", "p1,p2"), ("filter_tenant_id_2", "p3")]]);
    for (project, h, pass) in [
        ("p2", &tenants, true),
        ("p3", &tenants, true),
        ("p4", &tenants, false),
        ("p4", &host("b", 1), true),
        ("p4", &in_aggregates(host("c", 1), &[&[("ssd", "true")]]), true),
    ] {
        check(F::AggregateMultiTenancyIsolation, h, &RequestView { project_id: project, ..req.clone() }, &cfg, pass);
    }

    // AggregateTypeAffinity: instance_type lists flavors (comma separated).
    let typed = in_aggregates(host("a", 1), &[&[("instance_type", "m1.tiny, m1.small")]]);
    let other = in_aggregates(host("b", 1), &[&[("instance_type", "m1.large")]]);
    check(F::AggregateTypeAffinity, &typed, &req, &cfg, true);
    check(F::AggregateTypeAffinity, &other, &req, &cfg, false);
    check(F::AggregateTypeAffinity, &host("c", 1), &req, &cfg, true);

    // AvailabilityZone: aggregate zone, or the default zone for hosts in none.
    let az1 = in_aggregates(host("a", 1), &[&[("availability_zone", "az1")]]);
    let want = |az| RequestView { availability_zone: Some(az), ..req.clone() };
    check(F::AvailabilityZone, &az1, &want("az1"), &cfg, true);
    check(F::AvailabilityZone, &az1, &want("nova"), &cfg, false);
    check(F::AvailabilityZone, &host("b", 1), &want("nova"), &cfg, true);
    check(F::AvailabilityZone, &host("b", 1), &want("az1"), &cfg, false);
    check(F::AvailabilityZone, &az1, &req, &cfg, true);

    // IoOps (< 8) and NumInstances (< 50), and their aggregate overrides (minimum wins).
    let busy = with_node(host("a", 1), |n| {
        n.num_io_ops = 8;
        n.num_instances = 50;
    });
    let calm = with_node(host("b", 1), |n| {
        n.num_io_ops = 7;
        n.num_instances = 49;
    });
    check(F::IoOps, &busy, &req, &cfg, false);
    check(F::IoOps, &calm, &req, &cfg, true);
    check(F::NumInstances, &busy, &req, &cfg, false);
    check(F::NumInstances, &calm, &req, &cfg, true);
    let lenient = in_aggregates(busy.clone(), &[&[("max_io_ops_per_host", "20"), ("max_instances_per_host", "100")]]);
    check(F::AggregateIoOps, &lenient, &req, &cfg, true);
    check(F::AggregateNumInstances, &lenient, &req, &cfg, true);
    let strict = in_aggregates(calm.clone(), &[&[("max_io_ops_per_host", "20")], &[("max_io_ops_per_host", "5")]]);
    check(F::AggregateIoOps, &strict, &req, &cfg, false);
    let garbled = in_aggregates(busy.clone(), &[&[("max_io_ops_per_host", "lots")]]);
    check(F::AggregateIoOps, &garbled, &req, &cfg, false);

    // IsolatedHosts: nova's two matrices.
    let iso_cfg =
        SchedulerConfig { isolated_hosts: vec!["iso".into()], isolated_images: vec!["special".into()], ..cfg.clone() };
    let special = image(&[]);
    let special = Image { name: "special".into(), ..special };
    let iso_req = RequestView::new(&f, &special);
    check(F::IsolatedHosts, &host("iso", 1), &iso_req, &iso_cfg, true);
    check(F::IsolatedHosts, &host("iso", 1), &req, &iso_cfg, false);
    check(F::IsolatedHosts, &host("b", 1), &iso_req, &iso_cfg, false);
    check(F::IsolatedHosts, &host("b", 1), &req, &iso_cfg, true);
    let loose = SchedulerConfig { restrict_isolated_hosts_to_isolated_images: false, ..iso_cfg.clone() };
    check(F::IsolatedHosts, &host("iso", 1), &req, &loose, true);
    check(F::IsolatedHosts, &host("b", 1), &iso_req, &loose, false);

    // Json: comparisons, and/or/not, $stats.
    let big = with_node(host("a", 8192), |n| {
        n.stats.insert("rack".into(), "r1".into());
    });
    for (query, pass) in [
        (r#"[">=", "$free_ram_mb", 4096]"#, true),
        (r#"[">=", "$free_ram_mb", 9000]"#, false),
        (r#"["and", [">=", "$free_ram_mb", 4096], ["=", "$hypervisor_type", "kvm"]]"#, true),
        (r#"["or", ["<", "$free_ram_mb", 10], ["=", "$stats.rack", "r2"]]"#, false),
        (r#"["not", ["=", "$stats.rack", "r1"]]"#, false),
        (r#"["in", "$stats.rack", "r1", "r2"]"#, true),
        ("not json", false),
    ] {
        let hints = SchedulerHints { query: Some(query.into()), ..Default::default() };
        check(F::Json, &big, &RequestView { hints: &hints, ..req.clone() }, &cfg, pass);
    }

    // Retry: skip hosts tried before.
    let tried = vec!["a".to_string()];
    let retry = RequestView { retry_hosts: &tried, ..req.clone() };
    check(F::Retry, &host("a", 1), &retry, &cfg, false);
    check(F::Retry, &host("b", 1), &retry, &cfg, true);

    // Ram (Icehouse: total * ratio - reserved - used >= ram), Core, Disk, aggregate ratios.
    check(F::Ram, &host("a", 2048), &req, &cfg, true);
    check(F::Ram, &host("a", 2047), &req, &cfg, false);
    let overcommit = in_aggregates(host("a", 1024), &[&[("ram_allocation_ratio", "1.5")]]);
    check(F::Ram, &overcommit, &req, &cfg, false);
    check(F::AggregateRam, &overcommit, &req, &cfg, true);
    let mut full_cpu = host("a", 8192);
    full_cpu.used.0[0] = 32;
    check(F::Core, &full_cpu, &req, &cfg, false);
    check(F::Core, &host("a", 8192), &req, &cfg, true);
    let cpu16 = in_aggregates(full_cpu.clone(), &[&[("cpu_allocation_ratio", "16")]]);
    check(F::AggregateCore, &cpu16, &req, &cfg, true);
    let mut full_disk = host("a", 8192);
    full_disk.used.0[2] = 81;
    check(F::Disk, &full_disk, &req, &cfg, false);
    full_disk.used.0[2] = 80;
    check(F::Disk, &full_disk, &req, &cfg, true);
}

#[test]
fn every_filter_has_a_name_that_parses_back() {
    for f in FilterKind::ALL {
        assert_eq!(FilterKind::from_name(f.name()), Some(*f));
        assert_eq!(FilterKind::from_name(&format!("{}Filter", f.name())), Some(*f));
    }
    assert_eq!(FilterKind::from_name("SimpleCIDRAffinityFilter"), Some(FilterKind::SimpleCidrAffinity));
    for w in WeigherKind::ALL {
        assert_eq!(WeigherKind::from_name(w.name()), Some(w));
    }
}

#[test]
fn normalisation_is_min_max_and_zero_when_equal() {
    assert_eq!(normalize(&[2.0, 4.0, 3.0]), vec![0.0, 1.0, 0.5]);
    assert_eq!(normalize(&[5.0, 5.0]), vec![0.0, 0.0]);
    assert_eq!(normalize(&[]), Vec::<f64>::new());
    // minval = 0 (RAM, CPU, disk, io_ops): normalised against 0, not the smallest value.
    assert_eq!(normalize_with(&[2.0, 4.0], Some(0.0)), vec![0.5, 1.0]);
    assert_eq!(normalize_with(&[0.0, 0.0], Some(0.0)), vec![0.0, 0.0]);
}

pub(super) fn order(hosts: &[HostState], req: &RequestView<'_>, config: &SchedulerConfig) -> Vec<usize> {
    sorted_hosts(hosts, req, config, &mut SmallRng::seed_from_u64(1)).unwrap()
}

pub(super) fn only(weigher: WeigherKind, multiplier: f64) -> SchedulerConfig {
    // Without placement's check: these fixtures have hosts with less free RAM than the flavor.
    SchedulerConfig {
        weighers: [(weigher, multiplier)].into_iter().collect(),
        use_placement: false,
        ..Default::default()
    }
}

/// One weigher case: the hosts, the request, the weigher and multiplier, the expected order.
pub(super) fn check_weigher(
    hosts: &[HostState],
    req: &RequestView<'_>,
    weigher: WeigherKind,
    m: f64,
    expect: &[usize],
) {
    assert_eq!(order(hosts, req, &only(weigher, m)), expect, "{weigher:?} x {m}");
}

#[test]
fn weigher_table() {
    let f = flavor(&[]);
    let i = image(&[]);
    let req = RequestView::new(&f, &i);
    use WeigherKind as W;
    let ram = vec![host("a", 1000), host("b", 9000), host("c", 5000)];
    check_weigher(&ram, &req, W::Ram, 1.0, &[1, 2, 0]);
    check_weigher(&ram, &req, W::Ram, -1.0, &[0, 2, 1]);

    let cpu: Vec<HostState> = [3u64, 0, 9]
        .iter()
        .enumerate()
        .map(|(k, used)| {
            let mut h = host(&format!("h{k}"), 8192);
            h.used.0[0] = *used;
            h
        })
        .collect();
    check_weigher(&cpu, &req, W::Cpu, 1.0, &[1, 0, 2]);
    check_weigher(&cpu, &req, W::Cpu, -1.0, &[2, 0, 1]);

    let disk: Vec<HostState> = [50u64, 10, 90]
        .iter()
        .enumerate()
        .map(|(k, used)| {
            let mut h = host(&format!("h{k}"), 8192);
            h.used.0[2] = *used;
            h
        })
        .collect();
    check_weigher(&disk, &req, W::Disk, 1.0, &[1, 0, 2]);

    let io: Vec<HostState> =
        [4u64, 1, 6].iter().map(|n| with_node(host("x", 1), |node| node.num_io_ops = *n)).collect();
    check_weigher(&io, &req, W::IoOps, -1.0, &[1, 0, 2]);
    let inst: Vec<HostState> =
        [4u64, 1, 6].iter().map(|n| with_node(host("x", 1), |node| node.num_instances = *n)).collect();
    check_weigher(&inst, &req, W::NumInstances, -1.0, &[1, 0, 2]);
    check_weigher(&inst, &req, W::NumInstances, 0.0, &[0, 1, 2]);
    let hv: Vec<HostState> = [8_000_000u64, 10_000_000, 9_000_000]
        .iter()
        .map(|v| with_node(host("x", 1), |node| node.hypervisor_version = *v))
        .collect();
    check_weigher(&hv, &req, W::HypervisorVersion, 1.0, &[1, 2, 0]);

    let mut failing = vec![host("a", 1), host("b", 1), host("c", 1)];
    failing[0].failed_builds = 3;
    check_weigher(&failing, &req, W::BuildFailure, -1e6, &[1, 2, 0]);

    let mut members = vec![host("a", 1), host("b", 1), host("c", 1)];
    members[0].group_members_here = 1;
    members[2].group_members_here = 3;
    let soft_aff = RequestView { group_policy: Some(GroupPolicy::SoftAffinity), ..req.clone() };
    let soft_anti = RequestView { group_policy: Some(GroupPolicy::SoftAntiAffinity), ..req.clone() };
    check_weigher(&members, &soft_aff, W::SoftAffinity, 1.0, &[2, 0, 1]);
    check_weigher(&members, &soft_anti, W::SoftAntiAffinity, 1.0, &[1, 0, 2]);
    // Without a soft policy both weigh nothing: input order.
    check_weigher(&members, &req, W::SoftAffinity, 1.0, &[0, 1, 2]);
    check_weigher(&members, &req, W::SoftAntiAffinity, 1.0, &[0, 1, 2]);
}

#[test]
fn aggregate_multiplier_overrides_the_configured_one() {
    let f = flavor(&[]);
    let i = image(&[]);
    let req = RequestView::new(&f, &i);
    // a has least free RAM; its aggregate packs (ram_weight_multiplier -1) so it ranks
    // below b (1.0 * 1.0) but above c, whose normalised RAM is between.
    let hosts = vec![
        in_aggregates(host("a", 1000), &[&[("ram_weight_multiplier", "-1.0")]]),
        host("b", 9000),
        in_aggregates(host("c", 5000), &[&[("ram_weight_multiplier", "0")]]),
    ];
    let config = only(WeigherKind::Ram, 1.0);
    // a: -1 * 1000/9000, b: 1 * 1, c: 0 * 5000/9000.
    assert_eq!(order(&hosts, &req, &config), vec![1, 2, 0]);
    let e = explain(&hosts, &req, &config, &mut SmallRng::seed_from_u64(1));
    assert_eq!(e.weighers[0].values[0].multiplier, -1.0);
    assert!((e.scores[2].score + 1000.0 / 9000.0).abs() < 1e-12, "{:?}", e.scores);
    // A zero configured multiplier still weighs hosts whose aggregates override it.
    let zero = only(WeigherKind::Ram, 0.0);
    assert_eq!(order(&hosts, &req, &zero), vec![1, 2, 0]);
    // Build failure overrides are negated like nova's option.
    let agg = HostAggregates::new(&[Aggregate {
        name: "x".into(),
        hosts: vec![],
        metadata: [("build_failure_weight_multiplier".to_string(), "10".to_string())].into_iter().collect(),
    }]);
    assert_eq!(agg.weigher_multiplier(WeigherKind::BuildFailure), Some(-10.0));
}

#[test]
fn subset_pick_stays_within_the_best_n() {
    let hosts: Vec<HostState> = (0..10).map(|i| host(&format!("h{i}"), 1000 * (i + 1))).collect();
    let f = flavor(&[]);
    let i = image(&[]);
    let req = RequestView::new(&f, &i);
    let config = SchedulerConfig { host_subset_size: 3, use_placement: false, ..Default::default() };
    let mut seen = std::collections::BTreeSet::new();
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..200 {
        let order = sorted_hosts(&hosts, &req, &config, &mut rng).unwrap();
        assert!([9, 8, 7].contains(&order[0]));
        let mut rest = order.clone();
        rest.sort_unstable();
        assert_eq!(rest, (0..10).collect::<Vec<_>>(), "every survivor exactly once");
        seen.insert(order[0]);
    }
    assert_eq!(seen.len(), 3, "every host of the subset gets picked");
}

#[test]
fn no_valid_host_names_the_step() {
    let mut h = host("a", 4096);
    h.service_up = false;
    let f = flavor(&[]);
    let i = image(&[]);
    let req = RequestView::new(&f, &i);
    let err = sorted_hosts(&[h], &req, &SchedulerConfig::default(), &mut SmallRng::seed_from_u64(1)).unwrap_err();
    assert!(err.reason.contains("Compute"), "{}", err.reason);
    // Placement: nothing fits 2048 MB in 1000 MB free.
    let err = sorted_hosts(&[host("b", 1000)], &req, &SchedulerConfig::default(), &mut SmallRng::seed_from_u64(1))
        .unwrap_err();
    assert!(err.reason.contains("placement"), "{}", err.reason);
}

#[test]
fn placement_step_limits_candidates_in_input_order() {
    let hosts: Vec<HostState> = (0..10).map(|i| host(&format!("h{i}"), if i % 2 == 0 { 1000 } else { 8000 })).collect();
    let f = flavor(&[]);
    let i = image(&[]);
    let req = RequestView::new(&f, &i);
    let config = SchedulerConfig { candidate_limit: 3, ..Default::default() };
    let mut ws = Workspace::new();
    assert_eq!(ws.filter(&hosts, &req, &config).unwrap(), &[1, 3, 5]);
    let icehouse = SchedulerConfig { filters: vec![], ..SchedulerConfig::icehouse() };
    assert_eq!(ws.filter(&hosts, &req, &icehouse).unwrap().len(), 10, "no placement in Icehouse");
}

fn varied_hosts(n: usize) -> Vec<HostState> {
    (0..n)
        .map(|k| {
            let mut h = host(&format!("h{k}"), 2048 + (k as u64 * 7919) % 12000);
            h.used.0[0] = (k as u64 * 13) % 30;
            h.used.0[2] = (k as u64 * 31) % 80;
            h.failed_builds = (k % 7 == 0) as u32;
            h.service_up = k % 11 != 3;
            with_node(h, |n| n.num_io_ops = k as u64 % 5)
        })
        .collect()
}

#[test]
fn explain_orders_hosts_as_sorted_hosts_does() {
    let hosts = varied_hosts(40);
    let f = flavor(&[]);
    let i = image(&[("hw_architecture", "x86_64")]);
    let req = RequestView::new(&f, &i);
    for subset in [1, 4] {
        let config = SchedulerConfig { host_subset_size: subset, ..Default::default() };
        for seed in 0..5 {
            let fast = sorted_hosts(&hosts, &req, &config, &mut SmallRng::seed_from_u64(seed)).unwrap();
            let e = explain(&hosts, &req, &config, &mut SmallRng::seed_from_u64(seed));
            assert_eq!(e.order, fast, "subset {subset} seed {seed}");
            assert_eq!(e.pick.as_deref(), Some(hosts[fast[0]].node.host.as_str()));
            assert_eq!(e.alternates.len(), 2);
        }
    }
    let e = explain(&hosts, &req, &SchedulerConfig::default(), &mut SmallRng::seed_from_u64(1));
    let compute = e.steps.iter().find(|s| s.filter == "Compute").unwrap();
    assert_eq!(compute.rejected.len(), 4, "{:?}", compute.rejected);
    assert!(compute.rejected[0].reason.contains("service down"));
    let ram = e.weighers.iter().find(|w| w.weigher == "ram").unwrap();
    assert!(ram.values.iter().all(|v| (0.0..=1.0).contains(&v.normalised)));
    assert!(e.cpu_topology.is_ok());
    serde_json::to_string(&e).expect("an explanation serialises");
}

#[test]
fn explain_reports_no_valid_host() {
    let hosts = vec![host("a", 1000), host("b", 1500)];
    let f = flavor(&[]);
    let i = image(&[]);
    let e = explain(&hosts, &RequestView::new(&f, &i), &SchedulerConfig::default(), &mut SmallRng::seed_from_u64(1));
    assert!(e.pick.is_none());
    assert_eq!(e.steps[0].filter, "Placement");
    assert_eq!(e.steps[0].rejected.len(), 2);
    assert!(e.steps[0].rejected[0].reason.contains("MEMORY_MB"), "{:?}", e.steps[0].rejected);
    assert!(e.no_valid_host.unwrap().reason.contains("placement"));
}

/// scenarios/aggregates.toml: only the `pinned` aggregate's KVM hosts pass for every flavor
/// and image of the workload, although spread weighing alone would pick a general host.
#[test]
fn aggregates_scenario_keeps_requests_on_the_aggregate() {
    let text = include_str!("../../../scenarios/aggregates.toml");
    let scenario = crate::scenario::Scenario::parse("aggregates.toml", text).unwrap();
    let views = scenario.host_aggregates();
    let hosts: Vec<HostState> = scenario
        .hosts()
        .into_iter()
        .map(|(name, g)| {
            let inventories = [
                Inventory::new(g.vcpus, g.reserved.vcpus, 4.0),
                Inventory::new(g.ram_mb, g.reserved.ram_mb, 1.0),
                Inventory::new(g.disk_gb, g.reserved.disk_gb, 1.0),
            ];
            let mut h = HostState::new(Arc::new(g.node(&name)), inventories, Resources::default());
            h.aggregates = views[&name].clone();
            h
        })
        .collect();
    let config = scenario.scheduler_config();
    let unfiltered = SchedulerConfig { filters: vec![], ..config.clone() };
    let mut ws = Workspace::new();
    let mut rng = SmallRng::seed_from_u64(1);
    for f in &scenario.flavors {
        for i in &scenario.images {
            let req = RequestView::new(f, i);
            let survivors = ws.filter(&hosts, &req, &config).unwrap().to_vec();
            assert_eq!(survivors.len(), 8, "{} {}", f.name, i.name);
            assert!(survivors.iter().all(|&k| hosts[k].node.host.starts_with("hpc-")));
            let first = ws.sorted_hosts(&hosts, &req, &unfiltered, &mut rng).unwrap()[0];
            assert!(hosts[first].node.host.starts_with("general-"), "without filters spread prefers the big hosts");
        }
    }
}

#[test]
fn best_hosts_is_the_prefix_of_the_full_order() {
    let hosts = varied_hosts(300);
    let f = flavor(&[]);
    let i = image(&[("hw_architecture", "x86_64")]);
    let req = RequestView::new(&f, &i);
    let mut ws = Workspace::new();
    for subset in [1, 3, 10] {
        let config = SchedulerConfig { host_subset_size: subset, ..Default::default() };
        for seed in 0..6 {
            let full = ws.sorted_hosts(&hosts, &req, &config, &mut SmallRng::seed_from_u64(seed)).unwrap().to_vec();
            for k in [1, 3, 7, 500] {
                let top = ws.best_hosts(&hosts, &req, &config, &mut SmallRng::seed_from_u64(seed), k).unwrap();
                assert_eq!(top, &full[..k.min(full.len())], "subset {subset} seed {seed} k {k}");
            }
        }
    }
}

#[test]
fn cached_node_facts_follow_a_changed_node() {
    let f = flavor(&[]);
    let arm = image(&[("hw_architecture", "aarch64")]);
    let x86 = image(&[("hw_architecture", "x86_64")]);
    let mut hosts = vec![host("a", 8192), host("b", 8192)];
    let mut ws = Workspace::new();
    let config = SchedulerConfig::default();
    assert!(ws.filter(&hosts, &RequestView::new(&f, &arm), &config).is_err());
    assert_eq!(ws.filter(&hosts, &RequestView::new(&f, &x86), &config).unwrap(), &[0, 1]);
    hosts[1] = with_node(hosts[1].clone(), |n| n.cpu_arch = "aarch64".into());
    assert_eq!(ws.filter(&hosts, &RequestView::new(&f, &arm), &config).unwrap(), &[1]);
    assert_eq!(ws.filter(&hosts, &RequestView::new(&f, &x86), &config).unwrap(), &[0]);
    // io_ops read from the new node record.
    hosts[0] = with_node(hosts[0].clone(), |n| n.num_io_ops = 7);
    let only_io = SchedulerConfig { weighers: [(WeigherKind::IoOps, -1.0)].into_iter().collect(), ..config };
    let order = ws
        .sorted_hosts(
            &hosts,
            &RequestView::new(&f, &x86),
            &SchedulerConfig { filters: vec![], ..only_io },
            &mut SmallRng::seed_from_u64(1),
        )
        .unwrap();
    assert_eq!(order, &[1, 0]);
}

#[test]
fn host_table_decides_as_host_states_do() {
    let mut hosts = varied_hosts(120);
    hosts[5].inventories[1].step_size = 512;
    hosts[9].inventories[0].max_unit = 1;
    hosts[17] = in_aggregates(hosts[17].clone(), &[&[("ram_weight_multiplier", "3")]]);
    let mut table = HostTable::new(hosts.clone());
    let i = image(&[("hw_architecture", "x86_64")]);
    let mut ws = Workspace::new();
    let mut tws = Workspace::new();
    for (round, (vcpus, ram)) in [(1, 2048), (2, 4096), (4, 1024), (1, 512)].into_iter().cycle().take(40).enumerate() {
        let f = Flavor { vcpus, ram_mb: ram, ..flavor(&[]) };
        let req = RequestView::new(&f, &i);
        let config = SchedulerConfig { host_subset_size: 1 + round % 3, candidate_limit: 80, ..Default::default() };
        let seed = round as u64;
        let expect =
            ws.best_hosts(table.hosts(), &req, &config, &mut SmallRng::seed_from_u64(seed), 5).map(<[usize]>::to_vec);
        let got =
            tws.table_best_hosts(&table, &req, &config, &mut SmallRng::seed_from_u64(seed), 5).map(<[usize]>::to_vec);
        assert_eq!(got, expect, "round {round}");
        if let Ok(order) = got {
            table.claim(order[0], &f.resources());
            if round % 4 == 3 {
                table.release(order[0], &f.resources());
            }
        }
    }
}

#[test]
fn host_table_update_and_set_usage_are_seen_by_the_next_decision() {
    let hosts = vec![host("a", 8192), host("b", 4096), host("c", 2048)];
    let mut table = HostTable::new(hosts);
    assert_eq!(table.len(), 3);
    assert!(!table.is_empty());
    assert!(HostTable::new(Vec::new()).is_empty());
    let f = flavor(&[]);
    let x86 = image(&[("hw_architecture", "x86_64")]);
    let req = RequestView::new(&f, &x86);
    let config = SchedulerConfig::default();
    let mut ws = Workspace::new();
    let mut decide = |table: &HostTable| {
        let got = ws.table_best_hosts(table, &req, &config, &mut SmallRng::seed_from_u64(1), 3).map(<[usize]>::to_vec);
        let expect = Workspace::new()
            .best_hosts(table.hosts(), &req, &config, &mut SmallRng::seed_from_u64(1), 3)
            .map(<[usize]>::to_vec);
        assert_eq!(got, expect);
        got
    };
    assert_eq!(decide(&table).unwrap(), [0, 1, 2]);
    // A node changed in place: the cached image verdict for its old node must not stick.
    table.update(0, |h| *h = with_node(h.clone(), |n| n.cpu_arch = "aarch64".into()));
    assert_eq!(decide(&table).unwrap(), [1, 2]);
    table.update(0, |h| *h = with_node(h.clone(), |n| n.cpu_arch = "x86_64".into()));
    assert_eq!(decide(&table).unwrap(), [0, 1, 2]);
    table.update(1, |h| h.service_disabled = true);
    assert_eq!(decide(&table).unwrap(), [0, 2]);
    // Placement's rows: c now has the most free RAM, a none left for the flavor.
    let inv = table.hosts()[2].inventories;
    table.set_usage(2, inv, Resources::new(0, 0, 0));
    table.set_usage(0, inv, Resources::new(0, 16000, 0));
    assert_eq!(decide(&table).unwrap(), [2]);
    // A bigger inventory on a: it fits again, with the most free RAM.
    let big = [inv[0], Inventory::new(65536, 0, 1.0), inv[2]];
    table.set_usage(0, big, Resources::new(0, 16000, 0));
    assert_eq!(decide(&table).unwrap(), [0, 2]);
    // A clone is a table of its own: its class verdicts do not leak into the original's.
    let mut other = table.clone();
    other.update(2, |h| *h = with_node(h.clone(), |n| n.cpu_arch = "aarch64".into()));
    assert_eq!(decide(&other).unwrap(), [0]);
    assert_eq!(decide(&table).unwrap(), [0, 2]);
}

mod table_equivalence {
    use super::*;
    use proptest::prelude::*;

    /// One host of the random table, drawn from small value sets so that ties are common.
    #[derive(Debug, Clone)]
    struct HostSpec {
        vcpus: u64,
        ram_gb: u64,
        cpu_ratio: f64,
        used: (u64, u64, u64),
        units: u8,
        service: u8,
        failed: u32,
        io_ops: u64,
        instances: u64,
        version: u64,
        aarch64: bool,
        members: u32,
        aggregate: u8,
    }

    fn host_spec() -> impl Strategy<Value = HostSpec> {
        (
            (prop::sample::select(vec![4u64, 8, 16]), prop::sample::select(vec![8u64, 16, 32]), 0usize..4),
            (0u64..40, 0u64..40_000, 0u64..120),
            (0u8..12, 0u8..10, prop::sample::select(vec![0u32, 0, 0, 1, 3])),
            (0u64..4, 0u64..6, prop::sample::select(vec![9_000_000u64, 9_000_000, 10_001_000])),
            (0u8..8, 0u32..3, 0u8..12),
        )
            .prop_map(
                |(
                    (vcpus, ram_gb, ratio),
                    used,
                    (units, service, failed),
                    (io_ops, instances, version),
                    (arch, members, aggregate),
                )| HostSpec {
                    vcpus,
                    ram_gb,
                    cpu_ratio: [1.0, 1.5, 4.0, 16.0][ratio],
                    used,
                    units,
                    service,
                    failed,
                    io_ops,
                    instances,
                    version,
                    aarch64: arch == 0,
                    members,
                    aggregate,
                },
            )
    }

    fn build(k: usize, s: &HostSpec) -> HostState {
        let mut inventories = [
            Inventory::new(s.vcpus, 0, s.cpu_ratio),
            Inventory::new(s.ram_gb * 1024, 512, 1.0),
            Inventory::new(100, 0, 1.0),
        ];
        match s.units {
            0 => inventories[1].step_size = 512,
            1 => inventories[0].max_unit = 2,
            2 => inventories[2].min_unit = 10,
            _ => {}
        }
        let mut h =
            HostState::new(Arc::new(node(&format!("h{k}"))), inventories, Resources::new(s.used.0, s.used.1, s.used.2));
        h.service_up = s.service != 0;
        h.service_disabled = s.service == 1;
        h.failed_builds = s.failed;
        h.group_members_here = s.members;
        h = with_node(h, |n| {
            n.num_io_ops = s.io_ops;
            n.num_instances = s.instances;
            n.hypervisor_version = s.version;
            if s.aarch64 {
                n.cpu_arch = "aarch64".into();
            }
            // Metrics on most hosts (MetricsFilter, MetricsWeigher), none on a third.
            if !s.failed.is_multiple_of(3) {
                n.metrics.insert("cpu".into(), s.used.0 as f64 / 10.0);
                n.metrics.insert("mem".into(), s.io_ops as f64);
            }
        });
        match s.aggregate {
            0 => in_aggregates(h, &[&[("ram_weight_multiplier", "3")]]),
            1 => in_aggregates(h, &[&[("build_failure_weight_multiplier", "2"), ("x", "y")]]),
            2 => in_aggregates(
                h,
                &[&[("num_instances_weight_multiplier", "0.5")], &[("io_ops_weight_multiplier", "-2")]],
            ),
            3 => in_aggregates(h, &[&[("ram_weight_multiplier", "oops")]]),
            _ => h,
        }
    }

    #[derive(Debug, Clone)]
    struct Request {
        vcpus: u64,
        ram_mb: u64,
        disk_gb: u64,
        arch: u8,
        group: u8,
        k: usize,
    }

    fn request() -> impl Strategy<Value = Request> {
        (1u64..6, prop::sample::select(vec![512u64, 1024, 2048, 4096]), 0u64..30, 0u8..4, 0u8..8, 0usize..6).prop_map(
            |(vcpus, ram_mb, disk_gb, arch, group, k)| Request {
                vcpus,
                ram_mb,
                disk_gb,
                arch,
                group,
                k: [0, 1, 3, 3, 5, 40][k],
            },
        )
    }

    #[derive(Debug, Clone)]
    enum Op {
        Decide(Request),
        Claim(Request),
        Release(usize),
        Update(usize, HostSpec),
        Usage(usize, (u64, u64, u64)),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => request().prop_map(Op::Decide),
            3 => request().prop_map(Op::Claim),
            1 => any::<usize>().prop_map(Op::Release),
            1 => (any::<usize>(), host_spec()).prop_map(|(i, s)| Op::Update(i, s)),
            1 => (any::<usize>(), (0u64..40, 0u64..40_000, 0u64..120)).prop_map(|(i, u)| Op::Usage(i, u)),
        ]
    }

    fn config() -> impl Strategy<Value = SchedulerConfig> {
        let multiplier = prop::sample::select(vec![0.0, 1.0, 1.0, -1.0, 2.5, -1_000_000.0]);
        (
            prop::collection::vec(prop::option::weighted(0.3, multiplier), WeigherKind::COUNT),
            1usize..4,
            prop::sample::select(vec![2usize, 5, 1000]),
            0u8..8,
        )
            .prop_map(|(overrides, subset, limit, era)| {
                let mut config = match era {
                    0 => SchedulerConfig::icehouse(),
                    1 => SchedulerConfig {
                        filters: [FilterKind::defaults(), vec![FilterKind::NumInstances, FilterKind::IoOps]].concat(),
                        ..SchedulerConfig::default()
                    },
                    // The metrics weigher, hosts without metrics weighing weight_of_unavailable,
                    // or filtered out before a required weigher could raise.
                    2 | 3 => SchedulerConfig {
                        filters: match era {
                            2 => FilterKind::defaults(),
                            _ => [FilterKind::defaults(), vec![FilterKind::Metrics]].concat(),
                        },
                        metrics: MetricsConfig {
                            weight_setting: vec![("cpu".into(), 1.0), ("mem".into(), -0.5)],
                            required: era == 3,
                            weight_of_unavailable: -10000.0,
                        },
                        ..SchedulerConfig::default()
                    },
                    _ => SchedulerConfig::default(),
                };
                for (w, m) in WeigherKind::ALL.into_iter().zip(overrides) {
                    if let Some(m) = m {
                        config.weighers.insert(w, m);
                    }
                }
                config.host_subset_size = subset;
                config.candidate_limit = limit;
                config.max_io_ops_per_host = 3;
                config.max_instances_per_host = 5;
                config
            })
    }

    fn check(
        table: &HostTable,
        ws: &mut Workspace,
        config: &SchedulerConfig,
        r: &Request,
        seed: u64,
    ) -> Result<Result<Vec<usize>, NoValidHost>, TestCaseError> {
        let flavor = Flavor { vcpus: r.vcpus, ram_mb: r.ram_mb, disk_gb: r.disk_gb, ..flavor(&[]) };
        let image = match r.arch {
            0 => image(&[]),
            1 => image(&[("hw_architecture", "x86_64")]),
            2 => image(&[("architecture", "AMD64"), ("hypervisor_version_requires", ">= 9.0")]),
            _ => image(&[("hw_architecture", "aarch64"), ("img_hv_requested_version", ">= 9.0")]),
        };
        let group_hosts = vec!["h0".to_string(), "h3".to_string()];
        let req = RequestView {
            group_policy: match r.group {
                0 => Some(GroupPolicy::SoftAffinity),
                1 => Some(GroupPolicy::SoftAntiAffinity),
                2 => Some(GroupPolicy::AntiAffinity),
                3 => Some(GroupPolicy::Affinity),
                _ => None,
            },
            group_max_per_host: 2,
            group_hosts: &group_hosts,
            ..RequestView::new(&flavor, &image)
        };
        let mut a = SmallRng::seed_from_u64(seed);
        let mut b = SmallRng::seed_from_u64(seed);
        let got = ws.table_best_hosts(table, &req, config, &mut a, r.k).map(<[usize]>::to_vec);
        let expect = Workspace::new().best_hosts(table.hosts(), &req, config, &mut b, r.k).map(<[usize]>::to_vec);
        prop_assert_eq!(&got, &expect, "request {:?}", r);
        prop_assert_eq!(rand::RngCore::next_u64(&mut a), rand::RngCore::next_u64(&mut b), "the same random draws");
        if r.k >= 1 {
            let full = sorted_hosts(table.hosts(), &req, config, &mut SmallRng::seed_from_u64(seed));
            let prefix = full.map(|o| o[..r.k.min(o.len())].to_vec());
            prop_assert_eq!(&got, &prefix, "the prefix of the full order");
        }
        Ok(got)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The table path decides exactly as the host-state path over the same hosts: same
        /// hosts, same order, same random draws (ties included), through claims, releases, usage refreshes
        /// and host updates, with down and disabled hosts, unit constraints, other-arch
        /// nodes, aggregates overriding multipliers, soft-affinity weighers, random
        /// multipliers, subsets, candidate limits, the Icehouse filters, legacy image
        /// property names, and the metrics filter and weigher (hosts without metrics too).
        #[test]
        fn table_path_decides_as_best_hosts(
            specs in prop::collection::vec(host_spec(), 1..30),
            copies in 1usize..4,
            config in config(),
            ops in prop::collection::vec(op(), 1..40),
            seed in any::<u64>(),
        ) {
            // Copies of the same hosts: exact ties in weight, broken by host index.
            let hosts: Vec<HostState> =
                specs.iter().cycle().take(specs.len() * copies).enumerate().map(|(k, s)| build(k, s)).collect();
            let n = hosts.len();
            let mut table = HostTable::new(hosts);
            let mut ws = Workspace::new();
            let mut live: Vec<(usize, Resources)> = Vec::new();
            for (round, op) in ops.into_iter().enumerate() {
                let seed = seed.wrapping_add(round as u64);
                match op {
                    Op::Decide(r) => {
                        let _ = check(&table, &mut ws, &config, &r, seed)?;
                    }
                    Op::Claim(r) => {
                        if let Ok(order) = check(&table, &mut ws, &config, &r, seed)? {
                            let res = Resources::new(r.vcpus, r.ram_mb, r.disk_gb);
                            if let Some(&i) = order.first() {
                                table.claim(i, &res);
                                live.push((i, res));
                            }
                        }
                    }
                    Op::Release(pick) if !live.is_empty() => {
                        let (i, res) = live.swap_remove(pick % live.len());
                        table.release(i, &res);
                    }
                    Op::Release(_) => {}
                    Op::Update(i, s) => {
                        let i = i % n;
                        let fresh = build(i, &s);
                        table.update(i, |h| *h = HostState { used: h.used, inventories: h.inventories, ..fresh });
                    }
                    Op::Usage(i, (c, r, d)) => {
                        let i = i % n;
                        let inventories = table.hosts()[i].inventories;
                        table.set_usage(i, inventories, Resources::new(c, r, d));
                        live.retain(|(j, _)| *j != i);
                    }
                }
            }
        }
    }
}

/// SimpleCIDRAffinityFilter's network: (build_near_host_ip, cidr, host address, inside?).
#[test]
fn cidr_affinity_table() {
    let cases: &[(&str, &str, &str, bool)] = &[
        ("10.0.1.7", "/24", "10.0.1.200", true),
        ("10.0.1.7", "/24", "10.0.2.1", false),
        ("10.0.1.7", "/16", "10.0.2.1", true),
        ("10.0.1.7", "/32", "10.0.1.7", true),
        ("10.0.1.7", "/32", "10.0.1.8", false),
        ("10.0.1.7", "/0", "192.168.1.1", true),
        ("10.0.1.7", "/255.255.0.0", "10.0.200.1", true),
        ("10.0.1.7", "/255.255.255.0", "10.0.2.1", false),
        (" 10.0.1.7 ", " /24 ", "10.0.1.1", true),
        ("2001:db8:0:1::7", "/64", "2001:db8:0:1::ffff", true),
        ("2001:db8:0:1::7", "/64", "2001:db8:0:2::1", false),
        ("2001:db8:0:1::7", "/48", "2001:db8:0:2::1", true),
        ("2001:db8::7", "/128", "2001:db8::7", true),
        ("2001:db8::7", "/128", "2001:db8::8", false),
        ("2001:db8::7", "/0", "fe80::1", true),
        // nova's default cidr is "/24": on IPv6 a /24 network.
        ("2001:db8::7", "/24", "2001:dff::1", true),
        ("2001:db8::7", "/24", "2001:e00::1", false),
        // Families never match (netaddr), not even IPv4-mapped addresses.
        ("10.0.1.7", "/0", "::ffff:10.0.1.7", false),
        ("::ffff:10.0.1.7", "/96", "10.0.1.7", false),
        ("2001:db8::7", "/0", "10.0.1.7", false),
    ];
    for &(ip, cidr, host, inside) in cases {
        let net = parse_cidr(ip, cidr).unwrap_or_else(|e| panic!("{ip} {cidr}: {e}"));
        let addr: core::net::IpAddr = host.parse().unwrap();
        assert_eq!(net.contains(addr), inside, "{host} in {ip}{cidr} ({net})");
    }
    assert_eq!(parse_cidr("2001:db8:0:1::7", "/64").unwrap().to_string(), "2001:db8:0:1::/64");
    assert_eq!(parse_cidr("10.0.1.7", "/255.255.255.0").unwrap().to_string(), "10.0.1.0/24");
}

/// Bad hints: (build_near_host_ip, cidr, part of the error).
#[test]
fn cidr_affinity_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("10.0.0.300", "/24", "not an IPv4 or IPv6 address"),
        ("host-1", "/24", "not an IPv4 or IPv6 address"),
        ("", "/24", "not an IPv4 or IPv6 address"),
        ("2001:db8::/64", "/64", "not an IPv4 or IPv6 address"),
        ("fe80::1%eth0", "/64", "not an IPv4 or IPv6 address"),
        ("10.0.0.1", "24", "not a prefix length"),
        ("10.0.0.1", "/", "not a prefix length"),
        ("10.0.0.1", "/-1", "not a prefix length"),
        ("10.0.0.1", "/33", "longer than an IPv4 address (32 bits)"),
        ("10.0.0.1", "/99999999999", "not a prefix length"),
        ("2001:db8::1", "/129", "longer than an IPv6 address (128 bits)"),
        ("2001:db8::1", "/255.255.255.0", "0 to 128 for an IPv6 address"),
        ("10.0.0.1", "/255.0.255.0", "not a contiguous netmask"),
        ("10.0.0.1", "/ff00::", "not a prefix length"),
    ];
    for &(ip, cidr, expect) in cases {
        let err = parse_cidr(ip, cidr).expect_err(&format!("{ip} {cidr}"));
        assert!(err.contains(expect), "{ip} {cidr}: {err}");
    }
}

#[test]
fn cidr_affinity_filter_with_ipv6_hints() {
    let cfg = SchedulerConfig::default();
    let f = flavor(&[]);
    let i = image(&[]);
    let req = RequestView::new(&f, &i);
    let mut v4 = host("a", 1);
    v4.host_ip = parse_ipv4("10.0.1.200");
    // An IPv6 hint keeps no IPv4 host (today's host addresses are IPv4).
    let v6 = SchedulerHints {
        build_near_host_ip: Some("2001:db8::1".into()),
        cidr: Some("/64".into()),
        ..Default::default()
    };
    check(FilterKind::SimpleCidrAffinity, &v4, &RequestView { hints: &v6, ..req.clone() }, &cfg, false);
    // An unusable hint rejects every host with the reason, without panicking.
    let bad =
        SchedulerHints { build_near_host_ip: Some("10.0.1.1".into()), cidr: Some("/40".into()), ..Default::default() };
    let why = FilterKind::SimpleCidrAffinity.check(&v4, &RequestView { hints: &bad, ..req.clone() }, &cfg).unwrap_err();
    assert!(why.contains("/40"), "{why}");
    let near = SchedulerHints { build_near_host_ip: Some("10.0.1.1".into()), ..Default::default() };
    let why = FilterKind::SimpleCidrAffinity
        .check(&host("b", 1), &RequestView { hints: &near, ..req.clone() }, &cfg)
        .unwrap_err();
    assert!(why.contains("no known ip"), "{why}");
    let mut far = host("c", 1);
    far.host_ip = parse_ipv4("10.0.2.1");
    let why = FilterKind::SimpleCidrAffinity.check(&far, &RequestView { hints: &near, ..req }, &cfg).unwrap_err();
    assert_eq!(why, "host ip 10.0.2.1 outside 10.0.1.0/24");
}

proptest::proptest! {
    /// Any text in either hint gives a network or an error, never a panic.
    #[test]
    fn parse_cidr_never_panics(ip in ".{0,40}", cidr in "/?[0-9a-f.:/-]{0,12}") {
        let _ = parse_cidr(&ip, &cidr);
    }
}
