//! Stage 2: the student variants.
//!
//! All four share the Hinton per-sample loss
//! `ℓ_i = (1 − α)·CE(z_S,i, y_i) + α·τ²·KL(p_T^τ ‖ p_S^τ)` and differ only in the data they
//! iterate and the per-sample weight:
//!
//! | variant | data  | weight `w_i`   |
//! |---------|-------|----------------|
//! | `kd`    | D     | 1              |
//! | `sbd`   | D_sig | `s_i`          |
//! | `rd`    | D     | `m_i^S`        |
//! | `hd`    | D_sig | `m_i^S · s_i`  |
//!
//! `m^S` is the self-regulation gate applied to the *student's* own prediction, and `s` the
//! teacher's significance. The batch loss is `Σ w ℓ` over `Σ w` or over `B`
//! ([`Normalisation`]). A sample participates when `w_i > 0`; the participations are counted
//! for the data-use accounting. `D_sig` is enforced through the trainer's epoch plan, so SBD
//! and HD never even load the other samples.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use kd_core::distill::{Distiller, EpochCtx, EpochPlan, LossTerms, StepCtx};
use kd_core::losses::{cross_entropy_per_sample, kd_per_sample};
use kd_core::{KdError, Result};

use crate::counter::{Accounting, ParticipationCounter};
use crate::gate::{gate, GateConfig};
use crate::reduce::{reduce, Normalisation};
use crate::significance::Significance;

/// Which student variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// Standard KD over all of D (the baseline, with accounting).
    Kd,
    /// Significance-based distillation over D_sig.
    Sbd,
    /// Regulated distillation: the student's own gate, over all of D.
    Rd,
    /// Hybrid: the student's gate and significance, over D_sig.
    Hd,
}

impl Variant {
    /// Whether the variant weighs by significance and iterates D_sig.
    pub fn uses_significance(self) -> bool {
        matches!(self, Variant::Sbd | Variant::Hd)
    }

    /// Whether the variant gates samples by the student's own confidence.
    pub fn self_regulated(self) -> bool {
        matches!(self, Variant::Rd | Variant::Hd)
    }

    /// Lower-case name, e.g. `"sbd"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Kd => "kd",
            Variant::Sbd => "sbd",
            Variant::Rd => "rd",
            Variant::Hd => "hd",
        }
    }
}

/// Settings of a student run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentConfig {
    /// The variant.
    pub variant: Variant,
    /// Temperature τ (default 4).
    #[serde(default = "default_tau")]
    pub tau: f64,
    /// Weight α of the KD term; the cross-entropy gets `1 − α` (default 0.9). With α = 0 the
    /// teacher's logits are not needed (a labels-only student with the same accounting).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Batch normalisation of the weighted loss (default: weighted mean).
    #[serde(default)]
    pub normalisation: Normalisation,
    /// The student's own gate for RD and HD (threshold `β_S`; default as the teacher's).
    #[serde(default)]
    pub gate: GateConfig,
    /// `D_sig = {i : s_i > s_min}` (default 0).
    #[serde(default)]
    pub s_min: f64,
}

fn default_tau() -> f64 {
    4.0
}
fn default_alpha() -> f64 {
    0.9
}

impl StudentConfig {
    /// Default settings for `variant`.
    pub fn new(variant: Variant) -> Self {
        Self {
            variant,
            tau: default_tau(),
            alpha: default_alpha(),
            normalisation: Normalisation::default(),
            gate: GateConfig::default(),
            s_min: 0.0,
        }
    }

    /// Fails on a non-positive τ, an α outside `[0, 1]`, a negative `s_min` or a bad gate.
    pub fn validate(&self) -> Result<()> {
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return Err(KdError::invalid(format!(
                "selfreg student: tau must be finite and positive, got {}",
                self.tau
            )));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(KdError::invalid(format!(
                "selfreg student: alpha must lie in [0, 1], got {}",
                self.alpha
            )));
        }
        if !(self.s_min.is_finite() && self.s_min >= 0.0) {
            return Err(KdError::invalid(format!(
                "selfreg student: s_min must be finite and non-negative, got {}",
                self.s_min
            )));
        }
        self.gate.validate()
    }

    /// Whether a run needs the teacher's logits (α > 0).
    pub fn needs_teacher_logits(&self) -> bool {
        self.alpha > 0.0
    }
}

/// Per-sample weights `w [B]` (f32) of a variant: 1, `s` (SBD), `m` (RD) or `m·s` (HD).
/// `significance`: `[B]` values `s[index]`, required by SBD and HD; `mask`: `[B]` Bool student
/// gate, required by RD and HD.
pub fn variant_weights(
    variant: Variant,
    significance: Option<&Tensor>,
    mask: Option<&Tensor>,
    batch: i64,
    device: tch::Device,
) -> Result<Tensor> {
    let mut w = Tensor::ones([batch], (Kind::Float, device));
    if variant.uses_significance() {
        let s = significance
            .ok_or_else(|| KdError::invalid(format!("{} needs significance", variant.as_str())))?;
        check_len("significance", s, batch)?;
        w *= s.to_kind(Kind::Float);
    }
    if variant.self_regulated() {
        let m = mask.ok_or_else(|| KdError::invalid(format!("{} needs a gate mask", variant.as_str())))?;
        check_len("mask", m, batch)?;
        w *= m.to_kind(Kind::Float);
    }
    Ok(w)
}

fn check_len(name: &str, t: &Tensor, batch: i64) -> Result<()> {
    if t.size() != [batch] {
        return Err(KdError::BadShape {
            op: "variant_weights".into(),
            name: name.into(),
            shape: t.size(),
            expected: format!("[{batch}] (one per batch sample)"),
        });
    }
    Ok(())
}

/// The weighted loss terms `((1 − α)·reduce(CE, w), α·reduce(τ²·KL, w))`; the KD term is `None`
/// when `teacher` is. `student`, `teacher`: logits `[B, K]`; `labels`: `[B]`; `weights`: `[B]`
/// constants. Both terms are scalars in nats; their sum is the variant's batch loss.
pub fn weighted_kd_terms(
    student: &Tensor,
    teacher: Option<&Tensor>,
    labels: &Tensor,
    weights: &Tensor,
    cfg: &StudentConfig,
) -> Result<(Tensor, Option<Tensor>)> {
    let ce = cross_entropy_per_sample(student, labels)?;
    let ce = reduce(&ce, weights, cfg.normalisation)? * (1.0 - cfg.alpha);
    let kd = match teacher {
        Some(t) => {
            let kd = kd_per_sample(student, t, cfg.tau)?;
            Some(reduce(&kd, weights, cfg.normalisation)? * cfg.alpha)
        }
        None => None,
    };
    Ok((ce, kd))
}

/// Adds a term reduced with `norm` over weights `w [B]`: a weighted mean is a mean over the
/// batch's total weight, not over its samples, which a data-parallel step must know to weight
/// each rank by its share of that weight ([`LossTerms::push_mean_over`]).
pub(crate) fn push_reduced(
    terms: &mut LossTerms,
    name: &str,
    value: Tensor,
    w: &Tensor,
    norm: Normalisation,
) {
    match norm {
        Normalisation::WeightedMean => {
            let total = w.sum(Kind::Double).double_value(&[]);
            terms.push_mean_over(name, value, total);
        }
        Normalisation::PerBatch => terms.push(name, value),
    }
}

/// A student distiller of one [`Variant`], with participation accounting.
#[derive(Debug)]
pub struct SelfRegKd {
    cfg: StudentConfig,
    significance: Option<Significance>,
    subset: Option<Vec<usize>>,
    counter: ParticipationCounter,
    epochs: usize,
}

impl SelfRegKd {
    /// A student for a training set of `n_samples`. SBD and HD need the teacher's
    /// `significance` (of exactly `n_samples` samples, with a non-empty `D_sig`); KD and RD
    /// ignore it.
    pub fn new(cfg: StudentConfig, n_samples: usize, significance: Option<Significance>) -> Result<Self> {
        cfg.validate()?;
        let (significance, subset) = if cfg.variant.uses_significance() {
            let s = significance.ok_or_else(|| {
                KdError::invalid(format!(
                    "selfreg {}: needs the significance vector of a self-regulated teacher",
                    cfg.variant.as_str()
                ))
            })?;
            s.check_len(n_samples)?;
            let subset = s.subset(cfg.s_min);
            if subset.is_empty() {
                return Err(KdError::invalid(format!(
                    "selfreg {}: D_sig is empty (no sample has significance above s_min = {})",
                    cfg.variant.as_str(),
                    cfg.s_min
                )));
            }
            (Some(s), Some(subset))
        } else {
            (None, None)
        };
        Ok(Self {
            cfg,
            significance,
            subset,
            counter: ParticipationCounter::new(n_samples),
            epochs: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &StudentConfig {
        &self.cfg
    }

    /// `D_sig` for SBD and HD, `None` for KD and RD.
    pub fn subset(&self) -> Option<&[usize]> {
        self.subset.as_deref()
    }

    /// The participation counter.
    pub fn counter(&self) -> &ParticipationCounter {
        &self.counter
    }

    /// The data-use accounting so far.
    pub fn accounting(&self) -> Accounting {
        self.counter.accounting(self.epochs)
    }
}

impl Distiller for SelfRegKd {
    fn name(&self) -> String {
        format!("selfreg-{}", self.cfg.variant.as_str())
    }

    fn needs_teacher(&self) -> bool {
        self.cfg.needs_teacher_logits()
    }

    fn on_epoch_start(&mut self, ctx: &EpochCtx<'_>) -> Result<EpochPlan> {
        let n = ctx.train_set.len();
        if n != self.counter.len() {
            return Err(KdError::invalid(format!(
                "selfreg {}: built for {} samples but {} has {n}",
                self.cfg.variant.as_str(),
                self.counter.len(),
                ctx.train_set.name()
            )));
        }
        self.epochs = ctx.progress.epochs;
        Ok(match &self.subset {
            Some(s) => EpochPlan::Subset(s.clone()),
            None => EpochPlan::All,
        })
    }

    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let z = &ctx.s_out.logits;
        let y = ctx.batch.target.labels()?;
        let b = y.size().first().copied().unwrap_or(0);
        let teacher = match (self.cfg.needs_teacher_logits(), ctx.t_out) {
            (true, Some(t)) => Some(&t.logits),
            (true, None) => {
                return Err(KdError::invalid(format!(
                    "selfreg {} needs a teacher (alpha > 0)",
                    self.cfg.variant.as_str()
                )))
            }
            (false, _) => None,
        };
        let s = match &self.significance {
            Some(sig) => Some(sig.gather(&ctx.batch.index)?.to_device(z.device())),
            None => None,
        };
        let m = if self.cfg.variant.self_regulated() {
            Some(gate(z, y, &self.cfg.gate, ctx.progress.epoch)?)
        } else {
            None
        };
        let w = variant_weights(self.cfg.variant, s.as_ref(), m.as_ref(), b, z.device())?;
        let took = self
            .counter
            .record(ctx.progress.epoch, &ctx.batch.index, &w.gt(0.0), true)?;
        let (ce, kd) = weighted_kd_terms(z, teacher, y, &w, &self.cfg)?;
        let mut terms = LossTerms::new();
        push_reduced(&mut terms, "ce", ce, &w, self.cfg.normalisation);
        if let Some(kd) = kd {
            push_reduced(&mut terms, "kd", kd, &w, self.cfg.normalisation);
        }
        Ok(if took == 0 { terms.skip_update() } else { terms })
    }

    fn merge_ranks(&mut self) -> Result<()> {
        self.counter.merge_ranks()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.counter.state()
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        self.counter.load_state(state)
    }

    fn report(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.accounting()).unwrap_or_default();
        v["variant"] = self.cfg.variant.as_str().into();
        if let Some(s) = &self.subset {
            v["d_sig"] = s.len().into();
        }
        v
    }
}
