//! Self-regulated KD's student step at batch 64: the participation gate on the student's own
//! logits, significance × gate weights, and the weighted CE + KD (the HD variant).

use kd_selfreg::{gate, variant_weights, weighted_kd_terms, GateConfig, StudentConfig, Variant};
use serde_json::json;
use tch::{Kind, Tensor};

use super::{dev, loss_modes, randn, shape_str, LossCase};
use crate::case::{Case, Spec};

pub(super) fn specs() -> Vec<Spec> {
    let mut v = Vec::new();
    for (label, b, k) in [("small", 8i64, 10i64), ("real", 64, 100)] {
        v.push(Spec {
            kind: "selfreg",
            label,
            shape: shape_str(&[b, k]),
            modes: loss_modes(),
            params: json!({ "tau": 4.0, "alpha": 0.9, "beta": 0.9 }),
            sample_size: 100,
            throughput: None,
            min_bytes: None,
            build: Box::new(move |s| {
                tch::manual_seed(41);
                let d = dev(s);
                let logits = randn(&[b, k], 3.0, d);
                // Half the labels agree with the student's arg-max, so the gate sees confident,
                // correct samples as well as mistakes.
                let random = Tensor::randint(k, [b], (Kind::Int64, d));
                let even = Tensor::arange(b, (Kind::Int64, d)).remainder(2).eq(0);
                let y = logits.argmax(-1, false).where_self(&even, &random);
                let cfg = StudentConfig::new(Variant::Hd);
                let case = LossCase {
                    inputs: vec![
                        ("s".into(), logits.set_requires_grad(true)),
                        ("t".into(), randn(&[b, k], 3.0, d)),
                        ("y".into(), y),
                        ("significance".into(), Tensor::rand([b], (Kind::Float, d))),
                    ],
                    vs: None,
                    loss: Box::new(move |x| {
                        let mask = gate(&x[0], &x[2], &GateConfig::default(), 0)?;
                        let w = variant_weights(Variant::Hd, Some(&x[3]), Some(&mask), b, x[0].device())?;
                        let (ce, kd) = weighted_kd_terms(&x[0], Some(&x[1]), &x[2], &w, &cfg)?;
                        Ok(match kd {
                            Some(kd) => ce + kd,
                            None => ce,
                        })
                    }),
                    seed: None,
                    extra: vec![],
                };
                Ok(Box::new(case) as Box<dyn Case>)
            }),
        });
    }
    v
}
