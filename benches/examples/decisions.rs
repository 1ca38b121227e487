//! Decisions per second of the full default pipeline, best of several rounds (robust on a
//! busy machine, where criterion's mean moves with the neighbours' load).
//! `cargo run --release -p stackbed-benches --example decisions [STRATEGY] [--all-candidates] [--top]`
//! (`--top`: the decision as select_destinations returns it, the pick and max_attempts - 1
//! alternates, through `Strategy::select_top`; without it, the full claim order.)

use std::time::Instant;

use rand::{rngs::SmallRng, SeedableRng};

use stackbed_core::scheduler::{RequestView, SchedulerConfig};
use stackbed_core::strategy::builtin;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.iter().find(|a| !a.starts_with("--")).map_or("spread", String::as_str);
    let mut config = SchedulerConfig::default();
    if args.iter().any(|a| a == "--all-candidates") {
        config.candidate_limit = usize::MAX;
    }
    let top = args.iter().any(|a| a == "--top").then_some(config.max_attempts as usize);
    let flavor = stackbed_benches::flavor();
    let image = stackbed_benches::image();
    let req = RequestView::new(&flavor, &image);
    for n in [1_000usize, 10_000, 100_000] {
        let (_, states) = stackbed_benches::hosts(n);
        let mut strategy = builtin(name, &config).expect("a built-in strategy");
        let mut rng = SmallRng::seed_from_u64(1);
        let decisions = if config.candidate_limit == usize::MAX { 20_000_000 / n } else { 2_000 };
        let mut best = f64::INFINITY;
        let mut sink = 0usize;
        for _ in 0..15 {
            let start = Instant::now(); // wall clock: a benchmark, outside any simulation
            for _ in 0..decisions {
                let order = match top {
                    Some(k) => strategy.select_top(&states, &req, &mut rng, k),
                    None => strategy.select(&states, &req, &mut rng),
                };
                sink = sink.wrapping_add(order.map_or(0, |o| o[0]));
            }
            best = best.min(start.elapsed().as_secs_f64() / decisions as f64);
        }
        println!(
            "{name} {n:>7} hosts{}{}: {:>8.2} us/decision, {:>9.0} decisions/s (best of 15 rounds; {sink})",
            if config.candidate_limit == usize::MAX { " (all candidates)" } else { "" },
            if top.is_some() { " (pick + alternates)" } else { " (full order)" },
            best * 1e6,
            1.0 / best
        );
    }
}
