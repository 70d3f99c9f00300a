//! One GDD level: adapter, noise, generator and the channel-wise spatial KL.

use kd_core::losses::cwd_loss;
use kd_core::{KdError, Result};
use tch::nn::{self, Init};
use tch::Tensor;

use crate::config::{NoiseKind, NoiseShape};

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
/// - `A`: 1×1 convolution `C_s → C_t` with bias when `C_s ≠ C_t`, the identity otherwise
///   (variables `align.weight`, `align.bias`);
/// - `ε`: noise drawn from libtorch's generator at every call (seed it with
///   `tch::manual_seed`), `[B, 1, H, W]` broadcast over channels or `[B, C_t, H, W]`;
/// - `G`: 3×3 conv `C_t → C_t` (bias) → ReLU → 3×3 conv `C_t → C_t` (bias), no normalisation
///   (variables `generation.0.*`, `generation.2.*`).
///
/// Convolutions are initialised as PyTorch's `Conv2d` default: weight and bias uniform in
/// `±1/sqrt(fan_in)`.
#[derive(Debug)]
pub struct GddLevel {
    align: Option<nn::Conv2D>,
    gen1: nn::Conv2D,
    gen2: nn::Conv2D,
    c_s: i64,
    c_t: i64,
    params: LevelParams,
}

/// A convolution with bias initialised as PyTorch's `Conv2d` (kaiming uniform with `a = √5`):
/// weight and bias uniform in `±1/sqrt(c_in · k²)`.
fn torch_conv(p: &nn::Path<'_>, c_in: i64, c_out: i64, k: i64) -> nn::Conv2D {
    let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
    let uniform = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let cfg = nn::ConvConfig {
        padding: k / 2,
        bias: true,
        ws_init: uniform,
        bs_init: uniform,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
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
        let g = p / "generation";
        Ok(Self {
            align: (c_s != c_t).then(|| torch_conv(&(p / "align"), c_s, c_t, 1)),
            gen1: torch_conv(&(&g / "0"), c_t, c_t, 3),
            gen2: torch_conv(&(&g / "2"), c_t, c_t, 3),
            c_s,
            c_t,
            params,
        })
    }

    /// Whether the level has a channel adapter (exactly when `C_s ≠ C_t`).
    pub fn has_adapter(&self) -> bool {
        self.align.is_some()
    }

    /// The adapter, when there is one.
    pub fn adapter(&self) -> Option<&nn::Conv2D> {
        self.align.as_ref()
    }

    /// The generator's two convolutions.
    pub fn generator(&self) -> (&nn::Conv2D, &nn::Conv2D) {
        (&self.gen1, &self.gen2)
    }

    /// Student channels `C_s`.
    pub fn in_channels(&self) -> i64 {
        self.c_s
    }

    /// Teacher channels `C_t`, the channels of the generated map.
    pub fn out_channels(&self) -> i64 {
        self.c_t
    }

    /// The level's hyper-parameters.
    pub fn params(&self) -> &LevelParams {
        &self.params
    }

    fn check_student(&self, s: &Tensor) -> Result<()> {
        let sz = s.size();
        if sz.len() != 4 || sz[1] != self.c_s || sz.contains(&0) {
            return Err(KdError::BadShape {
                op: "gdd level".into(),
                name: "student feature".into(),
                shape: sz,
                expected: format!("[B, {}, H, W] with B, H, W > 0", self.c_s),
            });
        }
        Ok(())
    }

    /// `A(S)`: `[B, C_s, H, W] → [B, C_t, H, W]`.
    pub fn adapt(&self, s: &Tensor) -> Result<Tensor> {
        self.check_student(s)?;
        Ok(match &self.align {
            Some(a) => s.apply(a),
            None => s.shallow_clone(),
        })
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
        Ok(self.perturb(s)?.apply(&self.gen1).relu().apply(&self.gen2))
    }

    /// The level's loss `α · τ²/(B·C_t) · Σ KL`, a 0-dim tensor.
    ///
    /// `s`: student map `[B, C_s, H, W]`; `t`: teacher map `[B, C_t, H', W']`. A different
    /// batch, channel count or spatial size is an error naming both shapes, checked before
    /// anything runs. The teacher is detached; gradients reach the student, the adapter and
    /// the generator.
    pub fn forward(&self, s: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.check_student(s)?;
        let (ss, ts) = (s.size(), t.size());
        if ts.len() != 4 || ts[1] != self.c_t || ts[0] != ss[0] || ts[2..] != ss[2..] {
            return Err(KdError::Shape {
                op: format!(
                    "gdd level (expected student [B, {}, H, W] and teacher [B, {}, H, W])",
                    self.c_s, self.c_t
                ),
                left_name: "student feature".into(),
                left: ss,
                right_name: "teacher feature".into(),
                right: ts,
            });
        }
        let f = self.generate(s)?;
        Ok(gdd_loss(&f, t, self.params.tau)? * self.params.alpha)
    }
}
