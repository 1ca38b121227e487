//! `cargo run --release -p stackbed-images --example convert -- SRC.raw DST.qcow2 [hand|imago] [sync|nosync]`:
//! one conversion, timed (for profiling the converter outside the benchmark).

#[cfg(madsim)]
fn main() {
    eprintln!("the converter works on real files: build without --cfg madsim");
}

#[cfg(not(madsim))]
fn main() {
    use std::path::Path;
    use std::time::Instant;

    use stackbed_images::convert::{convert_raw_to_qcow2, convert_with_imago, Durability};

    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: convert SRC.raw DST.qcow2 [hand|imago] [sync|nosync]");
        std::process::exit(2);
    }
    let durability = if args.get(4).is_some_and(|a| a == "nosync") { Durability::NoSync } else { Durability::Sync };
    let t = Instant::now();
    let stats = if args.get(3).is_some_and(|a| a == "imago") {
        convert_with_imago(Path::new(&args[1]), Path::new(&args[2]), durability)
    } else {
        convert_raw_to_qcow2(Path::new(&args[1]), Path::new(&args[2]), durability)
    };
    match stats {
        Ok(s) => println!("{:.3} s {s:?}", t.elapsed().as_secs_f64()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
