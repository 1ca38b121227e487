//! The fault schema's input side (`[[faults]]`, `[random_faults]`, `[phases]`), its checks,
//! and its resolution for one seed into a [`FaultSchedule`] (`crate::faults`).
//!
//! Resolution is pure: every `[[faults]]` entry and every `[random_faults]` rate draws from
//! its own RNG stream, seeded from the run seed and the entry's dotted name (`faults[2]`,
//! `random_faults.kill_per_minute`), so adding a fault never changes what the others draw,
//! and nothing else in the run (services, network) shares these streams.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{parse_duration, Action, AggregateDecl, Dur, Runner, Scenario};
use crate::faults::{self, Direction, FaultAction, FaultSchedule, NodeName, Phases, ResolvedFault, Trigger};
use crate::states::TaskState;

/// The most faults `[random_faults]` may expect to start in one chaos phase (a limit on
/// everything: a typo like `kill_per_minute = 500` should not make a million faults).
pub const MAX_RANDOM_FAULTS: f64 = 10_000.0;

/// A value, or a range `[low, high]` drawn per seed (uniformly, both ends included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ranged<T> {
    One(T),
    Range(T, T),
}

/// What a [`Ranged`] can hold: how to say it in an error, and how to draw between two.
pub trait RangeValue: Copy + PartialOrd + fmt::Debug + Serialize + DeserializeOwned {
    const EXPECTING: &'static str;
    fn between(low: Self, high: Self, rng: &mut SmallRng) -> Self;
}

impl RangeValue for Dur {
    const EXPECTING: &'static str = "a duration like \"10s\"";
    fn between(low: Self, high: Self, rng: &mut SmallRng) -> Self {
        Dur(std::time::Duration::from_millis(rng.gen_range(low.ms()..=high.ms())))
    }
}

impl RangeValue for Offset {
    const EXPECTING: &'static str = "a duration like \"-500ms\" or \"2s\"";
    fn between(low: Self, high: Self, rng: &mut SmallRng) -> Self {
        Offset(rng.gen_range(low.0..=high.0))
    }
}

impl RangeValue for f64 {
    const EXPECTING: &'static str = "a number";
    fn between(low: Self, high: Self, rng: &mut SmallRng) -> Self {
        if low == high {
            low
        } else {
            // Four decimals: the printed schedule is then exactly what runs.
            let x = low + (high - low) * rng.gen::<f64>();
            ((x * 1e4).round() / 1e4).clamp(low, high)
        }
    }
}

impl RangeValue for i64 {
    const EXPECTING: &'static str = "a whole number";
    fn between(low: Self, high: Self, rng: &mut SmallRng) -> Self {
        rng.gen_range(low..=high)
    }
}

impl<T: RangeValue> Ranged<T> {
    pub fn low(&self) -> T {
        match *self {
            Ranged::One(v) | Ranged::Range(v, _) => v,
        }
    }
    pub fn high(&self) -> T {
        match *self {
            Ranged::One(v) | Ranged::Range(_, v) => v,
        }
    }
    /// The value for this seed.
    pub fn draw(&self, rng: &mut SmallRng) -> T {
        match *self {
            Ranged::One(v) => v,
            Ranged::Range(low, high) => T::between(low, high, rng),
        }
    }
    /// `Err` for an empty range (`[high, low]`).
    fn check(&self) -> Result<(), String> {
        match self {
            Ranged::Range(low, high) if !matches!(low.partial_cmp(high), Some(Ordering::Less | Ordering::Equal)) => {
                Err(format!("empty range: [{low:?}, {high:?}] (write [low, high] with low <= high)"))
            }
            _ => Ok(()),
        }
    }
    /// `Err` unless both ends satisfy `ok`.
    fn each(&self, ok: impl Fn(T) -> bool, why: &str) -> Result<(), String> {
        self.check()?;
        if ok(self.low()) && ok(self.high()) {
            Ok(())
        } else {
            Err(format!("{why}, got {self:?}"))
        }
    }
}

impl<'de, T: RangeValue> Deserialize<'de> for Ranged<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape<T> {
            One(T),
            Many(Vec<T>),
        }
        match Shape::<T>::deserialize(d) {
            Ok(Shape::One(v)) => Ok(Ranged::One(v)),
            Ok(Shape::Many(v)) if v.len() == 2 => Ok(Ranged::Range(v[0], v[1])),
            Ok(Shape::Many(v)) => {
                Err(serde::de::Error::custom(format!("a range is two values [low, high], got {}", v.len())))
            }
            Err(_) => {
                Err(serde::de::Error::custom(format!("expected {} or a range [low, high] of them", T::EXPECTING)))
            }
        }
    }
}

impl<T: RangeValue> Serialize for Ranged<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Ranged::One(v) => v.serialize(s),
            Ranged::Range(low, high) => [low, high].serialize(s),
        }
    }
}

/// A signed duration in milliseconds (a clock offset): `"-500ms"`, `"2s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Offset(pub i64);

impl<'de> Deserialize<'de> for Offset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (sign, rest) = match s.trim().strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, s.trim().trim_start_matches('+')),
        };
        parse_duration(rest).map(|d| Offset(sign * d.as_millis() as i64)).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Offset {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0))
    }
}

/// What a `[[faults]]` entry does (the `kind` key); see [`FaultAction`] for each meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Kill,
    Restart,
    Pause,
    Resume,
    PowerOff,
    Partition,
    Clog,
    Drop,
    Delay,
    Duplicate,
    ClockSkew,
    Slow,
    HypervisorErrors,
}

impl FaultKind {
    /// The value keys this kind takes; every other value key is an error.
    fn values(self) -> &'static [&'static str] {
        match self {
            FaultKind::Drop | FaultKind::Duplicate | FaultKind::HypervisorErrors => &["rate"],
            FaultKind::Delay => &["rate", "by"],
            FaultKind::ClockSkew => &["offset", "drift_ppm"],
            FaultKind::Slow => &["multiplier"],
            _ => &[],
        }
    }
    /// Kinds that happen at once and take no `duration`.
    fn instant(self) -> bool {
        matches!(self, FaultKind::Restart | FaultKind::Resume)
    }
    /// Kinds that only a compute host can suffer.
    fn compute_only(self) -> bool {
        matches!(self, FaultKind::PowerOff | FaultKind::HypervisorErrors)
    }
    fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }
}

/// `[[faults]]`: one scheduled fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDecl {
    pub kind: FaultKind,
    /// A node (`nova-scheduler-2`), a group (`broker`, `db`, `keystone`, `placement`,
    /// `nova-api`, `nova-conductor`, `nova-scheduler`, `compute`), a pattern over node names
    /// (`compute-*`, `compute-[1-10]`), or any of those with `:random`: one of its nodes,
    /// drawn per seed.
    pub target: String,
    /// A partition's other side (same syntax as `target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<String>,
    /// A partition's direction: `both` (default) or `one_way` (`target` cannot reach `other`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// When it starts, from the start of the run: `"60s"` or `["30s", "90s"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Ranged<Dur>>,
    /// Or: when the `nth` instance (default 1) reaches this task_state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub during: Option<TaskState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nth: Option<u32>,
    /// How long it lasts (then killed nodes restart, paused ones resume, powered-off hosts
    /// boot, partitions heal, ...); unset: until the heal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Ranged<Dur>>,
    /// drop, delay, duplicate, hypervisor_errors: the fraction of messages (spawns) hit, 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Ranged<f64>>,
    /// delay: by how much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Ranged<Dur>>,
    /// clock_skew: the clock's offset (`"-2s"`) and drift in parts per million.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<Ranged<Offset>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_ppm: Option<Ranged<i64>>,
    /// slow: how many times longer everything takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<Ranged<f64>>,
}

/// `[random_faults]`: faults drawn per seed in the chaos phase (FoundationDB's buggify):
/// events at a rate per minute (a Poisson process, each on one node of `targets` drawn per
/// event, lasting `duration`), and message faults at a rate applied to every target for the
/// whole chaos phase. Needs `[phases] chaos`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomFaults {
    /// The nodes random faults hit: groups, names or patterns (as `target`, without `:random`).
    pub targets: Vec<String>,
    /// How long each event lasts.
    #[serde(default = "default_random_duration")]
    pub duration: Ranged<Dur>,
    #[serde(default)]
    pub kill_per_minute: f64,
    #[serde(default)]
    pub restart_per_minute: f64,
    #[serde(default)]
    pub pause_per_minute: f64,
    /// Compute targets only.
    #[serde(default)]
    pub power_off_per_minute: f64,
    /// One target cut off, both ways, from every other target.
    #[serde(default)]
    pub partition_per_minute: f64,
    #[serde(default)]
    pub clog_per_minute: f64,
    /// One target's clock set off by `clock_offset`.
    #[serde(default)]
    pub clock_skew_per_minute: f64,
    #[serde(default = "default_clock_offset")]
    pub clock_offset: Ranged<Offset>,
    /// One target slowed by `slow_multiplier`.
    #[serde(default)]
    pub slow_per_minute: f64,
    #[serde(default = "default_slow_multiplier")]
    pub slow_multiplier: Ranged<f64>,
    /// Fractions (0..1) of every target's messages dropped, duplicated, delayed by
    /// `delay_by`; of compute targets' spawns failed.
    #[serde(default)]
    pub drop_rate: f64,
    #[serde(default)]
    pub duplicate_rate: f64,
    #[serde(default)]
    pub delay_rate: f64,
    #[serde(default = "default_delay_by")]
    pub delay_by: Ranged<Dur>,
    #[serde(default)]
    pub hypervisor_error_rate: f64,
}

fn default_random_duration() -> Ranged<Dur> {
    Ranged::Range(Dur::secs(10), Dur::secs(60))
}
fn default_clock_offset() -> Ranged<Offset> {
    Ranged::Range(Offset(-1000), Offset(1000))
}
fn default_slow_multiplier() -> Ranged<f64> {
    Ranged::Range(2.0, 10.0)
}
fn default_delay_by() -> Ranged<Dur> {
    Ranged::Range(Dur(std::time::Duration::from_millis(50)), Dur(std::time::Duration::from_millis(500)))
}

impl RandomFaults {
    /// The event kinds with their rates per minute, in the order they are drawn.
    fn events(&self) -> [(&'static str, FaultKind, f64); 8] {
        [
            ("kill_per_minute", FaultKind::Kill, self.kill_per_minute),
            ("restart_per_minute", FaultKind::Restart, self.restart_per_minute),
            ("pause_per_minute", FaultKind::Pause, self.pause_per_minute),
            ("power_off_per_minute", FaultKind::PowerOff, self.power_off_per_minute),
            ("partition_per_minute", FaultKind::Partition, self.partition_per_minute),
            ("clog_per_minute", FaultKind::Clog, self.clog_per_minute),
            ("clock_skew_per_minute", FaultKind::ClockSkew, self.clock_skew_per_minute),
            ("slow_per_minute", FaultKind::Slow, self.slow_per_minute),
        ]
    }
    /// The message faults with their rates, in the order they are drawn.
    fn message_rates(&self) -> [(&'static str, FaultKind, f64); 4] {
        [
            ("drop_rate", FaultKind::Drop, self.drop_rate),
            ("duplicate_rate", FaultKind::Duplicate, self.duplicate_rate),
            ("delay_rate", FaultKind::Delay, self.delay_rate),
            ("hypervisor_error_rate", FaultKind::HypervisorErrors, self.hypervisor_error_rate),
        ]
    }
}

/// `[phases]`: chaos (faults may start) for `chaos`, then heal, then the liveness bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhasesDecl {
    /// How long faults may start; unset: for the whole workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<Dur>,
    /// `all` (default): when chaos ends every fault is cleared and every node is back;
    /// `none`: faults run their own durations.
    #[serde(default)]
    pub heal: Heal,
    /// Every accepted request must be terminal within this bound. Wins over
    /// `workload.liveness_bound` when both are given (`Scenario::parse` copies it there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_bound: Option<Dur>,
}

impl PhasesDecl {
    pub fn is_default(&self) -> bool {
        *self == PhasesDecl::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Heal {
    #[default]
    All,
    None,
}

/// The RNG stream of one fault source: the seed and a fixed label, nothing else.
fn stream(seed: u64, label: &str) -> SmallRng {
    // FNV-1a over the label: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "stackbed.faults/".bytes().chain(label.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    SmallRng::seed_from_u64(seed ^ h)
}

/// A target as written, with its nodes.
struct Selection<'a> {
    nodes: Vec<&'a NodeName>,
    random: bool,
    /// `compute:random`: with a task_state trigger, the instance's host.
    any_compute: bool,
}

fn select<'a>(all: &'a [NodeName], text: &str) -> Result<Selection<'a>, String> {
    let (base, random) = match text.strip_suffix(":random") {
        Some(base) => (base, true),
        None => (text, false),
    };
    if base == faults::CLIENT {
        return Err(format!(
            "`{}` is the Rally client: never a fault target (the workload must survive every fault)",
            faults::CLIENT
        ));
    }
    let nodes: Vec<&NodeName> =
        all.iter().filter(|n| n.group == base || AggregateDecl::selects(base, &n.name)).collect();
    if nodes.is_empty() {
        let mut groups: Vec<&str> = all.iter().map(|n| n.group.as_str()).collect();
        groups.dedup();
        return Err(format!(
            "`{text}` names no node: write a group ({}), a node like `{}`, a pattern like \"compute-*\" or \"compute-[1-8]\", or any of them with \":random\"",
            groups.join(", "),
            all.iter().find(|n| n.name != n.group).map_or("compute-1", |n| n.name.as_str())
        ));
    }
    Ok(Selection { nodes, random, any_compute: random && base == faults::COMPUTE })
}

fn pick<'a>(nodes: &[&'a NodeName], rng: &mut SmallRng) -> &'a NodeName {
    nodes[rng.gen_range(0..nodes.len())]
}

type FieldError = (String, String);

impl Scenario {
    /// The run's total requests as far as the scenario says (a trace's once loaded).
    fn requests(&self) -> Option<u64> {
        match self.workload.runner {
            Runner::Trace { .. } if self.trace.is_empty() => None,
            _ => Some(u64::from(self.workload.runner.times(&self.trace)) * u64::from(self.workload.passes)),
        }
    }

    /// The task_states a boot of this workload reaches.
    fn reachable_task_states(&self) -> Vec<TaskState> {
        let mut states =
            vec![TaskState::Scheduling, TaskState::Networking, TaskState::BlockDeviceMapping, TaskState::Spawning];
        if self.workload.action == Action::BootAndDelete
            || matches!(self.workload.runner, Runner::Trace { .. })
            || self.workload.passes > 1
        {
            states.push(TaskState::Deleting);
        }
        states
    }

    /// `[[faults]]`, `[random_faults]` and `[phases]`: what serde cannot check.
    pub(super) fn validate_faults(&self) -> Result<(), FieldError> {
        let p = &self.phases;
        if p.chaos.is_some_and(|c| c.0.is_zero()) {
            return Err(("phases.chaos".into(), "must be above 0 (leave it out for the whole workload)".into()));
        }
        if p.liveness_bound.is_some_and(|b| b.0.is_zero()) {
            return Err(("phases.liveness_bound".into(), "must be above 0".into()));
        }
        let all = faults::nodes(self);
        for (i, f) in self.faults.iter().enumerate() {
            self.validate_fault(&all, i, f)?;
        }
        if let Some(r) = &self.random_faults {
            validate_random(&all, r, p.chaos)?;
        }
        // The checks above should leave nothing for resolution to refuse; if they missed a
        // case, the file is refused here rather than the run.
        self.fault_schedule(self.scenario.seeds.start).map_err(|m| ("faults".to_string(), m))?;
        Ok(())
    }

    fn validate_fault(&self, all: &[NodeName], i: usize, f: &FaultDecl) -> Result<(), FieldError> {
        let field = |key: &str| format!("faults.{i}.{key}");
        let err = |key: &str, message: String| Err((field(key), message));
        let kind = f.kind.name();
        let target = select(all, &f.target).map_err(|m| (field("target"), m))?;
        if f.kind.compute_only() {
            if let Some(n) = target.nodes.iter().find(|n| n.group != faults::COMPUTE) {
                return err("target", format!("{kind} hits compute hosts only; `{}` is a {} node", n.name, n.group));
            }
        }
        match (f.kind, &f.other) {
            (FaultKind::Partition, None) => {
                return err("other", "a partition needs `other`: the nodes cut off from `target`".into())
            }
            (FaultKind::Partition, Some(o)) => {
                let other = select(all, o).map_err(|m| (field("other"), m))?;
                let outside = other.nodes.iter().filter(|n| !target.nodes.contains(n)).count();
                if outside == 0 && !(target.random && other.nodes.len() >= 2) {
                    return err("other", format!("`{o}` names no node outside `{}`", f.target));
                }
            }
            (_, Some(_)) => return err("other", format!("only a partition takes `other`, not {kind}")),
            (_, None) => {}
        }
        if f.direction.is_some() && f.kind != FaultKind::Partition {
            return err("direction", format!("only a partition takes `direction`, not {kind}"));
        }
        match (&f.at, f.during) {
            (Some(_), Some(_)) => return err("during", "give `at` or `during`, not both".into()),
            (None, None) => {
                return err(
                    "kind",
                    "say when: `at = \"60s\"`, `at = [\"30s\", \"90s\"]` or `during = \"spawning\"`".into(),
                )
            }
            (Some(at), None) => {
                at.check().map_err(|m| (field("at"), m))?;
                if let Some(chaos) = self.phases.chaos {
                    if at.high() > chaos {
                        return err("at", format!("starts after the chaos phase ({}ms) ends", chaos.ms()));
                    }
                }
            }
            (None, Some(state)) => {
                if !self.reachable_task_states().contains(&state) {
                    return err(
                        "during",
                        format!("a boot never reaches `{state}` in this workload (deleting needs action = \"boot_and_delete\", a trace or passes)"),
                    );
                }
            }
        }
        if let Some(nth) = f.nth {
            if f.during.is_none() {
                return err("nth", "`nth` counts instances reaching `during`: give `during` too".into());
            }
            if nth == 0 {
                return err("nth", "counts from 1".into());
            }
            if let Some(n) = self.requests().filter(|n| u64::from(nth) > *n) {
                return err("nth", format!("the workload makes {n} requests: instance #{nth} never comes"));
            }
        }
        if let Some(d) = &f.duration {
            if f.kind.instant() {
                return err("duration", format!("{kind} happens at once and takes no `duration`"));
            }
            d.each(|d| !d.0.is_zero(), "must be above 0 (leave it out: until the heal phase)")
                .map_err(|m| (field("duration"), m))?;
        }
        let given: [(&str, bool); 5] = [
            ("rate", f.rate.is_some()),
            ("by", f.by.is_some()),
            ("offset", f.offset.is_some()),
            ("drift_ppm", f.drift_ppm.is_some()),
            ("multiplier", f.multiplier.is_some()),
        ];
        let takes = f.kind.values();
        if let Some((key, _)) = given.iter().find(|(k, g)| *g && !takes.contains(k)) {
            let what = if takes.is_empty() { "no values".to_string() } else { takes.join(", ") };
            return err(key, format!("{kind} takes {what}, not `{key}`"));
        }
        match f.kind {
            FaultKind::ClockSkew if f.offset.is_none() && f.drift_ppm.is_none() => {
                return err("kind", "clock_skew needs `offset` (like \"-2s\"), `drift_ppm`, or both".into())
            }
            _ => {}
        }
        for key in takes {
            match *key {
                "rate" => match &f.rate {
                    None => return err("rate", format!("{kind} needs `rate` (0..1)")),
                    Some(r) => {
                        r.each(|v| (0.0..=1.0).contains(&v), "must be within 0..1").map_err(|m| (field("rate"), m))?
                    }
                },
                "by" => match &f.by {
                    None => return err("by", "delay needs `by` (like \"200ms\")".into()),
                    Some(b) => b.check().map_err(|m| (field("by"), m))?,
                },
                "multiplier" => match &f.multiplier {
                    None => return err("multiplier", "slow needs `multiplier` (like 4.0)".into()),
                    Some(m) => m
                        .each(|v| v.is_finite() && v > 0.0, "must be a positive number")
                        .map_err(|m| (field("multiplier"), m))?,
                },
                "offset" => {
                    if let Some(o) = &f.offset {
                        o.check().map_err(|m| (field("offset"), m))?
                    }
                }
                "drift_ppm" => {
                    if let Some(d) = &f.drift_ppm {
                        d.check().map_err(|m| (field("drift_ppm"), m))?
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// What the scenario's faults come to for `seed`: concrete nodes, instants, durations and
    /// values. Pure and deterministic; empty (and `Phases` by default) for a scenario without
    /// faults. The scenario was validated at load, so an error here means a check is missing.
    pub fn fault_schedule(&self, seed: u64) -> Result<FaultSchedule, String> {
        let all = faults::nodes(self);
        let phases = Phases { chaos_ms: self.phases.chaos.map(Dur::ms), heal: self.phases.heal == Heal::All };
        let mut out = Vec::new();
        for (i, f) in self.faults.iter().enumerate() {
            let source = format!("faults[{i}]");
            let mut rng = stream(seed, &source);
            out.push(resolve(&all, f, source, &mut rng)?);
        }
        if let Some(r) = &self.random_faults {
            let chaos_ms = phases.chaos_ms.ok_or("random_faults needs phases.chaos")?;
            out.extend(resolve_random(&all, r, seed, chaos_ms)?);
        }
        Ok(FaultSchedule { faults: out, phases })
    }
}

fn resolve(all: &[NodeName], f: &FaultDecl, source: String, rng: &mut SmallRng) -> Result<ResolvedFault, String> {
    let target = select(all, &f.target)?;
    let trigger = match (&f.at, f.during) {
        (Some(at), _) => Trigger::At { at_ms: at.draw(rng).ms() },
        (None, Some(state)) => Trigger::TaskState { state, nth: f.nth.unwrap_or(1) },
        (None, None) => return Err(format!("{source}: no `at` or `during`")),
    };
    let targets: Vec<String> = if target.any_compute && matches!(trigger, Trigger::TaskState { .. }) {
        Vec::new()
    } else if target.random {
        vec![pick(&target.nodes, rng).name.clone()]
    } else {
        target.nodes.iter().map(|n| n.name.clone()).collect()
    };
    let duration_ms = f.duration.map(|d| d.draw(rng).ms());
    let need = |v: Option<Ranged<f64>>, key: &str, rng: &mut SmallRng| {
        v.map(|v| v.draw(rng)).ok_or_else(|| format!("{source}: no `{key}`"))
    };
    let action = match f.kind {
        FaultKind::Kill => FaultAction::Kill,
        FaultKind::Restart => FaultAction::Restart,
        FaultKind::Pause => FaultAction::Pause,
        FaultKind::Resume => FaultAction::Resume,
        FaultKind::PowerOff => FaultAction::PowerOff,
        FaultKind::Clog => FaultAction::Clog,
        FaultKind::Partition => {
            let o = f.other.as_deref().ok_or_else(|| format!("{source}: a partition without `other`"))?;
            let other = select(all, o)?;
            let outside: Vec<&NodeName> = other.nodes.iter().copied().filter(|n| !targets.contains(&n.name)).collect();
            if outside.is_empty() {
                return Err(format!("{source}: `{o}` leaves no node outside the target"));
            }
            let other = if other.random {
                vec![pick(&outside, rng).name.clone()]
            } else {
                outside.iter().map(|n| n.name.clone()).collect()
            };
            FaultAction::Partition { other, direction: f.direction.unwrap_or(Direction::Both) }
        }
        FaultKind::Drop => FaultAction::Drop { rate: need(f.rate, "rate", rng)? },
        FaultKind::Duplicate => FaultAction::Duplicate { rate: need(f.rate, "rate", rng)? },
        FaultKind::HypervisorErrors => FaultAction::HypervisorErrors { rate: need(f.rate, "rate", rng)? },
        FaultKind::Delay => {
            let rate = need(f.rate, "rate", rng)?;
            let by = f.by.ok_or_else(|| format!("{source}: no `by`"))?;
            FaultAction::Delay { rate, by_ms: by.draw(rng).ms() }
        }
        FaultKind::ClockSkew => FaultAction::ClockSkew {
            offset_ms: f.offset.map_or(0, |o| o.draw(rng).0),
            drift_ppm: f.drift_ppm.map_or(0, |d| d.draw(rng)),
        },
        FaultKind::Slow => FaultAction::Slow { multiplier: need(f.multiplier, "multiplier", rng)? },
    };
    Ok(ResolvedFault { source, trigger, targets, action, duration_ms })
}

/// The pool `[random_faults]` draws from, in node order, without repeats.
fn random_pool<'a>(all: &'a [NodeName], r: &RandomFaults) -> Result<Vec<&'a NodeName>, FieldError> {
    let mut pool: Vec<&NodeName> = Vec::new();
    for (i, t) in r.targets.iter().enumerate() {
        let field = format!("random_faults.targets.{i}");
        if t.ends_with(":random") {
            return Err((
                field,
                "targets are already drawn from: write the group or pattern without \":random\"".into(),
            ));
        }
        let s = select(all, t).map_err(|m| (field, m))?;
        pool.extend(s.nodes);
    }
    // Names are unique: sort by each one's place in `all` (a lookup, not a scan per node).
    let order: std::collections::HashMap<&str, usize> =
        all.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    pool.sort_by_key(|n| order.get(n.name.as_str()).copied());
    pool.dedup();
    Ok(pool)
}

fn validate_random(all: &[NodeName], r: &RandomFaults, chaos: Option<Dur>) -> Result<(), FieldError> {
    let field = |key: &str| format!("random_faults.{key}");
    if r.targets.is_empty() {
        return Err((
            field("targets"),
            "name the nodes random faults hit, like [\"compute\", \"nova-scheduler\"]".into(),
        ));
    }
    let pool = random_pool(all, r)?;
    let computes = pool.iter().filter(|n| n.group == faults::COMPUTE).count();
    let mut expected = 0.0;
    for (key, kind, rate) in r.events() {
        if !(rate.is_finite() && rate >= 0.0) {
            return Err((field(key), format!("must be a rate per minute of 0 or more, got {rate}")));
        }
        if rate > 0.0 {
            let Some(chaos) = chaos else {
                return Err((
                    field(key),
                    "random faults start in the chaos phase: set [phases] chaos = \"30m\"".into(),
                ));
            };
            if kind.compute_only() && computes == 0 {
                return Err((field(key), "power_off hits compute hosts only: add \"compute\" to targets".into()));
            }
            if kind == FaultKind::Partition && pool.len() < 2 {
                return Err((field(key), "a partition needs two targets at least".into()));
            }
            expected += rate * chaos.ms() as f64 / 60_000.0;
        }
    }
    if expected > MAX_RANDOM_FAULTS {
        return Err((
            field("targets"),
            format!(
                "the rates come to {expected:.0} faults in the chaos phase; at most {MAX_RANDOM_FAULTS} are allowed"
            ),
        ));
    }
    for (key, kind, rate) in r.message_rates() {
        if !(0.0..=1.0).contains(&rate) {
            return Err((field(key), format!("must be within 0..1, got {rate}")));
        }
        if rate > 0.0 && chaos.is_none() {
            return Err((field(key), "random faults run in the chaos phase: set [phases] chaos = \"30m\"".into()));
        }
        if rate > 0.0 && kind.compute_only() && computes == 0 {
            return Err((field(key), "hypervisor errors hit compute hosts only: add \"compute\" to targets".into()));
        }
    }
    r.duration.each(|d| !d.0.is_zero(), "must be above 0").map_err(|m| (field("duration"), m))?;
    r.clock_offset.check().map_err(|m| (field("clock_offset"), m))?;
    r.slow_multiplier
        .each(|v| v.is_finite() && v > 0.0, "must be a positive number")
        .map_err(|m| (field("slow_multiplier"), m))?;
    r.delay_by.check().map_err(|m| (field("delay_by"), m))?;
    Ok(())
}

fn resolve_random(all: &[NodeName], r: &RandomFaults, seed: u64, chaos_ms: u64) -> Result<Vec<ResolvedFault>, String> {
    let pool = random_pool(all, r).map_err(|(f, m)| format!("{f}: {m}"))?;
    let mut out = Vec::new();
    for (key, kind, per_minute) in r.events() {
        if per_minute <= 0.0 {
            continue;
        }
        let source = format!("random_faults.{key}");
        let mut rng = stream(seed, &source);
        let eligible: Vec<&NodeName> = if kind.compute_only() {
            pool.iter().copied().filter(|n| n.group == faults::COMPUTE).collect()
        } else {
            pool.clone()
        };
        let per_ms = per_minute / 60_000.0;
        // A node is not hit again by the same kind while its last event lasts: a second
        // kill of a dead node would be no fault at all.
        let mut busy_until: BTreeMap<&str, u64> = BTreeMap::new();
        let mut t = 0.0_f64;
        loop {
            // Exponential gaps between events: a Poisson process at `per_minute`.
            t += -(1.0 - rng.gen::<f64>()).ln() / per_ms;
            if t >= chaos_ms as f64 || out.len() as f64 >= MAX_RANDOM_FAULTS {
                break;
            }
            let at_ms = t as u64;
            let free: Vec<&NodeName> = eligible
                .iter()
                .copied()
                .filter(|n| busy_until.get(n.name.as_str()).is_none_or(|u| *u <= at_ms))
                .collect();
            if free.is_empty() {
                continue;
            }
            let node = pick(&free, &mut rng);
            let action = match kind {
                FaultKind::Kill => FaultAction::Kill,
                FaultKind::Restart => FaultAction::Restart,
                FaultKind::Pause => FaultAction::Pause,
                FaultKind::PowerOff => FaultAction::PowerOff,
                FaultKind::Clog => FaultAction::Clog,
                FaultKind::Partition => FaultAction::Partition {
                    other: pool.iter().filter(|n| n.name != node.name).map(|n| n.name.clone()).collect(),
                    direction: Direction::Both,
                },
                FaultKind::ClockSkew => {
                    FaultAction::ClockSkew { offset_ms: r.clock_offset.draw(&mut rng).0, drift_ppm: 0 }
                }
                FaultKind::Slow => FaultAction::Slow { multiplier: r.slow_multiplier.draw(&mut rng) },
                other => return Err(format!("{source}: {} is not a random event", other.name())),
            };
            let duration_ms = (!kind.instant()).then(|| r.duration.draw(&mut rng).ms());
            busy_until.insert(&node.name, at_ms + duration_ms.unwrap_or(0));
            out.push(ResolvedFault {
                source: source.clone(),
                trigger: Trigger::At { at_ms },
                targets: vec![node.name.clone()],
                action,
                duration_ms,
            });
        }
    }
    // In time order; ties keep the order of the rates above.
    out.sort_by_key(|f| match f.trigger {
        Trigger::At { at_ms } => at_ms,
        Trigger::TaskState { .. } => 0,
    });
    let mut messages = Vec::new();
    for (key, kind, rate) in r.message_rates() {
        if rate <= 0.0 {
            continue;
        }
        let source = format!("random_faults.{key}");
        let mut rng = stream(seed, &source);
        let targets: Vec<String> = pool
            .iter()
            .filter(|n| !kind.compute_only() || n.group == faults::COMPUTE)
            .map(|n| n.name.clone())
            .collect();
        let action = match kind {
            FaultKind::Drop => FaultAction::Drop { rate },
            FaultKind::Duplicate => FaultAction::Duplicate { rate },
            FaultKind::Delay => FaultAction::Delay { rate, by_ms: r.delay_by.draw(&mut rng).ms() },
            FaultKind::HypervisorErrors => FaultAction::HypervisorErrors { rate },
            other => return Err(format!("{source}: {} is not a message fault", other.name())),
        };
        messages.push(ResolvedFault { source, trigger: Trigger::At { at_ms: 0 }, targets, action, duration_ms: None });
    }
    // The message faults hold from the start; the events follow in time order.
    messages.extend(out);
    Ok(messages)
}
