//! B1: one scheduling decision through the full default pipeline (placement's candidate
//! check with nova's limit of 1,000, nova's default filters, every weigher at its default
//! multiplier, normalisation, the subset pick) at 1,000, 10,000 and 100,000 hosts.
//! `cargo bench -p stackbed-benches --bench pipeline -- --warm-up-time 1 --measurement-time 3`.
//!
//! - `pipeline/N` (the full default pipeline figure): the decision as select_destinations
//!   returns it, the pick and `max_attempts - 1` alternates, of the `spread` strategy over a
//!   `HostTable` of N hosts kept between decisions (`Strategy::select_table`);
//! - `pipeline_decision/N`: the same decision over a host-state snapshot
//!   (`Strategy::select_top`);
//! - `pipeline_full_order/N`: the full claim order over the snapshot (`Strategy::select`),
//!   reusing the strategy's workspace;
//! - `pipeline_all_candidates/N`: the full order without placement's 1,000 limit, every
//!   host filtered and weighed (the cost of a full scan);
//! - `pipeline_strategies/*`: every built-in strategy at 10,000 hosts;
//! - `scheduler_decision/N`: the previous shape (providers scanned for candidates, host
//!   states cloned per decision, `sorted_hosts` allocating its buffers), for comparison.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{rngs::SmallRng, SeedableRng};

use stackbed_core::placement::{allocation_candidates, CANDIDATE_LIMIT};
use stackbed_core::scheduler::{sorted_hosts, HostTable, RequestView, SchedulerConfig};
use stackbed_core::store::{Expect, MemStore, Op};
use stackbed_core::strategy::{builtin, BUILTIN};

fn pipeline(c: &mut Criterion) {
    let flavor = stackbed_benches::flavor();
    let image = stackbed_benches::image();
    let req = RequestView::new(&flavor, &image);
    let config = SchedulerConfig::default();
    let k = config.max_attempts as usize;
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    for n in [1_000usize, 10_000, 100_000] {
        let (_, states) = stackbed_benches::hosts(n);
        let table = HostTable::new(states);
        let mut strategy = builtin("spread", &config).expect("spread is built in");
        let mut rng = SmallRng::seed_from_u64(1);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| strategy.select_table(&table, &req, &mut rng, k).map(|o| o[0]))
        });
    }
    group.finish();

    for (group_name, config) in [
        ("pipeline_full_order", SchedulerConfig::default()),
        ("pipeline_all_candidates", SchedulerConfig { candidate_limit: usize::MAX, ..SchedulerConfig::default() }),
    ] {
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(1));
        for n in [1_000usize, 10_000, 100_000] {
            let (_, states) = stackbed_benches::hosts(n);
            let mut strategy = builtin("spread", &config).expect("spread is built in");
            let mut rng = SmallRng::seed_from_u64(1);
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| strategy.select(&states, &req, &mut rng).map(|o| o[0]))
            });
        }
        group.finish();
    }

    let mut group = c.benchmark_group("pipeline_decision");
    group.throughput(Throughput::Elements(1));
    for n in [1_000usize, 10_000, 100_000] {
        let (_, states) = stackbed_benches::hosts(n);
        let mut strategy = builtin("spread", &config).expect("spread is built in");
        let mut rng = SmallRng::seed_from_u64(1);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| strategy.select_top(&states, &req, &mut rng, k).map(|o| o[0]))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("pipeline_strategies");
    group.throughput(Throughput::Elements(1));
    let (_, states) = stackbed_benches::hosts(10_000);
    for name in BUILTIN {
        let mut strategy = builtin(name, &SchedulerConfig::default()).expect("built in");
        let mut rng = SmallRng::seed_from_u64(1);
        group.bench_function(name, |b| b.iter(|| strategy.select(&states, &req, &mut rng).map(|o| o[0])));
    }
    group.finish();

    let mut group = c.benchmark_group("scheduler_decision");
    group.throughput(Throughput::Elements(1));
    for n in [1_000usize, 10_000] {
        let (providers, states) = stackbed_benches::hosts(n);
        let config = SchedulerConfig::default();
        let mut rng = SmallRng::seed_from_u64(1);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let candidates = allocation_candidates(&providers, &flavor.resources(), CANDIDATE_LIMIT);
                let hosts: Vec<_> = candidates.iter().map(|&i| states[i].clone()).collect();
                sorted_hosts(&hosts, &req, &config, &mut rng).map(|o| o[0])
            })
        });
    }
    group.finish();
}

fn store(c: &mut Criterion) {
    let (providers, _) = stackbed_benches::hosts(1_000);
    let mut db = MemStore::new();
    for p in &providers {
        let op = Op::Put {
            table: stackbed_core::model::Table::Providers,
            key: p.host.clone(),
            value: stackbed_core::model::Record::Provider(p.clone()),
            expect: Expect::Any,
        };
        db.execute(vec![op]).expect("insert");
    }
    c.bench_function("memstore_scan_1000_providers", |b| {
        b.iter(|| {
            db.execute(vec![Op::Scan { table: stackbed_core::model::Table::Providers, prefix: String::new() }])
                .map(|(r, _)| r.len())
        })
    });
}

criterion_group!(benches, pipeline, store);
criterion_main!(benches);
