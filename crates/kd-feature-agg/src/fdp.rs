//! Feature Distribution Prediction (FDP): a fused map becomes the parameters of a diagonal
//! Gaussian.
//!
//! Predicting a distribution instead of a feature lets the stage loss be a divergence, the same
//! kind of objective as the temperature KL on the logits, instead of an element-wise MSE that
//! pulls in a different direction. A full covariance would cost `D²` parameters per sample, so
//! the covariance is diagonal: one mean and one variance per dimension.
//!
//! ```text
//! h     = GAP(A)                     [B, C]
//! μ     = Linear_μ(h)                [B, D]
//! logσ² = clamp(Linear_σ(h), −c, c)  [B, D]
//! ```
//!
//! The log-variance is predicted (not the variance) so that any output is a valid variance, and
//! clamped so that `1/σ²` in the KL can neither overflow nor vanish.

use tch::{nn, Tensor};

use kd_core::{KdError, Result};

use crate::aff::global_avg_pool;

/// A diagonal Gaussian: mean and log-variance, both `[B, D]`.
#[derive(Debug)]
pub struct DiagGaussian {
    /// Mean μ, `[B, D]`.
    pub mu: Tensor,
    /// Log-variance log σ², `[B, D]`.
    pub logvar: Tensor,
}

/// The two linear heads of one stage.
#[derive(Debug)]
pub struct FdpHead {
    mu: nn::Linear,
    logvar: nn::Linear,
    in_dim: i64,
    out_dim: i64,
    clamp: f64,
}

impl FdpHead {
    /// Heads `[B, in_dim] → [B, out_dim]` under `path`, clamping log σ² to `[−clamp, clamp]`.
    /// Both use PyTorch's `nn.Linear` initialisation, so σ² starts near 1.
    pub fn new(path: &nn::Path<'_>, in_dim: i64, out_dim: i64, clamp: f64) -> Result<Self> {
        if in_dim < 1 || out_dim < 1 || clamp.is_nan() || clamp <= 0.0 {
            return Err(KdError::invalid(format!(
                "FDP head needs in_dim, out_dim >= 1 and clamp > 0; got {in_dim}, {out_dim}, {clamp}"
            )));
        }
        Ok(Self {
            mu: nn::linear(path / "mu", in_dim, out_dim, Default::default()),
            logvar: nn::linear(path / "logvar", in_dim, out_dim, Default::default()),
            in_dim,
            out_dim,
            clamp,
        })
    }

    /// Output dimension `D`.
    pub fn out_dim(&self) -> i64 {
        self.out_dim
    }

    /// The Gaussian predicted from a pooled feature `h: [B, in_dim]`.
    pub fn forward(&self, h: &Tensor) -> Result<DiagGaussian> {
        let s = h.size();
        if s.len() != 2 || s[1] != self.in_dim {
            return Err(KdError::BadShape {
                op: "FdpHead::forward".into(),
                name: "pooled feature".into(),
                shape: s,
                expected: format!("[B, {}]", self.in_dim),
            });
        }
        Ok(DiagGaussian {
            mu: h.apply(&self.mu),
            logvar: h.apply(&self.logvar).clamp(-self.clamp, self.clamp),
        })
    }

    /// The Gaussian predicted from a map `a: [B, in_dim, H, W]`, globally average-pooled first.
    pub fn forward_map(&self, a: &Tensor) -> Result<DiagGaussian> {
        let s = a.size();
        if s.len() != 4 || s[1] != self.in_dim {
            return Err(KdError::BadShape {
                op: "FdpHead::forward_map".into(),
                name: "fused map".into(),
                shape: s,
                expected: format!("[B, {}, H, W]", self.in_dim),
            });
        }
        self.forward(&global_avg_pool(a))
    }
}
