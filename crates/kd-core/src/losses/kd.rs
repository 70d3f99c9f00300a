//! Hinton knowledge distillation and the cross-entropy it is mixed with.
//!
//! Hinton, Vinyals & Dean (2015) soften both networks' logits with a temperature τ and match the
//! student's distribution to the teacher's with a KL divergence. The gradient of the softened KL
//! shrinks like 1/τ², so the KL term is multiplied by τ² to keep its magnitude comparable across
//! temperatures and against the hard-label cross-entropy:
//!
//! ```text
//! L = (1 − α) · CE(z_S, y) + α · τ² · (1/B) Σ_b KL(softmax(z_T,b / τ) ‖ softmax(z_S,b / τ))
//! ```
//!
//! Per-sample variants (`[B]`) exist because sample-weighting methods (self-regulated KD,
//! KD³'s disagreement weights) reduce the batch themselves, see [`super::reduce`]. Every
//! cross-entropy here is computed from a fused `log_softmax` in fp32 at least.

use tch::Tensor;

use super::check;
use super::kl::{forward_kl_total, log_probs, softmax_kl_per_sample};
use crate::{KdError, Result};

/// The label value that [`dense_cross_entropy`] skips by convention (unlabelled pixels in
/// Cityscapes-style segmentation masks).
pub const IGNORE_INDEX: i64 = 255;

/// Hinton KD term per sample: `τ² · KL(p_T^τ ‖ p_S^τ)`.
///
/// `s`, `t`: student and teacher logits `[B, K]`; `tau > 0`. Returns `[B]` in nats (scaled by
/// τ²). The teacher is detached.
pub fn kd_per_sample(s: &Tensor, t: &Tensor, tau: f64) -> Result<Tensor> {
    Ok(softmax_kl_per_sample(s, t, tau)? * (tau * tau))
}

/// Hinton KD term: the batch mean of [`kd_per_sample`], a scalar.
///
/// `s`, `t`: `[B, K]` logits; `tau > 0`. Returns a 0-dim tensor in nats. The teacher is detached.
pub fn kd_loss(s: &Tensor, t: &Tensor, tau: f64) -> Result<Tensor> {
    let (log_s, log_t) = log_probs(s, t, tau)?;
    let b = s.size()[0] as f64;
    // One reduction over the whole batch, then τ²/B on the scalar: the mean of
    // `kd_per_sample` without its per-row sums and extra passes.
    Ok(forward_kl_total(&log_s, &log_t) * (tau * tau / b))
}

/// Cross-entropy per sample, `−log softmax(logits)[y]`.
///
/// `logits`: `[B, K]`; `labels`: `[B]` Int64 class indices in `[0, K)` (anything else is an
/// error, checked before libtorch sees it). Returns `[B]` in nats.
pub fn cross_entropy_per_sample(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    if logits.dim() != 2 || labels.size() != [logits.size()[0]] {
        return Err(check::mismatch(
            OP,
            "logits [B, K] and labels [B]",
            "logits",
            logits,
            "labels",
            labels,
        ));
    }
    check::non_empty(OP, "logits", logits)?;
    check::same_device(OP, "logits", logits, "labels", labels)?;
    check::label_values(OP, labels, logits.size()[1], None)?;
    let kind = check::work_kind(&[logits]);
    let log_p = logits.to_kind(kind).log_softmax(-1, kind);
    Ok(-log_p.gather(1, &labels.unsqueeze(1), false).squeeze_dim(1))
}

/// Mean cross-entropy over the batch, a scalar.
///
/// `logits`: `[B, K]`; `labels`: `[B]` Int64 in `[0, K)`. Returns a 0-dim tensor in nats.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let per_sample = cross_entropy_per_sample(logits, labels)?;
    let kind = per_sample.kind();
    Ok(per_sample.mean(kind))
}

/// Per-pixel cross-entropy for dense prediction, averaged over the labelled pixels.
///
/// `logits`: `[B, K, H, W]`; `labels`: `[B, H, W]` Int64 with values in `[0, K)` or equal to
/// `ignore_index` (usually [`IGNORE_INDEX`]). Pixels labelled `ignore_index` contribute neither
/// to the sum nor to the count. Returns a 0-dim tensor in nats; when every pixel is ignored it
/// is 0 (with a zero gradient) rather than the 0/0 = NaN of a plain mean.
pub fn dense_cross_entropy(logits: &Tensor, labels: &Tensor, ignore_index: i64) -> Result<Tensor> {
    const OP: &str = "dense_cross_entropy";
    let (ls, ys) = (logits.size(), labels.size());
    if ls.len() != 4 || ys.len() != 3 || ls[0] != ys[0] || ls[2..] != ys[1..] {
        return Err(check::mismatch(
            OP,
            "logits [B, K, H, W] and labels [B, H, W]",
            "logits",
            logits,
            "labels",
            labels,
        ));
    }
    check::non_empty(OP, "logits", logits)?;
    check::same_device(OP, "logits", logits, "labels", labels)?;
    check::label_values(OP, labels, ls[1], Some(ignore_index))?;
    let kind = check::work_kind(&[logits]);
    let valid = labels.ne(ignore_index);
    let safe_labels = labels.where_scalarother(&valid, 0);
    let log_p = logits.to_kind(kind).log_softmax(1, kind);
    let nll = -log_p.gather(1, &safe_labels.unsqueeze(1), false).squeeze_dim(1);
    let nll = nll.masked_fill(&valid.logical_not(), 0.0);
    let count = valid.sum(kind).clamp_min(1.0);
    Ok(nll.sum(kind) / count)
}

/// The Hinton KD loss kernel: the KD term mixed with the hard-label cross-entropy (the
/// distiller that trains with it is `kd_classify::HintonKd`):
/// `(1 − α) · CE(z_S, y) + α · τ² · KL(p_T^τ ‖ p_S^τ)`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KdMix {
    /// Temperature τ, `> 0`. The CRD/DKD CIFAR-100 default is 4.
    pub tau: f64,
    /// Weight α of the KD term in `[0, 1]`; the cross-entropy gets `1 − α`. The CRD/DKD
    /// CIFAR-100 default is 0.9.
    pub alpha: f64,
}

impl Default for KdMix {
    /// τ = 4, α = 0.9, the common CIFAR-100 setting.
    fn default() -> Self {
        Self { tau: 4.0, alpha: 0.9 }
    }
}

impl KdMix {
    /// The mixed loss, averaged over the batch: a 0-dim tensor in nats.
    ///
    /// `s`, `t`: student and teacher logits `[B, K]`; `labels`: `[B]` Int64 in `[0, K)`. The
    /// teacher is detached.
    pub fn loss(&self, s: &Tensor, t: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let per_sample = self.per_sample(s, t, labels)?;
        let kind = per_sample.kind();
        Ok(per_sample.mean(kind))
    }

    /// The mixed loss per sample, `[B]` in nats; its mean is [`KdMix::loss`].
    pub fn per_sample(&self, s: &Tensor, t: &Tensor, labels: &Tensor) -> Result<Tensor> {
        self.validate()?;
        let kd = kd_per_sample(s, t, self.tau)?;
        let ce = cross_entropy_per_sample(s, labels)?;
        Ok(ce * (1.0 - self.alpha) + kd * self.alpha)
    }

    /// Fails unless `tau` is finite and positive and `alpha` lies in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        check::temperature("KdMix", self.tau)?;
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(KdError::invalid(format!(
                "KdMix: alpha must lie in [0, 1], got {}",
                self.alpha
            )));
        }
        Ok(())
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

    fn labels(v: &[i64]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn hand_computed_values() {
        // Student [0, 0] → p_S = [1/2, 1/2]; teacher [2 ln 3, 0] at τ = 2 → p_T = [3/4, 1/4].
        // KL = 0.75·ln 1.5 − 0.25·ln 2; KD = τ²·KL = 4·KL ≈ 0.523248.
        // CE(student, y = 0) = −ln(1/2) = ln 2.
        // KdMix{τ = 2, α = 0.25} = 0.75·ln 2 + 0.25·4·KL.
        let s = Tensor::from_slice(&[0.0f64, 0.0]).view([1, 2]);
        let t = Tensor::from_slice(&[2.0 * 3f64.ln(), 0.0]).view([1, 2]);
        let kl = 0.75 * 1.5f64.ln() - 0.25 * 2f64.ln();
        let kd = kd_loss(&s, &t, 2.0).unwrap().double_value(&[]);
        assert!(
            (kd - 4.0 * kl).abs() < 1e-12 && (kd - 0.523_248).abs() < 1e-6,
            "{kd}"
        );
        let ce = cross_entropy(&s, &labels(&[0])).unwrap().double_value(&[]);
        assert!((ce - 2f64.ln()).abs() < 1e-12);
        let mixed = KdMix {
            tau: 2.0,
            alpha: 0.25,
        }
        .loss(&s, &t, &labels(&[0]))
        .unwrap();
        let want = 0.75 * 2f64.ln() + 0.25 * 4.0 * kl;
        assert!((mixed.double_value(&[]) - want).abs() < 1e-12);
    }

    #[test]
    fn batch_of_two_hand_computed_tau_squared_over_batch() {
        // τ = 2, B = 2, K = 2; KL(p_T ‖ p_S) per row:
        // row 0: student [0, 0] → p_S = [1/2, 1/2]; teacher [2 ln 3, 0] → p_T = [3/4, 1/4];
        //   KL₀ = 0.75·ln 1.5 − 0.25·ln 2 ≈ 0.130812.
        // row 1: student [2 ln 3, 0] → p_S = [3/4, 1/4]; teacher [0, 2 ln 3] → p_T = [1/4, 3/4];
        //   KL₁ = 0.25·ln(1/3) + 0.75·ln 3 = 0.5·ln 3 ≈ 0.549306.
        // kd_per_sample = τ²·[KL₀, KL₁] ≈ [0.523248, 2.197225];
        // kd_loss = τ²/B·(KL₀ + KL₁) = 2·(KL₀ + KL₁) ≈ 1.360236
        // (without τ²: 0.340059; summed over the batch: 2.720473; reverse KL: 1.386294).
        let l3 = 3f64.ln();
        let s = Tensor::from_slice(&[0.0f64, 0.0, 2.0 * l3, 0.0]).view([2, 2]);
        let t = Tensor::from_slice(&[2.0 * l3, 0.0, 0.0, 2.0 * l3]).view([2, 2]);
        let (kl0, kl1) = (0.75 * 1.5f64.ln() - 0.25 * 2f64.ln(), 0.5 * l3);
        let per = kd_per_sample(&s, &t, 2.0).unwrap();
        assert_eq!(per.size(), vec![2]);
        assert!((per.double_value(&[0]) - 4.0 * kl0).abs() < 1e-12);
        assert!((per.double_value(&[1]) - 4.0 * kl1).abs() < 1e-12);
        let kd = kd_loss(&s, &t, 2.0).unwrap().double_value(&[]);
        assert!((kd - 2.0 * (kl0 + kl1)).abs() < 1e-12, "{kd}");
        assert!((kd - 1.360_236).abs() < 1e-6, "{kd}");
        // The same in fp32, the dtype the trainers run in.
        let kd32 = kd_loss(&s.to_kind(Kind::Float), &t.to_kind(Kind::Float), 2.0)
            .unwrap()
            .double_value(&[]);
        assert!((kd32 - 2.0 * (kl0 + kl1)).abs() < 1e-6, "{kd32}");
    }

    #[test]
    fn cross_entropy_hand_values() {
        // Logits [ln 3, 0] → p = [3/4, 1/4]: CE(y=0) = ln(4/3), CE(y=1) = ln 4; mean = ln(4/3·4)/2.
        let z = Tensor::from_slice(&[3f64.ln(), 0.0, 3f64.ln(), 0.0]).view([2, 2]);
        let per = cross_entropy_per_sample(&z, &labels(&[0, 1])).unwrap();
        assert!((per.double_value(&[0]) - (4.0f64 / 3.0).ln()).abs() < 1e-12);
        assert!((per.double_value(&[1]) - 4f64.ln()).abs() < 1e-12);
        let mean = cross_entropy(&z, &labels(&[0, 1])).unwrap().double_value(&[]);
        assert!((mean - 0.5 * (16.0f64 / 3.0).ln()).abs() < 1e-12);
    }

    #[test]
    fn zero_kd_for_identical_logits_at_alpha_one() {
        tch::manual_seed(3);
        let z = randn(&[6, 10]) * 5.0;
        let y = Tensor::randint(10, [6], (Kind::Int64, Device::Cpu));
        let loss = KdMix { tau: 4.0, alpha: 1.0 }.loss(&z, &z, &y).unwrap();
        assert!(loss.double_value(&[]).abs() < 1e-12);
    }

    #[test]
    fn invariant_to_per_sample_constant() {
        tch::manual_seed(4);
        let s = randn(&[4, 7]);
        let t = randn(&[4, 7]) * 2.0;
        let y = Tensor::from_slice(&[0i64, 3, 6, 2]);
        let shift = Tensor::from_slice(&[10.0f64, -3.0, 0.5, 100.0]).view([4, 1]);
        let kd = KdMix { tau: 3.0, alpha: 0.6 };
        let base = kd.per_sample(&s, &t, &y).unwrap();
        for (s2, t2) in [
            (&s + &shift, t.shallow_clone()),
            (s.shallow_clone(), &t - &shift * 2.0),
        ] {
            let moved = kd.per_sample(&s2, &t2, &y).unwrap();
            assert!((&moved - &base).abs().max().double_value(&[]) < 1e-10);
        }
    }

    #[test]
    fn tau_one_alpha_zero_is_cross_entropy() {
        tch::manual_seed(5);
        let s = randn(&[5, 4]);
        let t = randn(&[5, 4]);
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 0]);
        let kd = KdMix { tau: 1.0, alpha: 0.0 }.loss(&s, &t, &y).unwrap();
        let ce = cross_entropy(&s, &y).unwrap();
        assert_eq!(kd.double_value(&[]), ce.double_value(&[]));
        // And the library CE agrees with libtorch's own.
        let reference = s.log_softmax(-1, Kind::Double).nll_loss(&y).double_value(&[]);
        assert!((ce.double_value(&[]) - reference).abs() < 1e-12);
    }

    #[test]
    fn loss_is_mean_of_per_sample() {
        tch::manual_seed(6);
        let (s, t) = (randn(&[3, 5]), randn(&[3, 5]));
        let y = Tensor::from_slice(&[4i64, 0, 2]);
        let kd = KdMix::default();
        let mean = kd
            .per_sample(&s, &t, &y)
            .unwrap()
            .mean(Kind::Double)
            .double_value(&[]);
        assert!((kd.loss(&s, &t, &y).unwrap().double_value(&[]) - mean).abs() < 1e-14);
    }

    #[test]
    fn teacher_gets_no_gradient() {
        let s = randn(&[2, 3]).set_requires_grad(true);
        let t = randn(&[2, 3]).set_requires_grad(true);
        KdMix::default()
            .loss(&s, &t, &labels(&[0, 2]))
            .unwrap()
            .backward();
        assert!(s.grad().defined());
        assert!(!t.grad().defined());
    }

    #[test]
    fn gradients_match_finite_differences() {
        tch::manual_seed(7);
        let (s, t) = (randn(&[3, 4]), randn(&[3, 4]));
        let y = labels(&[1, 3, 0]);
        assert_gradients(
            "kd_per_sample",
            &[s.shallow_clone(), t.shallow_clone()],
            &[0],
            |x| kd_per_sample(&x[0], &x[1], 4.0),
        );
        assert_gradients("KdMix", &[s, t], &[0], |x| {
            KdMix { tau: 2.0, alpha: 0.7 }.per_sample(&x[0], &x[1], &y)
        });
        let logits = randn(&[2, 3, 2, 2]);
        let dense_y = Tensor::from_slice(&[0i64, 1, 2, 255, 2, 255, 1, 0]).view([2, 2, 2]);
        assert_gradients("dense_cross_entropy", &[logits], &[0], |x| {
            dense_cross_entropy(&x[0], &dense_y, IGNORE_INDEX)
        });
    }

    #[test]
    fn dense_cross_entropy_ignores_pixels() {
        // Two pixels: logits [ln 3, 0] with label 0 (CE = ln 4/3), and an ignored pixel whose
        // logits would otherwise add a large CE. The mean is over the one labelled pixel.
        let logits = Tensor::from_slice(&[3f64.ln(), -50.0, 0.0, 50.0]).view([1, 2, 1, 2]);
        let y = Tensor::from_slice(&[0i64, IGNORE_INDEX]).view([1, 1, 2]);
        let ce = dense_cross_entropy(&logits, &y, IGNORE_INDEX)
            .unwrap()
            .double_value(&[]);
        assert!((ce - (4.0f64 / 3.0).ln()).abs() < 1e-12);
        // Equals libtorch's reference with the same ignore index.
        let reference = logits
            .log_softmax(1, Kind::Double)
            .nll_loss_nd::<Tensor>(&y, None, tch::Reduction::Mean, IGNORE_INDEX)
            .double_value(&[]);
        assert!((ce - reference).abs() < 1e-12);
        // All ignored: 0, not NaN, and backward works.
        let logits = logits.set_requires_grad(true);
        let all = Tensor::full([1, 1, 2], IGNORE_INDEX, (Kind::Int64, Device::Cpu));
        let zero = dense_cross_entropy(&logits, &all, IGNORE_INDEX).unwrap();
        assert_eq!(zero.double_value(&[]), 0.0);
        zero.backward();
        assert_eq!(logits.grad().abs().sum(Kind::Double).double_value(&[]), 0.0);
    }

    #[test]
    fn dense_matches_classification_on_flattened_pixels() {
        tch::manual_seed(8);
        let logits = randn(&[2, 5, 3, 4]);
        let y = Tensor::randint(5, [2, 3, 4], (Kind::Int64, Device::Cpu));
        let dense = dense_cross_entropy(&logits, &y, IGNORE_INDEX).unwrap();
        let flat = cross_entropy(&logits.permute([0, 2, 3, 1]).reshape([-1, 5]), &y.reshape([-1])).unwrap();
        assert!((dense.double_value(&[]) - flat.double_value(&[])).abs() < 1e-12);
    }

    #[test]
    fn shape_errors_name_both_shapes() {
        let z = Tensor::zeros([4, 10], (Kind::Float, Device::Cpu));
        let z2 = Tensor::zeros([3, 10], (Kind::Float, Device::Cpu));
        let y = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
        let y_bad = Tensor::zeros([4, 1], (Kind::Int64, Device::Cpu));
        let y_short = Tensor::zeros([3], (Kind::Int64, Device::Cpu));
        assert_shape_error(kd_per_sample(&z, &z2, 4.0), &z, &z2);
        assert_shape_error(kd_loss(&z, &z2, 4.0), &z, &z2);
        assert_shape_error(cross_entropy(&z, &y_bad), &z, &y_bad);
        assert_shape_error(cross_entropy_per_sample(&z, &y_short), &z, &y_short);
        assert_shape_error(KdMix::default().loss(&z, &z2, &y), &z, &z2);
        assert_shape_error(KdMix::default().per_sample(&z, &z, &y_short), &z, &y_short);
        let dl = Tensor::zeros([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        let dy = Tensor::zeros([2, 4, 6], (Kind::Int64, Device::Cpu));
        assert_shape_error(dense_cross_entropy(&dl, &dy, IGNORE_INDEX), &dl, &dy);
        assert_shape_error(dense_cross_entropy(&z, &y, IGNORE_INDEX), &z, &y);
    }

    #[test]
    fn bad_labels_and_hyper_parameters_are_errors() {
        let z = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        for bad in [[0i64, 3], [-1, 0]] {
            assert!(matches!(
                cross_entropy(&z, &labels(&bad)),
                Err(KdError::Invalid(_))
            ));
        }
        let float_labels = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        assert!(matches!(
            cross_entropy(&z, &float_labels),
            Err(KdError::Invalid(_))
        ));
        let dl = Tensor::zeros([1, 3, 1, 2], (Kind::Float, Device::Cpu));
        let dy = Tensor::from_slice(&[2i64, 254]).view([1, 1, 2]);
        assert!(matches!(
            dense_cross_entropy(&dl, &dy, IGNORE_INDEX),
            Err(KdError::Invalid(_))
        ));
        let y = labels(&[0, 1]);
        for kd in [KdMix { tau: 0.0, alpha: 0.5 }, KdMix { tau: 1.0, alpha: 1.5 }] {
            assert!(matches!(kd.loss(&z, &z, &y), Err(KdError::Invalid(_))));
        }
    }
}
