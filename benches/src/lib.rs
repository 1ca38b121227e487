//! Fixtures for the criterion benchmarks in `benches/benches/`.

use std::collections::BTreeMap;
use std::sync::Arc;

use stackbed_core::model::{ComputeNode, Flavor, Image, Inventory, Provider, Resources};
use stackbed_core::scheduler::HostState;

/// `n` hosts of 64 vCPU and 256 GiB with varied usage, as placement and the compute nodes
/// would describe them.
pub fn hosts(n: usize) -> (Vec<Provider>, Vec<HostState>) {
    let mut providers = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    for i in 0..n {
        let inventories = [Inventory::new(64, 0, 4.0), Inventory::new(262_144, 0, 1.0), Inventory::new(4000, 0, 1.0)];
        let used = Resources::new((i % 200) as u64, ((i * 2048) % 200_000) as u64, ((i * 20) % 3000) as u64);
        let node = Arc::new(ComputeNode {
            host: format!("compute-{i}"),
            vcpus: 64,
            ram_mb: 262_144,
            disk_gb: 4000,
            hypervisor_type: "kvm".into(),
            hypervisor_version: 9_000_000,
            cpu_arch: "x86_64".into(),
            vm_modes: vec!["hvm".into()],
            num_instances: (i % 40) as u64,
            num_io_ops: (i % 5) as u64,
            stats: BTreeMap::new(),
            supported_instances: None,
            cpu_info: None,
            metrics: BTreeMap::new(),
        });
        providers.push(Provider { host: node.host.clone(), inventories, used });
        states.push(HostState::new(node, inventories, used));
    }
    (providers, states)
}

pub fn flavor() -> Flavor {
    Flavor {
        name: "m1.medium".into(),
        vcpus: 2,
        ram_mb: 4096,
        disk_gb: 40,
        ephemeral_gb: 0,
        swap: 0,
        extra_specs: BTreeMap::new(),
    }
}

pub fn image() -> Image {
    Image {
        name: "cirros".into(),
        size_mb: 21,
        disk_format: "qcow2".into(),
        properties: [("hw_architecture".to_string(), "x86_64".to_string())].into_iter().collect(),
    }
}
