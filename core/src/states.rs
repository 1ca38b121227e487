//! nova's instance states and the transitions the boot and delete flows may make.
//!
//! Every state write in the services is a compare-and-swap on the expected task_state
//! (nova's `expected_task_state`); this module says which (vm_state, task_state) moves are
//! legal at all, and the invariant checker rejects any other.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Active,
    Building,
    Paused,
    Suspended,
    Stopped,
    Rescued,
    Resized,
    #[serde(rename = "soft-delete")]
    SoftDeleted,
    Deleted,
    Error,
    Shelved,
    ShelvedOffloaded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Scheduling,
    Networking,
    BlockDeviceMapping,
    Spawning,
    Deleting,
}

/// nova's power_state codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    NoState = 0,
    Running = 1,
    Paused = 3,
    Shutdown = 4,
    Crashed = 6,
    Suspended = 7,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        write!(f, "{}", s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        write!(f, "{}", s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// A (vm_state, task_state) pair.
pub type StatePair = (VmState, Option<TaskState>);

pub fn show(state: StatePair) -> String {
    match state.1 {
        Some(t) => format!("({}, {})", state.0, t),
        None => format!("({}, None)", state.0),
    }
}

/// The states an instance row may be created in: (building, scheduling) by the conductor,
/// or (error, None) when it is buried after a scheduling failure.
pub fn legal_initial(state: StatePair) -> bool {
    matches!(state, (VmState::Building, Some(TaskState::Scheduling)) | (VmState::Error, None))
}

/// Whether nova's boot and delete flows can move an instance from `from` to `to`.
pub fn legal_transition(from: StatePair, to: StatePair) -> bool {
    use TaskState::*;
    use VmState::*;
    if from == to {
        return true;
    }
    match (from, to) {
        // Compute picks the build up: _do_build_and_run_instance saves (building, None)
        // expecting task_state in (scheduling, None).
        ((Building, Some(Scheduling)), (Building, None)) => true,
        // _build_and_run_instance: networking, block_device_mapping, spawning, active.
        ((Building, None), (Building, Some(Networking))) => true,
        ((Building, Some(Networking)), (Building, Some(BlockDeviceMapping))) => true,
        ((Building, Some(BlockDeviceMapping)), (Building, Some(Spawning))) => true,
        ((Building, Some(Spawning)), (Active, None)) => true,
        // RescheduledException: back to scheduling from any build step.
        ((Building, Some(Networking | BlockDeviceMapping | Spawning) | None), (Building, Some(Scheduling))) => true,
        // Any failure while building ends in ERROR with no task.
        ((Building, _), (Error, None)) => true,
        // The power-state sync finds an ACTIVE instance's guest gone (the host lost power)
        // and stops it, as `_sync_instance_power_state` does.
        ((Active, None), (Stopped, None)) => true,
        // Delete: any state except an ongoing delete may start one; it ends in deleted.
        ((_, t), (v, Some(Deleting))) if t != Some(Deleting) && v == from.0 => true,
        ((_, Some(Deleting)), (Deleted, None)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;
    use VmState::*;

    #[test]
    fn boot_path_is_legal_step_by_step() {
        let path = [
            (Building, Some(Scheduling)),
            (Building, None),
            (Building, Some(Networking)),
            (Building, Some(BlockDeviceMapping)),
            (Building, Some(Spawning)),
            (Active, None),
        ];
        assert!(legal_initial(path[0]));
        for pair in path.windows(2) {
            assert!(legal_transition(pair[0], pair[1]), "{:?}", pair);
        }
    }

    #[test]
    fn skipping_steps_or_going_back_is_illegal() {
        assert!(!legal_transition((Building, Some(Scheduling)), (Active, None)));
        assert!(!legal_transition((Building, None), (Building, Some(Spawning))));
        assert!(!legal_transition((Active, None), (Building, Some(Scheduling))));
        assert!(!legal_transition((Error, None), (Active, None)));
        assert!(!legal_transition((Deleted, None), (Active, None)));
        assert!(!legal_initial((Active, None)));
    }

    #[test]
    fn reschedule_error_and_delete_are_legal() {
        assert!(legal_transition((Building, Some(Spawning)), (Building, Some(Scheduling))));
        assert!(legal_transition((Building, Some(Networking)), (Error, None)));
        assert!(legal_transition((Active, None), (Active, Some(Deleting))));
        assert!(legal_transition((Error, None), (Error, Some(Deleting))));
        assert!(legal_transition((Active, Some(Deleting)), (Deleted, None)));
        assert!(!legal_transition((Active, Some(Deleting)), (Error, Some(Deleting))));
        assert!(legal_transition((Active, None), (Stopped, None)), "power sync after a power-off");
        assert!(!legal_transition((Stopped, None), (Active, None)), "nothing starts a stopped guest");
    }
}
