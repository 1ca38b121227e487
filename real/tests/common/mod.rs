//! Fixtures shared by the real build's integration tests.

use stackbed_core::model::{Flavor, Instance};
use stackbed_core::states::{PowerState, TaskState, VmState};

/// An instance as the compute holds it when the spawn starts: building, task_state spawning,
/// placed on `host`.
pub fn spawning_instance(uuid: &str, name: &str, flavor: Flavor, image: &str, host: &str) -> Instance {
    Instance {
        uuid: uuid.into(),
        name: name.into(),
        project: "demo".into(),
        user: "demo-user".into(),
        flavor,
        image: image.into(),
        vm_state: VmState::Building,
        task_state: Some(TaskState::Spawning),
        power_state: PowerState::NoState,
        host: Some(host.into()),
        created_at_ms: 0,
        launched_at_ms: None,
        deleted: false,
        fault: None,
        attempts: 1,
    }
}
