//! The image service (glance's part of a boot): image records with disk_format,
//! container_format, size, checksum and properties, stored as files under one directory;
//! upload and download with checksum verification.
//!
//! Checksums are SHA-256 (glance's `os_hash_algo`/`os_hash_value` multihash; the legacy MD5
//! `checksum` is not computed). An upload is checked against its declared format the way
//! glance's format inspector does: a file that claims `raw` but carries a qcow2 header, or
//! claims `qcow2` and does not parse, is refused.

use stackbed_core::sync::guard;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::disk::DiskFormat;
use crate::qcow2::{Header, Qcow2Error};

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("no image {0}")]
    NotFound(String),
    #[error("image {id}: checksum mismatch: expected sha256 {expected}, got {actual} (the stored copy is corrupt)")]
    ChecksumMismatch { id: String, expected: String, actual: String },
    #[error("image {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("image {name}: declared disk_format {declared} but the content is not: {source}")]
    FormatMismatch { name: String, declared: &'static str, source: Qcow2Error },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io { what, path: path.display().to_string(), source }
}

/// One image as glance's v2 API shows it (the boot-relevant fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub name: String,
    pub disk_format: DiskFormat,
    /// `bare` (no container), the only one nova boots from here.
    pub container_format: String,
    /// Bytes stored.
    pub size: u64,
    /// The disk's virtual size (qcow2: from the header; raw: the size).
    pub virtual_size: u64,
    pub os_hash_algo: String,
    pub os_hash_value: String,
    /// hypervisor_type, hw_architecture, hw_cpu_max_sockets/cores/threads, ...
    pub properties: BTreeMap<String, String>,
}

impl ImageRecord {
    /// The image as the scheduler sees it (ImageProperties filter, CPU topology).
    pub fn to_model(&self) -> stackbed_core::model::Image {
        stackbed_core::model::Image {
            name: self.name.clone(),
            size_mb: self.size.div_ceil(1 << 20),
            disk_format: self.disk_format.name().to_string(),
            properties: self.properties.clone(),
        }
    }
}

/// What an upload declares.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub name: String,
    pub disk_format: DiskFormat,
    pub container_format: String,
    pub properties: BTreeMap<String, String>,
}

/// Properties whose values must be positive integers (nova parses them as such).
const INTEGER_PROPERTIES: [&str; 6] = [
    "hw_cpu_max_sockets",
    "hw_cpu_max_cores",
    "hw_cpu_max_threads",
    "hw_cpu_sockets",
    "hw_cpu_cores",
    "hw_cpu_threads",
];

fn validate(new: &NewImage) -> Result<(), ImageError> {
    let invalid = |reason: String| Err(ImageError::Invalid { name: new.name.clone(), reason });
    if new.name.is_empty() {
        return invalid("the name is empty".into());
    }
    if new.container_format != "bare" {
        return invalid(format!("container_format `{}` (only `bare` is supported)", new.container_format));
    }
    for key in INTEGER_PROPERTIES {
        if let Some(v) = new.properties.get(key) {
            if !v.parse::<u32>().is_ok_and(|n| n > 0) {
                return invalid(format!("property {key} = `{v}` is not a positive integer"));
            }
        }
    }
    Ok(())
}

/// Glance with a file store: `<root>/<id>` holds the bytes, `<root>/<id>.json` the record.
pub struct ImageService {
    root: PathBuf,
    records: Mutex<BTreeMap<String, ImageRecord>>,
    next_id: AtomicU64,
    downloads: AtomicU64,
}

/// Streams `reader` into `out`, hashing; returns (bytes, hex sha256).
fn copy_hashing(reader: &mut dyn Read, out: &mut dyn Write, path: &Path) -> Result<(u64, String), ImageError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("cannot read the image data for", path)(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io("cannot write", path))?;
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut f = File::open(path).map_err(io("cannot open", path))?;
    let (_, sum) = copy_hashing(&mut f, &mut std::io::sink(), path)?;
    Ok(sum)
}

impl ImageService {
    /// Opens (or creates) the store at `root`, loading existing records.
    pub fn open(root: &Path) -> Result<ImageService, ImageError> {
        std::fs::create_dir_all(root).map_err(io("cannot create", root))?;
        let mut records = BTreeMap::new();
        for entry in std::fs::read_dir(root).map_err(io("cannot list", root))?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).map_err(io("cannot read", &path))?;
                let rec: ImageRecord = serde_json::from_str(&text).map_err(|e| ImageError::Invalid {
                    name: path.display().to_string(),
                    reason: format!("unreadable record: {e}"),
                })?;
                records.insert(rec.id.clone(), rec);
            }
        }
        let next = records.len() as u64 + 1;
        Ok(ImageService {
            root: root.to_path_buf(),
            records: Mutex::new(records),
            next_id: AtomicU64::new(next),
            downloads: AtomicU64::new(0),
        })
    }

    fn data_path(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Stores an image: streams the data, computes size and checksum, checks the content
    /// against the declared format, then publishes the record (status active).
    pub fn upload(&self, new: NewImage, data: &mut dyn Read) -> Result<ImageRecord, ImageError> {
        validate(&new)?;
        let id = loop {
            let n = self.next_id.fetch_add(1, Ordering::Relaxed);
            let id = format!("img-{n:08}");
            if !self.data_path(&id).exists() {
                break id;
            }
        };
        let partial = self.root.join(format!("{id}.partial"));
        let result = (|| {
            let mut out = File::create(&partial).map_err(io("cannot create", &partial))?;
            let (size, sum) = copy_hashing(data, &mut out, &partial)?;
            out.sync_all().map_err(io("cannot sync", &partial))?;
            let virtual_size = match new.disk_format {
                DiskFormat::Qcow2 => {
                    let h = Header::read(&partial).map_err(|source| ImageError::FormatMismatch {
                        name: new.name.clone(),
                        declared: "qcow2",
                        source,
                    })?;
                    if h.backing_file.is_some() {
                        return Err(ImageError::Invalid {
                            name: new.name.clone(),
                            reason: "a qcow2 image with a backing file cannot be uploaded".into(),
                        });
                    }
                    h.size
                }
                DiskFormat::Raw => {
                    if crate::disk::detect_format(&partial).ok() == Some(DiskFormat::Qcow2) {
                        return Err(ImageError::Invalid {
                            name: new.name.clone(),
                            reason: "declared raw but the content is a qcow2 image".into(),
                        });
                    }
                    size
                }
            };
            Ok(ImageRecord {
                id: id.clone(),
                name: new.name.clone(),
                disk_format: new.disk_format,
                container_format: new.container_format.clone(),
                size,
                virtual_size,
                os_hash_algo: "sha256".into(),
                os_hash_value: sum,
                properties: new.properties.clone(),
            })
        })();
        let rec = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        let data_path = self.data_path(&id);
        std::fs::rename(&partial, &data_path).map_err(io("cannot publish", &data_path))?;
        let json_path = self.root.join(format!("{id}.json"));
        let text = serde_json::to_string_pretty(&rec).map_err(|e| ImageError::Invalid {
            name: rec.name.clone(),
            reason: format!("cannot encode the record: {e}"),
        })?;
        std::fs::write(&json_path, text).map_err(io("cannot write", &json_path))?;
        guard(&self.records).insert(id, rec.clone());
        Ok(rec)
    }

    pub fn get(&self, id: &str) -> Result<ImageRecord, ImageError> {
        guard(&self.records).get(id).cloned().ok_or_else(|| ImageError::NotFound(id.into()))
    }

    pub fn find_by_name(&self, name: &str) -> Option<ImageRecord> {
        guard(&self.records).values().find(|r| r.name == name).cloned()
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        guard(&self.records).values().cloned().collect()
    }

    /// Downloads the image to `dest`, verifying the checksum as the bytes stream (nova's
    /// `IMAGE_API.download` with verification). On a mismatch `dest` is removed.
    pub fn download(&self, id: &str, dest: &Path) -> Result<ImageRecord, ImageError> {
        let rec = self.get(id)?;
        self.downloads.fetch_add(1, Ordering::Relaxed);
        let src_path = self.data_path(id);
        let mut src = File::open(&src_path).map_err(io("cannot open", &src_path))?;
        let mut out = File::create(dest).map_err(io("cannot create", dest))?;
        let (size, sum) = copy_hashing(&mut src, &mut out, dest)?;
        if sum != rec.os_hash_value || size != rec.size {
            drop(out);
            let _ = std::fs::remove_file(dest);
            return Err(ImageError::ChecksumMismatch { id: id.into(), expected: rec.os_hash_value, actual: sum });
        }
        Ok(rec)
    }

    /// Downloads served so far (tests check that a cache fetches once).
    pub fn download_count(&self) -> u64 {
        self.downloads.load(Ordering::Relaxed)
    }
}
