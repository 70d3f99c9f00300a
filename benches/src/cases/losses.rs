//! The loss kernels of kd-core: Hinton KD, DKD, FitNets (adapter + hint), CWD and the Gaussian
//! KL.

use kd_core::losses::{cwd_loss, dkd_loss, gaussian_kl_mean, hint_loss, kd_loss, HintAdapter};
use serde_json::json;
use tch::{nn, Kind, Tensor};

use super::{dev, loss_modes, randn, shape_str, LossCase};
use crate::case::{Case, Spec};
use crate::settings::Settings;

/// Bytes a fused kernel must move for a loss over two fp32 inputs of `n` elements: read both
/// (forward), and also write the student's gradient (forward + backward).
fn two_input_bytes(n: i64) -> (u64, u64) {
    let per = n as u64 * 4;
    (2 * per, 3 * per)
}

pub(super) fn specs(st: &Settings) -> Vec<Spec> {
    let mut v = Vec::new();
    for (label, b, k) in [("small", 64i64, 100i64), ("real", 256, 1000)] {
        v.push(Spec {
            kind: "kd_loss",
            label,
            shape: shape_str(&[b, k]),
            modes: loss_modes(),
            params: json!({ "tau": 4.0 }),
            sample_size: 100,
            throughput: None,
            min_bytes: None,
            build: Box::new(move |s| {
                tch::manual_seed(11);
                let d = dev(s);
                let case = LossCase {
                    inputs: vec![
                        ("s".into(), randn(&[b, k], 3.0, d).set_requires_grad(true)),
                        ("t".into(), randn(&[b, k], 3.0, d)),
                    ],
                    vs: None,
                    loss: Box::new(|x| kd_loss(&x[0], &x[1], 4.0)),
                    seed: None,
                    extra: vec![],
                };
                Ok(Box::new(case) as Box<dyn Case>)
            }),
        });
    }
    // DKD with mdistiller's settings: CIFAR-100 at batch 64 (τ = 4, α = 1, β = 8) and ImageNet
    // at batch 256 (τ = 1, α = 1, β = 0.5).
    for (label, b, k, tau, alpha, beta) in [
        ("small", 64i64, 100i64, 4.0, 1.0, 8.0),
        ("real", 256, 1000, 1.0, 1.0, 0.5),
    ] {
        v.push(Spec {
            kind: "dkd",
            label,
            shape: shape_str(&[b, k]),
            modes: loss_modes(),
            params: json!({ "tau": tau, "alpha": alpha, "beta": beta }),
            sample_size: 100,
            throughput: None,
            min_bytes: None,
            build: Box::new(move |s| {
                tch::manual_seed(15);
                let d = dev(s);
                let s_logits = randn(&[b, k], 3.0, d);
                let t_logits = randn(&[b, k], 3.0, d);
                // Half the labels are the teacher's arg-max (a confident, correct teacher, where
                // the target part is small), half are random.
                let random = Tensor::randint(k, [b], (Kind::Int64, d));
                let even = Tensor::arange(b, (Kind::Int64, d)).remainder(2).eq(0);
                let labels = t_logits.argmax(-1, false).where_self(&even, &random);
                let case = LossCase {
                    inputs: vec![
                        ("s".into(), s_logits.set_requires_grad(true)),
                        ("t".into(), t_logits),
                        ("labels".into(), labels),
                    ],
                    vs: None,
                    loss: Box::new(move |x| dkd_loss(&x[0], &x[1], &x[2], alpha, beta, tau)),
                    seed: None,
                    extra: vec![],
                };
                Ok(Box::new(case) as Box<dyn Case>)
            }),
        });
    }
    // FitNets: a channel-changing adapter at a small shape; the CIFAR-100 FitNets row's hint at
    // stage 2 of resnet8x4 ← resnet32x4 (128 → 128 channels, adapter forced) at batch 64.
    for (label, b, c_s, c_t, hw) in [("small", 8i64, 16i64, 32i64, 8i64), ("real", 64, 128, 128, 16)] {
        v.push(Spec {
            kind: "fitnets",
            label,
            shape: format!(
                "{} → {}",
                shape_str(&[b, c_s, hw, hw]),
                shape_str(&[b, c_t, hw, hw])
            ),
            modes: loss_modes(),
            params: json!({ "c_s": c_s, "c_t": c_t }),
            sample_size: if label == "real" { 50 } else { 100 },
            throughput: None,
            min_bytes: None,
            build: Box::new(move |s| {
                tch::manual_seed(12);
                let d = dev(s);
                let vs = nn::VarStore::new(d);
                let adapter = HintAdapter::new(&(vs.root() / "hint"), c_s, c_t);
                let case = LossCase {
                    inputs: vec![
                        (
                            "s".into(),
                            randn(&[b, c_s, hw, hw], 1.0, d).relu().set_requires_grad(true),
                        ),
                        ("t".into(), randn(&[b, c_t, hw, hw], 1.0, d).relu()),
                    ],
                    vs: Some(vs),
                    loss: Box::new(move |x| hint_loss(&adapter.forward_t(&x[0], true)?, &x[1])),
                    seed: None,
                    extra: vec![],
                };
                Ok(Box::new(case) as Box<dyn Case>)
            }),
        });
    }
    // CWD on segmentation logits (τ = 1, MMRazor's setting), and at the GDD shape (the loss of
    // a GDD level on PSPNet-R101's 2048-channel map, τ = 4).
    let cwd_rows: [(&'static str, &'static str, [i64; 4], f64); 3] = [
        ("cwd", "small", [2, 19, 32, 32], 1.0),
        ("cwd", "real", [8, 19, 128, 256], 1.0),
        ("gdd_loss", "real", [st.real_batch, 2048, 64, 64], 4.0),
    ];
    for (kind, label, shape, tau) in cwd_rows {
        v.push(Spec {
            kind,
            label,
            shape: shape_str(&shape),
            modes: loss_modes(),
            params: json!({ "tau": tau }),
            sample_size: if label == "real" { 10 } else { 100 },
            throughput: None,
            min_bytes: Some(two_input_bytes(shape.iter().product())),
            build: Box::new(move |s| {
                tch::manual_seed(13);
                let d = dev(s);
                let sh = shape;
                let case = LossCase {
                    inputs: vec![
                        ("s".into(), randn(&sh, 2.0, d).set_requires_grad(true)),
                        ("t".into(), randn(&sh, 2.0, d)),
                    ],
                    vs: None,
                    loss: Box::new(move |x| cwd_loss(&x[0], &x[1], tau)),
                    seed: None,
                    extra: vec![],
                };
                Ok(Box::new(case) as Box<dyn Case>)
            }),
        });
    }
    // UniKD's closed-form Gaussian KL at a small shape and at resnet32x4's pooled stage 3.
    for (label, b, dim) in [("small", 8i64, 16i64), ("real", 64, 256)] {
        v.push(Spec {
            kind: "gaussian_kl",
            label,
            shape: shape_str(&[b, dim]),
            modes: loss_modes(),
            params: json!({}),
            sample_size: 100,
            throughput: None,
            min_bytes: None,
            build: Box::new(move |s| {
                tch::manual_seed(14);
                let d = dev(s);
                let case = LossCase {
                    inputs: vec![
                        ("mu_t".into(), randn(&[b, dim], 1.0, d)),
                        ("var_t".into(), Tensor::rand([b, dim], (Kind::Float, d)) + 0.1),
                        ("mu_s".into(), randn(&[b, dim], 1.0, d).set_requires_grad(true)),
                        (
                            "logvar_s".into(),
                            randn(&[b, dim], 1.0, d).set_requires_grad(true),
                        ),
                    ],
                    vs: None,
                    loss: Box::new(|x| gaussian_kl_mean(&x[0], &x[1], &x[2], &x[3])),
                    seed: None,
                    extra: vec![],
                };
                Ok(Box::new(case) as Box<dyn Case>)
            }),
        });
    }
    v
}
