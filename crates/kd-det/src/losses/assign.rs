//! FCOS target assignment: which anchor point regresses which ground-truth box.
//!
//! A point is a candidate for a box when it lies inside the box's *centre region* (a square of
//! half-side `radius × stride` around the box centre, cut to the box; MMDetection's
//! `center_sampling`) and when its largest distance to the box's sides falls within its
//! level's regression range (small boxes on fine levels, large boxes on coarse ones). A point
//! that is a candidate for several boxes takes the one of smallest area. Every other point is
//! background.
//!
//! Crowd regions (`iscrowd = 1`) are not targets: like MMDetection, which drops them when it
//! loads COCO for training, they take no part in training at all — neither positive nor
//! ignored — so a point inside a crowd region is plain background.

use tch::{Device, Kind, Tensor};

use kd_core::{KdError, Result};

/// The regression ranges (pixels) of levels with the given strides: level `l` takes points whose
/// largest distance `m` satisfies `lo_l ≤ m ≤ hi_l`, with `hi_l = 8·stride_l`, `lo_0 = −1`,
/// `lo_l = hi_{l−1}` and `hi = ∞` on the last level. \[R\] For strides 8…128 (P3–P7) these are
/// exactly MMDetection's `((−1, 64), (64, 128), (128, 256), (256, 512), (512, ∞))`; for other
/// level sets the same rule extends them (e.g. P3–P5: `(−1, 64), (64, 128), (128, ∞)`).
pub fn default_regress_ranges(strides: &[i64]) -> Vec<(f64, f64)> {
    let n = strides.len();
    let mut lo = -1.0;
    strides
        .iter()
        .enumerate()
        .map(|(l, &s)| {
            let hi = if l + 1 == n { f64::INFINITY } else { 8.0 * s as f64 };
            let r = (lo, hi);
            lo = hi;
            r
        })
        .collect()
}

/// The training boxes of one image from its label rows `[N, 6]` `(x1, y1, x2, y2, class,
/// iscrowd)` (contract 1): padding rows (class −1) and crowd rows (iscrowd = 1) are dropped.
///
/// Returns boxes `[G, 4]` Float (pixels) and labels `[G]` Int64, on the rows' device. Errors
/// name the row: a class that is not an integer in `0..num_classes` (or −1), an `iscrowd` other
/// than 0/1, a non-finite coordinate. Degenerate boxes (`x2 ≤ x1` or `y2 ≤ y1`) are kept and
/// simply match no point.
pub fn gt_from_rows(rows: &Tensor, num_classes: i64) -> Result<(Tensor, Tensor)> {
    let s = rows.size();
    if s.len() != 2 || s[1] != 6 || !rows.is_floating_point() {
        return Err(KdError::BadShape {
            op: "gt_from_rows".into(),
            name: format!("label rows ({:?})", rows.kind()),
            shape: s,
            expected: "[N, 6] floating (x1, y1, x2, y2, class, iscrowd)".into(),
        });
    }
    let device = rows.device();
    let v = Vec::<f64>::try_from(rows.to_device(Device::Cpu).to_kind(Kind::Double).reshape([-1]))?;
    let mut boxes = Vec::new();
    let mut labels = Vec::new();
    for (n, r) in v.chunks_exact(6).enumerate() {
        let (class, crowd) = (r[4], r[5]);
        if class == -1.0 {
            continue;
        }
        if !(class.fract() == 0.0 && class >= 0.0 && class < num_classes as f64) {
            return Err(KdError::invalid(format!(
                "label row {n}: class {class} is not an integer in 0..{num_classes} (or -1 for padding)"
            )));
        }
        if crowd != 0.0 && crowd != 1.0 {
            return Err(KdError::invalid(format!(
                "label row {n}: iscrowd {crowd}, expected 0 or 1"
            )));
        }
        if r[..4].iter().any(|c| !c.is_finite()) {
            return Err(KdError::invalid(format!(
                "label row {n}: box {:?} has a non-finite coordinate",
                &r[..4]
            )));
        }
        if crowd == 1.0 {
            continue;
        }
        boxes.extend(r[..4].iter().map(|&c| c as f32));
        labels.push(class as i64);
    }
    let g = labels.len() as i64;
    Ok((
        Tensor::from_slice(&boxes).view([g, 4]).to_device(device),
        Tensor::from_slice(&labels).to_device(device),
    ))
}

/// FCOS targets of one image.
///
/// `points` `[A, 2]` (x, y), `strides` `[A]` and `levels` `[A]` Int64 as from
/// [`crate::boxes::anchor_points`]; `ranges` one `(lo, hi)` regression range per level (pixels,
/// see [`default_regress_ranges`]); `gt_boxes` `[G, 4]` xyxy pixels and `gt_labels` `[G]` Int64
/// in `0..num_classes` (crowd and padding already removed, see [`gt_from_rows`]);
/// `center_radius` the centre-sampling radius in strides (1.5 in MMDetection; `None` samples
/// the whole box, as the original FCOS).
///
/// Returns `labels` `[A]` Int64 (the class, or `num_classes` for background) and
/// `box_targets` `[A, 4]` Float `(l, t, r, b)` distances in pixels to the assigned box (zeros
/// for background points). Ambiguous points take the box of smallest area; among equal areas,
/// the lower box index.
#[allow(clippy::too_many_arguments)]
pub fn fcos_targets(
    points: &Tensor,
    strides: &Tensor,
    levels: &Tensor,
    ranges: &[(f64, f64)],
    gt_boxes: &Tensor,
    gt_labels: &Tensor,
    num_classes: i64,
    center_radius: Option<f64>,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "fcos_targets";
    let ps = points.size();
    if ps.len() != 2 || ps[1] != 2 {
        return Err(KdError::BadShape {
            op: OP.into(),
            name: "points".into(),
            shape: ps,
            expected: "[A, 2] (x, y)".into(),
        });
    }
    let a = ps[0];
    for (name, t) in [("strides", strides), ("levels", levels)] {
        if t.size() != [a] {
            return Err(KdError::Shape {
                op: format!("{OP} (expected points [A, 2] and {name} [A])"),
                left_name: "points".into(),
                left: ps.clone(),
                right_name: name.into(),
                right: t.size(),
            });
        }
    }
    let gs = gt_boxes.size();
    if gs.len() != 2 || gs[1] != 4 || gt_labels.size() != [gs[0]] || gt_labels.kind() != Kind::Int64 {
        return Err(KdError::Shape {
            op: format!("{OP} (expected gt_boxes [G, 4] and Int64 gt_labels [G])"),
            left_name: "gt_boxes".into(),
            left: gs,
            right_name: format!("gt_labels ({:?})", gt_labels.kind()),
            right: gt_labels.size(),
        });
    }
    if let Some(r) = center_radius {
        if !(r.is_finite() && r > 0.0) {
            return Err(KdError::invalid(format!(
                "{OP}: center_radius must be finite and > 0, got {r}"
            )));
        }
    }
    if a > 0 {
        let max_level = levels.max().int64_value(&[]);
        if levels.min().int64_value(&[]) < 0 || max_level >= ranges.len() as i64 {
            return Err(KdError::invalid(format!(
                "{OP}: {} regression ranges for level indices up to {max_level}",
                ranges.len()
            )));
        }
    }
    let device = points.device();
    let g = gs[0];
    if g == 0 || a == 0 {
        return Ok((
            Tensor::full([a], num_classes, (Kind::Int64, device)),
            Tensor::zeros([a, 4], (Kind::Float, device)),
        ));
    }
    let pts = points.to_kind(Kind::Float);
    let gt = gt_boxes.to_kind(Kind::Float).to_device(device);
    let gt_labels = gt_labels.to_device(device);
    let (xs, ys) = (pts.select(1, 0).unsqueeze(1), pts.select(1, 1).unsqueeze(1)); // [A, 1]
    let (x1, y1, x2, y2) = (
        gt.select(1, 0).unsqueeze(0),
        gt.select(1, 1).unsqueeze(0),
        gt.select(1, 2).unsqueeze(0),
        gt.select(1, 3).unsqueeze(0),
    ); // [1, G]
    let ltrb = Tensor::stack(&[&xs - &x1, &ys - &y1, &x2 - &xs, &y2 - &ys], 2); // [A, G, 4]

    let inside = match center_radius {
        Some(radius) => {
            let reach = strides.to_kind(Kind::Float).unsqueeze(1) * radius; // [A, 1]
            let (cx, cy) = ((&x1 + &x2) * 0.5, (&y1 + &y2) * 0.5);
            let cx1 = (&cx - &reach).maximum(&x1);
            let cy1 = (&cy - &reach).maximum(&y1);
            let cx2 = (&cx + &reach).minimum(&x2);
            let cy2 = (&cy + &reach).minimum(&y2);
            Tensor::stack(&[&xs - cx1, &ys - cy1, cx2 - &xs, cy2 - &ys], 2)
                .amin([2], false)
                .gt(0.0)
        }
        None => ltrb.amin([2], false).gt(0.0),
    };
    let (lo, hi): (Vec<f32>, Vec<f32>) = ranges.iter().map(|&(l, h)| (l as f32, h as f32)).unzip();
    let lo = Tensor::from_slice(&lo)
        .to_device(device)
        .index_select(0, levels)
        .unsqueeze(1);
    let hi = Tensor::from_slice(&hi)
        .to_device(device)
        .index_select(0, levels)
        .unsqueeze(1);
    let reach = ltrb.amax([2], false); // [A, G]
    let in_range = reach.ge_tensor(&lo).logical_and(&reach.le_tensor(&hi));

    let areas = ((&x2 - &x1) * (&y2 - &y1)).expand([a, g], false);
    let areas = areas.masked_fill(&inside.logical_and(&in_range).logical_not(), f64::INFINITY);
    let min_area = areas.amin([1], true); // [A, 1]
                                          // Lowest box index among the smallest areas: deterministic on every device.
    let index = Tensor::arange(g, (Kind::Int64, device))
        .unsqueeze(0)
        .expand([a, g], false);
    let best = index
        .where_scalarother(&areas.eq_tensor(&min_area), g)
        .amin([1], false)
        .clamp_max(g - 1);
    let background = min_area.squeeze_dim(1).isinf();
    let labels = gt_labels
        .index_select(0, &best)
        .masked_fill(&background, num_classes);
    let targets = ltrb
        .gather(1, &best.view([a, 1, 1]).expand([a, 1, 4], false), false)
        .squeeze_dim(1)
        .masked_fill(&background.unsqueeze(1), 0.0);
    Ok((labels, targets))
}
