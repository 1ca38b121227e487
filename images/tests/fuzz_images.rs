//! Damaged images through every path that parses them: the header and snapshot table
//! (hand-written), imago's reads, internal snapshots (create, revert, delete), the image service's format check.
//! Each case must end in an error or a result, never a panic. Cases: 300 by default,
//! `PROPTEST_CASES=20000` for a longer run.
#![cfg(not(madsim))]

use std::path::Path;

use proptest::prelude::*;
use stackbed_images::convert::{convert_raw_to_qcow2, Durability};
use stackbed_images::disk::{Disk, OpenOptions};
use stackbed_images::{qcow2, snapshot};

fn good_image(dir: &Path) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let raw = dir.join("seed.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(1 << 20).unwrap();
    f.write_all_at(&[0x5a; 70_000], 0).unwrap();
    f.write_all_at(&[0xa5; 4096], 600_000).unwrap();
    let img = dir.join("seed.qcow2");
    convert_raw_to_qcow2(&raw, &img, Durability::NoSync).unwrap();
    snapshot::create(&img, "s1").unwrap();
    snapshot::create(&img, "s0").unwrap();
    std::fs::read(&img).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn damaged_qcow2_images_give_errors_not_panics(
        edits in prop::collection::vec((0usize..400_000, any::<u8>()), 1..8),
        hot in prop::collection::vec((0usize..512, any::<u8>()), 0..4),
        cut in prop::option::of(0usize..400_000),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = good_image(dir.path());
        let len = bytes.len();
        for (at, v) in edits {
            bytes[at % len] = v;
        }
        // The header is where damage hurts most: hit it more often.
        for (at, v) in hot {
            bytes[at] = v;
        }
        if let Some(c) = cut {
            bytes.truncate(c.min(len));
        }
        let img = dir.path().join("damaged.qcow2");
        std::fs::write(&img, &bytes).unwrap();
        let _ = qcow2::Header::read(&img);
        let _ = qcow2::list_snapshots(&img);
        if let Ok(d) = Disk::open(&img, OpenOptions::default()) {
            let mut buf = vec![0u8; 1 << 20];
            let _ = d.read(&mut buf, 0);
        }
        let _ = snapshot::create(&img, "s2");
        let _ = snapshot::revert(&img, "s1");
        let _ = snapshot::delete(&img, "s1");
        let _ = snapshot::delete(&img, "1");
        let _ = qcow2::list_snapshots(&img);
    }
}
