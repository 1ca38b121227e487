//! `cargo real bench images [--json FILE]`: the project's image path and QEMU's block layer
//! side by side, in one run, on the same files.
//!
//! - overlay creation: `stackbed_images::disk::create_overlay_fast` (hand-written, in-process)
//!   and `create_overlay` (imago) vs `qemu-img create -f qcow2 -b base -F qcow2`,
//!   microseconds per overlay;
//! - 4 KiB random read/write and 1 MiB sequential read/write on raw, qcow2 and an empty
//!   overlay reading through to its qcow2 base, at queue depth 1 and at qemu-img bench's
//!   default depth (64): ours through imago (depth D = min(D, CPUs) threads sharing one open
//!   image, each with one request in flight), QEMU's
//!   through `qemu-img bench` (sequential, it reports its own run time) and `qemu-io` (random:
//!   the same offsets as a command script on stdin, depth 64 as batches of 64 `aio_read`/
//!   `aio_write` and an `aio_flush`; its process start-up, measured with an empty script on the
//!   same file, is subtracted);
//! - raw to qcow2 conversion of a 1 GiB image (one third data, one third written zeroes, one
//!   third holes): the hand-written converter, a plain loop over imago, and `qemu-img convert`,
//!   all synced at the end (qemu-img's default cache mode flushes on close);
//! - SHA-256 verification vs `sha256sum`, config drive creation vs `genisoimage` (as nova
//!   runs it), internal snapshot creation vs `qemu-img snapshot -c`;
//! - compatibility: `qemu-img check` and `qemu-img compare` on what we wrote, and qemu-img's
//!   output read back through our path.
//!
//! Page cache: every file is read once before it is measured (warm), no run uses O_DIRECT
//! (ours opens without it; QEMU's tools run with `-t writeback`). Files live in the system's
//! temporary directory and are removed afterwards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use stackbed_images::convert::{self, Durability};
use stackbed_images::disk::{self, Disk, OpenOptions};
use stackbed_images::qemu;

/// Size of the images the I/O benchmarks run on.
const IO_IMAGE_BYTES: u64 = 256 << 20;
const RANDOM_OPS: usize = 20_000;
/// Sequential passes over the image, 1 MiB each request.
const SEQ_OPS: usize = 1024;
/// Sequential runs are short (tens of ms): each side is measured this often, best kept.
const SEQ_REPEATS: usize = 3;
/// qemu-img bench's default queue depth.
const QEMU_DEFAULT_DEPTH: usize = 64;
const OVERLAYS: usize = 200;
const QEMU_OVERLAYS: usize = 50;
const CONVERT_BYTES: u64 = 1 << 30;
const CONVERT_RUNS: usize = 5;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub benchmark: String,
    pub image: String,
    pub depth: usize,
    pub unit: &'static str,
    pub ours: f64,
    pub qemu: f64,
    /// How much better ours is: qemu/ours for times, ours/qemu for rates (>= 1.0: ours is no worse).
    pub ratio: f64,
    pub reference: String,
    pub note: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub revision: String,
    pub page_cache: &'static str,
    pub o_direct: bool,
    pub cpus: usize,
    pub rows: Vec<Row>,
    pub checks: Vec<(String, bool, String)>,
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap_or("")
}

/// xorshift64*: deterministic offsets and data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn warm(path: &Path) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::copy(&mut f, &mut std::io::sink()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

fn rate_row(
    benchmark: &str,
    image: &str,
    depth: usize,
    unit: &'static str,
    ours: f64,
    qemu: f64,
    reference: &str,
) -> Row {
    Row {
        benchmark: benchmark.into(),
        image: image.into(),
        depth,
        unit,
        ours,
        qemu,
        ratio: ours / qemu.max(1e-12),
        reference: reference.into(),
        note: String::new(),
    }
}

// ------------------------------------------------------------------------------------------
// overlays

fn bench_overlays(dir: &Path, base: &Path) -> Result<Vec<Row>, String> {
    let per_overlay_us = |n: usize, f: &mut dyn FnMut(usize) -> Result<(), String>| -> Result<f64, String> {
        let t = Instant::now();
        for i in 0..n {
            f(i)?;
        }
        Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
    };
    let fast_us = per_overlay_us(OVERLAYS, &mut |i| {
        disk::create_overlay_fast(&dir.join(format!("fast-{i}.qcow2")), base, None).map_err(|e| e.to_string())
    })?;
    let imago_us = per_overlay_us(OVERLAYS, &mut |i| {
        disk::create_overlay(&dir.join(format!("imago-{i}.qcow2")), base).map_err(|e| e.to_string())
    })?;
    let qemu_us = per_overlay_us(QEMU_OVERLAYS, &mut |i| {
        let o = dir.join(format!("qemu-{i}.qcow2"));
        qemu::qemu_img(&["create", "-q", "-f", "qcow2", "-b", p(base), "-F", "qcow2", p(&o)]).map(|_| ())
    })?;
    // Spot checks: the overlays are valid and read like their base.
    for o in ["fast-0.qcow2", "imago-0.qcow2"] {
        qemu::check(&dir.join(o))?;
    }
    for i in 0..OVERLAYS.max(QEMU_OVERLAYS) {
        for prefix in ["fast", "imago", "qemu"] {
            let _ = std::fs::remove_file(dir.join(format!("{prefix}-{i}.qcow2")));
        }
    }
    let row = |benchmark: &str, ours: f64, note: &str| Row {
        benchmark: benchmark.into(),
        image: "qcow2 overlay on a 256 MiB qcow2 base".into(),
        depth: 1,
        unit: "us/overlay",
        ours,
        qemu: qemu_us,
        ratio: qemu_us / ours.max(1e-12),
        reference: "qemu-img create -f qcow2 -b base -F qcow2 (a process per overlay)".into(),
        note: note.into(),
    };
    Ok(vec![
        row(
            "overlay create",
            fast_us,
            &format!(
                "hand-written (disk::create_overlay_fast); {OVERLAYS} ours, {QEMU_OVERLAYS} qemu-img; nobody syncs"
            ),
        ),
        row(
            "overlay create, through imago",
            imago_us,
            &format!("imago create (disk::create_overlay); {OVERLAYS} ours, {QEMU_OVERLAYS} qemu-img; nobody syncs"),
        ),
    ])
}

// ------------------------------------------------------------------------------------------
// I/O

#[derive(Clone, Copy, PartialEq)]
enum Pattern {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::RandRead => "4k random read",
            Pattern::RandWrite => "4k random write",
            Pattern::SeqRead => "1M sequential read",
            Pattern::SeqWrite => "1M sequential write",
        }
    }
    fn block(self) -> u64 {
        match self {
            Pattern::RandRead | Pattern::RandWrite => 4096,
            _ => 1 << 20,
        }
    }
    fn write(self) -> bool {
        matches!(self, Pattern::RandWrite | Pattern::SeqWrite)
    }
    fn random(self) -> bool {
        matches!(self, Pattern::RandRead | Pattern::RandWrite)
    }
}

fn offsets(pattern: Pattern, size: u64) -> Vec<u64> {
    if pattern.random() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        (0..RANDOM_OPS).map(|_| (rng.next() % (size / 4096)) * 4096).collect()
    } else {
        (0..SEQ_OPS as u64).map(|i| (i << 20) % size).collect()
    }
}

/// Threads that serve queue depth `depth` on our side: imago's `sync` API blocks, so each
/// thread keeps one request in flight. On page-cache-resident data a request is CPU work
/// (a copy), so more threads than CPUs only add switches: depth D uses min(D, CPUs) threads.
fn workers(depth: usize) -> usize {
    depth.min(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Runs the ops on `threads` threads sharing one open image; returns ops per second.
fn ours_io(path: &Path, pattern: Pattern, offs: &[u64], threads: usize) -> Result<f64, String> {
    let d = Disk::open(path, OpenOptions { writable: pattern.write(), direct: false }).map_err(|e| e.to_string())?;
    let block = pattern.block() as usize;
    let per = offs.len().div_ceil(threads);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<(), String> {
        let handles: Vec<_> = offs
            .chunks(per)
            .enumerate()
            .map(|(i, chunk)| {
                let d = &d;
                s.spawn(move || -> Result<(), String> {
                    let mut buf = vec![0u8; block];
                    Rng(i as u64 + 7).fill(&mut buf);
                    for &o in chunk {
                        if pattern.write() {
                            d.write(&buf, o).map_err(|e| e.to_string())?;
                        } else {
                            d.read(&mut buf, o).map_err(|e| e.to_string())?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "benchmark thread panicked".to_string())??;
        }
        Ok(())
    })?;
    d.flush().map_err(|e| e.to_string())?;
    Ok(offs.len() as f64 / t.elapsed().as_secs_f64())
}

fn fmt_of(path: &Path) -> &'static str {
    disk::detect_format(path).map(|f| f.name()).unwrap_or("raw")
}

/// qemu-io with a command script on stdin; wall seconds.
fn qemu_io_script(path: &Path, script: &str) -> Result<f64, String> {
    let t = Instant::now();
    let mut child = Command::new("qemu-io")
        .args(["-f", fmt_of(path), "-t", "writeback", p(path)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run qemu-io ({e}); install qemu-utils"))?;
    child
        .stdin
        .take()
        .ok_or("qemu-io stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| format!("qemu-io stdin: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("qemu-io: {e}"))?;
    if !out.status.success() {
        return Err(format!("qemu-io failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(t.elapsed().as_secs_f64())
}

fn qemu_random(path: &Path, pattern: Pattern, offs: &[u64], depth: usize) -> Result<f64, String> {
    let (sync_cmd, aio_cmd) = if pattern.write() { ("write", "aio_write") } else { ("read", "aio_read") };
    let mut script = String::with_capacity(offs.len() * 32);
    for batch in offs.chunks(depth) {
        for o in batch {
            let cmd = if depth == 1 { sync_cmd } else { aio_cmd };
            script += &format!("{cmd} -q {o} 4k\n");
        }
        if depth > 1 {
            script += "aio_flush\n";
        }
    }
    script += "flush\n";
    let startup = (0..3).map(|_| qemu_io_script(path, "flush\n")).collect::<Result<Vec<_>, _>>()?;
    let startup = startup.into_iter().fold(f64::INFINITY, f64::min);
    let total = qemu_io_script(path, &script)?;
    Ok(offs.len() as f64 / (total - startup).max(1e-9))
}

fn qemu_sequential(path: &Path, pattern: Pattern, depth: usize) -> Result<f64, String> {
    let count = SEQ_OPS.to_string();
    let depth_s = depth.to_string();
    let mut args = vec!["bench", "-c", &count, "-d", &depth_s, "-f", fmt_of(path), "-s", "1M", "-S", "1M"];
    args.extend(["-t", "writeback"]);
    if pattern.write() {
        args.push("-w");
    }
    args.push(p(path));
    let out = qemu::qemu_img(&args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let secs: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Run completed in ").and_then(|r| r.split_whitespace().next()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("cannot read qemu-img bench output: {text}"))?;
    Ok(SEQ_OPS as f64 / secs.max(1e-9))
}

fn bench_io(dir: &Path, raw: &Path, qcow2: &Path, rows: &mut Vec<Row>) -> Result<(), String> {
    for pattern in [Pattern::RandRead, Pattern::SeqRead, Pattern::RandWrite, Pattern::SeqWrite] {
        for depth in [1, QEMU_DEFAULT_DEPTH] {
            for kind in ["raw", "qcow2", "overlay"] {
                // Writes to an overlay allocate: each side gets a fresh overlay.
                let target = |side: &str| -> Result<PathBuf, String> {
                    Ok(match kind {
                        "raw" => raw.to_path_buf(),
                        "qcow2" => qcow2.to_path_buf(),
                        _ => {
                            let o = dir.join(format!("overlay-{side}.qcow2"));
                            let _ = std::fs::remove_file(&o);
                            disk::create_overlay(&o, qcow2).map_err(|e| e.to_string())?;
                            o
                        }
                    })
                };
                let offs = offsets(pattern, IO_IMAGE_BYTES);
                let ours_file = target("ours")?;
                warm(&ours_file)?;
                warm(qcow2)?;
                let repeats = if pattern.random() { 1 } else { SEQ_REPEATS };
                let mut ours = 0f64;
                for _ in 0..repeats {
                    ours = ours.max(ours_io(&ours_file, pattern, &offs, workers(depth))?);
                }
                let qemu_file = target("qemu")?;
                warm(&qemu_file)?;
                let (qemu, reference) = if pattern.random() {
                    (qemu_random(&qemu_file, pattern, &offs, depth)?, "qemu-io (start-up subtracted)")
                } else {
                    let mut best = 0f64;
                    for _ in 0..SEQ_REPEATS {
                        best = best.max(qemu_sequential(&qemu_file, pattern, depth)?);
                    }
                    (best, "qemu-img bench (best of 3, as ours)")
                };
                let unit = if pattern.random() { "IOPS" } else { "MiB/s" };
                let mut row = rate_row(pattern.name(), kind, depth, unit, ours, qemu, reference);
                if kind == "overlay" {
                    row.image = "empty overlay over the qcow2".into();
                    if pattern.write() {
                        row.note = "allocating writes (copy-on-write from the base)".into();
                    }
                }
                println!(
                    "{:<22} {:<8} qd{:<3} ours {:>10.0} {:<6} qemu {:>10.0}  ratio {:>5.2}",
                    pattern.name(),
                    kind,
                    depth,
                    ours,
                    unit,
                    qemu,
                    row.ratio
                );
                rows.push(row);
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// checksum, config drive, internal snapshot

fn time_it(f: &mut dyn FnMut() -> Result<(), String>) -> Result<f64, String> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

fn best_of(n: usize, f: &mut dyn FnMut() -> Result<(), String>) -> Result<f64, String> {
    (0..n).map(|_| time_it(f)).try_fold(f64::INFINITY, |m, t| t.map(|t| m.min(t)))
}

fn bench_misc(dir: &Path, raw: &Path, qcow2: &Path, rows: &mut Vec<Row>) -> Result<(), String> {
    use stackbed_images::{configdrive, glance, snapshot};
    // SHA-256 of the 256 MiB image (the image service's download verification).
    warm(raw)?;
    let mut ours_sum = String::new();
    let ours = best_of(3, &mut || {
        ours_sum = glance::sha256_file(raw).map_err(|e| e.to_string())?;
        Ok(())
    })?;
    let mut theirs_sum = String::new();
    let theirs = best_of(3, &mut || {
        let out = Command::new("sha256sum").arg(raw).output().map_err(|e| format!("sha256sum: {e}"))?;
        theirs_sum = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string();
        Ok(())
    })?;
    if ours_sum != theirs_sum {
        return Err(format!("sha256 differs: ours {ours_sum}, sha256sum {theirs_sum}"));
    }
    let mb = IO_IMAGE_BYTES as f64 / 1e6;
    let mut row = rate_row("sha256 verify", "256 MiB raw", 1, "MB/s", mb / ours, mb / theirs, "sha256sum (coreutils)");
    row.note = "best of 3; calibrates image_model.verify_mb_per_s".into();
    rows.push(row);

    // Config drive: ours in-process vs genisoimage as nova runs it.
    let meta = configdrive::InstanceMetadata {
        uuid: "0b1c2d3e-0000-4000-8000-000000000001".into(),
        name: "bench".into(),
        hostname: "bench".into(),
        project_id: "demo".into(),
        availability_zone: "nova".into(),
        launch_index: 0,
        meta: Default::default(),
        public_keys: Default::default(),
    };
    let n = 50;
    let ours = time_it(&mut || {
        for i in 0..n {
            configdrive::write(&dir.join(format!("cd-{i}.iso")), &meta, Some(b"#cloud-config\n"))?;
        }
        Ok(())
    })? / n as f64;
    let tree = dir.join("cd-tree");
    for (path, data) in configdrive::files(&meta, Some(b"#cloud-config\n")) {
        let p = tree.join(path);
        std::fs::create_dir_all(p.parent().unwrap_or(&tree)).map_err(|e| e.to_string())?;
        std::fs::write(&p, data).map_err(|e| e.to_string())?;
    }
    let theirs = time_it(&mut || {
        for i in 0..10 {
            let o = dir.join(format!("g-{i}.iso"));
            let st = Command::new("genisoimage")
                .args(["-o", p(&o), "-ldots", "-allow-lowercase", "-allow-multidot", "-l", "-quiet", "-J", "-r"])
                .args(["-V", "config-2", p(&tree)])
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("cannot run genisoimage ({e}); install genisoimage"))?;
            if !st.success() {
                return Err("genisoimage failed".into());
            }
        }
        Ok(())
    })? / 10.0;
    let mut row = rate_row("config drive", "ISO 9660, 4 files", 1, "us/drive", ours * 1e6, theirs * 1e6, "");
    row.ratio = theirs / ours;
    row.reference = "genisoimage -J -r -V config-2 (nova's command, a process per drive)".into();
    row.note = format!("{n} ours, 10 genisoimage; no sync");
    rows.push(row);

    // Internal snapshot of the 256 MiB qcow2 (fully allocated): ours vs qemu-img snapshot -c.
    let (a, b) = (dir.join("snap-ours.qcow2"), dir.join("snap-qemu.qcow2"));
    std::fs::copy(qcow2, &a).map_err(|e| e.to_string())?;
    std::fs::copy(qcow2, &b).map_err(|e| e.to_string())?;
    let mut i = 0;
    let ours = best_of(3, &mut || {
        i += 1;
        snapshot::create(&a, &format!("s{i}")).map(|_| ()).map_err(|e| e.to_string())
    })?;
    let mut j = 0;
    let theirs = best_of(3, &mut || {
        j += 1;
        qemu::qemu_img(&["snapshot", "-c", &format!("s{j}"), p(&b)]).map(|_| ())
    })?;
    qemu::check(&a)?;
    let mut row =
        rate_row("internal snapshot create", "256 MiB qcow2, fully allocated", 1, "ms", ours * 1e3, theirs * 1e3, "");
    row.ratio = theirs / ours;
    row.reference = "qemu-img snapshot -c".into();
    row.note = "best of 3 (1st, 2nd, 3rd snapshot of the image); both sync".into();
    rows.push(row);
    for r in &rows[rows.len() - 3..] {
        println!("{}: ours {:.1} {}, reference {:.1}, ratio {:.2}", r.benchmark, r.ours, r.unit, r.qemu, r.ratio);
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// conversion

fn mixed_image(path: &Path, size: u64) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).map_err(|e| e.to_string())?;
    f.set_len(size).map_err(|e| e.to_string())?;
    let seg = 1u64 << 20;
    let mut rng = Rng(42);
    let mut buf = vec![0u8; seg as usize];
    let zeros = vec![0u8; seg as usize];
    for (i, at) in (0..size).step_by(seg as usize).enumerate() {
        match i % 3 {
            0 => {
                rng.fill(&mut buf);
                f.write_all_at(&buf, at).map_err(|e| e.to_string())?;
            }
            1 => f.write_all_at(&zeros, at).map_err(|e| e.to_string())?,
            _ => {}
        }
    }
    f.sync_all().map_err(|e| e.to_string())
}

fn bench_convert(dir: &Path, rows: &mut Vec<Row>, checks: &mut Vec<(String, bool, String)>) -> Result<(), String> {
    let src = dir.join("convert-src.raw");
    mixed_image(&src, CONVERT_BYTES)?;
    warm(&src)?;
    let ours_out = dir.join("convert-ours.qcow2");
    let imago_out = dir.join("convert-imago.qcow2");
    let qemu_out = dir.join("convert-qemu.qcow2");
    for (durability, label, cache) in
        [(Durability::Sync, "synced", "writeback"), (Durability::NoSync, "not synced", "unsafe")]
    {
        let (mut ours, mut imago, mut qemu) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..CONVERT_RUNS {
            // Same starting state for every side: no output file to truncate, nothing dirty
            // in the page cache from the previous run.
            let fresh = || -> Result<(), String> {
                for f in [&ours_out, &imago_out, &qemu_out] {
                    let _ = std::fs::remove_file(f);
                }
                Command::new("sync").status().map_err(|e| format!("sync: {e}"))?;
                Ok(())
            };
            let mut sides: Vec<u8> = vec![0, 1, 2];
            sides.rotate_left(run % 3);
            for side in sides {
                fresh()?;
                let t = Instant::now();
                match side {
                    0 => {
                        convert::convert_raw_to_qcow2(&src, &ours_out, durability).map_err(|e| e.to_string())?;
                        ours.push(t.elapsed().as_secs_f64());
                    }
                    1 => {
                        qemu::qemu_img(&["convert", "-t", cache, "-f", "raw", "-O", "qcow2", p(&src), p(&qemu_out)])?;
                        qemu.push(t.elapsed().as_secs_f64());
                    }
                    _ => {
                        convert::convert_with_imago(&src, &imago_out, durability).map_err(|e| e.to_string())?;
                        imago.push(t.elapsed().as_secs_f64());
                    }
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (o, i, q) = (median(&mut ours), median(&mut imago), median(&mut qemu));
        let note = format!(
            "1 GiB raw: 1/3 data, 1/3 written zeroes, 1/3 holes; median of {CONVERT_RUNS}, sides in rotating order, \
             each after `sync` and with no output file; {label}; source warm"
        );
        let reference = format!("qemu-img convert -t {cache} -f raw -O qcow2");
        for (name, secs) in [("convert raw to qcow2", o), ("convert raw to qcow2, plain imago loop", i)] {
            rows.push(Row {
                benchmark: format!("{name} ({label})"),
                image: "1 GiB mixed".into(),
                depth: 1,
                unit: "s",
                ours: secs,
                qemu: q,
                ratio: q / secs,
                reference: reference.clone(),
                note: note.clone(),
            });
        }
        println!(
            "convert 1 GiB raw->qcow2 ({label}): ours {o:.3} s, plain imago loop {i:.3} s, qemu-img {q:.3} s; \
             ratio ours {:.2}, imago {:.2}",
            q / o,
            q / i
        );
    }
    // Leave one output of each for the checks.
    convert::convert_raw_to_qcow2(&src, &ours_out, Durability::NoSync).map_err(|e| e.to_string())?;
    convert::convert_with_imago(&src, &imago_out, Durability::NoSync).map_err(|e| e.to_string())?;
    qemu::qemu_img(&["convert", "-f", "raw", "-O", "qcow2", p(&src), p(&qemu_out)])?;
    for (name, out) in [("hand-written converter", &ours_out), ("imago loop", &imago_out)] {
        let r = qemu::check(out).and_then(|_| qemu::compare(&src, out));
        checks.push((
            format!("{name}: qemu-img check + compare with the source"),
            r.is_ok(),
            r.err().unwrap_or_default(),
        ));
    }
    // qemu-img's output through our path.
    let r = read_back_equal(&qemu_out, &src);
    checks.push((
        "qemu-img convert output read back through imago equals the source".into(),
        r.is_ok(),
        r.err().unwrap_or_default(),
    ));
    for f in [&src, &ours_out, &imago_out, &qemu_out] {
        let _ = std::fs::remove_file(f);
    }
    Ok(())
}

fn read_back_equal(image: &Path, raw: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let d = Disk::open(image, OpenOptions::default()).map_err(|e| e.to_string())?;
    let f = std::fs::File::open(raw).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let step = 4u64 << 20;
    let (mut a, mut b) = (vec![0u8; step as usize], vec![0u8; step as usize]);
    let mut at = 0;
    while at < len {
        let n = step.min(len - at) as usize;
        d.read(&mut a[..n], at).map_err(|e| e.to_string())?;
        f.read_exact_at(&mut b[..n], at).map_err(|e| e.to_string())?;
        if a[..n] != b[..n] {
            return Err(format!("{} differs from {} near byte {at}", image.display(), raw.display()));
        }
        at += n as u64;
    }
    Ok(())
}

pub fn run(revision: String) -> Result<Report, String> {
    qemu::qemu_img(&["--version"])?;
    let dir = std::env::temp_dir().join(format!("stackbed-bench-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run_in(&dir, revision);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(dir: &Path, revision: String) -> Result<Report, String> {
    println!("image benchmarks in {} | page cache warm | no O_DIRECT | qemu: {}", dir.display(), qemu_version());
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    // A 256 MiB raw image full of data, and the same as qcow2 (our converter).
    let raw = dir.join("io.raw");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&raw).map_err(|e| e.to_string())?;
        let mut rng = Rng(1);
        let mut buf = vec![0u8; 4 << 20];
        for at in (0..IO_IMAGE_BYTES).step_by(buf.len()) {
            rng.fill(&mut buf);
            f.write_all_at(&buf, at).map_err(|e| e.to_string())?;
        }
    }
    let qcow2 = dir.join("io.qcow2");
    convert::convert_raw_to_qcow2(&raw, &qcow2, Durability::NoSync).map_err(|e| e.to_string())?;
    let r = qemu::check(&qcow2).and_then(|_| qemu::compare(&raw, &qcow2));
    checks.push((
        "256 MiB qcow2 written by us: qemu-img check + compare".to_string(),
        r.is_ok(),
        r.err().unwrap_or_default(),
    ));

    for row in bench_overlays(dir, &qcow2)? {
        println!("{}: ours {:.1} us, qemu-img {:.1} us, ratio {:.1}x", row.benchmark, row.ours, row.qemu, row.ratio);
        rows.push(row);
    }
    bench_io(dir, &raw, &qcow2, &mut rows)?;
    // The overlays the write benchmarks left: ours must pass qemu-img check.
    let o = dir.join("overlay-ours.qcow2");
    let r = qemu::check(&o);
    checks.push((
        "overlay after our random and sequential writes: qemu-img check".into(),
        r.is_ok(),
        r.err().unwrap_or_default(),
    ));
    bench_misc(dir, &raw, &qcow2, &mut rows)?;
    let _ = std::fs::remove_file(&raw);
    bench_convert(dir, &mut rows, &mut checks)?;
    for (name, ok, why) in &checks {
        println!("check: {} {name} {why}", if *ok { "ok  " } else { "FAIL" });
    }
    Ok(Report {
        revision,
        page_cache: "warm (every file read once before it is measured)",
        o_direct: false,
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        rows,
        checks,
    })
}

fn qemu_version() -> String {
    qemu::qemu_img(&["--version"])
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|e| e)
}
