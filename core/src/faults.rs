//! Fault schedules: what a scenario's `[[faults]]`, `[random_faults]` and `[phases]` come to
//! for one seed. The scenario module parses and resolves them (ranges drawn per seed,
//! patterns expanded to node names); the simulator executes the result against its node
//! registry. Everything here is data: the schedule is printed before a run and written to
//! report.json, so a failing seed names exactly the faults it ran.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::Millis;
use crate::scenario::Scenario;
use crate::states::TaskState;

/// The node groups every deployment has; a fault target names a group, a node, or a
/// pattern over node names (see [`FaultTarget`]).
pub const BROKER: &str = "broker";
pub const DATABASE: &str = "db";
/// HAProxy in front of a Galera cluster (`[topology.db] nodes` above 1).
pub const PROXY: &str = "haproxy";
pub const KEYSTONE: &str = "keystone";
pub const PLACEMENT: &str = "placement";
pub const NOVA_API: &str = "nova-api";
pub const NOVA_CONDUCTOR: &str = "nova-conductor";
pub const NOVA_SCHEDULER: &str = "nova-scheduler";
pub const COMPUTE: &str = "compute";
/// The control services, whose workers run on the controllers (`[topology.controller]`).
pub const CONTROL_GROUPS: [&str; 5] = [KEYSTONE, PLACEMENT, NOVA_CONDUCTOR, NOVA_SCHEDULER, NOVA_API];
/// The Rally-style client: never a fault target (the workload must survive every fault).
pub const CLIENT: &str = "rally";

/// One simulated node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeName {
    /// Unique: `broker`, `db`, `nova-scheduler-2`, `compute-17`.
    pub name: String,
    /// The group it belongs to: one of the constants above.
    pub group: String,
}

/// Every node a scenario's deployment has, in a fixed order: infrastructure, control
/// services by worker, then compute hosts in topology order. Workers are numbered from 1
/// (`nova-scheduler-1`); a compute node is named after its host.
pub fn nodes(scenario: &Scenario) -> Vec<NodeName> {
    let node = |name: String, group: &str| NodeName { name, group: group.to_string() };
    let mut out = vec![node(BROKER.into(), BROKER)];
    let db = &scenario.topology.db;
    if db.clustered() {
        out.extend((1..=db.nodes).map(|i| node(format!("{DATABASE}-{i}"), DATABASE)));
        out.push(node(PROXY.into(), PROXY));
    } else {
        out.push(node(DATABASE.into(), DATABASE));
    }
    let w = scenario.topology.workers();
    for (group, count) in [
        (KEYSTONE, w.keystone),
        (PLACEMENT, w.placement),
        (NOVA_CONDUCTOR, w.conductor),
        (NOVA_SCHEDULER, w.scheduler),
        (NOVA_API, w.api),
    ] {
        for i in 1..=count {
            out.push(node(format!("{group}-{i}"), group));
        }
    }
    for (host, _) in scenario.hosts() {
        out.push(node(host, COMPUTE));
    }
    out
}

/// When a fault starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "when", rename_all = "snake_case")]
pub enum Trigger {
    /// At a simulated instant, from the start of the run.
    At { at_ms: Millis },
    /// When the `nth` instance (counting from 1) reaches `state`, as the database commits it;
    /// the target `compute:random` then means that instance's host.
    TaskState { state: TaskState, nth: u32 },
}

/// Which way a partition cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Neither side hears the other.
    Both,
    /// `targets` cannot send to `other` (`other` still reaches `targets`).
    OneWay,
}

/// What a fault does to its targets. Every action but `Restart` and `Resume` lasts until
/// the fault's duration ends or the heal phase starts, whichever is first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultAction {
    /// The process dies (SIGKILL); started again when the fault ends.
    Kill,
    /// Killed and started again at once (a service restart).
    Restart,
    /// Not scheduled (SIGSTOP) until the fault ends.
    Pause,
    /// Resumes a paused node at once.
    Resume,
    /// A compute host loses power: its processes and its guests are gone; it boots again
    /// (empty of guests) when the fault ends.
    PowerOff,
    /// The network between `targets` and `other` drops everything (TCP holds, nothing resets).
    Partition { other: Vec<String>, direction: Direction },
    /// Everything to and from `targets` is held (a clogged link).
    Clog,
    /// Messages from `targets` are lost at `rate` (0..1).
    Drop { rate: f64 },
    /// Messages from `targets` are delayed by `by_ms` at `rate`.
    Delay { rate: f64, by_ms: Millis },
    /// Messages from `targets` are delivered twice at `rate`.
    Duplicate { rate: f64 },
    /// The targets' clocks read `offset_ms` off and drift by `drift_ppm` from the start.
    ClockSkew { offset_ms: i64, drift_ppm: i64 },
    /// The targets take `multiplier` times as long for everything they do.
    Slow { multiplier: f64 },
    /// The targets' hypervisors fail spawns at `rate` (reschedulable errors).
    HypervisorErrors { rate: f64 },
}

impl FaultAction {
    pub fn name(&self) -> &'static str {
        match self {
            FaultAction::Kill => "kill",
            FaultAction::Restart => "restart",
            FaultAction::Pause => "pause",
            FaultAction::Resume => "resume",
            FaultAction::PowerOff => "power_off",
            FaultAction::Partition { .. } => "partition",
            FaultAction::Clog => "clog",
            FaultAction::Drop { .. } => "drop",
            FaultAction::Delay { .. } => "delay",
            FaultAction::Duplicate { .. } => "duplicate",
            FaultAction::ClockSkew { .. } => "clock_skew",
            FaultAction::Slow { .. } => "slow",
            FaultAction::HypervisorErrors { .. } => "hypervisor_errors",
        }
    }
}

/// One fault, resolved for one seed: concrete nodes, instants and values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedFault {
    /// Where it came from: `faults[2]`, or `random_faults.kill_per_minute` (the rate that drew it).
    pub source: String,
    pub trigger: Trigger,
    /// Node names ([`NodeName::name`]). Empty with a `TaskState` trigger and a
    /// `compute:random` target: the instance's host, known when the trigger fires.
    pub targets: Vec<String>,
    pub action: FaultAction,
    /// How long it lasts; `None`: until the heal phase (or the end of the run).
    pub duration_ms: Option<Millis>,
}

/// The phases of a run with faults: chaos for a while, then every fault healed and every
/// node back, then the liveness bound for every request to become terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phases {
    /// How long faults may start; `None`: for the whole workload.
    pub chaos_ms: Option<Millis>,
    /// Whether the heal phase clears every fault when chaos ends (and when the workload has
    /// been submitted, if chaos has no length).
    pub heal: bool,
}

impl Default for Phases {
    fn default() -> Self {
        Phases { chaos_ms: None, heal: true }
    }
}

/// Everything one seed's run will do to its world.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FaultSchedule {
    pub faults: Vec<ResolvedFault>,
    pub phases: Phases,
}

impl FaultSchedule {
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }
}

/// Exact seconds (`60s`, `0.25s`, `50.812s`): the printed schedule is the one that runs.
fn secs(ms: Millis) -> String {
    format!("{}s", ms as f64 / 1000.0)
}

impl fmt::Display for ResolvedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.trigger {
            Trigger::At { at_ms } => write!(f, "at {}", secs(*at_ms))?,
            Trigger::TaskState { state, nth } => write!(f, "when instance #{nth} reaches {state}")?,
        }
        write!(f, " {}", self.action.name())?;
        if self.targets.is_empty() {
            write!(f, " its host")?;
        } else {
            write!(f, " {}", self.targets.join(","))?;
        }
        match &self.action {
            FaultAction::Partition { other, direction } => {
                let arrow = if *direction == Direction::Both { "<->" } else { "->" };
                write!(f, " {arrow} {}", other.join(","))?
            }
            FaultAction::Drop { rate } | FaultAction::Duplicate { rate } | FaultAction::HypervisorErrors { rate } => {
                write!(f, " rate {rate}")?
            }
            FaultAction::Delay { rate, by_ms } => write!(f, " rate {rate} by {}", secs(*by_ms))?,
            FaultAction::ClockSkew { offset_ms, drift_ppm } => write!(f, " offset {offset_ms}ms drift {drift_ppm}ppm")?,
            FaultAction::Slow { multiplier } => write!(f, " x{multiplier}")?,
            _ => {}
        }
        if let Some(d) = self.duration_ms {
            write!(f, " for {}", secs(d))?;
        }
        write!(f, " ({})", self.source)
    }
}

impl fmt::Display for FaultSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.faults.is_empty() {
            return write!(f, "faults: none");
        }
        write!(f, "faults: {}", self.faults.len())?;
        match self.phases.chaos_ms {
            Some(c) => write!(f, " | chaos {}", secs(c))?,
            None => write!(f, " | chaos for the workload")?,
        }
        write!(f, " | heal {}", if self.phases.heal { "all" } else { "none" })?;
        for fault in &self.faults {
            write!(f, "\n  {fault}")?;
        }
        Ok(())
    }
}
