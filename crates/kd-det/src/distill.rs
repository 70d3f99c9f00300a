//! Supervised training of the FCOS detector ([`DetSupervised`]): the "no KD" row of the
//! detection tables and how detection teachers are trained. Feature-level methods (GDD, CWD on
//! the FPN levels) add their terms to exactly this task loss, so
//! [`DetSupervised::task_terms`] is public and composable.

use serde::{Deserialize, Serialize};

use crate::losses::FcosLoss;
use kd_core::distill::{Distiller, LossTerms, StepCtx, TaskLoss};
use kd_core::Result;

/// Supervised detection: the [`FcosLoss`] terms `"cls"`, `"box"` and `"ctr"` of the student's
/// output against the batch's box labels `[B, N, 6]`.
///
/// Needs no teacher and sets no gradient bound of its own: the detection recipe clips the
/// gradient norm at 35 through the training config's `grad_clip`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetSupervised {
    /// The FCOS loss settings (defaults: MMDetection 2.x).
    pub loss: FcosLoss,
}

impl DetSupervised {
    /// A supervised distiller; fails on an invalid loss config.
    pub fn new(loss: FcosLoss) -> Result<Self> {
        loss.validate()?;
        Ok(Self { loss })
    }

    /// The task terms of a training step: [`FcosLoss::terms`] on `ctx.s_out`, the student's
    /// taps (level strides) and the batch's box rows.
    pub fn task_terms(&self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        self.loss
            .terms(ctx.s_out, ctx.student.taps(), ctx.batch.target.boxes()?)
    }
}

impl TaskLoss for DetSupervised {
    fn task_terms(&self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        DetSupervised::task_terms(self, ctx)
    }
}

impl Distiller for DetSupervised {
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

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::losses::fixtures::{fake_output, FakeDetector};
    use kd_core::data::Batch;
    use kd_core::distill::Progress;
    use kd_core::models::Model;

    #[test]
    fn supervised_terms_are_the_fcos_terms() {
        let det = FakeDetector::new(&[8, 16], 3);
        let out = fake_output(2, &[(4, 4), (2, 2)], 3, 7);
        let y = Tensor::from_slice(&[
            4.0f32, 4.0, 20.0, 20.0, 1.0, 0.0, //
            -1.0, -1.0, -1.0, -1.0, -1.0, 0.0, //
            0.0, 0.0, 30.0, 28.0, 2.0, 0.0, //
            2.0, 2.0, 6.0, 6.0, 0.0, 0.0,
        ])
        .view([2, 2, 6]);
        let batch = Batch {
            x: Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu)),
            target: kd_core::data::Target::Boxes(y),
            index: Tensor::from_slice(&[0i64, 1]),
            indices: vec![0, 1],
        };
        let ctx = StepCtx {
            batch: &batch,
            student: &det,
            teacher: None,
            s_out: &out,
            t_out: None,
            progress: Progress {
                epoch: 0,
                epochs: 1,
                global_step: 0,
                steps_per_epoch: 1,
            },
        };
        let mut d = DetSupervised::default();
        assert_eq!(d.name(), "none");
        assert!(!d.needs_teacher());
        assert_eq!(d.max_grad_norm(), None);
        let terms = d.loss(&ctx).unwrap();
        let names: Vec<&str> = terms.terms().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["cls", "box", "ctr"]);
        let direct = FcosLoss::default()
            .terms(&out, det.taps(), batch.target.tensor())
            .unwrap();
        for ((_, a), (_, b)) in terms.terms().iter().zip(direct.terms()) {
            let (a, b) = (a.double_value(&[]), b.double_value(&[]));
            assert!(a.is_finite() && a > 0.0 && a == b, "{a} vs {b}");
        }
    }

    #[test]
    fn config_reads_from_toml_and_rejects_unknown_keys() {
        let d: DetSupervised = toml::from_str("").unwrap();
        assert_eq!(d, DetSupervised::default());
        let d: DetSupervised =
            toml::from_str("[loss]\nbox_weight = 2.0\nregress_ranges = [[-1, 64], [64, inf]]").unwrap();
        assert_eq!(d.loss.box_weight, 2.0);
        assert_eq!(
            d.loss.regress_ranges,
            Some(vec![[-1.0, 64.0], [64.0, f64::INFINITY]])
        );
        assert!(toml::from_str::<DetSupervised>("[loss]\nbox_weigth = 2.0").is_err());
        assert!(toml::from_str::<DetSupervised>("alpha = 1.0").is_err());
        let bad = FcosLoss {
            center_radius: 0.0,
            ..FcosLoss::default()
        };
        assert!(DetSupervised::new(bad)
            .unwrap_err()
            .to_string()
            .contains("center_radius"));
    }
}
