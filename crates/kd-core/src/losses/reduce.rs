//! Weighted and masked reductions of per-sample (or per-element) losses.
//!
//! Methods that weigh samples (self-regulated KD by significance, KD³ by teacher–student
//! disagreement) or drop them (participation gates, ignored pixels) must choose what the
//! weighted sum is divided by, and the choice changes the loss scale:
//!
//! - [`weighted_mean`] divides by the total weight `Σ w`: a true weighted average. Its scale does
//!   not depend on how many samples are kept or how large the weights are, but a sample's
//!   effective weight depends on the others in the batch.
//! - [`per_batch_mean`] divides by the batch size `B`: each sample's contribution is `w_b / B`
//!   whatever the other weights are, so down-weighting or dropping samples shrinks the loss
//!   (and its gradient) instead of re-normalising it away.
//! - [`masked_mean`] is the weighted mean for a boolean mask: the mean over the selected
//!   entries, with masked-out entries excluded even when they are NaN or infinite.
//!
//! An empty selection gives 0 (with a zero gradient), never the NaN of 0/0. Gradients flow to
//! the values and, when they require it, to float weights; detach weights that must act as
//! constants.

use tch::{Kind, Tensor};

use super::check;
use crate::{KdError, Result};

/// Smallest denominator of [`weighted_mean`], so an all-zero weight vector gives 0, not NaN.
pub const WEIGHT_EPS: f64 = 1e-12;

fn check_pair(op: &str, values: &Tensor, weights: &Tensor, w_name: &str) -> Result<()> {
    check::pair(op, "both [B]", 1, "values", values, w_name, weights)?;
    check::non_empty(op, "values", values)
}

/// Weighted average `Σ_b w_b v_b / max(Σ_b w_b, WEIGHT_EPS)`, a scalar.
///
/// `values`, `weights`: `[B]`, weights non-negative (not checked, to avoid a device sync).
/// Returns a 0-dim tensor in the units of `values`; 0 when all weights are 0.
pub fn weighted_mean(values: &Tensor, weights: &Tensor) -> Result<Tensor> {
    const OP: &str = "weighted_mean";
    check_pair(OP, values, weights, "weights")?;
    let kind = check::work_kind(&[values, weights]);
    let w = weights.to_kind(kind);
    let num = (values.to_kind(kind) * &w).sum(kind);
    Ok(num / w.sum(kind).clamp_min(WEIGHT_EPS))
}

/// Weighted sum over the batch size, `Σ_b w_b v_b / B`, a scalar.
///
/// `values`, `weights`: `[B]`. Returns a 0-dim tensor in the units of `values`. With all weights
/// 1 it is the plain mean; see the module docs for when to prefer it over [`weighted_mean`].
pub fn per_batch_mean(values: &Tensor, weights: &Tensor) -> Result<Tensor> {
    const OP: &str = "per_batch_mean";
    check_pair(OP, values, weights, "weights")?;
    let kind = check::work_kind(&[values, weights]);
    let b = values.size()[0] as f64;
    Ok((values.to_kind(kind) * weights.to_kind(kind)).sum(kind) / b)
}

/// Mean of `values` over the entries where `mask` is true, a scalar.
///
/// `values`: any shape, e.g. `[B]` or `[B, H, W]`; `mask`: a `Bool` tensor of the same shape.
/// Masked-out entries never reach the result (a NaN there is ignored). Returns a 0-dim tensor
/// in the units of `values`; 0 when nothing is selected.
pub fn masked_mean(values: &Tensor, mask: &Tensor) -> Result<Tensor> {
    const OP: &str = "masked_mean";
    check::pair(
        OP,
        "identical shapes",
        values.dim(),
        "values",
        values,
        "mask",
        mask,
    )?;
    if mask.kind() != Kind::Bool {
        return Err(KdError::invalid(format!(
            "{OP}: mask must be a Bool tensor, got {:?}; use weighted_mean for float weights",
            mask.kind()
        )));
    }
    let kind = check::work_kind(&[values]);
    let selected = values.to_kind(kind).masked_fill(&mask.logical_not(), 0.0);
    Ok(selected.sum(kind) / mask.sum(kind).clamp_min(1.0))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::losses::gradcheck::assert_shape_error;

    fn d(v: &[f64]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn hand_computed_values() {
        // v = [1, 2, 3, 4], w = [1, 0, 1, 2]: Σ w v = 1 + 0 + 3 + 8 = 12, Σ w = 4, B = 4.
        let (v, w) = (d(&[1.0, 2.0, 3.0, 4.0]), d(&[1.0, 0.0, 1.0, 2.0]));
        assert_eq!(weighted_mean(&v, &w).unwrap().double_value(&[]), 3.0); // 12 / 4
        assert_eq!(per_batch_mean(&v, &w).unwrap().double_value(&[]), 3.0); // 12 / 4 (B = 4)
        let w2 = d(&[0.5, 0.0, 0.0, 0.0]);
        assert_eq!(weighted_mean(&v, &w2).unwrap().double_value(&[]), 1.0); // 0.5 / 0.5
        assert_eq!(per_batch_mean(&v, &w2).unwrap().double_value(&[]), 0.125); // 0.5 / 4
                                                                               // Mask [T, F, T, F] selects 1 and 3: mean 2.
        let mask = Tensor::from_slice(&[true, false, true, false]);
        assert_eq!(masked_mean(&v, &mask).unwrap().double_value(&[]), 2.0);
    }

    #[test]
    fn empty_selection_is_zero_not_nan() {
        let v = d(&[1.0, f64::NAN]).set_requires_grad(true);
        let zeros = d(&[0.0, 0.0]);
        let none = Tensor::from_slice(&[false, false]);
        assert_eq!(
            weighted_mean(&d(&[1.0, 2.0]), &zeros).unwrap().double_value(&[]),
            0.0
        );
        let m = masked_mean(&v, &none).unwrap();
        assert_eq!(m.double_value(&[]), 0.0);
        // A NaN in a masked-out entry neither reaches the value nor the gradient.
        let some = Tensor::from_slice(&[true, false]);
        let m = masked_mean(&v, &some).unwrap();
        assert_eq!(m.double_value(&[]), 1.0);
        m.backward();
        assert_eq!(Vec::<f64>::try_from(v.grad()).unwrap(), vec![1.0, 0.0]);
    }

    #[test]
    fn unit_weights_give_plain_mean_and_weights_are_linear() {
        tch::manual_seed(50);
        let v = Tensor::randn([6], (Kind::Double, Device::Cpu));
        let ones = Tensor::ones([6], (Kind::Double, Device::Cpu));
        let mean = v.mean(Kind::Double).double_value(&[]);
        assert!((weighted_mean(&v, &ones).unwrap().double_value(&[]) - mean).abs() < 1e-14);
        assert!((per_batch_mean(&v, &ones).unwrap().double_value(&[]) - mean).abs() < 1e-14);
        // Scaling all weights re-normalises away in weighted_mean but not in per_batch_mean.
        let w = Tensor::rand([6], (Kind::Double, Device::Cpu));
        let wm = weighted_mean(&v, &w).unwrap().double_value(&[]);
        let wm3 = weighted_mean(&v, &(&w * 3.0)).unwrap().double_value(&[]);
        let pb = per_batch_mean(&v, &w).unwrap().double_value(&[]);
        let pb3 = per_batch_mean(&v, &(&w * 3.0)).unwrap().double_value(&[]);
        assert!((wm - wm3).abs() < 1e-12 && (pb3 - 3.0 * pb).abs() < 1e-12);
    }

    #[test]
    fn shape_and_mask_errors() {
        let v = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let w = Tensor::zeros([5], (Kind::Float, Device::Cpu));
        let v2 = Tensor::zeros([4, 2], (Kind::Float, Device::Cpu));
        assert_shape_error(weighted_mean(&v, &w), &v, &w);
        assert_shape_error(per_batch_mean(&v, &w), &v, &w);
        assert_shape_error(weighted_mean(&v2, &v2), &v2, &v2);
        let mask = Tensor::from_slice(&[true, false, true]);
        assert_shape_error(masked_mean(&v, &mask), &v, &mask);
        assert!(matches!(masked_mean(&v, &v), Err(KdError::Invalid(_))));
    }
}
