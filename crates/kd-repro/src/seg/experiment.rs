//! The segmentation table description (`cityscapes`).
//!
//! Same idea as the classification experiment — a table is data — but the pieces differ: the
//! networks are encoder–decoder configurations rather than zoo names, the data is a
//! Cityscapes-format tree (the real one with `--data`, else a generated stand-in written in that
//! very format), and the metric is mIoU. Rows pick a student by name and a method; the teacher
//! is trained once (or given with `--teacher FILE`) and shared by every row and seed, as the
//! paper distils from one released checkpoint.

use anyhow::{bail, Result};
use kd_seg::data::{SegAugConfig, SynthConfig};
use kd_seg::models::{Inference, SegNetConfig};
use kd_seg::SegSupervised;
use serde::{Deserialize, Serialize};

use crate::methods::Method;
use crate::table::{NetClasses, PictureRows, Plan, SingleTeacherExp};

/// A whole segmentation experiment (one table at one scale): the single-teacher schema with
/// the segmentation data section, [`SegSupervised`] as the task loss (`[loss]`: `aux_weight`,
/// default 0.4, and `ignore_index`, default 255) and the prediction picture.
pub type SegExperiment = SingleTeacherExp<SegData, SegSupervised, SegNetConfig, Picture>;

/// Where the images come from and how they are fed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegData {
    /// The generated stand-in used without `--data`.
    pub synth: SynthConfig,
    /// Resize every image (and label map) by this factor when it is read, e.g. 0.25 for a
    /// quarter-resolution run; 1 = native size.
    #[serde(default = "one")]
    pub scale: f64,
    /// Training augmentation (rescale, crop, flip, photometric, normalisation, padding).
    pub augment: SegAugConfig,
    /// How the final evaluation runs a net on a validation image: `{ mode = "whole" }` (the
    /// default, the paper's protocol) or `{ mode = "slide", crop = [h, w], stride = [h, w] }`.
    /// Per-epoch curves always use whole images.
    #[serde(default)]
    pub inference: Inference,
    /// Decode (and resize) every image once and keep the sets in memory, instead of decoding
    /// each image in every epoch. For small or down-scaled sets; full-size Cityscapes needs
    /// about 19 GB.
    #[serde(default)]
    pub in_memory: bool,
}

fn one() -> f64 {
    1.0
}

/// The validation picture: a few images, their ground truth and the predictions of some rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Picture {
    /// PNG file name in the run folder.
    pub file: String,
    /// Number of validation images (the first ones, in dataset order).
    pub images: usize,
    /// Labels of the rows whose seed-0 predictions are shown, one column each.
    pub rows: Vec<String>,
}

impl PictureRows for Picture {
    fn rows(&self) -> &[String] {
        &self.rows
    }
}

impl NetClasses for SegNetConfig {
    fn num_classes(&self) -> i64 {
        self.num_classes
    }
}

/// The plan of a segmentation experiment; its methods are none, CWD on the logits, MGD and GDD.
pub fn plan(exp: &SegExperiment) -> Result<Plan<SegNetConfig>> {
    exp.data.inference.validate()?;
    exp.loss.validate()?;
    exp.plan(|m| match m {
        Method::None | Method::Gdd(_) | Method::Mgd(_) => Ok(()),
        Method::Cwd(c) if c.taps.is_empty() => Ok(()),
        other => bail!(
            "method {:?} is not a segmentation method (none, cwd on the logits, mgd, gdd)",
            other.kind()
        ),
    })
}
