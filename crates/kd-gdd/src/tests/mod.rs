//! Tests of every property in the spec's §7, the configuration, and the distiller on a pair of
//! narrow segmentation nets.

use std::sync::{Mutex, MutexGuard};

use tch::{nn, Device, Kind, Tensor};

use crate::{GddLevel, LevelParams, NoiseKind, NoiseShape};

mod config;
mod distiller;
mod level;
mod mgd;

/// libtorch's generator is process-wide: tests that compare seeded draws hold this lock so a
/// concurrent test cannot draw in between.
static SEED: Mutex<()> = Mutex::new(());

fn seed_lock() -> MutexGuard<'static, ()> {
    SEED.lock().unwrap_or_else(|e| e.into_inner())
}

fn params(alpha: f64, noise: NoiseKind, noise_shape: NoiseShape) -> LevelParams {
    LevelParams {
        tau: 4.0,
        alpha,
        noise,
        noise_shape,
    }
}

/// A level `c_s → c_t` in its own store.
fn level(c_s: i64, c_t: i64, p: LevelParams) -> (nn::VarStore, GddLevel) {
    let vs = nn::VarStore::new(Device::Cpu);
    let l = GddLevel::new(&(vs.root() / "gdd"), c_s, c_t, p).unwrap();
    (vs, l)
}

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// Copies `value` into `var` (a parameter) without recording a gradient.
fn set(var: &Tensor, value: &Tensor) {
    let mut v = var.shallow_clone();
    tch::no_grad(|| {
        v.copy_(value);
    });
}

/// Turns the generator into the identity on non-negative inputs: both 3×3 kernels are the
/// identity at the centre tap and the biases are zero (the ReLU between them is then the
/// identity too).
fn identity_generator(l: &GddLevel) {
    let c = l.out_channels();
    let k = Tensor::zeros([c, c, 3, 3], (Kind::Float, Device::Cpu));
    k.select(3, 1)
        .select(2, 1)
        .copy_(&Tensor::eye(c, (Kind::Float, Device::Cpu)));
    let (g1, g2) = l.generator();
    for conv in [g1, g2] {
        set(&conv.ws, &k);
        set(conv.bs.as_ref().unwrap(), &conv.bs.as_ref().unwrap().zeros_like());
    }
}
