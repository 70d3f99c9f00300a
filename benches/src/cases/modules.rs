//! Rows with learned modules: a GDD level (adapter, noise, generator, CWD) and UniKD's AFF
//! cascade with its FDP heads and stage KLs.

use kd_core::losses::KlDirection;
use kd_feature_agg::{stage_kl, HeadsSpec, StageHeads, Upsample};
use kd_gdd::{GddLevel, LevelParams, NoiseKind, NoiseShape};
use serde_json::json;
use tch::{nn, Kind, Tensor};

use super::{dev, loss_modes, randn, shape_str, LossCase};
use crate::case::{Case, Spec};
use crate::settings::Settings;

/// `(channels, side)` of three stage maps, shallow to deep.
type StageShapes = [(i64, i64); 3];

/// Seed of the GDD noise draw in the checked iteration.
const GDD_NOISE_SEED: i64 = 77;

pub(super) fn specs(st: &Settings) -> Vec<Spec> {
    let mut v = Vec::new();
    // GDD, one level: a small shape, and PSPNet-R18 ← PSPNet-R101 on 512×512 crops, where the
    // generator is two 3×3 convolutions of 2048 → 2048 channels (meant for a GPU: on the CPU
    // the batch is KD_BENCH_REAL_BATCH, 1 by default).
    for (label, b, c_s, c_t, hw) in [
        ("small", 2i64, 64i64, 256i64, 16i64),
        ("real", st.real_batch, 512, 2048, 64),
    ] {
        v.push(Spec {
            kind: "gdd",
            label,
            shape: format!(
                "{} → {}",
                shape_str(&[b, c_s, hw, hw]),
                shape_str(&[b, c_t, hw, hw])
            ),
            modes: loss_modes(),
            params: json!({ "tau": 4.0, "alpha": 145.0, "noise_std": 1.0, "noise_seed": GDD_NOISE_SEED }),
            sample_size: 10,
            throughput: None,
            min_bytes: None,
            build: Box::new(move |s| {
                tch::manual_seed(21);
                let d = dev(s);
                let vs = nn::VarStore::new(d);
                let params = LevelParams {
                    tau: 4.0,
                    alpha: 145.0,
                    noise: NoiseKind::Gaussian { std: 1.0 },
                    noise_shape: NoiseShape::SharedAcrossChannels,
                };
                let level = GddLevel::new(&vs.root(), c_s, c_t, params)?;
                let case = LossCase {
                    inputs: vec![
                        (
                            "s".into(),
                            randn(&[b, c_s, hw, hw], 1.0, d).relu().set_requires_grad(true),
                        ),
                        ("t".into(), randn(&[b, c_t, hw, hw], 1.0, d).relu()),
                    ],
                    vs: Some(vs),
                    loss: Box::new(move |x| level.forward(&x[0], &x[1])),
                    seed: Some(GDD_NOISE_SEED),
                    extra: vec![],
                };
                Ok(Box::new(case) as Box<dyn Case>)
            }),
        });
    }
    // UniKD mode A on the student side: AFF over three stages, FDP heads, stage KLs against
    // fixed teacher moments; resnet32x4's stage shapes at batch 64, and a small version.
    let unikd: [(&'static str, i64, StageShapes); 2] = [
        ("small", 4, [(16, 8), (32, 4), (64, 2)]),
        ("real", 64, [(64, 32), (128, 16), (256, 8)]),
    ];
    for (label, b, stages) in unikd {
        let shapes: Vec<String> = stages.iter().map(|&(c, hw)| shape_str(&[b, c, hw, hw])).collect();
        v.push(Spec {
            kind: "aff_fdp",
            label,
            shape: shapes.join(" + "),
            modes: loss_modes(),
            params: json!({
                "widths": stages.iter().map(|s| s.0).collect::<Vec<_>>(),
                "logvar_clamp": 10.0,
                "upsample": "nearest",
            }),
            sample_size: if label == "real" { 10 } else { 100 },
            throughput: None,
            min_bytes: None,
            build: Box::new(move |s| {
                tch::manual_seed(22);
                let d = dev(s);
                let widths: Vec<i64> = stages.iter().map(|s| s.0).collect();
                let vs = nn::VarStore::new(d);
                let heads = StageHeads::new(
                    &vs.root(),
                    &HeadsSpec {
                        in_channels: &widths,
                        fused: &widths,
                        loss_stages: &[0, 1, 2],
                        out_dims: &widths,
                        use_aff: true,
                        upsample: Upsample::Nearest,
                        logvar_clamp: 10.0,
                    },
                )?;
                let mut inputs = Vec::new();
                for (i, &(c, hw)) in stages.iter().enumerate() {
                    inputs.push((
                        format!("f{i}"),
                        randn(&[b, c, hw, hw], 1.0, d).relu().set_requires_grad(true),
                    ));
                }
                for (i, &(c, _)) in stages.iter().enumerate() {
                    inputs.push((format!("mu{i}"), randn(&[b, c], 1.0, d)));
                    inputs.push((format!("var{i}"), Tensor::rand([b, c], (Kind::Float, d)) + 0.1));
                }
                let case = LossCase {
                    inputs,
                    vs: Some(vs),
                    loss: Box::new(move |x| {
                        let feats = [&x[0], &x[1], &x[2]];
                        let preds = heads.forward(&feats, true)?;
                        let mut total: Option<Tensor> = None;
                        for (i, p) in preds.iter().enumerate() {
                            let kl = stage_kl(&x[3 + 2 * i], &x[4 + 2 * i], p, KlDirection::Forward)?;
                            total = Some(match total {
                                Some(t) => t + kl,
                                None => kl,
                            });
                        }
                        Ok(total.expect("three stages"))
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
