//! The config drive: instance metadata on a small ISO 9660 image labelled `config-2`, the
//! modern replacement for file injection. cloud-init (and any guest) mounts the disk with
//! that label and reads `openstack/latest/meta_data.json`, `network_data.json`,
//! `vendor_data.json` and `user_data`.
//!
//! nova runs genisoimage for this; the image is small and fixed in shape, so it is written
//! here directly (no external tool, a few microseconds): ISO 9660 with level-2 file names in
//! upper case (`META_DATA.JSON;1`), which Linux's isofs shows in lower case without the
//! version, exactly the names cloud-init opens. The tests read it back with `isoinfo`
//! (an independent ISO 9660 reader) and with [`read_file`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

const SECTOR: usize = 2048;
/// The label cloud-init looks for.
pub const LABEL: &str = "config-2";

/// What the guest learns about itself (nova's `meta_data.json`, boot-relevant fields).
#[derive(Debug, Clone, Serialize)]
pub struct InstanceMetadata {
    pub uuid: String,
    pub name: String,
    pub hostname: String,
    pub project_id: String,
    pub availability_zone: String,
    pub launch_index: u32,
    /// Server metadata (`nova boot --meta k=v`).
    pub meta: BTreeMap<String, String>,
    /// Key name to public key.
    pub public_keys: BTreeMap<String, String>,
}

/// The files of a config drive, by path under the root (e.g. `openstack/latest/meta_data.json`).
pub fn files(meta: &InstanceMetadata, user_data: Option<&[u8]>) -> BTreeMap<String, Vec<u8>> {
    #[derive(Serialize)]
    struct MetaData<'a> {
        #[serde(flatten)]
        meta: &'a InstanceMetadata,
        files: [u8; 0],
        devices: [u8; 0],
    }
    // Plain data structs and json! values always serialise.
    let meta_data = serde_json::to_vec_pretty(&MetaData { meta, files: [], devices: [] }).unwrap_or_default();
    let network = serde_json::json!({"links": [], "networks": [], "services": []});
    let mut out = BTreeMap::new();
    out.insert("openstack/latest/meta_data.json".into(), meta_data);
    out.insert("openstack/latest/network_data.json".into(), serde_json::to_vec_pretty(&network).unwrap_or_default());
    out.insert("openstack/latest/vendor_data.json".into(), b"{}".to_vec());
    if let Some(u) = user_data {
        out.insert("openstack/latest/user_data".into(), u.to_vec());
    }
    out
}

/// ISO 9660 name of a path component: upper case, files get the `;1` version.
fn iso_name(component: &str, is_dir: bool) -> Vec<u8> {
    let up = component.to_ascii_uppercase();
    if is_dir {
        up.into_bytes()
    } else {
        format!("{up};1").into_bytes()
    }
}

fn both32(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}
fn both16(v: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..].copy_from_slice(&v.to_be_bytes());
    b
}

/// A fixed recording date (the image is reproducible byte for byte): 2024-01-01 00:00 UTC.
const DATE7: [u8; 7] = [124, 1, 1, 0, 0, 0, 0];

fn dir_record(name: &[u8], lba: u32, len: u32, is_dir: bool) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(len));
    r[18..25].copy_from_slice(&DATE7);
    r[25] = if is_dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = name.len() as u8;
    r.extend_from_slice(name);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

fn padded(s: &str, n: usize) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.resize(n, b' ');
    v
}

#[derive(Default)]
struct Dir {
    dirs: BTreeMap<String, Dir>,
    files: BTreeMap<String, Vec<u8>>,
    lba: u32,
    number: u16,
}

/// Builds the ISO image holding `files` (paths with `/`, no leading slash).
pub fn build_iso(files: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, String> {
    let mut root = Dir::default();
    for (path, data) in files {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.iter().any(|p| p.is_empty() || p.len() > 28 || !p.bytes().all(|b| b.is_ascii_graphic() && b != b';')) {
            return Err(format!("config drive path `{path}`: components must be 1-28 printable ASCII characters"));
        }
        let mut d = &mut root;
        for p in &parts[..parts.len() - 1] {
            d = d.dirs.entry((*p).to_string()).or_default();
        }
        d.files.insert(parts[parts.len() - 1].to_string(), data.clone());
    }
    // Directories in path-table order (breadth first, by name), numbered from 1.
    let mut order: Vec<(Vec<String>, u16)> = vec![(vec![], 0)];
    let mut i = 0;
    while i < order.len() {
        let (path, _) = order[i].clone();
        let d = walk(&root, &path);
        for name in d.dirs.keys() {
            let mut p = path.clone();
            p.push(name.clone());
            order.push((p, i as u16 + 1));
        }
        i += 1;
    }
    if order.len() > 64 {
        return Err("too many directories for a config drive".into());
    }
    // Layout: 16 system sectors, PVD, terminator, L and M path tables, a sector per
    // directory (a config drive's directories are small; checked), then file data.
    let table_len = path_table(&order, false, &root)?.len(); // sizes only; LBAs come below
    let pt_sectors = table_len.div_ceil(SECTOR).max(1) as u32;
    let l_lba = 18;
    let m_lba = l_lba + pt_sectors;
    let mut next = m_lba + pt_sectors;
    for (n, (path, _)) in order.iter().enumerate() {
        let d = walk_mut(&mut root, path);
        d.lba = next;
        d.number = n as u16 + 1;
        next += 1;
    }
    let mut data_lba = BTreeMap::new();
    for (path, data) in files {
        data_lba.insert(path.clone(), next);
        next += data.len().div_ceil(SECTOR).max(1) as u32;
    }
    let total = next as usize;
    let mut img = vec![0u8; total * SECTOR];
    // Directories.
    for (path, parent_number) in &order {
        let d = walk(&root, path);
        let parent_lba = if path.is_empty() { d.lba } else { walk(&root, &path[..path.len() - 1]).lba };
        let _ = parent_number;
        let mut recs = dir_record(&[0], d.lba, SECTOR as u32, true);
        recs.extend(dir_record(&[1], parent_lba, SECTOR as u32, true));
        // ISO 9660 sorts records by name; directories and files share one order.
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (name, sub) in &d.dirs {
            let n = iso_name(name, true);
            entries.push((n.clone(), dir_record(&n, sub.lba, SECTOR as u32, true)));
        }
        for (name, data) in &d.files {
            let full = if path.is_empty() { name.clone() } else { format!("{}/{name}", path.join("/")) };
            let n = iso_name(name, false);
            entries.push((n.clone(), dir_record(&n, data_lba[&full], data.len() as u32, false)));
        }
        entries.sort();
        for (_, r) in entries {
            recs.extend(r);
        }
        if recs.len() > SECTOR {
            return Err(format!("directory /{} has too many entries for one sector", path.join("/")));
        }
        let at = d.lba as usize * SECTOR;
        img[at..at + recs.len()].copy_from_slice(&recs);
    }
    for (path, data) in files {
        let at = data_lba[path] as usize * SECTOR;
        img[at..at + data.len()].copy_from_slice(data);
    }
    let l = path_table(&order, false, &root)?;
    let m = path_table(&order, true, &root)?;
    img[l_lba as usize * SECTOR..l_lba as usize * SECTOR + l.len()].copy_from_slice(&l);
    img[m_lba as usize * SECTOR..m_lba as usize * SECTOR + m.len()].copy_from_slice(&m);
    // Primary volume descriptor.
    let mut pvd = vec![0u8; SECTOR];
    pvd[0] = 1;
    pvd[1..6].copy_from_slice(b"CD001");
    pvd[6] = 1;
    pvd[8..40].copy_from_slice(&padded("LINUX", 32));
    pvd[40..72].copy_from_slice(&padded(LABEL, 32));
    pvd[80..88].copy_from_slice(&both32(total as u32));
    pvd[120..124].copy_from_slice(&both16(1));
    pvd[124..128].copy_from_slice(&both16(1));
    pvd[128..132].copy_from_slice(&both16(SECTOR as u16));
    pvd[132..140].copy_from_slice(&both32(l.len() as u32));
    pvd[140..144].copy_from_slice(&l_lba.to_le_bytes());
    pvd[148..152].copy_from_slice(&m_lba.to_be_bytes());
    let root_rec = dir_record(&[0], root.lba, SECTOR as u32, true);
    pvd[156..156 + 34].copy_from_slice(&root_rec);
    for (at, len) in [(190, 128), (318, 128), (446, 128), (574, 128), (702, 37), (739, 37), (776, 37)] {
        pvd[at..at + len].fill(b' ');
    }
    pvd[318..318 + 9].copy_from_slice(b"STACKBED ");
    let date = b"2024010100000000";
    for at in [813, 830] {
        pvd[at..at + 16].copy_from_slice(date);
    }
    for at in [847, 864] {
        pvd[at..at + 16].fill(b'0');
    }
    pvd[881] = 1;
    img[16 * SECTOR..17 * SECTOR].copy_from_slice(&pvd);
    let term = &mut img[17 * SECTOR..18 * SECTOR];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    Ok(img)
}

fn walk<'a>(root: &'a Dir, path: &[String]) -> &'a Dir {
    path.iter().fold(root, |d, p| &d.dirs[p])
}

fn walk_mut<'a>(root: &'a mut Dir, path: &[String]) -> &'a mut Dir {
    let mut d = root;
    for p in path {
        d = d.dirs.get_mut(p).expect("path comes from the tree itself");
    }
    d
}

fn path_table(order: &[(Vec<String>, u16)], big_endian: bool, root: &Dir) -> Result<Vec<u8>, String> {
    let mut t = Vec::new();
    for (path, parent) in order {
        let name = match path.last() {
            None => vec![0u8],
            Some(n) => iso_name(n, true),
        };
        let lba = walk(root, path).lba;
        t.push(name.len() as u8);
        t.push(0);
        t.extend_from_slice(&if big_endian { lba.to_be_bytes() } else { lba.to_le_bytes() });
        let parent = if path.is_empty() { 1 } else { *parent };
        t.extend_from_slice(&if big_endian { parent.to_be_bytes() } else { parent.to_le_bytes() });
        t.extend_from_slice(&name);
        if name.len() % 2 == 1 {
            t.push(0);
        }
    }
    if t.len() > 4 * SECTOR {
        return Err("path table too large".into());
    }
    Ok(t)
}

/// Writes the config drive for an instance to `path` (nova: `<instance_dir>/disk.config`).
pub fn write(path: &Path, meta: &InstanceMetadata, user_data: Option<&[u8]>) -> Result<(), String> {
    let iso = build_iso(&files(meta, user_data))?;
    std::fs::write(path, iso).map_err(|e| format!("cannot write the config drive {}: {e}", path.display()))
}

/// Reads a file back from an ISO 9660 image by its path (as a guest's isofs shows it:
/// lower case, no version). Errors, never panics, on a malformed image.
pub fn read_file(iso: &[u8], path: &str) -> Result<Vec<u8>, String> {
    let sector = |lba: u32, len: usize| -> Result<&[u8], String> {
        let at = lba as usize * SECTOR;
        iso.get(at..at + len).ok_or_else(|| format!("extent at sector {lba} ({len} bytes) beyond the image"))
    };
    let pvd = sector(16, SECTOR)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return Err("no primary volume descriptor".into());
    }
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let (mut lba, mut len) = (le32(pvd, 156 + 2), le32(pvd, 156 + 10) as usize);
    let parts: Vec<&str> = path.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let dir = sector(lba, len)?;
        let mut at = 0;
        let mut found = None;
        while at < dir.len() {
            let rl = dir[at] as usize;
            if rl == 0 {
                at = (at / SECTOR + 1) * SECTOR;
                continue;
            }
            let rec = dir.get(at..at + rl).ok_or("directory record beyond its directory")?;
            if rl < 34 || 33 + rec[32] as usize > rl {
                return Err("malformed directory record".into());
            }
            let name = String::from_utf8_lossy(&rec[33..33 + rec[32] as usize]).to_ascii_lowercase();
            let name = name.split(';').next().unwrap_or("").to_string();
            if name == *part {
                found = Some((le32(rec, 2), le32(rec, 10) as usize, rec[25] & 2 != 0));
                break;
            }
            at += rl;
        }
        let (l, n, is_dir) = found.ok_or_else(|| format!("{path}: no `{part}`"))?;
        if (i + 1 < parts.len()) != is_dir {
            return Err(format!("{path}: `{part}` has the wrong type"));
        }
        (lba, len) = (l, n);
    }
    Ok(sector(lba, len)?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta() -> InstanceMetadata {
        InstanceMetadata {
            uuid: "8c2f6f3e-5f0b-4c43-9d1c-1f0e0c9b1a2b".into(),
            name: "vm-1".into(),
            hostname: "vm-1".into(),
            project_id: "demo".into(),
            availability_zone: "nova".into(),
            launch_index: 0,
            meta: BTreeMap::from([("role".into(), "web".into())]),
            public_keys: BTreeMap::from([("k".into(), "ssh-ed25519 AAAA test".into())]),
        }
    }

    #[test]
    fn files_round_trip_through_our_reader() {
        let f = files(&meta(), Some(b"#cloud-config\n"));
        let iso = build_iso(&f).unwrap();
        for (path, data) in &f {
            assert_eq!(&read_file(&iso, path).unwrap(), data, "{path}");
        }
        let md: serde_json::Value =
            serde_json::from_slice(&read_file(&iso, "openstack/latest/meta_data.json").unwrap()).unwrap();
        assert_eq!(md["uuid"], "8c2f6f3e-5f0b-4c43-9d1c-1f0e0c9b1a2b");
        assert_eq!(md["meta"]["role"], "web");
        assert!(read_file(&iso, "openstack/latest/nothing").is_err());
        assert_eq!(&iso[16 * SECTOR + 40..16 * SECTOR + 48], b"config-2");
        // Reproducible byte for byte.
        assert_eq!(build_iso(&f).unwrap(), iso);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]
        /// A damaged image is an error, never a panic.
        #[test]
        fn damaged_images_never_panic(edits in prop::collection::vec((0usize..60_000, any::<u8>()), 0..16), cut in 0usize..70_000) {
            let mut iso = build_iso(&files(&meta(), None)).unwrap();
            for (at, v) in edits {
                if at < iso.len() {
                    iso[at] = v;
                }
            }
            iso.truncate(cut);
            let _ = read_file(&iso, "openstack/latest/meta_data.json");
        }
    }
}
