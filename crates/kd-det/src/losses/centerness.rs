//! Centre-ness: how close a point lies to the centre of the box it regresses. FCOS predicts it
//! to down-weight the low-quality boxes of points far from an object's centre, both in the box
//! loss (as a weight) and at test time (as a factor of the score).

use tch::{Reduction, Tensor};

use kd_core::losses::check;
use kd_core::{KdError, Result};

/// Centre-ness targets `[P]` `sqrt(min(l, r)/max(l, r) · min(t, b)/max(t, b))` of positive
/// points' distance targets `ltrb` `[P, 4]` (pixels, all > 0 for a point inside its box). In
/// `[0, 1]`, 1 at the box centre; a zero denominator gives 0.
pub fn centerness_targets(ltrb: &Tensor) -> Result<Tensor> {
    let s = ltrb.size();
    if s.len() != 2 || s[1] != 4 {
        return Err(KdError::BadShape {
            op: "centerness_targets".into(),
            name: "ltrb".into(),
            shape: s,
            expected: "[P, 4] (l, t, r, b)".into(),
        });
    }
    let (l, t, r, b) = (
        ltrb.select(1, 0),
        ltrb.select(1, 1),
        ltrb.select(1, 2),
        ltrb.select(1, 3),
    );
    let lr = l.minimum(&r) / l.maximum(&r).clamp_min(1e-12);
    let tb = t.minimum(&b) / t.maximum(&b).clamp_min(1e-12);
    Ok((lr * tb).clamp_min(0.0).sqrt())
}

/// Mean binary cross-entropy (nats) of centre-ness logits `[P]` against targets `[P]` in
/// `[0, 1]`. With no positive point (`P = 0`) returns `logits.sum()`: 0, but still part of the
/// graph, as MMDetection does.
pub fn centerness_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    const OP: &str = "centerness_loss";
    check::pair(OP, "[P]", 1, "logits", logits, "targets", targets)?;
    let kind = check::work_kind(&[logits, targets]);
    if logits.size()[0] == 0 {
        return Ok(logits.to_kind(kind).sum(kind));
    }
    Ok(logits.to_kind(kind).binary_cross_entropy_with_logits::<Tensor>(
        &targets.to_kind(kind),
        None,
        None,
        Reduction::Mean,
    ))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use kd_core::losses::gradcheck::{assert_gradients, assert_shape_error};

    #[test]
    fn targets_are_one_at_the_centre_and_fall_off() {
        let ltrb = Tensor::from_slice(&[2.0f64, 3.0, 2.0, 3.0, 1.0, 3.0, 4.0, 1.0]).view([2, 4]);
        let c = Vec::<f64>::try_from(centerness_targets(&ltrb).unwrap()).unwrap();
        assert!((c[0] - 1.0).abs() < 1e-12);
        assert!((c[1] - (0.25f64 * (1.0 / 3.0)).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn loss_is_the_mean_bce_and_zero_without_positives() {
        let x = Tensor::from_slice(&[0.5f64, -1.0]);
        let t = Tensor::from_slice(&[1.0f64, 0.25]);
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        let expected = (-(s(0.5)).ln() - (0.25 * s(-1.0).ln() + 0.75 * (1.0 - s(-1.0)).ln())) / 2.0;
        let got = centerness_loss(&x, &t).unwrap().double_value(&[]);
        assert!((got - expected).abs() < 1e-12);
        let e = Tensor::zeros([0], (Kind::Float, Device::Cpu));
        assert_eq!(centerness_loss(&e, &e).unwrap().double_value(&[]), 0.0);
        assert_gradients("ctr", &[x, t], &[0], |v| centerness_loss(&v[0], &v[1]));
        let a = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        assert_shape_error(centerness_loss(&a, &e), &a, &e);
    }
}
