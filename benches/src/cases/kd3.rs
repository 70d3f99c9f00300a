//! KD³ at its batch of 256: teacher–student instance selection, MixDistribution, and the
//! contrastive losses (NT-Xent as KD³ uses it, and InfoNCE).

use kd_core::losses::{info_nce, nt_xent};
use kd_core::rng;
use kd_webdata::mix::{mix_distribution, MixDraw};
use kd_webdata::selection::{combine, threshold_keep};
use serde_json::json;
use tch::{Kind, Tensor};

use super::{dev, loss_modes, randn, shape_str, ForwardCase, LossCase};
use crate::case::{Case, Mode, Spec};

/// Teacher share `a(e)` and `p_cut` of the selection row.
const SHARE: f64 = 0.5;
const P_CUT: f64 = 0.95;

pub(super) fn specs() -> Vec<Spec> {
    let mut v = Vec::new();
    for (label, n, k) in [("small", 16i64, 10i64), ("real", 256, 100)] {
        v.push(Spec {
            kind: "kd3_select",
            label,
            shape: shape_str(&[n, k]),
            modes: vec![Mode::Forward],
            params: json!({ "share": SHARE, "p_cut": P_CUT }),
            sample_size: 100,
            throughput: None,
            min_bytes: None,
            build: Box::new(move |s| {
                tch::manual_seed(31);
                let d = dev(s);
                let case = ForwardCase {
                    inputs: vec![
                        ("z_t".into(), randn(&[n, k], 4.0, d)),
                        ("z_s".into(), randn(&[n, k], 4.0, d)),
                    ],
                    f: Box::new(|x| {
                        let keep = threshold_keep(&combine(&x[0], &x[1], SHARE)?, P_CUT)?;
                        let kept = keep.iter().filter(|&&k| k).count() as f64;
                        let flags: Vec<u8> = keep.iter().map(|&k| u8::from(k)).collect();
                        Ok((kept, vec![("keep".into(), Tensor::from_slice(&flags))]))
                    }),
                };
                Ok(Box::new(case) as Box<dyn Case>)
            }),
        });
    }
    for (label, b) in [("small", 16i64), ("real", 256)] {
        v.push(Spec {
            kind: "kd3_mix",
            label,
            shape: shape_str(&[b, 3, 32, 32]),
            modes: vec![Mode::Forward],
            params: json!({ "eps": 1e-6 }),
            sample_size: 100,
            throughput: None,
            min_bytes: None,
            build: Box::new(move |s| {
                tch::manual_seed(32);
                let d = dev(s);
                let draw = MixDraw::draw(&mut rng::derive(32, 0, 0), b as usize, 0.1, 1.0);
                let case = ForwardCase {
                    inputs: vec![
                        ("x".into(), randn(&[b, 3, 32, 32], 1.0, d)),
                        (
                            "lambda".into(),
                            Tensor::from_slice(&draw.lambda).to_kind(Kind::Float).to_device(d),
                        ),
                        ("perm".into(), Tensor::from_slice(&draw.perm).to_device(d)),
                    ],
                    f: Box::new(|x| {
                        let y = mix_distribution(&x[0], &x[1], &x[2], 1e-6)?;
                        Ok((y.double_value(&[0, 0, 0, 0]), vec![("y".into(), y)]))
                    }),
                };
                Ok(Box::new(case) as Box<dyn Case>)
            }),
        });
    }
    for kind in ["nt_xent", "info_nce"] {
        for (label, b) in [("small", 16i64), ("real", 256)] {
            v.push(Spec {
                kind,
                label,
                shape: format!("2 × {}", shape_str(&[b, 128])),
                modes: loss_modes(),
                params: json!({ "tau": 0.3 }),
                sample_size: 100,
                throughput: None,
                min_bytes: None,
                build: Box::new(move |s| {
                    tch::manual_seed(33);
                    let d = dev(s);
                    let case = LossCase {
                        inputs: vec![
                            ("z1".into(), randn(&[b, 128], 1.0, d).set_requires_grad(true)),
                            ("z2".into(), randn(&[b, 128], 1.0, d).set_requires_grad(true)),
                        ],
                        vs: None,
                        loss: Box::new(move |x| {
                            if kind == "nt_xent" {
                                nt_xent(&x[0], &x[1], 0.3)
                            } else {
                                info_nce(&x[0], &x[1], 0.3)
                            }
                        }),
                        seed: None,
                        extra: vec![],
                    };
                    Ok(Box::new(case) as Box<dyn Case>)
                }),
            });
        }
    }
    v
}
