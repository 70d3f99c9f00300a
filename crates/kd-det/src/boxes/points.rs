//! The anchor points of a feature pyramid: one point per cell of each level's map, in the order
//! in which a detector's head concatenates its predictions.
//!
//! Level sizes are read from the feature maps the network actually produced, never recomputed
//! from the input size: a stride-2 convolution rounds up, and padding choices differ between
//! backbones, so a recomputed size can be off by one and silently misalign every prediction.

use tch::{Device, Kind, Tensor};

use kd_core::models::{ModelOutput, Tap};
use kd_core::{KdError, Result};

/// The levels of a detector's output: the `(H, W)` of each level's map and its stride (input
/// pixels per cell), in tap order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PyramidLevels {
    /// `(H, W)` of each level's feature map, in cells.
    pub sizes: Vec<(i64, i64)>,
    /// Stride of each level in input pixels, e.g. `[8, 16, 32, 64, 128]` for P3–P7.
    pub strides: Vec<i64>,
}

impl PyramidLevels {
    /// Number of points of each level (`H · W`).
    pub fn counts(&self) -> Vec<i64> {
        self.sizes.iter().map(|&(h, w)| h * w).collect()
    }

    /// Total number of points `A` over all levels.
    pub fn num_points(&self) -> i64 {
        self.counts().iter().sum()
    }

    /// [`anchor_points`] of these levels.
    pub fn points(&self, device: Device) -> Result<(Tensor, Tensor, Tensor)> {
        anchor_points(&self.sizes, &self.strides, device)
    }
}

/// The pyramid levels of a detector's output: sizes from the maps `out.features`
/// (`[B, C, H_l, W_l]` each) and strides from `taps`, which must name the same levels in the
/// same order.
pub fn output_levels(out: &ModelOutput, taps: &[Tap]) -> Result<PyramidLevels> {
    const OP: &str = "detector levels";
    if taps.is_empty() {
        return Err(KdError::invalid(format!("{OP}: the model has no feature taps")));
    }
    let tap_names: Vec<&str> = taps.iter().map(|t| t.name.as_str()).collect();
    let feat_names: Vec<&str> = out.features.iter().map(|(n, _)| n.as_str()).collect();
    if tap_names != feat_names {
        return Err(KdError::invalid(format!(
            "{OP}: the output's features {feat_names:?} do not match the model's taps {tap_names:?}"
        )));
    }
    let mut sizes = Vec::with_capacity(taps.len());
    let mut batch = None;
    for ((name, f), tap) in out.features.iter().zip(taps) {
        let s = f.size();
        if s.len() != 4 || s[2] <= 0 || s[3] <= 0 || batch.is_some_and(|b| b != s[0]) {
            return Err(KdError::BadShape {
                op: OP.into(),
                name: format!("feature {name:?}"),
                shape: s,
                expected: match batch {
                    Some(b) => format!("[{b}, C, H, W] with H, W > 0 (one batch size for all levels)"),
                    None => "[B, C, H, W] with H, W > 0".into(),
                },
            });
        }
        if tap.stride <= 0 {
            return Err(KdError::invalid(format!(
                "{OP}: tap {:?} has stride {}, expected > 0",
                tap.name, tap.stride
            )));
        }
        batch = Some(s[0]);
        sizes.push((s[2], s[3]));
    }
    Ok(PyramidLevels {
        sizes,
        strides: taps.iter().map(|t| t.stride).collect(),
    })
}

/// The anchor points of a pyramid whose level `l` has a map of `sizes[l] = (H_l, W_l)` cells at
/// stride `strides[l]` pixels.
///
/// Returns `(points [A, 2], strides [A], levels [A])` with `A = Σ H_l·W_l`: the point of cell
/// `(i, j)` of level `l` is `(x, y) = (j·s + ⌊s/2⌋, i·s + ⌊s/2⌋)` in input pixels (Float), its
/// stride `s` (Float) and its level index `l` (Int64). Levels are concatenated in order and
/// cells are row-major within a level (row `i`, then column `j`), the order of the detector's
/// `[B, A, ·]` outputs.
pub fn anchor_points(
    sizes: &[(i64, i64)],
    strides: &[i64],
    device: Device,
) -> Result<(Tensor, Tensor, Tensor)> {
    if sizes.len() != strides.len() || sizes.is_empty() {
        return Err(KdError::invalid(format!(
            "anchor_points: {} level sizes and {} strides; expected one stride per level and at least one level",
            sizes.len(),
            strides.len()
        )));
    }
    let mut pts = Vec::with_capacity(sizes.len());
    let mut strd = Vec::with_capacity(sizes.len());
    let mut lvl = Vec::with_capacity(sizes.len());
    for (l, (&(h, w), &s)) in sizes.iter().zip(strides).enumerate() {
        if h < 0 || w < 0 || s <= 0 {
            return Err(KdError::invalid(format!(
                "anchor_points: level {l} has size ({h}, {w}) and stride {s}; expected sizes >= 0 and stride > 0"
            )));
        }
        let opts = (Kind::Int64, device);
        let ys = Tensor::arange(h, opts) * s + s / 2;
        let xs = Tensor::arange(w, opts) * s + s / 2;
        let yy = ys.unsqueeze(1).expand([h, w], false).reshape([-1]);
        let xx = xs.unsqueeze(0).expand([h, w], false).reshape([-1]);
        pts.push(Tensor::stack(&[xx, yy], 1).to_kind(Kind::Float));
        strd.push(Tensor::full([h * w], s, (Kind::Float, device)));
        lvl.push(Tensor::full([h * w], l as i64, opts));
    }
    Ok((Tensor::cat(&pts, 0), Tensor::cat(&strd, 0), Tensor::cat(&lvl, 0)))
}
