//! Reads at a queue depth (`stackbed_images::uring`) against `Disk::read`: the same bytes on
//! raw, qcow2 (data, explicit zeroes, unallocated and compressed clusters, a host layout out of
//! guest order), an overlay with clusters written over its base; depth 1 and 64; buffered and
//! O_DIRECT; aligned and unaligned requests and tails past the end of the disk. A corrupt image
//! gives an error, not a panic. The compressed case needs qemu-img (scripts/test.sh installs it).
//!
//! Where io_uring is unavailable the thread path is still tested and the io_uring part is
//! skipped with a note on stderr; `STACKBED_REQUIRE_URING=1` makes that a failure instead.
#![cfg(not(madsim))]

use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use stackbed_images::disk::{self, AlignedBuf, Disk, DiskError, OpenOptions};
use stackbed_images::uring::{Backend, DepthReader, MAX_POOL};

mod common;
use common::pattern;

const CLUSTER: u64 = 65536;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Requests over a disk of `size` bytes: 1 MiB sequential ones covering it and running past
/// its end, 4 KiB-aligned random ones, and unaligned ones of odd lengths.
fn requests(size: u64, seed: u64) -> Vec<(u64, usize)> {
    let mut reqs: Vec<(u64, usize)> = (0..size.div_ceil(1 << 20) + 1).map(|i| (i << 20, 1 << 20)).collect();
    let mut rng = Rng(seed | 1);
    for _ in 0..40 {
        reqs.push((rng.below(size / 4096) * 4096, (1 + rng.below(64)) as usize * 4096));
    }
    for _ in 0..40 {
        reqs.push((rng.below(size + 4096), 1 + rng.below(300_000) as usize));
    }
    reqs.push((size - 1000, 5000));
    reqs.push((size + 8192, 4096));
    reqs
}

fn expected(d: &Disk, reqs: &[(u64, usize)]) -> Vec<Vec<u8>> {
    reqs.iter()
        .map(|&(o, n)| {
            let mut b = AlignedBuf::new(n, 4096);
            d.read(b.as_mut_slice(), o).unwrap();
            b.as_slice().to_vec()
        })
        .collect()
}

/// A reader on io_uring, or `None` with a note where io_uring is unavailable (a failure
/// instead when `STACKBED_REQUIRE_URING=1`).
fn uring_reader(d: &Disk, depth: usize) -> Option<DepthReader<'_>> {
    let reader = DepthReader::new(d, depth);
    match reader.backend() {
        Backend::IoUring { .. } => Some(reader),
        Backend::Threads { reason } => {
            let required = std::env::var("STACKBED_REQUIRE_URING").is_ok_and(|v| v == "1");
            assert!(!required, "STACKBED_REQUIRE_URING=1 but io_uring is unavailable: {reason}");
            eprintln!("note: io_uring unavailable ({reason}): its part of this test is skipped, threads only");
            None
        }
    }
}

/// The io_uring reader where there is one, then the thread reader, at `depth`.
fn readers(d: &Disk, depth: usize) -> Vec<(&'static str, DepthReader<'_>)> {
    let uring = uring_reader(d, depth).map(|r| ("io_uring", r));
    uring.into_iter().chain([("threads", DepthReader::with_threads(d, depth))]).collect()
}

/// Every way of reading `reqs` at depth 1 and 64 gives what `Disk::read` gives.
fn check_all(path: &Path, what: &str) {
    let mut modes = vec![false];
    if disk::o_direct_supported(path.parent().unwrap()).is_ok() {
        modes.push(true);
    }
    for direct in modes {
        let d = Disk::open(path, OpenOptions { writable: false, direct }).unwrap();
        let reqs = requests(d.size(), 0x5eed ^ d.size());
        let want = expected(&d, &reqs);
        for depth in [1, 64] {
            let label = format!("{what}, direct {direct}, depth {depth}");
            for (name, mut reader) in readers(&d, depth) {
                // Caller buffers: aligned ones, and every third one deliberately misaligned.
                let mut aligned: Vec<AlignedBuf> = reqs.iter().map(|r| AlignedBuf::new(r.1 + 1, 4096)).collect();
                let mut many: Vec<(u64, &mut [u8])> = aligned
                    .iter_mut()
                    .zip(&reqs)
                    .enumerate()
                    .map(|(i, (b, &(o, n)))| {
                        let s = b.as_mut_slice();
                        s.fill(0xa5);
                        let skew = usize::from(i % 3 == 2);
                        (o, &mut s[skew..skew + n])
                    })
                    .collect();
                reader.read_many(&mut many).unwrap();
                for (i, (_, got)) in many.iter().enumerate() {
                    assert!(got[..] == want[i][..], "{label} {name} read_many: request {i} {:?} differs", reqs[i]);
                }
                let mut seen: Vec<Option<Vec<u8>>> = vec![None; reqs.len()];
                reader
                    .read_each(&reqs, |i, bytes| {
                        assert!(seen[i].is_none(), "{label} {name}: request {i} completed twice");
                        seen[i] = Some(bytes.to_vec());
                        Ok(())
                    })
                    .unwrap();
                for (i, got) in seen.iter().enumerate() {
                    let got = got.as_ref().unwrap_or_else(|| panic!("{label} {name}: request {i} never completed"));
                    assert!(got[..] == want[i][..], "{label} {name} read_each: request {i} {:?} differs", reqs[i]);
                }
                if let Backend::IoUring { registered_buffers } = reader.backend() {
                    // Registration can be refused (RLIMIT_MEMLOCK): the reads are then plain READ.
                    eprintln!(
                        "note: {label}: read_each on io_uring, registered buffers (READ_FIXED): {registered_buffers}"
                    );
                }
            }
        }
        // The convenience on Disk.
        let mut bufs: Vec<Vec<u8>> = reqs.iter().map(|r| vec![0u8; r.1]).collect();
        let mut many: Vec<(u64, &mut [u8])> =
            reqs.iter().zip(bufs.iter_mut()).map(|(r, b)| (r.0, &mut b[..])).collect();
        d.read_many(&mut many, 8).unwrap();
        assert!(bufs == want, "{what}: Disk::read_many differs");
    }
}

#[test]
fn raw_reads_match_disk_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.raw");
    // Not a multiple of 4 KiB: the tail is unaligned for O_DIRECT.
    std::fs::write(&p, pattern(1, (5 << 20) + 1234)).unwrap();
    check_all(&p, "raw");
}

/// A qcow2 with data clusters written out of guest order (so its host layout is not the
/// guest's), partial-cluster writes, explicit zero clusters and unallocated ones.
fn scattered_qcow2(p: &Path, size: u64, seed: u64) {
    disk::create_qcow2(p, size).unwrap();
    let d = Disk::open(p, OpenOptions { writable: true, direct: false }).unwrap();
    let clusters = size / CLUSTER;
    let mut order: Vec<u64> = (0..clusters).collect();
    let mut rng = Rng(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &c in &order {
        match c % 5 {
            0 | 1 => d.write(&pattern(seed ^ c, CLUSTER as usize), c * CLUSTER).unwrap(),
            2 => d.write(&pattern(seed ^ c, 3000), c * CLUSTER + 777).unwrap(),
            3 => d.write_zeroes(c * CLUSTER, CLUSTER).unwrap(),
            _ => {}
        }
    }
    // A run of consecutive clusters written in order: one long host range.
    d.write(&pattern(seed ^ 99, 6 * CLUSTER as usize), 10 * CLUSTER).unwrap();
    d.flush().unwrap();
}

#[test]
fn qcow2_reads_match_disk_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.qcow2");
    scattered_qcow2(&p, 6 << 20, 7);
    check_all(&p, "qcow2");
}

#[test]
fn overlay_reads_match_disk_read() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    scattered_qcow2(&base, 6 << 20, 11);
    let top = dir.path().join("top.qcow2");
    disk::create_overlay(&top, &base).unwrap();
    {
        let d = Disk::open(&top, OpenOptions { writable: true, direct: false }).unwrap();
        // Whole clusters, a partial one (copy-on-write from the base), zeroes over data.
        d.write(&pattern(5, 2 * CLUSTER as usize), 4 * CLUSTER).unwrap();
        d.write(&pattern(6, 5000), 20 * CLUSTER + 100).unwrap();
        d.write_zeroes(30 * CLUSTER, CLUSTER).unwrap();
        d.write(&pattern(8, CLUSTER as usize), 0).unwrap();
        d.flush().unwrap();
    }
    check_all(&top, "overlay");
    // An empty overlay reads its base through.
    let empty = dir.path().join("empty.qcow2");
    disk::create_overlay_fast(&empty, &base, None).unwrap();
    check_all(&empty, "empty overlay");
}

#[test]
fn compressed_clusters_are_read_through_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let mut data = pattern(3, 3 << 20);
    data[CLUSTER as usize..3 * CLUSTER as usize].fill(0x11); // compresses well
    std::fs::write(&raw, &data).unwrap();
    let c = dir.path().join("c.qcow2");
    let (raw_s, c_s) = (raw.to_str().unwrap(), c.to_str().unwrap());
    stackbed_images::qemu::qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", raw_s, c_s]).unwrap();
    check_all(&c, "compressed qcow2");
    let d = Disk::open(&c, OpenOptions::default()).unwrap();
    let mut buf = vec![0u8; data.len()];
    d.read_many(&mut [(0, &mut buf[..])], 4).unwrap();
    assert!(buf == data);
}

/// The host offset of guest cluster `c` in a qcow2 file (first L2 table only), and where its
/// L2 entry is.
fn l2_entry(p: &Path, c: u64) -> (u64, u64) {
    let f = std::fs::File::open(p).unwrap();
    let mut h = [0u8; 48];
    f.read_exact_at(&mut h, 0).unwrap();
    let l1 = u64::from_be_bytes(h[40..48].try_into().unwrap());
    let mut e = [0u8; 8];
    f.read_exact_at(&mut e, l1).unwrap();
    let l2 = u64::from_be_bytes(e) & 0x00ff_ffff_ffff_fe00;
    let at = l2 + c * 8;
    f.read_exact_at(&mut e, at).unwrap();
    (u64::from_be_bytes(e) & 0x00ff_ffff_ffff_fe00, at)
}

#[test]
fn corrupt_l2_entry_is_an_error_at_every_depth() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.qcow2");
    disk::create_qcow2(&p, 4 << 20).unwrap();
    {
        let d = Disk::open(&p, OpenOptions { writable: true, direct: false }).unwrap();
        d.write(&pattern(1, 4 << 20), 0).unwrap();
        d.flush().unwrap();
    }
    // Cluster 40's data now "starts" 512 bytes into its cluster: an invalid entry (imago then
    // refuses the whole L2 table, so every request fails).
    let (host, at) = l2_entry(&p, 40);
    assert!(host > 0);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&((host + 512) | (1 << 63)).to_be_bytes(), at).unwrap();
    drop(f);
    let d = Disk::open(&p, OpenOptions::default()).unwrap();
    let mut one = vec![0u8; CLUSTER as usize];
    assert!(d.read(&mut one, 40 * CLUSTER).is_err(), "Disk::read must refuse the corrupt cluster");
    let reqs: Vec<(u64, usize)> = (0..64).map(|i| (i * CLUSTER, CLUSTER as usize)).collect();
    for depth in [1, 64] {
        for (_, mut reader) in readers(&d, depth) {
            let backend = reader.backend();
            let r = reader.read_each(&reqs, |_, _| Ok(()));
            assert!(matches!(r, Err(DiskError::Io { .. })), "{backend} depth {depth}: {r:?}");
            let mut bufs = vec![vec![0u8; CLUSTER as usize]; 64];
            let mut many: Vec<(u64, &mut [u8])> =
                bufs.iter_mut().enumerate().map(|(i, b)| (i as u64 * CLUSTER, &mut b[..])).collect();
            assert!(reader.read_many(&mut many).is_err(), "{backend} depth {depth}");
        }
    }
}

#[test]
fn truncated_images_read_as_disk_read_does() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.qcow2");
    scattered_qcow2(&p, 4 << 20, 21);
    let len = std::fs::metadata(&p).unwrap().len();
    for cut in [len - 3 * CLUSTER - 100, len / 2, 5 * CLUSTER] {
        let q = dir.path().join(format!("cut-{cut}.qcow2"));
        std::fs::copy(&p, &q).unwrap();
        std::fs::OpenOptions::new().write(true).open(&q).unwrap().set_len(cut).unwrap();
        let Ok(d) = Disk::open(&q, OpenOptions::default()) else { continue };
        let reqs = requests(d.size(), cut);
        for depth in [1, 64] {
            let mut reader = DepthReader::new(&d, depth);
            for (i, &(o, n)) in reqs.iter().enumerate() {
                let mut want = vec![0u8; n];
                let want = d.read(&mut want, o).map(|_| want);
                let mut got = vec![0u8; n];
                let got = reader.read_many(&mut [(o, &mut got[..])]).map(|_| got);
                match (want, got) {
                    (Ok(w), Ok(g)) => assert!(w == g, "cut {cut} depth {depth}: request {i} differs"),
                    (Err(_), Err(_)) => {}
                    (w, g) => {
                        panic!("cut {cut} depth {depth} request {i}: Disk::read {:?}, ours {:?}", w.is_ok(), g.is_ok())
                    }
                }
            }
        }
    }
}

#[test]
fn many_requests_at_depth_keep_order_and_count() {
    // More requests than buffers, each completing once, with the right bytes.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.raw");
    let data = pattern(9, 8 << 20);
    std::fs::write(&p, &data).unwrap();
    let d = Disk::open(&p, OpenOptions::default()).unwrap();
    let reqs: Vec<(u64, usize)> = (0..2048).map(|i| ((i * 4096) % (8 << 20), 4096)).collect();
    let mut reader = DepthReader::new(&d, 3);
    let mut count = vec![0u32; reqs.len()];
    reader
        .read_each(&reqs, |i, b| {
            count[i] += 1;
            let o = reqs[i].0 as usize;
            if b != &data[o..o + 4096] {
                return Err(DiskError::Invalid(format!("request {i} differs")));
            }
            Ok(())
        })
        .unwrap();
    assert!(count.iter().all(|&c| c == 1));
    // An error from the callback stops the run and is returned.
    let r = reader.read_each(&reqs, |i, _| if i == 100 { Err(DiskError::Invalid("stop".into())) } else { Ok(()) });
    assert!(matches!(r, Err(DiskError::Invalid(ref m)) if m == "stop"), "{r:?}");
}

/// A raw disk of `len` bytes of `pattern(seed)`, and those bytes.
fn raw_disk(dir: &Path, name: &str, seed: u64, len: usize) -> (Disk, Vec<u8>) {
    let p = dir.join(name);
    let data = pattern(seed, len);
    std::fs::write(&p, &data).unwrap();
    (Disk::open(&p, OpenOptions::default()).unwrap(), data)
}

#[test]
fn a_panic_in_done_waits_for_the_reads_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (d, data) = raw_disk(dir.path(), "d.raw", 13, 16 << 20);
    // O_DIRECT where the filesystem has it: reads from the page cache tend to complete as
    // they are submitted, O_DIRECT ones stay in flight while the first completions are seen.
    let direct = disk::o_direct_supported(dir.path()).is_ok();
    let d = if direct { Disk::open(d.path(), OpenOptions { writable: false, direct }).unwrap() } else { d };
    let reqs: Vec<(u64, usize)> = (0..256).map(|i| ((i * (128 << 10)) % (16 << 20), 128 << 10)).collect();
    for (name, mut reader) in readers(&d, 64) {
        let backend = reader.backend();
        for n in [1, 5, 64] {
            // Panics on the n-th completion, with up to 63 other reads in flight.
            let mut calls = 0;
            let r = catch_unwind(AssertUnwindSafe(|| {
                reader.read_each(&reqs, |_, _| {
                    calls += 1;
                    assert!(calls != n, "done panics on completion {n}");
                    Ok(())
                })
            }));
            assert!(r.is_err(), "{name}: the panic in done goes on to the caller");
            // Every read was waited for before the panic went on, and the reader keeps its ring.
            assert_eq!(reader.in_flight(), 0, "{name} panic at {n}: reads left in flight");
            assert_eq!(std::mem::discriminant(&reader.backend()), std::mem::discriminant(&backend), "{name}");
            // Memory allocated now is not written by a read left behind, and the reader reads
            // correctly on: into its own buffers, then into the caller's.
            let mut fresh: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 256 << 10]).collect();
            let mut count = 0;
            reader
                .read_each(&reqs, |i, b| {
                    count += 1;
                    let o = reqs[i].0 as usize;
                    assert!(b == &data[o..o + b.len()], "{name}: request {i} differs after the panic");
                    Ok(())
                })
                .unwrap();
            assert_eq!(count, reqs.len());
            let mut many: Vec<(u64, &mut [u8])> =
                fresh.iter_mut().enumerate().map(|(i, b)| (i as u64 * (256 << 10), &mut b[..])).collect();
            reader.read_many(&mut many).unwrap();
            for (i, b) in fresh.iter().enumerate() {
                let o = i * (256 << 10);
                assert!(b[..] == data[o..o + b.len()], "{name}: read_many request {i} differs after the panic");
            }
            assert_eq!(reader.in_flight(), 0);
        }
    }
}

#[test]
fn oversized_requests_are_errors_not_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let (d, data) = raw_disk(dir.path(), "d.raw", 17, 1 << 20);
    // Longer than the pool may be, as long as depth x it overflows, and lengths whose rounding
    // to pages overflows: each an error, before any allocation or read.
    let huge = [MAX_POOL + 1, (8u64 << 30) as usize, usize::MAX / 64 + 1, usize::MAX - 100, usize::MAX];
    for (name, mut reader) in readers(&d, 64) {
        for len in huge {
            let r = reader.read_each(&[(0, 4096), (0, len)], |_, _| panic!("{name}: no request may complete"));
            assert!(matches!(r, Err(DiskError::Invalid(_))), "{name} length {len}: {r:?}");
            assert!(reader.reserve(len).is_err(), "{name}: reserve({len})");
        }
        // A request much longer than the disk, at depth 64, and one whose offset is near the
        // end of the offset space: what Disk::read gives (the data, then zeroes).
        for (o, len) in [(0u64, 3 << 20), (u64::MAX - 10, 4096), (1000, 5000)] {
            let mut want = vec![0u8; len];
            d.read(&mut want, o).unwrap();
            let mut got = None;
            reader
                .read_each(&[(o, len)], |_, b| {
                    got = Some(b.to_vec());
                    Ok(())
                })
                .unwrap();
            assert!(got.as_deref() == Some(&want[..]), "{name}: ({o}, {len}) differs");
        }
        let mut b = [0u8; 10];
        reader.read_many(&mut [(0, &mut b[..])]).unwrap();
        assert_eq!(b[..], data[..10], "{name}: read_many after the errors");
    }
}

/// Reads `reqs` with every reader at depth 8: each must equal `want`.
fn check_reads(d: &Disk, reqs: &[(u64, usize)], want: &[Vec<u8>], what: &str) {
    for (name, mut reader) in readers(d, 8) {
        let mut seen = vec![Vec::new(); reqs.len()];
        reader
            .read_each(reqs, |i, b| {
                seen[i] = b.to_vec();
                Ok(())
            })
            .unwrap();
        assert!(seen == want, "{what}: {name} read_each read another file");
        let mut bufs: Vec<Vec<u8>> = reqs.iter().map(|r| vec![0u8; r.1]).collect();
        let mut many: Vec<(u64, &mut [u8])> = reqs.iter().zip(&mut bufs).map(|(r, b)| (r.0, &mut b[..])).collect();
        reader.read_many(&mut many).unwrap();
        assert!(bufs == want, "{what}: {name} read_many read another file");
    }
}

#[test]
fn a_renamed_and_replaced_file_is_still_the_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let reqs: Vec<(u64, usize)> = (0..32).map(|i| (i * CLUSTER, CLUSTER as usize)).collect();
    // A raw disk moved away, another file put at its name.
    let p = dir.path().join("d.raw");
    let (d, _) = raw_disk(dir.path(), "d.raw", 23, 4 << 20);
    let want = expected(&d, &reqs);
    std::fs::rename(&p, dir.path().join("moved.raw")).unwrap();
    std::fs::write(&p, pattern(24, 4 << 20)).unwrap();
    check_reads(&d, &reqs, &want, "raw");
    // An overlay open while an external snapshot moves it and puts a new empty overlay at
    // its name: the open disk still reads the old file.
    let base = dir.path().join("base.qcow2");
    scattered_qcow2(&base, 4 << 20, 25);
    let top = dir.path().join("top.qcow2");
    disk::create_overlay(&top, &base).unwrap();
    {
        let d = Disk::open(&top, OpenOptions { writable: true, direct: false }).unwrap();
        d.write(&pattern(26, 8 * CLUSTER as usize), 0).unwrap();
        d.flush().unwrap();
    }
    let d = Disk::open(&top, OpenOptions::default()).unwrap();
    let want = expected(&d, &reqs);
    disk::external_snapshot(&top, &dir.path().join("snap.qcow2")).unwrap();
    {
        // Written through the new overlay: a reader reopening by name would see this.
        let d = Disk::open(&top, OpenOptions { writable: true, direct: false }).unwrap();
        d.write(&pattern(27, 8 * CLUSTER as usize), 0).unwrap();
        d.flush().unwrap();
    }
    check_reads(&d, &reqs, &want, "overlay after external_snapshot");
}

#[test]
fn done_is_not_called_after_it_returned_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _) = raw_disk(dir.path(), "d.raw", 29, 4 << 20);
    let reqs: Vec<(u64, usize)> = (0..512).map(|i| (i * 8192, 8192)).collect();
    for (name, mut reader) in readers(&d, 8) {
        let mut calls = 0;
        let r = reader.read_each(&reqs, |_, _| {
            calls += 1;
            if calls == 3 {
                return Err(DiskError::Invalid("stop".into()));
            }
            Ok(())
        });
        assert!(matches!(r, Err(DiskError::Invalid(ref m)) if m == "stop"), "{name}: {r:?}");
        assert_eq!(calls, 3, "{name}: done called again after its error");
    }
}

/// The pool's huge-page report finds the pool's mapping: its size covers the buffers (the
/// kernel may or may not have given huge pages, so only the bound is checked).
#[test]
fn the_pool_reports_its_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _) = raw_disk(dir.path(), "huge.raw", 5, 4 << 20);
    for (what, mut r) in readers(&d, 3) {
        assert_eq!(r.pool_huge_pages(), None, "{what}: no pool yet");
        r.reserve(1 << 20).unwrap();
        let (huge, size) = r.pool_huge_pages().unwrap_or_else(|| panic!("{what}: pool not found in smaps"));
        assert!(size >= 3 * 1024, "{what}: pool of {size} KiB for three 1 MiB buffers");
        assert!(huge <= size, "{what}: {huge} KiB huge of {size} KiB");
    }
}
