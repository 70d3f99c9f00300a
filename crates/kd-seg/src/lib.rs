//! kd-seg: semantic segmentation for kd-rs.
//!
//! - [`data`]: the Cityscapes reader and label table, MMSeg's training pipeline, the seeded
//!   loader over segmentation samples, result pictures, and the street-scene generator that
//!   writes a stand-in in the Cityscapes layout;
//! - [`models`]: PSPNet / DeepLabV3 (and the auxiliary FCN head) on dilated ResNet-V1c, whole
//!   image and sliding-window inference;
//! - [`losses`]: cross-entropy at label resolution with ignored pixels;
//! - [`distill`]: the segmentation task loss [`SegSupervised`] (a `TaskLoss` for feature
//!   methods such as GDD) and CWD on the logits;
//! - [`metrics`]: the confusion matrix, the [`MeanIou`] evaluator and the Cityscapes
//!   evaluation of prediction folders.

pub mod data;
pub mod distill;
pub mod losses;
pub mod metrics;
pub mod models;

pub use distill::{Cwd, CwdConfig, SegSupervised};
pub use metrics::MeanIou;
