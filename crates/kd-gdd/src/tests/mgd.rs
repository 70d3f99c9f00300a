//! MGD: the loss in closed form, the mask's statistics, gradients, the configuration and the
//! distiller's terms on the segmentation pair.

use kd_core::distill::Distiller;
use kd_core::losses::gradcheck::{assert_gradients, assert_shape_error};
use kd_core::losses::CwdConfig;
use tch::{nn, Device, Kind, Tensor};

use super::distiller::{batch, loss, names, term, Pair, K};
use super::{scalar, seed_lock, set};
use crate::{mgd_loss, GddLevelSpec, Mgd, MgdConfig, MgdLevel};

fn map(values: &[f64], shape: [i64; 4]) -> Tensor {
    Tensor::from_slice(values).view(shape).to_kind(Kind::Float)
}

#[test]
fn the_loss_is_the_squared_error_summed_and_divided_by_the_batch() {
    // Sample 0: (1 − 0)² + (2 − 0)² = 5; sample 1: (3 − 1)² + (−1 − 1)² = 8. (5 + 8) / 2.
    let g = map(&[1.0, 2.0, 3.0, -1.0], [2, 1, 1, 2]);
    let t = map(&[0.0, 0.0, 1.0, 1.0], [2, 1, 1, 2]);
    assert!((scalar(&mgd_loss(&g, &t).unwrap()) - 6.5).abs() < 1e-6);
    let wrong = Tensor::zeros([2, 1, 2, 1], (Kind::Float, Device::Cpu));
    assert_shape_error(mgd_loss(&g, &wrong), &g, &wrong);
}

/// A 1-channel level whose generator is `relu` (centre-tap identity kernels, zero biases).
fn relu_level(alpha: f64, lambda: f64) -> (nn::VarStore, MgdLevel) {
    let vs = nn::VarStore::new(Device::Cpu);
    let l = MgdLevel::new(&(vs.root() / "mgd"), 1, 1, alpha, lambda).unwrap();
    let k = Tensor::zeros([1, 1, 3, 3], (Kind::Float, Device::Cpu));
    let _ = k.narrow(2, 1, 1).narrow(3, 1, 1).fill_(1.0);
    let (g1, g2) = l.generator().convs();
    for conv in [g1, g2] {
        set(&conv.ws, &k);
        set(conv.bs.as_ref().unwrap(), &conv.bs.as_ref().unwrap().zeros_like());
    }
    (vs, l)
}

#[test]
fn a_level_masks_generates_and_weights_as_released() {
    // s = [[1, −2], [3, 4]], mask keeps all but (1, 0), G = relu, T = 0:
    // relu(s ⊙ M) = [[1, 0], [0, 4]] → Σ² = 17, B = 1, α = 0.5 → 8.5.
    let (_vs, l) = relu_level(0.5, 0.75);
    assert!(l.generator().adapter().is_none());
    let s = map(&[1.0, -2.0, 3.0, 4.0], [1, 1, 2, 2]);
    let t = Tensor::zeros([1, 1, 2, 2], (Kind::Float, Device::Cpu));
    let m = map(&[1.0, 1.0, 0.0, 1.0], [1, 1, 2, 2]);
    let got = scalar(&l.forward_with_mask(&s, &t, &m).unwrap());
    assert!((got - 8.5).abs() < 1e-6, "{got}");
    let bad = Tensor::ones([1, 2, 2, 2], (Kind::Float, Device::Cpu));
    assert!(l
        .forward_with_mask(&s, &t, &bad)
        .unwrap_err()
        .to_string()
        .contains("mask"));
    let t_wrong = Tensor::zeros([1, 1, 3, 2], (Kind::Float, Device::Cpu));
    assert_shape_error(l.forward(&s, &t_wrong), &s, &t_wrong);
}

#[test]
fn the_mask_hides_a_fraction_lambda_of_the_positions_shared_by_channels() {
    let _g = seed_lock();
    tch::manual_seed(300);
    let like = Tensor::zeros([2, 7, 150, 150], (Kind::Float, Device::Cpu));
    for lambda in [0.65, 0.75] {
        let (_vs, l) = relu_level(1.0, lambda);
        let m = l.draw_mask(&like);
        assert_eq!(m.size(), [2, 1, 150, 150]);
        let kept = scalar(&m.mean(Kind::Float));
        // 45 000 positions: the standard error of the kept fraction is about 0.002.
        assert!((kept - (1.0 - lambda)).abs() < 0.01, "λ = {lambda}: kept {kept}");
        assert_eq!(
            scalar(&(&m * (m.ones_like() - &m)).abs().sum(Kind::Float)),
            0.0,
            "not 0/1"
        );
    }
    let (_vs, none) = relu_level(1.0, 0.0);
    assert_eq!(scalar(&none.draw_mask(&like).mean(Kind::Float)), 1.0);
    let (_vs, all) = relu_level(1.0, 1.0);
    assert_eq!(scalar(&all.draw_mask(&like).sum(Kind::Float)), 0.0);
}

#[test]
fn gradients_reach_the_student_adapter_and_generator_as_finite_differences_say() {
    let _g = seed_lock();
    tch::manual_seed(301);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let l = MgdLevel::new(&(vs.root() / "mgd"), 2, 3, 0.3, 0.5).unwrap();
    vs.double();
    let s = Tensor::randn([2, 2, 3, 3], (Kind::Double, Device::Cpu));
    let t = Tensor::randn([2, 3, 3, 3], (Kind::Double, Device::Cpu));
    let m = l.draw_mask(&s);
    assert_gradients("mgd level", &[s, t], &[0], |x| {
        l.forward_with_mask(&x[0], &x[1], &m)
    });
    let t = Tensor::randn([2, 3, 3, 3], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let s = Tensor::randn([2, 2, 3, 3], (Kind::Double, Device::Cpu));
    l.forward_with_mask(&s, &t, &Tensor::ones([2, 1, 3, 3], (Kind::Double, Device::Cpu)))
        .unwrap()
        .backward();
    assert!(!t.grad().defined(), "the teacher got a gradient");
    let vars = vs.variables();
    for name in [
        "mgd.align.weight",
        "mgd.generation.0.weight",
        "mgd.generation.2.bias",
    ] {
        assert!(scalar(&vars[name].grad().abs().sum(Kind::Double)) > 0.0, "{name}");
    }
}

#[test]
fn the_config_reads_from_toml_with_the_released_presets() {
    let c: MgdConfig = toml::from_str("").unwrap();
    assert_eq!(c, MgdConfig::default());
    assert_eq!(
        (c.alpha, c.lambda, c.student_tap.as_str()),
        (2e-5, 0.75, "stage4")
    );
    assert_eq!(c.logit_cwd, None);
    let seg: MgdConfig = toml::from_str("logit_cwd = { tau = 4.0, weight = 3.0 }").unwrap();
    assert_eq!(seg, MgdConfig::segmentation());
    assert_eq!(
        seg.logit_cwd,
        Some(CwdConfig {
            tau: 4.0,
            weight: 3.0
        })
    );
    let d = MgdConfig::detection(&["p3", "p4"]);
    assert_eq!(d.lambda, 0.65);
    assert_eq!(d.logit_cwd, None);
    assert_eq!(d.resolved_levels().unwrap().len(), 2);
    assert!(d.resolved_levels().unwrap().iter().all(|l| l.alpha == 2e-5));
    assert!(toml::from_str::<MgdConfig>("ratio = 0.5").is_err());
    let bad = |c: MgdConfig, key: &str| assert!(c.validate().unwrap_err().to_string().contains(key), "{key}");
    bad(
        MgdConfig {
            lambda: 1.5,
            ..MgdConfig::default()
        },
        "lambda",
    );
    bad(
        MgdConfig {
            alpha: -1.0,
            ..MgdConfig::default()
        },
        "alpha",
    );
    let mut both = MgdConfig::detection(&["p3"]);
    both.alpha = 1.0;
    bad(both, "levels");
    let mut neg = MgdConfig::detection(&["p3"]);
    neg.levels[0].alpha = f64::NAN;
    bad(neg, "levels[0].alpha");
}

#[test]
fn the_distiller_adds_mgd_and_the_native_resolution_logit_cwd_to_the_task_loss() {
    let _g = seed_lock();
    tch::manual_seed(302);
    let p = Pair::new();
    let mut d = Mgd::for_models(
        &(p.vs.root() / "aux"),
        MgdConfig::segmentation(),
        p.student.as_ref(),
        p.teacher.model(),
        Box::new(kd_seg::SegSupervised::default()),
    )
    .unwrap();
    assert_eq!(d.name(), "mgd");
    let g = d.levels()[0].1.generator();
    assert_eq!((g.in_channels(), g.out_channels()), (64, 128));
    let b = batch();
    let s_out = p.student.forward_t(&b.x, true);
    let t_out = p.teacher.forward(&b.x);
    let terms = loss(&mut d, &p, &b, &s_out, &t_out);
    assert_eq!(names(&terms), ["ce", "aux_ce", "mgd", "cwd"]);
    assert!(scalar(&term(&terms, "mgd")) > 0.0);
    assert_eq!(s_out.dense_logits().size(), [2, K, 4, 4]);
    let cwd = kd_core::losses::cwd_loss(s_out.dense_logits(), t_out.dense_logits(), 4.0).unwrap() * 3.0;
    assert!((scalar(&term(&terms, "cwd")) - scalar(&cwd)).abs() < 1e-5 * scalar(&cwd));
    let vars = p.vs.variables();
    assert!(vars.contains_key("aux.mgd.0.align.weight"));
    assert!(vars
        .keys()
        .filter(|k| k.contains("mgd"))
        .all(|k| k.starts_with("aux.mgd.")));
    // A tap neither network has is named with the ones they have.
    let err = Mgd::for_models(
        &(p.vs.root() / "aux2"),
        MgdConfig {
            levels: vec![GddLevelSpec {
                student_tap: "p9".into(),
                teacher_tap: "p9".into(),
                alpha: 2e-5,
            }],
            ..MgdConfig::default()
        },
        p.student.as_ref(),
        p.teacher.model(),
        Box::new(kd_seg::SegSupervised::default()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("p9") && err.contains("stage4"), "{err}");
}
