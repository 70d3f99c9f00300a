//! Evaluation metrics for dense prediction and detection.
//!
//! - [`ConfusionMatrix`]: per-class IoU, mean IoU and pixel accuracy over training ids, updated
//!   from tensors on any device (one host copy per update) or from host arrays;
//! - [`eval_cityscapes_dirs`]: evaluates a folder of predictions saved in the Cityscapes format
//!   against `gtFine` label-id maps the way the official pixel-level evaluation script does;
//! - [`coco`]: COCO box AP/AR from a ground-truth file and a results file, as pycocotools.

mod cityscapes;
pub mod coco;
mod confusion;

pub use cityscapes::{
    eval_cityscapes_dirs, prediction_to_label_ids, save_cityscapes_prediction, CsClassScore, EvalReport,
};
pub use confusion::{ClassIou, ConfusionMatrix, SegReport};
