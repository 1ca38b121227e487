//! The image service and the compute image cache, end to end on real files (with qemu-img as
//! the judge of the images written).
#![cfg(not(madsim))]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use stackbed_images::cache::{CacheConfig, CacheError, ImageCache};
use stackbed_images::disk::{Disk, DiskFormat, OpenOptions};
use stackbed_images::glance::{sha256_file, ImageError, ImageService, NewImage};
use stackbed_images::qemu;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 4 MiB qcow2 image with data at 0 and 3 MiB, made by qemu-img.
fn qcow2_image(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("src.qcow2");
    qemu::qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "4M"]).unwrap();
    qemu::qemu_io(&["-f", "qcow2", "-c", "write -P 0x5a 0 64k", "-c", "write -P 0xa5 3M 4k", s(&img)]).unwrap();
    img
}

fn new_image(name: &str, fmt: DiskFormat) -> NewImage {
    NewImage {
        name: name.into(),
        disk_format: fmt,
        container_format: "bare".into(),
        properties: BTreeMap::from([
            ("hw_architecture".into(), "x86_64".into()),
            ("hw_cpu_max_sockets".into(), "2".into()),
        ]),
    }
}

#[test]
fn upload_records_size_checksum_and_properties_and_download_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let src = qcow2_image(dir.path());
    let glance = ImageService::open(&dir.path().join("glance")).unwrap();
    let rec = glance.upload(new_image("cirros", DiskFormat::Qcow2), &mut std::fs::File::open(&src).unwrap()).unwrap();
    assert_eq!(rec.size, std::fs::metadata(&src).unwrap().len());
    assert_eq!(rec.virtual_size, 4 << 20);
    assert_eq!(rec.os_hash_value, sha256_file(&src).unwrap());
    let model = rec.to_model();
    assert_eq!(model.disk_format, "qcow2");
    assert_eq!(model.properties["hw_cpu_max_sockets"], "2");
    // Records survive a restart.
    let again = ImageService::open(&dir.path().join("glance")).unwrap();
    assert_eq!(again.get(&rec.id).unwrap(), rec);
    assert_eq!(again.find_by_name("cirros").unwrap().id, rec.id);
    // A download verifies; a corrupted store is caught and leaves nothing behind.
    let out = dir.path().join("dl");
    glance.download(&rec.id, &out).unwrap();
    qemu::compare(&src, &out).unwrap();
    let stored = dir.path().join("glance").join(&rec.id);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[70_000] ^= 1;
    std::fs::write(&stored, bytes).unwrap();
    let err = glance.download(&rec.id, &out).unwrap_err();
    assert!(matches!(err, ImageError::ChecksumMismatch { .. }), "{err}");
    assert!(!out.exists());
}

#[test]
fn uploads_are_checked_against_their_format_and_properties() {
    let dir = tempfile::tempdir().unwrap();
    let src = qcow2_image(dir.path());
    let glance = ImageService::open(&dir.path().join("glance")).unwrap();
    let e = glance.upload(new_image("liar", DiskFormat::Raw), &mut std::fs::File::open(&src).unwrap()).unwrap_err();
    assert!(e.to_string().contains("declared raw"), "{e}");
    let e = glance.upload(new_image("junk", DiskFormat::Qcow2), &mut &b"not an image at all"[..]).unwrap_err();
    assert!(matches!(e, ImageError::FormatMismatch { .. }), "{e}");
    let mut bad = new_image("x", DiskFormat::Raw);
    bad.properties.insert("hw_cpu_max_cores".into(), "many".into());
    assert!(glance.upload(bad, &mut &[0u8; 512][..]).is_err());
    assert!(glance.list().is_empty(), "failed uploads leave no record");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("glance")).unwrap().collect();
    assert!(leftovers.is_empty(), "failed uploads leave no file");
}

#[test]
fn concurrent_boots_share_one_download_and_get_valid_overlays() {
    for force_raw in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let src = qcow2_image(dir.path());
        let glance = ImageService::open(&dir.path().join("glance")).unwrap();
        let rec =
            glance.upload(new_image("ubuntu", DiskFormat::Qcow2), &mut std::fs::File::open(&src).unwrap()).unwrap();
        let cache =
            ImageCache::new(CacheConfig { base_dir: dir.path().join("_base"), force_raw_images: force_raw }).unwrap();
        let fetches: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8).map(|_| sc.spawn(|| cache.fetch(&glance, &rec.id).unwrap())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(glance.download_count(), 1, "8 concurrent boots, one download");
        assert_eq!(fetches.iter().filter(|f| !f.hit && !f.waited).count(), 1, "{fetches:?}");
        let base = &fetches[0].base;
        let want = if force_raw { DiskFormat::Raw } else { DiskFormat::Qcow2 };
        assert_eq!(stackbed_images::disk::detect_format(base).unwrap(), want);
        qemu::compare(&src, base).unwrap();
        // A later boot is a hit.
        assert!(cache.fetch(&glance, &rec.id).unwrap().hit);
        assert_eq!(glance.download_count(), 1);
        // Instance disks: overlays on the base, bigger when the flavor says so.
        for (i, size) in [(0, None), (1, Some(8u64 << 20))] {
            let disk = cache.create_instance_disk(base, &dir.path().join(format!("inst-{i}")), size).unwrap();
            qemu::check(&disk).unwrap();
            let info = qemu::info(&disk).unwrap();
            assert_eq!(info["virtual-size"].as_u64(), Some(size.unwrap_or(4 << 20)));
            assert_eq!(info["backing-filename-format"].as_str(), Some(want.name()));
            let d = Disk::open(&disk, OpenOptions { writable: true, direct: false }).unwrap();
            let mut b = [0u8; 4096];
            d.read(&mut b, 3 << 20).unwrap();
            assert_eq!(b, [0xa5; 4096]);
            d.write(&[1u8; 4096], 0).unwrap();
        }
        // The base is untouched by the instances' writes.
        qemu::compare(&src, base).unwrap();
    }
}

#[test]
fn unused_bases_are_removed_after_their_age_and_used_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let glance = ImageService::open(&dir.path().join("glance")).unwrap();
    let a = glance.upload(new_image("a", DiskFormat::Raw), &mut &[1u8; 4096][..]).unwrap();
    let b = glance.upload(new_image("b", DiskFormat::Raw), &mut &[2u8; 4096][..]).unwrap();
    let cache = ImageCache::new(CacheConfig { base_dir: dir.path().join("_base"), force_raw_images: true }).unwrap();
    cache.fetch(&glance, &a.id).unwrap();
    cache.fetch(&glance, &b.id).unwrap();
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    assert!(cache.cleanup(&BTreeSet::new(), day, now).unwrap().is_empty(), "nothing is a day old yet");
    let later = now + day + Duration::from_secs(1);
    let removed = cache.cleanup(&BTreeSet::from([a.id.clone()]), day, later).unwrap();
    assert_eq!(removed, vec![cache.base_path(&b.id)]);
    assert!(cache.base_path(&a.id).exists());
    // The next boot of b downloads again.
    assert!(!cache.fetch(&glance, &b.id).unwrap().hit);
    assert_eq!(glance.download_count(), 3);
}

#[test]
fn a_failed_download_is_an_error_and_leaves_no_base() {
    let dir = tempfile::tempdir().unwrap();
    let glance = ImageService::open(&dir.path().join("glance")).unwrap();
    let cache = ImageCache::new(CacheConfig { base_dir: dir.path().join("_base"), force_raw_images: true }).unwrap();
    let e = cache.fetch(&glance, "img-missing").unwrap_err();
    assert!(matches!(e, CacheError::Image(ImageError::NotFound(_))), "{e}");
    assert!(!cache.base_path("img-missing").exists());
}

/// The config drive as an independent ISO 9660 reader sees it: `isoinfo` (genisoimage's tool)
/// lists the volume label and extracts each file; a guest's isofs shows the same names.
#[test]
fn config_drive_reads_back_with_isoinfo() {
    use stackbed_images::configdrive::{self, InstanceMetadata};
    let dir = tempfile::tempdir().unwrap();
    let meta = InstanceMetadata {
        uuid: "0b1c2d3e-0000-4000-8000-000000000001".into(),
        name: "web-1".into(),
        hostname: "web-1".into(),
        project_id: "demo".into(),
        availability_zone: "nova".into(),
        launch_index: 0,
        meta: BTreeMap::from([("role".into(), "web".into())]),
        public_keys: BTreeMap::new(),
    };
    let iso = dir.path().join("disk.config");
    configdrive::write(&iso, &meta, Some(b"#cloud-config\nhostname: web-1\n")).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("isoinfo")
            .args(args)
            .output()
            .expect("isoinfo (Debian package genisoimage) is needed by this test; scripts/test.sh installs it");
        assert!(out.status.success(), "isoinfo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let pvd = String::from_utf8(run(&["-d", "-i", s(&iso)])).unwrap();
    assert!(pvd.contains("Volume id: config-2"), "{pvd}");
    let listing = String::from_utf8(run(&["-f", "-i", s(&iso)])).unwrap();
    for f in
        ["/OPENSTACK/LATEST/META_DATA.JSON;1", "/OPENSTACK/LATEST/USER_DATA;1", "/OPENSTACK/LATEST/NETWORK_DATA.JSON;1"]
    {
        assert!(listing.contains(f), "{f} missing from {listing}");
    }
    let md = run(&["-i", s(&iso), "-x", "/OPENSTACK/LATEST/META_DATA.JSON;1"]);
    let md: serde_json::Value = serde_json::from_slice(&md).unwrap();
    assert_eq!(md["uuid"], "0b1c2d3e-0000-4000-8000-000000000001");
    assert_eq!(md["meta"]["role"], "web");
    assert_eq!(run(&["-i", s(&iso), "-x", "/OPENSTACK/LATEST/USER_DATA;1"]), b"#cloud-config\nhostname: web-1\n");
}
