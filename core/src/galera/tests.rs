//! The Galera model against what Galera promises (strict) and what Jepsen saw (faithful).

use proptest::prelude::*;

use super::*;
use crate::model::{ProjectUsage, Record};
use crate::store::Row;

fn usage(n: u64) -> Record {
    Record::ProjectUsage(ProjectUsage { instances: n, cores: 0, ram_mb: 0 })
}

fn put(key: &str, n: u64, expect: Expect) -> Op {
    Op::Put { table: Table::ProjectUsages, key: key.into(), value: usage(n), expect }
}

fn get(key: &str) -> Op {
    Op::Get { table: Table::ProjectUsages, key: key.into() }
}

fn read(c: &mut Cluster, node: usize, now: u64, key: &str) -> Result<Option<Row>, DbError> {
    match c.execute(node, now, vec![get(key)])?.0.pop() {
        Some(OpResult::Row(r)) => Ok(r),
        other => panic!("{other:?}"),
    }
}

/// Reads `key` on `node` and writes it back plus one, versioned: nova's compare-and-swap.
fn increment(c: &mut Cluster, node: usize, now: u64, key: &str) -> Result<u64, DbError> {
    let row = read(c, node, now, key)?;
    let (n, expect) = match &row {
        Some(Row { version, value: Record::ProjectUsage(u) }) => (u.instances, Expect::Version(*version)),
        _ => (0, Expect::Absent),
    };
    c.execute(node, now, vec![put(key, n + 1, expect)])?;
    Ok(n + 1)
}

fn value(c: &Cluster, key: &str) -> u64 {
    let mut head = c.head().clone();
    match head.execute(vec![get(key)]).unwrap().0.pop() {
        Some(OpResult::Row(Some(Row { value: Record::ProjectUsage(u), .. }))) => u.instances,
        _ => 0,
    }
}

#[test]
fn a_write_set_that_meets_one_certified_from_another_node_aborts_with_1213() {
    let mut c = Cluster::new(Options { replication_ms: 100, ..Options::new(3) });
    c.execute(0, 0, vec![put("p", 1, Expect::Any)]).unwrap();
    // db-2 has not applied it yet (100 ms of lag): its read misses it (sync_wait 0) and its
    // write of the same row fails certification.
    assert_eq!(read(&mut c, 1, 10, "p").unwrap(), None, "a read on a lagging node misses the commit");
    let e = c.execute(1, 10, vec![put("p", 5, Expect::Absent)]).unwrap_err();
    assert_eq!(e.mysql_code(), Some(1213), "{e}");
    assert!(e.to_string().contains("wsrep aborted"), "{e}");
    // Another row on the same lagging node certifies.
    c.execute(1, 10, vec![put("q", 5, Expect::Any)]).unwrap();
    assert_eq!(c.stats().certification_failures, 1);
    // Once applied, the row is there, at the same version on every node.
    c.tick(200);
    assert!(c.converged());
    let r = read(&mut c, 2, 200, "p").unwrap().unwrap();
    assert_eq!(r.version, 1, "row versions are global seqnos");
}

#[test]
fn sync_wait_makes_a_read_see_every_commit_made_through_another_node() {
    let mut c = Cluster::new(Options { replication_ms: 100, sync_wait: true, ..Options::new(3) });
    c.execute(0, 0, vec![put("p", 1, Expect::Any)]).unwrap();
    assert!(read(&mut c, 1, 1, "p").unwrap().is_some());
    assert_eq!(increment(&mut c, 2, 2, "p"), Ok(2));
}

#[test]
fn outside_the_primary_component_every_statement_is_refused_with_1047() {
    // Table: the components, and which nodes are then primary.
    let cases: &[(&[&[usize]], [bool; 3])] = &[
        (&[&[0], &[1, 2]], [false, true, true]),
        (&[&[0, 1, 2]], [true, true, true]),
        (&[&[0], &[1], &[2]], [false, false, false]),
    ];
    for (groups, primary) in cases {
        let mut c = Cluster::new(Options::new(3));
        let groups: Vec<Vec<usize>> = groups.iter().map(|g| g.to_vec()).collect();
        c.set_components(&groups, 0);
        for (n, &p) in primary.iter().enumerate() {
            assert_eq!(c.is_primary(n), p, "{groups:?}: db-{}", n + 1);
            let r = c.execute(n, 0, vec![get("p")]);
            assert_eq!(r.is_ok(), p, "{groups:?}: db-{}: {r:?}", n + 1);
            if !p {
                assert_eq!(r.unwrap_err().mysql_code(), Some(1047));
            }
        }
    }
    // Two nodes split one and one: neither has more than half.
    let mut c = Cluster::new(Options::new(2));
    c.set_components(&[vec![0], vec![1]], 0);
    assert!(!c.is_primary(0) && !c.is_primary(1));
}

#[test]
fn quorum_counts_the_last_primary_component_and_comes_back_when_its_members_do() {
    let mut c = Cluster::new(Options::new(3));
    c.crash(0, 0);
    assert!(c.is_primary(1) && c.is_primary(2), "two of three keep the quorum");
    c.crash(1, 1);
    assert!(!c.is_primary(2), "one of the last two does not");
    c.restart(1, 2);
    assert!(c.is_primary(1) && c.is_primary(2), "the last primary's members are together again");
    c.restart(0, 3);
    assert!(c.is_primary(0));
}

#[test]
fn a_node_coming_back_catches_up_by_ist_or_when_too_far_behind_by_sst() {
    for (gcache, missed, ist, sst) in [(100, 5, 1, 0), (3, 10, 0, 1)] {
        let mut c = Cluster::new(Options { gcache_writesets: gcache, ..Options::new(3) });
        c.set_components(&[vec![0], vec![1, 2]], 0);
        for i in 0..missed {
            c.execute(1, i, vec![put(&format!("k{i}"), i, Expect::Any)]).unwrap();
        }
        c.tick(1_000);
        c.set_components(&[vec![0, 1, 2]], 1_000);
        assert_eq!((c.stats().ist, c.stats().sst), (ist, sst), "gcache {gcache}, {missed} missed");
        assert!(c.converged(), "gcache {gcache}");
        assert_eq!(read(&mut c, 0, 1_001, &format!("k{}", missed - 1)).unwrap().map(|r| r.version), Some(missed));
    }
}

#[test]
fn crashes_in_quick_succession_lose_acknowledged_commits_only_in_faithful_mode_with_a_lazy_log() {
    // Table: mode, flush, commits lost when every node crashes 300 ms after 5 commits.
    let cases = [
        (Mode::Strict, Flush::PerSecond, 0),
        (Mode::Faithful, Flush::EachCommit, 0),
        (Mode::Faithful, Flush::PerSecond, 5),
    ];
    for (mode, flush, lost) in cases {
        let mut c = Cluster::new(Options { mode, flush, ..Options::new(3) });
        c.execute(0, 500, vec![put("before", 1, Expect::Any)]).unwrap();
        c.tick(1_000); // every log synced
        for i in 0..5u64 {
            c.execute((i % 3) as usize, 1_100 + i, vec![put(&format!("k{i}"), i, Expect::Any)]).unwrap();
        }
        for n in 0..3 {
            c.crash(n, 1_300 + n as u64);
        }
        for n in 0..3 {
            c.restart(n, 5_000 + n as u64);
        }
        assert!(c.is_primary(0), "{mode:?} {flush:?}: the cluster comes back");
        assert_eq!(c.stats().lost_commits, lost, "{mode:?} {flush:?}");
        assert_eq!(value(&c, "before"), 1, "{mode:?} {flush:?}: synced before the crashes");
        assert_eq!(read(&mut c, 1, 6_000, "k4").unwrap().is_some(), lost == 0, "{mode:?} {flush:?}");
        assert!(c.converged(), "{mode:?} {flush:?}");
        // New commits continue from the seqno that survived.
        let (_, commit) = c.execute(2, 6_000, vec![put("after", 1, Expect::Any)]).unwrap();
        assert_eq!(commit.unwrap().seq, 7 - lost);
    }
}

#[test]
fn one_node_is_the_reference_store() {
    let mut c = Cluster::new(Options::new(1));
    let mut m = MemStore::new();
    let txs = vec![
        vec![put("a", 1, Expect::Absent)],
        vec![put("a", 2, Expect::Version(1)), put("b", 1, Expect::Any)],
        vec![put("a", 3, Expect::Version(1))],                    // a conflict
        vec![put("c", 1, Expect::Any), put("c", 2, Expect::Any)], // refused: two writes of one key
        vec![get("a"), Op::Delete { table: Table::ProjectUsages, key: "b".into(), expect: Expect::Any }],
        vec![Op::Scan { table: Table::ProjectUsages, prefix: String::new() }],
    ];
    for (i, ops) in txs.into_iter().enumerate() {
        assert_eq!(c.execute(0, i as u64, ops.clone()), m.execute(ops), "transaction {i}");
    }
    assert!(c.head().rows_equal(&m) && c.replica(0).rows_equal(&m));
}

#[derive(Debug, Clone)]
enum Step {
    Increment(usize, u8),
    Tick(u64),
    Crash(usize),
    Restart(usize),
    Split(usize),
    Heal,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, 0..3u8).prop_map(|(n, k)| Step::Increment(n, k)),
        2 => (1..400u64).prop_map(Step::Tick),
        1 => (0..3usize).prop_map(Step::Crash),
        1 => (0..3usize).prop_map(Step::Restart),
        1 => (0..3usize).prop_map(Step::Split),
        1 => Just(Step::Heal),
    ]
}

proptest! {
    /// Strict mode under crashes, restarts, partitions and lag: a counter incremented by
    /// compare-and-swap from any node counts exactly the increments that succeeded (no lost
    /// update, no lost commit, failures are 1213, 1047, a conflict or a node down), and
    /// once everything heals every replica is the certified history.
    #[test]
    fn strict_mode_loses_no_acknowledged_increment_and_converges(
        steps in proptest::collection::vec(step(), 1..120),
        lag in 0..200u64,
        sync_wait in any::<bool>(),
        gcache in 1..20usize,
    ) {
        let mut c = Cluster::new(Options { replication_ms: lag, sync_wait, gcache_writesets: gcache, ..Options::new(3) });
        let mut now = 0;
        let mut acked = [0u64; 3];
        for s in steps {
            now += 1;
            match s {
                Step::Increment(n, k) => match increment(&mut c, n, now, &format!("k{k}")) {
                    Ok(_) => acked[k as usize] += 1,
                    Err(e) => prop_assert!(
                        matches!(e, DbError::Conflict { .. } | DbError::ConnectionLost(_)) || matches!(e.mysql_code(), Some(1213 | 1047)),
                        "{e}"
                    ),
                },
                Step::Tick(ms) => { now += ms; c.tick(now) }
                Step::Crash(n) => c.crash(n, now),
                Step::Restart(n) => c.restart(n, now),
                Step::Split(n) => {
                    let rest: Vec<usize> = (0..3).filter(|&m| m != n).collect();
                    c.set_components(&[vec![n], rest], now)
                }
                Step::Heal => c.set_components(&[vec![0, 1, 2]], now),
            }
        }
        for n in 0..3 { c.restart(n, now + 1); }
        c.set_components(&[vec![0, 1, 2]], now + 2);
        c.tick(now + 10_000);
        prop_assert!(c.is_primary(0) && c.is_primary(1) && c.is_primary(2));
        prop_assert!(c.converged());
        prop_assert_eq!(c.stats().lost_commits, 0);
        for k in 0..3u8 {
            prop_assert_eq!(value(&c, &format!("k{k}")), acked[k as usize], "k{}", k);
        }
    }
}
