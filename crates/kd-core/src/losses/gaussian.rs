//! Closed-form KL divergence between diagonal Gaussians.
//!
//! UniKD distils every feature stage as a distribution: the student predicts a mean and a
//! log-variance per dimension, the teacher side supplies a mean and a variance, and the two are
//! compared with the analytic KL instead of an element-wise MSE, so feature and logit
//! distillation share one kind of objective. For one dimension, with the teacher `p` as the
//! reference distribution:
//!
//! ```text
//! KL(N(μ_p, σ²_p) ‖ N(μ_q, σ²_q)) = ½ · [ log σ²_q − log σ²_p + (σ²_p + (μ_p − μ_q)²) / σ²_q − 1 ]
//! ```
//!
//! A diagonal Gaussian's KL is the sum of these terms over dimensions, so the kernels return the
//! element-wise tensor and leave the reduction to the caller ([`gaussian_kl_mean`] is the
//! `mean_b mean_d` normalisation of the UniKD spec).
//!
//! Argument convention, following the spec's `gauss_kl(μ_T, σ²_T, μ_S, log σ²_S)`: the teacher
//! passes a **variance** (its spatial variance plus ε, computed by the caller) and the student a
//! **log-variance** (the raw output of its prediction head). Two guards keep the result finite:
//! - the student log-variance is clamped to `[LOGVAR_MIN, LOGVAR_MAX]` = `[−10, 10]`, so
//!   `σ²_q ∈ [4.5e−5, 2.2e4]` and `1/σ²_q` cannot overflow (the clamp has zero gradient outside
//!   the range, like the clamp in the prediction head itself);
//! - the teacher variance is floored at [`VAR_EPS`] = 1e-4 (the ε of the spec), so an all-zero
//!   teacher channel gives `log ε` rather than `log 0`. It is a floor, not an addition, so a
//!   variance that already includes ε is not shifted twice and exact inputs give exact values.
//!
//! All math runs in fp32 (fp64 inputs stay fp64); the teacher's mean and variance are detached.

use tch::Tensor;

use super::check;
use super::kl::KlDirection;
use crate::Result;

/// Lower clamp of the student log-variance: `σ² ≥ e^−10 ≈ 4.5e−5`.
pub const LOGVAR_MIN: f64 = -10.0;
/// Upper clamp of the student log-variance: `σ² ≤ e^10 ≈ 2.2e4`.
pub const LOGVAR_MAX: f64 = 10.0;
/// Floor of the teacher variance (the spec's ε).
pub const VAR_EPS: f64 = 1e-4;

/// Validates the four operands (identical shapes, one device, non-empty).
fn check_operands(op: &str, mu_p: &Tensor, var_p: &Tensor, mu_q: &Tensor, logvar_q: &Tensor) -> Result<()> {
    check::pair(op, "identical shapes", mu_p.dim(), "mu_p", mu_p, "var_p", var_p)?;
    check::pair(op, "identical shapes", mu_p.dim(), "mu_p", mu_p, "mu_q", mu_q)?;
    check::pair(
        op,
        "identical shapes",
        mu_p.dim(),
        "mu_p",
        mu_p,
        "logvar_q",
        logvar_q,
    )?;
    check::non_empty(op, "mu_p", mu_p)
}

/// Element-wise `KL(N(μ_p, σ²_p) ‖ N(μ_q, σ²_q))`, with `p` the (detached) teacher.
///
/// - `mu_p`: teacher mean, any shape, e.g. `[B, D]`;
/// - `var_p`: teacher **variance** (not log), same shape; floored at [`VAR_EPS`];
/// - `mu_q`: student mean, same shape;
/// - `logvar_q`: student **log-variance** `log σ²_q`, same shape; clamped to
///   `[LOGVAR_MIN, LOGVAR_MAX]`.
///
/// Returns the element-wise KL (same shape) in nats. Gradients flow to `mu_q` and `logvar_q`
/// only.
pub fn gaussian_kl(mu_p: &Tensor, var_p: &Tensor, mu_q: &Tensor, logvar_q: &Tensor) -> Result<Tensor> {
    gaussian_kl_directed(mu_p, var_p, mu_q, logvar_q, KlDirection::Forward)
}

/// Scalar mean of [`gaussian_kl`] over all elements: for `[B, D]` inputs this is
/// `(1/B) Σ_b (1/D) Σ_d KL_{b,d}`, the UniKD stage-loss normalisation. A 0-dim tensor in nats.
pub fn gaussian_kl_mean(mu_p: &Tensor, var_p: &Tensor, mu_q: &Tensor, logvar_q: &Tensor) -> Result<Tensor> {
    const OP: &str = "gaussian_kl";
    check_operands(OP, mu_p, var_p, mu_q, logvar_q)?;
    let kind = check::work_kind(&[mu_p, var_p, mu_q, logvar_q]);
    let mu_t = super::kl::constant(mu_p).to_kind(kind);
    let var_t = super::kl::constant(var_p).to_kind(kind).clamp_min(VAR_EPS);
    let logvar_s = logvar_q.to_kind(kind).clamp(LOGVAR_MIN, LOGVAR_MAX);
    // mean(½·(x − 1)) = ½·mean(x) − ½, with x = log σ²_q − log σ²_p + (σ²_p + (μ_p − μ_q)²)/σ²_q:
    // the constants act on the scalar, not on every element.
    let x = &logvar_s - var_t.log() + (var_t + (mu_t - mu_q.to_kind(kind)).square()) / logvar_s.exp();
    Ok(x.mean(kind) * 0.5 - 0.5)
}

/// Per-sample mean of [`gaussian_kl`] over every dimension but the first: for `[B, D]` inputs,
/// `(1/D) Σ_d KL_{b,d}` as `[B]` in nats. Its batch mean is [`gaussian_kl_mean`].
pub fn gaussian_kl_per_sample(
    mu_p: &Tensor,
    var_p: &Tensor,
    mu_q: &Tensor,
    logvar_q: &Tensor,
) -> Result<Tensor> {
    if mu_p.dim() == 0 {
        return Err(crate::KdError::BadShape {
            op: "gaussian_kl_per_sample".into(),
            name: "mu_p".into(),
            shape: mu_p.size(),
            expected: "a leading batch dimension [B, ...]".into(),
        });
    }
    let kl = gaussian_kl(mu_p, var_p, mu_q, logvar_q)?;
    let kind = kl.kind();
    let b = kl.size()[0];
    Ok(kl.reshape([b, -1]).mean_dim(1, false, kind))
}

/// Element-wise Gaussian KL between a (detached) teacher `N(μ_t, σ²_t)` and a student
/// `N(μ_s, exp(logvar_s))` in either direction:
/// [`KlDirection::Forward`] is `KL(teacher ‖ student)` (= [`gaussian_kl`]),
/// [`KlDirection::Reverse`] is `KL(student ‖ teacher)`.
///
/// Argument convention, shapes, guards and units as [`gaussian_kl`]: `var_t` is a variance
/// floored at [`VAR_EPS`], `logvar_s` a log-variance clamped to `[LOGVAR_MIN, LOGVAR_MAX]`.
pub fn gaussian_kl_directed(
    mu_t: &Tensor,
    var_t: &Tensor,
    mu_s: &Tensor,
    logvar_s: &Tensor,
    direction: KlDirection,
) -> Result<Tensor> {
    const OP: &str = "gaussian_kl";
    check_operands(OP, mu_t, var_t, mu_s, logvar_s)?;
    let kind = check::work_kind(&[mu_t, var_t, mu_s, logvar_s]);
    let mu_t = mu_t.detach().to_kind(kind);
    let var_t = var_t.detach().to_kind(kind).clamp_min(VAR_EPS);
    let logvar_t = var_t.log();
    let mu_s = mu_s.to_kind(kind);
    let logvar_s = logvar_s.to_kind(kind).clamp(LOGVAR_MIN, LOGVAR_MAX);
    let sq_dist = (&mu_t - &mu_s).square();
    // ½·[log σ²_q − log σ²_p + (σ²_p + (μ_p − μ_q)²)/σ²_q − 1]
    let kl = match direction {
        KlDirection::Forward => &logvar_s - &logvar_t + (&var_t + sq_dist) * (-&logvar_s).exp() - 1.0,
        KlDirection::Reverse => &logvar_t - &logvar_s + (logvar_s.exp() + sq_dist) / &var_t - 1.0,
    };
    Ok(kl * 0.5)
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::losses::gradcheck::{assert_gradients, assert_shape_error};

    fn d(v: &[f64]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Double, Device::Cpu))
    }

    #[test]
    fn hand_computed_one_dimensional_values() {
        // KL(N(0,1) ‖ N(1,2)) = ½·(ln 2 − ln 1 + (1 + 1²)/2 − 1) = ½·ln 2 ≈ 0.346574.
        let fwd = gaussian_kl(&d(&[0.0]), &d(&[1.0]), &d(&[1.0]), &d(&[2f64.ln()])).unwrap();
        assert!((fwd.double_value(&[0]) - 0.5 * 2f64.ln()).abs() < 1e-12);
        // Reverse: KL(N(1,2) ‖ N(0,1)) = ½·(ln 1 − ln 2 + (2 + 1²)/1 − 1) = 1 − ½·ln 2 ≈ 0.653426.
        let rev = gaussian_kl_directed(
            &d(&[0.0]),
            &d(&[1.0]),
            &d(&[1.0]),
            &d(&[2f64.ln()]),
            KlDirection::Reverse,
        )
        .unwrap();
        assert!((rev.double_value(&[0]) - (1.0 - 0.5 * 2f64.ln())).abs() < 1e-12);
        // The mean over [(0,1)‖(1,2), (3,4)‖(3,4)] = (½ ln 2 + 0)/2.
        let mean = gaussian_kl_mean(
            &d(&[0.0, 3.0]),
            &d(&[1.0, 4.0]),
            &d(&[1.0, 3.0]),
            &d(&[2f64.ln(), 4f64.ln()]),
        )
        .unwrap();
        assert!((mean.double_value(&[]) - 0.25 * 2f64.ln()).abs() < 1e-12);
        // Per sample over [1, 2]-shaped inputs: the same pair of dimensions averaged, [½ ln 2 / 2].
        let per = gaussian_kl_per_sample(
            &d(&[0.0, 3.0]).view([1, 2]),
            &d(&[1.0, 4.0]).view([1, 2]),
            &d(&[1.0, 3.0]).view([1, 2]),
            &d(&[2f64.ln(), 4f64.ln()]).view([1, 2]),
        )
        .unwrap();
        assert_eq!(per.size(), vec![1]);
        assert!((per.double_value(&[0]) - 0.25 * 2f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn zero_for_identical_and_positive_otherwise() {
        tch::manual_seed(20);
        let mu = randn(&[4, 6]);
        let logvar = randn(&[4, 6]);
        for dir in [KlDirection::Forward, KlDirection::Reverse] {
            let same = gaussian_kl_directed(&mu, &logvar.exp(), &mu, &logvar, dir).unwrap();
            assert!(same.abs().max().double_value(&[]) < 1e-12);
            let other =
                gaussian_kl_directed(&mu, &logvar.exp(), &(&mu + 0.1), &(&logvar * 0.5), dir).unwrap();
            assert!(other.min().double_value(&[]) > 0.0);
        }
    }

    #[test]
    fn additive_over_dimensions() {
        // Multivariate closed form for diagonal covariances:
        // ½·[Σ ln σ²_q − Σ ln σ²_p + Σ σ²_p/σ²_q + Σ (μ_p − μ_q)²/σ²_q − D].
        let (mp, vp, mq, vq): ([f64; 3], [f64; 3], [f64; 3], [f64; 3]) = (
            [0.5, -1.0, 2.0],
            [0.3, 1.7, 2.5],
            [0.0, 1.0, 1.5],
            [1.2, 0.4, 3.0],
        );
        let mut joint = -3.0f64;
        for i in 0..3 {
            joint += vq[i].ln() - vp[i].ln() + vp[i] / vq[i] + (mp[i] - mq[i]).powi(2) / vq[i];
        }
        joint *= 0.5;
        let lq: Vec<f64> = vq.iter().map(|v: &f64| v.ln()).collect();
        let kl = gaussian_kl(&d(&mp), &d(&vp), &d(&mq), &d(&lq)).unwrap();
        assert!((kl.sum(Kind::Double).double_value(&[]) - joint).abs() < 1e-12);
    }

    #[test]
    fn monte_carlo_estimate_agrees() {
        // E_{x~p}[log p(x) − log q(x)] from 400k seeded samples, within 4 standard errors.
        let (mp, vp, mq, vq) = (0.3f64, 0.5f64, -0.7f64, 2.0f64);
        tch::manual_seed(21);
        let x = randn(&[400_000]) * vp.sqrt() + mp;
        let log_ratio = (&x - mp).square() * (-0.5 / vp) - 0.5 * vp.ln()
            + (&x - mq).square() * (0.5 / vq)
            + 0.5 * vq.ln();
        let n = log_ratio.numel() as f64;
        let estimate = log_ratio.mean(Kind::Double).double_value(&[]);
        let std_err = log_ratio.std(true).double_value(&[]) / n.sqrt();
        let closed = gaussian_kl(&d(&[mp]), &d(&[vp]), &d(&[mq]), &d(&[vq.ln()]))
            .unwrap()
            .double_value(&[0]);
        assert!(
            (estimate - closed).abs() < 4.0 * std_err,
            "MC {estimate} ± {std_err} vs closed form {closed}"
        );
    }

    #[test]
    fn asymmetric_and_direction_flag_switches() {
        let (mu_t, var_t, mu_s, var_s) = (d(&[0.2]), d(&[0.5]), d(&[-0.4]), d(&[3.0]));
        let fwd = gaussian_kl_directed(&mu_t, &var_t, &mu_s, &var_s.log(), KlDirection::Forward).unwrap();
        let rev = gaussian_kl_directed(&mu_t, &var_t, &mu_s, &var_s.log(), KlDirection::Reverse).unwrap();
        // Reverse equals the forward formula with the roles swapped.
        let swapped = gaussian_kl(&mu_s, &var_s, &mu_t, &var_t.log()).unwrap();
        assert!((rev.double_value(&[0]) - swapped.double_value(&[0])).abs() < 1e-12);
        assert!((fwd.double_value(&[0]) - rev.double_value(&[0])).abs() > 0.1);
    }

    #[test]
    fn guards_keep_values_and_gradients_finite() {
        // Saturated student log-variances and an all-zero teacher channel.
        let mu_t = d(&[0.0, 0.0, 1.0]);
        let var_t = d(&[0.0, 0.0, 0.0]).set_requires_grad(true);
        let mu_s = d(&[0.5, -0.5, 0.0]).set_requires_grad(true);
        let logvar_s = d(&[1.0e3, -1.0e3, 0.0]).set_requires_grad(true);
        for dir in [KlDirection::Forward, KlDirection::Reverse] {
            let kl = gaussian_kl_directed(&mu_t, &var_t, &mu_s, &logvar_s, dir).unwrap();
            assert!(kl.isfinite().all().int64_value(&[]) == 1, "{kl:?}");
            kl.sum(Kind::Double).backward();
            assert!(mu_s.grad().isfinite().all().int64_value(&[]) == 1);
            assert!(logvar_s.grad().isfinite().all().int64_value(&[]) == 1);
        }
        // The clamp is exactly [−10, 10] and the variance floor exactly ε.
        let at_clamp = gaussian_kl(&d(&[0.0]), &d(&[1.0]), &d(&[0.0]), &d(&[50.0])).unwrap();
        let at_edge = gaussian_kl(&d(&[0.0]), &d(&[1.0]), &d(&[0.0]), &d(&[LOGVAR_MAX])).unwrap();
        assert_eq!(at_clamp.double_value(&[0]), at_edge.double_value(&[0]));
        let floored = gaussian_kl(&d(&[0.0]), &d(&[0.0]), &d(&[0.0]), &d(&[VAR_EPS.ln()])).unwrap();
        assert!(floored.double_value(&[0]).abs() < 1e-12);
        // And the teacher operands never receive a gradient.
        assert!(!var_t.grad().defined());
    }

    #[test]
    fn teacher_detached_and_gradients_match() {
        let mu_t = randn(&[2, 3]).set_requires_grad(true);
        let var_t = (randn(&[2, 3]).exp()).set_requires_grad(true);
        let mu_s = randn(&[2, 3]).set_requires_grad(true);
        let logvar_s = randn(&[2, 3]).set_requires_grad(true);
        gaussian_kl_mean(&mu_t, &var_t, &mu_s, &logvar_s)
            .unwrap()
            .backward();
        assert!(!mu_t.grad().defined() && !var_t.grad().defined());
        assert!(mu_s.grad().defined() && logvar_s.grad().defined());

        tch::manual_seed(22);
        let inputs = [
            randn(&[2, 3]),
            randn(&[2, 3]).exp(),
            randn(&[2, 3]),
            randn(&[2, 3]),
        ];
        for dir in [KlDirection::Forward, KlDirection::Reverse] {
            assert_gradients("gaussian_kl", &inputs, &[2, 3], |x| {
                gaussian_kl_directed(&x[0], &x[1], &x[2], &x[3], dir)
            });
        }
    }

    #[test]
    fn shape_errors_name_both_shapes() {
        let a = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([4, 7], (Kind::Float, Device::Cpu));
        assert_shape_error(gaussian_kl(&a, &b, &a, &a), &a, &b);
        assert_shape_error(gaussian_kl(&a, &a, &b, &a), &a, &b);
        assert_shape_error(gaussian_kl_mean(&a, &a, &a, &b), &a, &b);
        assert_shape_error(gaussian_kl_per_sample(&a, &a, &a, &b), &a, &b);
        let e = Tensor::zeros([0, 8], (Kind::Float, Device::Cpu));
        assert!(matches!(
            gaussian_kl_mean(&e, &e, &e, &e),
            Err(crate::KdError::BadShape { .. })
        ));
    }
}
