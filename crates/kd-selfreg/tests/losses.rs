//! The loss properties of the spec (§7.5–7.7): masked samples get exactly zero gradient, the
//! variants reduce to one another in the documented limits, and the weighted mean ignores the
//! scale of the significance.

use kd_selfreg::{
    participation_mask, variant_weights, weighted_kd_terms, ConfidenceMeasure, Normalisation, StudentConfig,
    Variant,
};
use tch::{Device, Kind, Tensor};

const B: i64 = 6;

fn logits(seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([B, 4], (Kind::Double, Device::Cpu)) * 2.0
}

fn labels() -> Tensor {
    Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1])
}

/// Sum of both terms for `variant` with significance `s` and student gate `m`.
fn loss(variant: Variant, norm: Normalisation, s: &Tensor, m: &Tensor, zs: &Tensor, zt: &Tensor) -> Tensor {
    let cfg = StudentConfig {
        normalisation: norm,
        ..StudentConfig::new(variant)
    };
    let w = variant_weights(variant, Some(s), Some(m), B, Device::Cpu).unwrap();
    let (ce, kd) = weighted_kd_terms(zs, Some(zt), &labels(), &w, &cfg).unwrap();
    ce + kd.unwrap()
}

fn value(t: &Tensor) -> f64 {
    t.double_value(&[])
}

#[test]
fn masked_samples_get_exactly_zero_gradient() {
    let zt = logits(1);
    let s = Tensor::from_slice(&[0.5f32, 0.0, 1.0, 0.25, 0.0, 0.75]);
    let m = Tensor::from_slice(&[true, true, false, true, false, true]);
    for variant in [Variant::Sbd, Variant::Rd, Variant::Hd] {
        for norm in [Normalisation::WeightedMean, Normalisation::PerBatch] {
            let zs = logits(2).set_requires_grad(true);
            loss(variant, norm, &s, &m, &zs, &zt).backward();
            let g = zs.grad();
            let w = variant_weights(variant, Some(&s), Some(&m), B, Device::Cpu).unwrap();
            for b in 0..B {
                let row = g.get(b).abs().sum(Kind::Double).double_value(&[]);
                if w.double_value(&[b]) == 0.0 {
                    assert_eq!(row, 0.0, "{variant:?} {norm:?} sample {b}");
                } else {
                    assert!(row > 0.0, "{variant:?} {norm:?} sample {b} must learn");
                }
            }
        }
    }
}

#[test]
fn teacher_masked_ce_gives_zero_gradient_to_skipped_samples() {
    // A confident, correct first row is skipped by the gate; the rest take part.
    let z = Tensor::from_slice(&[9.0f64, 0., 0., 0., 0., 0.1, 0., 0., 0., 0., 9., 0.])
        .view([3, 4])
        .set_requires_grad(true);
    let y = Tensor::from_slice(&[0i64, 1, 0]);
    let m = participation_mask(&z, &y, ConfidenceMeasure::TrueClass, Some(0.9)).unwrap();
    assert_eq!(Vec::<bool>::try_from(&m).unwrap(), [false, true, true]);
    let ce = kd_core::losses::cross_entropy_per_sample(&z, &y).unwrap();
    let l = kd_selfreg::reduce(&ce, &m.to_kind(Kind::Double), Normalisation::WeightedMean).unwrap();
    l.backward();
    let g = z.grad();
    assert_eq!(g.get(0).abs().sum(Kind::Double).double_value(&[]), 0.0);
    assert!(g.get(1).abs().sum(Kind::Double).double_value(&[]) > 0.0);
    // The mean over the two participants.
    let want = (ce.double_value(&[1]) + ce.double_value(&[2])) / 2.0;
    assert!((value(&l) - want).abs() < 1e-12);
}

#[test]
fn variants_reduce_to_each_other() {
    let (zs, zt) = (logits(3), logits(4));
    let ones = Tensor::ones([B], (Kind::Float, Device::Cpu));
    let all = Tensor::ones([B], (Kind::Bool, Device::Cpu));
    let s = Tensor::from_slice(&[0.5f32, 0.1, 1.0, 0.25, 0.3, 0.75]);
    let m = Tensor::from_slice(&[true, false, false, true, true, true]);
    for norm in [Normalisation::WeightedMean, Normalisation::PerBatch] {
        let kd = value(&loss(Variant::Kd, norm, &ones, &all, &zs, &zt));
        // Standard KD is the plain Hinton loss.
        let hinton = kd_core::losses::KdMix { tau: 4.0, alpha: 0.9 }
            .loss(&zs, &zt, &labels())
            .unwrap();
        assert!((kd - value(&hinton)).abs() < 1e-12, "{norm:?}");
        // SBD with all s = 1 is KD; RD with β_S = 1 (an all-true gate) is KD.
        assert!((value(&loss(Variant::Sbd, norm, &ones, &all, &zs, &zt)) - kd).abs() < 1e-12);
        assert!((value(&loss(Variant::Rd, norm, &ones, &all, &zs, &zt)) - kd).abs() < 1e-12);
        // HD with all s = 1 is RD; HD with an all-true gate is SBD.
        let rd = value(&loss(Variant::Rd, norm, &s, &m, &zs, &zt));
        assert!((value(&loss(Variant::Hd, norm, &ones, &m, &zs, &zt)) - rd).abs() < 1e-12);
        let sbd = value(&loss(Variant::Sbd, norm, &s, &m, &zs, &zt));
        assert!((value(&loss(Variant::Hd, norm, &s, &all, &zs, &zt)) - sbd).abs() < 1e-12);
        assert!((sbd - kd).abs() > 1e-6, "significance must change the loss");
    }
    // The β_S = 1 gate really is all-true, even on saturated logits.
    let sat = Tensor::from_slice(&[50f32, 0., 0., 0.]).view([1, 4]);
    let m1 = participation_mask(
        &sat,
        &Tensor::from_slice(&[0i64]),
        ConfidenceMeasure::TrueClass,
        Some(1.0),
    )
    .unwrap();
    assert!(m1.all().int64_value(&[]) == 1);
}

#[test]
fn weighted_mean_ignores_the_scale_of_significance() {
    let (zs, zt) = (logits(5), logits(6));
    let s = Tensor::from_slice(&[0.5f32, 0.1, 1.0, 0.25, 0.0, 0.75]);
    let m = Tensor::from_slice(&[true, false, true, true, true, true]);
    for variant in [Variant::Sbd, Variant::Hd] {
        let a = value(&loss(variant, Normalisation::WeightedMean, &s, &m, &zs, &zt));
        let b = value(&loss(
            variant,
            Normalisation::WeightedMean,
            &(&s * 7.0),
            &m,
            &zs,
            &zt,
        ));
        // Weights are fp32, so equal up to fp32 rounding of the weights.
        assert!((a - b).abs() < 1e-6 * a.abs(), "{variant:?}: {a} vs {b}");
        // Per-batch normalisation scales with it instead.
        let c = value(&loss(variant, Normalisation::PerBatch, &s, &m, &zs, &zt));
        let d = value(&loss(variant, Normalisation::PerBatch, &(&s * 7.0), &m, &zs, &zt));
        assert!((d - 7.0 * c).abs() < 1e-6 * d.abs(), "{variant:?}");
    }
}

#[test]
fn missing_inputs_are_errors() {
    assert!(variant_weights(Variant::Sbd, None, None, B, Device::Cpu).is_err());
    assert!(variant_weights(Variant::Rd, None, None, B, Device::Cpu).is_err());
    let short = Tensor::ones([B - 1], (Kind::Float, Device::Cpu));
    let msg = variant_weights(Variant::Sbd, Some(&short), None, B, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[5]") && msg.contains("[6]"), "{msg}");
    let bad = StudentConfig {
        alpha: 1.5,
        ..StudentConfig::new(Variant::Kd)
    };
    assert!(bad.validate().is_err());
}
