//! Rows with learned modules: a GDD level (adapter, noise, generator, CWD), an MGD level (the
//! same adapter and generator on a masked map, summed squared error) and UniKD's AFF cascade
//! with its FDP heads and stage KLs.

use kd_core::losses::KlDirection;
use kd_feature_agg::{stage_kl, HeadsSpec, StageHeads, Upsample};
use kd_gdd::{GddLevel, LevelParams, MgdLevel, NoiseKind, NoiseShape};
use serde_json::json;
use tch::{nn, Kind, Tensor};

use super::{dev, loss_modes, randn, shape_str, LossCase};
use crate::case::{Case, Spec};
use crate::settings::Settings;

/// `(channels, side)` of three stage maps, shallow to deep.
type StageShapes = [(i64, i64); 3];

/// Seed of the GDD noise draw in the checked iteration.
const GDD_NOISE_SEED: i64 = 77;

/// MGD's loss weight α, the same in every released config.
const MGD_ALPHA: f64 = 2e-5;

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
    // MGD, one level: GDD's small shape; the released segmentation level (PSPNet-R18 ←
    // PSPNet-R101, 512 → 2048 channels at 64×64, λ = 0.75, the batch of the real GDD level);
    // and one FPN level of the released detection setting (256 → 256 channels, no adapter, at
    // stride 8 of an 800×1333 image, λ = 0.65). The mask is drawn once, when the row is built,
    // and is an input of the row, so both sides compute the same loss; the released code draws
    // a fresh one per call, a `[B, 1, H, W]` uniform draw beside two 3×3 convolutions.
    for (label, b, c_s, c_t, h, w, lambda) in [
        ("small", 2i64, 64i64, 256i64, 16i64, 16i64, 0.75),
        ("real", st.real_batch, 512, 2048, 64, 64, 0.75),
        ("det", 2, 256, 256, 100, 168, 0.65),
    ] {
        v.push(Spec {
            kind: "mgd",
            label,
            shape: format!("{} → {}", shape_str(&[b, c_s, h, w]), shape_str(&[b, c_t, h, w])),
            modes: loss_modes(),
            params: json!({ "alpha": MGD_ALPHA, "lambda": lambda }),
            sample_size: 10,
            throughput: None,
            min_bytes: None,
            build: Box::new(move |s| {
                tch::manual_seed(23);
                let d = dev(s);
                let vs = nn::VarStore::new(d);
                let level = MgdLevel::new(&vs.root(), c_s, c_t, MGD_ALPHA, lambda)?;
                let t = randn(&[b, c_t, h, w], 1.0, d).relu();
                let mask = level.draw_mask(&t);
                let case = LossCase {
                    inputs: vec![
                        (
                            "s".into(),
                            randn(&[b, c_s, h, w], 1.0, d).relu().set_requires_grad(true),
                        ),
                        ("t".into(), t),
                        ("mask".into(), mask),
                    ],
                    vs: Some(vs),
                    loss: Box::new(move |x| level.forward_with_mask(&x[0], &x[1], &x[2])),
                    seed: None,
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
