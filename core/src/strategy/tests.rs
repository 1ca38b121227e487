use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use rand::{rngs::SmallRng, SeedableRng};

use super::{builtin, BUILTIN};
use crate::model::{ComputeNode, Flavor, Image, Inventory, Provider, Resources};
use crate::placement;
use crate::scheduler::{HostState, RequestView, SchedulerConfig};

fn host(name: &str, vcpus: u64, ram_mb: u64, cpu_ratio: f64) -> HostState {
    let node = ComputeNode {
        host: name.into(),
        vcpus,
        ram_mb,
        disk_gb: 200,
        hypervisor_type: "kvm".into(),
        hypervisor_version: 9_000_000,
        cpu_arch: "x86_64".into(),
        vm_modes: vec!["hvm".into()],
        num_instances: 0,
        num_io_ops: 0,
        stats: BTreeMap::new(),
        supported_instances: None,
        cpu_info: None,
        metrics: BTreeMap::new(),
    };
    let inv = [Inventory::new(vcpus, 0, cpu_ratio), Inventory::new(ram_mb, 512, 1.0), Inventory::new(200, 0, 1.0)];
    HostState::new(Arc::new(node), inv, Resources::default())
}

fn flavor(vcpus: u64, ram_mb: u64, disk_gb: u64) -> Flavor {
    Flavor {
        name: format!("f{vcpus}-{ram_mb}"),
        vcpus,
        ram_mb,
        disk_gb,
        ephemeral_gb: 0,
        swap: 0,
        extra_specs: BTreeMap::new(),
    }
}

fn image() -> Image {
    Image { name: "cirros".into(), size_mb: 16, disk_format: "qcow2".into(), properties: BTreeMap::new() }
}

fn provider(h: &HostState) -> Provider {
    Provider { host: h.node.host.clone(), inventories: h.inventories, used: h.used }
}

#[test]
fn every_builtin_is_found_by_name_and_unknown_names_are_not() {
    let config = SchedulerConfig::default();
    for name in BUILTIN {
        assert_eq!(builtin(name, &config).unwrap().name(), name);
    }
    assert!(builtin("magic", &config).is_none());
}

/// One case: strategy name, hosts (free RAM), expected first pick.
fn check_pick(name: &str, free_ram: &[u64], expect_first: usize) {
    let hosts: Vec<HostState> = free_ram
        .iter()
        .enumerate()
        .map(|(k, free)| {
            let mut h = host(&format!("h{k}"), 16, 16384 + 512, 4.0);
            h.used.0[1] = 16384 - free;
            h
        })
        .collect();
    let f = flavor(1, 1024, 10);
    let i = image();
    let req = RequestView::new(&f, &i);
    let mut s = builtin(name, &SchedulerConfig::default()).unwrap();
    let order = s.select(&hosts, &req, &mut SmallRng::seed_from_u64(3)).unwrap();
    assert_eq!(order[0], expect_first, "{name}: {order:?}");
    let mut all = order.clone();
    all.sort_unstable();
    assert_eq!(all, (0..hosts.len()).collect::<Vec<_>>(), "{name} returns every survivor once");
}

#[test]
fn builtins_pick_as_documented() {
    check_pick("spread", &[4000, 12000, 8000], 1);
    check_pick("pack", &[4000, 12000, 8000], 0);
    check_pick("first-fit", &[4000, 12000, 8000], 0);
    check_pick("best-fit", &[8000, 12000, 4000], 2);
}

#[test]
fn random_is_a_seeded_permutation_of_the_survivors() {
    let hosts: Vec<HostState> = (0..20).map(|k| host(&format!("h{k}"), 16, 16896, 4.0)).collect();
    let f = flavor(1, 1024, 10);
    let i = image();
    let req = RequestView::new(&f, &i);
    let mut s = builtin("random", &SchedulerConfig::default()).unwrap();
    let a = s.select(&hosts, &req, &mut SmallRng::seed_from_u64(5)).unwrap();
    let b = s.select(&hosts, &req, &mut SmallRng::seed_from_u64(5)).unwrap();
    let c = s.select(&hosts, &req, &mut SmallRng::seed_from_u64(6)).unwrap();
    assert_eq!(a, b, "same seed, same order");
    assert_ne!(a, c);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..20).collect::<Vec<_>>());
}

#[test]
fn p2c_prefers_the_less_loaded_of_its_two_samples() {
    let mut hosts = vec![host("a", 16, 16896, 1.0), host("b", 16, 16896, 1.0)];
    hosts[0].used = Resources::new(12, 8000, 0);
    hosts[1].used = Resources::new(2, 1000, 0);
    let f = flavor(1, 1024, 10);
    let i = image();
    let req = RequestView::new(&f, &i);
    let mut s = builtin("p2c", &SchedulerConfig::default()).unwrap();
    for seed in 0..20 {
        assert_eq!(s.select(&hosts, &req, &mut SmallRng::seed_from_u64(seed)).unwrap(), vec![1, 0]);
    }
}

#[derive(Debug, Clone)]
enum Step {
    Boot { vcpus: u64, ram_mb: u64, disk_gb: u64 },
    Delete { pick: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1u64..9, 1u64..17, 0u64..50).prop_map(|(vcpus, ram, disk_gb)| Step::Boot { vcpus, ram_mb: ram * 512, disk_gb }),
        1 => any::<usize>().prop_map(|pick| Step::Delete { pick }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// No built-in strategy ever over-allocates a host: boots claim the first host of the
    /// strategy's order that placement accepts, deletes free their allocation, and after
    /// every step each host's usage is within (total - reserved) * ratio.
    #[test]
    fn no_strategy_over_allocates(
        steps in proptest::collection::vec(step(), 1..120),
        sizes in proptest::collection::vec((2u64..33, 4u64..33, 1u32..5), 1..12),
        seed in any::<u64>(),
        name in proptest::sample::select(BUILTIN.to_vec()),
        subset in 1usize..4,
    ) {
        let mut hosts: Vec<HostState> = sizes
            .iter()
            .enumerate()
            .map(|(k, &(vcpus, ram_gb, ratio))| host(&format!("h{k}"), vcpus, ram_gb * 1024, ratio as f64))
            .collect();
        let config = SchedulerConfig { host_subset_size: subset, ..SchedulerConfig::default() };
        let mut strategy = builtin(name, &config).unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        let img = image();
        let mut live: Vec<(usize, Resources)> = Vec::new();
        for step in steps {
            match step {
                Step::Boot { vcpus, ram_mb, disk_gb } => {
                    let f = flavor(vcpus, ram_mb, disk_gb);
                    let req = RequestView::new(&f, &img);
                    if let Ok(order) = strategy.select(&hosts, &req, &mut rng) {
                        prop_assert!(!order.is_empty());
                        for i in order {
                            if placement::fits(&provider(&hosts[i]), &f.resources()).is_ok() {
                                hosts[i].used = hosts[i].used.add(&f.resources());
                                live.push((i, f.resources()));
                                break;
                            }
                        }
                    }
                }
                Step::Delete { pick } if !live.is_empty() => {
                    let (i, r) = live.swap_remove(pick % live.len());
                    hosts[i].used = hosts[i].used.checked_sub(&r).expect("usage never underflows");
                }
                Step::Delete { .. } => {}
            }
            for h in &hosts {
                let p = provider(h);
                prop_assert!(placement::over_capacity(&p, &h.used).is_none(), "{name} over-allocated {}: {:?}", h.node.host, h.used);
            }
        }
    }
}

#[test]
fn select_top_is_the_prefix_of_select_for_every_builtin() {
    let hosts: Vec<HostState> = (0..50)
        .map(|k| {
            let mut h = host(&format!("h{k}"), 16, 16896, 4.0);
            h.used = Resources::new(k % 9, (k * 331) % 12000, k % 40);
            h
        })
        .collect();
    let f = flavor(1, 1024, 10);
    let i = image();
    let req = RequestView::new(&f, &i);
    for subset in [1, 4] {
        let config = SchedulerConfig { host_subset_size: subset, ..SchedulerConfig::default() };
        for name in BUILTIN {
            let mut s = builtin(name, &config).unwrap();
            let full = s.select(&hosts, &req, &mut SmallRng::seed_from_u64(9)).unwrap();
            let top = s.select_top(&hosts, &req, &mut SmallRng::seed_from_u64(9), 3).unwrap();
            assert_eq!(top, full[..3], "{name} subset {subset}");
        }
    }
}

#[derive(Debug, Clone)]
enum TableStep {
    Decide { vcpus: u64, ram_mb: u64, disk_gb: u64, k: usize, claim: bool },
    Release { pick: usize },
    Usage { host: usize, vcpus: u64, ram_mb: u64 },
    Service { host: usize, up: bool, disabled: bool },
    Arch { host: usize, aarch64: bool },
}

fn table_step() -> impl Strategy<Value = TableStep> {
    prop_oneof![
        6 => (1u64..9, 1u64..17, 0u64..50, 0usize..6, any::<bool>())
            .prop_map(|(vcpus, ram, disk_gb, k, claim)| TableStep::Decide { vcpus, ram_mb: ram * 512, disk_gb, k, claim }),
        1 => any::<usize>().prop_map(|pick| TableStep::Release { pick }),
        1 => (any::<usize>(), 0u64..40, 0u64..40_000).prop_map(|(host, vcpus, ram_mb)| TableStep::Usage { host, vcpus, ram_mb }),
        1 => (any::<usize>(), any::<bool>(), any::<bool>()).prop_map(|(host, up, disabled)| TableStep::Service { host, up, disabled }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(host, aarch64)| TableStep::Arch { host, aarch64 }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// `select_table` over a host table returns exactly what `select_top` over the table's
    /// host states returns, for every built-in, drawing the same random numbers, while the
    /// table changes through claims, releases, usage refreshes and node updates.
    #[test]
    fn select_table_is_select_top_over_the_tables_hosts(
        steps in proptest::collection::vec(table_step(), 1..80),
        sizes in proptest::collection::vec((2u64..33, 4u64..33, 1u32..5), 1..40),
        seed in any::<u64>(),
        name in proptest::sample::select(BUILTIN.to_vec()),
        subset in 1usize..4,
        arch_image in any::<bool>(),
    ) {
        let hosts: Vec<HostState> = sizes
            .iter()
            .enumerate()
            .map(|(k, &(vcpus, ram_gb, ratio))| host(&format!("h{k}"), vcpus, ram_gb * 1024, ratio as f64))
            .collect();
        let mut table = crate::scheduler::HostTable::new(hosts);
        prop_assert_eq!(table.len(), sizes.len());
        prop_assert!(!table.is_empty());
        let config = SchedulerConfig { host_subset_size: subset, ..SchedulerConfig::default() };
        let mut fast = builtin(name, &config).unwrap();
        let mut reference = builtin(name, &config).unwrap();
        let img = if arch_image {
            Image { properties: [("hw_architecture".to_string(), "x86_64".to_string())].into(), ..image() }
        } else {
            image()
        };
        let mut live: Vec<(usize, Resources)> = Vec::new();
        let n = table.len();
        for (round, step) in steps.into_iter().enumerate() {
            match step {
                TableStep::Decide { vcpus, ram_mb, disk_gb, k, claim } => {
                    let f = flavor(vcpus, ram_mb, disk_gb);
                    let req = RequestView::new(&f, &img);
                    let mut a = SmallRng::seed_from_u64(seed ^ round as u64);
                    let mut b = SmallRng::seed_from_u64(seed ^ round as u64);
                    let got = fast.select_table(&table, &req, &mut a, k);
                    let expect = reference.select_top(table.hosts(), &req, &mut b, k);
                    prop_assert_eq!(&got, &expect, "{} round {}", name, round);
                    prop_assert_eq!(rand::RngCore::next_u64(&mut a), rand::RngCore::next_u64(&mut b), "same draws");
                    if let (true, Ok(order)) = (claim, got) {
                        if let Some(&i) = order.iter().find(|&&i| placement::fits(&provider(&table.hosts()[i]), &f.resources()).is_ok()) {
                            table.claim(i, &f.resources());
                            live.push((i, f.resources()));
                        }
                    }
                }
                TableStep::Release { pick } if !live.is_empty() => {
                    let (i, r) = live.swap_remove(pick % live.len());
                    table.release(i, &r);
                }
                TableStep::Release { .. } => {}
                TableStep::Usage { host, vcpus, ram_mb } => {
                    let i = host % n;
                    let h = &table.hosts()[i];
                    let used = Resources::new(vcpus, ram_mb, h.used.0[2]);
                    let inventories = h.inventories;
                    table.set_usage(i, inventories, used);
                    prop_assert_eq!(table.hosts()[i].used, used);
                    live.retain(|(j, _)| *j != i);
                }
                TableStep::Service { host, up, disabled } => {
                    table.update(host % n, |h| {
                        h.service_up = up;
                        h.service_disabled = disabled;
                    });
                }
                TableStep::Arch { host, aarch64 } => {
                    table.update(host % n, |h| {
                        let mut node = (*h.node).clone();
                        node.cpu_arch = if aarch64 { "aarch64" } else { "x86_64" }.into();
                        h.node = Arc::new(node);
                    });
                }
            }
        }
    }
}

/// A strategy from outside the tree: registered by name, found by `by_name`, listed by
/// `names` after the built-in ones; built-in, taken and malformed names refused.
#[test]
fn registered_strategies_are_found_by_name_and_bad_names_refused() {
    fn make(config: &SchedulerConfig) -> Box<dyn super::Strategy> {
        builtin("first-fit", config).expect("built in")
    }
    let config = SchedulerConfig::default();
    assert!(super::by_name("test-registered", &config).is_none());
    super::register("test-registered", make).unwrap();
    assert_eq!(super::by_name("test-registered", &config).map(|s| s.name().to_string()), Some("first-fit".into()));
    let names = super::names();
    assert_eq!(&names[..BUILTIN.len()], BUILTIN.map(String::from).as_slice());
    assert!(names.contains(&"test-registered".to_string()));
    for (name, why) in [
        ("spread", "is built in"),
        ("test-registered", "registered twice"),
        ("", "empty"),
        ("a,b", "comma"),
        ("a b", "space"),
    ] {
        let e = super::register(name, make).expect_err(name);
        assert!(e.contains(why), "{name}: {e}");
    }
}
