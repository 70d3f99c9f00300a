//! Greedy non-maximum suppression.
//!
//! The candidate boxes are copied to the host once and suppressed there: greedy NMS is a
//! sequential scan, the candidate sets after score thresholding are small (at most a few
//! thousand), and a host loop needs no `N × N` IoU matrix, so memory stays linear even when one
//! class has many candidates. Classes are kept apart by comparing labels, not by the
//! coordinate-offset trick, so no box coordinate range needs to be assumed.
//!
//! Ties are broken deterministically: among equal scores the lower input index comes first,
//! both for the visiting order and in the returned list.

use tch::{Device, Kind, Tensor};

use super::{check_boxes, BOX_EPS};
use kd_core::{KdError, Result};

/// Greedy NMS over all boxes as one class: visiting boxes by decreasing score, keeps a box and
/// suppresses every later box whose IoU with it is **strictly greater** than `iou_thr`.
///
/// `boxes` `[N, 4]` xyxy pixels, `scores` `[N]` (any `N ≥ 0`). Returns the kept indices into
/// the input, Int64 `[K]` on the boxes' device, sorted by decreasing score (ties: lower index
/// first). Errors: bad shapes, NaN scores, `iou_thr` outside `[0, 1]`.
pub fn nms(boxes: &Tensor, scores: &Tensor, iou_thr: f64) -> Result<Tensor> {
    check("nms", boxes, scores, None)?;
    let n = boxes.size()[0];
    let labels = vec![0i64; n as usize];
    run(boxes, scores, &labels, iou_thr, usize::MAX, "nms")
}

/// Per-class greedy NMS: as [`nms`], but a box only suppresses boxes of its own label.
///
/// `labels` `[N]` Int64. Returns the kept indices (Int64 `[K]`, on the boxes' device) of all
/// classes together, sorted by decreasing score (ties: lower index first).
pub fn batched_nms(boxes: &Tensor, scores: &Tensor, labels: &Tensor, iou_thr: f64) -> Result<Tensor> {
    check("batched_nms", boxes, scores, Some(labels))?;
    batched_nms_top(boxes, scores, labels, iou_thr, usize::MAX)
}

/// [`batched_nms`] truncated to its first `max_keep` kept boxes, stopping the scan there.
///
/// Greedy NMS keeps boxes in decreasing score order and a box's fate depends only on the boxes
/// kept before it, so the result equals `batched_nms(..)[..max_keep]` exactly, at a fraction
/// of the cost when many candidates survive (RPN proposals: thousands in, hundreds kept).
pub fn batched_nms_top(
    boxes: &Tensor,
    scores: &Tensor,
    labels: &Tensor,
    iou_thr: f64,
    max_keep: usize,
) -> Result<Tensor> {
    check("batched_nms", boxes, scores, Some(labels))?;
    let labels = Vec::<i64>::try_from(labels.to_device(Device::Cpu).reshape([-1]))?;
    run(boxes, scores, &labels, iou_thr, max_keep, "batched_nms")
}

fn check(op: &str, boxes: &Tensor, scores: &Tensor, labels: Option<&Tensor>) -> Result<()> {
    check_boxes(op, "boxes", boxes)?;
    let n = boxes.size()[0];
    let mut named = vec![("scores", scores)];
    if let Some(l) = labels {
        if l.kind() != Kind::Int64 {
            return Err(KdError::invalid(format!(
                "{op}: labels must be Int64, got {:?}",
                l.kind()
            )));
        }
        named.push(("labels", l));
    }
    for (name, t) in named {
        if t.size() != [n] {
            return Err(KdError::Shape {
                op: format!("{op} (expected boxes [N, 4] and {name} [N])"),
                left_name: "boxes".into(),
                left: boxes.size(),
                right_name: name.into(),
                right: t.size(),
            });
        }
    }
    Ok(())
}

fn run(
    boxes: &Tensor,
    scores: &Tensor,
    labels: &[i64],
    iou_thr: f64,
    max_keep: usize,
    op: &str,
) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&iou_thr) {
        return Err(KdError::invalid(format!(
            "{op}: iou_thr must lie in [0, 1], got {iou_thr}"
        )));
    }
    let device = boxes.device();
    let b = Vec::<f64>::try_from(boxes.to_device(Device::Cpu).to_kind(Kind::Double).reshape([-1]))?;
    let s = Vec::<f64>::try_from(scores.to_device(Device::Cpu).to_kind(Kind::Double))?;
    if s.iter().any(|v| v.is_nan()) {
        return Err(KdError::invalid(format!("{op}: scores contain NaN")));
    }
    let mut order: Vec<usize> = (0..s.len()).collect();
    // Stable sort: equal scores keep their input order.
    order.sort_by(|&i, &j| s[j].total_cmp(&s[i]));
    let bx = |i: usize| [b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]];
    let area = |r: [f64; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let mut suppressed = vec![false; s.len()];
    let mut keep = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        if keep.len() >= max_keep {
            break;
        }
        if suppressed[i] {
            continue;
        }
        keep.push(i as i64);
        let ri = bx(i);
        let ai = area(ri);
        for &j in &order[pos + 1..] {
            if suppressed[j] || labels[j] != labels[i] {
                continue;
            }
            let rj = bx(j);
            let w = (ri[2].min(rj[2]) - ri[0].max(rj[0])).max(0.0);
            let h = (ri[3].min(rj[3]) - ri[1].max(rj[1])).max(0.0);
            let inter = w * h;
            let iou = inter / (ai + area(rj) - inter).max(BOX_EPS);
            if iou > iou_thr {
                suppressed[j] = true;
            }
        }
    }
    Ok(Tensor::from_slice(&keep).to_device(device))
}
