//! ImagePropertiesFilter and the image properties the filters read: nova's current and
//! legacy property names, its canonical architecture, hypervisor type and vm mode names, and
//! the (arch, hypervisor type, vm mode) triples a host advertises.
//!
//! Current nova (`nova/objects/image_meta.py`, `nova/objects/fields.py`,
//! `nova/scheduler/filters/image_props_filter.py`): a property set under its legacy name
//! (`architecture`, `hypervisor_type`, `vm_mode`, `hypervisor_version_requires`, ...) reads
//! as its current one unless the current name is set too; the three enum values are
//! canonicalised (lower case, aliases) before comparing, and an invalid one is an invalid
//! image. Icehouse (2014.1) read the legacy names only, compared architecture and hypervisor
//! type as written, and canonicalised only the vm mode (`pv`, `hv`).

use std::collections::BTreeMap;

use super::{reject, Why};
use crate::model::ComputeNode;
use crate::scenario::Era;

/// nova's `ImageMetaProps._legacy_property_map`: (legacy name, current name).
pub const LEGACY_NAMES: [(&str, &str); 22] = [
    ("architecture", "hw_architecture"),
    ("owner_id", "img_owner_id"),
    ("vmware_disktype", "hw_disk_type"),
    ("vmware_image_version", "img_version"),
    ("vmware_ostype", "os_distro"),
    ("auto_disk_config", "hw_auto_disk_config"),
    ("ipxe_boot", "hw_ipxe_boot"),
    ("xenapi_device_id", "hw_device_id"),
    ("xenapi_image_compression_level", "img_compression_level"),
    ("vmware_linked_clone", "img_linked_clone"),
    ("xenapi_use_agent", "img_use_agent"),
    ("xenapi_skip_agent_inject_ssh", "os_skip_agent_inject_ssh"),
    ("xenapi_skip_agent_inject_files_at_boot", "os_skip_agent_inject_files_at_boot"),
    ("cache_in_nova", "img_cache_in_nova"),
    ("vm_mode", "hw_vm_mode"),
    ("bittorrent", "img_bittorrent"),
    ("mappings", "img_mappings"),
    ("block_device_mapping", "img_block_device_mapping"),
    ("bdm_v2", "img_bdm_v2"),
    ("root_device_name", "img_root_device_name"),
    ("hypervisor_version_requires", "img_hv_requested_version"),
    ("hypervisor_type", "img_hv_type"),
];

/// The fields of nova's `ImageMetaProps` (what `image.properties.get(key)` answers for;
/// AggregateImagePropertiesIsolation skips aggregate keys that are not among them).
#[rustfmt::skip]
pub const IMAGE_META_FIELDS: &[&str] = &[
    "hw_architecture", "hw_emulation_architecture", "hw_auto_disk_config", "hw_boot_menu",
    "hw_cdrom_bus", "hw_cpu_cores", "hw_cpu_sockets", "hw_cpu_max_cores", "hw_cpu_max_sockets",
    "hw_cpu_max_threads", "hw_cpu_policy", "hw_cpu_thread_policy", "hw_cpu_realtime_mask",
    "hw_cpu_threads", "hw_device_id", "hw_disk_bus", "hw_disk_type", "hw_floppy_bus",
    "hw_firmware_type", "hw_firmware_stateless", "hw_input_bus", "hw_ipxe_boot",
    "hw_locked_memory", "hw_machine_type", "hw_mem_encryption", "hw_mem_encryption_model",
    "hw_mem_page_size", "hw_numa_nodes", "hw_numa_cpus", "hw_numa_mem",
    "hw_pci_numa_affinity_policy", "hw_pointer_model", "hw_pmu", "hw_qemu_guest_agent",
    "hw_rescue_bus", "hw_rescue_device", "hw_rng_model", "hw_time_hpet", "hw_serial_port_count",
    "hw_scsi_model", "hw_video_model", "hw_video_ram", "hw_vif_model", "hw_viommu_model",
    "hw_vm_mode", "hw_watchdog_action", "hw_vif_multiqueue_enabled", "hw_tpm_model",
    "hw_tpm_version", "hw_ephemeral_encryption", "hw_ephemeral_encryption_secret_uuid",
    "hw_virtio_packed_ring", "hw_maxphysaddr_mode", "hw_maxphysaddr_bits", "hw_sound_model",
    "hw_usb_model", "hw_redirected_usb_ports", "img_bittorrent", "img_bdm_v2",
    "img_cache_in_nova", "img_compression_level", "img_hv_requested_version", "img_hv_type",
    "img_config_drive", "img_linked_clone", "img_mappings", "img_owner_id",
    "img_root_device_name", "img_use_agent", "img_version", "img_signature",
    "img_signature_hash_method", "img_signature_certificate_uuid", "img_signature_key_type",
    "img_hide_hypervisor_id", "os_admin_user", "os_command_line", "os_distro",
    "os_require_quiesce", "os_secure_boot", "os_skip_agent_inject_files_at_boot",
    "os_skip_agent_inject_ssh", "os_type", "traits_required",
];

/// The image property `current` (a current name) as nova reads it: the value under the
/// current name, else under its legacy name.
pub fn image_property<'a>(props: &'a BTreeMap<String, String>, current: &str) -> Option<&'a str> {
    props
        .get(current)
        .or_else(|| LEGACY_NAMES.iter().find(|(_, c)| *c == current).and_then(|(legacy, _)| props.get(*legacy)))
        .map(String::as_str)
}

/// The current name of image property `name` (itself when it is not a legacy name).
pub fn current_name(name: &str) -> &str {
    LEGACY_NAMES.iter().find(|(legacy, _)| *legacy == name).map_or(name, |(_, current)| current)
}

/// nova's `nova.virt.arch.ALL`.
#[rustfmt::skip]
pub const ARCHITECTURES: [&str; 34] = [
    "alpha", "armv6", "armv7l", "armv7b", "aarch64", "cris", "i686", "ia64", "lm32", "m68k",
    "microblaze", "microblazeel", "mips", "mipsel", "mips64", "mips64el", "openrisc", "parisc",
    "parisc64", "ppc", "ppcle", "ppc64", "ppc64le", "ppcemb", "s390", "s390x", "sh4", "sh4eb",
    "sparc", "sparc64", "unicore32", "x86_64", "xtensa", "xtensaeb",
];

/// nova's `HVType.ALL`.
#[rustfmt::skip]
pub const HV_TYPES: [&str; 22] = [
    "baremetal", "bhyve", "docker", "fake", "hyperv", "ironic", "kqemu", "kvm", "lxc", "lxd",
    "openvz", "parallels", "phyp", "qemu", "test", "uml", "vbox", "vz", "vmware", "xen", "zvm",
    "prsm",
];

/// nova's `VMMode.ALL`.
pub const VM_MODES: [&str; 4] = ["hvm", "xen", "uml", "exe"];

fn find(all: &[&'static str], name: &str) -> Option<&'static str> {
    all.iter().copied().find(|a| a.eq_ignore_ascii_case(name))
}

/// nova's `Architecture.canonicalize`: lower case; `i386`, `i486`, `i586`, `x86_32` and
/// `x86_32p` are `i686`, `amd64` is `x86_64`; `None` for a name not in nova's list.
pub fn canonical_arch(name: &str) -> Option<&'static str> {
    const ALIASES: [(&str, &str); 6] = [
        ("i386", "i686"),
        ("i486", "i686"),
        ("i586", "i686"),
        ("x86_32", "i686"),
        ("x86_32p", "i686"),
        ("amd64", "x86_64"),
    ];
    ALIASES
        .iter()
        .find(|(alias, _)| alias.eq_ignore_ascii_case(name))
        .map(|(_, c)| *c)
        .or_else(|| find(&ARCHITECTURES, name))
}

/// nova's `HVType.canonicalize`: lower case, `xapi` is `xen`.
pub fn canonical_hv_type(name: &str) -> Option<&'static str> {
    if name.eq_ignore_ascii_case("xapi") {
        return Some("xen");
    }
    find(&HV_TYPES, name)
}

/// nova's `VMMode.canonicalize`: lower case; `pv` is `xen`, `hv` and `baremetal` are `hvm`.
/// Icehouse's `vm_mode.name` had the first two aliases, not `baremetal`.
pub fn canonical_vm_mode(name: &str, era: Era) -> Option<&'static str> {
    if name.eq_ignore_ascii_case("pv") {
        return Some("xen");
    }
    if name.eq_ignore_ascii_case("hv") || (era == Era::Current && name.eq_ignore_ascii_case("baremetal")) {
        return Some("hvm");
    }
    find(&VM_MODES, name)
}

/// Checks an image's properties as nova builds its image meta (for scenario validation):
/// `Err((property, message))` for a value nova refuses.
pub fn validate_image_properties(props: &BTreeMap<String, String>, era: Era) -> Result<(), (String, String)> {
    for (name, value) in props {
        let current = current_name(name);
        let ok = match (era, current) {
            (Era::Current, "hw_architecture") => canonical_arch(value).is_some(),
            (Era::Current, "img_hv_type") => canonical_hv_type(value).is_some(),
            (Era::Current, "hw_vm_mode") => canonical_vm_mode(value, era).is_some(),
            (Era::Icehouse, _) if name == "vm_mode" => canonical_vm_mode(value, era).is_some(),
            (_, "img_hv_requested_version") => super::parse_version_predicate(value).is_ok(),
            (Era::Current, "hw_maxphysaddr_bits") => value.trim().parse::<u64>().is_ok(),
            _ => true,
        };
        if !ok {
            let what = match current {
                "hw_architecture" => format!("not an architecture nova knows ({})", ARCHITECTURES.join(", ")),
                "img_hv_type" => format!("not a hypervisor type nova knows ({})", HV_TYPES.join(", ")),
                "hw_vm_mode" => "not a vm mode nova knows (hvm, xen, uml, exe; pv, hv, baremetal)".to_string(),
                "hw_maxphysaddr_bits" => "not a whole number of bits".to_string(),
                _ => "not a version predicate like \">= 6.0, < 9.0\"".to_string(),
            };
            return Err((name.clone(), format!("`{value}` is {what}")));
        }
    }
    Ok(())
}

/// One requested value: canonical (or, in Icehouse, as written), or the invalid value.
pub(super) type Want<'a> = Option<Result<&'a str, &'a str>>;

/// What the image asks of the host (ImagePropertiesFilter), read once per request.
#[derive(Debug, Default)]
pub(super) struct ImageWants<'a> {
    pub(super) icehouse: bool,
    pub(super) arch: Want<'a>,
    pub(super) hv_type: Want<'a>,
    pub(super) vm_mode: Want<'a>,
    pub(super) version: Option<&'a str>,
    /// `hw_maxphysaddr_bits` (current era), as written.
    pub(super) maxphysaddr_bits: Option<&'a str>,
}

/// The cache key of a request's ImageProperties verdicts: the era and each want.
pub(super) type ImageKey = (bool, [Option<Result<String, String>>; 5]);

impl<'a> ImageWants<'a> {
    /// `default_arch`: nova's `image_properties_default_architecture`, for an image without
    /// one (current era).
    pub(super) fn new(props: &'a BTreeMap<String, String>, era: Era, default_arch: Option<&'a str>) -> ImageWants<'a> {
        let get = |current: &str, legacy: &str| match era {
            Era::Current => image_property(props, current),
            Era::Icehouse => props.get(legacy).map(String::as_str),
        };
        let arch = match era {
            Era::Current => get("hw_architecture", "architecture").or(default_arch),
            Era::Icehouse => get("hw_architecture", "architecture"),
        };
        let maxphysaddr_bits = match era {
            Era::Current => image_property(props, "hw_maxphysaddr_bits").filter(|v| !v.is_empty()),
            Era::Icehouse => None,
        };
        let canon = |v: Option<&'a str>, f: fn(&str) -> Option<&'static str>| -> Want<'a> {
            v.filter(|v| !v.is_empty()).map(|v| match era {
                Era::Current => f(v).ok_or(v),
                Era::Icehouse => Ok(v),
            })
        };
        let vm_mode = get("hw_vm_mode", "vm_mode")
            .filter(|v| !v.is_empty())
            .map(|v| canonical_vm_mode(v, era).map(|c| -> &'a str { c }).ok_or(v));
        ImageWants {
            icehouse: era == Era::Icehouse,
            arch: canon(arch, canonical_arch),
            hv_type: canon(get("img_hv_type", "hypervisor_type"), canonical_hv_type),
            vm_mode,
            version: get("img_hv_requested_version", "hypervisor_version_requires").filter(|v| !v.is_empty()),
            maxphysaddr_bits,
        }
    }

    /// Whether the filter checks anything: nova passes every host when the image asks for
    /// no architecture, hypervisor type or vm mode (a version requirement alone included).
    pub(super) fn any(&self) -> bool {
        self.arch.is_some() || self.hv_type.is_some() || self.vm_mode.is_some()
    }

    pub(super) fn key(&self) -> ImageKey {
        let own = |w: &Want<'_>| w.map(|r| r.map(str::to_string).map_err(str::to_string));
        (
            self.icehouse,
            [
                own(&self.arch),
                own(&self.hv_type),
                own(&self.vm_mode),
                self.version.map(|v| Ok(v.to_string())),
                self.maxphysaddr_bits.map(|v| Ok(v.to_string())),
            ],
        )
    }

    pub(super) fn same_key(&self, key: &ImageKey) -> bool {
        let same = |k: &Option<Result<String, String>>, w: &Want<'_>| match (k, w) {
            (None, None) => true,
            (Some(Ok(k)), Some(Ok(w))) | (Some(Err(k)), Some(Err(w))) => k == w,
            _ => false,
        };
        key.0 == self.icehouse
            && same(&key.1[0], &self.arch)
            && same(&key.1[1], &self.hv_type)
            && same(&key.1[2], &self.vm_mode)
            && same(&key.1[3], &self.version.map(Ok))
            && same(&key.1[4], &self.maxphysaddr_bits.map(Ok))
    }

    fn show(w: &Want<'_>) -> String {
        match w {
            None => "*".into(),
            Some(Ok(v)) | Some(Err(v)) => v.to_string(),
        }
    }
}

/// A host's triple as the filter compares it: canonical in the current era (a value nova
/// would not accept is kept as written), as written in Icehouse.
fn host_triple(triple: [&str; 3], icehouse: bool) -> [&str; 3] {
    if icehouse {
        return triple;
    }
    let [a, h, m] = triple;
    [canonical_arch(a).unwrap_or(a), canonical_hv_type(h).unwrap_or(h), canonical_vm_mode(m, Era::Current).unwrap_or(m)]
}

/// ImagePropertiesFilter over the node record: nova's `_instance_supported`.
pub(super) fn image_properties_node(node: &ComputeNode, wants: &ImageWants<'_>, why: &mut impl Why) -> bool {
    if !wants.any() {
        return true;
    }
    for (what, want) in
        [("hw_architecture", &wants.arch), ("img_hv_type", &wants.hv_type), ("hw_vm_mode", &wants.vm_mode)]
    {
        if let Some(Err(bad)) = want {
            // nova refuses the image (ValueError building its image meta).
            return reject(why, || format!("image {what} `{bad}` is not a value nova accepts"));
        }
    }
    if !node.any_supported_instance(|_| true) {
        return reject(why, || {
            "image asks for an arch, hypervisor type or vm mode; host advertises no supported_instances".into()
        });
    }
    // nova's `_compare_props`: each requested value must be one of the triple's three values
    // (membership in the triple, not position by position).
    let wanted = [wants.arch, wants.hv_type, wants.vm_mode];
    let matches = |t: [&str; 3]| {
        let t = host_triple(t, wants.icehouse);
        wanted
            .iter()
            .flatten()
            .flatten()
            .all(|w| t.iter().any(|v| if wants.icehouse { v == w } else { v.eq_ignore_ascii_case(w) }))
    };
    if !node.any_supported_instance(matches) {
        return reject(why, || {
            format!(
                "image wants arch={} hypervisor_type={} vm_mode={}, host supports {:?}",
                ImageWants::show(&wants.arch),
                ImageWants::show(&wants.hv_type),
                ImageWants::show(&wants.vm_mode),
                node.supported_instances()
            )
        });
    }
    // nova skips the version check when the host reports no version.
    if let (Some(req), v @ 1..) = (wants.version, node.hypervisor_version) {
        if !super::version_satisfies(v, req) {
            return reject(why, || format!("hypervisor version {} does not satisfy `{req}`", super::version_string(v)));
        }
    }
    // `_compare_maxphysaddr_bits`: the host's cpu_info maxphysaddr bits, when it reports them.
    if let Some(text) = wants.maxphysaddr_bits {
        let Ok(required) = text.trim().parse::<u64>() else {
            return reject(why, || format!("image hw_maxphysaddr_bits `{text}` is not an integer"));
        };
        let bits = node
            .cpu_info
            .as_deref()
            .and_then(|info| serde_json::from_str::<serde_json::Value>(info).ok())
            .and_then(|info| info.get("maxphysaddr")?.get("bits")?.as_u64())
            .filter(|b| *b != 0);
        if let Some(bits) = bits.filter(|b| *b < required) {
            return reject(why, || format!("host has {bits} physical address bits, image needs {required}"));
        }
    }
    true
}
