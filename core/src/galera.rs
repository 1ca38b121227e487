//! A Galera cluster as one pure state machine: every node a replica ([`MemStore`]) of the
//! certified history; the worlds only move its requests and tell it what the network and
//! the nodes do.
//!
//! - **Optimistic transactions, certified in one total order.** A transaction runs on its
//!   node's replica as that node has it (possibly behind the others); if it writes, its
//!   write-set (the keys it writes) is certified against every write-set certified since
//!   the node's replica was last brought up to date: one from another node writing a key it
//!   writes aborts it with deadlock 1213 ("wsrep aborted transaction", nova's DBDeadlock).
//!   Passed, it gets the next global seqno, every node applies it in that order, and row
//!   versions are seqnos, so the replicas agree version for version.
//! - **Replication lag and `wsrep_sync_wait`.** Other nodes apply a write-set
//!   `replication_ms` after it was certified; with `sync_wait` off (Galera's default, 0) a
//!   read on one node can miss a commit made through another; on (1) a node applies every
//!   certified write-set before it reads.
//! - **The primary component.** The world says which nodes can reach each other
//!   ([`Cluster::set_components`]) and which crashed. A component is primary when it holds
//!   more than half of the last primary component's members (Galera's quorum, weights 1); a
//!   node outside it refuses every statement with 1047. When no component has a quorum the
//!   cluster stays non-primary until the last primary's members are together again
//!   (`pc.recovery`).
//! - **Rejoining.** A node that comes back to the primary component catches up by IST (the
//!   write-sets it missed, from the donor's gcache of the last `gcache_writesets`) or, too
//!   far behind, by SST (a full copy of the donor's replica).
//! - **Crashes: strict or faithful.** Strict is what Galera promises: a certified commit is
//!   in the cluster as long as one node that had it survives, and a node's crash loses
//!   nothing it applied. Faithful adds what Jepsen observed: with
//!   `innodb_flush_log_at_trx_commit` other than 1 a node syncs its log about once a second
//!   and a crash loses what it applied since; when every member of the last primary crashed,
//!   the cluster comes back (`pc.recovery`) from the most advanced log that survived, and the
//!   commits after it, acknowledged to their clients, are lost ([`GaleraStats::lost_commits`]).
//!   Jepsen's lost updates without faults are not modelled.
//!
//! [`Cluster::head`] is the certified history applied in order: what the oracle checks.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::model::Table;
use crate::store::{Commit, DbError, Expect, MemStore, Op, OpResult};

/// How crashes are modelled (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    Strict,
    Faithful,
}

/// `innodb_flush_log_at_trx_commit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Flush {
    /// `=1`: the log is synced at every commit.
    EachCommit,
    /// `=0` or `=2`: synced about once a second (`innodb_flush_log_at_timeout = 1`).
    PerSecond,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Options {
    pub nodes: usize,
    pub mode: Mode,
    pub flush: Flush,
    /// How long after its certification another node applies a write-set.
    pub replication_ms: u64,
    /// `wsrep_sync_wait = 1`: reads wait until the node applied everything certified.
    pub sync_wait: bool,
    /// The write-sets a donor keeps for IST (gcache); a node further behind gets an SST.
    pub gcache_writesets: usize,
}

impl Options {
    pub fn new(nodes: usize) -> Options {
        Options {
            nodes,
            mode: Mode::Strict,
            flush: Flush::EachCommit,
            replication_ms: 1,
            sync_wait: false,
            gcache_writesets: 10_000,
        }
    }
}

/// What the cluster did, for report.json's anomalies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GaleraStats {
    pub certified: u64,
    /// Transactions aborted by certification (1213).
    pub certification_failures: u64,
    /// Statements refused outside the primary component (1047).
    pub non_primary_refusals: u64,
    pub ist: u64,
    pub sst: u64,
    /// Commits acknowledged and then lost (faithful mode only).
    pub lost_commits: u64,
}

struct WriteSet {
    origin: usize,
    certified_at_ms: u64,
    keys: BTreeSet<(Table, String)>,
    /// The writes, with `Expect::Any`: applied as they are.
    ops: Vec<Op>,
}

struct Node {
    replica: MemStore,
    /// The last seqno applied to `replica`.
    applied: u64,
    /// The last seqno group communication delivered to it (in its gcache, applied or not):
    /// every member of the primary component receives a write-set as it is certified.
    received: u64,
    /// The replica as of the last log sync, and its seqno (what a crash keeps, faithful).
    synced: MemStore,
    synced_seqno: u64,
    up: bool,
    /// Whether it is a member of the primary component.
    primary: bool,
}

pub struct Cluster {
    opts: Options,
    /// Certified write-sets from seqno `base + 1` on (older ones left the gcache).
    log: std::collections::VecDeque<WriteSet>,
    base: u64,
    head: MemStore,
    nodes: Vec<Node>,
    /// The members of the last primary component.
    last_primary: BTreeSet<usize>,
    /// The components the world last said the up nodes form.
    components: Vec<Vec<usize>>,
    next_sync_ms: u64,
    stats: GaleraStats,
}

impl Cluster {
    /// Every node up, synced and in one primary component.
    pub fn new(opts: Options) -> Cluster {
        let n = opts.nodes.max(1);
        let node = || Node {
            replica: MemStore::new(),
            applied: 0,
            received: 0,
            synced: MemStore::new(),
            synced_seqno: 0,
            up: true,
            primary: true,
        };
        Cluster {
            opts: Options { nodes: n, ..opts },
            log: Default::default(),
            base: 0,
            head: MemStore::new(),
            nodes: (0..n).map(|_| node()).collect(),
            last_primary: (0..n).collect(),
            components: vec![(0..n).collect()],
            next_sync_ms: 1000,
            stats: GaleraStats::default(),
        }
    }

    pub fn stats(&self) -> GaleraStats {
        self.stats
    }

    /// The certified history, applied in order.
    pub fn head(&self) -> &MemStore {
        &self.head
    }

    pub fn replica(&self, node: usize) -> &MemStore {
        &self.nodes[node].replica
    }

    pub fn is_primary(&self, node: usize) -> bool {
        self.nodes[node].up && self.nodes[node].primary
    }

    /// The last certified seqno.
    pub fn seqno(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    /// Runs one transaction on `node` at `now_ms`. Returns the results and the commit as the
    /// certified history has it (its seq is the global seqno; its old rows are the
    /// history's, not the node's).
    pub fn execute(
        &mut self,
        node: usize,
        now_ms: u64,
        ops: Vec<Op>,
    ) -> Result<(Vec<OpResult>, Option<Commit>), DbError> {
        self.tick(now_ms);
        let name = format!("db-{}", node + 1);
        if !self.nodes[node].up {
            return Err(DbError::ConnectionLost(format!("{name} is down")));
        }
        if !self.nodes[node].primary {
            self.stats.non_primary_refusals += 1;
            return Err(DbError::NonPrimary { node: name });
        }
        self.catch_up(node, if self.opts.sync_wait { u64::MAX } else { now_ms });
        let writes: Vec<Op> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Put { table, key, value, .. } => {
                    Some(Op::Put { table: *table, key: key.clone(), value: value.clone(), expect: Expect::Any })
                }
                Op::Delete { table, key, .. } => {
                    Some(Op::Delete { table: *table, key: key.clone(), expect: Expect::Any })
                }
                _ => None,
            })
            .collect();
        // Run it on the node's replica as the node has it; keep nothing of it yet.
        let mut tentative = self.nodes[node].replica.clone();
        let (mut results, commit) = tentative.execute(ops)?;
        if commit.is_none() {
            return Ok((results, None));
        }
        let keys: BTreeSet<(Table, String)> = writes
            .iter()
            .filter_map(|op| match op {
                Op::Put { table, key, .. } | Op::Delete { table, key, .. } => Some((*table, key.clone())),
                _ => None,
            })
            .collect();
        let since = self.nodes[node].applied;
        let first = (since.saturating_sub(self.base)) as usize;
        if let Some(w) = self.log.iter().skip(first).find(|w| w.origin != node && !w.keys.is_disjoint(&keys)) {
            self.stats.certification_failures += 1;
            let (t, k) = w.keys.intersection(&keys).next().cloned().unwrap_or((Table::Services, String::new()));
            return Err(DbError::Deadlock(format!(
                "wsrep aborted the transaction on {name}: its write to {}/{k} conflicts with one certified from db-{}",
                t.name(),
                w.origin + 1
            )));
        }
        let (_, global) = self.head.execute(writes.clone())?;
        let global = global.ok_or_else(|| DbError::Backend("a write-set wrote nothing".into()))?;
        self.log.push_back(WriteSet { origin: node, certified_at_ms: now_ms, keys, ops: writes });
        self.stats.certified += 1;
        let seqno = self.seqno();
        for n in self.nodes.iter_mut().filter(|n| n.up && n.primary) {
            n.received = seqno;
        }
        // The donors' gcache: write-sets every member applied leave it beyond its size.
        let applied_by_all = self.nodes.iter().filter(|n| n.up && n.primary).map(|n| n.applied).min().unwrap_or(0);
        while self.log.len() > self.opts.gcache_writesets.max(1) && self.base < applied_by_all {
            self.log.pop_front();
            self.base += 1;
        }
        // The origin applies everything up to its own write-set, in order.
        self.catch_up(node, u64::MAX);
        for r in &mut results {
            if let OpResult::Written(v) = r {
                *v = global.seq;
            }
        }
        Ok((results, Some(global)))
    }

    /// Time passes: write-sets arrive at the other nodes, logs sync once a second.
    pub fn tick(&mut self, now_ms: u64) {
        for n in 0..self.nodes.len() {
            if self.nodes[n].up && self.nodes[n].primary {
                self.catch_up(n, now_ms);
            }
        }
        if now_ms >= self.next_sync_ms {
            for n in 0..self.nodes.len() {
                if self.nodes[n].up {
                    self.sync(n);
                }
            }
            self.next_sync_ms = (now_ms / 1000 + 1) * 1000;
        }
    }

    fn sync(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.synced = n.replica.clone();
        n.synced_seqno = n.applied;
    }

    /// Applies to `node` the write-sets certified at or before `until_ms` (a node applies its
    /// own at once), in seqno order.
    fn catch_up(&mut self, node: usize, until_ms: u64) {
        let delay = self.opts.replication_ms;
        loop {
            let next = self.nodes[node].applied + 1;
            if next <= self.base || next > self.nodes[node].received {
                return;
            }
            let w = &self.log[(next - self.base - 1) as usize];
            if w.origin != node && w.certified_at_ms.saturating_add(delay) > until_ms {
                return;
            }
            let n = &mut self.nodes[node];
            // Cannot fail: Expect::Any, and the write-set validated when it was certified.
            let _ = n.replica.execute(w.ops.clone());
            n.applied = next;
        }
    }

    /// The node crashes: it leaves its component at once. It keeps what it received
    /// (strict, and faithful with a log synced at each commit), or what it had applied at
    /// its last log sync (faithful, `Flush::PerSecond`: its gcache is not recovered).
    pub fn crash(&mut self, node: usize, now_ms: u64) {
        self.tick(now_ms);
        let n = &mut self.nodes[node];
        n.up = false;
        n.primary = false;
        if self.opts.mode == Mode::Faithful && self.opts.flush == Flush::PerSecond {
            n.replica = n.synced.clone();
            n.applied = n.synced_seqno;
            n.received = n.synced_seqno;
        }
        self.reform();
    }

    /// The node starts again (it joins the nodes it can reach when the world next says so;
    /// until then, with the component it was in).
    pub fn restart(&mut self, node: usize, now_ms: u64) {
        self.tick(now_ms);
        self.nodes[node].up = true;
        if !self.components.iter().any(|c| c.contains(&node)) {
            self.components.push(vec![node]);
        }
        self.reform();
    }

    /// Which nodes can reach each other (each up node in one group; down nodes ignored).
    pub fn set_components(&mut self, groups: &[Vec<usize>], now_ms: u64) {
        self.tick(now_ms);
        self.components = groups.to_vec();
        self.reform();
    }

    /// Recomputes the primary component after a membership change, and brings its new
    /// members up to date (IST or SST).
    fn reform(&mut self) {
        let was: Vec<bool> = self.nodes.iter().map(|n| n.up && n.primary).collect();
        let nodes = &self.nodes;
        let groups: Vec<Vec<usize>> =
            self.components.iter().map(|c| c.iter().copied().filter(|&n| nodes[n].up).collect()).collect();
        let last = &self.last_primary;
        let quorum = |g: &Vec<usize>| g.iter().filter(|n| last.contains(n)).count() * 2 > last.len();
        let primary = groups.into_iter().find(quorum);
        for n in &mut self.nodes {
            n.primary = false;
        }
        let Some(members) = primary else { return };
        let head = self.seqno();
        if !members.iter().any(|&m| self.nodes[m].received == head) {
            // No member has the whole history (every node that had the last write-sets lost
            // them): the cluster comes back from the most advanced log that survived.
            let best = members.iter().copied().max_by_key(|&m| (self.nodes[m].received, std::cmp::Reverse(m)));
            let best = best.unwrap_or(members[0]);
            self.catch_up(best, u64::MAX);
            let keep = self.nodes[best].applied;
            self.stats.lost_commits += head - keep;
            if keep < self.base {
                self.log.clear();
                self.base = keep;
            } else {
                self.log.truncate((keep - self.base) as usize);
            }
            self.head = self.nodes[best].replica.clone();
        }
        let head = self.seqno();
        let donor = members.iter().copied().find(|&m| self.nodes[m].received == head).unwrap_or(members[0]);
        self.catch_up(donor, u64::MAX);
        for &m in &members {
            if !was[m] && self.nodes[m].received < head {
                if self.nodes[m].applied >= self.base {
                    self.stats.ist += 1;
                } else {
                    self.stats.sst += 1;
                    let d = &self.nodes[donor];
                    let (replica, applied) = (d.replica.clone(), d.applied);
                    self.nodes[m].replica = replica;
                    self.nodes[m].applied = applied;
                }
                self.nodes[m].received = head;
                self.catch_up(m, u64::MAX);
                self.sync(m);
            }
            self.nodes[m].primary = true;
        }
        self.last_primary = members.into_iter().collect();
    }

    /// Whether every up node of the primary component has exactly the certified history.
    pub fn converged(&self) -> bool {
        self.nodes
            .iter()
            .filter(|n| n.up && n.primary)
            .all(|n| n.applied == self.seqno() && n.replica.rows_equal(&self.head))
    }
}

#[cfg(test)]
mod tests;
