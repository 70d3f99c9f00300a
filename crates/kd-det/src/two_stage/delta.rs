//! MMDetection 2.x's `DeltaXYWHBBoxCoder`: a box relative to a reference box as the normalised
//! offsets `((g_x − p_x)/p_w, (g_y − p_y)/p_h, ln(g_w/p_w), ln(g_h/p_h))`, centres and sizes
//! without the "+1" pixel convention. The RPN uses means 0 and standard deviations 1, the box
//! head standard deviations `(0.1, 0.1, 0.2, 0.2)`.

use tch::{Kind, Tensor};

use crate::boxes::ImageSize;
use kd_core::{KdError, Result};

/// `|ln(16 / 1000)|`: decoded log-sizes are clamped to `±` this (MMDet's `wh_ratio_clip`), so
/// no decoded box grows beyond 62.5× its reference.
pub const MAX_LOG_RATIO: f64 = 4.135166556742356;

/// The four standard deviations that divide the raw offsets.
pub type Stds = [f64; 4];

/// The RPN's coder: standard deviations 1.
pub const RPN_STDS: Stds = [1.0, 1.0, 1.0, 1.0];
/// The box head's coder: standard deviations `(0.1, 0.1, 0.2, 0.2)`.
pub const RCNN_STDS: Stds = [0.1, 0.1, 0.2, 0.2];

fn check(op: &str, name: &str, t: &Tensor) -> Result<()> {
    let s = t.size();
    if s.len() != 2 || s[1] != 4 {
        return Err(KdError::BadShape {
            op: op.into(),
            name: name.into(),
            shape: s,
            expected: "[N, 4]".into(),
        });
    }
    Ok(())
}

fn stds_tensor(stds: &Stds, like: &Tensor) -> Tensor {
    let v: Vec<f32> = stds.iter().map(|&s| s as f32).collect();
    Tensor::from_slice(&v).to_device(like.device()).view([1, 4])
}

/// The offsets `[N, 4]` of boxes `gt` `[N, 4]` from reference boxes `refs` `[N, 4]` (both xyxy,
/// pixels), divided by `stds`. Reference boxes must have positive width and height.
pub fn encode(refs: &Tensor, gt: &Tensor, stds: &Stds) -> Result<Tensor> {
    check("delta encode", "refs", refs)?;
    check("delta encode", "gt", gt)?;
    if refs.size() != gt.size() {
        return Err(KdError::Shape {
            op: "delta encode".into(),
            left_name: "refs".into(),
            left: refs.size(),
            right_name: "gt".into(),
            right: gt.size(),
        });
    }
    let (p, g) = (refs.to_kind(Kind::Float), gt.to_kind(Kind::Float));
    let c = |t: &Tensor, i: i64| t.select(1, i);
    let (pw, ph) = (c(&p, 2) - c(&p, 0), c(&p, 3) - c(&p, 1));
    let (px, py) = ((c(&p, 0) + c(&p, 2)) * 0.5, (c(&p, 1) + c(&p, 3)) * 0.5);
    let (gw, gh) = (c(&g, 2) - c(&g, 0), c(&g, 3) - c(&g, 1));
    let (gx, gy) = ((c(&g, 0) + c(&g, 2)) * 0.5, (c(&g, 1) + c(&g, 3)) * 0.5);
    let d = Tensor::stack(
        &[
            (gx - &px) / &pw,
            (gy - &py) / &ph,
            (gw / &pw).log(),
            (gh / &ph).log(),
        ],
        1,
    );
    Ok(d / stds_tensor(stds, &p))
}

/// The boxes `[N, 4]` that offsets `deltas` `[N, 4]` (divided by `stds`) describe relative to
/// `refs` `[N, 4]`: log-sizes clamped to `±`[`MAX_LOG_RATIO`], corners clipped to `[0, W]` ×
/// `[0, H]` of `clip` when given. `deltas` may also be `[N, 4·K]` (one box per class), giving
/// `[N, 4·K]`.
pub fn decode(refs: &Tensor, deltas: &Tensor, stds: &Stds, clip: Option<ImageSize>) -> Result<Tensor> {
    check("delta decode", "refs", refs)?;
    let ds = deltas.size();
    let n = refs.size()[0];
    if ds.len() != 2 || ds[0] != n || ds[1] % 4 != 0 || ds[1] == 0 {
        return Err(KdError::BadShape {
            op: "delta decode".into(),
            name: "deltas".into(),
            shape: ds,
            expected: format!("[{n}, 4·K] (one row per reference box)"),
        });
    }
    let k = ds[1] / 4;
    let d = deltas.to_kind(Kind::Float).view([n, k, 4]) * stds_tensor(stds, refs).view([1, 1, 4]);
    let p = refs.to_kind(Kind::Float).view([n, 1, 4]);
    let c = |t: &Tensor, i: i64| t.select(2, i);
    let (pw, ph) = (c(&p, 2) - c(&p, 0), c(&p, 3) - c(&p, 1));
    let (px, py) = ((c(&p, 0) + c(&p, 2)) * 0.5, (c(&p, 1) + c(&p, 3)) * 0.5);
    let dw = c(&d, 2).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO);
    let dh = c(&d, 3).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO);
    let gx = &px + &pw * c(&d, 0);
    let gy = &py + &ph * c(&d, 1);
    let gw = pw * dw.exp();
    let gh = ph * dh.exp();
    let mut x1 = &gx - &gw * 0.5;
    let mut y1 = &gy - &gh * 0.5;
    let mut x2 = gx + gw * 0.5;
    let mut y2 = gy + gh * 0.5;
    if let Some(s) = clip {
        x1 = x1.clamp(0.0, s.width);
        x2 = x2.clamp(0.0, s.width);
        y1 = y1.clamp(0.0, s.height);
        y2 = y2.clamp(0.0, s.height);
    }
    Ok(Tensor::stack(&[x1, y1, x2, y2], 2).view([n, 4 * k]))
}
