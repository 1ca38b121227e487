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
//! Not done yet (later issues): images (the guest gets no disk or kernel yet) and
//! networking (no ports, bridges or vif-plugged event). [`Hypervisor::allocate_network`],
//! [`Hypervisor::deallocate_network`] and [`Hypervisor::block_device_mapping`] succeed
//! without doing anything.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use async_trait::async_trait;
use virt::connect::Connect;
use virt::error::ErrorNumber;

use stackbed_core::model::{ComputeNode, Image, Instance};
use stackbed_core::scenario::HostGroup;
use stackbed_services::seams::{HvError, Hypervisor, PhaseTimings};

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
    let name = xml_escape(&instance.name);
    let arch = xml_escape(arch);
    let (ram, vcpus) = (instance.flavor.ram_mb, instance.flavor.vcpus);
    if kind == "test" {
        return format!(
            "<domain type='test'>\n  <name>{name}</name>\n  <memory unit='MiB'>{ram}</memory>\n  \
             <vcpu>{vcpus}</vcpu>\n  <os>\n    <type arch='{arch}'>hvm</type>\n  </os>\n</domain>\n"
        );
    }
    let machine = if arch == "x86_64" || arch == "i686" { " machine='q35'" } else { "" };
    format!(
        "<domain type='{kind}'>\n  <name>{name}</name>\n  <memory unit='MiB'>{ram}</memory>\n  \
         <vcpu placement='static'>{vcpus}</vcpu>\n  <os>\n    <type arch='{arch}'{machine}>hvm</type>\n  </os>\n  \
         <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n  \
         <devices>\n    <serial type='pty'/>\n    <console type='pty'/>\n  </devices>\n</domain>\n"
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
}

/// One compute host's hypervisor: a libvirt connection.
pub struct LibvirtHypervisor {
    uri: String,
    kind: &'static str,
    node: ComputeNode,
    shared: Arc<Shared>,
}

impl LibvirtHypervisor {
    /// Opens a connection to `uri` (blocking: call it outside async code or in
    /// `spawn_blocking`). The node's capabilities come from the scenario's host group.
    pub fn connect(uri: &str, group: &HostGroup, host: &str) -> Result<LibvirtHypervisor, String> {
        quiet_libvirt();
        let conn =
            Connect::open(Some(uri)).map_err(|e| format!("cannot connect to libvirt at {uri}: {}", e.message()))?;
        Ok(LibvirtHypervisor {
            uri: uri.to_string(),
            kind: kind_for(uri, detect_accel()),
            node: group.node(host),
            shared: Arc::new(Shared { conn, defined: Mutex::new(BTreeSet::new()) }),
        })
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
        self.shared.defined.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Destroys and undefines every domain this host defined (end of a run). Returns the
    /// first error, after trying them all.
    pub async fn destroy_all(&self) -> Result<(), HvError> {
        let mut first = Ok(());
        for name in self.domains() {
            let r = self.destroy_named(name).await;
            if first.is_ok() {
                first = r;
            }
        }
        first
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
        self.blocking(move |s| {
            let dom = match s.conn.lookup_domain_by_name(&name) {
                Ok(d) => d,
                Err(e) if is_no_domain(&e) => {
                    s.defined.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
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
            s.defined.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
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

    /// Defines and starts the domain. Phases: `define`, `start` (seconds).
    async fn spawn(&self, instance: &Instance, _image: &Image) -> Result<PhaseTimings, HvError> {
        let xml = domain_xml(instance, self.kind, &self.node.cpu_arch);
        let name = instance.name.clone();
        self.blocking(move |s| {
            // Without a UUID in the XML, defining an existing name would redefine that
            // domain (possibly running): refuse instead, as nova's UUID clash would.
            match s.conn.lookup_domain_by_name(&name) {
                Ok(_) => return Err(HvError::Reschedule(format!("libvirt define {name}: domain already exists"))),
                Err(e) if is_no_domain(&e) => {}
                Err(e) => return Err(libvirt_error("lookup", &name, &e)),
            }
            let t0 = Instant::now();
            let dom = s.conn.define_domain_xml(&xml).map_err(|e| libvirt_error("define", &name, &e))?;
            s.defined.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone());
            let define_s = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            if let Err(e) = dom.create() {
                // Leave nothing behind for the reschedule: the domain was defined here.
                if dom.undefine().is_ok() {
                    s.defined.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
                }
                return Err(libvirt_error("start", &name, &e));
            }
            Ok(vec![("define", define_s), ("start", t1.elapsed().as_secs_f64())])
        })
        .await
    }

    /// Destroys and undefines the domain; a missing domain is fine.
    async fn destroy(&self, instance: &Instance) -> Result<(), HvError> {
        self.destroy_named(instance.name.clone()).await
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
}
