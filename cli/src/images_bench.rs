//! `cargo real bench images [--json FILE]`: the project's image path and QEMU's block layer
//! side by side, in one run, on the same files.
//!
//! - overlay creation: `stackbed_images::disk::create_overlay_fast` (hand-written, in-process)
//!   and `create_overlay` (imago) vs `qemu-img create -f qcow2 -b base -F qcow2`,
//!   microseconds per overlay;
//! - 4 KiB random read/write and 1 MiB sequential read/write on raw, qcow2 and an empty
//!   overlay reading through to its qcow2 base, at queue depth 1 and at qemu-img bench's
//!   default depth (64). Ours: reads with O_DIRECT, and warm random reads at depth 64, through
//!   `stackbed_images::uring::DepthReader` (each request mapped through imago to host ranges,
//!   D host reads in flight with io_uring in offset order, D buffers of the reader's pool:
//!   2 MiB-aligned huge pages registered with the ring; threads if io_uring is unavailable,
//!   and the row's note says so); the other rows through imago's blocking API from
//!   min(D, CPUs) threads (D with O_DIRECT) sharing one open image, each with one request in
//!   flight. The image is opened (and the reader set up) before the clock starts. QEMU's
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
//! - the compute's image path for the simulator's calibration (`calibration` in the JSON,
//!   docs/calibration.md): glance download with SHA-256 verification into `_base` (source
//!   evicted and warm) vs `cp` + `sha256sum`, `force_raw_images` conversion vs
//!   `qemu-img convert -O raw`, instance overlays on the cached base, cache hits, the fixed
//!   cost of a download.
//!
//! Page cache and O_DIRECT are stated per row (`page_cache`, `o_direct`). The I/O grid runs
//! twice: warm (every file read once before it is measured; ours buffered, QEMU's tools
//! `-t writeback`), then with O_DIRECT on both sides (ours `OpenOptions::direct`: reads
//! through the depth reader, writes from one thread per queue slot with 4 KiB-aligned buffers;
//! QEMU's `-t none`, i.e. `qemu-img bench -c 1024 -d D -f FMT -s 1M -S 1M -t none FILE` for
//! the sequential rows, aio=threads: a 64-worker pool doing preadv), the files' pages dropped
//! before each run. If the filesystem refuses O_DIRECT the second grid runs buffered from a dropped
//! page cache and every such row says so. Files live in the system's temporary directory and
//! are removed afterwards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use stackbed_images::convert::{self, Durability};
use stackbed_images::disk::{self, Disk, OpenOptions};
use stackbed_images::uring::{Backend, DepthReader};
use stackbed_images::{qcow2, qemu};

/// Size of the images the I/O benchmarks run on.
const IO_IMAGE_BYTES: u64 = 256 << 20;
const RANDOM_OPS: usize = 20_000;
/// Sequential passes over the image, 1 MiB each request.
const SEQ_OPS: usize = 1024;
/// Sequential runs are short (tens of ms): each side is measured this often, best kept.
const SEQ_REPEATS: usize = 3;
/// qemu-img bench's default queue depth.
const QEMU_DEFAULT_DEPTH: usize = 64;
/// Random requests per side in the O_DIRECT rows (each one reaches the device).
const DIRECT_RANDOM_OPS: usize = 5_000;
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
    /// The page cache's state for the files this row reads: `warm` (read once before the
    /// measurement), `dropped` (evicted before it, `posix_fadvise(DONTNEED)`), `bypassed`
    /// (O_DIRECT).
    pub page_cache: String,
    /// Whether both sides opened the image with O_DIRECT (ours: `OpenOptions::direct`;
    /// QEMU's: `-t none`).
    pub o_direct: bool,
}

/// One figure for `stackbed_core::image_model`'s defaults (see docs/calibration.md).
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// The `ImageModel` field it calibrates.
    pub parameter: &'static str,
    pub measured: f64,
    pub unit: &'static str,
    /// The value compiled into `ImageModel::default()` at this revision.
    pub default: f64,
    pub how: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub revision: String,
    /// When (UTC) and where the figures were measured: CPU model, kernel, the temporary
    /// directory's filesystem.
    pub date: String,
    pub machine: String,
    /// Per row (`rows[].page_cache`); this summarises.
    pub page_cache: &'static str,
    /// Whether any row ran with O_DIRECT (`rows[].o_direct` per row).
    pub o_direct: bool,
    /// Why O_DIRECT rows ran without it, when the filesystem refused it.
    pub o_direct_refused: Option<String>,
    pub cpus: usize,
    pub rows: Vec<Row>,
    /// Measured figures of the image path for the simulator's cost model.
    pub calibration: Vec<Calibration>,
    pub checks: Vec<(String, bool, String)>,
}

/// How the I/O rows treat the page cache.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CacheMode {
    /// Files read once before the run; buffered I/O (QEMU: `-t writeback`).
    Warm,
    /// O_DIRECT on both sides (QEMU: `-t none`); the files' pages dropped before each run.
    Direct,
    /// O_DIRECT asked for but the filesystem refused it: buffered, pages dropped before
    /// each run (QEMU: `-t writeback`).
    Dropped,
}

impl CacheMode {
    fn page_cache(self) -> &'static str {
        match self {
            CacheMode::Warm => "warm",
            CacheMode::Direct => "bypassed (O_DIRECT; pages dropped before the run)",
            CacheMode::Dropped => "dropped before the run (O_DIRECT refused by the filesystem)",
        }
    }
    fn direct(self) -> bool {
        self == CacheMode::Direct
    }
    fn qemu_cache(self) -> &'static str {
        if self.direct() {
            "none"
        } else {
            "writeback"
        }
    }
    fn label(self) -> &'static str {
        match self {
            CacheMode::Warm => "warm",
            CacheMode::Direct => "O_DIRECT",
            CacheMode::Dropped => "dropped",
        }
    }
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
        page_cache: "warm".into(),
        o_direct: false,
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
        page_cache: "warm".into(),
        o_direct: false,
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

/// Threads that serve queue depth `depth` on our side where the row does not use the depth
/// reader (see [`read_at_depth`]): imago's `sync` API blocks, so each
/// thread keeps one request in flight. On page-cache-resident data a request is CPU work
/// (a copy), so more threads than CPUs only add switches: depth D uses min(D, CPUs) threads.
/// With O_DIRECT a request waits on the device, not the CPU: depth D is D threads.
fn workers(depth: usize, mode: CacheMode) -> usize {
    if mode == CacheMode::Warm {
        depth.min(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    } else {
        depth
    }
}

/// Runs the ops on `threads` threads sharing one open image; returns ops per second. The
/// image is opened before the clock starts (QEMU's side: qemu-img bench times its run only,
/// qemu-io's start-up is subtracted).
fn ours_io(path: &Path, pattern: Pattern, offs: &[u64], threads: usize, direct: bool) -> Result<f64, String> {
    let d = Disk::open(path, OpenOptions { writable: pattern.write(), direct }).map_err(|e| e.to_string())?;
    let block = pattern.block() as usize;
    let align = d.mem_align().max(4096);
    let per = offs.len().div_ceil(threads);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<(), String> {
        let handles: Vec<_> = offs
            .chunks(per)
            .enumerate()
            .map(|(i, chunk)| {
                let d = &d;
                s.spawn(move || -> Result<(), String> {
                    // Aligned for O_DIRECT (harmless without it).
                    let mut buf = disk::AlignedBuf::new(block, align);
                    Rng(i as u64 + 7).fill(buf.as_mut_slice());
                    for &o in chunk {
                        if pattern.write() {
                            d.write(buf.as_slice(), o).map_err(|e| e.to_string())?;
                        } else {
                            d.read(buf.as_mut_slice(), o).map_err(|e| e.to_string())?;
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

/// Reads the ops through `stackbed_images::uring::DepthReader` at queue depth `depth` (the
/// requests in the order given, `depth` of them in flight, a buffer each, as qemu-img bench
/// has); returns ops per second and what served them (io_uring, or threads where io_uring is
/// unavailable). The image is opened and the reader's ring and buffers set up before the clock
/// starts, as qemu-img bench allocates its buffers before its timer.
/// One run of our side through the depth reader.
struct DepthRun {
    /// Requests per second.
    rate: f64,
    backend: Backend,
    /// KiB of the buffer pool in huge pages, and the pool's KiB.
    huge_pages: Option<(u64, u64)>,
}

fn ours_read_at_depth(
    path: &Path,
    pattern: Pattern,
    offs: &[u64],
    depth: usize,
    direct: bool,
) -> Result<DepthRun, String> {
    let d = Disk::open(path, OpenOptions { writable: false, direct }).map_err(|e| e.to_string())?;
    let block = pattern.block() as usize;
    let mut reader = DepthReader::new(&d, depth);
    reader.reserve(block).map_err(|e| e.to_string())?;
    let reqs: Vec<(u64, usize)> = offs.iter().map(|&o| (o, block)).collect();
    let t = Instant::now();
    reader.read_each(&reqs, |_, _| Ok(())).map_err(|e| e.to_string())?;
    let rate = offs.len() as f64 / t.elapsed().as_secs_f64();
    Ok(DepthRun { rate, backend: reader.backend(), huge_pages: reader.pool_huge_pages() })
}

/// Which read rows our side serves through `uring::DepthReader` (io_uring at the row's depth)
/// rather than threads over `Disk::read`: every O_DIRECT read, and warm random reads at depth
/// (measured faster there). Warm sequential reads are page-cache copies that two threads do
/// faster than one ring; warm depth 1 is one blocking read; the `Dropped` fallback grid was
/// not measured with it and keeps the threads.
fn read_at_depth(pattern: Pattern, depth: usize, mode: CacheMode) -> bool {
    !pattern.write()
        && match mode {
            CacheMode::Direct => true,
            CacheMode::Warm => depth > 1 && pattern.random(),
            CacheMode::Dropped => false,
        }
}

fn fmt_of(path: &Path) -> &'static str {
    disk::detect_format(path).map(|f| f.name()).unwrap_or("raw")
}

/// qemu-io with a command script on stdin; wall seconds.
fn qemu_io_script(path: &Path, script: &str, mode: CacheMode) -> Result<f64, String> {
    let t = Instant::now();
    let mut child = Command::new("qemu-io")
        .args(["-f", fmt_of(path), "-t", mode.qemu_cache(), p(path)])
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

fn qemu_random(path: &Path, pattern: Pattern, offs: &[u64], depth: usize, mode: CacheMode) -> Result<f64, String> {
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
    let startup = (0..3).map(|_| qemu_io_script(path, "flush\n", mode)).collect::<Result<Vec<_>, _>>()?;
    let startup = startup.into_iter().fold(f64::INFINITY, f64::min);
    settle(path, mode)?;
    let total = qemu_io_script(path, &script, mode)?;
    Ok(offs.len() as f64 / (total - startup).max(1e-9))
}

fn qemu_sequential(path: &Path, pattern: Pattern, depth: usize, mode: CacheMode) -> Result<f64, String> {
    let count = SEQ_OPS.to_string();
    let depth_s = depth.to_string();
    let mut args = vec!["bench", "-c", &count, "-d", &depth_s, "-f", fmt_of(path), "-s", "1M", "-S", "1M"];
    args.extend(["-t", mode.qemu_cache()]);
    settle(path, mode)?;
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

/// Before a measured run: warm mode reads the file (and the qcow2 base) once; the other
/// modes evict their pages.
fn settle(path: &Path, mode: CacheMode) -> Result<(), String> {
    let files: Vec<PathBuf> = std::iter::once(path.to_path_buf())
        .chain(qcow2::Header::read(path).ok().and_then(|h| h.backing_file).map(PathBuf::from))
        .collect();
    for f in files {
        match mode {
            CacheMode::Warm => warm(&f)?,
            _ => disk::drop_page_cache(&f).map_err(|e| e.to_string())?,
        }
    }
    Ok(())
}

fn bench_io(dir: &Path, raw: &Path, qcow2: &Path, mode: CacheMode, rows: &mut Vec<Row>) -> Result<(), String> {
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
                let mut offs = offsets(pattern, IO_IMAGE_BYTES);
                if mode != CacheMode::Warm && pattern.random() {
                    offs.truncate(DIRECT_RANDOM_OPS);
                }
                let ours_file = target("ours")?;
                let repeats = if pattern.random() { 1 } else { SEQ_REPEATS };
                let queued = read_at_depth(pattern, depth, mode);
                let mut ours = 0f64;
                let mut backend = None;
                let mut huge = None;
                for _ in 0..repeats {
                    settle(&ours_file, mode)?;
                    let rate = if queued {
                        let run = ours_read_at_depth(&ours_file, pattern, &offs, depth, mode.direct())?;
                        backend = Some(run.backend);
                        huge = run.huge_pages;
                        run.rate
                    } else {
                        ours_io(&ours_file, pattern, &offs, workers(depth, mode), mode.direct())?
                    };
                    ours = ours.max(rate);
                }
                let qemu_file = target("qemu")?;
                let (qemu, reference) = if pattern.random() {
                    let r = qemu_random(&qemu_file, pattern, &offs, depth, mode)?;
                    (r, format!("qemu-io -t {} (start-up subtracted)", mode.qemu_cache()))
                } else {
                    let mut best = 0f64;
                    for _ in 0..SEQ_REPEATS {
                        best = best.max(qemu_sequential(&qemu_file, pattern, depth, mode)?);
                    }
                    (best, format!("qemu-img bench -t {} (best of 3, as ours)", mode.qemu_cache()))
                };
                let unit = if pattern.random() { "IOPS" } else { "MiB/s" };
                let mut row = rate_row(pattern.name(), kind, depth, unit, ours, qemu, &reference);
                row.page_cache = mode.page_cache().into();
                row.o_direct = mode.direct();
                let mut notes = Vec::new();
                if kind == "overlay" {
                    row.image = "empty overlay over the qcow2".into();
                    if pattern.write() {
                        notes.push("allocating writes (copy-on-write from the base)".to_string());
                    }
                }
                let requests = if pattern.random() && mode != CacheMode::Warm {
                    format!("; {} requests per side", offs.len())
                } else {
                    String::new()
                };
                match backend {
                    Some(Backend::IoUring { registered_buffers }) => notes.push(format!(
                        "ours: uring::DepthReader, io_uring with {depth} reads in flight in offset order, {depth} \
                         2 MiB-aligned MADV_HUGEPAGE buffers{}{}{requests}",
                        if registered_buffers { " registered with the ring (READ_FIXED)" } else { "" },
                        match huge {
                            Some((h, size)) => format!(" ({h} of {size} KiB in huge pages)"),
                            None => " (huge pages: unknown)".into(),
                        }
                    )),
                    Some(Backend::Threads { reason }) => notes.push(format!(
                        "ours: uring::DepthReader fell back to {depth} threads, one blocking read each \
                         (io_uring unavailable: {reason}){requests}"
                    )),
                    None if mode != CacheMode::Warm => {
                        notes.push(format!("ours: {} threads, 4 KiB-aligned buffers{requests}", workers(depth, mode)))
                    }
                    None => {}
                }
                if mode == CacheMode::Dropped {
                    notes.push("the filesystem refused O_DIRECT: buffered I/O from a dropped page cache".into());
                }
                row.note = notes.join("; ");
                println!(
                    "{:<22} {:<8} qd{:<3} {:<8} ours {:>10.0} {:<6} qemu {:>10.0}  ratio {:>5.2}",
                    pattern.name(),
                    kind,
                    depth,
                    mode.label(),
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
// the image path of a boot, for the simulator's calibration

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The compute's image path end to end, on this machine: glance download with SHA-256
/// verification into a fresh `_base` (source evicted from the page cache: the realistic
/// case, where the image comes from elsewhere; and source warm), `force_raw_images`
/// conversion of a qcow2 image, an instance's overlay on the cached base, a cache hit, and
/// the fixed cost of a download (a 4 KiB image). Each figure feeds an `ImageModel` default.
fn bench_image_path(
    dir: &Path,
    raw: &Path,
    qcow2: &Path,
    verify_mb_s: f64,
    rows: &mut Vec<Row>,
    calibration: &mut Vec<Calibration>,
    checks: &mut Vec<(String, bool, String)>,
) -> Result<(), String> {
    use stackbed_core::image_model::ImageModel;
    use stackbed_images::cache::{CacheConfig, ImageCache};
    use stackbed_images::disk::DiskFormat;
    use stackbed_images::glance::{ImageService, NewImage};
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let store = dir.join("glance");
    let glance = ImageService::open(&store).map_err(|x| e(&x))?;
    let upload = |name: &str, path: &Path, disk_format: DiskFormat| -> Result<_, String> {
        let mut f = std::fs::File::open(path).map_err(|x| e(&x))?;
        let new = NewImage {
            name: name.into(),
            disk_format,
            container_format: "bare".into(),
            properties: Default::default(),
        };
        glance.upload(new, &mut f).map_err(|x| e(&x))
    };
    let tiny = dir.join("tiny.raw");
    std::fs::write(&tiny, vec![0x5au8; 4096]).map_err(|x| e(&x))?;
    let raw_rec = upload("bench-raw", raw, DiskFormat::Raw)?;
    let qcow2_rec = upload("bench-qcow2", qcow2, DiskFormat::Qcow2)?;
    let tiny_rec = upload("bench-tiny", &tiny, DiskFormat::Raw)?;
    let cache_dir = dir.join("_base");
    let fresh_cache = |force_raw_images: bool| -> Result<ImageCache, String> {
        let _ = std::fs::remove_dir_all(&cache_dir);
        ImageCache::new(CacheConfig { base_dir: cache_dir.clone(), force_raw_images }).map_err(|x| e(&x))
    };
    let mb = raw_rec.size as f64 / 1e6;
    let src = store.join(&raw_rec.id);
    // Download + verify, 3 runs per source state; the reference is `cp` then `sha256sum`.
    let mut by_state = Vec::new();
    for cold in [true, false] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let cache = fresh_cache(false)?;
            if cold {
                disk::drop_page_cache(&src).map_err(|x| e(&x))?;
            } else {
                warm(&src)?;
            }
            let f = cache.fetch(&glance, &raw_rec.id).map_err(|x| e(&x))?;
            if f.hit || f.waited {
                return Err("the benchmark's first fetch was not a download".into());
            }
            ours.push(f.download_s);
            let copy = dir.join("cp-copy.raw");
            let _ = std::fs::remove_file(&copy);
            if cold {
                disk::drop_page_cache(&src).map_err(|x| e(&x))?;
            }
            let t = Instant::now();
            let st = Command::new("cp").arg(&src).arg(&copy).status().map_err(|x| format!("cp: {x}"))?;
            let out = Command::new("sha256sum").arg(&copy).output().map_err(|x| format!("sha256sum: {x}"))?;
            theirs.push(t.elapsed().as_secs_f64());
            let sum = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string();
            if !st.success() || sum != raw_rec.os_hash_value {
                return Err("cp + sha256sum disagreed with the image service's checksum".into());
            }
            let _ = std::fs::remove_file(&copy);
        }
        let (o, t) = (median(ours), median(theirs));
        let state = if cold { "source evicted" } else { "source warm" };
        let mut row = rate_row(
            &format!("glance download + sha256 into _base ({state})"),
            "256 MiB raw image",
            1,
            "MB/s",
            mb / o,
            mb / t,
            "cp, then sha256sum of the copy (two processes)",
        );
        row.page_cache = if cold { "dropped (source)" } else { "warm (source)" }.into();
        row.note = "ImageCache::fetch (ImageService::download: one pass that copies and hashes); median of 3; \
                    the store is a local directory (no network)"
            .into();
        rows.push(row);
        by_state.push((cold, o));
    }
    let cold_s = by_state.iter().find(|(c, _)| *c).map(|(_, s)| *s).unwrap_or(f64::NAN);
    let hash_s = mb / verify_mb_s;
    let transfer_s = cold_s - hash_s;
    // Subtracting the hashing time only where it leaves a transfer time worth measuring
    // (a tenth of the total or more); otherwise the whole fetch counts as transfer.
    let download_mb_s = if transfer_s > 0.1 * cold_s { mb / transfer_s } else { mb / cold_s };
    // The fixed cost: a 4 KiB image, 20 fresh caches, median.
    let mut fixed = Vec::new();
    for _ in 0..20 {
        let cache = fresh_cache(false)?;
        let f = cache.fetch(&glance, &tiny_rec.id).map_err(|x| e(&x))?;
        fixed.push(f.download_s);
    }
    let request_latency_s = median(fixed);
    // force_raw_images: the qcow2 image converted to raw in _base; reference qemu-img convert.
    let (mut conv, mut qconv) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let cache = fresh_cache(true)?;
        let f = cache.fetch(&glance, &qcow2_rec.id).map_err(|x| e(&x))?;
        conv.push(f.convert_s);
        let out = dir.join("qconv.raw");
        let _ = std::fs::remove_file(&out);
        let qsrc = store.join(&qcow2_rec.id);
        warm(&qsrc)?;
        let t = Instant::now();
        qemu::qemu_img(&["convert", "-t", "writeback", "-f", "qcow2", "-O", "raw", p(&qsrc), p(&out)])?;
        qconv.push(t.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&out);
    }
    let vmb = qcow2_rec.virtual_size as f64 / 1e6;
    let (conv_s, qconv_s) = (median(conv), median(qconv));
    let mut row = rate_row(
        "force_raw_images: qcow2 to raw in _base",
        "256 MiB qcow2, fully allocated",
        1,
        "MB/s",
        vmb / conv_s,
        vmb / qconv_s,
        "qemu-img convert -t writeback -f qcow2 -O raw",
    );
    row.note =
        "ImageCache::fetch with force_raw_images (convert_to_raw, synced); median of 3; source just downloaded (warm)"
            .into();
    row.page_cache = "warm (source)".into();
    rows.push(row);
    // Instance disks on the cached base, and cache hits.
    let cache = fresh_cache(false)?;
    let base = cache.fetch(&glance, &raw_rec.id).map_err(|x| e(&x))?.base;
    let n = 200;
    let t = Instant::now();
    for i in 0..n {
        cache.create_instance_disk(&base, &dir.join(format!("inst-{i}")), None).map_err(|x| e(&x))?;
    }
    let overlay_s = t.elapsed().as_secs_f64() / n as f64;
    let r = qemu::check(&dir.join("inst-0").join("disk"));
    checks.push(("instance disk on the cached base: qemu-img check".into(), r.is_ok(), r.err().unwrap_or_default()));
    for i in 0..n {
        let _ = std::fs::remove_dir_all(dir.join(format!("inst-{i}")));
    }
    let t = Instant::now();
    for _ in 0..1000 {
        let f = cache.fetch(&glance, &raw_rec.id).map_err(|x| e(&x))?;
        if !f.hit {
            return Err("a fetch of a cached image missed".into());
        }
    }
    let hit_s = t.elapsed().as_secs_f64() / 1000.0;
    let _ = std::fs::remove_dir_all(&cache_dir);
    let d = ImageModel::default();
    let machine = "the machine in `machine`";
    calibration.extend([
        Calibration {
            parameter: "download_mb_per_s",
            measured: download_mb_s,
            unit: "MB/s",
            default: d.download_mb_per_s,
            how: format!(
                "row `glance download + sha256 into _base (source evicted)`: {:.4} s for {mb:.1} MB, minus the \
                 hashing time at verify_mb_per_s ({hash_s:.4} s); local store, {machine}",
                cold_s
            ),
        },
        Calibration {
            parameter: "request_latency_s",
            measured: request_latency_s,
            unit: "s",
            default: d.request_latency_s,
            how: "ImageCache::fetch of a 4 KiB image into a fresh _base, median of 20 (open, create, rename)".into(),
        },
        Calibration {
            parameter: "verify_mb_per_s",
            measured: verify_mb_s,
            unit: "MB/s",
            default: d.verify_mb_per_s,
            how: "row `sha256 verify` (glance::sha256_file of the warm 256 MiB image, best of 3)".into(),
        },
        Calibration {
            parameter: "convert_mb_per_s",
            measured: vmb / conv_s,
            unit: "MB/s",
            default: d.convert_mb_per_s,
            how: "row `force_raw_images: qcow2 to raw in _base` (MB of virtual disk per second, synced)".into(),
        },
        Calibration {
            parameter: "overlay_create_s",
            measured: overlay_s,
            unit: "s",
            default: d.overlay_create_s,
            how: format!("ImageCache::create_instance_disk on the cached base, mean of {n}"),
        },
        Calibration {
            parameter: "cache_hit_s",
            measured: hit_s,
            unit: "s",
            default: d.cache_hit_s,
            how: "ImageCache::fetch of a cached image (lookup and mtime touch), mean of 1000".into(),
        },
    ]);
    for c in calibration.iter() {
        println!(
            "calibration: {:<18} measured {:>12.6} {:<4} (default {}) <- {}",
            c.parameter, c.measured, c.unit, c.default, c.how
        );
    }
    for r in &rows[rows.len() - 3..] {
        println!("{}: ours {:.1} {}, reference {:.1}, ratio {:.2}", r.benchmark, r.ours, r.unit, r.qemu, r.ratio);
    }
    let _ = std::fs::remove_file(&tiny);
    let _ = std::fs::remove_dir_all(&store);
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
                page_cache: "warm (source)".into(),
                o_direct: false,
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
    let direct = disk::o_direct_supported(dir).map_err(|e| e.to_string());
    let mode = if direct.is_ok() { CacheMode::Direct } else { CacheMode::Dropped };
    println!("machine: {}", machine(dir));
    println!(
        "image benchmarks in {} | I/O rows: page cache warm, then {} | qemu: {}",
        dir.display(),
        match &direct {
            Ok(()) => "O_DIRECT on both sides (qemu -t none)".to_string(),
            Err(why) => format!("page cache dropped, no O_DIRECT (the filesystem refused it: {why})"),
        },
        qemu_version()
    );
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    let mut calibration = Vec::new();
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
    bench_io(dir, &raw, &qcow2, CacheMode::Warm, &mut rows)?;
    bench_io(dir, &raw, &qcow2, mode, &mut rows)?;
    // The overlays the write benchmarks left: ours must pass qemu-img check.
    let o = dir.join("overlay-ours.qcow2");
    let r = qemu::check(&o);
    checks.push((
        "overlay after our random and sequential writes: qemu-img check".into(),
        r.is_ok(),
        r.err().unwrap_or_default(),
    ));
    bench_misc(dir, &raw, &qcow2, &mut rows)?;
    let verify = rows.iter().find(|r| r.benchmark == "sha256 verify").map_or(f64::NAN, |r| r.ours);
    bench_image_path(dir, &raw, &qcow2, verify, &mut rows, &mut calibration, &mut checks)?;
    let _ = std::fs::remove_file(&raw);
    bench_convert(dir, &mut rows, &mut checks)?;
    for (name, ok, why) in &checks {
        println!("check: {} {name} {why}", if *ok { "ok  " } else { "FAIL" });
    }
    Ok(Report {
        revision,
        date: command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        machine: machine(dir),
        page_cache: "per row: warm (read once before the run), bypassed (O_DIRECT) or dropped (evicted before it)",
        o_direct: rows.iter().any(|r| r.o_direct),
        o_direct_refused: direct.err(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        rows,
        calibration,
        checks,
    })
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine(dir: &Path) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} x {model}; Linux {}; {} filesystem for {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        kernel.trim(),
        command_line("stat", &["-f", "-c", "%T", p(dir)]),
        dir.display()
    )
}

fn qemu_version() -> String {
    qemu::qemu_img(&["--version"])
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|e| e)
}
