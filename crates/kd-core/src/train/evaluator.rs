//! The one path every test metric takes.
//!
//! The trainer knows no metric: top-1 (classification), mIoU (segmentation) and COCO box AP
//! (detection) are all [`Evaluator`]s, provided by their task crates, so the per-epoch curve, the
//! final number and the best number of a run are computed the same way whatever the task.

use tch::Device;

use crate::data::{BatchSource, SubsetSource};
use crate::distill::Distiller;
use crate::models::Model;
use crate::Result;

/// A test metric, e.g. top-1 accuracy, mean IoU or COCO box AP.
///
/// The trainer calls it after the epochs its recipe says, and for the final result; it must
/// run `student` in eval mode under `no_grad` and return a number where higher is better
/// (a percentage for every metric shipped here).
pub trait Evaluator {
    /// The metric's short name for tables and logs, e.g. `"top1"`, `"mIoU"`, `"box AP"`.
    fn name(&self) -> String;

    /// The student's metric over every sample of `data` (through
    /// [`Distiller::student_logits`] where the metric reads class scores).
    fn evaluate(
        &self,
        student: &dyn Model,
        distiller: &dyn Distiller,
        data: &dyn BatchSource,
        device: Device,
    ) -> Result<f64>;

    /// The metric over the samples `held` (indices of `train`, ascending) held out of the
    /// training source for early stopping, in evaluation batches of at most `eval_batch`
    /// samples. By default [`Evaluator::evaluate`] over a [`SubsetSource`] view of them; a
    /// metric scored against a set's own annotations (COCO box AP) overrides it to score
    /// against the training set's.
    fn evaluate_held(
        &self,
        student: &dyn Model,
        distiller: &dyn Distiller,
        train: &dyn BatchSource,
        held: &[usize],
        eval_batch: usize,
        device: Device,
    ) -> Result<f64> {
        let data = SubsetSource::new(train, held.to_vec(), "held out")?.with_eval_batch(eval_batch);
        self.evaluate(student, distiller, &data, device)
    }
}
