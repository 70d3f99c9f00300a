//! Channel-wise distillation (CWD, Shu et al., ICCV 2021) for dense maps.
//!
//! In dense prediction the informative part of a channel is *where* it fires, not its absolute
//! level. CWD therefore turns each channel of a `[B, C, H, W]` map into a distribution over its
//! `H·W` positions with a spatial softmax at temperature τ, and matches teacher and student
//! channel by channel with a KL divergence:
//!
//! ```text
//! φ(x)_{b,c,i} = softmax_i(x_{b,c,i} / τ)
//! L_CWD = τ² / (B·C) · Σ_b Σ_c Σ_i φ(T)_{b,c,i} · (log φ(T)_{b,c,i} − log φ(S)_{b,c,i})
//! ```
//!
//! Dividing by `B·C` makes the value a mean over (sample, channel) pairs, so it does not grow
//! with the batch or the channel count; the τ² factor plays the same role as in Hinton KD. The
//! loss weight λ (GDD's α) is applied by the caller. Because the softmax runs over space, the
//! loss ignores any per-(b, c) additive offset of either map.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::check;
use super::kl::{categorical_kl, constant, forward_kl_total, log_softmax_dim, KlDirection};
use crate::{KdError, Result};

/// Validates the pair and returns the spatial log-softmaxes `(log φ(S), log φ(T))` as
/// `[B, C, H·W]`.
fn cwd_log_probs(s: &Tensor, t: &Tensor, tau: f64) -> Result<(Tensor, Tensor)> {
    const OP: &str = "cwd_loss";
    check::pair(
        OP,
        "[B, C, H, W] with equal spatial sizes",
        4,
        "student",
        s,
        "teacher",
        t,
    )?;
    check::non_empty(OP, "student", s)?;
    check::temperature(OP, tau)?;
    let kind = check::work_kind(&[s, t]);
    let size = s.size();
    let flat = [size[0], size[1], size[2] * size[3]];
    let log_s = log_softmax_dim(&s.reshape(flat), tau, kind, -1);
    let log_t = log_softmax_dim(&constant(t).reshape(flat), tau, kind, -1);
    Ok((log_s, log_t))
}

/// Validates the pair and returns `τ² · KL_{b,c}` as `[B, C]`.
fn cwd_per_channel(s: &Tensor, t: &Tensor, tau: f64) -> Result<Tensor> {
    let (log_s, log_t) = cwd_log_probs(s, t, tau)?;
    Ok(categorical_kl(&log_s, &log_t, KlDirection::Forward, -1) * (tau * tau))
}

/// The CWD loss `τ²/(B·C) · Σ_b Σ_c KL(φ(T)_{b,c} ‖ φ(S)_{b,c})`, a scalar without the weight λ.
///
/// `s`: student map `[B, C, H, W]` (already adapted to the teacher's `C`); `t`: teacher map of
/// the same shape. A spatial or channel mismatch is an error, never a silent resize. `tau > 0`.
/// Returns a 0-dim tensor in nats. The teacher is detached.
pub fn cwd_loss(s: &Tensor, t: &Tensor, tau: f64) -> Result<Tensor> {
    let (log_s, log_t) = cwd_log_probs(s, t, tau)?;
    let size = s.size();
    // One reduction over everything, τ²/(B·C) on the scalar.
    let pairs = (size[0] * size[1]) as f64;
    Ok(forward_kl_total(&log_s, &log_t) * (tau * tau / pairs))
}

/// CWD per sample: `τ²/C · Σ_c KL(φ(T)_{b,c} ‖ φ(S)_{b,c})`, `[B]`; its mean is [`cwd_loss`].
///
/// Shapes, units and detaching as [`cwd_loss`].
pub fn cwd_loss_per_sample(s: &Tensor, t: &Tensor, tau: f64) -> Result<Tensor> {
    let per_channel = cwd_per_channel(s, t, tau)?;
    let kind = per_channel.kind();
    Ok(per_channel.mean_dim(1, false, kind))
}

/// A weighted CWD term (e.g. on segmentation logits):
/// `weight · τ²/(B·K) · Σ_{b,k} KL(softmax_space(z_T/τ) ‖ softmax_space(z_S/τ))`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CwdConfig {
    /// Temperature τ of the spatial softmax, `> 0`.
    pub tau: f64,
    /// Loss weight λ, `>= 0`.
    pub weight: f64,
}

impl CwdConfig {
    /// MMRazor's Cityscapes setting for PSPNet-R18 ← PSPNet-R101: τ = 1, λ = 5.
    pub fn mmrazor() -> Self {
        Self {
            tau: 1.0,
            weight: 5.0,
        }
    }

    /// The CWD paper's setting for logits: τ = 4, λ = 3.
    pub fn paper() -> Self {
        Self {
            tau: 4.0,
            weight: 3.0,
        }
    }

    /// Fails unless τ is finite and positive and the weight finite and non-negative; errors
    /// name the key.
    pub fn validate(&self) -> Result<()> {
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return Err(KdError::invalid(format!(
                "tau: must be finite and > 0, got {}",
                self.tau
            )));
        }
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return Err(KdError::invalid(format!(
                "weight: must be finite and >= 0, got {}",
                self.weight
            )));
        }
        Ok(())
    }

    /// The weighted term on student and teacher logits, both `[B, K, H, W]` of one shape (a
    /// spatial mismatch is an error, never a silent resize). The teacher is detached.
    pub fn term(&self, s_logits: &Tensor, t_logits: &Tensor) -> Result<Tensor> {
        self.validate()?;
        Ok(cwd_loss(s_logits, t_logits, self.tau)? * self.weight)
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::losses::gradcheck::{assert_gradients, assert_shape_error};

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Double, Device::Cpu))
    }

    #[test]
    fn hand_computed_value() {
        // B = 1, C = 2, H = 1, W = 2, τ = 2.
        // Channel 0: teacher [2 ln 3, 0] → φ(T) = [3/4, 1/4]; student [0, 0] → φ(S) = [1/2, 1/2];
        //   KL = 0.75·ln 1.5 − 0.25·ln 2 ≈ 0.130812.
        // Channel 1: identical maps → KL = 0.
        // L = τ²/(B·C)·(KL + 0) = 4/2·KL = 2·KL ≈ 0.261624.
        let s = Tensor::from_slice(&[0.0f64, 0.0, 1.0, -1.0]).view([1, 2, 1, 2]);
        let t = Tensor::from_slice(&[2.0 * 3f64.ln(), 0.0, 1.0, -1.0]).view([1, 2, 1, 2]);
        let kl = 0.75 * 1.5f64.ln() - 0.25 * 2f64.ln();
        let loss = cwd_loss(&s, &t, 2.0).unwrap().double_value(&[]);
        assert!((loss - 2.0 * kl).abs() < 1e-12, "{loss}");
        // Per sample: τ²/C·Σ_c KL, the same number for B = 1.
        let per = cwd_loss_per_sample(&s, &t, 2.0).unwrap();
        assert_eq!(per.size(), vec![1]);
        assert!((per.double_value(&[0]) - 2.0 * kl).abs() < 1e-12);
    }

    #[test]
    fn zero_when_equal_and_positive_otherwise() {
        tch::manual_seed(10);
        let s = randn(&[2, 3, 4, 5]);
        assert!(cwd_loss(&s, &s, 4.0).unwrap().double_value(&[]).abs() < 1e-12);
        let t = randn(&[2, 3, 4, 5]);
        assert!(cwd_loss(&s, &t, 1.0).unwrap().double_value(&[]) > 0.0);
        assert!(cwd_loss_per_sample(&s, &t, 1.0).unwrap().min().double_value(&[]) > 0.0);
    }

    #[test]
    fn invariant_to_per_channel_shifts() {
        tch::manual_seed(11);
        let s = randn(&[2, 3, 4, 4]);
        let t = randn(&[2, 3, 4, 4]);
        let base = cwd_loss(&s, &t, 4.0).unwrap().double_value(&[]);
        let shift = randn(&[2, 3, 1, 1]) * 50.0;
        let s_shifted = cwd_loss(&(&s + &shift), &t, 4.0).unwrap().double_value(&[]);
        let t_shifted = cwd_loss(&s, &(&t - &shift), 4.0).unwrap().double_value(&[]);
        assert!((s_shifted - base).abs() < 1e-10 && (t_shifted - base).abs() < 1e-10);
    }

    #[test]
    fn independent_of_batch_duplication() {
        tch::manual_seed(12);
        let s = randn(&[2, 3, 3, 3]);
        let t = randn(&[2, 3, 3, 3]);
        let once = cwd_loss(&s, &t, 4.0).unwrap().double_value(&[]);
        let twice = cwd_loss(&Tensor::cat(&[&s, &s], 0), &Tensor::cat(&[&t, &t], 0), 4.0)
            .unwrap()
            .double_value(&[]);
        assert!((once - twice).abs() < 1e-12);
    }

    #[test]
    fn loss_is_mean_of_per_sample_and_float_for_float_inputs() {
        tch::manual_seed(13);
        let s = Tensor::randn([3, 2, 4, 4], (Kind::Half, Device::Cpu));
        let t = Tensor::randn([3, 2, 4, 4], (Kind::Half, Device::Cpu));
        let loss = cwd_loss(&s, &t, 4.0).unwrap();
        assert_eq!(loss.kind(), Kind::Float);
        let per = cwd_loss_per_sample(&s, &t, 4.0).unwrap();
        assert!((per.mean(Kind::Float) - loss).abs().double_value(&[]) < 1e-6);
    }

    #[test]
    fn teacher_gets_no_gradient_and_gradients_match() {
        let s = randn(&[1, 2, 2, 3]).set_requires_grad(true);
        let t = randn(&[1, 2, 2, 3]).set_requires_grad(true);
        cwd_loss(&s, &t, 4.0).unwrap().backward();
        assert!(s.grad().defined() && !t.grad().defined());

        tch::manual_seed(14);
        let (s, t) = (randn(&[2, 2, 2, 3]), randn(&[2, 2, 2, 3]));
        assert_gradients("cwd_loss_per_sample", &[s, t], &[0], |x| {
            cwd_loss_per_sample(&x[0], &x[1], 2.0)
        });
    }

    #[test]
    fn shape_errors_name_both_shapes() {
        let s = Tensor::zeros([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let spatial = Tensor::zeros([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let channels = Tensor::zeros([2, 5, 8, 8], (Kind::Float, Device::Cpu));
        let flat = Tensor::zeros([2, 3, 64], (Kind::Float, Device::Cpu));
        assert_shape_error(cwd_loss(&s, &spatial, 4.0), &s, &spatial);
        assert_shape_error(cwd_loss(&s, &channels, 4.0), &s, &channels);
        assert_shape_error(cwd_loss_per_sample(&flat, &flat, 4.0), &flat, &flat);
        assert!(matches!(cwd_loss(&s, &s, 0.0), Err(crate::KdError::Invalid(_))));
    }
}
