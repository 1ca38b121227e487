//! The libvirt hypervisor on libvirt's test driver (`test:///default`): define, start,
//! destroy, undefine, and libvirt errors mapped to reschedulable build failures.
#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;

use stackbed_core::model::{Flavor, Image, Instance};
use stackbed_core::scenario::{HostGroup, Scenario};
use stackbed_real::libvirt::{detect_accel, domain_xml, Accel, LibvirtHypervisor, DEFAULT_URI};
use stackbed_services::seams::{HvError, Hypervisor};
use virt::connect::Connect;

const SCENARIO: &str = r#"
[scenario]
name = "libvirt-test"

[topology]
[[topology.hosts]]
count = 1
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
runner = { kind = "constant", concurrency = 1, times = 1 }
flavors = { "m1.small" = 1.0 }
images = { "cirros" = 1.0 }
"#;

fn group() -> HostGroup {
    Scenario::parse("libvirt-test.toml", SCENARIO).unwrap().topology.hosts[0].clone()
}

fn instance(name: &str, vcpus: u64, ram_mb: u64) -> Instance {
    let flavor =
        Flavor { name: "f".into(), vcpus, ram_mb, disk_gb: 1, ephemeral_gb: 0, swap: 0, extra_specs: BTreeMap::new() };
    common::spawning_instance(name, name, flavor, "cirros", "compute-1")
}

fn image() -> Image {
    Image { name: "cirros".into(), size_mb: 16, disk_format: "qcow2".into(), properties: BTreeMap::new() }
}

#[test]
fn node_info_and_kind() {
    let hv = LibvirtHypervisor::connect(DEFAULT_URI, &group(), "compute-7").unwrap();
    let node = hv.node_info();
    assert_eq!(node.host, "compute-7");
    assert_eq!((node.vcpus, node.ram_mb, node.disk_gb), (8, 16384, 100));
    assert_eq!(hv.kind(), "test");
    // This machine's nested /dev/kvm cannot boot guests; detection must pick TCG unless
    // the CPU really advertises VMX/SVM.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flag =
        cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let want = if has_flag && std::path::Path::new("/dev/kvm").exists() { Accel::Kvm } else { Accel::Tcg };
    assert_eq!(detect_accel(), want);
}

#[test]
fn domain_xml_types() {
    let i = instance("server-x", 2, 4096);
    let t = domain_xml(&i, "test", "x86_64");
    assert!(t.contains("<domain type='test'>") && t.contains("<name>server-x</name>"), "{t}");
    assert!(t.contains("<memory unit='MiB'>4096</memory>") && t.contains("<vcpu>2</vcpu>"), "{t}");
    assert!(!t.contains("uuid"), "{t}");
    let q = domain_xml(&i, "qemu", "x86_64");
    assert!(q.contains("<domain type='qemu'>") && q.contains("machine='q35'"), "{q}");
    let k = domain_xml(&instance("a<b", 1, 512), "kvm", "x86_64");
    assert!(k.contains("<domain type='kvm'>") && k.contains("<name>a&lt;b</name>"), "{k}");
}

#[tokio::test]
async fn spawn_and_destroy_on_the_test_driver() {
    let hv = LibvirtHypervisor::connect(DEFAULT_URI, &group(), "compute-1").unwrap();
    let inst = instance("server-libvirt-spawn-destroy", 2, 2048);
    hv.allocate_network(&inst).await.unwrap();
    hv.block_device_mapping(&inst).await.unwrap();
    let phases = hv.spawn(&inst, &image()).await.unwrap();
    let names: Vec<&str> = phases.iter().map(|(p, _)| *p).collect();
    assert_eq!(names, ["define", "start"]);
    assert!(phases.iter().all(|(_, s)| *s >= 0.0));
    assert_eq!(hv.domains(), vec![inst.name.clone()]);

    // Ask libvirt itself through another connection: every test:///default connection of
    // a process shares one mock hypervisor, so it sees the domain defined and running.
    let conn = Connect::open(Some(DEFAULT_URI)).unwrap();
    let dom = conn.lookup_domain_by_name(&inst.name).unwrap();
    assert!(dom.is_active().unwrap());
    assert!(dom.is_persistent().unwrap());
    assert_eq!(dom.max_memory().unwrap(), 2048 * 1024);
    drop(dom);

    // A second spawn of the same name fails as a reschedulable error, leaving the first.
    match hv.spawn(&inst, &image()).await {
        Err(HvError::Reschedule(m)) => assert!(m.contains(&inst.name), "{m}"),
        other => panic!("expected a reschedule, got {other:?}"),
    }
    assert_eq!(hv.domains(), vec![inst.name.clone()]);

    hv.destroy(&inst).await.unwrap();
    assert!(hv.domains().is_empty());
    assert!(conn.lookup_domain_by_name(&inst.name).is_err());
    // Destroying a missing domain is fine.
    hv.destroy(&inst).await.unwrap();
    hv.deallocate_network(&inst).await.unwrap();
}

#[tokio::test]
async fn libvirt_errors_are_reschedulable_with_the_libvirt_message() {
    let hv = LibvirtHypervisor::connect(DEFAULT_URI, &group(), "compute-2").unwrap();
    // libvirt refuses domain names containing '/'.
    let bad = instance("server/bad", 1, 512);
    match hv.spawn(&bad, &image()).await {
        Err(HvError::Reschedule(m)) => assert!(m.starts_with("libvirt define server/bad:") && m.contains('/'), "{m}"),
        other => panic!("expected a reschedule, got {other:?}"),
    }
    assert!(hv.domains().is_empty());
}

#[tokio::test]
async fn destroy_all_tears_down_every_guest() {
    let hv = LibvirtHypervisor::connect(DEFAULT_URI, &group(), "compute-3").unwrap();
    for i in 0..3 {
        hv.spawn(&instance(&format!("server-teardown-{i}"), 1, 256), &image()).await.unwrap();
    }
    assert_eq!(hv.domains().len(), 3);
    hv.destroy_all().await.unwrap();
    assert!(hv.domains().is_empty());
}

#[test]
fn bad_uri_is_an_error_not_a_panic() {
    let e = LibvirtHypervisor::connect("nosuchdriver:///x", &group(), "compute-1").err().unwrap();
    assert!(e.contains("nosuchdriver"), "{e}");
}

#[tokio::test]
async fn private_test_hypervisors_are_independent() {
    let a = LibvirtHypervisor::connect_private_test(&group(), "compute-1").unwrap();
    let b = LibvirtHypervisor::connect_private_test(&group(), "compute-2").unwrap();
    assert_eq!(a.kind(), "test");
    assert!(a.uri().starts_with("test:///") && a.uri() != DEFAULT_URI, "{}", a.uri());
    // The node file was only needed while opening.
    assert!(!std::path::Path::new(&a.uri()["test://".len()..]).exists());
    let inst = instance("server-same-name-on-two-hosts", 1, 1024);
    a.spawn(&inst, &image()).await.unwrap();
    // The same name on another host is another guest.
    b.spawn(&inst, &image()).await.unwrap();
    // Not visible through the shared default driver either.
    let conn = Connect::open(Some(DEFAULT_URI)).unwrap();
    assert!(conn.lookup_domain_by_name(&inst.name).is_err());
    a.destroy(&inst).await.unwrap();
    assert_eq!(b.domains(), vec![inst.name.clone()]);
    b.destroy(&inst).await.unwrap();
    assert!(b.domains().is_empty());
}

#[test]
fn test_node_xml_comes_from_the_host_group() {
    let x = stackbed_real::libvirt::test_node_xml(&group());
    assert!(
        x.contains("<active>8</active>")
            && x.contains("<memory>16777216</memory>")
            && x.contains("<model>x86_64</model>"),
        "{x}"
    );
}
