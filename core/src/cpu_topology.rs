//! nova's guest CPU topology (`nova/virt/hardware.py`, `get_best_cpu_topology`): how many
//! sockets, cores and threads a guest of N vCPUs gets, from the flavor's `hw:cpu_*` extra
//! specs and the image's `hw_cpu_*` properties.
//!
//! The rules, as nova applies them:
//! - maxima: `hw:cpu_max_{sockets,cores,threads}` (flavor) and `hw_cpu_max_*` (image); an
//!   image maximum above the flavor's is an error; the image's maximum wins, then the
//!   flavor's, else 65536;
//! - preferences: `hw:cpu_{sockets,cores,threads}` and `hw_cpu_*`; flavor preferences above
//!   the maxima are dropped (all three); image preferences above them are an error; any
//!   image preference replaces all of the flavor's;
//! - every (s, c, t) with s * c * t = vcpus within the maxima (each clamped to vcpus; threads
//!   to 1 when the hypervisor has none) is possible; none is an error;
//! - order: larger sockets * cores first, then more sockets, then more threads; then stably
//!   by how many of the preferred values match (3, 2, 1, 0).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{Flavor, Image};

/// nova's VirtCPUTopology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTopology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

impl CpuTopology {
    pub fn new(sockets: u32, cores: u32, threads: u32) -> CpuTopology {
        CpuTopology { sockets, cores, threads }
    }
    pub fn vcpus(&self) -> u64 {
        self.sockets as u64 * self.cores as u64 * self.threads as u64
    }
}

/// nova's exceptions, with its messages' content.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopologyError {
    /// InvalidRequest: a flavor extra spec or image property that is not an integer.
    #[error("invalid {source_kind} {key}=`{value}`: not a non-negative integer")]
    NotAnInteger { source_kind: &'static str, key: String, value: String },
    /// ImageVCPULimitsRangeExceeded.
    #[error(
        "image vCPU limits {image_sockets}:{image_cores}:{image_threads} exceed flavor limits \
         {flavor_sockets}:{flavor_cores}:{flavor_threads} (sockets:cores:threads)"
    )]
    ImageLimitsAboveFlavor {
        image_sockets: u32,
        image_cores: u32,
        image_threads: u32,
        flavor_sockets: u32,
        flavor_cores: u32,
        flavor_threads: u32,
    },
    /// ImageVCPUTopologyRangeExceeded.
    #[error(
        "image topology {sockets}:{cores}:{threads} exceeds the limits \
         {max_sockets}:{max_cores}:{max_threads} (sockets:cores:threads)"
    )]
    ImagePreferenceAboveLimits {
        sockets: u32,
        cores: u32,
        threads: u32,
        max_sockets: u32,
        max_cores: u32,
        max_threads: u32,
    },
    /// ImageVCPULimitsRangeImpossible.
    #[error("cannot fit {vcpus} vCPUs within {sockets} sockets, {cores} cores, {threads} threads")]
    Impossible { vcpus: u64, sockets: u32, cores: u32, threads: u32 },
}

/// nova's default ceiling when nothing limits a dimension.
const UNLIMITED: u32 = 65536;

fn read(flavor: &Flavor, image: &Image, key: &str) -> Result<(u32, u32), TopologyError> {
    let parse = |source_kind: &'static str, k: String, v: Option<&String>| -> Result<u32, TopologyError> {
        match v {
            None => Ok(0),
            Some(v) => v.trim().parse::<u32>().map_err(|_| TopologyError::NotAnInteger {
                source_kind,
                key: k,
                value: v.clone(),
            }),
        }
    };
    let fkey = format!("hw:{key}");
    let ikey = format!("hw_{key}");
    let f = parse("flavor extra spec", fkey.clone(), flavor.extra_specs.get(&fkey))?;
    let i = parse("image property", ikey.clone(), image.properties.get(&ikey))?;
    Ok((f, i))
}

/// nova's `get_cpu_topology_constraints`: (preferred, maximum).
pub fn constraints(flavor: &Flavor, image: &Image) -> Result<(CpuTopology, CpuTopology), TopologyError> {
    let (f_max_s, i_max_s) = read(flavor, image, "cpu_max_sockets")?;
    let (f_max_c, i_max_c) = read(flavor, image, "cpu_max_cores")?;
    let (f_max_t, i_max_t) = read(flavor, image, "cpu_max_threads")?;
    if (f_max_s != 0 && i_max_s > f_max_s) || (f_max_c != 0 && i_max_c > f_max_c) || (f_max_t != 0 && i_max_t > f_max_t)
    {
        return Err(TopologyError::ImageLimitsAboveFlavor {
            image_sockets: i_max_s,
            image_cores: i_max_c,
            image_threads: i_max_t,
            flavor_sockets: f_max_s,
            flavor_cores: f_max_c,
            flavor_threads: f_max_t,
        });
    }
    let pick = |i: u32, f: u32| {
        if i != 0 {
            i
        } else if f != 0 {
            f
        } else {
            UNLIMITED
        }
    };
    let max = CpuTopology::new(pick(i_max_s, f_max_s), pick(i_max_c, f_max_c), pick(i_max_t, f_max_t));

    let (mut f_s, i_s) = read(flavor, image, "cpu_sockets")?;
    let (mut f_c, i_c) = read(flavor, image, "cpu_cores")?;
    let (mut f_t, i_t) = read(flavor, image, "cpu_threads")?;
    // The image's limits may have lowered the flavor's: then its preference is dropped.
    if f_s > max.sockets || f_c > max.cores || f_t > max.threads {
        (f_s, f_c, f_t) = (0, 0, 0);
    }
    if i_s > max.sockets || i_c > max.cores || i_t > max.threads {
        return Err(TopologyError::ImagePreferenceAboveLimits {
            sockets: i_s,
            cores: i_c,
            threads: i_t,
            max_sockets: max.sockets,
            max_cores: max.cores,
            max_threads: max.threads,
        });
    }
    // Any image preference replaces the whole of the flavor's.
    let preferred = if i_s == 0 && i_c == 0 && i_t == 0 {
        CpuTopology::new(f_s, f_c, f_t)
    } else {
        CpuTopology::new(i_s, i_c, i_t)
    };
    Ok((preferred, max))
}

/// nova's `_get_possible_cpu_topologies`: every exact factorisation within the maxima,
/// larger sockets * cores first, then more sockets, then more threads.
pub fn possible_topologies(
    vcpus: u64,
    max: CpuTopology,
    allow_threads: bool,
) -> Result<Vec<CpuTopology>, TopologyError> {
    let clamp = |m: u32| (m as u64).min(vcpus) as u32;
    let (max_s, max_c) = (clamp(max.sockets), clamp(max.cores));
    let max_t = if allow_threads { clamp(max.threads) } else { 1 };
    let mut out = Vec::new();
    for s in 1..=max_s {
        if !vcpus.is_multiple_of(s as u64) {
            continue;
        }
        for c in 1..=max_c {
            let sc = s as u64 * c as u64;
            if !vcpus.is_multiple_of(sc) {
                continue;
            }
            let t = vcpus / sc;
            if t >= 1 && t <= max_t as u64 {
                out.push(CpuTopology::new(s, c, t as u32));
            }
        }
    }
    out.sort_by_key(|t| std::cmp::Reverse((t.sockets as u64 * t.cores as u64, t.sockets, t.threads)));
    if out.is_empty() {
        return Err(TopologyError::Impossible { vcpus, sockets: max_s, cores: max_c, threads: max_t });
    }
    Ok(out)
}

/// nova's `_score_cpu_topology`: how many of the preferred (non-zero) values match.
pub fn score(topology: &CpuTopology, wanted: &CpuTopology) -> u32 {
    (wanted.sockets != 0 && topology.sockets == wanted.sockets) as u32
        + (wanted.cores != 0 && topology.cores == wanted.cores) as u32
        + (wanted.threads != 0 && topology.threads == wanted.threads) as u32
}

/// nova's `_get_desirable_cpu_topologies`: the possible topologies, best match first.
pub fn desirable_topologies(
    flavor: &Flavor,
    image: &Image,
    allow_threads: bool,
) -> Result<Vec<CpuTopology>, TopologyError> {
    let (preferred, max) = constraints(flavor, image)?;
    let mut possible = possible_topologies(flavor.vcpus, max, allow_threads)?;
    // Stable: within a score, the order above is kept.
    possible.sort_by_key(|t| std::cmp::Reverse(score(t, &preferred)));
    Ok(possible)
}

/// nova's `get_best_cpu_topology` for a hypervisor with CPU threads (libvirt/KVM).
pub fn best_cpu_topology(flavor: &Flavor, image: &Image) -> Result<CpuTopology, TopologyError> {
    best_cpu_topology_with(flavor, image, true)
}

/// `get_best_cpu_topology` with nova's `allow_threads` argument.
pub fn best_cpu_topology_with(
    flavor: &Flavor,
    image: &Image,
    allow_threads: bool,
) -> Result<CpuTopology, TopologyError> {
    Ok(desirable_topologies(flavor, image, allow_threads)?[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flavor(vcpus: u64, specs: &[(&str, &str)]) -> Flavor {
        Flavor {
            name: "f".into(),
            vcpus,
            ram_mb: 1024,
            disk_gb: 1,
            ephemeral_gb: 0,
            swap: 0,
            extra_specs: specs.iter().map(|(k, v)| (format!("hw:{k}"), v.to_string())).collect(),
        }
    }

    fn image(props: &[(&str, &str)]) -> Image {
        Image {
            name: "i".into(),
            size_mb: 1,
            disk_format: "qcow2".into(),
            properties: props.iter().map(|(k, v)| (format!("hw_{k}"), v.to_string())).collect(),
        }
    }

    /// One case: flavor vcpus and specs, image properties, expected best (s, c, t) or error.
    fn check(vcpus: u64, f: &[(&str, &str)], i: &[(&str, &str)], expect: Result<(u32, u32, u32), &str>) {
        let got = best_cpu_topology(&flavor(vcpus, f), &image(i));
        match (got, expect) {
            (Ok(t), Ok((s, c, th))) => {
                assert_eq!(t, CpuTopology::new(s, c, th), "vcpus {vcpus} flavor {f:?} image {i:?}");
                assert_eq!(t.vcpus(), vcpus);
            }
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{e} lacks `{needle}`"),
            (got, expect) => panic!("vcpus {vcpus} flavor {f:?} image {i:?}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn best_topology_table() {
        // Nothing set: N sockets x 1 core x 1 thread.
        check(1, &[], &[], Ok((1, 1, 1)));
        check(8, &[], &[], Ok((8, 1, 1)));
        // Limits: sockets capped, the rest goes to cores.
        check(8, &[("cpu_max_sockets", "2")], &[], Ok((2, 4, 1)));
        check(8, &[("cpu_max_sockets", "2"), ("cpu_max_cores", "2")], &[], Ok((2, 2, 2)));
        check(8, &[], &[("cpu_max_sockets", "4")], Ok((4, 2, 1)));
        // Preferences.
        check(8, &[("cpu_sockets", "2")], &[], Ok((2, 4, 1)));
        check(8, &[("cpu_sockets", "1"), ("cpu_threads", "2")], &[], Ok((1, 4, 2)));
        check(8, &[("cpu_cores", "4")], &[], Ok((2, 4, 1)));
        check(8, &[("cpu_threads", "2")], &[], Ok((4, 1, 2)));
        // An image preference replaces all of the flavor's.
        check(8, &[("cpu_sockets", "2")], &[("cpu_threads", "2")], Ok((4, 1, 2)));
        // A flavor preference above the (image-lowered) maxima is dropped.
        check(8, &[("cpu_sockets", "4")], &[("cpu_max_sockets", "2")], Ok((2, 4, 1)));
        // Image maxima above the flavor's: error.
        check(8, &[("cpu_max_sockets", "2")], &[("cpu_max_sockets", "4")], Err("exceed flavor limits"));
        // Image preference above the maxima: error.
        check(8, &[("cpu_max_sockets", "2")], &[("cpu_sockets", "4")], Err("exceeds the limits"));
        // Impossible counts: 7 vCPUs in at most 2 sockets x 2 cores x 1 thread.
        check(
            7,
            &[("cpu_max_sockets", "2"), ("cpu_max_cores", "2"), ("cpu_max_threads", "1")],
            &[],
            Err("cannot fit 7"),
        );
        check(
            3,
            &[("cpu_max_sockets", "2"), ("cpu_max_cores", "1"), ("cpu_max_threads", "1")],
            &[],
            Err("cannot fit 3"),
        );
        // Not an integer.
        check(4, &[("cpu_sockets", "two")], &[], Err("hw:cpu_sockets"));
    }

    #[test]
    fn possible_topologies_order_as_nova() {
        let all = possible_topologies(8, CpuTopology::new(8, 8, 2), true).unwrap();
        let got: Vec<(u32, u32, u32)> = all.iter().map(|t| (t.sockets, t.cores, t.threads)).collect();
        assert_eq!(got, vec![(8, 1, 1), (4, 2, 1), (2, 4, 1), (1, 8, 1), (4, 1, 2), (2, 2, 2), (1, 4, 2),]);
        let no_threads = possible_topologies(4, CpuTopology::new(65536, 65536, 65536), false).unwrap();
        assert!(no_threads.iter().all(|t| t.threads == 1));
    }
}
