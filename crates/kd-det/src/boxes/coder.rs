//! FCOS box coding: a box is coded, relative to a point, by its distances to the four sides.
//!
//! FCOS regresses `(l, t, r, b)` = (left, top, right, bottom) distances from each feature
//! point instead of offsets from an anchor box. Distances are kept in input pixels here (the
//! detector's head scales its output by the level's stride), so coding needs no stride.

use tch::Tensor;

use super::{check_boxes, clip_boxes, same_device, ImageSize};
use kd_core::{KdError, Result};

fn check_points(op: &str, points: &Tensor, other_name: &str, other: &Tensor) -> Result<()> {
    let (p, o) = (points.size(), other.size());
    if p.len() != 2 || p[1] != 2 {
        return Err(KdError::BadShape {
            op: op.into(),
            name: "points".into(),
            shape: p,
            expected: "[A, 2] (x, y)".into(),
        });
    }
    check_boxes(op, other_name, other)?;
    if o[0] != p[0] {
        return Err(KdError::Shape {
            op: format!("{op} (expected points [A, 2] and {other_name} [A, 4] with one A)"),
            left_name: "points".into(),
            left: p,
            right_name: other_name.into(),
            right: o,
        });
    }
    same_device(op, "points", points, other_name, other)
}

/// Distances `[A, 4]` `(l, t, r, b)` in pixels from each point `points[a] = (x, y)` `[A, 2]` to
/// the sides of its box `boxes[a]` `[A, 4]` xyxy: `(x − x1, y − y1, x2 − x, y2 − y)`. A point
/// outside its box gets a negative distance.
pub fn encode_ltrb(points: &Tensor, boxes: &Tensor) -> Result<Tensor> {
    check_points("encode_ltrb", points, "boxes", boxes)?;
    let (x, y) = (points.select(1, 0), points.select(1, 1));
    Ok(Tensor::stack(
        &[
            &x - boxes.select(1, 0),
            &y - boxes.select(1, 1),
            boxes.select(1, 2) - &x,
            boxes.select(1, 3) - &y,
        ],
        1,
    ))
}

/// The inverse of [`encode_ltrb`]: boxes `[A, 4]` xyxy `(x − l, y − t, x + r, y + b)` from points
/// `[A, 2]` and distances `dist` `[A, 4]`, clipped into `max_shape` when given (MMDetection's
/// `distance2bbox` with `max_shape`, used at test time with the unpadded image size).
pub fn decode_ltrb(points: &Tensor, dist: &Tensor, max_shape: Option<ImageSize>) -> Result<Tensor> {
    check_points("decode_ltrb", points, "dist", dist)?;
    let (x, y) = (points.select(1, 0), points.select(1, 1));
    let boxes = Tensor::stack(
        &[
            &x - dist.select(1, 0),
            &y - dist.select(1, 1),
            &x + dist.select(1, 2),
            &y + dist.select(1, 3),
        ],
        1,
    );
    match max_shape {
        Some(size) => clip_boxes(&boxes, size),
        None => Ok(boxes),
    }
}
