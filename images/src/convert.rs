//! raw to qcow2 conversion (`qemu-img convert -f raw -O qcow2`), hand-written.
//!
//! Why not imago: imago has no convert function, and a plain loop over imago (kept here as
//! [`convert_with_imago`], measured side by side by `cargo real bench images`) runs at about
//! 0.8x of `qemu-img convert`: every cluster allocation updates an L2 table and a refcount
//! block through its caches. A fresh, sequentially written image needs none of that: the
//! layout is known before the first byte is written, so this writer
//!
//! 1. maps the source's data extents with `SEEK_DATA`/`SEEK_HOLE` (holes cost nothing),
//! 2. lays out header, L1 table, refcount table, refcount blocks and the L2 tables the data
//!    needs, then the data clusters in guest order,
//! 3. streams the data from a read-only mapping of the source: all-zero clusters are dropped
//!    (they read back as zeroes, since the image has no backing file), runs of data clusters
//!    go out in one write each, straight from the mapping (one copy, where a read into a
//!    buffer and a write from it make two), and, when the result must be durable, writeback
//!    of each run starts right away (`sync_file_range`) instead of at the final fdatasync,
//! 4. writes the metadata once at the end, and the header last.
//!
//! The result is a qcow2 v3 image with 64 KiB clusters and 16-bit refcounts, exactly like
//! `qemu-img create -f qcow2`'s, which `qemu-img check` accepts (tested).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::disk::{io_err, Disk, DiskError, OpenOptions};
use crate::qcow2::MAGIC;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Longest single write: long enough to amortise the syscall, short enough that the kernel
/// starts writeback early.
const RUN_CLUSTERS_MAX: u64 = 128;
/// L2 entries per table (8 bytes each).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// 16-bit refcounts: entries per refcount block.
const REFS_PER_BLOCK: u64 = CLUSTER / 2;
/// QCOW_OFLAG_COPIED: the cluster's refcount is exactly 1.
const COPIED: u64 = 1 << 63;

/// What a conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConvertStats {
    pub virtual_size: u64,
    /// Bytes in the source's data extents (the rest were holes).
    pub data_extent_bytes: u64,
    /// Clusters written with data.
    pub data_clusters: u64,
    /// Clusters inside data extents that were all zeroes and left unallocated.
    pub zero_clusters: u64,
    pub file_size: u64,
}

/// Durability of the output: `Sync` matches qemu-img's default (cache=writeback flushes on
/// close), `NoSync` matches `qemu-img convert -t unsafe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Sync,
    NoSync,
}

/// The data extents of `file` as (start, end) pairs, cluster-aligned outwards.
fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on a valid, open file descriptor has no memory effects.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            if e.raw_os_error() == Some(libc::EINVAL) {
                // The filesystem cannot tell: treat everything as data.
                return Ok(vec![(0, size.div_ceil(CLUSTER) * CLUSTER)]);
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { size as i64 } else { hole };
        let start = (data as u64 / CLUSTER) * CLUSTER;
        let end = (hole as u64).min(size).div_ceil(CLUSTER) * CLUSTER;
        match out.last_mut() {
            Some(last) if last.1 >= start => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
        pos = hole as u64;
    }
    Ok(out)
}

/// A read-only shared mapping of the source. Zero detection reads the page cache in place
/// and data is written to the output straight from the mapping: one copy per byte instead of
/// the two a read into a buffer and a write from it take (that copy is what qemu-img pays).
struct Map {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Map {
    fn new(file: &File, len: u64) -> std::io::Result<Map> {
        if len == 0 {
            return Ok(Map { ptr: std::ptr::null_mut(), len: 0 });
        }
        let len = usize::try_from(len).map_err(|_| std::io::Error::other("source too large to map"))?;
        // SAFETY: a fresh read-only mapping of an open file; the kernel picks the address.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: advice on the mapping just created; failure only loses the hint.
        unsafe { libc::madvise(ptr, len, libc::MADV_SEQUENTIAL) };
        Ok(Map { ptr, len })
    }

    /// The source's bytes. The source must not be truncated while converting (it would
    /// raise SIGBUS); nova converts images in its private `_base` cache, which nobody else
    /// writes.
    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the mapping is `len` readable bytes and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping `new` created.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

fn is_zero(buf: &[u8]) -> bool {
    // OR-reduce 64-byte blocks; the compiler vectorises this inner loop.
    // SAFETY: every bit pattern is a valid u64.
    let (head, body, tail) = unsafe { buf.align_to::<u64>() };
    if head.iter().chain(tail).any(|&b| b != 0) {
        return false;
    }
    body.chunks(64).all(|c| c.iter().fold(0u64, |a, &x| a | x) == 0)
}

struct Layout {
    l1_size: u64,
    l1_cluster: u64,
    reftable_cluster: u64,
    reftable_clusters: u64,
    refblock_cluster: u64,
    refblocks: u64,
    /// L2 table host cluster by L1 index (0 = not needed).
    l2_cluster: Vec<u64>,
    data_start_cluster: u64,
}

fn layout(size: u64, extents: &[(u64, u64)]) -> Layout {
    let l1_size = size.div_ceil(CLUSTER * L2_ENTRIES);
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER);
    let mut needs_l2 = vec![false; l1_size as usize];
    let mut data_max = 0u64;
    for &(s, e) in extents {
        data_max += (e - s) / CLUSTER;
        let (first, last) = (s / (CLUSTER * L2_ENTRIES), (e - 1) / (CLUSTER * L2_ENTRIES));
        for i in first..=last.min(l1_size.saturating_sub(1)) {
            needs_l2[i as usize] = true;
        }
    }
    let l2_count = needs_l2.iter().filter(|&&n| n).count() as u64;
    // Refcount structures must cover every cluster, themselves included: iterate to a fixpoint.
    let (mut refblocks, mut reftable_clusters) = (1u64, 1u64);
    loop {
        let total = 1 + l1_clusters + reftable_clusters + refblocks + l2_count + data_max;
        let rb = total.div_ceil(REFS_PER_BLOCK);
        let rt = (rb * 8).div_ceil(CLUSTER);
        if rb == refblocks && rt == reftable_clusters {
            break;
        }
        (refblocks, reftable_clusters) = (rb.max(refblocks), rt.max(reftable_clusters));
    }
    let l1_cluster = 1;
    let reftable_cluster = l1_cluster + l1_clusters;
    let refblock_cluster = reftable_cluster + reftable_clusters;
    let mut next = refblock_cluster + refblocks;
    let l2_cluster = needs_l2
        .iter()
        .map(|&n| {
            if n {
                next += 1;
                next - 1
            } else {
                0
            }
        })
        .collect();
    Layout {
        l1_size,
        l1_cluster,
        reftable_cluster,
        reftable_clusters,
        refblock_cluster,
        refblocks,
        l2_cluster,
        data_start_cluster: next,
    }
}

fn header(size: u64, lay: &Layout) -> Vec<u8> {
    let mut h = vec![0u8; 112];
    h[..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[36..40].copy_from_slice(&(lay.l1_size as u32).to_be_bytes());
    let l1_offset = if lay.l1_size == 0 { 0 } else { lay.l1_cluster * CLUSTER };
    h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
    h[48..56].copy_from_slice(&(lay.reftable_cluster * CLUSTER).to_be_bytes());
    h[56..60].copy_from_slice(&(lay.reftable_clusters as u32).to_be_bytes());
    // incompatible, compatible (lazy refcounts off), autoclear: 0
    h[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount_order 4: 16 bits
    h[100..104].copy_from_slice(&112u32.to_be_bytes()); // header_length
                                                        // byte 104: compression type zlib (0); then padding to 112, then the end-of-extensions marker
    h.extend_from_slice(&[0u8; 8]);
    h
}

/// Converts the raw image at `src` to a qcow2 image at `dst` (replacing it).
pub fn convert_raw_to_qcow2(src: &Path, dst: &Path, durability: Durability) -> Result<ConvertStats, DiskError> {
    let input = File::open(src).map_err(io_err("cannot open", src))?;
    let file_len = input.metadata().map_err(io_err("cannot stat", src))?.len();
    // QEMU's block layer sees a raw file in whole 512-byte sectors: so does the image.
    let size = file_len.div_ceil(512) * 512;
    let extents = data_extents(&input, file_len).map_err(io_err("cannot map extents of", src))?;
    let lay = layout(size, &extents);
    let out = File::create(dst).map_err(io_err("cannot create", dst))?;

    let mut stats = ConvertStats { virtual_size: size, ..Default::default() };
    stats.data_extent_bytes = extents.iter().map(|(s, e)| e - s).sum();
    let map = Map::new(&input, file_len).map_err(io_err("cannot map", src))?;
    let src_bytes = map.bytes();
    let result = (|| -> Result<(), DiskError> {
        let mut l2: Vec<Vec<u64>> = lay.l2_cluster.iter().map(|_| Vec::new()).collect();
        let mut host = lay.data_start_cluster;
        // A run of data clusters contiguous in the source and in the output: one write.
        let mut run: Option<(u64, u64)> = None; // (guest cluster, count)
        let run_host_start = |host: u64, count: u64| host - count;
        let flush = |run: &mut Option<(u64, u64)>, host: u64| -> Result<(), DiskError> {
            if let Some((g, n)) = run.take() {
                let from = (g * CLUSTER) as usize;
                let to = ((g + n) * CLUSTER).min(file_len) as usize;
                let mut at = run_host_start(host, n) * CLUSTER;
                out.write_all_at(&src_bytes[from..to], at).map_err(io_err("write failed on", dst))?;
                if durability == Durability::Sync {
                    // Start writeback of this run now, so that the final fdatasync finds the
                    // disk already busy with (or done with) the data instead of starting it.
                    // SAFETY: a hint on an open descriptor; no memory is passed.
                    unsafe {
                        libc::sync_file_range(
                            out.as_raw_fd(),
                            at as libc::off64_t,
                            (to - from) as libc::off64_t,
                            libc::SYNC_FILE_RANGE_WRITE,
                        )
                    };
                }
                at += (to - from) as u64;
                // The source ends inside the run's last cluster: pad it to a whole cluster.
                let padded = run_host_start(host, n) * CLUSTER + n * CLUSTER;
                if at < padded {
                    out.write_all_at(&vec![0u8; (padded - at) as usize], at).map_err(io_err("write failed on", dst))?;
                }
            }
            Ok(())
        };
        for &(s, e) in &extents {
            for g in s / CLUSTER..e / CLUSTER {
                let from = (g * CLUSTER) as usize;
                let to = ((g + 1) * CLUSTER).min(file_len) as usize;
                if from >= to || is_zero(&src_bytes[from..to]) {
                    flush(&mut run, host)?;
                    stats.zero_clusters += 1;
                    continue;
                }
                let (l1i, l2i) = ((g / L2_ENTRIES) as usize, (g % L2_ENTRIES) as usize);
                let table = &mut l2[l1i];
                if table.is_empty() {
                    table.resize(L2_ENTRIES as usize, 0);
                }
                table[l2i] = (host * CLUSTER) | COPIED;
                run = match run {
                    Some((rg, n)) if rg + n == g && n < RUN_CLUSTERS_MAX => Some((rg, n + 1)),
                    other => {
                        let mut other = other;
                        flush(&mut other, host)?;
                        Some((g, 1))
                    }
                };
                host += 1;
                stats.data_clusters += 1;
            }
            flush(&mut run, host)?;
        }

        // Metadata: L2 tables, L1, refcounts, header last.
        let mut l1 = vec![0u8; (lay.l1_size * 8) as usize];
        for (i, table) in l2.iter().enumerate() {
            let c = lay.l2_cluster[i];
            if c == 0 {
                continue;
            }
            let mut bytes = vec![0u8; CLUSTER as usize];
            for (j, e) in table.iter().enumerate() {
                bytes[j * 8..j * 8 + 8].copy_from_slice(&e.to_be_bytes());
            }
            out.write_all_at(&bytes, c * CLUSTER).map_err(io_err("write failed on", dst))?;
            l1[i * 8..i * 8 + 8].copy_from_slice(&((c * CLUSTER) | COPIED).to_be_bytes());
        }
        out.write_all_at(&l1, lay.l1_cluster * CLUSTER).map_err(io_err("write failed on", dst))?;
        let used = host; // clusters 0..used are all in use, exactly once
        let mut reftable = vec![0u8; (lay.reftable_clusters * CLUSTER) as usize];
        let mut refblocks = vec![0u8; (lay.refblocks * CLUSTER) as usize];
        for c in 0..used {
            refblocks[(c * 2) as usize..(c * 2 + 2) as usize].copy_from_slice(&1u16.to_be_bytes());
        }
        for b in 0..lay.refblocks {
            let at = (b * 8) as usize;
            reftable[at..at + 8].copy_from_slice(&((lay.refblock_cluster + b) * CLUSTER).to_be_bytes());
        }
        out.write_all_at(&refblocks, lay.refblock_cluster * CLUSTER).map_err(io_err("write failed on", dst))?;
        out.write_all_at(&reftable, lay.reftable_cluster * CLUSTER).map_err(io_err("write failed on", dst))?;
        out.set_len(used * CLUSTER).map_err(io_err("cannot size", dst))?;
        if durability == Durability::Sync {
            out.sync_data().map_err(io_err("fdatasync failed on", dst))?;
        }
        out.write_all_at(&header(size, &lay), 0).map_err(io_err("write failed on", dst))?;
        if durability == Durability::Sync {
            out.sync_data().map_err(io_err("fdatasync failed on", dst))?;
        }
        stats.file_size = used * CLUSTER;
        Ok(())
    })();
    result?;
    Ok(stats)
}

/// The same conversion as a plain loop over imago: read 2 MiB, skip zero clusters and holes,
/// write the rest through imago's qcow2 driver. Kept as the benchmark's evidence for the
/// hand-written path.
pub fn convert_with_imago(src: &Path, dst: &Path, durability: Durability) -> Result<ConvertStats, DiskError> {
    let input = File::open(src).map_err(io_err("cannot open", src))?;
    let file_len = input.metadata().map_err(io_err("cannot stat", src))?.len();
    let size = file_len.div_ceil(512) * 512;
    let extents = data_extents(&input, file_len).map_err(io_err("cannot map extents of", src))?;
    crate::disk::create_qcow2(dst, size)?;
    let disk = Disk::open(dst, OpenOptions { writable: true, direct: false })?;
    let mut stats = ConvertStats { virtual_size: size, ..Default::default() };
    let step = 2u64 << 20;
    let mut buf = vec![0u8; step as usize];
    for &(s, e) in &extents {
        stats.data_extent_bytes += e - s;
        let mut pos = s;
        while pos < e {
            let len = step.min(e - pos) as usize;
            let n = crate::qcow2::read_at_most(&input, &mut buf[..len], pos).map_err(io_err("read failed on", src))?;
            buf[n..len].fill(0);
            for c in 0..len / CLUSTER as usize {
                let chunk = &buf[c * CLUSTER as usize..(c + 1) * CLUSTER as usize];
                let off = pos + (c as u64) * CLUSTER;
                if is_zero(chunk) {
                    stats.zero_clusters += 1;
                } else {
                    // Clip the last cluster to the virtual size.
                    let n = (CLUSTER.min(size - off)) as usize;
                    disk.write(&chunk[..n], off)?;
                    stats.data_clusters += 1;
                }
            }
            pos += len as u64;
        }
    }
    match durability {
        Durability::Sync => disk.sync()?,
        Durability::NoSync => disk.flush()?,
    }
    drop(disk);
    stats.file_size = std::fs::metadata(dst).map_err(io_err("cannot stat", dst))?.len();
    Ok(stats)
}

/// qcow2 (or any format imago reads, through its backing chain) to a sparse raw file: what
/// nova does for `force_raw_images`. Zero clusters become holes.
pub fn convert_to_raw(src: &Path, dst: &Path, durability: Durability) -> Result<u64, DiskError> {
    let disk = Disk::open(src, OpenOptions::default())?;
    let size = disk.size();
    let out = File::create(dst).map_err(io_err("cannot create", dst))?;
    out.set_len(size).map_err(io_err("cannot size", dst))?;
    let step = 2u64 << 20;
    let mut buf = vec![0u8; step as usize];
    let mut pos = 0;
    while pos < size {
        let len = step.min(size - pos) as usize;
        disk.read(&mut buf[..len], pos)?;
        let mut c = 0;
        while c < len {
            let n = (CLUSTER as usize).min(len - c);
            if !is_zero(&buf[c..c + n]) {
                out.write_all_at(&buf[c..c + n], pos + c as u64).map_err(io_err("write failed on", dst))?;
            }
            c += n;
        }
        pos += len as u64;
    }
    if durability == Durability::Sync {
        out.sync_data().map_err(io_err("fdatasync failed on", dst))?;
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; 65536];
        assert!(is_zero(&b));
        b[65535] = 1;
        assert!(!is_zero(&b));
        assert!(!is_zero(&b[1..]));
        assert!(is_zero(&b[3..1000]));
    }

    #[test]
    fn layout_covers_itself() {
        let lay = layout(1 << 30, &[(0, 1 << 30)]);
        assert_eq!(lay.l1_size, 2);
        assert_eq!(lay.l2_cluster.iter().filter(|&&c| c != 0).count(), 2);
        let total = lay.data_start_cluster + (1 << 30) / CLUSTER;
        assert!(lay.refblocks * REFS_PER_BLOCK >= total);
        // A 10 TiB sparse image: no L2 tables, one refblock.
        let lay = layout(10 << 40, &[]);
        assert_eq!(lay.l2_cluster.iter().filter(|&&c| c != 0).count(), 0);
        assert_eq!(lay.refblocks, 1);
    }
}
