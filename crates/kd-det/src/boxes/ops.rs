//! Box formats, areas, overlaps and clipping.
//!
//! Every function checks its operands' layout before calling libtorch, so a wrong tensor is a
//! [`KdError`](kd_core::KdError) naming it. The overlap functions divide by areas clamped at
//! [`BOX_EPS`], as MMDetection does, so degenerate (zero-area) boxes give an overlap of 0 rather
//! than NaN, and the gradients stay finite.

use tch::Tensor;

use super::{check_boxes, same_device};
use kd_core::{shape, Result};

/// Lower bound on the denominators of IoU and GIoU (pixels², MMDetection's `eps = 1e-6`).
pub const BOX_EPS: f64 = 1e-6;

/// The size of an image in input pixels, e.g. the unpadded (valid) part of a padded input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageSize {
    /// Width in pixels (the x extent).
    pub width: f64,
    /// Height in pixels (the y extent).
    pub height: f64,
}

impl ImageSize {
    /// An image `width` pixels wide and `height` pixels high.
    pub fn new(width: f64, height: f64) -> Self {
        Self { width, height }
    }
}

fn cols(b: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
    (b.select(1, 0), b.select(1, 1), b.select(1, 2), b.select(1, 3))
}

/// `(x1, y1, x2, y2)` → `(x, y, w, h)` (COCO's format). `[N, 4]` → `[N, 4]`, pixels.
pub fn xyxy_to_xywh(boxes: &Tensor) -> Result<Tensor> {
    check_boxes("xyxy_to_xywh", "boxes", boxes)?;
    let (x1, y1, x2, y2) = cols(boxes);
    Ok(Tensor::stack(&[&x1, &y1, &(&x2 - &x1), &(&y2 - &y1)], 1))
}

/// `(x, y, w, h)` → `(x1, y1, x2, y2)`. `[N, 4]` → `[N, 4]`, pixels.
pub fn xywh_to_xyxy(boxes: &Tensor) -> Result<Tensor> {
    check_boxes("xywh_to_xyxy", "boxes", boxes)?;
    let (x, y, w, h) = cols(boxes);
    Ok(Tensor::stack(&[&x, &y, &(&x + &w), &(&y + &h)], 1))
}

/// `(x1, y1, x2, y2)` → `(cx, cy, w, h)`. `[N, 4]` → `[N, 4]`, pixels.
pub fn xyxy_to_cxcywh(boxes: &Tensor) -> Result<Tensor> {
    check_boxes("xyxy_to_cxcywh", "boxes", boxes)?;
    let (x1, y1, x2, y2) = cols(boxes);
    Ok(Tensor::stack(
        &[
            &((&x1 + &x2) * 0.5),
            &((&y1 + &y2) * 0.5),
            &(&x2 - &x1),
            &(&y2 - &y1),
        ],
        1,
    ))
}

/// `(cx, cy, w, h)` → `(x1, y1, x2, y2)`. `[N, 4]` → `[N, 4]`, pixels.
pub fn cxcywh_to_xyxy(boxes: &Tensor) -> Result<Tensor> {
    check_boxes("cxcywh_to_xyxy", "boxes", boxes)?;
    let (cx, cy, w, h) = cols(boxes);
    let (hw, hh) = (&w * 0.5, &h * 0.5);
    Ok(Tensor::stack(
        &[&(&cx - &hw), &(&cy - &hh), &(&cx + &hw), &(&cy + &hh)],
        1,
    ))
}

/// Areas `[N]` (pixels²) of boxes `[N, 4]` xyxy; a box with `x2 < x1` or `y2 < y1` has area 0.
pub fn box_area(boxes: &Tensor) -> Result<Tensor> {
    check_boxes("box_area", "boxes", boxes)?;
    Ok(area(boxes))
}

fn area(b: &Tensor) -> Tensor {
    let (x1, y1, x2, y2) = cols(b);
    (x2 - x1).clamp_min(0.0) * (y2 - y1).clamp_min(0.0)
}

/// Pairwise IoU `[N, M]` of boxes `a` `[N, 4]` and `b` `[M, 4]`, both xyxy. Either side may
/// be empty. Boxes that merely touch (shared edge) have IoU 0.
pub fn box_iou(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "box_iou";
    check_boxes(OP, "a", a)?;
    check_boxes(OP, "b", b)?;
    same_device(OP, "a", a, "b", b)?;
    let (a1, b1) = (a.unsqueeze(1), b.unsqueeze(0));
    let lt = a1.narrow(2, 0, 2).maximum(&b1.narrow(2, 0, 2));
    let rb = a1.narrow(2, 2, 2).minimum(&b1.narrow(2, 2, 2));
    let wh = (rb - lt).clamp_min(0.0);
    let inter = wh.select(2, 0) * wh.select(2, 1);
    let union = area(a).unsqueeze(1) + area(b).unsqueeze(0) - &inter;
    Ok(inter / union.clamp_min(BOX_EPS))
}

/// Intersection, union and smallest enclosing box area `[N]` of aligned pairs.
fn aligned_parts(op: &str, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    check_boxes(op, "a", a)?;
    check_boxes(op, "b", b)?;
    shape::same(op, "a", a, "b", b)?;
    same_device(op, "a", a, "b", b)?;
    let lt = a.narrow(1, 0, 2).maximum(&b.narrow(1, 0, 2));
    let rb = a.narrow(1, 2, 2).minimum(&b.narrow(1, 2, 2));
    let wh = (rb - lt).clamp_min(0.0);
    let inter = wh.select(1, 0) * wh.select(1, 1);
    let union = area(a) + area(b) - &inter;
    let elt = a.narrow(1, 0, 2).minimum(&b.narrow(1, 0, 2));
    let erb = a.narrow(1, 2, 2).maximum(&b.narrow(1, 2, 2));
    let ewh = (erb - elt).clamp_min(0.0);
    let enclose = ewh.select(1, 0) * ewh.select(1, 1);
    Ok((inter, union, enclose))
}

/// IoU `[N]` of aligned pairs `a[i]`, `b[i]`, both `[N, 4]` xyxy.
pub fn iou_aligned(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (inter, union, _) = aligned_parts("iou_aligned", a, b)?;
    Ok(inter / union.clamp_min(BOX_EPS))
}

/// Generalised IoU `[N]` (Rezatofighi et al., CVPR 2019) of aligned pairs, both `[N, 4]` xyxy:
/// `IoU − (C − U) / C` with `C` the area of the smallest enclosing box and `U` the union. Lies
/// in `(−1, 1]`; disjoint boxes get a negative value that grows towards 0 as they approach.
pub fn giou_aligned(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (inter, union, enclose) = aligned_parts("giou_aligned", a, b)?;
    // Both denominators clamped, the union before it enters the enclosing term (as
    // MMDetection), so two identical degenerate boxes get GIoU 0 rather than −1.
    let union = union.clamp_min(BOX_EPS);
    let enclose = enclose.clamp_min(BOX_EPS);
    Ok(inter / &union - (&enclose - union) / enclose)
}

/// Clamps boxes `[N, 4]` xyxy into the image: x into `[0, width]`, y into `[0, height]`.
pub fn clip_boxes(boxes: &Tensor, size: ImageSize) -> Result<Tensor> {
    check_boxes("clip_boxes", "boxes", boxes)?;
    let (x1, y1, x2, y2) = cols(boxes);
    let (w, h) = (size.width, size.height);
    Ok(Tensor::stack(
        &[
            x1.clamp(0.0, w),
            y1.clamp(0.0, h),
            x2.clamp(0.0, w),
            y2.clamp(0.0, h),
        ],
        1,
    ))
}
