//! This crate's images against QEMU's tools: every image the crate writes passes
//! `qemu-img check` and `qemu-img compare` finds it identical to what was written; every image
//! qemu-img writes reads back correctly through the crate. These tests need qemu-img and
//! qemu-io (Debian qemu-utils; scripts/test.sh installs it) and fail without them.
#![cfg(not(madsim))]

use std::os::unix::fs::FileExt;
use std::path::Path;

use stackbed_images::convert::{convert_raw_to_qcow2, convert_to_raw, convert_with_imago, Durability};
use stackbed_images::disk::{self, Disk, OpenOptions};
use stackbed_images::qcow2::{self, Qcow2Error};
use stackbed_images::qemu;

mod common;
use common::pattern;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A raw file with data, explicitly written zeroes and holes, and a size that is not a
/// multiple of the cluster size.
fn mixed_raw(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let seg = 1u64 << 20;
    let mut at = 0;
    let mut i = 0u64;
    while at < size {
        let len = seg.min(size - at) as usize;
        match i % 3 {
            0 => f.write_all_at(&pattern(i, len), at).unwrap(),
            1 => f.write_all_at(&vec![0u8; len], at).unwrap(),
            _ => {} // hole
        }
        // A few bytes of data inside zero runs: the cluster must not be dropped.
        if i % 3 == 1 && len > 70_000 {
            f.write_all_at(b"x", at + 70_000).unwrap();
        }
        at += len as u64;
        i += 1;
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn converted_images_pass_qemu_img_check_and_compare() {
    let dir = tmp();
    let raw = dir.path().join("src.raw");
    mixed_raw(&raw, (23 << 20) + 12345);
    for (name, f) in
        [("hand.qcow2", convert_raw_to_qcow2 as fn(&Path, &Path, Durability) -> _), ("imago.qcow2", convert_with_imago)]
    {
        let out = dir.path().join(name);
        let stats = f(&raw, &out, Durability::Sync).unwrap();
        assert!(stats.data_clusters > 0 && stats.zero_clusters > 0, "{name}: {stats:?}");
        qemu::check(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
        qemu::compare(&raw, &out).unwrap_or_else(|e| panic!("{name}: {e}"));
        // qemu-img convert rounds a raw source up to whole 512-byte sectors; so do we.
        let info = qemu::info(&out).unwrap();
        assert_eq!(info["virtual-size"].as_u64(), Some(((23 << 20) + 12345u64).div_ceil(512) * 512), "{name}");
    }
    // The hand-written converter leaves zero clusters unallocated: the file is smaller than
    // the data it holds would be if zeroes were stored.
    let hand = std::fs::metadata(dir.path().join("hand.qcow2")).unwrap().len();
    assert!(hand < 12 << 20, "hand-written output is {hand} bytes");
}

#[test]
fn empty_and_tiny_sources_convert() {
    let dir = tmp();
    for size in [0u64, 1, 65536, 65537] {
        let raw = dir.path().join(format!("{size}.raw"));
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(size).unwrap();
        if size > 0 {
            f.write_all_at(b"\x01", size - 1).unwrap();
        }
        let out = dir.path().join(format!("{size}.qcow2"));
        convert_raw_to_qcow2(&raw, &out, Durability::NoSync).unwrap();
        qemu::check(&out).unwrap_or_else(|e| panic!("size {size}: {e}"));
        qemu::compare(&raw, &out).unwrap_or_else(|e| panic!("size {size}: {e}"));
    }
}

#[test]
fn overlays_read_through_and_write_to_the_top_of_a_chain() {
    let dir = tmp();
    let base = dir.path().join("base.qcow2");
    let raw = dir.path().join("base.raw");
    mixed_raw(&raw, 8 << 20);
    convert_raw_to_qcow2(&raw, &base, Durability::NoSync).unwrap();
    // base <- mid (relative name) <- top (absolute name)
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    disk::create_overlay(&mid, Path::new("base.qcow2")).unwrap();
    {
        let d = Disk::open(&mid, OpenOptions { writable: true, direct: false }).unwrap();
        d.write(&pattern(77, 4096), 3 << 20).unwrap();
        d.flush().unwrap();
    }
    disk::create_overlay(&top, &mid).unwrap();
    let expected = {
        let mut e = std::fs::read(&raw).unwrap();
        e[3 << 20..(3 << 20) + 4096].copy_from_slice(&pattern(77, 4096));
        e[100..612].copy_from_slice(&pattern(5, 512));
        e
    };
    {
        let d = Disk::open(&top, OpenOptions { writable: true, direct: false }).unwrap();
        d.write(&pattern(5, 512), 100).unwrap();
        let mut got = vec![0u8; 8 << 20];
        d.read(&mut got, 0).unwrap();
        assert!(got == expected, "read through the chain differs from what was written");
        d.flush().unwrap();
    }
    for img in [&mid, &top] {
        qemu::check(img).unwrap();
    }
    let want = dir.path().join("want.raw");
    std::fs::write(&want, &expected).unwrap();
    qemu::compare(&want, &top).unwrap();
    // The base is untouched.
    qemu::compare(&raw, &base).unwrap();
    let info = qemu::info(&top).unwrap();
    assert_eq!(info["backing-filename"].as_str(), Some(s(&mid)));
    assert_eq!(info["backing-filename-format"].as_str(), Some("qcow2"));
}

#[test]
fn hand_written_overlays_match_qemu_img_create() {
    let dir = tmp();
    let raw = dir.path().join("b.raw");
    mixed_raw(&raw, 5 << 20);
    let base = dir.path().join("b.qcow2");
    convert_raw_to_qcow2(&raw, &base, Durability::NoSync).unwrap();
    for (name, backing, size) in [
        ("abs.qcow2", base.clone(), None),
        ("rel.qcow2", Path::new("b.qcow2").to_path_buf(), None),
        ("raw-backed.qcow2", raw.clone(), None),
        ("bigger.qcow2", base.clone(), Some(3u64 << 40)),
    ] {
        let o = dir.path().join(name);
        disk::create_overlay_fast(&o, &backing, size).unwrap();
        qemu::check(&o).unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = qemu::info(&o).unwrap();
        assert_eq!(info["backing-filename"].as_str(), Some(s(&backing)), "{name}");
        let want_fmt = if backing == raw { "raw" } else { "qcow2" };
        assert_eq!(info["backing-filename-format"].as_str(), Some(want_fmt), "{name}");
        assert_eq!(info["virtual-size"].as_u64(), Some(size.unwrap_or(5 << 20)), "{name}");
        if size.is_none() {
            qemu::compare(&raw, &o).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // Writable through imago, still clean afterwards.
        let d = Disk::open(&o, OpenOptions { writable: true, direct: false }).unwrap();
        d.write(&pattern(3, 8192), 4096).unwrap();
        let mut back = vec![0u8; 8192];
        d.read(&mut back, 4096).unwrap();
        assert_eq!(back, pattern(3, 8192));
        drop(d);
        qemu::check(&o).unwrap_or_else(|e| panic!("{name} after a write: {e}"));
    }
}

#[test]
fn images_qemu_img_writes_read_back_through_the_crate() {
    let dir = tmp();
    let base = dir.path().join("q-base.qcow2");
    let top = dir.path().join("q-top.qcow2");
    qemu::qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "4M"]).unwrap();
    qemu::qemu_io(&["-f", "qcow2", "-c", "write -P 0xab 0 1M", "-c", "write -z 2M 64k", s(&base)]).unwrap();
    qemu::qemu_img(&["create", "-q", "-f", "qcow2", "-b", s(&base), "-F", "qcow2", s(&top)]).unwrap();
    qemu::qemu_io(&["-f", "qcow2", "-c", "write -P 0xcd 512k 4k", s(&top)]).unwrap();
    let d = Disk::open(&top, OpenOptions::default()).unwrap();
    assert_eq!(d.size(), 4 << 20);
    let mut got = vec![0u8; 4 << 20];
    d.read(&mut got, 0).unwrap();
    for (i, &b) in got.iter().enumerate() {
        let want = if (512 << 10..(512 << 10) + 4096).contains(&i) {
            0xcd
        } else if i < 1 << 20 {
            0xab
        } else {
            0
        };
        assert_eq!(b, want, "byte {i}");
    }
    // force_raw_images: qcow2 chain to a sparse raw file.
    let raw = dir.path().join("flat.raw");
    convert_to_raw(&top, &raw, Durability::NoSync).unwrap();
    qemu::compare(&top, &raw).unwrap();
}

#[test]
fn external_snapshot_keeps_the_state_and_the_disk_moves_on() {
    let dir = tmp();
    let disk_path = dir.path().join("disk.qcow2");
    disk::create_qcow2(&disk_path, 2 << 20).unwrap();
    {
        let d = Disk::open(&disk_path, OpenOptions { writable: true, direct: false }).unwrap();
        d.write(&[1u8; 4096], 0).unwrap();
    }
    let snap = dir.path().join("disk.snap1.qcow2");
    disk::external_snapshot(&disk_path, &snap).unwrap();
    {
        let d = Disk::open(&disk_path, OpenOptions { writable: true, direct: false }).unwrap();
        let mut b = [0u8; 4096];
        d.read(&mut b, 0).unwrap();
        assert_eq!(b, [1u8; 4096]);
        d.write(&[2u8; 4096], 0).unwrap();
    }
    let s1 = Disk::open(&snap, OpenOptions::default()).unwrap();
    let mut b = [0u8; 4096];
    s1.read(&mut b, 0).unwrap();
    assert_eq!(b, [1u8; 4096], "the snapshot changed");
    qemu::check(&disk_path).unwrap();
    qemu::check(&snap).unwrap();
    assert!(disk::external_snapshot(&disk_path, &snap).is_err(), "an existing snapshot file is not overwritten");
}

#[test]
fn snapshot_lists_match_qemu_img_snapshot_l() {
    let dir = tmp();
    let img = dir.path().join("snaps.qcow2");
    qemu::qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "8M"]).unwrap();
    assert!(qcow2::list_snapshots(&img).unwrap().is_empty());
    for name in ["first", "second-with-a-longer-name"] {
        qemu::qemu_img(&["snapshot", "-c", name, s(&img)]).unwrap();
    }
    let ours = qcow2::list_snapshots(&img).unwrap();
    let names: Vec<&str> = ours.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["first", "second-with-a-longer-name"]);
    let listed = String::from_utf8(qemu::qemu_img(&["snapshot", "-l", s(&img)]).unwrap().stdout).unwrap();
    for s in &ours {
        assert!(listed.contains(&s.name) && listed.contains(&format!("{} ", s.id)), "{listed}");
        assert_eq!(s.disk_size, Some(8 << 20));
    }
}

#[test]
fn corrupt_and_truncated_images_give_errors_not_panics() {
    let dir = tmp();
    let good = dir.path().join("good.qcow2");
    let raw = dir.path().join("g.raw");
    mixed_raw(&raw, 3 << 20);
    convert_raw_to_qcow2(&raw, &good, Durability::NoSync).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad.qcow2");
    // Truncated header.
    std::fs::write(&bad, &bytes[..50]).unwrap();
    let e = Disk::open(&bad, OpenOptions::default()).err().expect("a 50-byte qcow2 must not open");
    assert!(e.to_string().contains("truncated"), "{e}");
    // Cluster bits out of range.
    let mut b = bytes.clone();
    b[20..24].copy_from_slice(&99u32.to_be_bytes());
    std::fs::write(&bad, &b).unwrap();
    let e = Disk::open(&bad, OpenOptions::default()).err().expect("cluster_bits 99 must not open");
    assert!(e.to_string().contains("cluster_bits"), "{e}");
    // Data cut off: opening may work, reading must fail with an error or read zeroes, no panic.
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    if let Ok(d) = Disk::open(&bad, OpenOptions::default()) {
        let mut buf = vec![0u8; 3 << 20];
        let _ = d.read(&mut buf, 0);
    }
    // L1 table pointing far outside the file.
    let mut b = bytes.clone();
    b[40..48].copy_from_slice(&(1u64 << 50).to_be_bytes());
    std::fs::write(&bad, &b).unwrap();
    assert!(Disk::open(&bad, OpenOptions::default()).is_err());
    assert!(matches!(qcow2::Header::read(&dir.path().join("missing")), Err(Qcow2Error::Io { .. })));
}

#[test]
fn internal_snapshots_are_listed_and_restored_by_qemu_img_and_by_us() {
    use stackbed_images::snapshot;
    let dir = tmp();
    let raw = dir.path().join("s.raw");
    mixed_raw(&raw, 6 << 20);
    let img = dir.path().join("s.qcow2");
    convert_raw_to_qcow2(&raw, &img, Durability::NoSync).unwrap();
    let before = dir.path().join("before.raw");
    std::fs::copy(&raw, &before).unwrap();
    // Ours: create, then change the disk.
    snapshot::create(&img, "clean").unwrap();
    qemu::check(&img).unwrap();
    {
        let d = Disk::open(&img, OpenOptions { writable: true, direct: false }).unwrap();
        d.write(&pattern(9, 65536 * 3), 1 << 20).unwrap();
        d.write(&pattern(10, 4096), 5 << 20).unwrap();
    }
    qemu::check(&img).unwrap();
    let after = dir.path().join("after.raw");
    convert_to_raw(&img, &after, Durability::NoSync).unwrap();
    assert!(qemu::compare(&before, &img).is_err(), "the writes changed the disk");
    // qemu-img lists ours; we list a snapshot qemu-img makes.
    qemu::qemu_img(&["snapshot", "-c", "by-qemu", s(&img)]).unwrap();
    let listed = String::from_utf8(qemu::qemu_img(&["snapshot", "-l", s(&img)]).unwrap().stdout).unwrap();
    assert!(listed.contains("clean") && listed.contains("by-qemu"), "{listed}");
    let names: Vec<String> = qcow2::list_snapshots(&img).unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["clean", "by-qemu"]);
    // Ours reverts to ours: the disk reads as before; qemu-img check is clean.
    snapshot::revert(&img, "clean").unwrap();
    qemu::check(&img).unwrap();
    qemu::compare(&before, &img).unwrap();
    // Writable after the revert (shared tables get copied on write), still clean.
    {
        let d = Disk::open(&img, OpenOptions { writable: true, direct: false }).unwrap();
        d.write(&pattern(11, 4096), 0).unwrap();
    }
    qemu::check(&img).unwrap();
    // qemu-img reverts to the snapshot it took (the state after our writes).
    qemu::qemu_img(&["snapshot", "-a", "by-qemu", s(&img)]).unwrap();
    qemu::compare(&after, &img).unwrap();
    // Ours reverts to qemu-img's snapshot too, and makes another after that.
    snapshot::revert(&img, "clean").unwrap();
    snapshot::revert(&img, "by-qemu").unwrap();
    qemu::compare(&after, &img).unwrap();
    snapshot::create(&img, "third").unwrap();
    qemu::check(&img).unwrap();
    let listed = String::from_utf8(qemu::qemu_img(&["snapshot", "-l", s(&img)]).unwrap().stdout).unwrap();
    assert!(listed.contains("third"), "{listed}");
}

/// `qemu-img convert -l snapshot.name=NAME`: the snapshot's disk as a raw file.
fn snapshot_as_raw(img: &Path, name: &str, out: &Path) {
    let sel = format!("snapshot.name={name}");
    qemu::qemu_img(&["convert", "-f", "qcow2", "-O", "raw", "-l", &sel, s(img), s(out)]).unwrap();
}

fn qemu_snapshot_names(img: &Path) -> String {
    String::from_utf8(qemu::qemu_img(&["snapshot", "-l", s(img)]).unwrap().stdout).unwrap()
}

#[test]
fn internal_snapshot_delete_matches_qemu_img_snapshot_d() {
    use stackbed_images::snapshot;
    let dir = tmp();
    let raw = dir.path().join("d.raw");
    mixed_raw(&raw, 6 << 20);
    let img = dir.path().join("d.qcow2");
    convert_raw_to_qcow2(&raw, &img, Durability::NoSync).unwrap();
    // a (ours) = the converted disk; writes; b (qemu-img) = after the writes; more writes.
    snapshot::create(&img, "a").unwrap();
    {
        let d = Disk::open(&img, OpenOptions { writable: true, direct: false }).unwrap();
        d.write(&pattern(21, 65536 * 3), 1 << 20).unwrap();
    }
    qemu::qemu_img(&["snapshot", "-c", "b", s(&img)]).unwrap();
    {
        let d = Disk::open(&img, OpenOptions { writable: true, direct: false }).unwrap();
        d.write(&pattern(22, 65536), 2 << 20).unwrap();
        d.write(&pattern(23, 4096), 1 << 20).unwrap();
    }
    let (a_raw, b_raw, active_raw) =
        (dir.path().join("a.raw"), dir.path().join("b.raw"), dir.path().join("active.raw"));
    snapshot_as_raw(&img, "a", &a_raw);
    snapshot_as_raw(&img, "b", &b_raw);
    convert_to_raw(&img, &active_raw, Durability::NoSync).unwrap();
    qemu::compare(&raw, &a_raw).unwrap();

    // Ours deletes a (by name): qemu-img check is clean (no leak, no COPIED error), qemu-img
    // lists b only, the active disk and b read as before.
    let gone = snapshot::delete(&img, "a").unwrap();
    assert_eq!(gone.name, "a");
    qemu::check(&img).unwrap();
    let listed = qemu_snapshot_names(&img);
    assert!(!listed.contains(" a ") && listed.contains(" b "), "{listed}");
    let names: Vec<String> = qcow2::list_snapshots(&img).unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["b"]);
    qemu::compare(&active_raw, &img).unwrap();
    let b_again = dir.path().join("b2.raw");
    snapshot_as_raw(&img, "b", &b_again);
    qemu::compare(&b_raw, &b_again).unwrap();
    // The clusters only a held (the three overwritten at 1 MiB, a's L1 table) are free:
    // qemu-io's writes of that much new data reuse them, the file does not grow.
    let len = std::fs::metadata(&img).unwrap().len();
    qemu::qemu_io(&["-f", "qcow2", "-c", "write -P 0x77 4M 128k", s(&img)]).unwrap();
    assert_eq!(std::fs::metadata(&img).unwrap().len(), len, "freed clusters were not reused");
    qemu::check(&img).unwrap();
    // qemu-img reverts to b after our delete.
    qemu::qemu_img(&["snapshot", "-a", "b", s(&img)]).unwrap();
    qemu::compare(&b_raw, &img).unwrap();
    // Ours deletes the last one (by id): the table is empty for both.
    let id = qcow2::list_snapshots(&img).unwrap()[0].id.clone();
    snapshot::delete(&img, &id).unwrap();
    qemu::check(&img).unwrap();
    assert!(qcow2::list_snapshots(&img).unwrap().is_empty());
    assert!(!qemu_snapshot_names(&img).contains(" b "));
    assert_eq!(qcow2::Header::read(&img).unwrap().nb_snapshots, 0);
    qemu::compare(&b_raw, &img).unwrap();
    assert!(snapshot::delete(&img, "b").is_err(), "deleting a missing snapshot is an error");
}

#[test]
fn images_whose_snapshots_qemu_img_deleted_read_back_through_the_crate() {
    use stackbed_images::snapshot;
    let dir = tmp();
    let raw = dir.path().join("q.raw");
    mixed_raw(&raw, 4 << 20);
    let img = dir.path().join("q.qcow2");
    convert_raw_to_qcow2(&raw, &img, Durability::NoSync).unwrap();
    // Three snapshots (ours, qemu-img's, ours), each after a write.
    let mut states = Vec::new();
    for (i, name) in ["x", "y", "z"].iter().enumerate() {
        {
            let d = Disk::open(&img, OpenOptions { writable: true, direct: false }).unwrap();
            d.write(&pattern(30 + i as u64, 65536 * 2), (i as u64) << 20).unwrap();
        }
        if *name == "y" {
            qemu::qemu_img(&["snapshot", "-c", name, s(&img)]).unwrap();
        } else {
            snapshot::create(&img, name).unwrap();
        }
        let st = dir.path().join(format!("{name}.raw"));
        convert_to_raw(&img, &st, Durability::NoSync).unwrap();
        states.push(st);
    }
    // qemu-img deletes ours (x) and its own (y): we list z only and restore it exactly.
    qemu::qemu_img(&["snapshot", "-d", "x", s(&img)]).unwrap();
    qemu::qemu_img(&["snapshot", "-d", "y", s(&img)]).unwrap();
    let names: Vec<String> = qcow2::list_snapshots(&img).unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["z"]);
    {
        let d = Disk::open(&img, OpenOptions { writable: true, direct: false }).unwrap();
        d.write(&pattern(40, 4096), 0).unwrap();
    }
    snapshot::revert(&img, "z").unwrap();
    qemu::check(&img).unwrap();
    qemu::compare(&states[2], &img).unwrap();
    // After qemu-img deleted every snapshot: our header reads nb_snapshots 0, we create and
    // delete again, qemu-img agrees at every step.
    qemu::qemu_img(&["snapshot", "-d", "z", s(&img)]).unwrap();
    assert!(qcow2::list_snapshots(&img).unwrap().is_empty());
    snapshot::create(&img, "again").unwrap();
    qemu::check(&img).unwrap();
    assert!(qemu_snapshot_names(&img).contains("again"));
    snapshot::delete(&img, "again").unwrap();
    qemu::check(&img).unwrap();
    assert!(!qemu_snapshot_names(&img).contains("again"));
    qemu::compare(&states[2], &img).unwrap();
}
