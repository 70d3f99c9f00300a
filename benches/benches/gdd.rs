//! GDD and logit CWD, forward and forward + backward.
//!
//! - `gdd/*/small`: one level (adapter 64 → 256, generator at 256 channels, Gaussian noise,
//!   loss) on `[2, 64, 16, 16]` student and `[2, 256, 16, 16]` teacher maps;
//! - `gdd/*/real`: the Cityscapes shape of PSPNet-R18 ← PSPNet-R101 at 512×512 crops, student
//!   `[B, 512, 64, 64]`, teacher `[B, 2048, 64, 64]`. The generator alone is two 3×3
//!   convolutions of 2048 → 2048 channels (about 75 M weights, some 300 GFLOP per sample
//!   forward), so this group is meant for a GPU; on the CPU it runs with a small batch;
//! - `cwd_logits/*`: kd-core's channel-wise KL on 19-class logits, `[2, 19, 64, 64]` (decode
//!   resolution) and `[B, 19, 512, 512]` (logits resized to the crop).
//!
//! Every iteration reads the loss back to the host, which waits for the device. The benches
//! run on CUDA when libtorch sees a GPU, else on the CPU. `B` for the real shapes
//! is `KD_BENCH_REAL_BATCH`, by default 8 on a GPU (the paper's 2 images × 4 GPUs) and 1 on
//! the CPU.

#![allow(missing_docs)] // criterion_group! generates an undocumented public fn

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kd_core::losses::cwd_loss;
use kd_gdd::{GddLevel, LevelParams, NoiseKind, NoiseShape};
use tch::{nn, Device, Kind, Tensor};

fn device() -> Device {
    Device::cuda_if_available()
}

/// Batch of the real-shape benches: `KD_BENCH_REAL_BATCH`, else 8 on a GPU and 1 on the CPU.
fn real_batch() -> i64 {
    std::env::var("KD_BENCH_REAL_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&b: &i64| b > 0)
        .unwrap_or(if device().is_cuda() { 8 } else { 1 })
}

fn gdd(c: &mut Criterion) {
    tch::manual_seed(0);
    let dev = device();
    let rb = real_batch();
    let mut group = c.benchmark_group("gdd");
    group.sample_size(10);
    for (label, b, c_s, c_t, hw) in [("small", 2, 64, 256, 16), ("real", rb, 512, 2048, 64)] {
        let vs = nn::VarStore::new(dev);
        let params = LevelParams {
            tau: 4.0,
            alpha: 145.0,
            noise: NoiseKind::default(),
            noise_shape: NoiseShape::SharedAcrossChannels,
        };
        let level = GddLevel::new(&vs.root(), c_s, c_t, params).unwrap();
        let s = Tensor::randn([b, c_s, hw, hw], (Kind::Float, dev)).set_requires_grad(true);
        let t = Tensor::randn([b, c_t, hw, hw], (Kind::Float, dev));
        let id = format!("{label}/{b}x{c_s}to{c_t}x{hw}x{hw}");
        group.bench_function(BenchmarkId::new("forward", &id), |bench| {
            bench.iter(|| tch::no_grad(|| level.forward(&s, &t).unwrap().double_value(&[])))
        });
        group.bench_function(BenchmarkId::new("forward_backward", &id), |bench| {
            bench.iter(|| {
                let l = level.forward(&s, &t).unwrap();
                l.backward();
                l.double_value(&[])
            })
        });
    }
    group.finish();
}

fn cwd_logits(c: &mut Criterion) {
    tch::manual_seed(1);
    let dev = device();
    let rb = real_batch();
    let mut group = c.benchmark_group("cwd_logits");
    group.sample_size(10);
    for (label, b, hw) in [("decode", 2, 64), ("full", rb, 512)] {
        let s = Tensor::randn([b, 19, hw, hw], (Kind::Float, dev)).set_requires_grad(true);
        let t = Tensor::randn([b, 19, hw, hw], (Kind::Float, dev));
        let id = format!("{label}/{b}x19x{hw}x{hw}");
        group.bench_function(BenchmarkId::new("forward", &id), |bench| {
            bench.iter(|| tch::no_grad(|| cwd_loss(&s, &t, 4.0).unwrap().double_value(&[])))
        });
        group.bench_function(BenchmarkId::new("forward_backward", &id), |bench| {
            bench.iter(|| {
                let l = cwd_loss(&s, &t, 4.0).unwrap() * 3.0;
                l.backward();
                l.double_value(&[])
            })
        });
    }
    group.finish();
}

criterion_group!(benches, gdd, cwd_logits);
criterion_main!(benches);
