//! Top-1 (and top-k) accuracy, the classification tables' metric.

use kd_core::data::BatchSource;
use kd_core::distill::Distiller;
use kd_core::models::Model;
use kd_core::train::{batch_to, top1_counts, Evaluator};
use kd_core::{KdError, Result};
use tch::Device;

/// Top-1 accuracy in % over the labelled samples (labels in `0..K`; −1 = unlabelled is not
/// counted), on the student's class scores `[B, K]` from [`Distiller::student_logits`], in eval
/// mode under `no_grad`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Top1;

impl Evaluator for Top1 {
    fn name(&self) -> String {
        "top1".into()
    }

    fn evaluate(
        &self,
        student: &dyn Model,
        distiller: &dyn Distiller,
        data: &dyn BatchSource,
        device: Device,
    ) -> Result<f64> {
        let (mut hit, mut n) = (0i64, 0i64);
        // Each rank scores its part of every batch; the counts are summed over the ranks.
        for batch in kd_core::dist::eval_batches(data) {
            let batch = batch_to(batch?, device);
            student.check_input(&batch.x)?;
            batch.target.labels()?;
            tch::no_grad(|| -> Result<()> {
                let out = student.forward_t(&batch.x, false);
                let logits = distiller.student_logits(student, &out)?;
                let (h, c) = top1_counts(&logits, &batch.target);
                hit += h;
                n += c;
                Ok(())
            })?;
        }
        let sums = kd_core::dist::sum_f64(&[hit as f64, n as f64])?;
        let (hit, n) = (sums[0] as i64, sums[1] as i64);
        if n == 0 {
            return Err(KdError::invalid(format!(
                "{}: the evaluation set has no labelled samples",
                data.name()
            )));
        }
        Ok(100.0 * hit as f64 / n as f64)
    }
}
