//! The supervised loss of semantic segmentation: per-pixel cross-entropy over the labelled
//! pixels, at the labels' resolution.
//!
//! Segmentation heads often predict at a fraction of the input resolution while the labels stay
//! at full resolution. MMSeg resizes the logits to the label map (bilinear, `align_corners =
//! false`) before the loss, never the labels (nearest-neighbour label down-sampling would drop
//! thin classes), and this kernel does the same.

use tch::Tensor;

use crate::models::resize_bilinear;
use kd_core::losses::check;
use kd_core::losses::kd::dense_cross_entropy;
use kd_core::{KdError, Result};

/// Mean per-pixel cross-entropy over the pixels whose label is not `ignore_index`.
///
/// `logits`: `[B, K, h, w]`; `labels`: `[B, H, W]` Int64 with values in `[0, K)` or equal to
/// `ignore_index` (255 for Cityscapes). When `(h, w) ≠ (H, W)` the logits are first resized to
/// `H × W` bilinearly with `align_corners = false`. Returns a 0-dim tensor in nats; a batch in
/// which every pixel is ignored gives 0 (with zero gradient), not NaN.
///
/// Errors: [`KdError::BadShape`] when `logits` is not 4-D or `labels` not 3-D,
/// [`KdError::Shape`] naming both shapes when the batch sizes differ, and
/// [`KdError::Invalid`] for labels outside `[0, K)` other than `ignore_index` (one read-back of
/// the labels' minimum and maximum).
pub fn seg_cross_entropy(logits: &Tensor, labels: &Tensor, ignore_index: i64) -> Result<Tensor> {
    const OP: &str = "seg_cross_entropy";
    let (ls, ys) = (logits.size(), labels.size());
    if ls.len() != 4 {
        return Err(KdError::BadShape {
            op: OP.into(),
            name: "logits".into(),
            shape: ls,
            expected: "[B, K, h, w]".into(),
        });
    }
    if ys.len() != 3 {
        return Err(KdError::BadShape {
            op: OP.into(),
            name: "labels".into(),
            shape: ys,
            expected: "[B, H, W]".into(),
        });
    }
    if ls[0] != ys[0] {
        return Err(check::mismatch(
            OP,
            "logits [B, K, h, w] and labels [B, H, W] with one B",
            "logits",
            logits,
            "labels",
            labels,
        ));
    }
    check::non_empty(OP, "logits", logits)?;
    check::non_empty(OP, "labels", labels)?;
    let resized = resize_bilinear(logits, ys[1], ys[2]);
    dense_cross_entropy(&resized, labels, ignore_index)
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use kd_core::losses::gradcheck::{assert_gradients, assert_shape_error};
    use kd_core::losses::IGNORE_INDEX;

    #[test]
    fn hand_computed_value_at_full_resolution() {
        // B = 1, K = 2, one row of three pixels: logits (0, ln 3), (0, 0), (5, -5).
        // Labels 1, 0, ignore: −log(3/4) and −log(1/2) over two pixels.
        let logits = Tensor::from_slice(&[0.0f64, 0.0, 5.0, 3f64.ln(), 0.0, -5.0]).view([1, 2, 1, 3]);
        let labels = Tensor::from_slice(&[1i64, 0, IGNORE_INDEX]).view([1, 1, 3]);
        let ce = seg_cross_entropy(&logits, &labels, IGNORE_INDEX)
            .unwrap()
            .double_value(&[]);
        let expected = (-(0.75f64.ln()) - 0.5f64.ln()) / 2.0;
        assert!((ce - expected).abs() < 1e-12, "{ce} vs {expected}");
    }

    #[test]
    fn low_resolution_logits_are_resized_bilinearly() {
        // A constant 1×1 map resizes to the same constant: every pixel has logits (1, 0).
        let logits = Tensor::from_slice(&[1.0f64, 0.0]).view([1, 2, 1, 1]);
        let labels = Tensor::from_slice(&[0i64, 1, 0, 0]).view([1, 2, 2]);
        let ce = seg_cross_entropy(&logits, &labels, IGNORE_INDEX)
            .unwrap()
            .double_value(&[]);
        let lse = (1f64.exp() + 1.0).ln();
        let expected = (3.0 * (lse - 1.0) + lse) / 4.0;
        assert!((ce - expected).abs() < 1e-12);
        // A general map: equal to resizing by hand, then the full-resolution loss.
        tch::manual_seed(5);
        let logits = Tensor::randn([2, 3, 4, 5], (Kind::Double, Device::Cpu));
        let labels = Tensor::randint(3, [2, 8, 10], (Kind::Int64, Device::Cpu));
        let up = logits.upsample_bilinear2d([8, 10], false, None, None);
        let a = seg_cross_entropy(&logits, &labels, IGNORE_INDEX).unwrap();
        let b = dense_cross_entropy(&up, &labels, IGNORE_INDEX).unwrap();
        assert!((a - b).abs().double_value(&[]) < 1e-12);
    }

    #[test]
    fn all_ignored_batch_gives_zero() {
        let logits = Tensor::randn([2, 4, 3, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let labels = Tensor::full([2, 6, 6], 7, (Kind::Int64, Device::Cpu));
        let ce = seg_cross_entropy(&logits, &labels, 7).unwrap();
        assert_eq!(ce.double_value(&[]), 0.0);
        ce.backward();
        assert_eq!(logits.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn gradients_match_finite_differences() {
        tch::manual_seed(6);
        let logits = Tensor::randn([2, 3, 2, 3], (Kind::Double, Device::Cpu));
        let labels = Tensor::from_slice(&[
            0i64,
            1,
            2,
            IGNORE_INDEX,
            1,
            0,
            2,
            2,
            1,
            0,
            0,
            1,
            2,
            0,
            IGNORE_INDEX,
            1,
            1,
            2,
            0,
            0,
            2,
            1,
            0,
            1,
        ])
        .view([2, 3, 4]);
        assert_gradients("seg_cross_entropy", &[logits], &[0], |x| {
            seg_cross_entropy(&x[0], &labels, IGNORE_INDEX)
        });
    }

    #[test]
    fn shape_and_label_errors() {
        let f = |s: &[i64]| Tensor::zeros(s, (Kind::Float, Device::Cpu));
        let y = |s: &[i64]| Tensor::zeros(s, (Kind::Int64, Device::Cpu));
        let (l, lab) = (f(&[2, 3, 4, 4]), y(&[3, 8, 8]));
        assert_shape_error(seg_cross_entropy(&l, &lab, IGNORE_INDEX), &l, &lab);
        let flat = f(&[2, 3, 16]);
        let err = seg_cross_entropy(&flat, &y(&[2, 4, 4]), IGNORE_INDEX).unwrap_err();
        assert!(matches!(err, KdError::BadShape { .. }) && err.to_string().contains("[2, 3, 16]"));
        let err = seg_cross_entropy(&l, &y(&[2, 16]), IGNORE_INDEX).unwrap_err();
        assert!(matches!(err, KdError::BadShape { .. }) && err.to_string().contains("[2, 16]"));
        let out_of_range = Tensor::from_slice(&[0i64, 3, 1, IGNORE_INDEX]).view([1, 2, 2]);
        let err = seg_cross_entropy(&f(&[1, 3, 2, 2]), &out_of_range, IGNORE_INDEX).unwrap_err();
        assert!(err.to_string().contains("[0, 3)"), "{err}");
        let negative = Tensor::from_slice(&[0i64, -1, 1, 2]).view([1, 2, 2]);
        assert!(seg_cross_entropy(&f(&[1, 3, 2, 2]), &negative, IGNORE_INDEX).is_err());
    }
}
