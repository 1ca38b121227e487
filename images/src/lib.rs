//! stackbed-images: images for the real build.
//!
//! - [`qcow2`]: hand-written qcow2 header and snapshot-table parsing (what imago does not
//!   expose), fuzzed by proptests.
//! - [`disk`]: qcow2 creation, overlays, reads and writes through backing chains, external
//!   snapshots, all through imago (`sync` feature).
//! - [`convert`]: raw to qcow2 conversion with hole and zero detection (hand-written; a plain
//!   loop over imago is kept as [`convert::convert_with_imago`] for the benchmark).
//!
//! The crate is empty in simulator builds (`--cfg madsim`); the simulator's image costs live
//! in `stackbed_core::image_model`.
#![cfg(not(madsim))]

pub mod convert;
pub mod disk;
pub mod qcow2;
pub mod qemu;
