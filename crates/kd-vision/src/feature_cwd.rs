//! Channel-wise distillation on feature maps (Shu et al., ICCV 2021), e.g. on every FPN level
//! of a detector.
//!
//! This is the baseline GDD is measured against on detection: the same levels and the same
//! channel-wise spatial KL, but the student's map is compared as it is, with no noise and no
//! generator. When the student's and the teacher's channel counts differ, a 1×1 adapter (an
//! auxiliary module, never exported) maps the student's map first, as MMRazor's connector does.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use kd_core::distill::{Distiller, LossTerms, StepCtx, TaskLoss};
use kd_core::losses::cwd::cwd_loss;
use kd_core::models::{paired_taps, ModelOutput, Tap};
use kd_core::{KdError, Result};

/// One distilled pair of taps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureCwdLevel {
    /// Student tap, e.g. `"p3"`.
    pub student_tap: String,
    /// Teacher tap of the same stride.
    pub teacher_tap: String,
}

/// CWD on taps plus a task loss: `Σ_ℓ weight · τ²/(B·C) · Σ_{b,c} KL(p_T ‖ p_S)` over the
/// spatial softmax of each channel, with the task terms of `task`.
///
/// Terms: the task's, then `"cwd_feat"` (the sum over levels).
#[derive(Debug)]
pub struct FeatureCwd {
    levels: Vec<(FeatureCwdLevel, Option<nn::Conv2D>)>,
    tau: f64,
    weight: f64,
    task: Box<dyn TaskLoss>,
}

impl FeatureCwd {
    /// Builds the distiller; adapters (when channel counts differ) live under `aux/cwd_feat/<i>`.
    ///
    /// Fails on τ ≤ 0, a negative weight, no level, an unknown tap (the message lists the taps)
    /// or a level whose taps have different strides.
    pub fn new(
        aux: &nn::Path<'_>,
        levels: Vec<FeatureCwdLevel>,
        tau: f64,
        weight: f64,
        student_taps: &[Tap],
        teacher_taps: &[Tap],
        task: Box<dyn TaskLoss>,
    ) -> Result<Self> {
        if !(tau.is_finite() && tau > 0.0) {
            return Err(KdError::invalid(format!(
                "tau: must be finite and > 0, got {tau}"
            )));
        }
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(KdError::invalid(format!(
                "weight: must be finite and >= 0, got {weight}"
            )));
        }
        if levels.is_empty() {
            return Err(KdError::invalid("levels: feature CWD needs at least one level"));
        }
        let root = aux / "cwd_feat";
        let mut built = Vec::with_capacity(levels.len());
        for (i, level) in levels.into_iter().enumerate() {
            let (s, t) = paired_taps(
                &format!("feature cwd level {i}"),
                student_taps,
                &level.student_tap,
                teacher_taps,
                &level.teacher_tap,
            )?;
            let adapter = (s.channels != t.channels)
                .then(|| nn::conv2d(&root / i, s.channels, t.channels, 1, Default::default()));
            built.push((level, adapter));
        }
        Ok(Self {
            levels: built,
            tau,
            weight,
            task,
        })
    }

    /// The summed, weighted term over every level for the student and teacher outputs.
    pub fn term(&self, s_out: &ModelOutput, t_out: &ModelOutput) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (level, adapter) in &self.levels {
            let s = s_out.feature(&level.student_tap)?;
            let t = t_out.feature(&level.teacher_tap)?;
            let s = match adapter {
                Some(a) => s.apply(a),
                None => s.shallow_clone(),
            };
            let l = cwd_loss(&s, t, self.tau)?;
            total = Some(match total {
                Some(acc) => acc + l,
                None => l,
            });
        }
        Ok(total.expect("at least one level") * self.weight)
    }
}

impl Distiller for FeatureCwd {
    fn name(&self) -> String {
        "cwd_feat".into()
    }

    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let t_out = ctx
            .t_out
            .ok_or_else(|| KdError::invalid("feature cwd needs a teacher"))?;
        let mut terms = self.task.task_terms(ctx)?;
        terms.push("cwd_feat", self.term(ctx.s_out, t_out)?);
        Ok(terms)
    }
}
