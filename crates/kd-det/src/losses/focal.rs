//! Sigmoid focal loss: a per-class binary cross-entropy whose easy examples are down-weighted
//! by `(1 − p_t)^γ`, so the many easy background points of a dense detector do not dominate.

use tch::{Reduction, Tensor};

use kd_core::losses::check;
use kd_core::{KdError, Result};

/// `Σ_{n,k} α_t (1 − p_t)^γ · BCE(x_{nk}, t_{nk})` with `p = σ(x)`, `p_t = p·t + (1 − p)(1 − t)`
/// and `α_t = α·t + (1 − α)(1 − t)` (Lin et al., ICCV 2017), **summed** over all entries.
///
/// `logits` `[N, K]`, `targets` `[N, K]` one-hot (a background row is all zeros; soft targets
/// in `[0, 1]` also work). The caller normalises, e.g. by the number of positives. Returns a
/// 0-dim tensor in nats (0 for `N = 0`). `alpha` in `[0, 1]` (0.25 for FCOS/RetinaNet),
/// `gamma ≥ 0` (2.0). Computed from logits (`binary_cross_entropy_with_logits`), so it stays
/// finite for any logit.
pub fn sigmoid_focal_loss(logits: &Tensor, targets: &Tensor, alpha: f64, gamma: f64) -> Result<Tensor> {
    const OP: &str = "sigmoid_focal_loss";
    check::pair(OP, "[N, K]", 2, "logits", logits, "targets", targets)?;
    if !(0.0..=1.0).contains(&alpha) {
        return Err(KdError::invalid(format!(
            "{OP}: alpha must lie in [0, 1], got {alpha}"
        )));
    }
    if !(gamma.is_finite() && gamma >= 0.0) {
        return Err(KdError::invalid(format!(
            "{OP}: gamma must be finite and >= 0, got {gamma}"
        )));
    }
    let kind = check::work_kind(&[logits, targets]);
    let (x, t) = (logits.to_kind(kind), targets.to_kind(kind));
    let p = x.sigmoid();
    let ce = x.binary_cross_entropy_with_logits::<Tensor>(&t, None, None, Reduction::None);
    // 1 − p_t = p(1 − t) + (1 − p)t.
    let one_minus_pt: Tensor = &p * (1.0 - &t) + (1.0 - &p) * &t;
    let alpha_t: Tensor = &t * alpha + (1.0 - &t) * (1.0 - alpha);
    Ok((alpha_t * one_minus_pt.pow_tensor_scalar(gamma) * ce).sum(kind))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use kd_core::losses::gradcheck::{assert_gradients, assert_shape_error};

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn matches_the_closed_form_on_a_2x2_case() {
        // Row 0 is class 1, row 1 background.
        let x = [0.5f64, -1.0, 2.0, -3.0];
        let t = [0.0f64, 1.0, 0.0, 0.0];
        let (alpha, gamma) = (0.25, 2.0);
        let mut expected = 0.0;
        for (&xi, &ti) in x.iter().zip(&t) {
            let p = sigmoid(xi);
            expected += if ti == 1.0 {
                -alpha * (1.0 - p).powi(2) * p.ln()
            } else {
                -(1.0 - alpha) * p.powi(2) * (1.0 - p).ln()
            };
        }
        let got = sigmoid_focal_loss(
            &Tensor::from_slice(&x).view([2, 2]),
            &Tensor::from_slice(&t).view([2, 2]),
            alpha,
            gamma,
        )
        .unwrap()
        .double_value(&[]);
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        // γ = 0, α = 0.5 is half the plain binary cross-entropy.
        let bce: f64 = x
            .iter()
            .zip(&t)
            .map(|(&xi, &ti)| -(ti * sigmoid(xi).ln() + (1.0 - ti) * (1.0 - sigmoid(xi)).ln()))
            .sum();
        let half = sigmoid_focal_loss(
            &Tensor::from_slice(&x).view([2, 2]),
            &Tensor::from_slice(&t).view([2, 2]),
            0.5,
            0.0,
        )
        .unwrap()
        .double_value(&[]);
        assert!((half - 0.5 * bce).abs() < 1e-12);
    }

    #[test]
    fn stays_finite_for_extreme_logits_and_empty_input() {
        let x = Tensor::from_slice(&[100.0f32, -100.0]).view([1, 2]);
        let t = Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2]);
        let v = sigmoid_focal_loss(&x, &t, 0.25, 2.0).unwrap().double_value(&[]);
        assert!(v.is_finite() && v > 0.0);
        let e = Tensor::zeros([0, 3], (Kind::Float, Device::Cpu));
        assert_eq!(
            sigmoid_focal_loss(&e, &e, 0.25, 2.0).unwrap().double_value(&[]),
            0.0
        );
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let x = Tensor::from_slice(&[0.3f64, -1.2, 2.0, 0.1, -0.4, 1.5]).view([2, 3]);
        let t = Tensor::from_slice(&[0.0f64, 1.0, 0.0, 0.0, 0.0, 1.0]).view([2, 3]);
        assert_gradients("focal", &[x, t], &[0], |v| {
            sigmoid_focal_loss(&v[0], &v[1], 0.25, 2.0)
        });
    }

    #[test]
    fn rejects_mismatched_shapes_and_bad_settings() {
        let a = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        assert_shape_error(sigmoid_focal_loss(&a, &b, 0.25, 2.0), &a, &b);
        assert!(sigmoid_focal_loss(&a, &a, 1.5, 2.0)
            .unwrap_err()
            .to_string()
            .contains("alpha"));
        assert!(sigmoid_focal_loss(&a, &a, 0.25, -1.0)
            .unwrap_err()
            .to_string()
            .contains("gamma"));
    }
}
