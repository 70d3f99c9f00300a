//! Decoupled knowledge distillation (Zhao et al., *Decoupled Knowledge Distillation*, CVPR
//! 2022).
//!
//! DKD splits Hinton KD's KL into two parts and weights them separately, because the classical
//! form couples the non-target part to the teacher's confidence on the target class (a
//! confident teacher silences it):
//!
//! ```text
//! b   = [p_gt, 1 − p_gt]                          binary target / non-target split of softmax(z/τ)
//! p̂   = softmax over the classes k ≠ gt of z/τ    the non-target distribution
//! TCKD = τ² · (1/B) Σ_b KL(b_T ‖ b_S)
//! NCKD = τ² · (1/B) Σ_b KL(p̂_T ‖ p̂_S)
//! L_DKD = α · TCKD + β · NCKD
//! ```
//!
//! As the authors' `mdistiller` (`mdistiller/distillers/DKD.py`, `dkd_loss`) computes it: the
//! KLs are summed over the batch and divided by `B`, both are scaled by τ², and the non-target
//! softmax is taken over all `K` classes with `1000` subtracted from the target's `z/τ`, so the
//! target's share underflows to exactly zero. The binary split is computed in log space here
//! (`log(1 − p_gt)` as a log-sum-exp over the other classes) rather than as the reference's
//! `log` of a summed probability, which is the same number where the reference is finite and
//! stays finite where the reference's `log(0)` is not.

use tch::{Kind, Tensor};

use super::check;
use crate::{KdError, Result};

/// What the reference subtracts from the target class's `z/τ` before the non-target softmax.
pub const NON_TARGET_SHIFT: f64 = 1000.0;

/// The two DKD terms, unweighted: `(TCKD, NCKD)`, each `τ² · (1/B) Σ_b KL`.
///
/// `s`, `t`: student and teacher logits `[B, K]` with `K ≥ 2`; `labels`: `[B]` Int64 class
/// indices in `[0, K)`; `tau > 0`. Returns two 0-dim tensors in nats. The teacher is detached.
/// The math runs in fp32 (fp64 for fp64 inputs).
pub fn dkd_terms(s: &Tensor, t: &Tensor, labels: &Tensor, tau: f64) -> Result<(Tensor, Tensor)> {
    const OP: &str = "dkd";
    check::pair(OP, "[B, K]", 2, "student logits", s, "teacher logits", t)?;
    check::non_empty(OP, "student logits", s)?;
    check::temperature(OP, tau)?;
    let (b, k) = (s.size()[0], s.size()[1]);
    if k < 2 {
        return Err(KdError::invalid(format!(
            "{OP}: logits {:?} have {k} class; the target/non-target split needs K >= 2",
            s.size()
        )));
    }
    if labels.size() != [b] {
        return Err(check::mismatch(
            OP,
            "logits [B, K] and labels [B]",
            "student logits",
            s,
            "labels",
            labels,
        ));
    }
    check::same_device(OP, "student logits", s, "labels", labels)?;
    check::label_values(OP, labels, k, None)?;
    let kind = check::work_kind(&[s, t]);
    let zs = s.to_kind(kind) / tau;
    let zt = t.detach().to_kind(kind) / tau;
    let gt = labels.unsqueeze(1);
    let gt_mask = Tensor::zeros_like(&zs).scatter_value(1, &gt, 1.0);

    // Binary split in log space: log p_gt and log(1 − p_gt) = logsumexp_{k≠gt} z − logsumexp z.
    let binary = |z: &Tensor| -> Tensor {
        let lse = z.logsumexp([1], true);
        let log_gt = z.gather(1, &gt, false) - &lse;
        let others = z.masked_fill(&gt_mask.to_kind(Kind::Bool), f64::NEG_INFINITY);
        let log_rest = others.logsumexp([1], true) - &lse;
        Tensor::cat(&[log_gt, log_rest], 1)
    };
    let (bs, bt) = (binary(&zs), binary(&zt));
    let tckd = (bt.exp() * (&bt - &bs)).sum(kind);

    // Non-target distributions: the reference's shift of the target logit, then a full softmax.
    let shift = &gt_mask * NON_TARGET_SHIFT;
    let ls = (&zs - &shift).log_softmax(1, kind);
    let lt = (&zt - &shift).log_softmax(1, kind);
    let nckd = (lt.exp() * (&lt - &ls)).sum(kind);

    let scale = tau * tau / b as f64;
    Ok((tckd * scale, nckd * scale))
}

/// The weighted DKD loss `α · TCKD + β · NCKD` of [`dkd_terms`], a 0-dim tensor in nats.
///
/// `s`, `t`: `[B, K]` logits; `labels`: `[B]` Int64; `tau > 0`; `alpha`, `beta` finite. The
/// teacher is detached. This is the reference's `dkd_loss(logits_student, logits_teacher,
/// target, alpha, beta, temperature)`.
pub fn dkd_loss(s: &Tensor, t: &Tensor, labels: &Tensor, alpha: f64, beta: f64, tau: f64) -> Result<Tensor> {
    if !(alpha.is_finite() && beta.is_finite()) {
        return Err(KdError::invalid(format!(
            "dkd: alpha = {alpha}, beta = {beta}: both must be finite"
        )));
    }
    let (tckd, nckd) = dkd_terms(s, t, labels, tau)?;
    Ok(tckd * alpha + nckd * beta)
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::losses::gradcheck::{assert_gradients, assert_shape_error};
    use crate::losses::kd_loss;

    fn logits(rows: &[[f64; 3]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 3])
    }

    #[test]
    fn both_terms_match_their_hand_computed_values() {
        // τ = 2. Teacher z/τ = [ln 2, ln 3, 0] → p_T = [1/3, 1/2, 1/6];
        // student z/τ = [ln 2, 0, 0] → p_S = [1/2, 1/4, 1/4]; target class 0.
        // TCKD: b_T = [1/3, 2/3], b_S = [1/2, 1/2]
        //   KL = 1/3 ln(2/3) + 2/3 ln(4/3).
        // NCKD: p̂_T = [3/4, 1/4], p̂_S = [1/2, 1/2]
        //   KL = 3/4 ln(3/2) + 1/4 ln(1/2).
        // Both × τ² = 4, and the batch of two equal rows has the same mean (a batch sum would
        // double it).
        let (l2, l3) = (2f64.ln(), 3f64.ln());
        let t = logits(&[[2.0 * l2, 2.0 * l3, 0.0], [2.0 * l2, 2.0 * l3, 0.0]]);
        let s = logits(&[[2.0 * l2, 0.0, 0.0], [2.0 * l2, 0.0, 0.0]]);
        let y = Tensor::from_slice(&[0i64, 0]);
        let (tckd, nckd) = dkd_terms(&s, &t, &y, 2.0).unwrap();
        let want_t = 4.0 * ((2.0f64 / 3.0).ln() / 3.0 + 2.0 / 3.0 * (4.0f64 / 3.0).ln());
        let want_n = 4.0 * (0.75 * 1.5f64.ln() + 0.25 * 0.5f64.ln());
        assert!(
            (tckd.double_value(&[]) - want_t).abs() < 1e-12,
            "{tckd} vs {want_t}"
        );
        assert!(
            (nckd.double_value(&[]) - want_n).abs() < 1e-12,
            "{nckd} vs {want_n}"
        );
        assert!(want_t > 0.0 && want_n > 0.0);
        // The weighted sum, with mdistiller's CIFAR weights α = 1, β = 8.
        let l = dkd_loss(&s, &t, &y, 1.0, 8.0, 2.0).unwrap().double_value(&[]);
        assert!((l - (want_t + 8.0 * want_n)).abs() < 1e-12);
    }

    #[test]
    fn the_target_class_decides_the_split() {
        // The same logits with target class 1: b_T = [1/2, 1/2], b_S = [1/4, 3/4];
        // p̂_T = [2/3, 1/3] (classes 0, 2), p̂_S = [2/3, 1/3].
        let (l2, l3) = (2f64.ln(), 3f64.ln());
        let t = logits(&[[2.0 * l2, 2.0 * l3, 0.0]]);
        let s = logits(&[[2.0 * l2, 0.0, 0.0]]);
        let y = Tensor::from_slice(&[1i64]);
        let (tckd, nckd) = dkd_terms(&s, &t, &y, 2.0).unwrap();
        let want_t = 4.0 * (0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln());
        assert!((tckd.double_value(&[]) - want_t).abs() < 1e-12);
        assert!(nckd.double_value(&[]).abs() < 1e-12);
    }

    #[test]
    fn hinton_kd_is_tckd_plus_the_teachers_non_target_mass_times_nckd() {
        // The paper's decomposition: KD = TCKD + (1 − p_gt^T) · NCKD (both without τ²).
        // So DKD at α = 1, β = 1 − p_gt^T reproduces Hinton KD exactly.
        tch::manual_seed(3);
        let s = Tensor::randn([4, 5], (Kind::Double, Device::Cpu));
        let t = Tensor::randn([4, 5], (Kind::Double, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 3, 1, 4]);
        let tau = 3.0;
        for b in 0..4 {
            let (sb, tb, yb) = (s.narrow(0, b, 1), t.narrow(0, b, 1), y.narrow(0, b, 1));
            let (tc, nc) = dkd_terms(&sb, &tb, &yb, tau).unwrap();
            let p_gt = (&tb / tau)
                .softmax(1, Kind::Double)
                .double_value(&[0, y.int64_value(&[b])]);
            let kd = kd_loss(&sb, &tb, tau).unwrap().double_value(&[]);
            let dkd = tc.double_value(&[]) + (1.0 - p_gt) * nc.double_value(&[]);
            assert!(
                (kd - dkd).abs() < 1e-10,
                "sample {b}: KD {kd} vs decomposition {dkd}"
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        tch::manual_seed(5);
        let s = Tensor::randn([3, 4], (Kind::Double, Device::Cpu));
        let t = Tensor::randn([3, 4], (Kind::Double, Device::Cpu));
        let y = Tensor::from_slice(&[2i64, 0, 3]);
        for (alpha, beta, tau) in [(1.0, 8.0, 4.0), (1.0, 0.5, 1.0)] {
            assert_gradients("dkd", &[s.shallow_clone(), t.shallow_clone()], &[0], |x| {
                dkd_loss(&x[0], &x[1], &y, alpha, beta, tau)
            });
        }
    }

    #[test]
    fn the_teacher_gets_no_gradient() {
        let s = Tensor::randn([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let t = Tensor::randn([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = Tensor::from_slice(&[0i64, 2]);
        dkd_loss(&s, &t, &y, 1.0, 8.0, 4.0).unwrap().backward();
        assert!(s.grad().defined());
        assert!(!t.grad().defined());
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let s = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let t = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1]);
        assert_shape_error(dkd_terms(&s, &t, &y, 4.0), &s, &t);
        let y3 = Tensor::from_slice(&[0i64, 1, 2]);
        assert!(dkd_terms(&s, &s, &y3, 4.0)
            .unwrap_err()
            .to_string()
            .contains("labels"));
        let y_bad = Tensor::from_slice(&[0i64, 3]);
        assert!(dkd_terms(&s, &s, &y_bad, 4.0).is_err());
        assert!(dkd_terms(&s, &s, &y, 0.0)
            .unwrap_err()
            .to_string()
            .contains("tau"));
        let one = Tensor::zeros([2, 1], (Kind::Float, Device::Cpu));
        assert!(dkd_terms(&one, &one, &Tensor::from_slice(&[0i64, 0]), 4.0)
            .unwrap_err()
            .to_string()
            .contains("K >= 2"));
        assert!(dkd_loss(&s, &s, &y, f64::NAN, 8.0, 4.0).is_err());
    }
}
