//! kd-core: the framework of kd-rs.
//!
//! Every task crate and every method crate builds on what is defined here, and on nothing else:
//! - [`models::Model`]: one forward pass returns the logits *and* the named stage features
//!   (taps), so a distiller never runs a network twice;
//! - [`distill::Distiller`]: the one extension point. A method turns a batch plus the student's
//!   and the frozen teacher's outputs into named loss terms, owns its auxiliary modules, and may
//!   hook the start of each epoch (to replace the sample set or re-weight samples);
//!   [`distill::TaskLoss`] is how a task hands its supervised loss to a task-agnostic method;
//! - [`data`]: batches with typed targets and the one seeded, parallel [`data::Loader`], generic
//!   over a task's sample source and collate step;
//! - [`train`]: optimisers, schedules, atomic checkpoints, resume, the NaN guard, the
//!   [`train::Evaluator`] every test metric goes through, and [`train::fit`], which owns a run's
//!   lifecycle (store, training, export, artifacts, report last);
//! - [`losses`]: the task-independent kernels (KD, KL, CWD, Gaussian KL, contrastive, hint,
//!   reductions) with their gradient checks.
//!
//! The crate knows no task's data format and no method: whatever two methods or two tasks need
//! becomes a general mechanism here. It pulls in no image or dataset dependency.

pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod distill;
pub mod error;
pub mod io;
pub mod losses;
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
