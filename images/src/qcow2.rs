//! The parts of the qcow2 format this crate reads and writes by hand (imago covers the rest):
//! the header with its extensions, and the internal-snapshot table that `qemu-img snapshot -l`
//! lists. Everything here parses untrusted bytes: every length and offset is checked, and a
//! corrupt or truncated image gives a [`Qcow2Error`], never a panic (see the proptests below).
//!
//! Layout reference: QEMU's docs/interop/qcow2.txt.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Header extension: the backing file's format name.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: the feature name table.
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// QEMU refuses snapshot tables beyond 65536 entries; so do we.
pub const SNAPSHOTS_MAX: u32 = 65_536;
/// QEMU's limit on a backing file name.
const BACKING_NAME_MAX: u32 = 1023;
/// L1 tables beyond 32 MiB are refused by QEMU as well.
const L1_BYTES_MAX: u64 = 32 << 20;

#[derive(Debug, Error)]
pub enum Qcow2Error {
    #[error("not a qcow2 image: {0}")]
    NotQcow2(String),
    #[error("corrupt qcow2 image: {0}")]
    Corrupt(String),
    #[error("truncated qcow2 image: {what} needs bytes {start}..{end}, the image has {len}")]
    Truncated { what: &'static str, start: u64, end: u64, len: u64 },
    #[error("unsupported qcow2 image: {0}")]
    Unsupported(String),
    #[error("i/o error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// A bounds-checked view of `[start, start+len)` of `bytes`.
fn slice<'a>(bytes: &'a [u8], what: &'static str, start: u64, len: u64) -> Result<&'a [u8], Qcow2Error> {
    let end = start.checked_add(len).ok_or_else(|| Qcow2Error::Corrupt(format!("{what}: offset overflows")))?;
    if end > bytes.len() as u64 {
        return Err(Qcow2Error::Truncated { what, start, end, len: bytes.len() as u64 });
    }
    Ok(&bytes[start as usize..end as usize])
}

/// The qcow2 header (v2 or v3) with the extensions this crate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Parses the header from the first bytes of an image (at least its first cluster is
    /// enough, since QEMU keeps header, extensions and backing name in cluster 0; fewer
    /// bytes give [`Qcow2Error::Truncated`]).
    pub fn parse(bytes: &[u8]) -> Result<Header, Qcow2Error> {
        if bytes.len() < 4 || bytes[..4] != MAGIC {
            return Err(Qcow2Error::NotQcow2("the magic QFI\\xfb is missing".into()));
        }
        let fixed = slice(bytes, "header", 0, 72)?;
        let version = be32(fixed, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Unsupported(format!("version {version} (only 2 and 3 exist)")));
        }
        let cluster_bits = be32(fixed, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(Qcow2Error::Corrupt(format!("cluster_bits {cluster_bits} outside 9..=21")));
        }
        let mut h = Header {
            version,
            cluster_bits,
            size: be64(fixed, 24),
            crypt_method: be32(fixed, 32),
            l1_size: be32(fixed, 36),
            l1_table_offset: be64(fixed, 40),
            refcount_table_offset: be64(fixed, 48),
            refcount_table_clusters: be32(fixed, 56),
            nb_snapshots: be32(fixed, 60),
            snapshots_offset: be64(fixed, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 72,
            backing_file: None,
            backing_format: None,
        };
        if version == 3 {
            let v3 = slice(bytes, "version 3 header", 0, 104)?;
            h.incompatible_features = be64(v3, 72);
            h.compatible_features = be64(v3, 80);
            h.autoclear_features = be64(v3, 88);
            h.refcount_order = be32(v3, 96);
            h.header_length = be32(v3, 100);
            if h.header_length < 104 {
                return Err(Qcow2Error::Corrupt(format!("header_length {} below 104", h.header_length)));
            }
            if h.refcount_order > 6 {
                return Err(Qcow2Error::Corrupt(format!("refcount_order {} above 6", h.refcount_order)));
            }
        }
        let cs = h.cluster_size();
        for (what, off) in [
            ("l1_table_offset", h.l1_table_offset),
            ("refcount_table_offset", h.refcount_table_offset),
            ("snapshots_offset", h.snapshots_offset),
        ] {
            if off % cs != 0 {
                return Err(Qcow2Error::Corrupt(format!("{what} {off:#x} is not cluster-aligned")));
            }
        }
        if u64::from(h.l1_size) * 8 > L1_BYTES_MAX {
            return Err(Qcow2Error::Corrupt(format!("l1_size {} beyond QEMU's 32 MiB limit", h.l1_size)));
        }
        if h.nb_snapshots > SNAPSHOTS_MAX {
            return Err(Qcow2Error::Corrupt(format!(
                "{} snapshots, above QEMU's limit {SNAPSHOTS_MAX}",
                h.nb_snapshots
            )));
        }
        // Header extensions (v3 only, but QEMU also reads them in v2 images).
        let mut at = u64::from(h.header_length);
        let backing_offset = be64(fixed, 8);
        let ext_end = if backing_offset != 0 { backing_offset.min(cs) } else { cs };
        loop {
            if at + 8 > ext_end {
                break;
            }
            let Ok(head) = slice(bytes, "header extension", at, 8) else { break };
            let (kind, len) = (be32(head, 0), be32(head, 4));
            if kind == 0 {
                break;
            }
            let data = slice(bytes, "header extension data", at + 8, u64::from(len))?;
            match kind {
                EXT_BACKING_FORMAT => {
                    h.backing_format = Some(
                        std::str::from_utf8(data)
                            .map_err(|_| Qcow2Error::Corrupt("backing format name is not UTF-8".into()))?
                            .to_string(),
                    )
                }
                EXT_FEATURE_NAMES => {}
                _ => {}
            }
            at += 8 + u64::from(len).div_ceil(8) * 8;
        }
        if backing_offset != 0 {
            let len = be32(fixed, 16);
            if len > BACKING_NAME_MAX {
                return Err(Qcow2Error::Corrupt(format!("backing file name of {len} bytes (QEMU allows 1023)")));
            }
            let name = slice(bytes, "backing file name", backing_offset, u64::from(len))?;
            h.backing_file = Some(
                std::str::from_utf8(name)
                    .map_err(|_| Qcow2Error::Corrupt("backing file name is not UTF-8".into()))?
                    .to_string(),
            );
        }
        Ok(h)
    }

    /// Checks that the tables the header points to lie inside a file of `file_len` bytes (a
    /// truncated image or a wild offset is refused before anything reads through it).
    pub fn check_tables_within(&self, file_len: u64) -> Result<(), Qcow2Error> {
        let cs = self.cluster_size();
        let tables = [
            ("L1 table", self.l1_table_offset, u64::from(self.l1_size) * 8),
            ("refcount table", self.refcount_table_offset, u64::from(self.refcount_table_clusters) * cs),
            ("snapshot table", self.snapshots_offset, if self.nb_snapshots > 0 { 40 } else { 0 }),
        ];
        for (what, start, len) in tables {
            if len == 0 {
                continue;
            }
            let end = start.checked_add(len).ok_or_else(|| Qcow2Error::Corrupt(format!("{what} offset overflows")))?;
            if end > file_len {
                return Err(Qcow2Error::Truncated { what, start, end, len: file_len });
            }
        }
        if self.refcount_table_clusters == 0 {
            return Err(Qcow2Error::Corrupt("the image has no refcount table".into()));
        }
        Ok(())
    }

    /// Reads and parses the header of the image at `path`.
    pub fn read(path: &Path) -> Result<Header, Qcow2Error> {
        let io = |source| Qcow2Error::Io { path: path.display().to_string(), source };
        let file = File::open(path).map_err(io)?;
        let mut buf = vec![0u8; 64 << 10];
        let n = read_at_most(&file, &mut buf, 0).map_err(io)?;
        buf.truncate(n);
        // Clusters bigger than 64 KiB may keep the backing name further out.
        let h = Header::parse(&buf);
        if let Ok(h) = &h {
            if h.cluster_size() > buf.len() as u64 && n == 64 << 10 {
                let mut big = vec![0u8; h.cluster_size() as usize];
                let n = read_at_most(&file, &mut big, 0).map_err(io)?;
                big.truncate(n);
                return Header::parse(&big);
            }
        }
        h
    }
}

/// Reads up to `buf.len()` bytes at `offset`, fewer at the end of the file.
pub fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// One internal snapshot as the snapshot table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    /// The virtual disk size when the snapshot was taken (v3 extra data), if recorded.
    pub disk_size: Option<u64>,
}

/// Extra data QEMU writes for every snapshot of a v3 image: vm_state_size_large, disk_size.
const SNAPSHOT_EXTRA_LEN: u32 = 16;
/// QEMU's limit on one entry's extra data.
const SNAPSHOT_EXTRA_MAX: u32 = 1024;

impl Snapshot {
    /// Parses `count` entries of the snapshot table from `bytes` (the table itself).
    pub fn parse_table(bytes: &[u8], count: u32) -> Result<Vec<Snapshot>, Qcow2Error> {
        Snapshot::parse_table_len(bytes, count).map(|(s, _)| s)
    }

    /// [`Snapshot::parse_table`], and the table's length in bytes.
    pub fn parse_table_len(bytes: &[u8], count: u32) -> Result<(Vec<Snapshot>, u64), Qcow2Error> {
        let mut out = Vec::with_capacity(count.min(1024) as usize);
        let mut at = 0u64;
        for _ in 0..count {
            let e = slice(bytes, "snapshot table entry", at, 40)?;
            let id_len = u64::from(be16(e, 12));
            let name_len = u64::from(be16(e, 14));
            let extra_len = be32(e, 36);
            if extra_len > SNAPSHOT_EXTRA_MAX {
                return Err(Qcow2Error::Corrupt(format!("snapshot extra data of {extra_len} bytes")));
            }
            let extra = slice(bytes, "snapshot extra data", at + 40, u64::from(extra_len))?;
            let mut vm_state_size = u64::from(be32(e, 32));
            let mut disk_size = None;
            if extra_len >= 8 {
                vm_state_size = be64(extra, 0);
            }
            if extra_len >= 16 {
                disk_size = Some(be64(extra, 8));
            }
            let strings_at = at + 40 + u64::from(extra_len);
            let id = slice(bytes, "snapshot id", strings_at, id_len)?;
            let name = slice(bytes, "snapshot name", strings_at + id_len, name_len)?;
            let text = |b: &[u8], what: &str| {
                std::str::from_utf8(b)
                    .map(str::to_string)
                    .map_err(|_| Qcow2Error::Corrupt(format!("snapshot {what} is not UTF-8")))
            };
            out.push(Snapshot {
                l1_table_offset: be64(e, 0),
                l1_size: be32(e, 8),
                id: text(id, "id")?,
                name: text(name, "name")?,
                date_sec: be32(e, 16),
                date_nsec: be32(e, 20),
                vm_clock_nsec: be64(e, 24),
                vm_state_size,
                disk_size,
            });
            at = (strings_at + id_len + name_len).div_ceil(8) * 8;
        }
        Ok((out, at))
    }

    /// The entry as QEMU writes it (with v3 extra data), padded to 8 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Vec::with_capacity(64 + self.id.len() + self.name.len());
        e.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        e.extend_from_slice(&self.l1_size.to_be_bytes());
        e.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        e.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        e.extend_from_slice(&self.date_sec.to_be_bytes());
        e.extend_from_slice(&self.date_nsec.to_be_bytes());
        e.extend_from_slice(&self.vm_clock_nsec.to_be_bytes());
        e.extend_from_slice(&(self.vm_state_size.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        e.extend_from_slice(&SNAPSHOT_EXTRA_LEN.to_be_bytes());
        e.extend_from_slice(&self.vm_state_size.to_be_bytes());
        e.extend_from_slice(&self.disk_size.unwrap_or(0).to_be_bytes());
        e.extend_from_slice(self.id.as_bytes());
        e.extend_from_slice(self.name.as_bytes());
        e.resize(e.len().div_ceil(8) * 8, 0);
        e
    }
}

/// Lists the internal snapshots of the qcow2 image at `path` (what `qemu-img snapshot -l`
/// shows).
pub fn list_snapshots(path: &Path) -> Result<Vec<Snapshot>, Qcow2Error> {
    snapshot_table(path).map(|(s, _)| s)
}

/// The snapshots and the table's length in bytes.
pub fn snapshot_table(path: &Path) -> Result<(Vec<Snapshot>, u64), Qcow2Error> {
    let h = Header::read(path)?;
    if h.nb_snapshots == 0 {
        return Ok((Vec::new(), 0));
    }
    let io = |source| Qcow2Error::Io { path: path.display().to_string(), source };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    // An entry is at most 40 + 1024 + 2 * 65535 bytes; read what the file has, bounded.
    let want = (u64::from(h.nb_snapshots) * 256).min(len.saturating_sub(h.snapshots_offset)).max(64 << 10);
    let mut buf = vec![0u8; want.min(64 << 20) as usize];
    let n = read_at_most(&file, &mut buf, h.snapshots_offset).map_err(io)?;
    buf.truncate(n);
    match Snapshot::parse_table_len(&buf, h.nb_snapshots) {
        Err(Qcow2Error::Truncated { .. }) if n == buf.capacity() => {
            // Long names: read the rest of the file (bounded by QEMU's table limit).
            let mut all = vec![0u8; len.saturating_sub(h.snapshots_offset).min(64 << 20) as usize];
            let n = read_at_most(&file, &mut all, h.snapshots_offset).map_err(io)?;
            all.truncate(n);
            Snapshot::parse_table_len(&all, h.nb_snapshots)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A v3 header as QEMU writes it for a 1 GiB image with a backing file.
    fn sample_header() -> Vec<u8> {
        let mut b = vec![0u8; 65536];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        let name = b"base.qcow2";
        b[8..16].copy_from_slice(&512u64.to_be_bytes());
        b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        b[36..40].copy_from_slice(&2u32.to_be_bytes());
        b[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        b[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        // backing format extension at 112
        b[112..116].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        b[116..120].copy_from_slice(&5u32.to_be_bytes());
        b[120..125].copy_from_slice(b"qcow2");
        b[512..512 + name.len()].copy_from_slice(name);
        b
    }

    #[test]
    fn parses_a_v3_header_with_backing() {
        let h = Header::parse(&sample_header()).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.size, 1 << 30);
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.backing_file.as_deref(), Some("base.qcow2"));
        assert_eq!(h.backing_format.as_deref(), Some("qcow2"));
    }

    #[test]
    fn refuses_bad_magic_and_truncation() {
        assert!(matches!(Header::parse(b"QFI"), Err(Qcow2Error::NotQcow2(_))));
        let b = sample_header();
        assert!(matches!(Header::parse(&b[..80]), Err(Qcow2Error::Truncated { .. })));
        assert!(matches!(Header::parse(&b[..515]), Err(Qcow2Error::Truncated { .. })));
        let mut bad = b.clone();
        bad[20..24].copy_from_slice(&40u32.to_be_bytes());
        assert!(matches!(Header::parse(&bad), Err(Qcow2Error::Corrupt(_))));
    }

    #[test]
    fn snapshot_entries_round_trip() {
        let s = Snapshot {
            l1_table_offset: 0x50000,
            l1_size: 2,
            id: "1".into(),
            name: "before-upgrade".into(),
            date_sec: 1_700_000_000,
            date_nsec: 5,
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: Some(1 << 30),
        };
        let mut table = s.encode();
        let mut t = s.clone();
        t.id = "2".into();
        t.name = "x".repeat(300);
        table.extend(t.encode());
        assert_eq!(Snapshot::parse_table(&table, 2).unwrap(), vec![s, t]);
        assert!(matches!(Snapshot::parse_table(&table[..50], 1), Err(Qcow2Error::Truncated { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any mutation of a good header parses or gives an error; never a panic.
        #[test]
        fn mutated_headers_never_panic(edits in prop::collection::vec((0usize..700, any::<u8>()), 0..24), cut in 0usize..70000) {
            let mut b = sample_header();
            for (at, v) in edits {
                b[at] = v;
            }
            b.truncate(cut);
            let _ = Header::parse(&b);
        }

        /// Arbitrary bytes as a snapshot table: parsed or refused, never a panic.
        #[test]
        fn arbitrary_snapshot_tables_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), count in 0u32..20) {
            let _ = Snapshot::parse_table(&bytes, count);
        }

        /// Mutated real tables: same.
        #[test]
        fn mutated_snapshot_tables_never_panic(edits in prop::collection::vec((0usize..120, any::<u8>()), 0..12), count in 0u32..4) {
            let s = Snapshot { l1_table_offset: 0x50000, l1_size: 2, id: "1".into(), name: "snap".into(),
                date_sec: 1, date_nsec: 2, vm_clock_nsec: 3, vm_state_size: 0, disk_size: Some(1 << 20) };
            let mut table = s.encode();
            table.extend(s.encode());
            for (at, v) in edits {
                if at < table.len() {
                    table[at] = v;
                }
            }
            let _ = Snapshot::parse_table(&table, count);
        }
    }
}
