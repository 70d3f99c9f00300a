//! UniKD at the resnet32x4 → resnet8x4 stage shapes of CIFAR-100 (batch 64, 32×32 inputs):
//! `stage1 [64, 64, 32, 32]`, `stage2 [64, 128, 16, 16]`, `stage3 [64, 256, 8, 8]`.
//!
//! - `aff_fdp/forward` and `aff_fdp/forward_backward`: the student-side AFF cascade and the FDP
//!   heads (mode A, `D_i = C_i^T`, and mode B, `D_i = K = 100`), then the stage KLs against
//!   fixed targets;
//! - `gaussian_kl/*`: kd-core's closed-form Gaussian KL at the pooled shapes, forward and
//!   forward + backward.

#![allow(missing_docs)] // criterion_group! generates an undocumented public fn

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kd_core::losses::{gaussian_kl_mean, KlDirection};
use kd_feature_agg::{stage_kl, HeadsSpec, StageHeads, Upsample};
use tch::{nn, Device, Kind, Tensor};

const B: i64 = 64;
const K: i64 = 100;
/// resnet32x4 / resnet8x4 stage widths and spatial sizes at 32×32 input.
const STAGES: [(i64, i64); 3] = [(64, 32), (128, 16), (256, 8)];

fn maps() -> Vec<Tensor> {
    STAGES
        .iter()
        .map(|&(c, hw)| Tensor::randn([B, c, hw, hw], (Kind::Float, Device::Cpu)).relu())
        .collect()
}

fn aff_fdp(c: &mut Criterion) {
    tch::manual_seed(0);
    let widths: Vec<i64> = STAGES.iter().map(|s| s.0).collect();
    let mut group = c.benchmark_group("aff_fdp");
    group.sample_size(10);
    for (mode, dims) in [("mode_a", widths.clone()), ("mode_b", vec![K; 3])] {
        let vs = nn::VarStore::new(Device::Cpu);
        let heads = StageHeads::new(
            &vs.root(),
            &HeadsSpec {
                in_channels: &widths,
                fused: &widths,
                loss_stages: &[0, 1, 2],
                out_dims: &dims,
                use_aff: true,
                upsample: Upsample::Nearest,
                logvar_clamp: 10.0,
            },
        )
        .unwrap();
        let feats: Vec<Tensor> = maps().into_iter().map(|t| t.set_requires_grad(true)).collect();
        let refs: Vec<&Tensor> = feats.iter().collect();
        let targets: Vec<(Tensor, Tensor)> = dims
            .iter()
            .map(|&d| {
                (
                    Tensor::randn([B, d], (Kind::Float, Device::Cpu)),
                    Tensor::rand([B, d], (Kind::Float, Device::Cpu)) + 0.1,
                )
            })
            .collect();
        let loss = || -> Tensor {
            let preds = heads.forward(&refs, true).unwrap();
            preds
                .iter()
                .zip(&targets)
                .map(|(p, (m, v))| stage_kl(m, v, p, KlDirection::Forward).unwrap())
                .reduce(|a, b| a + b)
                .unwrap()
        };
        group.bench_function(BenchmarkId::new("forward", mode), |b| {
            b.iter(|| tch::no_grad(|| loss().double_value(&[])))
        });
        group.bench_function(BenchmarkId::new("forward_backward", mode), |b| {
            b.iter(|| {
                let l = loss();
                l.backward();
                l.double_value(&[])
            })
        });
    }
    group.finish();
}

fn gaussian_kl(c: &mut Criterion) {
    tch::manual_seed(1);
    let mut group = c.benchmark_group("gaussian_kl");
    for d in [64i64, 128, 256, K] {
        let opts = (Kind::Float, Device::Cpu);
        let (mu_t, var_t) = (Tensor::randn([B, d], opts), Tensor::rand([B, d], opts) + 0.1);
        let mu_s = Tensor::randn([B, d], opts).set_requires_grad(true);
        let logvar_s = Tensor::randn([B, d], opts).set_requires_grad(true);
        group.bench_function(BenchmarkId::new("forward", format!("{B}x{d}")), |b| {
            b.iter(|| {
                gaussian_kl_mean(&mu_t, &var_t, &mu_s, &logvar_s)
                    .unwrap()
                    .double_value(&[])
            })
        });
        group.bench_function(BenchmarkId::new("forward_backward", format!("{B}x{d}")), |b| {
            b.iter(|| {
                let l = gaussian_kl_mean(&mu_t, &var_t, &mu_s, &logvar_s).unwrap();
                l.backward();
                l.double_value(&[])
            })
        });
    }
    group.finish();
}

criterion_group!(benches, aff_fdp, gaussian_kl);
criterion_main!(benches);
