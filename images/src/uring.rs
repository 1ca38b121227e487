//! Reads at a queue depth: many guest reads of one [`Disk`] with up to `depth` host reads in
//! flight, through io_uring.
//!
//! Each guest range is resolved to host file ranges through the format layer (imago's
//! `get_mapping`, which walks the backing chain: identity for raw, the L2 tables for qcow2,
//! the base for an overlay's unallocated clusters). Zero and unallocated ranges are filled with
//! zeroes here; data ranges become io_uring reads on the descriptors imago opened for the host
//! files (duplicates that [`Disk::open`] keeps: a file is never reopened by name, which after a
//! rename or a change of directory could be another file). Requests are mapped and submitted
//! in the order given, so a sequential list keeps the in-flight reads at adjacent host
//! offsets, as QEMU's thread pool does. What cannot be read as a plain host range (compressed
//! clusters, ranges not aligned for O_DIRECT, a host file the disk kept no descriptor for), the
//! rest of a short read and a read the kernel gives back with `EAGAIN` or `EINTR` go through
//! [`Disk::read`] instead, synchronously and while the other reads stay in flight.
//!
//! [`DepthReader::read_each`] reads into a pool of buffers that the reader owns, one per
//! request in flight: one allocation in whole 2 MiB-aligned huge pages with `MADV_HUGEPAGE`,
//! so that a request's buffer is physically contiguous, and registered with the ring
//! (`READ_FIXED`: the pages are pinned once, not per request). Physical contiguity is what
//! makes the difference on a virtio disk: a 1 MiB buffer of scattered 4 KiB pages is up to 256
//! segments (more than virtio-blk's usual 254 per request, so the block layer splits it, and
//! adjacent requests cannot be merged), one of a huge page is one. The pool has at most
//! `depth` buffers, no more than there are requests, and takes at most [`MAX_POOL`] bytes:
//! with longer requests it has fewer buffers, so fewer reads in flight; a request longer than
//! that is an error. [`DepthReader::read_many`] reads into the caller's buffers (plain
//! `READ`), with whatever pages they have.
//!
//! Every way out of a call (its result, an error, a panic in `done` or in imago) first waits
//! for the reads in flight: no buffer is freed or handed back while the kernel may still write
//! into it.
//!
//! When the ring cannot be set up (seccomp, a kernel before 5.6, io_uring disabled) the reader
//! falls back to `depth` threads, each with one blocking [`Disk::read`] in flight on a
//! contiguous share of the requests (`read_each`: each into its own slot of the same pool);
//! [`DepthReader::backend`] says which one runs and why. There too, once a read fails or
//! `done` returns an error (or panics), no further read starts and `done` is not called again.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use imago::file::File as ImagoFile;
use imago::{Mapping, Storage};
use io_uring::{opcode, types, IoUring};

use crate::disk::{io_err, Disk, DiskError};

/// The largest host read put into one ring entry (its length is a `u32`).
const MAX_SEGMENT: u64 = 1 << 30;
/// The deepest queue a reader keeps (its ring's size).
pub const MAX_DEPTH: usize = 4096;
/// The most memory [`DepthReader::read_each`]'s buffer pool takes, and so the longest request
/// it reads.
pub const MAX_POOL: usize = 1 << 30;
/// Alignment of the buffer pool: a transparent huge page.
const HUGE_PAGE: usize = 2 << 20;
/// How many times in a row waiting for completions may fail with `EBUSY` or `EAGAIN` (a
/// millisecond apart) before a call gives up.
const MAX_RETRIES: u32 = 100;
/// How many times in a row waiting for the last reads in flight may fail (a millisecond apart)
/// before the process is aborted rather than free buffers the kernel may still write.
const MAX_DRAIN_FAILURES: u32 = 10_000;

/// What serves a [`DepthReader`]'s reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// io_uring; `registered_buffers`: whether the buffer pool of [`DepthReader::read_each`]
    /// is registered with the ring (`READ_FIXED`).
    IoUring { registered_buffers: bool },
    /// `depth` threads with one blocking read each, because io_uring could not be used.
    Threads { reason: String },
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::IoUring { registered_buffers: true } => write!(f, "io_uring, registered buffers"),
            Backend::IoUring { registered_buffers: false } => write!(f, "io_uring"),
            Backend::Threads { reason } => write!(f, "threads (io_uring unavailable: {reason})"),
        }
    }
}

/// Reads of one disk with up to `depth` host reads in flight. See the module docs.
pub struct DepthReader<'d> {
    depth: usize,
    /// Dropped before `pool`, which it may have registered (fields drop in order).
    ring: Option<Ring>,
    reason: String,
    files: HostFiles<'d>,
    pool: Option<Pool>,
}

/// The ring, and how many reads pushed to it the kernel may still be doing.
struct Ring {
    uring: IoUring,
    in_flight: usize,
}

impl Ring {
    /// Waits for every read in flight (submitting those not submitted yet): once it returns,
    /// their buffers may be freed. When waiting keeps failing it aborts the process: returning
    /// would let the kernel write into freed memory.
    fn drain(&mut self) {
        let mut failures = 0;
        loop {
            self.in_flight = self.in_flight.saturating_sub(self.uring.completion().count());
            if self.in_flight == 0 {
                return;
            }
            match self.uring.submit_and_wait(1) {
                Ok(_) => failures = 0,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    failures += 1;
                    if failures == MAX_DRAIN_FAILURES {
                        eprintln!(
                            "stackbed depth reader: {} io_uring reads still in flight and waiting for them fails \
                             ({e}); aborting rather than freeing their buffers",
                            self.in_flight
                        );
                        std::process::abort();
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

/// Drains the ring when dropped: a run that ends early, with an error or a panic unwinding
/// through it, leaves no read behind that could write into buffers freed next.
struct Draining<'a>(&'a mut Ring);

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        self.0.drain();
    }
}

/// The disk, and the descriptors its reads go to by the imago storage object they stand for.
struct HostFiles<'d> {
    disk: &'d Disk,
    /// `None`: the disk kept no descriptor for the storage; its ranges go through `Disk::read`.
    files: Vec<(*const ImagoFile, Option<&'d std::fs::File>)>,
}

/// `slots` buffers of `slot_len` bytes in one allocation.
struct Pool {
    /// The 2 MiB-aligned start of the buffers, inside `map`.
    ptr: NonNull<u8>,
    /// The whole mapping (with the slack that aligning took), for munmap.
    map: NonNull<u8>,
    map_len: usize,
    /// The buffers' length from `ptr`: whole huge pages, advised MADV_HUGEPAGE.
    size: usize,
    slot_len: usize,
    slots: usize,
    registered: bool,
}

impl Pool {
    /// `slot_len` is a multiple of 4096. Fails (rather than aborting) when the memory is not
    /// there or the size does not fit.
    ///
    /// The memory comes straight from the kernel (an anonymous mapping), not from the global
    /// allocator: an allocator may hand out pages it has already touched as 4 KiB pages, and
    /// MADV_HUGEPAGE does not turn those into a huge page. A fresh mapping, advised before
    /// its first touch, gets huge pages when the kernel has them.
    fn new(slots: usize, slot_len: usize) -> std::io::Result<Pool> {
        let oom = || std::io::Error::from(std::io::ErrorKind::OutOfMemory);
        // Whole huge pages: a huge page needs its 2 MiB-aligned range inside the advised area.
        let size = slots.checked_mul(slot_len).and_then(|s| s.checked_next_multiple_of(HUGE_PAGE));
        let size = size.filter(|&s| s > 0).ok_or_else(oom)?;
        // One huge page of slack, to start on a 2 MiB boundary.
        let map_len = size.checked_add(HUGE_PAGE).ok_or_else(oom)?;
        // SAFETY: a new private anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let map = NonNull::new(raw.cast::<u8>()).ok_or_else(oom)?;
        let skip = (raw as usize).next_multiple_of(HUGE_PAGE) - raw as usize;
        // SAFETY: skip < HUGE_PAGE and skip + size <= map_len: within the mapping.
        let ptr = unsafe { map.add(skip) };
        // SAFETY: the range lies in the mapping. Advice only: failure changes nothing.
        unsafe { libc::madvise(ptr.as_ptr().cast(), size, libc::MADV_HUGEPAGE) };
        // SAFETY: within the mapping; the pages are touched now rather than during reads.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, size) };
        Ok(Pool { ptr, map, map_len, size, slot_len, slots, registered: false })
    }

    fn slot(&self, i: usize) -> *mut u8 {
        debug_assert!(i < self.slots);
        // SAFETY: slot i lies within the allocation.
        unsafe { self.ptr.as_ptr().add(i * self.slot_len) }
    }

    fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.slots).map(|i| libc::iovec { iov_base: self.slot(i).cast(), iov_len: self.slot_len }).collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Pool::new`, unmapped once.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// A host read: `len` bytes at `host` in `files[file]` into `ptr`, for guest offset `guest`
/// of request `req`.
struct Segment {
    req: usize,
    file: usize,
    host: u64,
    guest: u64,
    ptr: *mut u8,
    len: usize,
    fixed: Option<u16>,
}

/// Where request `i` reads to and what happens when it is complete.
trait Target {
    fn count(&self) -> usize;
    fn request(&self, i: usize) -> (u64, usize);
    /// The buffer for request `i` (and its registered index), or `None` when none is free
    /// until an earlier request finishes.
    fn begin(&mut self, i: usize) -> Option<(*mut u8, Option<u16>)>;
    fn finish(&mut self, i: usize) -> Result<(), DiskError>;
}

/// Caller-owned buffers (borrowed by `read_many` for the whole run).
struct Buffers {
    reqs: Vec<(u64, *mut u8, usize)>,
}

impl Target for Buffers {
    fn count(&self) -> usize {
        self.reqs.len()
    }
    fn request(&self, i: usize) -> (u64, usize) {
        (self.reqs[i].0, self.reqs[i].2)
    }
    fn begin(&mut self, i: usize) -> Option<(*mut u8, Option<u16>)> {
        Some((self.reqs[i].1, None))
    }
    fn finish(&mut self, _: usize) -> Result<(), DiskError> {
        Ok(())
    }
}

/// The reader's pool: a slot per request in flight; `done` sees the bytes when it completes.
struct Slots<'a, F> {
    reqs: &'a [(u64, usize)],
    pool: &'a Pool,
    /// Free slots, oldest first: requests in offset order then take slots in address order,
    /// so that adjacent requests the block layer merges have adjacent buffers.
    free: VecDeque<usize>,
    slot_of: Vec<usize>,
    done: F,
}

impl<F: FnMut(usize, &[u8]) -> Result<(), DiskError>> Target for Slots<'_, F> {
    fn count(&self) -> usize {
        self.reqs.len()
    }
    fn request(&self, i: usize) -> (u64, usize) {
        self.reqs[i]
    }
    fn begin(&mut self, i: usize) -> Option<(*mut u8, Option<u16>)> {
        let slot = self.free.pop_front()?;
        self.slot_of[i] = slot;
        Some((self.pool.slot(slot), self.pool.registered.then_some(slot as u16)))
    }
    fn finish(&mut self, i: usize) -> Result<(), DiskError> {
        let slot = self.slot_of[i];
        // SAFETY: the slot's reads are all complete; it holds the request's `len` bytes and
        // nothing else writes it until it is freed below.
        let data = unsafe { std::slice::from_raw_parts(self.pool.slot(slot), self.reqs[i].1) };
        let r = (self.done)(i, data);
        self.free.push_back(slot);
        r
    }
}

impl<'d> DepthReader<'d> {
    /// A reader for `disk` keeping up to `depth` (1 to [`MAX_DEPTH`]) host reads in flight. Never
    /// fails: without io_uring it runs on threads (see [`DepthReader::backend`]).
    pub fn new(disk: &'d Disk, depth: usize) -> DepthReader<'d> {
        let depth = depth.clamp(1, MAX_DEPTH);
        let (ring, reason) = match setup_ring(depth) {
            Ok(uring) => (Some(Ring { uring, in_flight: 0 }), String::new()),
            Err(e) => (None, e),
        };
        DepthReader { depth, ring, reason, files: HostFiles { disk, files: Vec::new() }, pool: None }
    }

    /// A reader that uses the thread path even where io_uring works (for comparisons).
    pub fn with_threads(disk: &'d Disk, depth: usize) -> DepthReader<'d> {
        let reason = "threads asked for".to_string();
        DepthReader {
            depth: depth.max(1),
            ring: None,
            reason,
            files: HostFiles { disk, files: Vec::new() },
            pool: None,
        }
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    pub fn backend(&self) -> Backend {
        match &self.ring {
            Some(_) => Backend::IoUring { registered_buffers: self.pool.as_ref().is_some_and(|p| p.registered) },
            None => Backend::Threads { reason: self.reason.clone() },
        }
    }

    /// How much of the buffer pool of [`DepthReader::read_each`] the kernel backs with huge
    /// pages, and the pool's size, in KiB (from /proc/self/smaps); `None` before the pool is
    /// set up or where smaps cannot be read. Huge pages are what make a buffer one segment.
    pub fn pool_huge_pages(&self) -> Option<(u64, u64)> {
        let pool = self.pool.as_ref()?;
        let (start, end) = (pool.ptr.as_ptr() as usize, pool.ptr.as_ptr() as usize + pool.size);
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut in_pool = false;
        let (mut huge, mut size) = (0, 0);
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-').filter(|(a, _)| !a.ends_with(':')) {
                // A mapping's header: the advised range is a mapping of its own (or a few).
                let parse = |x: &str| usize::from_str_radix(x, 16).ok();
                in_pool = matches!((parse(a), parse(b)), (Some(a), Some(b)) if a >= start && b <= end);
            } else if in_pool && first == "AnonHugePages:" {
                huge += words.next()?.parse::<u64>().ok()?;
            } else if in_pool && first == "Size:" {
                size += words.next()?.parse::<u64>().ok()?;
            }
        }
        Some((huge, size))
    }

    /// Host reads submitted to the ring and not yet reaped. Always 0 between calls, also after
    /// a call that panicked: every call waits for its reads before it returns or unwinds.
    pub fn in_flight(&self) -> usize {
        self.ring.as_ref().map_or(0, |r| r.in_flight)
    }

    /// Reads each `(offset, buf)`: exactly what [`Disk::read`] of each would give (zeroes
    /// past the end of the disk). On an error the reads in flight are waited for, then the
    /// first error is returned; the buffers' contents are then unspecified.
    pub fn read_many(&mut self, reqs: &mut [(u64, &mut [u8])]) -> Result<(), DiskError> {
        let Some(ring) = &mut self.ring else { return self.threads_many(reqs) };
        let mut target = Buffers { reqs: reqs.iter_mut().map(|(o, b)| (*o, b.as_mut_ptr(), b.len())).collect() };
        run(ring, &mut self.files, self.depth, &mut target)
    }

    /// Reads `len` bytes at each `(offset, len)` into the reader's own buffers (one per
    /// request in flight; see the module docs) and calls `done(i, bytes)` as request `i`
    /// completes, in completion order. The bytes are what [`Disk::read`] would give. An error
    /// from `done` stops the reads like a read error does, and `done` is not called again. A
    /// request longer than [`MAX_POOL`] bytes, or buffers that cannot be allocated, are an
    /// error before any read.
    pub fn read_each(
        &mut self,
        reqs: &[(u64, usize)],
        done: impl FnMut(usize, &[u8]) -> Result<(), DiskError> + Send,
    ) -> Result<(), DiskError> {
        if reqs.is_empty() {
            return Ok(());
        }
        let max_len = reqs.iter().map(|r| r.1).max().unwrap_or(0);
        self.prepare_pool(max_len, reqs.len())?;
        let pool = self.pool.as_ref().expect("pool prepared");
        let Some(ring) = &mut self.ring else { return self.threads_each(reqs, done) };
        let mut target = Slots { reqs, pool, free: (0..pool.slots).collect(), slot_of: vec![0; reqs.len()], done };
        run(ring, &mut self.files, self.depth, &mut target)
    }

    /// Sets up [`DepthReader::read_each`]'s buffers for requests of up to `len` bytes now
    /// rather than on its first call (which does it otherwise).
    pub fn reserve(&mut self, len: usize) -> Result<(), DiskError> {
        self.prepare_pool(len, self.depth)
    }

    /// Makes sure the pool has a slot of at least `len` bytes for each of `count` requests in
    /// flight (at most `depth`, and at most [`MAX_POOL`] bytes in all), registered if it can be.
    fn prepare_pool(&mut self, len: usize, count: usize) -> Result<(), DiskError> {
        let disk = self.files.disk;
        let slot_len = len.max(disk.mem_align()).max(1).checked_next_multiple_of(4096).filter(|&l| l <= MAX_POOL);
        let Some(slot_len) = slot_len else {
            return Err(DiskError::Invalid(format!(
                "depth reader: a request of {len} bytes is longer than its buffers can be ({MAX_POOL} bytes)"
            )));
        };
        let slots = count.min(self.depth).min(MAX_POOL / slot_len).max(1);
        if self.pool.as_ref().is_some_and(|p| p.slot_len >= slot_len && p.slots >= slots) {
            return Ok(());
        }
        if let Some(old) = self.pool.take() {
            if let (true, Some(ring)) = (old.registered, &self.ring) {
                let _ = ring.uring.submitter().unregister_buffers();
            }
            drop(old);
        }
        let mut pool = Pool::new(slots, slot_len).map_err(io_err("cannot allocate read buffers for", disk.path()))?;
        // Registered buffers are at most 1 GiB each and indexed by a u16; the kernel refuses
        // what it cannot take, and the reads are then plain READ.
        if let Some(ring) = &self.ring {
            if pool.slot_len as u64 <= MAX_SEGMENT && pool.slots <= u16::MAX as usize {
                // SAFETY: the buffers live in `pool`, which stays registered only while it is
                // alive: it is unregistered above before being dropped, and the ring (dropped
                // first, see the field order) goes with it. No read is in flight between calls.
                pool.registered = unsafe { ring.uring.submitter().register_buffers(&pool.iovecs()) }.is_ok();
            }
        }
        self.pool = Some(pool);
        Ok(())
    }

    /// The thread path of [`DepthReader::read_many`]: `depth` threads, a contiguous share each.
    fn threads_many(&self, reqs: &mut [(u64, &mut [u8])]) -> Result<(), DiskError> {
        if reqs.is_empty() {
            return Ok(());
        }
        let per = reqs.len().div_ceil(self.depth);
        let disk = self.files.disk;
        // Set by the first failure: the other threads start no further read.
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let handles: Vec<_> = reqs
                .chunks_mut(per)
                .map(|chunk| {
                    let stop = &stop;
                    s.spawn(move || {
                        for (o, b) in chunk {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            disk.read(b, *o).inspect_err(|_| stop.store(true, Ordering::Relaxed))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })
    }

    /// The thread path of [`DepthReader::read_each`]: a slot of the pool per thread.
    fn threads_each(
        &self,
        reqs: &[(u64, usize)],
        done: impl FnMut(usize, &[u8]) -> Result<(), DiskError> + Send,
    ) -> Result<(), DiskError> {
        let pool = self.pool.as_ref().expect("pool prepared");
        let per = reqs.len().div_ceil(pool.slots);
        let disk = self.files.disk;
        let done = Mutex::new(done);
        // Set by the first failed read or error from `done`: the other threads start no
        // further read and no longer call `done`. A panic in `done` poisons the lock, which
        // stops them too.
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let handles: Vec<_> = reqs
                .chunks(per)
                .enumerate()
                .map(|(k, chunk)| {
                    let (done, stop) = (&done, &stop);
                    // SAFETY: slot k (k < pool.slots, as there are at most that many chunks) is
                    // this thread's alone for the scope.
                    let buf = unsafe { std::slice::from_raw_parts_mut(pool.slot(k), pool.slot_len) };
                    s.spawn(move || -> Result<(), DiskError> {
                        for (j, &(o, len)) in chunk.iter().enumerate() {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let b = &mut buf[..len];
                            disk.read(b, o).inspect_err(|_| stop.store(true, Ordering::Relaxed))?;
                            let Ok(mut f) = done.lock() else { break };
                            // Checked again under the lock: another call may have failed meanwhile.
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            (*f)(k * per + j, b).inspect_err(|_| stop.store(true, Ordering::Relaxed))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })
    }
}

impl Drop for DepthReader<'_> {
    fn drop(&mut self) {
        // The ring before the pool it may have registered.
        self.ring = None;
    }
}

impl<'d> HostFiles<'d> {
    /// The index in `files` for an imago storage object: the descriptor the disk kept for the
    /// file of that name when it was opened (see `Disk::host_file`).
    fn index(&mut self, storage: &ImagoFile) -> usize {
        let key = storage as *const ImagoFile;
        if let Some(i) = self.files.iter().position(|f| f.0 == key) {
            return i;
        }
        let file = storage.get_filename().and_then(|name| self.disk.host_file(&name));
        self.files.push((key, file));
        self.files.len() - 1
    }

    fn fd(&self, i: usize) -> RawFd {
        self.files[i].1.expect("segments have a file").as_raw_fd()
    }

    /// Maps request `req` (guest `offset`, `len` bytes into `ptr`): zero and special ranges
    /// are done here; host reads are appended to `out`.
    fn map(
        &mut self,
        req: usize,
        offset: u64,
        ptr: *mut u8,
        len: usize,
        fixed: Option<u16>,
        out: &mut VecDeque<Segment>,
    ) -> Result<(), DiskError> {
        let disk = self.disk;
        let (req_align, mem_align) = (disk.req_align() as u64, disk.mem_align());
        let mut at = 0usize;
        while at < len {
            let guest = offset + at as u64;
            // SAFETY: `ptr..ptr+len` is the request's buffer; this part of it has no read in
            // flight (reads in flight cover only parts before `at`).
            let rest = || unsafe { std::slice::from_raw_parts_mut(ptr.add(at), len - at) };
            let (mapping, n) =
                disk.access().get_mapping(guest, (len - at) as u64).map_err(io_err("read failed on", disk.path()))?;
            let n = n.min(MAX_SEGMENT) as usize;
            if n == 0 {
                rest().fill(0);
                break;
            }
            let piece = || &mut rest()[..n];
            match mapping {
                Mapping::Raw { storage, offset: host, .. } => {
                    let p = ptr.wrapping_add(at);
                    let aligned = host.is_multiple_of(req_align)
                        && (n as u64).is_multiple_of(req_align)
                        && (p as usize).is_multiple_of(mem_align);
                    let file = self.index(storage);
                    if aligned && self.files[file].1.is_some() {
                        out.push_back(Segment { req, file, host, guest, ptr: p, len: n, fixed });
                    } else {
                        disk.read(piece(), guest)?;
                    }
                }
                Mapping::Zero { .. } | Mapping::Eof { .. } => piece().fill(0),
                // Compressed or otherwise encoded: the format driver reads it.
                _ => disk.read(piece(), guest)?,
            }
            at += n;
        }
        Ok(())
    }
}

/// Reads `target`'s requests with up to `depth` host reads in flight on `ring`. However it
/// ends (done, an error, a panic), the reads in flight are waited for first.
fn run(ring: &mut Ring, files: &mut HostFiles<'_>, depth: usize, target: &mut dyn Target) -> Result<(), DiskError> {
    let draining = Draining(ring);
    let ring = &mut *draining.0;
    let disk = files.disk;
    let n = target.count();
    // Host reads not yet complete, by request.
    let mut pending = vec![0usize; n];
    // Mapped host reads not yet submitted, in request order.
    let mut queue: VecDeque<Segment> = VecDeque::new();
    // Submitted host reads, by the id in their entry's user data.
    let mut slab: Vec<Option<Segment>> = Vec::new();
    let mut free_ids: Vec<usize> = Vec::new();
    let mut next = 0usize;
    let mut finished = 0usize;
    let mut retries = 0;
    loop {
        // Fill the queue up to the depth, in request order.
        while ring.in_flight < depth {
            if let Some(seg) = queue.pop_front() {
                let fd = types::Fd(files.fd(seg.file));
                let id = free_ids.pop().unwrap_or_else(|| {
                    slab.push(None);
                    slab.len() - 1
                });
                let entry = match seg.fixed {
                    Some(index) => opcode::ReadFixed::new(fd, seg.ptr, seg.len as u32, index).offset(seg.host).build(),
                    None => opcode::Read::new(fd, seg.ptr, seg.len as u32).offset(seg.host).build(),
                }
                .user_data(id as u64);
                // SAFETY: the buffer stays valid until the completion is reaped: the caller's
                // buffers are borrowed and the pool is not touched for the whole call, and
                // `draining` reaps every read before the call ends, however it ends.
                unsafe { ring.uring.submission().push(&entry) }
                    .map_err(|_| DiskError::Invalid("depth reader: submission queue full".into()))?;
                slab[id] = Some(seg);
                ring.in_flight += 1;
                continue;
            }
            if next == n {
                break;
            }
            let Some((ptr, fixed)) = target.begin(next) else { break };
            let (offset, len) = target.request(next);
            let before = queue.len();
            files.map(next, offset, ptr, len, fixed, &mut queue)?;
            pending[next] = queue.len() - before;
            next += 1;
            if pending[next - 1] == 0 {
                finished += 1;
                target.finish(next - 1)?;
            }
        }
        if finished == n {
            return Ok(());
        }
        if ring.in_flight == 0 {
            // Cannot happen: requests not finished have reads in flight or a buffer to come,
            // and buffers are freed by completions.
            return Err(DiskError::Invalid("depth reader: requests left with nothing in flight".into()));
        }
        match ring.uring.submit_and_wait(1) {
            Ok(_) => retries = 0,
            // A signal: reap what is there and wait again.
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            // Completions to reap first (EBUSY), or the kernel short of memory for the moment
            // (EAGAIN): reap and try again, a bounded number of times.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) && retries < MAX_RETRIES => {
                retries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(io_err("io_uring wait failed on", disk.path())(e)),
        }
        let done: Vec<(u64, i32)> = ring.uring.completion().map(|c| (c.user_data(), c.result())).collect();
        // Reaped: no longer in flight, whatever happens to them below.
        ring.in_flight -= done.len();
        for (id, res) in done {
            let seg = slab[id as usize].take().expect("completion of a submitted read");
            free_ids.push(id as usize);
            complete(disk, &seg, res)?;
            pending[seg.req] -= 1;
            if pending[seg.req] == 0 {
                finished += 1;
                target.finish(seg.req)?;
            }
        }
    }
}

/// Finishes a host read the kernel completed with `res`: a short read (the end of the host
/// file) and a read given back with `EAGAIN` or `EINTR` are read on through the format driver,
/// as [`Disk::read`] reads them; another error is returned.
fn complete(disk: &Disk, seg: &Segment, res: i32) -> Result<(), DiskError> {
    let got = match res {
        0.. => (res as usize).min(seg.len),
        _ if res == -libc::EAGAIN || res == -libc::EINTR => 0,
        _ => return Err(io_err("read failed on", disk.path())(std::io::Error::from_raw_os_error(-res))),
    };
    if got < seg.len {
        // SAFETY: this segment's read is complete; the part is not shared.
        let rest = unsafe { std::slice::from_raw_parts_mut(seg.ptr.add(got), seg.len - got) };
        disk.read(rest, seg.guest + got as u64)?;
    }
    Ok(())
}

/// A ring with room for `depth` entries that can do `READ` and `READ_FIXED`.
fn setup_ring(depth: usize) -> Result<IoUring, String> {
    let entries = (depth.next_power_of_two() as u32).clamp(8, MAX_DEPTH as u32);
    let ring = IoUring::new(entries).map_err(|e| format!("io_uring_setup: {e}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("io_uring probe: {e}"))?;
    for (code, name) in [(opcode::Read::CODE, "READ"), (opcode::ReadFixed::CODE, "READ_FIXED")] {
        if !probe.is_supported(code) {
            return Err(format!("the kernel's io_uring has no {name}"));
        }
    }
    Ok(ring)
}

impl Disk {
    /// Reads each `(offset, buf)` with up to `depth` host reads in flight (see
    /// [`DepthReader`]); the bytes are what [`Disk::read`] gives for each.
    pub fn read_many(&self, reqs: &mut [(u64, &mut [u8])], depth: usize) -> Result<(), DiskError> {
        DepthReader::new(self, depth).read_many(reqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::OpenOptions;

    #[test]
    fn transient_completion_errors_are_read_through_the_driver() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let disk = Disk::open(&p, OpenOptions::default()).unwrap();
        let want = &data[4096..4096 + 8192];
        // Completions of a read of 8 KiB at 4 KiB: given back (EAGAIN, EINTR), short (0 or
        // 100 bytes read, which are in the buffer already), whole.
        for (res, already) in [(-libc::EAGAIN, 0), (-libc::EINTR, 0), (0, 0), (100, 100), (8192, 8192)] {
            let mut buf = vec![0u8; 8192];
            buf[..already].copy_from_slice(&want[..already]);
            let seg =
                Segment { req: 0, file: 0, host: 4096, guest: 4096, ptr: buf.as_mut_ptr(), len: 8192, fixed: None };
            complete(&disk, &seg, res).unwrap();
            assert!(buf == want, "completion {res}");
        }
        let mut buf = vec![0u8; 8192];
        let seg = Segment { req: 0, file: 0, host: 4096, guest: 4096, ptr: buf.as_mut_ptr(), len: 8192, fixed: None };
        assert!(matches!(complete(&disk, &seg, -libc::EIO), Err(DiskError::Io { .. })));
    }
}
