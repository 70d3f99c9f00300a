//! Supervised training of [`FasterRcnn`](super::FasterRcnn): the "no KD" row of the two-stage
//! table and how its teacher is trained; feature distillers add their terms to exactly these.

use serde::{Deserialize, Serialize};

use super::net::FasterRcnn;
use crate::boxes::ImageSize;
use kd_core::distill::{Distiller, LossTerms, StepCtx, TaskLoss};
use kd_core::{KdError, Result};

/// The weights of the four Faster R-CNN loss terms (all 1 in the released config: RPN
/// cross-entropy and L1, box-head cross-entropy and L1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrcnnLoss {
    /// RPN objectness (binary cross-entropy).
    pub rpn_cls_weight: f64,
    /// RPN box offsets (L1).
    pub rpn_box_weight: f64,
    /// Box-head classification (cross-entropy over `K + 1`).
    pub cls_weight: f64,
    /// Box-head offsets (L1).
    pub box_weight: f64,
}

impl Default for FrcnnLoss {
    fn default() -> Self {
        Self {
            rpn_cls_weight: 1.0,
            rpn_box_weight: 1.0,
            cls_weight: 1.0,
            box_weight: 1.0,
        }
    }
}

impl FrcnnLoss {
    /// Fails on a negative or non-finite weight, naming it.
    pub fn validate(&self) -> Result<()> {
        for (k, v) in [
            ("rpn_cls_weight", self.rpn_cls_weight),
            ("rpn_box_weight", self.rpn_box_weight),
            ("cls_weight", self.cls_weight),
            ("box_weight", self.box_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(KdError::invalid(format!(
                    "loss.{k}: must be finite and ≥ 0, got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// Supervised Faster R-CNN: the terms `"rpn_cls"`, `"rpn_box"`, `"cls"` and `"box"` of the
/// student's output against the batch's box rows `[B, N, 6]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrcnnSupervised {
    /// The loss weights.
    pub loss: FrcnnLoss,
}

impl FrcnnSupervised {
    /// A supervised distiller; fails on invalid weights.
    pub fn new(loss: FrcnnLoss) -> Result<Self> {
        loss.validate()?;
        Ok(Self { loss })
    }

    /// The task terms of a training step (the student must be a [`FasterRcnn`]).
    pub fn task_terms(&self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let net = FasterRcnn::of(ctx.student)?;
        let s = ctx.batch.x.size();
        let input = ImageSize::new(s[3] as f64, s[2] as f64);
        net.loss_terms(ctx.s_out, ctx.batch.target.boxes()?, input, &self.loss)
    }
}

impl TaskLoss for FrcnnSupervised {
    fn task_terms(&self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        FrcnnSupervised::task_terms(self, ctx)
    }
}

impl Distiller for FrcnnSupervised {
    fn name(&self) -> String {
        "none".into()
    }
    fn needs_teacher(&self) -> bool {
        false
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        self.task_terms(ctx)
    }
}
