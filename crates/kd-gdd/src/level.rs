//! One GDD level: adapter, noise, generator and the channel-wise spatial KL.

use kd_core::losses::cwd_loss;
use kd_core::{KdError, Result};
use tch::nn;
use tch::Tensor;

use crate::config::{NoiseKind, NoiseShape};
use crate::generator::Generator;

/// The GDD loss of a generated feature against the teacher's:
/// `τ²/(B·C) · Σ_{b,c,i} p_{b,c,i} (log p_{b,c,i} − log q_{b,c,i})` with `p = softmax_i(T/τ)`
/// (teacher, detached) and `q = softmax_i(F/τ)`, the softmax running over the `H·W` positions
/// of each channel. Without the weight α.
///
/// `generated`, `teacher`: `[B, C, H, W]` of one shape (a mismatch is a [`KdError::Shape`],
/// never a resize). Returns a 0-dim tensor in nats, computed in fp32 (fp64 for fp64 inputs)
/// with fused `log_softmax`. This is kd-core's CWD kernel; GDD is CWD on the generated map.
pub fn gdd_loss(generated: &Tensor, teacher: &Tensor, tau: f64) -> Result<Tensor> {
    cwd_loss(generated, teacher, tau)
}

/// The per-level hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelParams {
    /// Temperature τ.
    pub tau: f64,
    /// Loss weight α.
    pub alpha: f64,
    /// Noise distribution.
    pub noise: NoiseKind,
    /// Noise sharing across channels.
    pub noise_shape: NoiseShape,
}

/// One distilled level: `L = α · gdd_loss(G(A(S) + ε), T, τ)`.
///
/// - `A`, `G`: the adapter and generator of [`Generator`] (variables `align.*` when
///   `C_s ≠ C_t`, `generation.0.*`, `generation.2.*`);
/// - `ε`: noise drawn from libtorch's generator at every call (seed it with
///   `tch::manual_seed`), `[B, 1, H, W]` broadcast over channels or `[B, C_t, H, W]`.
#[derive(Debug)]
pub struct GddLevel {
    net: Generator,
    params: LevelParams,
}

impl GddLevel {
    /// Builds the adapter (iff `c_s ≠ c_t`) and the generator under `p`.
    pub fn new(p: &nn::Path<'_>, c_s: i64, c_t: i64, params: LevelParams) -> Result<Self> {
        if c_s < 1 || c_t < 1 {
            return Err(KdError::invalid(format!(
                "gdd level: channel counts must be positive, got student {c_s}, teacher {c_t}"
            )));
        }
        if !(params.tau.is_finite() && params.tau > 0.0) {
            return Err(KdError::invalid(format!(
                "tau: must be finite and > 0, got {}",
                params.tau
            )));
        }
        if !(params.alpha.is_finite() && params.alpha >= 0.0) {
            return Err(KdError::invalid(format!(
                "alpha: must be finite and >= 0, got {}",
                params.alpha
            )));
        }
        Ok(Self {
            net: Generator::new(p, "gdd level", c_s, c_t)?,
            params,
        })
    }

    /// Whether the level has a channel adapter (exactly when `C_s ≠ C_t`).
    pub fn has_adapter(&self) -> bool {
        self.net.adapter().is_some()
    }

    /// The adapter, when there is one.
    pub fn adapter(&self) -> Option<&nn::Conv2D> {
        self.net.adapter()
    }

    /// The generator's two convolutions.
    pub fn generator(&self) -> (&nn::Conv2D, &nn::Conv2D) {
        self.net.convs()
    }

    /// Student channels `C_s`.
    pub fn in_channels(&self) -> i64 {
        self.net.in_channels()
    }

    /// Teacher channels `C_t`, the channels of the generated map.
    pub fn out_channels(&self) -> i64 {
        self.net.out_channels()
    }

    /// The level's hyper-parameters.
    pub fn params(&self) -> &LevelParams {
        &self.params
    }

    /// `A(S)`: `[B, C_s, H, W] → [B, C_t, H, W]`.
    pub fn adapt(&self, s: &Tensor) -> Result<Tensor> {
        self.net.check_student("gdd level", s)?;
        Ok(self.net.adapt(s))
    }

    /// A fresh noise draw for an adapted map `[B, C_t, H, W]`: `[B, 1, H, W]` (shared) or
    /// `[B, C_t, H, W]` (per channel), of `like`'s kind and device; `None` without noise.
    pub fn noise_like(&self, like: &Tensor) -> Option<Tensor> {
        let s = like.size();
        let shape = match self.params.noise_shape {
            NoiseShape::SharedAcrossChannels => [s[0], 1, s[2], s[3]],
            NoiseShape::PerChannel => [s[0], s[1], s[2], s[3]],
        };
        let opts = (like.kind(), like.device());
        match self.params.noise {
            NoiseKind::Gaussian { std } => Some(Tensor::randn(shape, opts) * std),
            NoiseKind::Uniform { low, high } => Some(Tensor::rand(shape, opts) * (high - low) + low),
            NoiseKind::None => None,
        }
    }

    /// `A(S) + ε`, `[B, C_t, H, W]`.
    pub fn perturb(&self, s: &Tensor) -> Result<Tensor> {
        let a = self.adapt(s)?;
        Ok(match self.noise_like(&a) {
            Some(eps) => a + eps,
            None => a,
        })
    }

    /// The generated feature `F = G(A(S) + ε)`, `[B, C_t, H, W]`.
    pub fn generate(&self, s: &Tensor) -> Result<Tensor> {
        Ok(self.net.generate(&self.perturb(s)?))
    }

    /// The level's loss `α · τ²/(B·C_t) · Σ KL`, a 0-dim tensor.
    ///
    /// `s`: student map `[B, C_s, H, W]`; `t`: teacher map `[B, C_t, H', W']`. A different
    /// batch, channel count or spatial size is an error naming both shapes, checked before
    /// anything runs. The teacher is detached; gradients reach the student, the adapter and
    /// the generator.
    pub fn forward(&self, s: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.net.check_pair("gdd level", s, t)?;
        let f = self.generate(s)?;
        Ok(gdd_loss(&f, t, self.params.tau)? * self.params.alpha)
    }
}
