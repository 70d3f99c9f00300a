//! Axis-aligned boxes for detection: formats, overlap, the FCOS distance coding, the anchor
//! points of a feature pyramid, non-maximum suppression and the test-time post-processing.
//!
//! Boxes are `[N, 4]` tensors of floats in **input pixels** (the pixels of the batch's `x`,
//! after resize and flip), `(x1, y1, x2, y2)` unless a function says otherwise. Widths and
//! heights are `x2 − x1` and `y2 − y1`: there is no "+1" pixel convention (MMDetection 2.x and
//! the COCO evaluator both measure boxes this way).
//!
//! The assignment of training targets and the losses built on these operations live in
//! [`crate::losses`].

mod coder;
mod nms;
mod ops;
mod points;
mod postprocess;

pub use coder::{decode_ltrb, encode_ltrb};
pub use nms::{batched_nms, batched_nms_top, nms};
pub use ops::{
    box_area, box_iou, clip_boxes, cxcywh_to_xyxy, giou_aligned, iou_aligned, xywh_to_xyxy, xyxy_to_cxcywh,
    xyxy_to_xywh, ImageSize, BOX_EPS,
};
pub use points::{anchor_points, output_levels, PyramidLevels};
pub use postprocess::{postprocess, postprocess_output, Detections, PostprocessConfig};

use tch::Tensor;

use kd_core::{KdError, Result};

/// Fails unless `t` is `[N, 4]` (any `N ≥ 0`) of a floating kind; the error names `op` and `name`.
pub(crate) fn check_boxes(op: &str, name: &str, t: &Tensor) -> Result<()> {
    let s = t.size();
    if s.len() != 2 || s[1] != 4 {
        return Err(KdError::BadShape {
            op: op.into(),
            name: name.into(),
            shape: s,
            expected: "[N, 4]".into(),
        });
    }
    if !t.is_floating_point() {
        return Err(KdError::invalid(format!(
            "{op}: {name} must be a floating-point tensor, got {:?}",
            t.kind()
        )));
    }
    Ok(())
}

/// Fails unless the two tensors live on one device.
pub(crate) fn same_device(op: &str, a_name: &str, a: &Tensor, b_name: &str, b: &Tensor) -> Result<()> {
    if a.device() != b.device() {
        return Err(KdError::invalid(format!(
            "{op}: {a_name} is on {:?} but {b_name} is on {:?}",
            a.device(),
            b.device()
        )));
    }
    Ok(())
}

/// Checks a detector's dense outputs against contract 2 for `num_points` anchor points:
/// `logits` `[B, A, K]`, `boxes` `[B, A, 4]`, `centerness` `[B, A, 1]`, all floating and on
/// one device. Returns `(B, A, K)`.
pub(crate) fn check_head_outputs(
    op: &str,
    logits: &Tensor,
    boxes: &Tensor,
    centerness: &Tensor,
    num_points: i64,
) -> Result<(i64, i64, i64)> {
    let ls = logits.size();
    if ls.len() != 3 || ls[1] != num_points || ls[2] <= 0 {
        return Err(KdError::BadShape {
            op: op.into(),
            name: "logits".into(),
            shape: ls,
            expected: format!("[B, A, K] with A = {num_points} points (from the feature maps) and K > 0"),
        });
    }
    let (b, a) = (ls[0], ls[1]);
    for (name, t, last) in [("box", boxes, 4), ("centerness", centerness, 1)] {
        if t.size() != [b, a, last] {
            return Err(KdError::Shape {
                op: format!("{op} (expected logits [B, A, K] and {name} [B, A, {last}])"),
                left_name: "logits".into(),
                left: ls.clone(),
                right_name: name.into(),
                right: t.size(),
            });
        }
        same_device(op, "logits", logits, name, t)?;
    }
    for (name, t) in [("logits", logits), ("box", boxes), ("centerness", centerness)] {
        if !t.is_floating_point() {
            return Err(KdError::invalid(format!(
                "{op}: {name} must be a floating-point tensor, got {:?}",
                t.kind()
            )));
        }
    }
    Ok((b, a, ls[2]))
}

#[cfg(test)]
mod tests;
