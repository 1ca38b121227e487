//! The simulated image path's cost model (pure): what a compute host pays to get an image
//! from glance into its `_base` cache, to convert it, and to give an instance its disk.
//!
//! Off by default (`enabled = false`): the host model then draws `model.image_fetch` as
//! before, so existing scenarios keep their digests. With `[model.images] enabled = true` a
//! cache miss costs
//!
//! ```text
//! request_latency_s + size / download_mb_per_s      (glance download)
//!                   + size / verify_mb_per_s        (checksum verification)
//!                   + size / convert_mb_per_s       (qcow2 to raw, when force_raw_images
//!                                                     and the image is qcow2)
//! ```
//!
//! a hit costs `cache_hit_s`, and every instance's root disk (a qcow2 overlay backed by the
//! cached base) costs `overlay_create_s`. Each cost is multiplied by a log-normal factor
//! with median 1 and `jitter_sigma`, drawn from the host's seeded RNG.
//!
//! # Calibration (docs/calibration.md has the runs)
//!
//! The defaults are constants (the simulator never reads a bench file), set from two runs of
//! `cargo real bench images` on 2026-11-26 (2 x AMD EPYC vCPUs, Linux 6.18, ext4 on virtio,
//! QEMU 7.2.22, other builds loading the machine), each the slower end of the two, since a
//! loaded host is the interesting case. The `calibration` array of the bench's JSON names
//! the same figures:
//! - `download_mb_per_s` = 1600: glance's download into `_base` (`ImageCache::fetch`, the
//!   store's copy evicted from the page cache), 0.47-0.50 s for 268 MB including the SHA-256
//!   it computes on the way, minus the hashing time: 1612-1872 MB/s. This is glance's
//!   *local file store*, with no network: a scenario modelling glance across a network sets
//!   its own (`scenarios/images-*.toml` use 117 MB/s, 1 GbE line rate);
//! - `request_latency_s` = 0.00015: a 4 KiB image through the same path (open, create,
//!   hash, rename), median 74-159 us (again local: a glance API round trip costs more);
//! - `verify_mb_per_s` = 800: SHA-256 of the 256 MiB image on one core, 803-826 MB/s;
//! - `convert_mb_per_s` = 3600: `force_raw_images`, qcow2 to raw into `_base` (synced), of a
//!   fully allocated 256 MiB qcow2: 3665-4025 MB of virtual disk per second (qemu-img
//!   convert -O raw: 3042-3255);
//! - `overlay_create_s` = 0.00015: `ImageCache::create_instance_disk`, 125-156 us per
//!   instance disk (`qemu-img create`, what nova runs: 23-28 ms);
//! - `cache_hit_s` = 0.00001: `ImageCache::fetch` of a cached image, 7-10 us.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Deserialised through [`ImageModel::validate`]: a bad value is a scenario error with its
/// line, never a panic in the host model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "Unchecked")]
pub struct ImageModel {
    /// Use this model instead of `model.image_fetch`.
    #[serde(default)]
    pub enabled: bool,
    /// Every host starts with every image already in its `_base` cache.
    #[serde(default)]
    pub prewarmed: bool,
    #[serde(default = "d_download")]
    pub download_mb_per_s: f64,
    #[serde(default = "d_latency")]
    pub request_latency_s: f64,
    #[serde(default = "d_verify")]
    pub verify_mb_per_s: f64,
    /// nova's `force_raw_images` (default true): qcow2 images are converted to raw in `_base`.
    #[serde(default = "yes")]
    pub force_raw_images: bool,
    #[serde(default = "d_convert")]
    pub convert_mb_per_s: f64,
    #[serde(default = "d_overlay")]
    pub overlay_create_s: f64,
    #[serde(default = "d_hit")]
    pub cache_hit_s: f64,
    /// Bases no instance uses are removed after this long (nova's
    /// `remove_unused_original_minimum_age_seconds`, 86400 s); the next boot misses.
    #[serde(default = "d_unused_age")]
    pub unused_base_max_age_s: f64,
    #[serde(default = "d_sigma")]
    pub jitter_sigma: f64,
}

/// [`ImageModel`] before validation (same fields, same defaults).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Unchecked {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    prewarmed: bool,
    #[serde(default = "d_download")]
    download_mb_per_s: f64,
    #[serde(default = "d_latency")]
    request_latency_s: f64,
    #[serde(default = "d_verify")]
    verify_mb_per_s: f64,
    #[serde(default = "yes")]
    force_raw_images: bool,
    #[serde(default = "d_convert")]
    convert_mb_per_s: f64,
    #[serde(default = "d_overlay")]
    overlay_create_s: f64,
    #[serde(default = "d_hit")]
    cache_hit_s: f64,
    #[serde(default = "d_unused_age")]
    unused_base_max_age_s: f64,
    #[serde(default = "d_sigma")]
    jitter_sigma: f64,
}

impl TryFrom<Unchecked> for ImageModel {
    type Error = String;
    fn try_from(u: Unchecked) -> Result<Self, String> {
        let m = ImageModel {
            enabled: u.enabled,
            prewarmed: u.prewarmed,
            download_mb_per_s: u.download_mb_per_s,
            request_latency_s: u.request_latency_s,
            verify_mb_per_s: u.verify_mb_per_s,
            force_raw_images: u.force_raw_images,
            convert_mb_per_s: u.convert_mb_per_s,
            overlay_create_s: u.overlay_create_s,
            cache_hit_s: u.cache_hit_s,
            unused_base_max_age_s: u.unused_base_max_age_s,
            jitter_sigma: u.jitter_sigma,
        };
        m.validate()?;
        Ok(m)
    }
}

fn d_download() -> f64 {
    1600.0
}
fn d_latency() -> f64 {
    0.00015
}
fn d_verify() -> f64 {
    800.0
}
fn yes() -> bool {
    true
}
fn d_convert() -> f64 {
    3600.0
}
fn d_overlay() -> f64 {
    0.00015
}
fn d_hit() -> f64 {
    0.00001
}
fn d_unused_age() -> f64 {
    86_400.0
}
fn d_sigma() -> f64 {
    0.1
}

impl Default for ImageModel {
    fn default() -> Self {
        ImageModel {
            enabled: false,
            prewarmed: false,
            download_mb_per_s: d_download(),
            request_latency_s: d_latency(),
            verify_mb_per_s: d_verify(),
            force_raw_images: true,
            convert_mb_per_s: d_convert(),
            overlay_create_s: d_overlay(),
            cache_hit_s: d_hit(),
            unused_base_max_age_s: d_unused_age(),
            jitter_sigma: d_sigma(),
        }
    }
}

/// The parts of a cache miss, in seconds (before jitter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MissCost {
    pub download_s: f64,
    pub verify_s: f64,
    pub convert_s: f64,
}

impl MissCost {
    pub fn total_s(&self) -> f64 {
        self.download_s + self.verify_s + self.convert_s
    }
}

/// What a lookup in a host's `_base` cache finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheState {
    /// Never fetched, or removed as unused.
    Miss,
    Hit,
}

/// One host's `_base` cache bookkeeping (pure: time comes in as milliseconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BaseEntry {
    /// Instances on this host using the base.
    pub users: u64,
    /// When the last user went away (ms), if none is left.
    pub unused_since_ms: Option<u64>,
}

impl BaseEntry {
    /// Whether nova's image cache manager would have removed this base by `now_ms`.
    pub fn expired(&self, now_ms: u64, max_age_s: f64) -> bool {
        self.users == 0 && self.unused_since_ms.is_some_and(|t| now_ms.saturating_sub(t) as f64 / 1000.0 >= max_age_s)
    }
}

impl ImageModel {
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("download_mb_per_s", self.download_mb_per_s),
            ("verify_mb_per_s", self.verify_mb_per_s),
            ("convert_mb_per_s", self.convert_mb_per_s),
        ];
        for (name, v) in rates {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a positive number, got {v}"));
            }
        }
        let times = [
            ("request_latency_s", self.request_latency_s),
            ("overlay_create_s", self.overlay_create_s),
            ("cache_hit_s", self.cache_hit_s),
            ("unused_base_max_age_s", self.unused_base_max_age_s),
            ("jitter_sigma", self.jitter_sigma),
        ];
        for (name, v) in times {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a non-negative number, got {v}"));
            }
        }
        Ok(())
    }

    /// The cost of fetching an image of `size_mb` in `disk_format` into the cache.
    pub fn miss_cost(&self, size_mb: u64, disk_format: &str) -> MissCost {
        let mb = size_mb as f64;
        MissCost {
            download_s: self.request_latency_s + mb / self.download_mb_per_s,
            verify_s: mb / self.verify_mb_per_s,
            convert_s: if self.force_raw_images && disk_format == "qcow2" { mb / self.convert_mb_per_s } else { 0.0 },
        }
    }

    /// A log-normal factor with median 1.
    pub fn jitter<R: Rng>(&self, rng: &mut R) -> f64 {
        if self.jitter_sigma == 0.0 {
            return 1.0;
        }
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen_range(0.0..1.0);
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (self.jitter_sigma * z).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_miss_costs_download_verify_and_conversion() {
        let m = ImageModel {
            download_mb_per_s: 117.0,
            request_latency_s: 0.05,
            verify_mb_per_s: 1000.0,
            convert_mb_per_s: 3500.0,
            ..ImageModel::default()
        };
        let c = m.miss_cost(1170, "qcow2");
        assert!((c.download_s - 10.05).abs() < 1e-9, "{c:?}");
        assert!((c.verify_s - 1.17).abs() < 1e-9);
        assert!((c.convert_s - 1170.0 / 3500.0).abs() < 1e-9);
        assert_eq!(m.miss_cost(1170, "raw").convert_s, 0.0);
        let no_force = ImageModel { force_raw_images: false, ..m.clone() };
        assert_eq!(no_force.miss_cost(1170, "qcow2").convert_s, 0.0);
    }

    /// The compiled-in defaults are the calibration docs/calibration.md records.
    #[test]
    fn defaults_are_the_measured_calibration() {
        let d = ImageModel::default();
        let want = [
            (d.download_mb_per_s, 1600.0),
            (d.request_latency_s, 0.00015),
            (d.verify_mb_per_s, 800.0),
            (d.convert_mb_per_s, 3600.0),
            (d.overlay_create_s, 0.00015),
            (d.cache_hit_s, 0.00001),
        ];
        for (got, want) in want {
            assert_eq!(got, want);
        }
        // A 600 MB qcow2 miss on this machine: about 1.3 s, dominated by the hashing.
        let c = d.miss_cost(600, "qcow2");
        assert!((c.total_s() - (0.00015 + 600.0 / 1600.0 + 600.0 / 800.0 + 600.0 / 3600.0)).abs() < 1e-9);
        assert!(!d.enabled && !d.prewarmed && d.force_raw_images);
    }

    #[test]
    fn unused_bases_expire_only_without_users() {
        let e = BaseEntry { users: 0, unused_since_ms: Some(1000) };
        assert!(!e.expired(1000 + 86_399_000, 86_400.0));
        assert!(e.expired(1000 + 86_400_000, 86_400.0));
        let used = BaseEntry { users: 1, unused_since_ms: Some(0) };
        assert!(!used.expired(u64::MAX, 1.0));
        assert!(!BaseEntry::default().expired(u64::MAX, 1.0));
    }

    #[test]
    fn validation_and_jitter() {
        assert!(ImageModel { download_mb_per_s: 0.0, ..ImageModel::default() }.validate().is_err());
        assert!(ImageModel { jitter_sigma: f64::NAN, ..ImageModel::default() }.validate().is_err());
        assert!(ImageModel::default().validate().is_ok());
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
        let m = ImageModel::default();
        let mut v: Vec<f64> = (0..10001).map(|_| m.jitter(&mut rng)).collect();
        v.sort_by(f64::total_cmp);
        assert!((v[5000] - 1.0).abs() < 0.01, "median {}", v[5000]);
        let flat = ImageModel { jitter_sigma: 0.0, ..m };
        assert_eq!(flat.jitter(&mut rng), 1.0);
    }
}
