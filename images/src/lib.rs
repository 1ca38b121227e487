//! stackbed-images: images for the real build.
//!
//! - [`qcow2`]: hand-written qcow2 header and snapshot-table parsing (what imago does not
//!   expose), fuzzed by proptests.
//! - [`disk`]: qcow2 creation, overlays, reads and writes through backing chains, external
//!   snapshots, all through imago (`sync` feature).
//! - [`convert`]: raw to qcow2 conversion with hole and zero detection (hand-written; a plain
//!   loop over imago is kept as [`convert::convert_with_imago`] for the benchmark), and any
//!   image to sparse raw (`force_raw_images`).
//! - [`glance`]: the image service: records, upload and download with SHA-256 verification.
//! - [`cache`]: the compute host's `_base` cache: one download per image and host, optional
//!   conversion to raw, an overlay per instance, removal of unused bases after an age.
//! - [`uring`]: reads of a disk at a queue depth: guest ranges mapped to host ranges through
//!   the format layer, host reads through io_uring (threads where io_uring is unavailable).
//! - [`qemu`]: QEMU's tools as the reference (`qemu-img check`/`compare`/`info`, `qemu-io`).
//!
//! The crate is empty in simulator builds (`--cfg madsim`); the simulator's image costs live
//! in `stackbed_core::image_model`.
#![cfg(not(madsim))]

pub mod cache;
pub mod configdrive;
pub mod convert;
pub mod disk;
pub mod glance;
pub mod qcow2;
pub mod qemu;
pub mod snapshot;
pub mod uring;
