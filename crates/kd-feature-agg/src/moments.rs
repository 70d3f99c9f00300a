//! Mode A's teacher target: a stage map read as a diagonal Gaussian over its channels.
//!
//! A channel's activations across the spatial positions of one image are treated as draws of
//! that channel's distribution, so the teacher needs no trainable module at all: the target is
//! fixed by the frozen teacher, and there is nothing that could collapse to a trivial solution.
//! The variance gets ε so a constant (e.g. all-zero after ReLU) channel is still a proper
//! Gaussian.

use tch::Tensor;

use kd_core::{KdError, Result};

/// Per-channel spatial moments of a teacher map `f: [B, C, H, W]`:
/// `μ[b, c] = mean_{h,w} f[b, c]` and `σ²[b, c] = var_{h,w} f[b, c] + eps` (the biased, i.e.
/// population, variance), both `[B, C]`, computed without gradient.
pub fn teacher_moments(f: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let s = f.size();
    if s.len() != 4 || s.iter().any(|&d| d < 1) {
        return Err(KdError::BadShape {
            op: "teacher_moments".into(),
            name: "teacher map".into(),
            shape: s,
            expected: "[B, C, H, W] with no empty dimension".into(),
        });
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(KdError::invalid(format!(
            "teacher_moments: eps must be > 0, got {eps}"
        )));
    }
    Ok(tch::no_grad(|| {
        let f = f.detach();
        let mu = f.mean_dim(&[2i64, 3][..], false, f.kind());
        let var = f.var_dim(&[2i64, 3][..], false, false) + eps;
        (mu, var)
    }))
}
