//! COCO box evaluation, and [`BoxAp`], the detection [`kd_core::train::Evaluator`].
//!
//! The evaluation (AP@[.50:.95], AP50, AP75, AP and AR by object size) that gives the
//! numbers pycocotools' `COCOeval(..., iouType="bbox")` gives.
//!
//! Detection papers report pycocotools' numbers, and its rules decide results in ways a
//! textbook AP does not: crowd regions absorb detections instead of punishing them, an
//! unmatched detection outside an area range is dropped from that range, the precision
//! envelope is sampled at 101 fixed recall points found by a left binary search, ties in score
//! keep file order, and a category without ground truth is left out of the mean rather than
//! scored 0. Rewriting the rules from a paper description drifts by a few tenths of a point, so
//! this module follows the reference step by step (see `eval.rs`).
//!
//! Checked against pycocotools 2.0.11 (NumPy 2.4.6) with `scripts/check_coco_eval.sh` on 12
//! randomized cases (boxes of every size, crowd regions, empty images, non-contiguous category
//! ids, score ties, annotation id 0, detections of unknown categories, more than 100
//! detections per image): the largest difference over the twelve numbers and every
//! per-category AP is 1.0e-14; see `docs/coco-eval.md`.

mod box_ap;
mod eval;
mod gt;
mod results;
mod stats;
#[cfg(test)]
mod tests;

pub use box_ap::{detect, evaluate, mean_stats, BoxAp};
pub use eval::evaluate_bbox;
pub use gt::{CocoGt, GtAnnotation};
pub use results::{read_detections, write_detections, CocoDetection};
pub use stats::{CategoryAp, CocoStats};
