//! Decisions per second of the full default pipeline, best of several rounds (robust on a
//! busy machine, where criterion's mean moves with the neighbours' load).
//! `cargo run --release -p stackbed-benches --example decisions [STRATEGY] [--table] [--top] [--full] [--all-candidates]`
//!
//! Paths (all three when none is named, the first is "the full default pipeline" figure):
//! - `--table`: the decision as select_destinations returns it (the pick and
//!   max_attempts - 1 alternates) over a `HostTable`, through `Strategy::select_table`
//!   (for spread and pack: `Workspace::table_best_hosts`);
//! - `--top`: the same decision over a `&[HostState]` snapshot, through
//!   `Strategy::select_top`;
//! - `--full`: the full claim order over the snapshot, through `Strategy::select`;
//! - `--claims` (not in the default set): the table path with usage changing, each decision
//!   claiming its pick on the table and releasing the claim made 100 decisions earlier.
//!
//! `DECISIONS` and `ROUNDS` shrink a run (e.g. under callgrind, whose instruction counts
//! compare variants when the machine is too busy for wall time to mean much).

use std::time::Instant;

use rand::{rngs::SmallRng, SeedableRng};

use stackbed_core::scheduler::{HostTable, RequestView, SchedulerConfig};
use stackbed_core::strategy::builtin;

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Table,
    Top,
    Full,
    Claims,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.iter().find(|a| !a.starts_with("--")).map_or("spread", String::as_str);
    let mut config = SchedulerConfig::default();
    let all_candidates = args.iter().any(|a| a == "--all-candidates");
    if all_candidates {
        config.candidate_limit = usize::MAX;
    }
    let flags = [("--table", Path::Table), ("--top", Path::Top), ("--full", Path::Full), ("--claims", Path::Claims)];
    let mut paths: Vec<Path> =
        flags.into_iter().filter(|(flag, _)| args.iter().any(|a| a == flag)).map(|(_, p)| p).collect();
    if paths.is_empty() {
        paths = vec![Path::Table, Path::Top, Path::Full];
    }
    let k = config.max_attempts as usize;
    let flavor = stackbed_benches::flavor();
    let image = stackbed_benches::image();
    let req = RequestView::new(&flavor, &image);
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok());
    for path in paths {
        for n in [1_000usize, 10_000, 100_000] {
            let (_, states) = stackbed_benches::hosts(n);
            let mut strategy = builtin(name, &config).expect("a built-in strategy");
            let mut table = HostTable::new(states.clone());
            let mut live = std::collections::VecDeque::new();
            let resources = flavor.resources();
            let mut rng = SmallRng::seed_from_u64(1);
            let decisions = env("DECISIONS").unwrap_or(if all_candidates { 20_000_000 / n } else { 2_000 });
            let rounds = env("ROUNDS").unwrap_or(15);
            let mut best = f64::INFINITY;
            let mut sink = 0usize;
            for _ in 0..rounds {
                let start = Instant::now(); // wall clock: a benchmark, outside any simulation
                for _ in 0..decisions {
                    let first = match path {
                        Path::Table => strategy.select_table(&table, &req, &mut rng, k).map(|o| o[0]),
                        Path::Top => strategy.select_top(&states, &req, &mut rng, k).map(|o| o[0]),
                        Path::Full => strategy.select(&states, &req, &mut rng).map(|o| o[0]),
                        Path::Claims => {
                            let first = strategy.select_table(&table, &req, &mut rng, k).map(|o| o[0]);
                            if let Ok(i) = first {
                                table.claim(i, &resources);
                                live.push_back(i);
                            }
                            if live.len() > 100 {
                                let i = live.pop_front().expect("more than 100 live");
                                table.release(i, &resources);
                            }
                            first
                        }
                    };
                    sink = sink.wrapping_add(first.unwrap_or(0));
                }
                best = best.min(start.elapsed().as_secs_f64() / decisions as f64);
            }
            println!(
                "{name} {n:>7} hosts{}{}: {:>8.2} us/decision, {:>9.0} decisions/s (best of {rounds} rounds; {sink})",
                if all_candidates { " (all candidates)" } else { "" },
                match path {
                    Path::Table => " (default pipeline: host table, pick + alternates)",
                    Path::Top => " (host-state snapshot, pick + alternates)",
                    Path::Full => " (host-state snapshot, full order)",
                    Path::Claims => " (host table, pick + alternates, claims and releases)",
                },
                best * 1e6,
                1.0 / best
            );
        }
    }
}
