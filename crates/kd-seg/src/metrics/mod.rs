//! Segmentation metrics: the confusion matrix behind mIoU, the [`MeanIou`] evaluator every
//! segmentation run reports through, and the Cityscapes evaluation of prediction folders.
//!
//! - [`ConfusionMatrix`]: per-class IoU, mean IoU and pixel accuracy over training ids, updated
//!   from tensors on any device (one host copy per update) or from host arrays;
//! - [`MeanIou`]: mIoU of a net over a loader, whole-image or sliding-window;
//! - [`eval_cityscapes_dirs`]: evaluates a folder of predictions saved in the Cityscapes format
//!   against `gtFine` label-id maps the way the official pixel-level evaluation script does.

mod cityscapes;
mod confusion;

pub use cityscapes::{
    eval_cityscapes_dirs, prediction_to_label_ids, save_cityscapes_prediction, CsClassScore, EvalReport,
};
pub use confusion::{ClassIou, ConfusionMatrix, SegReport};

use kd_core::data::BatchSource;
use kd_core::distill::Distiller;
use kd_core::models::Model;
use kd_core::train::{batch_to, Evaluator};
use kd_core::{KdError, Result};
use tch::Device;

use crate::data::IGNORE;
use crate::models::Inference;

/// Mean IoU in % over the classes present in prediction or ground truth; label-map pixels
/// outside `0..K` (255 = ignore) are not counted. The net runs in eval mode under `no_grad`,
/// on whole images through [`Distiller::student_logits`] or in sliding windows.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeanIou {
    /// How the net sees a validation image.
    pub inference: Inference,
}

impl MeanIou {
    /// The confusion matrix of `net` over every batch of `data` (its class scores through
    /// `distiller` when given and the inference is whole-image).
    pub fn confusion(
        &self,
        net: &dyn Model,
        distiller: Option<&dyn Distiller>,
        data: &dyn BatchSource,
        device: Device,
    ) -> Result<ConfusionMatrix> {
        let mut cm = ConfusionMatrix::new(net.num_classes() as usize, IGNORE as i64);
        // Each rank counts its part of every batch; the matrices are summed over the ranks.
        for batch in kd_core::dist::eval_batches(data) {
            let batch = batch_to(batch?, device);
            let labels = batch.target.label_map()?;
            let logits = match (self.inference, distiller) {
                (Inference::Whole, Some(d)) => {
                    net.check_input(&batch.x)?;
                    tch::no_grad(|| d.student_logits(net, &net.forward_t(&batch.x, false)))?
                }
                (inference, _) => inference.logits(net, &batch.x)?,
            };
            cm.update(&logits.argmax(1, false), labels)?;
        }
        cm.sum_over_ranks()?;
        if cm.total() == 0 {
            return Err(KdError::invalid(format!(
                "{}: no labelled pixels to evaluate",
                data.name()
            )));
        }
        Ok(cm)
    }
}

impl Evaluator for MeanIou {
    fn name(&self) -> String {
        "mIoU".into()
    }

    fn evaluate(
        &self,
        student: &dyn Model,
        distiller: &dyn Distiller,
        data: &dyn BatchSource,
        device: Device,
    ) -> Result<f64> {
        Ok(self.confusion(student, Some(distiller), data, device)?.miou())
    }
}
