//! kd-classify: image classification for kd-rs.
//!
//! - [`data`]: IDX (MNIST, Fashion-MNIST), CIFAR-10/100 binary and ImageFolder readers, the
//!   per-sample augmentation (pad-crop, flip, normalisation), the classification loader over
//!   kd-core's seeded loader, and the Fashion-MNIST subset embedded in the crate, so a table
//!   runs with no download;
//! - [`models`]: the CIFAR distillation zoo (ResNets, WRNs, LeNet-5 pairs) with named taps;
//! - [`baselines`]: no KD, Hinton KD (and its label-free form for unlabelled data), FitNets;
//! - [`metrics`]: top-1 accuracy, the classification [`kd_core::train::Evaluator`].

pub mod baselines;
pub mod data;
pub mod dkd;
pub mod metrics;
pub mod models;

pub use baselines::{FitNets, FitNetsConfig, HintonKd, KdConfig, LabelFreeKd, NoKd};
pub use dkd::{Dkd, DkdConfig};
pub use metrics::Top1;
