//! §7 properties 1–9 on single levels and on the loss kernel.

use tch::{Device, Kind, Tensor};

use super::*;
use crate::gdd_loss;

const NO_NOISE: NoiseKind = NoiseKind::None;
const SHARED: NoiseShape = NoiseShape::SharedAcrossChannels;

/// §7.1: no noise, identity generator and `A(S) = T` give zero loss, with and without adapter.
#[test]
fn zero_loss_at_identity() {
    let _g = seed_lock();
    tch::manual_seed(100);
    // C_s = C_t: no adapter, S = T.
    let (_vs, l) = level(5, 5, params(145.0, NO_NOISE, SHARED));
    identity_generator(&l);
    let t = Tensor::rand([2, 5, 6, 7], (Kind::Float, Device::Cpu)) * 3.0;
    let loss = scalar(&l.forward(&t, &t).unwrap());
    assert!(loss.abs() < 1e-6, "{loss}");

    // C_s = 6 ≠ C_t = 3: the adapter selects the first three channels, which equal T.
    let (_vs, l) = level(6, 3, params(145.0, NO_NOISE, SHARED));
    identity_generator(&l);
    let a = l.adapter().unwrap();
    let select = Tensor::eye(6, (Kind::Float, Device::Cpu))
        .narrow(0, 0, 3)
        .view([3, 6, 1, 1]);
    set(&a.ws, &select);
    set(
        a.bs.as_ref().unwrap(),
        &Tensor::zeros([3], (Kind::Float, Device::Cpu)),
    );
    let s = Tensor::rand([2, 6, 5, 5], (Kind::Float, Device::Cpu)) * 3.0;
    let t = s.narrow(1, 0, 3).copy();
    let loss = scalar(&l.forward(&s, &t).unwrap());
    assert!(loss.abs() < 1e-6, "{loss}");
    // The same level with noise on is no longer at zero: the noise really reaches the loss.
    let (_vs, noisy) = level(5, 5, params(145.0, NoiseKind::default(), SHARED));
    identity_generator(&noisy);
    let t = Tensor::rand([2, 5, 6, 7], (Kind::Float, Device::Cpu)) * 3.0 + 10.0;
    assert!(scalar(&noisy.forward(&t, &t).unwrap()) > 1e-3);
}

/// §7.2: the loss is non-negative for random inputs, generators and noise.
#[test]
fn loss_is_non_negative() {
    let _g = seed_lock();
    tch::manual_seed(101);
    for (c_s, c_t, hw) in [(4, 8, 5), (8, 8, 3), (3, 16, 7)] {
        for shape in [NoiseShape::SharedAcrossChannels, NoiseShape::PerChannel] {
            let (_vs, l) = level(c_s, c_t, params(175.0, NoiseKind::default(), shape));
            for _ in 0..3 {
                let s = randn(&[3, c_s, hw, hw]) * 2.0;
                let t = randn(&[3, c_t, hw, hw]) * 2.0;
                let loss = scalar(&l.forward(&s, &t).unwrap());
                assert!(loss >= 0.0 && loss.is_finite(), "{loss}");
            }
        }
    }
    for _ in 0..5 {
        let (f, t) = (randn(&[2, 3, 4, 4]), randn(&[2, 3, 4, 4]));
        assert!(scalar(&gdd_loss(&f, &t, 4.0).unwrap()) > 0.0);
    }
}

/// §7.3: a constant added per (b, c) to T or to F leaves the loss unchanged.
#[test]
fn per_channel_shifts_leave_the_loss_unchanged() {
    let _g = seed_lock();
    tch::manual_seed(102);
    let (f, t) = (randn(&[2, 4, 5, 5]), randn(&[2, 4, 5, 5]));
    let shift = randn(&[2, 4, 1, 1]) * 20.0;
    let base = scalar(&gdd_loss(&f, &t, 4.0).unwrap());
    let f_shift = scalar(&gdd_loss(&(&f + &shift), &t, 4.0).unwrap());
    let t_shift = scalar(&gdd_loss(&f, &(&t - &shift), 4.0).unwrap());
    assert!((f_shift - base).abs() <= 1e-5 * base && (t_shift - base).abs() <= 1e-5 * base);

    // Through a level: shifting the teacher map per (b, c), or the generator's output bias per
    // channel, with the same noise draw.
    let (_vs, l) = level(3, 4, params(145.0, NoiseKind::default(), SHARED));
    let s = randn(&[2, 3, 5, 5]);
    tch::manual_seed(7);
    let base = scalar(&l.forward(&s, &t).unwrap());
    tch::manual_seed(7);
    let shifted = scalar(&l.forward(&s, &(&t + &shift)).unwrap());
    assert!((shifted - base).abs() <= 1e-5 * base, "{shifted} vs {base}");
    let bias = l.generator().1.bs.as_ref().unwrap();
    set(bias, &(bias.detach() + 5.0 * randn(&[4])));
    tch::manual_seed(7);
    let bias_shifted = scalar(&l.forward(&s, &t).unwrap());
    assert!(
        (bias_shifted - base).abs() <= 1e-5 * base,
        "{bias_shifted} vs {base}"
    );
}

/// §7.4: duplicating the batch leaves the loss unchanged (it is divided by B·C).
#[test]
fn batch_duplication_leaves_the_loss_unchanged() {
    let _g = seed_lock();
    tch::manual_seed(103);
    let (_vs, l) = level(4, 6, params(145.0, NO_NOISE, SHARED));
    let (s, t) = (randn(&[2, 4, 5, 5]), randn(&[2, 6, 5, 5]));
    let once = scalar(&l.forward(&s, &t).unwrap());
    let twice = scalar(
        &l.forward(&Tensor::cat(&[&s, &s], 0), &Tensor::cat(&[&t, &t], 0))
            .unwrap(),
    );
    assert!(
        once > 0.0 && (once - twice).abs() <= 1e-5 * once,
        "{once} vs {twice}"
    );
    // Doubling the channels (teacher and generated map alike) does not change it either.
    let (f, tt) = (randn(&[2, 3, 4, 4]), randn(&[2, 3, 4, 4]));
    let a = scalar(&gdd_loss(&f, &tt, 4.0).unwrap());
    let b = scalar(&gdd_loss(&Tensor::cat(&[&f, &f], 1), &Tensor::cat(&[&tt, &tt], 1), 4.0).unwrap());
    assert!((a - b).abs() <= 1e-5 * a);
}

/// §7.5: linear in α; with identity generator and no noise it is τ² times the mean
/// per-channel KL, computed here by hand in double precision.
#[test]
fn loss_scales_with_alpha_and_matches_the_hand_computed_kl() {
    let _g = seed_lock();
    let build = |alpha: f64| {
        tch::manual_seed(104);
        level(3, 5, params(alpha, NoiseKind::default(), SHARED))
    };
    let ((_v1, one), (_v2, many)) = (build(1.0), build(145.0));
    let (s, t) = (randn(&[2, 3, 4, 4]), randn(&[2, 5, 4, 4]));
    tch::manual_seed(8);
    let l1 = scalar(&one.forward(&s, &t).unwrap());
    tch::manual_seed(8);
    let l145 = scalar(&many.forward(&s, &t).unwrap());
    assert!(
        l1 > 0.0 && (l145 - 145.0 * l1).abs() <= 1e-5 * l145,
        "{l145} vs 145 · {l1}"
    );

    let (tau, alpha) = (3.0, 2.5);
    let (_vs, l) = level(
        4,
        4,
        LevelParams {
            tau,
            alpha,
            noise: NoiseKind::None,
            noise_shape: SHARED,
        },
    );
    identity_generator(&l);
    let f = Tensor::rand([2, 4, 3, 3], (Kind::Float, Device::Cpu)) * 4.0;
    let t = randn(&[2, 4, 3, 3]) * 2.0;
    let got = scalar(&l.forward(&f, &t).unwrap());
    // Hand computation: softmax over the 9 positions of each (b, c), KL, mean over (b, c).
    let fv = Vec::<f32>::try_from(f.flatten(0, -1)).unwrap();
    let tv = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
    let softmax = |xs: &[f32]| -> Vec<f64> {
        let m = xs.iter().fold(f64::MIN, |a, &x| a.max(x as f64 / tau));
        let e: Vec<f64> = xs.iter().map(|&x| (x as f64 / tau - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|v| v / z).collect()
    };
    let mut kl_sum = 0.0;
    for (fc, tc) in fv.chunks(9).zip(tv.chunks(9)) {
        let (q, p) = (softmax(fc), softmax(tc));
        kl_sum += p.iter().zip(&q).map(|(p, q)| p * (p.ln() - q.ln())).sum::<f64>();
    }
    let expected = alpha * tau * tau * kl_sum / 8.0;
    assert!((got - expected).abs() <= 1e-5 * expected, "{got} vs {expected}");
}

/// §7.6 (level part): a teacher map that requires grad receives none; the student, the
/// adapter and both generator convolutions do.
#[test]
fn the_teacher_map_gets_no_gradient() {
    let _g = seed_lock();
    tch::manual_seed(105);
    let (vs, l) = level(3, 6, params(145.0, NoiseKind::default(), SHARED));
    let s = randn(&[2, 3, 4, 4]).set_requires_grad(true);
    let t = randn(&[2, 6, 4, 4]).set_requires_grad(true);
    l.forward(&s, &t).unwrap().backward();
    assert!(!t.grad().defined());
    assert!(scalar(&s.grad().abs().sum(Kind::Float)) > 0.0);
    let vars = vs.variables();
    assert_eq!(vars.len(), 6, "{:?}", vars.keys());
    for (name, v) in vars {
        let g = v.grad();
        assert!(g.defined() && scalar(&g.abs().sum(Kind::Float)) > 0.0, "{name}");
    }
}

/// §7.7: the default noise is one `[B, 1, H, W]` map broadcast to every channel; per-channel
/// noise differs across channels; seeds decide the draw.
#[test]
fn noise_shape_broadcast_and_seeding() {
    let _g = seed_lock();
    tch::manual_seed(106);
    let (_vs, shared) = level(3, 4, params(145.0, NoiseKind::default(), SHARED));
    let s = randn(&[2, 3, 5, 6]);
    let a = shared.adapt(&s).unwrap();
    assert_eq!(shared.noise_like(&a).unwrap().size(), [2, 1, 5, 6]);
    let eps = shared.perturb(&s).unwrap() - &a;
    let first = eps.narrow(1, 0, 1);
    assert!(
        scalar(&(&eps - &first).abs().max()) < 1e-6,
        "noise differs across channels"
    );
    assert!(scalar(&first.abs().sum(Kind::Float)) > 0.0);

    let (_vs, per) = level(3, 4, params(145.0, NoiseKind::default(), NoiseShape::PerChannel));
    let a = per.adapt(&s).unwrap();
    assert_eq!(per.noise_like(&a).unwrap().size(), [2, 4, 5, 6]);
    let eps = per.perturb(&s).unwrap() - &a;
    assert!(scalar(&(&eps - eps.narrow(1, 0, 1)).abs().max()) > 1e-3);

    let t = randn(&[2, 4, 5, 6]);
    let at = |seed: i64| {
        tch::manual_seed(seed);
        scalar(&shared.forward(&s, &t).unwrap())
    };
    assert_eq!(at(1), at(1));
    assert_ne!(at(1), at(2));

    // The draws follow the configured distribution.
    let big = Tensor::zeros([4, 8, 64, 64], (Kind::Float, Device::Cpu));
    let (_vs, g) = level(
        8,
        8,
        params(1.0, NoiseKind::Gaussian { std: 2.0 }, NoiseShape::PerChannel),
    );
    let n = g.noise_like(&big).unwrap();
    assert!((scalar(&n.std(true)) - 2.0).abs() < 0.05 && scalar(&n.mean(Kind::Float)).abs() < 0.05);
    let uniform = NoiseKind::Uniform { low: -0.5, high: 1.5 };
    let (_vs, u) = level(8, 8, params(1.0, uniform, NoiseShape::PerChannel));
    let n = u.noise_like(&big).unwrap();
    assert!(scalar(&n.min()) >= -0.5 && scalar(&n.max()) < 1.5);
    assert!((scalar(&n.mean(Kind::Float)) - 0.5).abs() < 0.05);
    let (_vs, none) = level(8, 8, params(1.0, NoiseKind::None, SHARED));
    assert!(none.noise_like(&big).is_none());
}

/// §7.8: the adapter exists iff `C_s ≠ C_t`; the generated map has `C_t` channels.
#[test]
fn adapter_exists_iff_channels_differ() {
    // Builds modules, so it draws from libtorch's process-wide generator: under the lock, so
    // it cannot move another test's seeded draws.
    let _g = seed_lock();
    for (c_s, c_t) in [(4, 8), (8, 4), (6, 6)] {
        let (vs, l) = level(c_s, c_t, params(145.0, NoiseKind::default(), SHARED));
        assert_eq!(l.has_adapter(), c_s != c_t);
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert_eq!(
            names.iter().any(|n| n.starts_with("gdd.align.")),
            c_s != c_t,
            "{names:?}"
        );
        assert!(names.contains(&"gdd.generation.0.weight".to_string()));
        assert!(names.contains(&"gdd.generation.2.bias".to_string()));
        if let Some(a) = l.adapter() {
            assert_eq!(a.ws.size(), [c_t, c_s, 1, 1]);
            assert!(a.bs.is_some());
        }
        assert_eq!(l.generator().0.ws.size(), [c_t, c_t, 3, 3]);
        let f = l.generate(&randn(&[2, c_s, 3, 3])).unwrap();
        assert_eq!(f.size(), [2, c_t, 3, 3]);
        assert_eq!((l.in_channels(), l.out_channels()), (c_s, c_t));
    }
}

/// §7.9: a spatial, batch or channel mismatch is an error naming both shapes, not a resize.
#[test]
fn mismatched_maps_are_errors() {
    // Builds modules, so it draws from libtorch's process-wide generator: under the lock, so
    // it cannot move another test's seeded draws.
    let _g = seed_lock();
    let (_vs, l) = level(4, 8, params(145.0, NoiseKind::default(), SHARED));
    let s = randn(&[2, 4, 8, 8]);
    for t_shape in [[2, 8, 4, 4], [2, 8, 8, 7], [3, 8, 8, 8], [2, 6, 8, 8]] {
        let t = randn(&t_shape);
        let msg = match l.forward(&s, &t) {
            Err(e @ kd_core::KdError::Shape { .. }) => e.to_string(),
            other => panic!("expected a shape error for {t_shape:?}, got {other:?}"),
        };
        assert!(
            msg.contains("[2, 4, 8, 8]") && msg.contains(&format!("{t_shape:?}")),
            "{msg}"
        );
    }
    let wrong_student = randn(&[2, 5, 8, 8]);
    let err = l.forward(&wrong_student, &randn(&[2, 8, 8, 8])).unwrap_err();
    assert!(matches!(err, kd_core::KdError::BadShape { .. }) && err.to_string().contains("[2, 5, 8, 8]"));
    assert!(gdd_loss(&randn(&[2, 3, 4, 4]), &randn(&[2, 3, 2, 8]), 4.0).is_err());
    let bad = LevelParams {
        tau: 0.0,
        ..params(1.0, NoiseKind::None, SHARED)
    };
    let vs = nn::VarStore::new(Device::Cpu);
    assert!(GddLevel::new(&vs.root(), 4, 4, bad)
        .unwrap_err()
        .to_string()
        .contains("tau"));
}
