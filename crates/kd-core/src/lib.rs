//! kd-core: the shared foundation of kd-rs.
//!
//! Every method crate builds on four things defined here, and on nothing else:
//! - [`models::Model`]: one forward pass returns the logits *and* the named stage features
//!   (taps), so a distiller never runs a network twice;
//! - [`distill::Distiller`]: the one extension point. A method turns a batch plus the student's
//!   and the frozen teacher's outputs into named loss terms, owns its auxiliary modules, and may
//!   hook the start of each epoch (to replace the sample set or re-weight samples);
//! - [`data`]: datasets that yield `(x, y, index)` and a seeded, parallel batch loader;
//! - [`train::Trainer`]: optimisers, schedules, atomic checkpoints, resume and a NaN guard.
//!
//! The crate knows no particular method: whatever two methods need becomes a general mechanism.

pub mod boxes;
pub mod config;
pub mod data;
pub mod device;
pub mod distill;
pub mod error;
pub mod losses;
pub mod metrics;
pub mod models;
pub mod rng;
pub mod shape;
pub mod train;

pub use error::{KdError, Result};

/// The README's code examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// Re-export of the tch version this crate is built against, so users need not pin it twice.
pub use tch;
