//! `fewest-instances`: a scheduling strategy from outside stackbed's tree. The hosts that
//! pass the scenario's filters, the one running the fewest instances first (ties: the most
//! free RAM, then placement's order). Registered under its name, then stackbed's command
//! line runs with it: `run`, `compare`, `sweep` and `explain` know it as they know `spread`.
//!
//!   cargo run --release -- compare scenarios/quickstart.toml --strategies spread,fewest-instances
//!
//! (with `--config "build.rustflags=['--cfg','madsim']"` for the simulator build, as
//! `cargo sim` has it; see the README).

use rand::RngCore;
use stackbed_cli::{register_strategy, Strategy};
use stackbed_core::model::ResourceClass;
use stackbed_core::scheduler::{HostState, NoValidHost, RequestView, SchedulerConfig, Workspace};

struct FewestInstances {
    config: SchedulerConfig,
    workspace: Workspace,
}

impl Strategy for FewestInstances {
    fn name(&self) -> &str {
        "fewest-instances"
    }

    fn select(
        &mut self,
        hosts: &[HostState],
        req: &RequestView<'_>,
        _rng: &mut dyn RngCore,
    ) -> Result<Vec<usize>, NoValidHost> {
        // Placement's candidate check and the configured filters, as every built-in does.
        let mut order = self.workspace.filter(hosts, req, &self.config)?.to_vec();
        let free_ram = |h: &HostState| {
            let inv = h.inventories[ResourceClass::MemoryMb as usize];
            inv.capacity().saturating_sub(h.used.get(ResourceClass::MemoryMb))
        };
        order.sort_by_key(|&i| (hosts[i].node.num_instances, std::cmp::Reverse(free_ram(&hosts[i])), i));
        Ok(order)
    }
}

fn fewest_instances(config: &SchedulerConfig) -> Box<dyn Strategy> {
    Box::new(FewestInstances { config: config.clone(), workspace: Workspace::new() })
}

fn main() -> std::process::ExitCode {
    register_strategy("fewest-instances", fewest_instances).expect("fewest-instances is a new name");
    stackbed_cli::main()
}
