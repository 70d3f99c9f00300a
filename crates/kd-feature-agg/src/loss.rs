//! The unified stage loss: the closed-form KL between the teacher's and the student's
//! diagonal Gaussians, averaged over dimensions and samples.
//!
//! Averaging over the `D_i` dimensions (rather than summing) keeps stages of different widths,
//! and mode A's channel-space against mode B's class-space, on one scale, so a single β fits
//! them all.

use tch::Tensor;

use kd_core::losses::{gaussian_kl_directed, KlDirection};
use kd_core::Result;

use crate::fdp::DiagGaussian;

/// `(1/B) Σ_b (1/D) Σ_d KL_d`, a scalar in nats, between the teacher `N(mu_t, diag var_t)` and
/// the student's prediction `pred` (`KL(teacher ‖ student)` for [`KlDirection::Forward`]).
///
/// `mu_t`, `var_t` (a variance, floored at kd-core's ε) and `pred`'s tensors are all `[B, D]`;
/// the teacher side is detached. Shape mismatches are errors naming both shapes.
pub fn stage_kl(
    mu_t: &Tensor,
    var_t: &Tensor,
    pred: &DiagGaussian,
    direction: KlDirection,
) -> Result<Tensor> {
    let kl = gaussian_kl_directed(mu_t, var_t, &pred.mu, &pred.logvar, direction)?;
    let kind = kl.kind();
    Ok(kl.mean(kind))
}
