//! The invariant checker: fed every committed write, in commit order, it keeps a shadow of
//! the state it needs and reports the first write that breaks an invariant. Checks that only
//! make sense once the system is quiet (allocations match instances, every request terminal)
//! run from [`Checker::check_quiet`].

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::model::{Allocation, Millis, ProjectUsage, Provider, QuotaLimits, Record, Resources, Table};
use crate::placement;
use crate::states::{self, TaskState, VmState};
use crate::store::Commit;

/// The invariants, by the names scenario files and reports use.
pub const NAMES: [&str; 10] = [
    "no_instance_lost",
    "no_overcommit",
    "allocations_match_instances",
    "quota_respected",
    "legal_transitions",
    "requests_terminal",
    "guests_match_instances",
    "usage_matches_instances",
    "no_valid_host_is_true",
    "replies_complete_their_call_once",
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub at_ms: Millis,
    /// Commit sequence number of the violating event (0 for checks at quiet).
    pub commit_seq: u64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct InvariantResult {
    pub name: &'static str,
    pub checked_events: u64,
    pub violations: u64,
    pub first: Option<Violation>,
}

#[derive(Debug, Default)]
pub struct Checker {
    quota_recheck: bool,
    liveness_bound_ms: Millis,
    instances: BTreeMap<String, crate::model::Instance>,
    /// Accepted requests (a BuildRequest was written) that are not yet terminal.
    pending: BTreeMap<String, Millis>,
    /// The same requests ordered by acceptance time, so deadline checks are cheap.
    pending_by_time: BTreeSet<(Millis, String)>,
    accepted: BTreeSet<String>,
    providers: BTreeMap<String, Provider>,
    allocations: BTreeMap<String, Allocation>,
    quotas: BTreeMap<String, QuotaLimits>,
    /// Resources of live, placed instances per host (what the hosts really carry).
    placed: BTreeMap<String, Resources>,
    /// Quota-counted usage per project, kept incrementally.
    usage: BTreeMap<String, ProjectUsage>,
    /// Per project, what its usage row must say: every instance row not deleted, as the
    /// create counts it and the soft delete gives it back, in the same transactions.
    live_usage: BTreeMap<String, ProjectUsage>,
    /// Per project, the committed `project_usages` row.
    usage_rows: BTreeMap<String, ProjectUsage>,
    events: u64,
    violations: BTreeMap<&'static str, (u64, Option<Violation>)>,
    /// Calls numbered so far, and which of them a reply completed (one bit each).
    calls: u64,
    completed_calls: Vec<u64>,
    replies: u64,
}

/// How nova's NoValidHost fault message begins.
pub const NO_VALID_HOST: &str = "No valid host was found";

fn is_placed(i: &crate::model::Instance) -> bool {
    !i.deleted && i.vm_state != VmState::Error && i.vm_state != VmState::Deleted && i.host.is_some()
}

/// Whether an instance counts against its project's quota for `quota_respected`: live, not
/// in ERROR, and past the conductor's recheck. nova creates the instance row first and then
/// rechecks (counting it): two creates that raced past the API's check are both over quota
/// for a moment, and the recheck puts them in ERROR before any compute sees them. An
/// instance still scheduling has not passed the recheck yet.
fn counts_for_quota(i: &crate::model::Instance) -> bool {
    !i.deleted
        && i.vm_state != VmState::Error
        && i.vm_state != VmState::Deleted
        && !(i.vm_state == VmState::Building && i.task_state == Some(TaskState::Scheduling))
}

/// `usage` with one instance added (`sign` > 0) or taken away.
fn usage_step(usage: ProjectUsage, inst: &crate::model::Instance, sign: i8) -> ProjectUsage {
    let step = |v: u64, d: u64| if sign > 0 { v + d } else { v.saturating_sub(d) };
    ProjectUsage {
        instances: step(usage.instances, 1),
        cores: step(usage.cores, inst.flavor.vcpus),
        ram_mb: step(usage.ram_mb, inst.flavor.ram_mb),
    }
}

fn is_terminal(i: &crate::model::Instance) -> bool {
    i.deleted || matches!(i.vm_state, VmState::Active | VmState::Error | VmState::Deleted) && i.task_state.is_none()
}

impl Checker {
    pub fn new(quota_recheck: bool, liveness_bound_ms: Millis) -> Checker {
        Checker { quota_recheck, liveness_bound_ms, ..Checker::default() }
    }

    fn violate(&mut self, invariant: &'static str, at_ms: Millis, seq: u64, detail: String) {
        let entry = self.violations.entry(invariant).or_insert((0, None));
        entry.0 += 1;
        if entry.1.is_none() {
            entry.1 = Some(Violation { invariant, at_ms, commit_seq: seq, detail });
        }
    }

    /// The first violation of any invariant, in commit order.
    pub fn first_violation(&self) -> Option<&Violation> {
        self.violations
            .values()
            .filter_map(|(_, v)| v.as_ref())
            .min_by_key(|v| (v.commit_seq == 0, v.commit_seq, v.at_ms))
    }

    pub fn results(&self) -> Vec<InvariantResult> {
        NAMES
            .iter()
            .map(|&name| {
                let (n, first) = self.violations.get(name).cloned().unwrap_or((0, None));
                // The reply check runs on replies, not commits.
                let checked_events =
                    if name == "replies_complete_their_call_once" { self.replies } else { self.events };
                InvariantResult { name, checked_events, violations: n, first }
            })
            .collect()
    }

    fn account(&mut self, inst: &crate::model::Instance, sign: i8) {
        if !inst.deleted {
            let u = self.live_usage.entry(inst.project.clone()).or_default();
            *u = usage_step(*u, inst, sign);
        }
        if is_placed(inst) {
            let host = inst.host.clone().unwrap_or_default();
            let r = inst.flavor.resources();
            let entry = self.placed.entry(host).or_default();
            *entry = if sign > 0 { entry.add(&r) } else { entry.checked_sub(&r).unwrap_or_default() };
        }
        if counts_for_quota(inst) {
            let u = self.usage.entry(inst.project.clone()).or_default();
            if sign > 0 {
                u.instances += 1;
                u.cores += inst.flavor.vcpus;
                u.ram_mb += inst.flavor.ram_mb;
            } else {
                u.instances = u.instances.saturating_sub(1);
                u.cores = u.cores.saturating_sub(inst.flavor.vcpus);
                u.ram_mb = u.ram_mb.saturating_sub(inst.flavor.ram_mb);
            }
        }
    }

    /// Feeds one commit. Violations are recorded; the run decides whether to stop.
    pub fn on_commit(&mut self, at_ms: Millis, commit: &Commit) {
        self.events += 1;
        let seq = commit.seq;
        let mut touched_hosts = BTreeSet::new();
        let mut touched_projects = BTreeSet::new();
        let mut no_valid_host = Vec::new();
        for w in &commit.writes {
            match (w.table, &w.new) {
                (Table::Projects, Some(Record::Project(p))) => {
                    self.quotas.insert(p.id.clone(), p.quota);
                }
                (Table::BuildRequests, Some(Record::BuildRequest(b))) => {
                    let uuid = b.spec.instance_uuid.clone();
                    if self.accepted.insert(uuid.clone()) {
                        self.pending.insert(uuid.clone(), b.created_at_ms);
                        self.pending_by_time.insert((b.created_at_ms, uuid));
                    }
                }
                (Table::BuildRequests, None) => {
                    // The conductor deletes the BuildRequest in the transaction that creates
                    // the instance; without an instance row the request would be lost.
                    let has_row = commit.writes.iter().any(|x| x.table == Table::Instances && x.key == w.key)
                        || self.instances.contains_key(&w.key);
                    if !has_row {
                        self.violate(
                            "no_instance_lost",
                            at_ms,
                            seq,
                            format!("build request {} deleted and no instance row exists", w.key),
                        );
                    }
                }
                (Table::Instances, new) => {
                    let Some(Record::Instance(new)) = new else {
                        let old = self.instances.remove(&w.key);
                        self.violate("no_instance_lost", at_ms, seq, format!("instance row {} removed", w.key));
                        if let Some(o) = &old {
                            self.account(o, -1);
                        }
                        continue;
                    };
                    // One search: the new row takes the previous one's place (no copy of it).
                    let old = match self.instances.get_mut(&w.key) {
                        Some(slot) => Some(std::mem::replace(slot, new.clone())),
                        None => {
                            self.instances.insert(w.key.clone(), new.clone());
                            None
                        }
                    };
                    let to = (new.vm_state, new.task_state);
                    match &old {
                        Some(o) => {
                            let from = (o.vm_state, o.task_state);
                            if o.deleted && !new.deleted {
                                self.violate(
                                    "legal_transitions",
                                    at_ms,
                                    seq,
                                    format!("instance {} undeleted", new.uuid),
                                );
                            } else if !states::legal_transition(from, to) {
                                self.violate(
                                    "legal_transitions",
                                    at_ms,
                                    seq,
                                    format!("instance {}: {} -> {}", new.uuid, states::show(from), states::show(to)),
                                );
                            }
                            self.account(o, -1);
                            if let Some(h) = &o.host {
                                touched_hosts.insert(h.clone());
                            }
                        }
                        None => {
                            // Icehouse's API writes the instance itself: that is the acceptance.
                            if self.accepted.insert(new.uuid.clone()) {
                                self.pending.insert(new.uuid.clone(), new.created_at_ms);
                                self.pending_by_time.insert((new.created_at_ms, new.uuid.clone()));
                            }
                            if !states::legal_initial(to) {
                                self.violate(
                                    "legal_transitions",
                                    at_ms,
                                    seq,
                                    format!("instance {} created in {}", new.uuid, states::show(to)),
                                );
                            }
                        }
                    }
                    if new.vm_state == VmState::Error
                        && new.fault.as_deref().is_some_and(|f| f.starts_with(NO_VALID_HOST))
                        && old.as_ref().is_none_or(|o| o.vm_state != VmState::Error)
                    {
                        no_valid_host.push(new.uuid.clone());
                    }
                    self.account(new, 1);
                    if let Some(h) = &new.host {
                        touched_hosts.insert(h.clone());
                    }
                    touched_projects.insert(new.project.clone());
                    if is_terminal(new) {
                        if let Some(t) = self.pending.remove(&new.uuid) {
                            self.pending_by_time.remove(&(t, new.uuid.clone()));
                        }
                    }
                }
                (Table::Providers, Some(Record::Provider(p))) => {
                    if let Some(why) = placement::over_capacity(p, &p.used) {
                        self.violate("no_overcommit", at_ms, seq, format!("placement usage on {}: {why}", p.host));
                    }
                    self.providers.insert(w.key.clone(), p.clone());
                    touched_hosts.insert(w.key.clone());
                }
                (Table::Allocations, Some(Record::Allocation(a))) => {
                    self.allocations.insert(w.key.clone(), a.clone());
                }
                (Table::Allocations, None) => {
                    self.allocations.remove(&w.key);
                }
                (Table::ProjectUsages, new) => {
                    match new {
                        Some(Record::ProjectUsage(u)) => self.usage_rows.insert(w.key.clone(), *u),
                        _ => self.usage_rows.remove(&w.key),
                    };
                    touched_projects.insert(w.key.clone());
                }
                _ => {}
            }
        }
        // NoValidHost is the scheduler's answer when no host could be claimed: an instance
        // that holds a claim at that moment was given a false one (a request handled twice,
        // the second time against its own first claim).
        for uuid in no_valid_host {
            if let Some(a) = self.allocations.get(&uuid) {
                let detail =
                    format!("instance {uuid} put in ERROR for NoValidHost while it holds a claim on {}", a.host);
                self.violate("no_valid_host_is_true", at_ms, seq, detail);
            }
        }
        for host in touched_hosts {
            if let (Some(p), Some(used)) = (self.providers.get(&host), self.placed.get(&host)) {
                if let Some(why) = placement::over_capacity(p, used) {
                    self.violate("no_overcommit", at_ms, seq, format!("instances placed on {host}: {why}"));
                }
            }
        }
        for project in &touched_projects {
            let row = self.usage_rows.get(project).copied().unwrap_or_default();
            let live = self.live_usage.get(project).copied().unwrap_or_default();
            if row != live {
                let detail = format!(
                    "project {project}: usage row says {} instances, {} cores, {} MB; its live instance rows add up to {}, {}, {} (a write applied twice or lost)",
                    row.instances, row.cores, row.ram_mb, live.instances, live.cores, live.ram_mb
                );
                self.violate("usage_matches_instances", at_ms, seq, detail);
            }
        }
        for project in touched_projects {
            let Some(limits) = self.quotas.get(&project).copied() else { continue };
            let usage = self.usage.get(&project).copied().unwrap_or_default();
            if crate::quota::check(&usage, &ProjectUsage::default(), &limits).is_err() {
                let detail = format!(
                    "project {project}: {} instances, {} cores, {} MB over limits {:?}{}",
                    usage.instances,
                    usage.cores,
                    usage.ram_mb,
                    limits,
                    if self.quota_recheck { "" } else { " (quota recheck is off)" }
                );
                self.violate("quota_respected", at_ms, seq, detail);
            }
        }
        self.check_deadlines(at_ms, seq);
    }

    /// Requests accepted more than the liveness bound ago that are still not terminal.
    pub fn check_deadlines(&mut self, now_ms: Millis, seq: u64) {
        // Called after every commit: look at the oldest without copying it.
        while self.pending_by_time.first().is_some_and(|(created, _)| now_ms > created + self.liveness_bound_ms) {
            let Some((created, uuid)) = self.pending_by_time.pop_first() else { break };
            self.pending.remove(&uuid);
            let state = self
                .instances
                .get(&uuid)
                .map(|i| states::show((i.vm_state, i.task_state)))
                .unwrap_or_else(|| "only a build request".into());
            self.violate(
                "requests_terminal",
                now_ms,
                seq,
                format!(
                    "request {uuid} accepted at {created} ms is {state} after the {} ms bound",
                    self.liveness_bound_ms
                ),
            );
        }
    }

    /// Checks for a quiet system: every accepted request terminal, allocations equal to the
    /// flavors of live placed instances, provider usage equal to its allocations.
    pub fn check_quiet(&mut self, now_ms: Millis) {
        let pending: Vec<String> = self.pending.keys().cloned().collect();
        for uuid in pending {
            self.violate(
                "requests_terminal",
                now_ms,
                0,
                format!("request {uuid} not terminal when the run went quiet"),
            );
        }
        for uuid in &self.accepted.clone() {
            if !self.instances.contains_key(uuid) {
                self.violate("no_instance_lost", now_ms, 0, format!("accepted request {uuid} has no instance row"));
            }
        }
        let mut by_host: BTreeMap<String, Resources> = BTreeMap::new();
        let mut problems = Vec::new();
        for (uuid, a) in &self.allocations {
            *by_host.entry(a.host.clone()).or_default() =
                by_host.get(&a.host).copied().unwrap_or_default().add(&a.resources);
            match self.instances.get(uuid) {
                Some(i) if is_placed(i) && i.host.as_deref() == Some(a.host.as_str()) => {
                    if i.flavor.resources() != a.resources {
                        problems.push(format!(
                            "allocation {uuid} is {:?}, flavor is {:?}",
                            a.resources,
                            i.flavor.resources()
                        ));
                    }
                }
                _ => problems.push(format!("allocation {uuid} on {} has no live instance there (leaked)", a.host)),
            }
        }
        for (uuid, i) in &self.instances {
            if is_placed(i) && !self.allocations.contains_key(uuid) {
                problems.push(format!("instance {uuid} on {} has no allocation", i.host.as_deref().unwrap_or("?")));
            }
        }
        for (host, p) in &self.providers {
            let alloc = by_host.get(host).copied().unwrap_or_default();
            if alloc != p.used {
                problems.push(format!("provider {host} usage {:?} != sum of allocations {:?}", p.used, alloc));
            }
        }
        for detail in problems {
            self.violate("allocations_match_instances", now_ms, 0, detail);
        }
    }
}

impl Checker {
    /// After healing, against what the hypervisors run (`guests`: host to instance uuids):
    /// every guest belongs to an instance that is not deleted and is on that host (no
    /// orphan), and every ACTIVE instance has exactly one guest, on its host (nothing booted
    /// twice, nothing lost). A guest of an instance in ERROR on its host is not an orphan:
    /// nova leaves it until the instance is deleted.
    pub fn check_guests(&mut self, now_ms: Millis, guests: &BTreeMap<String, Vec<String>>) {
        let mut hosts_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut problems = Vec::new();
        for (host, uuids) in guests {
            for uuid in uuids {
                hosts_of.entry(uuid.as_str()).or_default().push(host.as_str());
                match self.instances.get(uuid) {
                    Some(i) if !i.deleted && i.host.as_deref() == Some(host.as_str()) => {}
                    Some(i) => problems.push(format!(
                        "guest {uuid} runs on {host} but its instance is {} on {}",
                        if i.deleted { "deleted".to_string() } else { i.vm_state.to_string() },
                        i.host.as_deref().unwrap_or("no host")
                    )),
                    None => problems.push(format!("guest {uuid} runs on {host} without an instance (orphan)")),
                }
            }
        }
        for (uuid, i) in &self.instances {
            if i.deleted || i.vm_state != VmState::Active {
                continue;
            }
            let on = hosts_of.get(uuid.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            let host = i.host.as_deref().unwrap_or("no host");
            match on {
                [h] if *h == host => {}
                [] => problems.push(format!("ACTIVE instance {uuid} on {host} has no guest")),
                many => problems.push(format!("ACTIVE instance {uuid} on {host} has guests on {}", many.join(", "))),
            }
        }
        for detail in problems {
            self.violate("guests_match_instances", now_ms, 0, detail);
        }
    }

    /// Numbers a new RPC call (from 1).
    pub fn start_call(&mut self) -> u64 {
        self.calls += 1;
        self.calls
    }

    /// `replies_complete_their_call_once`: the caller waiting on call `call` was completed
    /// by a reply to call `answers`. That must be its own call's reply, and the first to
    /// complete it. (A late reply delivered to another call with the same id, as a reply
    /// queue reused across a restart would, breaks the first; a pending call answered
    /// twice, the second.)
    pub fn check_reply(&mut self, now_ms: Millis, call: u64, answers: u64) {
        self.replies += 1;
        if answers != call {
            let detail = format!("the reply to call #{answers} completed call #{call}, which waited for its own");
            self.violate("replies_complete_their_call_once", now_ms, 0, detail);
        }
        let (word, bit) = ((call / 64) as usize, 1u64 << (call % 64));
        if self.completed_calls.len() <= word {
            self.completed_calls.resize(word + 1, 0);
        }
        if self.completed_calls[word] & bit != 0 {
            self.violate("replies_complete_their_call_once", now_ms, 0, format!("call #{call} completed twice"));
        }
        self.completed_calls[word] |= bit;
    }

    /// Accepted requests not yet terminal.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Allocations of deleted instances: releases still owed. nova deletes the instance
    /// first and its allocation after, so a run is quiet only once these are gone too (or
    /// the liveness bound passed, and the quiet check calls what is left a leak).
    pub fn releases_owed(&self) -> usize {
        self.allocations.keys().filter(|uuid| self.instances.get(*uuid).is_some_and(|i| i.deleted)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Flavor, Instance, Project};
    use crate::states::PowerState;
    use crate::store::Write;

    fn instance(uuid: &str, vm_state: VmState, task_state: Option<TaskState>) -> Instance {
        Instance {
            uuid: uuid.into(),
            name: uuid.into(),
            project: "p".into(),
            user: "u".into(),
            flavor: Flavor {
                name: "m1.tiny".into(),
                vcpus: 1,
                ram_mb: 512,
                disk_gb: 1,
                ephemeral_gb: 0,
                swap: 0,
                extra_specs: BTreeMap::new(),
            },
            image: "cirros".into(),
            vm_state,
            task_state,
            power_state: PowerState::NoState,
            host: None,
            created_at_ms: 0,
            launched_at_ms: None,
            deleted: false,
            fault: None,
            attempts: 1,
        }
    }

    struct Run {
        checker: Checker,
        seq: u64,
        rows: BTreeMap<String, Instance>,
    }

    impl Run {
        fn new(instances: i64) -> Run {
            let mut run = Run { checker: Checker::new(true, 600_000), seq: 0, rows: BTreeMap::new() };
            let quota = QuotaLimits { instances, cores: -1, ram_mb: -1 };
            let project = Record::Project(Project { id: "p".into(), name: "p".into(), quota });
            run.commit(Table::Projects, "p", None, Some(project));
            run
        }
        fn commit(&mut self, table: Table, key: &str, old: Option<Record>, new: Option<Record>) {
            self.commit_at(self.seq + 1, table, key, old, new);
        }
        fn commit_at(&mut self, at_ms: Millis, table: Table, key: &str, old: Option<Record>, new: Option<Record>) {
            self.seq += 1;
            let writes = vec![Write { table, key: key.into(), old, new }];
            self.checker.on_commit(at_ms, &Commit { seq: self.seq, writes });
        }
        fn write(&mut self, i: Instance) {
            self.write_at(self.seq + 1, i);
        }
        fn write_at(&mut self, at_ms: Millis, i: Instance) {
            let old = self.rows.insert(i.uuid.clone(), i.clone()).map(Record::Instance);
            self.commit_at(at_ms, Table::Instances, &i.uuid.clone(), old, Some(Record::Instance(i)));
        }
        fn violations(&self, name: &str) -> (u64, Option<Violation>) {
            let r = self.checker.results().into_iter().find(|r| r.name == name).expect("an invariant");
            (r.violations, r.first)
        }
        fn quota_violations(&self) -> u64 {
            self.checker.results().iter().find(|r| r.name == "quota_respected").map_or(0, |r| r.violations)
        }
    }

    /// The guests after healing, table-driven: (instances as (uuid, vm_state, host, deleted),
    /// guests per host, the violations expected as substrings).
    #[test]
    fn guests_match_instances_after_healing() {
        type Inst = (&'static str, VmState, Option<&'static str>, bool);
        let check = |instances: &[Inst], guests: &[(&str, &[&str])], expect: &[&str]| {
            let mut run = Run::new(-1);
            for &(uuid, vm, host, deleted) in instances {
                let mut i = instance(uuid, vm, None);
                i.host = host.map(str::to_string);
                i.deleted = deleted;
                run.write(i);
            }
            let guests: BTreeMap<String, Vec<String>> =
                guests.iter().map(|(h, g)| (h.to_string(), g.iter().map(|u| u.to_string()).collect())).collect();
            run.checker.check_guests(1_000, &guests);
            let (n, first) = run.violations("guests_match_instances");
            assert_eq!(n as usize, expect.len(), "{instances:?} {guests:?}: {first:?}");
            if let (Some(want), Some(v)) = (expect.first(), first) {
                assert!(v.detail.contains(want), "{} should say {want}", v.detail);
            }
        };
        use VmState::*;
        check(&[("a", Active, Some("h1"), false)], &[("h1", &["a"])], &[]);
        check(&[("a", Active, Some("h1"), false)], &[("h1", &[])], &["ACTIVE instance a on h1 has no guest"]);
        check(&[("a", Active, Some("h1"), false)], &[("h1", &["a"]), ("h2", &["a"])], &["runs on h2", "guests on"]);
        check(&[], &[("h1", &["x"])], &["guest x runs on h1 without an instance (orphan)"]);
        check(&[("a", Deleted, Some("h1"), true)], &[("h1", &["a"])], &["its instance is deleted"]);
        // nova leaves the guest of an instance that went to ERROR on its host.
        check(&[("a", Error, Some("h1"), false)], &[("h1", &["a"])], &[]);
        check(&[("a", Stopped, Some("h1"), false)], &[("h1", &[])], &[]);
    }

    /// Two creates raced past the API's check: both rows exist over quota until the recheck
    /// puts one in ERROR; only an instance past the recheck over quota is a violation.
    #[test]
    fn quota_counts_instances_past_the_recheck() {
        let mut run = Run::new(1);
        run.write(instance("a", VmState::Building, Some(TaskState::Scheduling)));
        run.write(instance("b", VmState::Building, Some(TaskState::Scheduling)));
        assert_eq!(run.quota_violations(), 0, "rows awaiting the recheck are not over quota yet");
        run.write(instance("b", VmState::Error, None));
        run.write(instance("a", VmState::Building, Some(TaskState::Spawning)));
        assert_eq!(run.quota_violations(), 0);
        // A recheck that let a second one through is caught once it builds.
        run.write(instance("c", VmState::Building, Some(TaskState::Scheduling)));
        run.write(instance("c", VmState::Building, Some(TaskState::Spawning)));
        assert_eq!(run.quota_violations(), 1);
    }

    /// A request still not terminal after the liveness bound is reported once, at the first
    /// commit past its deadline; one that became terminal in time is not.
    #[test]
    fn a_request_past_the_liveness_bound_is_reported_once() {
        let mut run = Run { checker: Checker::new(true, 1_000), seq: 0, rows: BTreeMap::new() };
        run.write_at(0, instance("slow", VmState::Building, Some(TaskState::Scheduling)));
        run.write_at(10, instance("quick", VmState::Building, Some(TaskState::Scheduling)));
        run.write_at(500, instance("quick", VmState::Active, None));
        run.write_at(1_000, instance("other", VmState::Building, Some(TaskState::Scheduling)));
        assert_eq!(run.violations("requests_terminal").0, 0, "at the bound, not past it");
        run.write_at(1_001, instance("other", VmState::Active, None));
        let (count, first) = run.violations("requests_terminal");
        assert_eq!(count, 1);
        let first = first.expect("the violation");
        assert!(first.detail.contains("request slow accepted at 0 ms"), "{}", first.detail);
        assert_eq!(first.at_ms, 1_001);
        run.write_at(5_000, instance("slow", VmState::Active, None));
        assert_eq!(run.violations("requests_terminal").0, 1, "reported once");
    }

    fn usage(n: u64) -> Record {
        Record::ProjectUsage(ProjectUsage { instances: n, cores: n, ram_mb: 512 * n })
    }

    impl Run {
        /// One transaction of several writes, as the store commits it.
        fn commit_writes(&mut self, writes: Vec<Write>) {
            self.seq += 1;
            self.checker.on_commit(self.seq, &Commit { seq: self.seq, writes });
        }
        /// `instance_create`: the instance row and the project's usage row, together.
        fn create(&mut self, uuid: &str, usage_before: u64) {
            let i = instance(uuid, VmState::Building, Some(TaskState::Scheduling));
            self.rows.insert(uuid.into(), i.clone());
            self.commit_writes(vec![
                Write { table: Table::Instances, key: uuid.into(), old: None, new: Some(Record::Instance(i)) },
                Write {
                    table: Table::ProjectUsages,
                    key: "p".into(),
                    old: (usage_before > 0).then(|| usage(usage_before)),
                    new: Some(usage(usage_before + 1)),
                },
            ]);
        }
    }

    /// Creates and soft deletes that move the usage row with the instance rows hold it.
    #[test]
    fn usage_that_follows_the_instance_rows_holds() {
        let mut run = Run::new(-1);
        run.create("a", 0);
        run.create("b", 1);
        let mut a = run.rows["a"].clone();
        let old = Some(Record::Instance(a.clone()));
        a.deleted = true;
        a.vm_state = VmState::Deleted;
        a.task_state = None;
        run.commit_writes(vec![
            Write { table: Table::Instances, key: "a".into(), old, new: Some(Record::Instance(a)) },
            Write { table: Table::ProjectUsages, key: "p".into(), old: Some(usage(2)), new: Some(usage(1)) },
        ]);
        assert_eq!(run.violations("usage_matches_instances"), (0, None));
    }

    /// `PlantedBug::RetryNonIdempotentWrites`: a create whose commit was in doubt is sent
    /// again and its usage increment lands twice. The checker flags the commit that did it.
    #[test]
    fn a_usage_increment_applied_twice_is_flagged_at_its_commit() {
        let mut run = Run::new(-1);
        run.create("a", 0);
        let seq_of_retry = run.seq + 1;
        // The retry re-read the (already incremented) usage row and incremented it again.
        run.commit_writes(vec![Write {
            table: Table::ProjectUsages,
            key: "p".into(),
            old: Some(usage(1)),
            new: Some(usage(2)),
        }]);
        let (count, first) = run.violations("usage_matches_instances");
        assert_eq!(count, 1);
        let first = first.expect("the violation");
        assert_eq!(first.commit_seq, seq_of_retry);
        assert!(
            first.detail.contains("usage row says 2 instances") && first.detail.contains("add up to 1"),
            "{}",
            first.detail
        );
        // An instance row written without its usage (the other half lost) is flagged too.
        run.write(instance("c", VmState::Building, Some(TaskState::Scheduling)));
        assert_eq!(run.violations("usage_matches_instances").0, 1, "2 rows, usage 2: consistent again");
        run.write(instance("d", VmState::Building, Some(TaskState::Scheduling)));
        assert_eq!(run.violations("usage_matches_instances").0, 2);
    }
}
