//! Internal qcow2 snapshots (what `qemu-img snapshot -c/-a/-d/-l` do), hand-written: imago has
//! no snapshot API. The image must not be open elsewhere while this runs.
//!
//! Create copies the active L1 table, adds one reference to every L2 table and data cluster
//! it reaches (clearing their COPIED flags: they are shared now) and appends the snapshot to
//! the table. Revert points the active L1 table at the snapshot's tables, moving one
//! reference from the old active tree to the snapshot's tree, and sets the active tree's
//! COPIED flags from the new refcounts. Delete drops one reference from everything the
//! snapshot's tree reaches (and its L1 table), removes the entry and sets the active tree's
//! COPIED flags again. All three rebuild the refcount structure from the counts
//! held in memory and append it at the end of the file (the old one is freed), so growth of
//! the refcount table never needs special cases; the header is written last, after a sync.
//!
//! Supported: qcow2 v3 with 16-bit refcounts (what qemu-img and this crate create), no
//! encryption, no compressed clusters, no external data file, no extended L2 entries; other
//! images give [`Qcow2Error::Unsupported`]. Checked against `qemu-img check`, `compare`,
//! `snapshot -l`, `-a` and `-d` (both ways) in tests/qemu_compat.rs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::qcow2::{read_at_most, snapshot_table, Header, Qcow2Error, Snapshot};

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;

struct Image {
    file: File,
    path: String,
    h: Header,
    cs: u64,
    /// Refcount of every host cluster, index = offset / cluster size.
    counts: Vec<u64>,
}

impl Image {
    fn io(&self) -> impl Fn(std::io::Error) -> Qcow2Error + '_ {
        |source| Qcow2Error::Io { path: self.path.clone(), source }
    }

    fn open(path: &Path) -> Result<Image, Qcow2Error> {
        let h = Header::read(path)?;
        let p = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Qcow2Error::Io { path: p.clone(), source })?;
        let len = file.metadata().map_err(|source| Qcow2Error::Io { path: p.clone(), source })?.len();
        h.check_tables_within(len)?;
        if h.version != 3 || h.refcount_order != 4 {
            return Err(Qcow2Error::Unsupported(format!(
                "internal snapshots need a version 3 image with 16-bit refcounts (this one: version {}, refcount_order {})",
                h.version, h.refcount_order
            )));
        }
        if h.crypt_method != 0 || h.incompatible_features != 0 {
            return Err(Qcow2Error::Unsupported(format!(
                "encrypted, dirty, corrupt or extended images (crypt_method {}, incompatible features {:#x})",
                h.crypt_method, h.incompatible_features
            )));
        }
        let cs = h.cluster_size();
        let mut img = Image { file, path: p, cs, counts: vec![0; len.div_ceil(cs) as usize], h };
        img.load_refcounts()?;
        Ok(img)
    }

    fn read(&self, offset: u64, len: u64, what: &'static str) -> Result<Vec<u8>, Qcow2Error> {
        let mut buf = vec![0u8; len as usize];
        let n = read_at_most(&self.file, &mut buf, offset).map_err(self.io())?;
        if n < buf.len() {
            return Err(Qcow2Error::Truncated { what, start: offset, end: offset + len, len: offset + n as u64 });
        }
        Ok(buf)
    }

    fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), Qcow2Error> {
        self.file.write_all_at(bytes, offset).map_err(self.io())
    }

    fn cluster_index(&self, offset: u64, what: &str) -> Result<usize, Qcow2Error> {
        if !offset.is_multiple_of(self.cs) {
            return Err(Qcow2Error::Corrupt(format!("{what} at {offset:#x} is not cluster-aligned")));
        }
        Ok((offset / self.cs) as usize)
    }

    fn load_refcounts(&mut self) -> Result<(), Qcow2Error> {
        let table = self.read(
            self.h.refcount_table_offset,
            u64::from(self.h.refcount_table_clusters) * self.cs,
            "refcount table",
        )?;
        let per_block = self.cs / 2;
        for (b, e) in table.chunks_exact(8).enumerate() {
            let off = u64::from_be_bytes(e.try_into().unwrap_or_default()) & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let block = self.read(off, self.cs, "refcount block")?;
            for (i, r) in block.chunks_exact(2).enumerate() {
                let c = b as u64 * per_block + i as u64;
                let v = u64::from(u16::from_be_bytes([r[0], r[1]]));
                if v == 0 {
                    continue;
                }
                if c as usize >= self.counts.len() {
                    return Err(Qcow2Error::Corrupt(format!(
                        "refcount block {off:#x} counts cluster {c}, beyond the end of the image"
                    )));
                }
                self.counts[c as usize] = v;
            }
        }
        Ok(())
    }

    /// The refcount of the cluster at `offset` (an error beyond the end of the image).
    fn count(&self, offset: u64, what: &str) -> Result<u64, Qcow2Error> {
        let c = self.cluster_index(offset, what)?;
        self.counts
            .get(c)
            .copied()
            .ok_or_else(|| Qcow2Error::Corrupt(format!("{what} at {offset:#x} lies beyond the end of the image")))
    }

    fn add(&mut self, offset: u64, delta: i64, what: &str) -> Result<(), Qcow2Error> {
        let c = self.cluster_index(offset, what)?;
        if c >= self.counts.len() {
            return Err(Qcow2Error::Corrupt(format!("{what} at {offset:#x} lies beyond the end of the image")));
        }
        let v = self.counts[c] as i64 + delta;
        if !(0..=i64::from(u16::MAX)).contains(&v) {
            return Err(Qcow2Error::Corrupt(format!("refcount of {what} at {offset:#x} would become {v}")));
        }
        self.counts[c] = v as u64;
        Ok(())
    }

    fn l1(&self, offset: u64, entries: u32) -> Result<Vec<u64>, Qcow2Error> {
        let b = self.read(offset, u64::from(entries) * 8, "L1 table")?;
        Ok(b.chunks_exact(8).map(|e| u64::from_be_bytes(e.try_into().unwrap_or_default())).collect())
    }

    fn l2(&self, offset: u64) -> Result<Vec<u64>, Qcow2Error> {
        let b = self.read(offset, self.cs, "L2 table")?;
        Ok(b.chunks_exact(8).map(|e| u64::from_be_bytes(e.try_into().unwrap_or_default())).collect())
    }

    fn write_table(&self, offset: u64, entries: &[u64]) -> Result<(), Qcow2Error> {
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.write(offset, &bytes)
    }

    /// Adds `delta` references to every L2 table and data cluster the L1 table reaches.
    fn reference_tree(&mut self, l1: &[u64], delta: i64) -> Result<(), Qcow2Error> {
        for &e in l1 {
            let l2_off = e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            self.add(l2_off, delta, "L2 table")?;
            for d in self.l2(l2_off)? {
                if d & COMPRESSED != 0 {
                    return Err(Qcow2Error::Unsupported("images with compressed clusters".into()));
                }
                let off = d & OFFSET_MASK;
                if off != 0 {
                    self.add(off, delta, "data cluster")?;
                }
            }
        }
        Ok(())
    }

    /// Sets the COPIED flags of the active tree from the refcounts (what qemu-img check
    /// verifies) and writes back what changed. Returns the active L1 table.
    fn fix_copied_flags(&mut self, l1: &mut [u64]) -> Result<(), Qcow2Error> {
        for e in l1.iter_mut() {
            let l2_off = *e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            let exclusive = self.count(l2_off, "L2 table")? == 1;
            *e = if exclusive { *e | COPIED } else { *e & !COPIED };
            let mut l2 = self.l2(l2_off)?;
            let mut changed = false;
            for d in l2.iter_mut() {
                let off = *d & OFFSET_MASK;
                if off == 0 {
                    continue;
                }
                let one = self.count(off, "data cluster")? == 1;
                let want = if one && exclusive { *d | COPIED } else { *d & !COPIED };
                changed |= want != *d;
                *d = want;
            }
            if changed {
                if !exclusive {
                    // A shared table keeps its entries; they are all shared too.
                    continue;
                }
                self.write_table(l2_off, &l2)?;
            }
        }
        Ok(())
    }

    /// Clusters for `bytes` appended at the end; returns the offset.
    fn append(&mut self, bytes: u64) -> u64 {
        let at = self.counts.len() as u64 * self.cs;
        for _ in 0..bytes.div_ceil(self.cs).max(1) {
            self.counts.push(1);
        }
        at
    }

    /// Frees the old refcount structure, writes a new one at the end covering every cluster
    /// (itself included), syncs, then writes the header fields given, syncs again.
    fn commit(&mut self, header_fields: &[(usize, Vec<u8>)]) -> Result<(), Qcow2Error> {
        // Free the old refcount table and blocks.
        let table = self.read(
            self.h.refcount_table_offset,
            u64::from(self.h.refcount_table_clusters) * self.cs,
            "refcount table",
        )?;
        for e in table.chunks_exact(8) {
            let off = u64::from_be_bytes(e.try_into().unwrap_or_default()) & OFFSET_MASK;
            if off != 0 {
                self.add(off, -1, "refcount block")?;
            }
        }
        for c in 0..self.h.refcount_table_clusters {
            self.add(self.h.refcount_table_offset + u64::from(c) * self.cs, -1, "refcount table")?;
        }
        let per_block = self.cs / 2;
        let start = self.counts.len() as u64;
        let (mut blocks, mut table_clusters) = (1u64, 1u64);
        loop {
            let total = start + blocks + table_clusters;
            let (b, t) = (total.div_ceil(per_block), (total.div_ceil(per_block) * 8).div_ceil(self.cs));
            if (b, t) == (blocks, table_clusters) {
                break;
            }
            (blocks, table_clusters) = (b.max(blocks), t.max(table_clusters));
        }
        let table_off = start * self.cs;
        let blocks_off = (start + table_clusters) * self.cs;
        for _ in 0..table_clusters + blocks {
            self.counts.push(1);
        }
        let mut rt = vec![0u8; (table_clusters * self.cs) as usize];
        let mut rb = vec![0u8; (blocks * self.cs) as usize];
        for (c, &v) in self.counts.iter().enumerate() {
            let v = u16::try_from(v).map_err(|_| Qcow2Error::Corrupt(format!("refcount {v} overflows 16 bits")))?;
            rb[c * 2..c * 2 + 2].copy_from_slice(&v.to_be_bytes());
        }
        for b in 0..blocks as usize {
            rt[b * 8..b * 8 + 8].copy_from_slice(&(blocks_off + b as u64 * self.cs).to_be_bytes());
        }
        self.write(table_off, &rt)?;
        self.write(blocks_off, &rb)?;
        self.file.sync_data().map_err(self.io())?;
        self.write(48, &table_off.to_be_bytes())?;
        self.write(56, &(table_clusters as u32).to_be_bytes())?;
        for (at, bytes) in header_fields {
            self.write(*at as u64, bytes)?;
        }
        self.file.sync_data().map_err(self.io())
    }
}

fn encode_table(snaps: &[Snapshot]) -> Vec<u8> {
    snaps.iter().flat_map(Snapshot::encode).collect()
}

fn now() -> (u32, u32) {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as u32, d.subsec_nanos())
}

/// Creates an internal snapshot named `name` of the image at `path` (like
/// `qemu-img snapshot -c name`).
pub fn create(path: &Path, name: &str) -> Result<Snapshot, Qcow2Error> {
    let (mut snaps, old_len) = snapshot_table(path)?;
    if name.is_empty() || name.len() > 1023 {
        return Err(Qcow2Error::Unsupported("snapshot names are 1 to 1023 bytes".into()));
    }
    if snaps.iter().any(|s| s.name == name) {
        return Err(Qcow2Error::Unsupported(format!("a snapshot named `{name}` exists already")));
    }
    let mut img = Image::open(path)?;
    let mut l1 = img.l1(img.h.l1_table_offset, img.h.l1_size)?;
    img.reference_tree(&l1, 1)?;
    // Everything the active tree reaches is shared now.
    for e in l1.iter_mut() {
        let l2_off = *e & OFFSET_MASK;
        if l2_off == 0 {
            continue;
        }
        *e &= !COPIED;
        let mut l2 = img.l2(l2_off)?;
        if l2.iter().any(|d| d & COPIED != 0) {
            l2.iter_mut().for_each(|d| *d &= !COPIED);
            img.write_table(l2_off, &l2)?;
        }
    }
    img.write_table(img.h.l1_table_offset, &l1)?;
    let snap_l1 = img.append(u64::from(img.h.l1_size) * 8);
    img.write_table(snap_l1, &l1)?;
    let id = snaps.iter().filter_map(|s| s.id.parse::<u64>().ok()).max().unwrap_or(0) + 1;
    let (date_sec, date_nsec) = now();
    let snap = Snapshot {
        l1_table_offset: snap_l1,
        l1_size: img.h.l1_size,
        id: id.to_string(),
        name: name.to_string(),
        date_sec,
        date_nsec,
        vm_clock_nsec: 0,
        vm_state_size: 0,
        disk_size: Some(img.h.size),
    };
    // The old table's clusters are freed, the new one appended.
    if img.h.nb_snapshots > 0 {
        for c in 0..old_len.div_ceil(img.cs) {
            img.add(img.h.snapshots_offset + c * img.cs, -1, "snapshot table")?;
        }
    }
    snaps.push(snap.clone());
    let table = encode_table(&snaps);
    let table_off = img.append(table.len() as u64);
    img.write(table_off, &table)?;
    img.commit(&[(60, (snaps.len() as u32).to_be_bytes().to_vec()), (64, table_off.to_be_bytes().to_vec())])?;
    Ok(snap)
}

/// Reverts the image's disk contents to the snapshot named `name` (like
/// `qemu-img snapshot -a name`); the snapshot stays.
pub fn revert(path: &Path, name: &str) -> Result<(), Qcow2Error> {
    let (snaps, _) = snapshot_table(path)?;
    let snap = snaps
        .iter()
        .find(|s| s.name == name || s.id == name)
        .ok_or_else(|| Qcow2Error::Unsupported(format!("no snapshot named `{name}`")))?;
    let mut img = Image::open(path)?;
    if snap.l1_size != img.h.l1_size || snap.disk_size.is_some_and(|s| s != img.h.size) {
        return Err(Qcow2Error::Unsupported("reverting to a snapshot of a different disk size".into()));
    }
    let active = img.l1(img.h.l1_table_offset, img.h.l1_size)?;
    let mut target = img.l1(snap.l1_table_offset, snap.l1_size)?;
    img.reference_tree(&target, 1)?;
    img.reference_tree(&active, -1)?;
    img.fix_copied_flags(&mut target)?;
    img.write_table(img.h.l1_table_offset, &target)?;
    img.commit(&[])
}

/// Deletes the internal snapshot `name` (an id or a name, id first, like
/// `qemu-img snapshot -d`): its entry leaves the table, one reference is dropped from every L2
/// table and data cluster its L1 table reaches and from the L1 table's own clusters (clusters
/// nothing else references become free, for QEMU's allocator to reuse), and the active
/// tree's COPIED flags are set again where a cluster is now referenced once. The active
/// disk and the other snapshots read as before. Returns the deleted entry.
pub fn delete(path: &Path, name: &str) -> Result<Snapshot, Qcow2Error> {
    let (mut snaps, old_len) = snapshot_table(path)?;
    let at = snaps
        .iter()
        .position(|s| s.id == name)
        .or_else(|| snaps.iter().position(|s| s.name == name))
        .ok_or_else(|| Qcow2Error::Unsupported(format!("no snapshot named `{name}`")))?;
    let mut img = Image::open(path)?;
    let snap = snaps.remove(at);
    let l1_bytes = u64::from(snap.l1_size) * 8;
    if l1_bytes > 32 << 20 {
        return Err(Qcow2Error::Corrupt(format!(
            "snapshot `{}` has an L1 table of {} entries",
            snap.name, snap.l1_size
        )));
    }
    let snap_l1 = img.l1(snap.l1_table_offset, snap.l1_size)?;
    img.reference_tree(&snap_l1, -1)?;
    if l1_bytes > 0 {
        for c in 0..l1_bytes.div_ceil(img.cs) {
            img.add(snap.l1_table_offset + c * img.cs, -1, "snapshot L1 table")?;
        }
    }
    // The old table's clusters are freed; the shorter table (if any entry is left) appended.
    for c in 0..old_len.div_ceil(img.cs) {
        img.add(img.h.snapshots_offset + c * img.cs, -1, "snapshot table")?;
    }
    let table_off = if snaps.is_empty() {
        0
    } else {
        let table = encode_table(&snaps);
        let off = img.append(table.len() as u64);
        img.write(off, &table)?;
        off
    };
    img.commit(&[(60, (snaps.len() as u32).to_be_bytes().to_vec()), (64, table_off.to_be_bytes().to_vec())])?;
    // Only now, with the lowered refcounts and the shorter table on disk, may clusters the
    // active disk alone holds get their COPIED flag back: setting it first and crashing
    // before the commit would let QEMU write in place into clusters the snapshot still
    // shares. A crash after the commit leaves flags unset, which costs copies, not data.
    let mut active = img.l1(img.h.l1_table_offset, img.h.l1_size)?;
    img.fix_copied_flags(&mut active)?;
    img.write_table(img.h.l1_table_offset, &active)?;
    img.file.sync_data().map_err(img.io())?;
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_it_does_not_support() {
        let dir = std::env::temp_dir().join(format!("stackbed-snap-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("raw.img");
        std::fs::write(&raw, [0u8; 4096]).unwrap();
        assert!(matches!(create(&raw, "s"), Err(Qcow2Error::NotQcow2(_))));
        let img = dir.join("img.qcow2");
        crate::disk::create_qcow2(&img, 1 << 20).unwrap();
        assert!(create(&img, "").is_err());
        create(&img, "one").unwrap();
        assert!(create(&img, "one").is_err(), "duplicate names are refused");
        assert!(revert(&img, "two").is_err());
        assert!(delete(&img, "two").is_err());
        assert_eq!(delete(&img, "one").unwrap().name, "one");
        assert!(crate::qcow2::list_snapshots(&img).unwrap().is_empty());
        assert!(delete(&img, "one").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
