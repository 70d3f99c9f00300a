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
use crate::table::{NetRow, NetStudent, Plan, Reference, SingleTeacher, SingleTeacherTable};

/// A whole segmentation experiment (one table at one scale).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegExperiment {
    /// Table name (`cityscapes`).
    pub table: String,
    /// `quick` or `paper`.
    pub scale: String,
    /// The data the paper's numbers are for (shown as "— not <this>" on the stand-in).
    #[serde(default)]
    pub paper_dataset: Option<String>,
    /// Seeds run when `--seeds` is not given (default 3).
    #[serde(default)]
    pub seeds: Option<u64>,
    /// Data handling.
    pub data: SegData,
    /// The task loss of every student and of the teacher: decode-head CE plus the auxiliary
    /// head's CE at `aux_weight` (default 0.4), pixels labelled `ignore_index` (255) ignored.
    #[serde(default)]
    pub loss: SegSupervised,
    /// The teacher.
    pub teacher: SingleTeacher<SegNetConfig>,
    /// The students, by name.
    pub students: Vec<NetStudent<SegNetConfig>>,
    /// The rows, in display order after the teacher row.
    pub rows: Vec<NetRow>,
    /// Published reference rows shown under the table.
    #[serde(default)]
    pub references: Vec<Reference>,
    /// The picture of validation predictions.
    #[serde(default)]
    pub picture: Option<Picture>,
}

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

impl SegExperiment {
    /// The plan; checks that every student predicts the teacher's classes.
    pub fn plan(&self) -> Result<Plan<SegNetConfig>> {
        self.data.inference.validate()?;
        self.loss.validate()?;
        for s in &self.students {
            if s.net.num_classes != self.teacher.net.num_classes {
                bail!(
                    "student {:?} predicts {} classes, the teacher {}",
                    s.name,
                    s.net.num_classes,
                    self.teacher.net.num_classes
                );
            }
        }
        for r in &self.rows {
            match &r.method {
                Method::None | Method::Gdd(_) => {}
                Method::Cwd(c) if c.taps.is_empty() => {}
                other => bail!(
                    "row {:?}: method {:?} is not a segmentation method (none, cwd on the logits, gdd)",
                    r.label,
                    other.kind()
                ),
            }
        }
        SingleTeacherTable {
            table: &self.table,
            scale: &self.scale,
            seeds: self.seeds,
            teacher: &self.teacher,
            students: &self.students,
            rows: &self.rows,
            references: &self.references,
            picture_rows: self.picture.as_ref().map_or(&[][..], |p| &p.rows[..]),
        }
        .plan()
    }
}
