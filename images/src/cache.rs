//! The compute host's image cache, as nova's libvirt driver keeps it in
//! `<instances_path>/_base`: each image is downloaded once per host (concurrent boots of the
//! same image wait on that one download), optionally converted to raw
//! (`force_raw_images`), and every instance gets a qcow2 overlay backed by the cached base.
//! Bases no instance uses are removed once they have been unused for a given age (nova's
//! image cache manager, `remove_unused_original_minimum_age_seconds`).
//!
//! Blocking: call from a blocking thread (`spawn_blocking` in async code).

use stackbed_core::sync::guard;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::convert::{convert_to_raw, Durability};
use crate::disk::{self, DiskError, DiskFormat};
use crate::glance::{ImageError, ImageService};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("the download of image {0} failed in another boot: {1}")]
    FailedElsewhere(String, String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |source| CacheError::Io { what, path: path.display().to_string(), source }
}

/// How a fetch was served, for the spawn's phase timings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fetch {
    pub base: PathBuf,
    /// The base was already there.
    pub hit: bool,
    /// Another boot was downloading it; this one waited.
    pub waited: bool,
    pub download_s: f64,
    pub convert_s: f64,
    pub wait_s: f64,
}

#[derive(Default)]
enum Slot {
    #[default]
    Downloading,
    Done(Result<(), String>),
}

type Flight = Arc<(Mutex<Slot>, Condvar)>;

/// Configuration of a host's cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// `<instances_path>/_base`.
    pub base_dir: PathBuf,
    /// nova's `force_raw_images` (default true).
    pub force_raw_images: bool,
}

pub struct ImageCache {
    config: CacheConfig,
    in_flight: Mutex<BTreeMap<String, Flight>>,
}

impl ImageCache {
    pub fn new(config: CacheConfig) -> Result<ImageCache, CacheError> {
        std::fs::create_dir_all(&config.base_dir).map_err(io("cannot create", &config.base_dir))?;
        Ok(ImageCache { config, in_flight: Mutex::new(BTreeMap::new()) })
    }

    /// The cached base's file for an image id. nova names it by the SHA-1 of the id; the id
    /// itself is a safe file name here (checked).
    pub fn base_path(&self, image_id: &str) -> PathBuf {
        let safe: String =
            image_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        self.config.base_dir.join(safe)
    }

    /// Makes sure the image is in the cache and returns its base (single flight per image).
    pub fn fetch(&self, glance: &ImageService, image_id: &str) -> Result<Fetch, CacheError> {
        let base = self.base_path(image_id);
        let t0 = Instant::now();
        let (flight, leader) = {
            let mut map = guard(&self.in_flight);
            if base.exists() && !map.contains_key(image_id) {
                touch(&base);
                return Ok(Fetch { base, hit: true, ..Fetch::default() });
            }
            match map.get(image_id) {
                Some(f) => (f.clone(), false),
                None => {
                    let f: Flight = Arc::default();
                    map.insert(image_id.to_string(), f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            let (lock, cv) = &*flight;
            let mut slot = guard(lock);
            while matches!(*slot, Slot::Downloading) {
                slot = cv.wait(slot).expect("the downloading thread panicked holding the slot");
            }
            return match &*slot {
                Slot::Done(Ok(())) => {
                    Ok(Fetch { base, hit: false, waited: true, wait_s: t0.elapsed().as_secs_f64(), ..Fetch::default() })
                }
                Slot::Done(Err(why)) => Err(CacheError::FailedElsewhere(image_id.into(), why.clone())),
                Slot::Downloading => unreachable!("the loop above waits until the download is done"),
            };
        }
        let result = self.download(glance, image_id, &base);
        {
            let (lock, cv) = &*flight;
            *guard(lock) = Slot::Done(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            cv.notify_all();
        }
        guard(&self.in_flight).remove(image_id);
        result
    }

    fn download(&self, glance: &ImageService, image_id: &str, base: &Path) -> Result<Fetch, CacheError> {
        let part = base.with_extension("part");
        let t = Instant::now();
        let rec = glance.download(image_id, &part)?;
        let download_s = t.elapsed().as_secs_f64();
        let mut convert_s = 0.0;
        if self.config.force_raw_images && rec.disk_format == DiskFormat::Qcow2 {
            let t = Instant::now();
            let raw = base.with_extension("converted");
            let r = convert_to_raw(&part, &raw, Durability::Sync);
            let _ = std::fs::remove_file(&part);
            r?;
            std::fs::rename(&raw, base).map_err(io("cannot publish", base))?;
            convert_s = t.elapsed().as_secs_f64();
        } else {
            std::fs::rename(&part, base).map_err(io("cannot publish", base))?;
        }
        Ok(Fetch { base: base.to_path_buf(), hit: false, waited: false, download_s, convert_s, wait_s: 0.0 })
    }

    /// The instance's root disk: `<instance_dir>/disk`, a qcow2 overlay backed by the base
    /// (absolute path, as nova writes it), `size` bytes when given (a flavor's root_gb may
    /// exceed the image; it never shrinks below the base).
    pub fn create_instance_disk(
        &self,
        base: &Path,
        instance_dir: &Path,
        size: Option<u64>,
    ) -> Result<PathBuf, CacheError> {
        std::fs::create_dir_all(instance_dir).map_err(io("cannot create", instance_dir))?;
        let disk = instance_dir.join("disk");
        let base_size = disk::virtual_size(base)?;
        let size = size.map_or(base_size, |s| s.max(base_size));
        disk::create_overlay_fast(&disk, base, Some(size))?;
        touch(base);
        Ok(disk)
    }

    /// Removes bases that no instance uses (`in_use`: image ids) and that were last used
    /// `max_age` or longer before `now`. Returns the removed files.
    pub fn cleanup(
        &self,
        in_use: &BTreeSet<String>,
        max_age: Duration,
        now: SystemTime,
    ) -> Result<Vec<PathBuf>, CacheError> {
        let keep: BTreeSet<PathBuf> = in_use.iter().map(|id| self.base_path(id)).collect();
        let busy: BTreeSet<PathBuf> = guard(&self.in_flight).keys().map(|id| self.base_path(id)).collect();
        let mut removed = Vec::new();
        let dir = &self.config.base_dir;
        for entry in std::fs::read_dir(dir).map_err(io("cannot list", dir))?.flatten() {
            let path = entry.path();
            if keep.contains(&path) || busy.contains(&path) || path.extension().is_some() {
                continue;
            }
            let modified = entry.metadata().and_then(|m| m.modified()).map_err(io("cannot stat", &path))?;
            if now.duration_since(modified).unwrap_or_default() >= max_age {
                std::fs::remove_file(&path).map_err(io("cannot remove", &path))?;
                removed.push(path);
            }
        }
        removed.sort();
        Ok(removed)
    }
}

/// Marks a base as used now (its mtime is the cache manager's "last used").
fn touch(path: &Path) {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}
