//! Temperature softmax and the KL divergence between two categorical distributions.
//!
//! Every logit-level method compares a teacher distribution `p_T = softmax(z_T / τ)` with the
//! student's `p_S = softmax(z_S / τ)`. The KL is computed from two fused `log_softmax` calls
//! (never `softmax` followed by `log`, which underflows to `log 0 = -inf` for confident
//! predictions) in fp32 at least. The temperature is applied here but the τ² gradient-scale
//! factor is not: that belongs to the loss that uses the KL (see [`super::kd`]).

use tch::Tensor;

use super::check;
use crate::Result;

/// Which way round a KL divergence is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KlDirection {
    /// `KL(teacher ‖ student)`: the teacher is the reference distribution, as in Hinton KD.
    /// Mean-seeking: the student is pushed to cover every mode of the teacher.
    #[default]
    Forward,
    /// `KL(student ‖ teacher)`: the student is the reference distribution. Mode-seeking: the
    /// student is pushed onto the teacher's dominant modes.
    Reverse,
}

/// `log softmax(logits / τ)` over the last dimension, in fp32 (fp64 inputs stay fp64).
///
/// `logits`: `[..., K]` with `K ≥ 1`; `tau`: temperature, finite and `> 0`. Returns the same
/// shape, in nats.
pub fn temperature_log_softmax(logits: &Tensor, tau: f64) -> Result<Tensor> {
    const OP: &str = "temperature_log_softmax";
    check::temperature(OP, tau)?;
    if logits.dim() == 0 {
        return Err(crate::KdError::BadShape {
            op: OP.into(),
            name: "logits".into(),
            shape: logits.size(),
            expected: "at least one dimension (the classes)".into(),
        });
    }
    check::non_empty(OP, "logits", logits)?;
    Ok(log_softmax_unchecked(logits, tau, check::work_kind(&[logits])))
}

/// Fused temperature log-softmax over `dim`; callers have validated the input. At τ = 1 the
/// division is skipped (a whole pass over the logits; the values are identical).
pub(crate) fn log_softmax_dim(logits: &Tensor, tau: f64, kind: tch::Kind, dim: i64) -> Tensor {
    let x = logits.to_kind(kind);
    if tau == 1.0 {
        x.log_softmax(dim, kind)
    } else {
        (x / tau).log_softmax(dim, kind)
    }
}

/// [`log_softmax_dim`] over the last dimension.
pub(crate) fn log_softmax_unchecked(logits: &Tensor, tau: f64, kind: tch::Kind) -> Tensor {
    log_softmax_dim(logits, tau, kind, -1)
}

/// The teacher's side of a divergence, cut from the graph: `t.detach()`, or `t` itself when it
/// carries no graph (a detach would only add a handle).
pub(crate) fn constant(t: &Tensor) -> Tensor {
    if t.requires_grad() {
        t.detach()
    } else {
        t.shallow_clone()
    }
}

/// The validated pair of log-probabilities `(log p_S, log p_T)` of [`softmax_kl_per_sample`].
pub(crate) fn log_probs(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    tau: f64,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "softmax_kl_per_sample";
    check::pair(
        OP,
        "[B, K]",
        2,
        "student_logits",
        student_logits,
        "teacher_logits",
        teacher_logits,
    )?;
    check::non_empty(OP, "student_logits", student_logits)?;
    check::temperature(OP, tau)?;
    let kind = check::work_kind(&[student_logits, teacher_logits]);
    Ok((
        log_softmax_unchecked(student_logits, tau, kind),
        log_softmax_unchecked(&constant(teacher_logits), tau, kind),
    ))
}

/// Per-sample forward KL `Σ_k p_T,k (log p_T,k − log p_S,k)` at temperature τ, without the τ²
/// factor.
///
/// `student_logits`, `teacher_logits`: `[B, K]`; `tau > 0`. Returns `[B]` in nats, fp32 (fp64
/// if an input is fp64). The teacher is detached: no gradient reaches `teacher_logits`.
pub fn softmax_kl_per_sample(student_logits: &Tensor, teacher_logits: &Tensor, tau: f64) -> Result<Tensor> {
    softmax_kl_per_sample_directed(student_logits, teacher_logits, tau, KlDirection::Forward)
}

/// Per-sample reverse KL `Σ_k p_S,k (log p_S,k − log p_T,k)` at temperature τ, without the τ²
/// factor.
///
/// Shapes and units as [`softmax_kl_per_sample`]; the teacher is detached.
pub fn reverse_softmax_kl_per_sample(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    tau: f64,
) -> Result<Tensor> {
    softmax_kl_per_sample_directed(student_logits, teacher_logits, tau, KlDirection::Reverse)
}

/// Per-sample KL at temperature τ in the given [`KlDirection`], without the τ² factor.
///
/// `student_logits`, `teacher_logits`: `[B, K]`; `tau > 0`. Returns `[B]` in nats. The teacher
/// is detached in both directions.
pub fn softmax_kl_per_sample_directed(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    tau: f64,
    direction: KlDirection,
) -> Result<Tensor> {
    let (log_s, log_t) = log_probs(student_logits, teacher_logits, tau)?;
    Ok(categorical_kl(&log_s, &log_t, direction, -1))
}

/// `Σ_dim p (log p − log q)` from log-probabilities, with `(p, q) = (T, S)` for
/// [`KlDirection::Forward`] and `(S, T)` for [`KlDirection::Reverse`]. Terms with `p = 0` are
/// exactly 0 since `exp(log p) = 0` multiplies a finite difference.
pub(crate) fn categorical_kl(log_s: &Tensor, log_t: &Tensor, direction: KlDirection, dim: i64) -> Tensor {
    let (log_p, log_q) = match direction {
        KlDirection::Forward => (log_t, log_s),
        KlDirection::Reverse => (log_s, log_t),
    };
    (log_p.exp() * (log_p - log_q)).sum_dim_intlist(dim, false, log_p.kind())
}

/// `Σ p_T (log p_T − log p_S)` over every element, a scalar: the forward KL summed over all
/// rows in one reduction, for losses that only need the batch total.
///
/// Multiply, then libtorch's cascaded `sum`. A dot product of the two flattened operands would
/// save the product's temporary, but BLAS accumulates it in fp32 along the whole vector: on
/// CWD's 5 M-element maps its total was off by 5e-5 relative, and the benchmark's value check
/// rejected it.
pub(crate) fn forward_kl_total(log_s: &Tensor, log_t: &Tensor) -> Tensor {
    (log_t.exp() * (log_t - log_s)).sum(log_t.kind())
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;
    use crate::losses::gradcheck::{assert_gradients, assert_shape_error};

    fn t2(rows: &[&[f64]]) -> Tensor {
        let k = rows[0].len() as i64;
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, k])
    }

    #[test]
    fn hand_computed_forward_and_reverse() {
        // Teacher logits [2 ln 3, 0] at τ = 2 give p_T = [3/4, 1/4]; student logits [0, 0] give
        // p_S = [1/2, 1/2].
        // Forward: 3/4·ln(3/4 / 1/2) + 1/4·ln(1/4 / 1/2) = 0.75·ln 1.5 − 0.25·ln 2 ≈ 0.1308120.
        // Reverse: 1/2·ln(1/2 / 3/4) + 1/2·ln(1/2 / 1/4) = 0.5·ln(2/3) + 0.5·ln 2 = 0.5·ln(4/3).
        let s = t2(&[&[0.0, 0.0]]);
        let t = t2(&[&[2.0 * 3f64.ln(), 0.0]]);
        let fwd = softmax_kl_per_sample(&s, &t, 2.0).unwrap();
        let rev = reverse_softmax_kl_per_sample(&s, &t, 2.0).unwrap();
        assert_eq!(fwd.size(), vec![1]);
        let want_fwd = 0.75 * 1.5f64.ln() - 0.25 * 2f64.ln();
        let want_rev = 0.5 * (4.0f64 / 3.0).ln();
        assert!((fwd.double_value(&[0]) - want_fwd).abs() < 1e-12);
        assert!((rev.double_value(&[0]) - want_rev).abs() < 1e-12);
        assert!((want_fwd - 0.130_812).abs() < 1e-6);
    }

    #[test]
    fn zero_for_identical_logits_and_positive_otherwise() {
        tch::manual_seed(0);
        let z = Tensor::randn([5, 7], (Kind::Double, tch::Device::Cpu)) * 3.0;
        let same = softmax_kl_per_sample(&z, &z, 4.0).unwrap();
        assert!(same.abs().max().double_value(&[]) < 1e-12);
        let other = Tensor::randn([5, 7], (Kind::Double, tch::Device::Cpu));
        let kl = softmax_kl_per_sample(&z, &other, 1.0).unwrap();
        assert!(kl.min().double_value(&[]) > 0.0);
    }

    #[test]
    fn runs_in_fp32_for_half_inputs() {
        let s = Tensor::from_slice(&[0.0f32, 1.0, 2.0])
            .view([1, 3])
            .to_kind(Kind::Half);
        let t = Tensor::from_slice(&[2.0f32, 1.0, 0.0])
            .view([1, 3])
            .to_kind(Kind::Half);
        let kl = softmax_kl_per_sample(&s, &t, 1.0).unwrap();
        assert_eq!(kl.kind(), Kind::Float);
        assert_eq!(temperature_log_softmax(&s, 1.0).unwrap().kind(), Kind::Float);
    }

    #[test]
    fn confident_teacher_gives_finite_kl() {
        // softmax-then-log would give log 0 = −inf for the 0-probability classes here.
        let s = Tensor::from_slice(&[0.0f32, 0.0, 0.0]).view([1, 3]);
        let t = Tensor::from_slice(&[1.0e4f32, 0.0, -1.0e4]).view([1, 3]);
        let fwd = softmax_kl_per_sample(&s, &t, 1.0).unwrap().double_value(&[0]);
        let rev = reverse_softmax_kl_per_sample(&s, &t, 1.0)
            .unwrap()
            .double_value(&[0]);
        assert!((fwd - 3f64.ln()).abs() < 1e-5, "{fwd}");
        assert!(rev.is_finite() && rev > 1e3, "{rev}");
    }

    #[test]
    fn direction_flag_switches() {
        tch::manual_seed(1);
        let s = Tensor::randn([3, 4], (Kind::Double, tch::Device::Cpu));
        let t = Tensor::randn([3, 4], (Kind::Double, tch::Device::Cpu)) * 2.0;
        let fwd = softmax_kl_per_sample_directed(&s, &t, 1.5, KlDirection::Forward).unwrap();
        let rev = softmax_kl_per_sample_directed(&s, &t, 1.5, KlDirection::Reverse).unwrap();
        // Reverse KL is forward KL with the roles swapped.
        let swapped = softmax_kl_per_sample(&t, &s, 1.5).unwrap();
        assert!((rev - &swapped).abs().max().double_value(&[]) < 1e-12);
        assert!((fwd - swapped).abs().max().double_value(&[]) > 1e-3);
    }

    #[test]
    fn teacher_is_detached() {
        let s = Tensor::from_slice(&[0.1f64, 0.2, 0.3])
            .view([1, 3])
            .set_requires_grad(true);
        let t = Tensor::from_slice(&[0.3f64, 0.1, 0.2])
            .view([1, 3])
            .set_requires_grad(true);
        for dir in [KlDirection::Forward, KlDirection::Reverse] {
            let kl = softmax_kl_per_sample_directed(&s, &t, 2.0, dir).unwrap();
            kl.sum(Kind::Double).backward();
            assert!(s.grad().defined());
            assert!(!t.grad().defined());
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        tch::manual_seed(2);
        let s = Tensor::randn([3, 5], (Kind::Double, tch::Device::Cpu));
        let t = Tensor::randn([3, 5], (Kind::Double, tch::Device::Cpu));
        for dir in [KlDirection::Forward, KlDirection::Reverse] {
            assert_gradients("softmax_kl", &[s.shallow_clone(), t.shallow_clone()], &[0], |x| {
                softmax_kl_per_sample_directed(&x[0], &x[1], 2.5, dir)
            });
        }
    }

    #[test]
    fn shape_and_argument_errors() {
        let a = Tensor::zeros([4, 10], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::zeros([4, 9], (Kind::Float, tch::Device::Cpu));
        assert_shape_error(softmax_kl_per_sample(&a, &b, 1.0), &a, &b);
        let a3 = Tensor::zeros([4, 10, 1], (Kind::Float, tch::Device::Cpu));
        let b3 = Tensor::zeros([4, 10, 1], (Kind::Float, tch::Device::Cpu));
        assert_shape_error(reverse_softmax_kl_per_sample(&a3, &b3, 1.0), &a3, &b3);
        let e = Tensor::zeros([0, 10], (Kind::Float, tch::Device::Cpu));
        assert!(matches!(
            softmax_kl_per_sample(&e, &e, 1.0),
            Err(crate::KdError::BadShape { .. })
        ));
        for tau in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                softmax_kl_per_sample(&a, &a, tau),
                Err(crate::KdError::Invalid(_))
            ));
        }
        assert!(temperature_log_softmax(&Tensor::from(1.0f32), 1.0).is_err());
    }
}
