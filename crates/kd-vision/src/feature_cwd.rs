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

#[cfg(test)]
mod tests {
    use tch::{nn, Device, Tensor};

    use super::*;

    #[derive(Debug)]
    struct NoTask;

    impl TaskLoss for NoTask {
        fn task_terms(&self, _: &StepCtx<'_>) -> Result<LossTerms> {
            Ok(LossTerms::new())
        }
    }

    fn output(features: Vec<(&str, Tensor)>) -> ModelOutput {
        ModelOutput {
            logits: Tensor::zeros([2, 1], (tch::Kind::Double, Device::Cpu)),
            aux_logits: None,
            features: features.into_iter().map(|(n, f)| (n.to_string(), f)).collect(),
            pooled: None,
            heads: Vec::new(),
        }
    }

    #[test]
    fn term_is_the_weighted_sum_over_levels_of_tau_squared_mean_kl_by_hand() {
        // τ = 2, weight 0.5, B = 2; sample 1 of every map is the same for student and teacher
        // (KL 0), and so is channel 1 of "p3".
        // "p3" [2, 2, 1, 2]: sample 0, channel 0: student [0, 0] → [1/2, 1/2], teacher
        //   [2 ln 3, 0] → [3/4, 1/4]: KL = 0.75·ln 1.5 − 0.25·ln 2 ≈ 0.130812;
        //   cwd = τ²/(B·C)·KL = 4/4·KL ≈ 0.130812.
        // "p4" [2, 1, 1, 2]: sample 0: student [2 ln 3, 0] → [3/4, 1/4], teacher [0, 2 ln 3] →
        //   [1/4, 3/4]: KL = 0.5·ln 3; cwd = 4/2·KL = ln 3 ≈ 1.098612.
        // term = 0.5·(0.130812 + 1.098612) ≈ 0.614712 (without τ²: 0.153678; summed over the
        // batch instead of averaged: 1.229424).
        let l3 = 3f64.ln();
        let d = |v: &[f64], shape: [i64; 4]| Tensor::from_slice(v).view(shape);
        let s = output(vec![
            ("p3", d(&[0.0, 0.0, 1.0, -1.0, 0.5, 0.2, -0.3, 0.7], [2, 2, 1, 2])),
            ("p4", d(&[2.0 * l3, 0.0, 1.5, -2.0], [2, 1, 1, 2])),
        ]);
        let t = output(vec![
            (
                "p3",
                d(&[2.0 * l3, 0.0, 1.0, -1.0, 0.5, 0.2, -0.3, 0.7], [2, 2, 1, 2]),
            ),
            ("p4", d(&[0.0, 2.0 * l3, 1.5, -2.0], [2, 1, 1, 2])),
        ]);
        let taps = [Tap::new("p3", 2, 8), Tap::new("p4", 1, 16)];
        let vs = nn::VarStore::new(Device::Cpu);
        let levels = ["p3", "p4"]
            .map(|n| FeatureCwdLevel {
                student_tap: n.into(),
                teacher_tap: n.into(),
            })
            .to_vec();
        let cwd = FeatureCwd::new(&vs.root(), levels, 2.0, 0.5, &taps, &taps, Box::new(NoTask)).unwrap();
        assert!(vs.variables().is_empty(), "equal channels need no adapter");
        let kl = 0.75 * 1.5f64.ln() - 0.25 * 2f64.ln();
        let want = 0.5 * (kl + l3);
        assert!((want - 0.614_712).abs() < 1e-6, "{want}");
        let got = cwd.term(&s, &t).unwrap().double_value(&[]);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
}
