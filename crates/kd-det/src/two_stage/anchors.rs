//! Anchor boxes of a feature pyramid, laid out as MMDetection 2.x's `AnchorGenerator` lays them
//! out (`center_offset = 0`, `scale_major = True`), so that a converted RPN head's per-position
//! channels meet the anchors they were trained with.

use tch::{Device, Kind, Tensor};

use kd_core::{KdError, Result};

/// The base anchors of one level with stride `stride`, centred on `(0, 0)`: `[R·S, 4]` xyxy,
/// ratios outer and scales inner. For ratio `r` (height over width) and scale `s` the anchor is
/// `w = stride · s / √r` wide and `h = stride · s · √r` high.
pub fn base_anchors(stride: i64, scales: &[f64], ratios: &[f64]) -> Vec<[f64; 4]> {
    let base = stride as f64;
    let mut out = Vec::with_capacity(scales.len() * ratios.len());
    for &r in ratios {
        let h_ratio = r.sqrt();
        let w_ratio = 1.0 / h_ratio;
        for &s in scales {
            let w = base * w_ratio * s;
            let h = base * h_ratio * s;
            out.push([-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h]);
        }
    }
    out
}

/// Every anchor of one `height × width` level at `stride`: `[height · width · A, 4]` Float on
/// `device`, positions row-major (`y` outer, `x` inner) and the `A` base anchors inner, each
/// base anchor shifted by `(x · stride, y · stride)`.
pub fn level_anchors(
    stride: i64,
    height: i64,
    width: i64,
    scales: &[f64],
    ratios: &[f64],
    device: Device,
) -> Tensor {
    let base: Vec<f32> = base_anchors(stride, scales, ratios)
        .into_iter()
        .flat_map(|b| b.map(|v| v as f32))
        .collect();
    let a = (base.len() / 4) as i64;
    let base = Tensor::from_slice(&base).view([1, a, 4]).to_device(device);
    let opts = (Kind::Float, device);
    let sx = Tensor::arange(width, opts) * stride as f64;
    let sy = Tensor::arange(height, opts) * stride as f64;
    let xx = sx.repeat([height]);
    let yy = sy.view([-1, 1]).repeat([1, width]).view([-1]);
    let shifts = Tensor::stack(&[&xx, &yy, &xx, &yy], 1).view([-1, 1, 4]);
    (base + shifts).view([-1, 4])
}

/// The anchors of a whole pyramid: one `[H_l · W_l · A, 4]` block per level, concatenated in
/// level order, and the count of each block. `sizes` holds `(stride, H_l, W_l)` per level.
///
/// Fails when the scales or ratios are empty or not positive.
pub fn pyramid_anchors(
    sizes: &[(i64, i64, i64)],
    scales: &[f64],
    ratios: &[f64],
    device: Device,
) -> Result<(Tensor, Vec<i64>)> {
    check_positive("anchors.scales", scales)?;
    check_positive("anchors.ratios", ratios)?;
    let blocks: Vec<Tensor> = sizes
        .iter()
        .map(|&(s, h, w)| level_anchors(s, h, w, scales, ratios, device))
        .collect();
    let counts = blocks.iter().map(|b| b.size()[0]).collect();
    Ok((Tensor::cat(&blocks, 0), counts))
}

/// Fails unless `values` is non-empty and every value is finite and positive; names `key`.
pub(crate) fn check_positive(key: &str, values: &[f64]) -> Result<()> {
    if values.is_empty() || values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return Err(KdError::invalid(format!(
            "{key}: must be a non-empty list of positive numbers, got {values:?}"
        )));
    }
    Ok(())
}
