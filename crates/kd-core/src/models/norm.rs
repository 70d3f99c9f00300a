//! BatchNorm whose training-mode statistics the recipe chooses: per process, synchronised
//! across the ranks, or frozen.
//!
//! Data-parallel recipes differ exactly here (MMSeg and MMDet train with `SyncBN`, MMDet's
//! backbones with `norm_eval`), and the choice belongs to the recipe, not to each network, so
//! every network builds its BatchNorm with [`batch_norm2d`] and the trainer says, for the steps
//! it runs, which statistics a training-mode forward uses ([`with_norm`]). Outside such a
//! scope the layer is tch's BatchNorm. The variables are tch's (`weight`, `bias`,
//! `running_mean`, `running_var`), so checkpoints and PyTorch imports are unchanged.

use std::cell::Cell;

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::dist::{self, BatchNormArgs};

/// What a training-mode BatchNorm forward normalises with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormMode {
    /// Each process's own batch (PyTorch DDP's default; with one process, the whole batch).
    #[default]
    PerRank,
    /// The union of every rank's batch (`SyncBatchNorm`); one process: the same as `per_rank`.
    Sync,
    /// The running statistics, never updated (MMDet's `norm_eval = True`); the affine
    /// parameters still train.
    Frozen,
}

impl NormMode {
    /// Whether this is the default (serialised configs leave it out).
    pub fn is_default(&self) -> bool {
        *self == NormMode::PerRank
    }
}

thread_local! {
    static MODE: Cell<NormMode> = const { Cell::new(NormMode::PerRank) };
}

/// Runs `f` with training-mode BatchNorm forwards using `mode`'s statistics.
pub fn with_norm<R>(mode: NormMode, f: impl FnOnce() -> R) -> R {
    let before = MODE.with(|m| m.replace(mode));
    struct Restore(NormMode);
    impl Drop for Restore {
        fn drop(&mut self) {
            MODE.with(|m| m.set(self.0));
        }
    }
    let _restore = Restore(before);
    f()
}

/// A 2-D BatchNorm over `[N, C, H, W]` (or 1-D over `[N, C]`) that follows [`with_norm`].
#[derive(Debug)]
pub struct BatchNorm {
    inner: nn::BatchNorm,
    momentum: f64,
    eps: f64,
}

/// A BatchNorm over `c` channels under `p`, with tch's variable names and `cfg`.
pub fn batch_norm2d<'a, T: std::borrow::Borrow<nn::Path<'a>>>(
    p: T,
    c: i64,
    cfg: nn::BatchNormConfig,
) -> BatchNorm {
    let (momentum, eps) = (cfg.momentum, cfg.eps);
    BatchNorm {
        inner: nn::batch_norm2d(p, c, cfg),
        momentum,
        eps,
    }
}

impl BatchNorm {
    /// The affine scale `[C]`, when the layer has one.
    pub fn weight(&self) -> Option<&Tensor> {
        self.inner.ws.as_ref()
    }
    /// The affine shift `[C]`, when the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bs.as_ref()
    }
    /// The running mean `[C]`.
    pub fn running_mean(&self) -> &Tensor {
        &self.inner.running_mean
    }
    /// The running variance `[C]`.
    pub fn running_var(&self) -> &Tensor {
        &self.inner.running_var
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if !train {
            return self.inner.forward_t(xs, false);
        }
        match MODE.with(Cell::get) {
            NormMode::PerRank => self.inner.forward_t(xs, true),
            NormMode::Frozen => self.inner.forward_t(xs, false),
            NormMode::Sync => match dist::world() {
                None => self.inner.forward_t(xs, true),
                Some(g) => {
                    let args = BatchNormArgs {
                        weight: self.inner.ws.as_ref(),
                        bias: self.inner.bs.as_ref(),
                        running_mean: &self.inner.running_mean,
                        running_var: &self.inner.running_var,
                        momentum: self.momentum,
                        eps: self.eps,
                    };
                    // A lost peer cannot be returned through `ModuleT`; the panic carries the
                    // collective's message and the trainer turns it back into an error.
                    g.sync_batch_norm(xs, &args)
                        .unwrap_or_else(|e| std::panic::panic_any(SyncBnFailed(e.to_string())))
                }
            },
        }
    }
}

/// The payload of the panic a failed synchronised BatchNorm raises inside a forward pass.
#[derive(Debug)]
pub struct SyncBnFailed(pub String);

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;

    /// A layer with PyTorch's initial affine parameters (weight 1, bias 0; tch draws the
    /// weight uniformly by default).
    fn layer() -> (nn::VarStore, BatchNorm) {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = nn::BatchNormConfig {
            ws_init: nn::Init::Const(1.0),
            ..Default::default()
        };
        let bn = batch_norm2d(vs.root() / "bn", 3, cfg);
        (vs, bn)
    }

    #[test]
    fn frozen_uses_and_keeps_the_running_statistics() {
        let (_vs, bn) = layer();
        let x = Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
        let y = with_norm(NormMode::Frozen, || bn.forward_t(&x, true));
        // Running mean 0 and variance 1: the identity up to eps.
        assert!(y.allclose(&(&x / (1.0f64 + 1e-5).sqrt()), 1e-5, 1e-6, false));
        assert_eq!(bn.running_mean().abs().sum(Kind::Float).double_value(&[]), 0.0);
        let moved = bn.forward_t(&x, true);
        assert!(
            moved.mean(Kind::Float).double_value(&[]).abs() < 1e-5,
            "per-rank normalises the batch"
        );
        assert!(bn.running_mean().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn sync_alone_is_the_plain_layer_and_the_scope_ends() {
        let (_vs, bn) = layer();
        let (_vs2, plain) = layer();
        let x = Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        let a = with_norm(NormMode::Sync, || bn.forward_t(&x, true));
        let b = plain.forward_t(&x, true);
        assert!(a.allclose(&b, 1e-6, 1e-6, false));
        assert!(bn.running_var().allclose(plain.running_var(), 1e-6, 1e-6, false));
        with_norm(NormMode::Frozen, || ());
        assert_eq!(MODE.with(Cell::get), NormMode::PerRank);
    }
}
