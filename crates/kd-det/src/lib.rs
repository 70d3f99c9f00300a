//! kd-det: object detection for kd-rs.
//!
//! - [`data`]: the COCO `instances_*.json` reader, MMDet's resize/flip/normalise/pad pipeline,
//!   the seeded loader over detection images (box targets `[B, N, 6]`), box drawing, and the
//!   shape-scene generator that writes a stand-in as COCO JSON + PNG;
//! - [`boxes`]: box formats, IoU/GIoU, FCOS's (l, t, r, b) coding, anchor points, NMS and
//!   MMDet 2.x post-processing;
//! - [`models`]: FCOS (ResNet, FPN, the shared GroupNorm head) with its FPN levels as taps;
//! - [`two_stage`]: Faster R-CNN with FPN (anchors, RPN, RoIAlign, the shared-2fc box head,
//!   their assigners, samplers, losses and post-processing) and its task loss
//!   [`two_stage::FrcnnSupervised`];
//! - [`losses`]: focal, GIoU, centre-ness, FCOS target assignment and the combined
//!   [`losses::FcosLoss`];
//! - [`distill`]: the detection task loss [`DetSupervised`] (a `TaskLoss` for feature methods);
//! - [`metrics`]: COCO box evaluation as pycocotools computes it, and the [`BoxAp`] evaluator.

pub mod boxes;
pub mod data;
pub mod distill;
pub mod losses;
pub mod metrics;
pub mod models;
pub mod two_stage;

pub use distill::DetSupervised;
pub use metrics::BoxAp;
