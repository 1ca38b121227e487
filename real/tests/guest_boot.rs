//! A real guest reads its config drive: the libvirt hypervisor boots the tiny guest of
//! `scripts/guest/build.sh` (Debian kernel, busybox initramfs) on QEMU through
//! `qemu:///system`, with the instance's qcow2 overlay and the config drive the project
//! writes, and the guest prints back the uuid and hostname it read from
//! `openstack/latest/meta_data.json` on its serial console.
//!
//! Needs qemu-system-x86_64, a running libvirtd, and the kernel, busybox-static and cpio
//! packages (scripts/test.sh installs and starts them). Without them the test is skipped
//! with a loud message, unless `STACKBED_REQUIRE_GUEST` is set: then it fails.
#![cfg(not(madsim))]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stackbed_core::model::{Flavor, Instance};
use stackbed_core::scenario::Scenario;
use stackbed_images::glance::ImageService;
use stackbed_real::libvirt::{detect_accel, guest_report, GuestBoot, HostImages, LibvirtHypervisor};
use stackbed_services::seams::Hypervisor;

const URI: &str = "qemu:///system";

/// Why the guest cannot run here, if it cannot.
fn missing_prerequisite(root: &Path) -> Option<String> {
    let on_path = |bin: &str| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]).any(|d| d.join(bin).is_file())
    };
    if !on_path("qemu-system-x86_64") {
        return Some("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into());
    }
    if !on_path("libvirtd") {
        return Some("libvirtd is not installed (apt-get install libvirt-daemon-system)".into());
    }
    if let Err(e) = virt::connect::Connect::open(Some(URI)) {
        return Some(format!("cannot connect to {URI} (start virtlogd -d and libvirtd -d): {}", e.message()));
    }
    let build = root.join("scripts/guest/build.sh");
    match Command::new(&build).arg(root.join("target/guest")).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("{} failed: {}", build.display(), String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Some(format!("cannot run {}: {e}", build.display())),
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate is in the workspace").to_path_buf()
}

fn instance(uuid: &str, name: &str) -> Instance {
    let flavor = Flavor {
        name: "m1.guest".into(),
        vcpus: 1,
        ram_mb: 256,
        disk_gb: 1,
        ephemeral_gb: 0,
        swap: 0,
        extra_specs: Default::default(),
    };
    common::spawning_instance(uuid, name, flavor, "tiny", "guest-host")
}

const SCENARIO: &str = r#"
[scenario]
name = "guest-boot"
[topology]
[[topology.hosts]]
count = 1
vcpus = 4
ram_mb = 4096
disk_gb = 20
[[flavors]]
name = "m1.guest"
vcpus = 1
ram_mb = 256
disk_gb = 1
[[images]]
name = "tiny"
size_mb = 8
disk_format = "raw"
[[tenants]]
name = "demo"
[workload]
runner = { kind = "constant", concurrency = 1, times = 1 }
flavors = { "m1.guest" = 1.0 }
images = { "tiny" = 1.0 }
"#;

#[test]
fn a_real_guest_reads_its_config_drive() {
    let root = workspace();
    if let Some(why) = missing_prerequisite(&root) {
        if std::env::var_os("STACKBED_REQUIRE_GUEST").is_some_and(|v| !v.is_empty()) {
            panic!("STACKBED_REQUIRE_GUEST is set but the real guest cannot run: {why}");
        }
        eprintln!("\n!!!!!!!! SKIPPED a_real_guest_reads_its_config_drive: {why}");
        eprintln!("!!!!!!!! (set STACKBED_REQUIRE_GUEST=1 to make this a failure; scripts/test.sh does)\n");
        return;
    }
    let scenario = Scenario::parse("guest-boot.toml", SCENARIO).unwrap();
    let group = scenario.topology.hosts[0].clone();
    let dir = std::env::temp_dir().join(format!("stackbed-guest-boot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let glance = Arc::new(ImageService::open(&dir.join("glance")).unwrap());
    stackbed_real::run::upload_images(&glance, &scenario.images, &dir.join("scratch")).unwrap();
    let guest = GuestBoot {
        kernel: root.join("target/guest/vmlinuz"),
        initrd: root.join("target/guest/initrd.img"),
        cmdline: "console=ttyS0 quiet stackbed.poweroff".into(),
        boot_timeout: Duration::from_secs(240),
    };
    let hv = LibvirtHypervisor::connect(URI, &group, "guest-host")
        .unwrap()
        .with_images(HostImages::open(&dir, "guest-host", glance).unwrap())
        .with_guest(guest)
        .unwrap();
    let pid = std::process::id();
    let (uuid, name) = (format!("5b1e6a2c-0000-4000-8000-{pid:012}"), format!("stackbed-guest-probe-{pid}"));
    let inst = instance(&uuid, &name);
    let image = scenario.images[0].clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let t = Instant::now();
    let spawned = rt.block_on(hv.spawn(&inst, &image));
    let wall = t.elapsed().as_secs_f64();
    let console_path = hv.images().unwrap().instance_dir(&inst).join("console.log");
    let console = std::fs::read_to_string(&console_path).unwrap_or_default();
    // Clean up before asserting: no domain or file outlives the test.
    rt.block_on(hv.destroy(&inst)).unwrap();
    assert!(hv.domains().is_empty());
    let _ = std::fs::remove_dir_all(&dir);

    let phases = spawned.unwrap_or_else(|e| panic!("spawn failed: {e:?}\nconsole:\n{console}"));
    let names: Vec<&str> = phases.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["image_fetch", "image_overlay", "config_drive", "define", "start", "guest_boot"]);
    let report = guest_report(&console).unwrap_or_else(|| panic!("no STACKBED-METADATA line:\n{console}"));
    assert_eq!(report.get("uuid"), Some(&uuid), "{console}");
    assert_eq!(report.get("hostname"), Some(&name), "{console}");
    assert_eq!(report.get("name"), Some(&name), "{console}");
    assert_eq!(report.get("root_disk_bytes").map(String::as_str), Some("1073741824"), "the 1 GB overlay: {console}");
    assert!(console.contains("STACKBED-FILE openstack/latest/meta_data.json"), "{console}");
    assert!(console.contains(&format!("\"uuid\": \"{uuid}\"")), "{console}");
    let accel = format!("{:?}", detect_accel()).to_lowercase();
    let phase_text: Vec<String> = phases.iter().map(|(n, s)| format!("{n} {s:.3}s")).collect();
    eprintln!("real guest booted ({accel}) in {wall:.1} s: {}", phase_text.join(", "));
}
