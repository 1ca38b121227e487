//! The hypervisor seam through libvirt (the `virt` crate): nova's libvirt driver, the
//! boot-relevant part.
//!
//! One connection per compute host. With `test:///default` (libvirt's test driver) domains
//! are defined and started in libvirt's in-process mock hypervisor; note that libvirt gives
//! every `test:///default` connection of one process the same mock hypervisor, so the
//! hosts of a run share it (instance names are unique, so their domains never clash), and
//! the host's capabilities come from the scenario, not from libvirt.
//! [`LibvirtHypervisor::connect_private_test`] gives a host its own test-driver instance
//! instead (what a run uses by default). With `qemu:///system`
//! real QEMU guests run, with KVM when the host can run it and TCG otherwise (see
//! [`detect_accel`]).
//!
//! Images: when the host has a [`HostImages`] (automatic for a real QEMU hypervisor when
//! `STACKBED_IMAGES_DIR` names a directory, explicit with [`LibvirtHypervisor::with_images`]),
//! a spawn fetches the image from the image service into the host's `_base` cache (one
//! download per image, concurrent boots wait on it), gives the instance a qcow2 overlay
//! backed by the cached base and a config drive (ISO 9660, label `config-2`) with its
//! metadata, and attaches both to the domain (virtio disk, SATA cdrom). A destroy removes
//! the instance's files. Without images (the default, and always with `test:///default`
//! unless set explicitly) the guest gets no disk.
//!
//! Real guests: with a [`GuestBoot`] ([`LibvirtHypervisor::with_guest`], from the scenario's
//! `[guest]`), the domain boots that kernel and initramfs directly (`<os><kernel>`), its
//! serial console goes to `<instance_dir>/console.log`, and a spawn waits (phase
//! `guest_boot`) until the guest has printed the metadata it read from its config drive
//! (`scripts/guest/init`: a `STACKBED-METADATA uuid=... hostname=...` line, then
//! `STACKBED-END`); a guest that reports another instance's uuid fails the build.
//!
//! Not done yet (later issues): networking (no ports, bridges or
//! vif-plugged event). [`Hypervisor::allocate_network`], [`Hypervisor::deallocate_network`]
//! and [`Hypervisor::block_device_mapping`] succeed without doing anything.

use stackbed_core::sync::guard;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use virt::connect::Connect;
use virt::error::ErrorNumber;

use stackbed_core::model::{ComputeNode, Image, Instance};
use stackbed_core::scenario::HostGroup;
use stackbed_images::cache::{CacheConfig, ImageCache};
use stackbed_images::configdrive::{self, InstanceMetadata};
use stackbed_images::glance::ImageService;
use stackbed_services::seams::{HvError, Hypervisor, PhaseTimings};

/// Names the directory that holds the image service's store (`<dir>/glance`) and each
/// host's `_base` cache and instance files (`<dir>/<host>/...`). Read for real QEMU
/// hypervisors only.
pub const IMAGES_DIR_ENV: &str = "STACKBED_IMAGES_DIR";

/// A compute host's image plumbing: the image service it downloads from, its `_base`
/// cache, and where instance disks live (nova's `instances_path`).
pub struct HostImages {
    pub glance: Arc<ImageService>,
    pub cache: ImageCache,
    pub instances_dir: std::path::PathBuf,
}

impl HostImages {
    /// `<root>/<host>/_base` and `<root>/<host>/instances`, with nova's default
    /// `force_raw_images = true`.
    pub fn open(root: &Path, host: &str, glance: Arc<ImageService>) -> Result<HostImages, String> {
        let host_dir = root.join(host);
        let cache = ImageCache::new(CacheConfig { base_dir: host_dir.join("_base"), force_raw_images: true })
            .map_err(|e| e.to_string())?;
        Ok(HostImages { glance, cache, instances_dir: host_dir.join("instances") })
    }

    /// `<instances_dir>/<uuid>`: the instance's overlay, config drive and console log.
    pub fn instance_dir(&self, instance: &Instance) -> std::path::PathBuf {
        let safe: String =
            instance.uuid.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        self.instances_dir.join(safe)
    }

    /// Fetch, overlay, config drive: the files the domain's disks point at, with timings.
    fn prepare(&self, instance: &Instance, image: &Image) -> Result<(InstanceDisks, PhaseTimings), HvError> {
        let rec = self.glance.find_by_name(&image.name).ok_or_else(|| {
            HvError::Abort(format!("image {} is not in the image service (upload it first)", image.name))
        })?;
        let t = Instant::now();
        let fetch = self.cache.fetch(&self.glance, &rec.id).map_err(|e| HvError::Reschedule(e.to_string()))?;
        let fetch_s = t.elapsed().as_secs_f64();
        let dir = self.instance_dir(instance);
        let t = Instant::now();
        let root_bytes = (instance.flavor.disk_gb > 0).then_some(instance.flavor.disk_gb << 30);
        let disk = self
            .cache
            .create_instance_disk(&fetch.base, &dir, root_bytes)
            .map_err(|e| HvError::Reschedule(e.to_string()))?;
        let overlay_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let config_drive = dir.join("disk.config");
        let meta = InstanceMetadata {
            uuid: instance.uuid.clone(),
            name: instance.name.clone(),
            hostname: instance.name.clone(),
            project_id: instance.project.clone(),
            availability_zone: "nova".into(),
            launch_index: 0,
            meta: Default::default(),
            public_keys: Default::default(),
        };
        configdrive::write(&config_drive, &meta, None).map_err(HvError::Reschedule)?;
        let phases =
            vec![("image_fetch", fetch_s), ("image_overlay", overlay_s), ("config_drive", t.elapsed().as_secs_f64())];
        Ok((InstanceDisks { root: disk, config_drive }, phases))
    }
}

/// A real guest: direct kernel boot of `kernel` with `initrd` (see `scripts/guest/build.sh`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestBoot {
    pub kernel: std::path::PathBuf,
    pub initrd: std::path::PathBuf,
    pub cmdline: String,
    /// How long a spawn waits for the guest to report its metadata.
    pub boot_timeout: Duration,
}

impl GuestBoot {
    /// From a scenario's `[guest]`; errors name the field when a file is missing.
    /// The paths become absolute (libvirt resolves relative ones against its own directory).
    pub fn from_scenario(g: &stackbed_core::scenario::Guest) -> Result<GuestBoot, String> {
        let file = |field: &str, p: &str| match std::fs::canonicalize(p) {
            Ok(abs) if abs.is_file() => Ok(abs),
            _ => {
                Err(format!("scenario field {field}: {p} is not a file (build the guest with scripts/guest/build.sh)"))
            }
        };
        Ok(GuestBoot {
            kernel: file("guest.kernel", &g.kernel)?,
            initrd: file("guest.initrd", &g.initrd)?,
            cmdline: g.cmdline.clone(),
            boot_timeout: g.boot_timeout.0,
        })
    }
}

/// The line the guest prints with what it read from its config drive.
pub const GUEST_METADATA: &str = "STACKBED-METADATA";
/// The guest printed everything it read.
pub const GUEST_READY: &str = "STACKBED-END";
/// The guest could not read its config drive.
pub const GUEST_ERROR: &str = "STACKBED-ERROR";

/// What a guest reported on its console: the `key=value` fields of its
/// `STACKBED-METADATA` line (`uuid`, `hostname`, `name`, `device`, `root_disk_bytes`).
pub fn guest_report(console: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let line = console.lines().find_map(|l| l.split_once(GUEST_METADATA).map(|(_, rest)| rest))?;
    Some(
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// The files a domain's disks point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDisks {
    /// qcow2 overlay backed by the cached base.
    pub root: std::path::PathBuf,
    /// ISO 9660 config drive.
    pub config_drive: std::path::PathBuf,
}

impl InstanceDisks {
    /// Where a real guest's serial console goes: next to its disks.
    pub fn console_log(&self) -> std::path::PathBuf {
        self.config_drive.with_file_name("console.log")
    }
}

/// libvirt's in-process test driver, the default: no daemon, no guests.
pub const DEFAULT_URI: &str = "test:///default";

/// How QEMU runs guests on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation: `<domain type='kvm'>`.
    Kvm,
    /// QEMU's Tiny Code Generator, pure emulation: `<domain type='qemu'>`.
    Tcg,
}

/// KVM only if `/dev/kvm` exists and the CPU advertises VMX or SVM. A nested VM may expose
/// a `/dev/kvm` that opens but cannot boot guests; without the CPU flag, TCG is chosen.
pub fn detect_accel() -> Accel {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    accel_from(Path::new("/dev/kvm").exists(), &cpuinfo)
}

/// [`detect_accel`]'s decision from its inputs.
pub fn accel_from(dev_kvm_exists: bool, cpuinfo: &str) -> Accel {
    let virt_flag = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if dev_kvm_exists && virt_flag {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// What `kind()` reports for a connection URI: `test` for the test driver, else by `accel`.
pub fn kind_for(uri: &str, accel: Accel) -> &'static str {
    if uri.starts_with("test:") || uri.starts_with("test+") {
        "test"
    } else {
        match accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "qemu",
        }
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The domain XML for `instance` (no UUID: libvirt generates one). `kind` is the domain
/// type: `test`, `kvm` or `qemu`.
pub fn domain_xml(instance: &Instance, kind: &str, arch: &str) -> String {
    domain_xml_with_disks(instance, kind, arch, None)
}

fn disks_xml(disks: &InstanceDisks) -> String {
    let path = |p: &Path| xml_escape(&p.display().to_string());
    format!(
        "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      \
         <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    \
         <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      \
         <source file='{}'/>\n      <target dev='sda' bus='sata'/>\n      <readonly/>\n    </disk>\n",
        path(&disks.root),
        path(&disks.config_drive)
    )
}

/// [`domain_xml`] with the instance's root disk and config drive attached.
pub fn domain_xml_with_disks(instance: &Instance, kind: &str, arch: &str, disks: Option<&InstanceDisks>) -> String {
    domain_xml_with_guest(instance, kind, arch, disks, None)
}

/// [`domain_xml_with_disks`] booting a real guest: direct kernel boot, the serial console
/// to the instance's `console.log` (needs `disks`; without them the console stays a pty).
pub fn domain_xml_with_guest(
    instance: &Instance,
    kind: &str,
    arch: &str,
    disks: Option<&InstanceDisks>,
    guest: Option<&GuestBoot>,
) -> String {
    let console = match (guest, disks) {
        (Some(_), Some(d)) => format!(
            "    <serial type='file'>\n      <source path='{}'/>\n      <target port='0'/>\n    </serial>\n",
            xml_escape(&d.console_log().display().to_string())
        ),
        _ => "    <serial type='pty'/>\n    <console type='pty'/>\n".to_string(),
    };
    let boot = match guest {
        Some(g) => format!(
            "    <kernel>{}</kernel>\n    <initrd>{}</initrd>\n    <cmdline>{}</cmdline>\n",
            xml_escape(&g.kernel.display().to_string()),
            xml_escape(&g.initrd.display().to_string()),
            xml_escape(&g.cmdline)
        ),
        None => String::new(),
    };
    let disks = disks.map(disks_xml).unwrap_or_default();
    let name = xml_escape(&instance.name);
    let arch = xml_escape(arch);
    let (ram, vcpus) = (instance.flavor.ram_mb, instance.flavor.vcpus);
    if kind == "test" {
        let devices = if disks.is_empty() { String::new() } else { format!("  <devices>\n{disks}  </devices>\n") };
        return format!(
            "<domain type='test'>\n  <name>{name}</name>\n  <memory unit='MiB'>{ram}</memory>\n  \
             <vcpu>{vcpus}</vcpu>\n  <os>\n    <type arch='{arch}'>hvm</type>\n  </os>\n{devices}</domain>\n"
        );
    }
    let machine = if arch == "x86_64" || arch == "i686" { " machine='q35'" } else { "" };
    format!(
        "<domain type='{kind}'>\n  <name>{name}</name>\n  <memory unit='MiB'>{ram}</memory>\n  \
         <vcpu placement='static'>{vcpus}</vcpu>\n  <os>\n    <type arch='{arch}'{machine}>hvm</type>\n{boot}  </os>\n  \
         <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n  \
         <devices>\n{disks}{console}  </devices>\n</domain>\n"
    )
}

/// The node description libvirt's test driver reads from a `test:///<file>` URI.
pub fn test_node_xml(group: &HostGroup) -> String {
    let cpus = group.vcpus.max(1);
    format!(
        "<node>\n  <cpu>\n    <mhz>2000</mhz>\n    <model>{}</model>\n    <active>{cpus}</active>\n    \
         <nodes>1</nodes>\n    <sockets>1</sockets>\n    <cores>{cpus}</cores>\n    <threads>1</threads>\n  \
         </cpu>\n  <memory>{}</memory>\n</node>\n",
        xml_escape(&group.cpu_arch),
        group.ram_mb.saturating_mul(1024)
    )
}

/// Waits until the guest's console shows that it read its config drive; returns the seconds
/// waited. Fails when the guest reports an error or another instance's uuid (abort: another
/// host would not do better), stops, or is not done within `timeout` (reschedule).
fn wait_for_guest(
    dom: &virt::domain::Domain,
    name: &str,
    uuid: &str,
    log: &Path,
    timeout: Duration,
    closing: &std::sync::atomic::AtomicBool,
) -> Result<f64, HvError> {
    let t0 = Instant::now();
    loop {
        if closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(HvError::Abort(format!("guest {name}: the run ended while it booted")));
        }
        let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        // The marker at the start of a line: the guest's init reporting, not text it echoes
        // from the drive (user_data may contain anything).
        if let Some(line) = text.lines().find(|l| l.starts_with(GUEST_ERROR)) {
            return Err(HvError::Abort(format!("guest {name}: {}", line.trim())));
        }
        if text.contains(GUEST_READY) {
            let seen = guest_report(&text).and_then(|r| r.get("uuid").cloned()).unwrap_or_default();
            if seen != uuid {
                return Err(HvError::Abort(format!(
                    "guest {name} read uuid `{seen}` from its config drive, expected `{uuid}` ({})",
                    log.display()
                )));
            }
            return Ok(t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() >= timeout {
            return Err(HvError::Reschedule(format!(
                "guest {name} did not report its metadata within {:.0} s (console: {})",
                timeout.as_secs_f64(),
                log.display()
            )));
        }
        if !dom.is_active().unwrap_or(true) {
            // One last look: the guest may have printed and powered off in between.
            let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            if !text.contains(GUEST_READY) {
                return Err(HvError::Reschedule(format!(
                    "guest {name} stopped before reporting its metadata (console: {})",
                    log.display()
                )));
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn libvirt_error(what: &str, name: &str, e: &virt::error::Error) -> HvError {
    HvError::Reschedule(format!("libvirt {what} {name}: {}", e.message()))
}

fn is_no_domain(e: &virt::error::Error) -> bool {
    e.code().is(ErrorNumber::NoDomain)
}

/// libvirt's default error handler prints every error on stderr; errors are returned to
/// the caller here, so silence it once.
fn quiet_libvirt() {
    static ONCE: Once = Once::new();
    ONCE.call_once(virt::error::clear_error_callback);
}

struct Shared {
    conn: Connect,
    /// Domains this host defined and has not undefined yet.
    defined: Mutex<BTreeSet<String>>,
    /// Set by `destroy_all` when the run ends: a guest still booting stops waiting (its
    /// thread cannot be cancelled otherwise) and is destroyed.
    closing: std::sync::atomic::AtomicBool,
}

/// One compute host's hypervisor: a libvirt connection.
pub struct LibvirtHypervisor {
    uri: String,
    kind: &'static str,
    node: ComputeNode,
    shared: Arc<Shared>,
    images: Option<Arc<HostImages>>,
    guest: Option<Arc<GuestBoot>>,
}

impl LibvirtHypervisor {
    /// Opens a connection to `uri` (blocking: call it outside async code or in
    /// `spawn_blocking`). The node's capabilities come from the scenario's host group.
    pub fn connect(uri: &str, group: &HostGroup, host: &str) -> Result<LibvirtHypervisor, String> {
        quiet_libvirt();
        let conn =
            Connect::open(Some(uri)).map_err(|e| format!("cannot connect to libvirt at {uri}: {}", e.message()))?;
        let kind = kind_for(uri, detect_accel());
        let mut hv = LibvirtHypervisor {
            uri: uri.to_string(),
            kind,
            node: group.node(host),
            shared: Arc::new(Shared {
                conn,
                defined: Mutex::new(BTreeSet::new()),
                closing: std::sync::atomic::AtomicBool::new(false),
            }),
            images: None,
            guest: None,
        };
        // A real QEMU guest needs a disk: give it one when an images directory is named.
        if kind != "test" {
            if let Some(dir) = std::env::var_os(IMAGES_DIR_ENV).filter(|d| !d.is_empty()) {
                let root = std::path::PathBuf::from(dir);
                let glance = ImageService::open(&root.join("glance")).map_err(|e| e.to_string())?;
                hv = hv.with_images(HostImages::open(&root, host, Arc::new(glance))?);
            }
        }
        Ok(hv)
    }

    /// Gives this host an image cache: spawns then attach an overlay and a config drive.
    pub fn with_images(mut self, images: HostImages) -> LibvirtHypervisor {
        self.images = Some(Arc::new(images));
        self
    }

    pub fn images(&self) -> Option<&HostImages> {
        self.images.as_deref()
    }

    /// Boots real guests: every spawn boots `guest` with the instance's overlay and config
    /// drive and waits until the guest has read its metadata (phase `guest_boot`). Needs
    /// images ([`LibvirtHypervisor::with_images`]) and a QEMU connection.
    pub fn with_guest(mut self, guest: GuestBoot) -> Result<LibvirtHypervisor, String> {
        if self.kind == "test" {
            return Err(format!("libvirt {} cannot boot real guests (use qemu:///system)", self.uri));
        }
        if self.images.is_none() {
            return Err("real guests need an image service and cache (with_images)".into());
        }
        self.guest = Some(Arc::new(guest));
        Ok(self)
    }

    /// A private instance of libvirt's test driver for this host, built from its host group
    /// (CPUs, memory, architecture). Unlike `test:///default`, which every connection of a
    /// process shares, each call gives an independent mock hypervisor, as real hosts are.
    /// Blocking, like [`LibvirtHypervisor::connect`].
    pub fn connect_private_test(group: &HostGroup, host: &str) -> Result<LibvirtHypervisor, String> {
        static FILES: AtomicU64 = AtomicU64::new(0);
        let n = FILES.fetch_add(1, Ordering::Relaxed);
        let safe_host: String =
            host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let path = std::env::temp_dir().join(format!("stackbed-libvirt-{}-{n}-{safe_host}.xml", std::process::id()));
        let path_text = path.to_str().ok_or_else(|| format!("temporary path {path:?} is not UTF-8"))?.to_string();
        if !path_text.starts_with('/') || path_text.contains(|c: char| c.is_whitespace() || c == '?' || c == '#') {
            return Err(format!("temporary path {path_text} cannot be put in a test:// URI"));
        }
        std::fs::write(&path, test_node_xml(group)).map_err(|e| format!("cannot write {path_text}: {e}"))?;
        // The test driver reads the file while opening; it is not needed afterwards.
        let hv = LibvirtHypervisor::connect(&format!("test://{path_text}"), group, host);
        let _ = std::fs::remove_file(&path);
        hv
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Names of the domains this host defined and has not destroyed.
    pub fn domains(&self) -> Vec<String> {
        guard(&self.shared.defined).iter().cloned().collect()
    }

    /// Destroys and undefines every domain this host defined (end of a run). Returns the
    /// first error, after trying them all.
    pub async fn destroy_all(&self) -> Result<(), HvError> {
        self.shared.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut first = Ok(());
        for name in self.domains() {
            let r = self.destroy_named(name).await;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// nova's `delete_instance_files`; best effort (a leftover directory holds no lock).
    async fn remove_instance_files(&self, instance: &Instance) {
        if let Some(images) = self.images.clone() {
            let dir = images.instance_dir(instance);
            let _ = self.blocking(move |_| Ok(std::fs::remove_dir_all(&dir).ok())).await;
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, HvError> + Send + 'static,
    ) -> Result<T, HvError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| HvError::Reschedule(format!("libvirt worker failed: {e}")))?
    }

    async fn destroy_named(&self, name: String) -> Result<(), HvError> {
        self.destroy_domain(name).await
    }

    async fn destroy_domain(&self, name: String) -> Result<(), HvError> {
        self.blocking(move |s| {
            let dom = match s.conn.lookup_domain_by_name(&name) {
                Ok(d) => d,
                Err(e) if is_no_domain(&e) => {
                    guard(&s.defined).remove(&name);
                    return Ok(());
                }
                Err(e) => return Err(libvirt_error("lookup", &name, &e)),
            };
            if dom.is_active().map_err(|e| libvirt_error("state of", &name, &e))? {
                match dom.destroy() {
                    Ok(()) => {}
                    // Stopped meanwhile (or gone): the undefine below decides.
                    Err(e) if is_no_domain(&e) || e.code().is(ErrorNumber::OperationInvalid) => {}
                    Err(e) => return Err(libvirt_error("destroy", &name, &e)),
                }
            }
            match dom.undefine() {
                Ok(()) => {}
                Err(e) if is_no_domain(&e) => {}
                Err(e) => return Err(libvirt_error("undefine", &name, &e)),
            }
            guard(&s.defined).remove(&name);
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Hypervisor for LibvirtHypervisor {
    fn node_info(&self) -> ComputeNode {
        self.node.clone()
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    /// Not implemented yet: real networking (ports, bridges, vif-plugged) comes later.
    async fn allocate_network(&self, _instance: &Instance) -> Result<(), HvError> {
        Ok(())
    }

    /// Not implemented yet: real networking comes later.
    async fn deallocate_network(&self, _instance: &Instance) -> Result<(), HvError> {
        Ok(())
    }

    /// Not implemented yet: images and root disks (qcow2 overlays) come later.
    async fn block_device_mapping(&self, _instance: &Instance) -> Result<(), HvError> {
        Ok(())
    }

    /// With images: fetches the image into the cache, creates the overlay and the config
    /// drive (phases `image_fetch`, `image_overlay`, `config_drive`). Then defines and starts
    /// the domain (phases `define`, `start`, in seconds).
    async fn spawn(&self, instance: &Instance, image: &Image) -> Result<PhaseTimings, HvError> {
        let (disks, mut phases) = match self.images.clone() {
            Some(images) => {
                let (inst, img) = (instance.clone(), image.clone());
                let (d, p) = self.blocking(move |_| images.prepare(&inst, &img)).await?;
                (Some(d), p)
            }
            None => (None, PhaseTimings::new()),
        };
        let guest = self.guest.clone().filter(|_| disks.is_some());
        let xml = domain_xml_with_guest(instance, self.kind, &self.node.cpu_arch, disks.as_ref(), guest.as_deref());
        let console = disks.as_ref().map(InstanceDisks::console_log).filter(|_| guest.is_some());
        if let Some(log) = &console {
            let _ = std::fs::remove_file(log);
        }
        let name = instance.name.clone();
        let uuid = instance.uuid.clone();
        let started = self
            .blocking(move |s| {
                // Without a UUID in the XML, defining an existing name would redefine that
                // domain (possibly running): refuse instead, as nova's UUID clash would.
                match s.conn.lookup_domain_by_name(&name) {
                    Ok(_) => return Err(HvError::Reschedule(format!("libvirt define {name}: domain already exists"))),
                    Err(e) if is_no_domain(&e) => {}
                    Err(e) => return Err(libvirt_error("lookup", &name, &e)),
                }
                let t0 = Instant::now();
                let dom = s.conn.define_domain_xml(&xml).map_err(|e| libvirt_error("define", &name, &e))?;
                guard(&s.defined).insert(name.clone());
                let define_s = t0.elapsed().as_secs_f64();
                let t1 = Instant::now();
                if let Err(e) = dom.create() {
                    // Leave nothing behind for the reschedule: the domain was defined here.
                    if dom.undefine().is_ok() {
                        guard(&s.defined).remove(&name);
                    }
                    return Err(libvirt_error("start", &name, &e));
                }
                let mut p = vec![("define", define_s), ("start", t1.elapsed().as_secs_f64())];
                if let (Some(g), Some(log)) = (&guest, &console) {
                    match wait_for_guest(&dom, &name, &uuid, log, g.boot_timeout, &s.closing) {
                        Ok(secs) => p.push(("guest_boot", secs)),
                        Err(e) => {
                            // As for a failed start: the reschedule finds nothing of this guest.
                            let _ = dom.destroy();
                            if dom.undefine().is_ok() {
                                guard(&s.defined).remove(&name);
                            }
                            return Err(e);
                        }
                    }
                }
                Ok(p)
            })
            .await;
        match started {
            Ok(p) => {
                phases.extend(p);
                Ok(phases)
            }
            Err(e) => {
                self.remove_instance_files(instance).await;
                Err(e)
            }
        }
    }

    /// Destroys and undefines the domain (a missing domain is fine), then removes the
    /// instance's files (overlay, config drive) when this host keeps images.
    async fn destroy(&self, instance: &Instance) -> Result<(), HvError> {
        self.destroy_domain(instance.name.clone()).await?;
        self.remove_instance_files(instance).await;
        Ok(())
    }

    /// Every domain libvirt has, running or defined, whose name is an instance's
    /// (`server-<uuid>`, as nova-compute names them here): libvirt, not this process, is the
    /// record, so a restarted compute finds the guests its predecessor started.
    async fn list_instance_uuids(&self) -> Result<Vec<String>, HvError> {
        self.blocking(|s| {
            let domains = s.conn.list_all_domains(0).map_err(|e| libvirt_error("list", "domains", &e))?;
            let mut uuids = Vec::new();
            for dom in domains {
                let name = dom.name().map_err(|e| libvirt_error("name of", "a domain", &e))?;
                if let Some(uuid) = name.strip_prefix("server-") {
                    uuids.push(uuid.to_string());
                }
            }
            uuids.sort();
            Ok(uuids)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_needs_both_dev_kvm_and_cpu_flag() {
        let vmx = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse\n";
        let svm = "processor\t: 0\nflags\t\t: fpu svm lm\n";
        let none = "processor\t: 0\nflags\t\t: fpu vme hypervisor lm\nvmx flags\t: ept\n";
        assert_eq!(accel_from(true, vmx), Accel::Kvm);
        assert_eq!(accel_from(true, svm), Accel::Kvm);
        assert_eq!(accel_from(false, vmx), Accel::Tcg);
        assert_eq!(accel_from(true, none), Accel::Tcg);
        assert_eq!(accel_from(true, ""), Accel::Tcg);
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_for("test:///default", Accel::Kvm), "test");
        assert_eq!(kind_for("qemu:///system", Accel::Kvm), "kvm");
        assert_eq!(kind_for("qemu:///system", Accel::Tcg), "qemu");
    }

    fn group() -> HostGroup {
        HostGroup {
            count: 1,
            name_prefix: "compute".into(),
            vcpus: 8,
            ram_mb: 16384,
            disk_gb: 100,
            hypervisor_type: "kvm".into(),
            hypervisor_version: 9_000_000,
            cpu_arch: "x86_64".into(),
            reserved: Default::default(),
            stats: Default::default(),
            supported_instances: None,
            cpu_info: None,
            metrics: Default::default(),
        }
    }

    fn instance(name: &str) -> Instance {
        Instance {
            uuid: format!("uuid-{name}"),
            name: name.to_string(),
            project: "demo".into(),
            user: "demo-user".into(),
            flavor: stackbed_core::model::Flavor {
                name: "m1.tiny".into(),
                vcpus: 1,
                ram_mb: 512,
                disk_gb: 1,
                ephemeral_gb: 0,
                swap: 0,
                extra_specs: Default::default(),
            },
            image: "cirros".into(),
            vm_state: stackbed_core::states::VmState::Building,
            task_state: Some(stackbed_core::states::TaskState::Spawning),
            power_state: stackbed_core::states::PowerState::NoState,
            host: Some("compute-1".into()),
            created_at_ms: 0,
            launched_at_ms: None,
            deleted: false,
            fault: None,
            attempts: 1,
        }
    }

    /// With images, a spawn on the test driver fetches the image once, gives each instance
    /// an overlay on the cached base and a config drive, and attaches both to the domain;
    /// destroy removes the instance's files. (A real QEMU host does the same when
    /// STACKBED_IMAGES_DIR is set.)
    #[test]
    fn spawn_with_images_attaches_an_overlay_and_a_config_drive() {
        let root = std::env::temp_dir().join(format!("stackbed-libvirt-images-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // A 2 MiB qcow2 image with data, uploaded to the image service.
        let src = root.join("cirros.qcow2");
        std::fs::create_dir_all(&root).unwrap();
        stackbed_images::disk::create_qcow2(&src, 2 << 20).unwrap();
        {
            let d = stackbed_images::disk::Disk::open(
                &src,
                stackbed_images::disk::OpenOptions { writable: true, direct: false },
            )
            .unwrap();
            d.write(&[7u8; 65536], 0).unwrap();
        }
        let glance = Arc::new(ImageService::open(&root.join("glance")).unwrap());
        let new = stackbed_images::glance::NewImage {
            name: "cirros".into(),
            disk_format: stackbed_images::disk::DiskFormat::Qcow2,
            container_format: "bare".into(),
            properties: Default::default(),
        };
        glance.upload(new, &mut std::fs::File::open(&src).unwrap()).unwrap();
        let images = HostImages::open(&root, "compute-1", glance.clone()).unwrap();
        let hv = LibvirtHypervisor::connect_private_test(&group(), "compute-1").unwrap().with_images(images);
        let image =
            Image { name: "cirros".into(), size_mb: 2, disk_format: "qcow2".into(), properties: Default::default() };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (a, b) = (instance("img-a"), instance("img-b"));
            let pa = hv.spawn(&a, &image).await.unwrap();
            let pb = hv.spawn(&b, &image).await.unwrap();
            let names: Vec<&str> = pa.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, ["image_fetch", "image_overlay", "config_drive", "define", "start"]);
            assert_eq!(pb.len(), 5);
            assert_eq!(glance.download_count(), 1, "two boots, one download");
            let images = hv.images().unwrap();
            let dir = images.instance_dir(&a);
            let disk = dir.join("disk");
            let h = stackbed_images::qcow2::Header::read(&disk).unwrap();
            assert_eq!(h.size, 1 << 30, "the flavor's 1 GB root disk");
            let base = h.backing_file.unwrap();
            assert!(base.contains("_base"), "{base}");
            let iso = std::fs::read(dir.join("disk.config")).unwrap();
            let md = configdrive::read_file(&iso, "openstack/latest/meta_data.json").unwrap();
            assert!(String::from_utf8_lossy(&md).contains("uuid-img-a"));
            // The domain carries both disks.
            let xml = hv.shared.conn.lookup_domain_by_name("img-a").unwrap().xml_desc(0).unwrap();
            assert!(xml.contains(&disk.display().to_string()), "{xml}");
            assert!(xml.contains("disk.config"), "{xml}");
            hv.destroy(&a).await.unwrap();
            assert!(!dir.exists(), "destroy removes the instance's files");
            assert!(images.instance_dir(&b).join("disk").exists());
            hv.destroy(&b).await.unwrap();
            // An image the service does not have aborts the build (no reschedule).
            let missing = Image { name: "nope".into(), ..image.clone() };
            assert!(matches!(hv.spawn(&instance("img-c"), &missing).await, Err(HvError::Abort(_))));
        });
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn domain_xml_boots_a_real_guest() {
        let disks =
            InstanceDisks { root: "/var/lib/nova/i/disk".into(), config_drive: "/var/lib/nova/i/disk.config".into() };
        let guest = GuestBoot {
            kernel: "/g/vmlinuz".into(),
            initrd: "/g/initrd.img".into(),
            cmdline: "console=ttyS0 quiet".into(),
            boot_timeout: Duration::from_secs(1),
        };
        let xml = domain_xml_with_guest(&instance("x"), "qemu", "x86_64", Some(&disks), Some(&guest));
        assert!(xml.starts_with("<domain type='qemu'>"), "{xml}");
        assert!(xml.contains("<kernel>/g/vmlinuz</kernel>") && xml.contains("<initrd>/g/initrd.img</initrd>"), "{xml}");
        assert!(xml.contains("<cmdline>console=ttyS0 quiet</cmdline>"), "{xml}");
        assert!(xml.contains("<serial type='file'>\n      <source path='/var/lib/nova/i/console.log'/>"), "{xml}");
        assert!(!xml.contains("type='pty'"), "{xml}");
        let report = guest_report("[ 1.0] x\nSTACKBED-METADATA uuid=u-1 hostname=h device=/dev/sr0\nSTACKBED-END\n");
        let report = report.unwrap();
        assert_eq!((report["uuid"].as_str(), report["hostname"].as_str()), ("u-1", "h"));
        assert!(guest_report("no marker").is_none());
    }

    #[test]
    fn domain_xml_attaches_disks_for_qemu() {
        let disks =
            InstanceDisks { root: "/var/lib/nova/i/disk".into(), config_drive: "/var/lib/nova/i/disk.config".into() };
        let xml = domain_xml_with_disks(&instance("x"), "qemu", "x86_64", Some(&disks));
        assert!(xml.contains("<source file='/var/lib/nova/i/disk'/>"), "{xml}");
        assert!(xml.contains("<target dev='vda' bus='virtio'/>"), "{xml}");
        assert!(xml.contains("device='cdrom'") && xml.contains("<readonly/>"), "{xml}");
        assert_eq!(
            domain_xml(&instance("x"), "qemu", "x86_64"),
            domain_xml_with_disks(&instance("x"), "qemu", "x86_64", None)
        );
    }
}
