//! Decisions per second of the full default pipeline, best of several rounds (robust on a
//! busy machine, where criterion's mean moves with the neighbours' load).
//! `cargo run --release -p stackbed-benches --example decisions [STRATEGY] [--all-candidates] [--top]`
//! (`--top`: the decision as select_destinations returns it, the pick and max_attempts - 1
//! alternates, through `Strategy::select_top`; without it, the full claim order.
//! `--table`: the pick and alternates of nova's default pipeline over a `HostTable`, the
//! column layout, through `Workspace::table_best_hosts`.)

use std::time::Instant;

use rand::{rngs::SmallRng, SeedableRng};

use stackbed_core::scheduler::{HostTable, RequestView, SchedulerConfig, Workspace};
use stackbed_core::strategy::builtin;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.iter().find(|a| !a.starts_with("--")).map_or("spread", String::as_str);
    let mut config = SchedulerConfig::default();
    if args.iter().any(|a| a == "--all-candidates") {
        config.candidate_limit = usize::MAX;
    }
    let table = args.iter().any(|a| a == "--table");
    let top = (table || args.iter().any(|a| a == "--top")).then_some(config.max_attempts as usize);
    let flavor = stackbed_benches::flavor();
    let image = stackbed_benches::image();
    let req = RequestView::new(&flavor, &image);
    for n in [1_000usize, 10_000, 100_000] {
        let (_, states) = stackbed_benches::hosts(n);
        let mut strategy = builtin(name, &config).expect("a built-in strategy");
        let host_table = HostTable::new(states.clone());
        let mut workspace = Workspace::new();
        let mut rng = SmallRng::seed_from_u64(1);
        // DECISIONS and ROUNDS shrink a run (e.g. under cachegrind, whose instruction counts
        // compare variants when the machine is too busy for wall time to mean much).
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok());
        let decisions =
            env("DECISIONS").unwrap_or(if config.candidate_limit == usize::MAX { 20_000_000 / n } else { 2_000 });
        let rounds = env("ROUNDS").unwrap_or(15);
        let mut best = f64::INFINITY;
        let mut sink = 0usize;
        for _ in 0..rounds {
            let start = Instant::now(); // wall clock: a benchmark, outside any simulation
            for _ in 0..decisions {
                let first = match top {
                    Some(k) if table => {
                        workspace.table_best_hosts(&host_table, &req, &config, &mut rng, k).map(|o| o[0])
                    }
                    Some(k) => strategy.select_top(&states, &req, &mut rng, k).map(|o| o[0]),
                    None => strategy.select(&states, &req, &mut rng).map(|o| o[0]),
                };
                sink = sink.wrapping_add(first.unwrap_or(0));
            }
            best = best.min(start.elapsed().as_secs_f64() / decisions as f64);
        }
        println!(
            "{name} {n:>7} hosts{}{}: {:>8.2} us/decision, {:>9.0} decisions/s (best of {rounds} rounds; {sink})",
            if config.candidate_limit == usize::MAX { " (all candidates)" } else { "" },
            match (table, top.is_some()) {
                (true, _) => " (host table, pick + alternates)",
                (false, true) => " (pick + alternates)",
                (false, false) => " (full order)",
            },
            best * 1e6,
            1.0 / best
        );
    }
}
