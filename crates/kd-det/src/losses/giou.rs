//! The GIoU box loss: `1 − GIoU` of predicted and target boxes. Unlike a coordinate L1 loss it
//! is invariant to the box's scale, so boxes of every pyramid level weigh alike.

use tch::Tensor;

use crate::boxes::giou_aligned;
use kd_core::{KdError, Result};

/// `Σ_i w_i · (1 − GIoU(pred_i, target_i))`, **summed** over the pairs (the caller normalises).
///
/// `pred`, `target` `[N, 4]` xyxy pixels; `weight` `[N]` per-pair weights (all 1 when `None`).
/// Returns a 0-dim tensor in `[0, 2·Σw]`; 0 for `N = 0`. Differentiable in `pred` everywhere
/// (areas and the enclosing box are clamped, never divided by zero).
pub fn giou_loss(pred: &Tensor, target: &Tensor, weight: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "giou_loss";
    let per_pair: Tensor = 1.0 - giou_aligned(pred, target)?;
    match weight {
        None => Ok(per_pair.sum(per_pair.kind())),
        Some(w) => {
            if w.size() != [pred.size()[0]] {
                return Err(KdError::Shape {
                    op: format!("{OP} (expected pred [N, 4] and weight [N])"),
                    left_name: "pred".into(),
                    left: pred.size(),
                    right_name: "weight".into(),
                    right: w.size(),
                });
            }
            Ok((per_pair * w).sum(pred.kind()))
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use kd_core::losses::gradcheck::{assert_gradients, assert_shape_error};

    #[test]
    fn matches_the_closed_form() {
        // Pair 0: [0,0,2,2] vs [1,0,3,2]: I = 2, U = 6, C = 6 → GIoU = 1/3, loss 2/3.
        // Pair 1: [0,0,1,1] vs [2,0,3,1]: I = 0, U = 2, C = 3 → GIoU = −1/3, loss 4/3.
        // Pair 2: identical → loss 0.
        let p = Tensor::from_slice(&[0.0f64, 0., 2., 2., 0., 0., 1., 1., 5., 5., 7., 9.]).view([3, 4]);
        let t = Tensor::from_slice(&[1.0f64, 0., 3., 2., 2., 0., 3., 1., 5., 5., 7., 9.]).view([3, 4]);
        let sum = giou_loss(&p, &t, None).unwrap().double_value(&[]);
        assert!((sum - 2.0).abs() < 1e-9, "{sum}");
        let w = Tensor::from_slice(&[0.5f64, 2.0, 3.0]);
        let weighted = giou_loss(&p, &t, Some(&w)).unwrap().double_value(&[]);
        assert!(
            (weighted - (0.5 * 2.0 / 3.0 + 2.0 * 4.0 / 3.0)).abs() < 1e-9,
            "{weighted}"
        );
        let e = Tensor::zeros([0, 4], (Kind::Double, Device::Cpu));
        assert_eq!(giou_loss(&e, &e, None).unwrap().double_value(&[]), 0.0);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // Overlapping and disjoint pairs, away from the kinks of min/max.
        let p = Tensor::from_slice(&[0.1f64, 0.2, 2.3, 2.1, 0.0, 0.3, 1.2, 1.1]).view([2, 4]);
        let t = Tensor::from_slice(&[1.0f64, -0.4, 3.1, 1.7, 2.0, 0.0, 3.5, 1.6]).view([2, 4]);
        let w = Tensor::from_slice(&[0.7f64, 1.3]);
        assert_gradients("giou", &[p, t, w], &[0], |v| giou_loss(&v[0], &v[1], Some(&v[2])));
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let a = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
        assert_shape_error(giou_loss(&a, &b, None), &a, &b);
        let w = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        assert_shape_error(giou_loss(&a, &a, Some(&w)), &a, &w);
    }
}
