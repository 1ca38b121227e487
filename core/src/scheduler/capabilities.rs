//! ComputeCapabilitiesFilter (`nova/scheduler/filters/compute_capabilities_filter.py`): each
//! flavor extra_spec `capabilities:a:b:...` (or an unscoped key naming a host attribute or
//! stat) walks the host state: a host attribute (else a stat) first, then into dicts; a value
//! that is a string is loaded as JSON before descending further (`cpu_info` is one). The
//! value found, as Python's `str()` prints it, must satisfy the spec (`extra_specs::matches`).
//!
//! Icehouse (2014.1): unscoped keys that name nothing fail the host instead of being
//! skipped, and a string is never loaded as JSON (descending into one fails).

use super::{reject, Attr, HostState, Why};
use crate::extra_specs;
use crate::model::Flavor;
use crate::scenario::Era;

/// The flavor extra_spec today's filter reads as `capabilities:cpu_info:maxphysaddr:bits`
/// with `>= ` before its value.
pub(super) const MAXPHYSADDR_BITS: &str = "hw:maxphysaddr_bits";

/// HostState attribute names nova's `hasattr` finds even when unset (an unscoped extra_spec
/// with such a name is checked, not skipped).
const ATTRIBUTES: [&str; 17] = [
    "host",
    "nodename",
    "hypervisor_type",
    "hypervisor_version",
    "cpu_arch",
    "cpu_info",
    "vcpus_total",
    "vcpus_used",
    "memory_mb",
    "total_usable_ram_mb",
    "free_ram_mb",
    "total_usable_disk_gb",
    "free_disk_mb",
    "num_instances",
    "num_io_ops",
    "failed_builds",
    "stats",
];

/// Where the walk is: the host state, its stats dict, an attribute's value, or a value
/// loaded from JSON.
enum Cap<'h> {
    Host,
    Stats,
    Attr(Attr<'h>),
    Json(serde_json::Value),
}

/// nova's `_get_capabilities`: the value at `scope`, or why there is none.
fn walk<'h>(host: &'h HostState, scope: &[&str], era: Era) -> Result<Cap<'h>, String> {
    let mut cap = Cap::Host;
    for part in scope {
        let text = match &cap {
            Cap::Attr(Attr::Text(s)) => Some(s.to_string()),
            Cap::Json(serde_json::Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        if let Some(text) = text {
            if era == Era::Icehouse {
                return Err(format!("`{text}` is a string: Icehouse does not descend into it"));
            }
            cap = Cap::Json(
                serde_json::from_str(&text).map_err(|e| format!("`{text}` couldn't be loaded from JSON: {e}"))?,
            );
        }
        cap = match cap {
            Cap::Host if *part == "stats" => Cap::Stats,
            Cap::Host => Cap::Attr(host.attribute(part).ok_or_else(|| format!("no `{part}`"))?),
            Cap::Stats => Cap::Attr(Attr::Text(host.node.stats.get(*part).ok_or_else(|| format!("no stat `{part}`"))?)),
            Cap::Json(serde_json::Value::Object(mut map)) => match map.remove(*part) {
                Some(serde_json::Value::Null) | None => return Err(format!("no `{part}`")),
                Some(v) => Cap::Json(v),
            },
            // Neither a dict nor a string: nothing to descend into.
            Cap::Attr(_) | Cap::Json(_) => return Err(format!("nothing under `{part}`")),
        };
    }
    Ok(cap)
}

/// Python's `str()` of a value loaded from JSON.
fn py_str(v: &serde_json::Value) -> String {
    fn repr(v: &serde_json::Value, out: &mut String) {
        use serde_json::Value as V;
        match v {
            V::Null => out.push_str("None"),
            V::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
            V::Number(n) => out.push_str(&n.to_string()),
            V::String(s) => {
                out.push('\'');
                out.push_str(&s.replace('\\', "\\\\").replace('\'', "\\'"));
                out.push('\'');
            }
            V::Array(items) => {
                out.push('[');
                for (k, item) in items.iter().enumerate() {
                    if k > 0 {
                        out.push_str(", ");
                    }
                    repr(item, out);
                }
                out.push(']');
            }
            V::Object(map) => {
                out.push('{');
                for (k, (key, item)) in map.iter().enumerate() {
                    if k > 0 {
                        out.push_str(", ");
                    }
                    repr(&V::String(key.clone()), out);
                    out.push_str(": ");
                    repr(item, out);
                }
                out.push('}');
            }
        }
    }
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => {
            let mut out = String::new();
            repr(other, &mut out);
            out
        }
    }
}

fn text(host: &HostState, cap: Cap<'_>) -> String {
    match cap {
        Cap::Attr(a) => a.to_text(),
        Cap::Json(v) => py_str(&v),
        Cap::Stats => py_str(&serde_json::Value::Object(
            host.node.stats.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
        )),
        Cap::Host => host.node.host.clone(),
    }
}

pub(super) fn compute_capabilities(host: &HostState, flavor: &Flavor, era: Era, why: &mut impl Why) -> bool {
    let bits = flavor.extra_specs.get(MAXPHYSADDR_BITS).filter(|_| era == Era::Current);
    let rewritten = bits.map(|b| ("capabilities:cpu_info:maxphysaddr:bits".to_string(), format!(">= {b}")));
    let specs = flavor.extra_specs.iter().filter(|(k, _)| bits.is_none() || k.as_str() != MAXPHYSADDR_BITS);
    for (key, req) in specs.chain(rewritten.iter().map(|(k, v)| (k, v))) {
        let parts: Vec<&str> = key.split(':').collect();
        let scope = match parts.as_slice() {
            // Unscoped: only a host attribute or stat counts today (backward compatible);
            // Icehouse walked every unscoped key.
            [name] => {
                if era == Era::Current && !(ATTRIBUTES.contains(name) || host.node.stats.contains_key(*name)) {
                    continue;
                }
                &parts[..]
            }
            ["capabilities", rest @ ..] => rest,
            _ => continue,
        };
        let value = match walk(host, scope, era) {
            Ok(cap) => text(host, cap),
            Err(e) => return reject(why, || format!("no capability `{}`: {e}", scope.join(":"))),
        };
        match extra_specs::matches(&value, req) {
            Ok(true) => {}
            Ok(false) => return reject(why, || format!("{key}={value} does not satisfy `{req}`")),
            Err(e) => return reject(why, || format!("{key}: {e}")),
        }
    }
    true
}
