//! B1 (partial): one scheduling decision, placement candidates then nova's default filters
//! and weighers, at 1,000 and 10,000 hosts. `cargo bench -p stackbed-benches`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{rngs::SmallRng, SeedableRng};

use stackbed_core::placement::{allocation_candidates, CANDIDATE_LIMIT};
use stackbed_core::scheduler::{sorted_hosts, RequestView, SchedulerConfig};
use stackbed_core::store::{Expect, MemStore, Op};

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_decision");
    group.throughput(Throughput::Elements(1));
    for n in [1_000usize, 10_000] {
        let (providers, states) = stackbed_benches::hosts(n);
        let flavor = stackbed_benches::flavor();
        let image = stackbed_benches::image();
        let config = SchedulerConfig::default();
        let mut rng = SmallRng::seed_from_u64(1);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                // Placement caps candidates at 1,000, as nova asks it to.
                let candidates = allocation_candidates(&providers, &flavor.resources(), CANDIDATE_LIMIT);
                let hosts: Vec<_> = candidates.iter().map(|&i| states[i].clone()).collect();
                let req = RequestView::new(&flavor, &image);
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
