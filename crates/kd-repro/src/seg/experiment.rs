//! The segmentation table description (`cityscapes`).
//!
//! Same idea as the classification experiment — a table is data — but the pieces differ: the
//! networks are encoder–decoder configurations rather than zoo names, the data is a
//! Cityscapes-format tree (the real one with `--data`, else a generated stand-in written in that
//! very format), and the metric is mIoU. Rows pick a student by name and a method; the teacher
//! is trained once (or given with `--teacher FILE`) and shared by every row and seed, as the
//! paper distils from one released checkpoint.

use anyhow::{anyhow, bail, Result};
use kd_core::data::seg::{SegAugConfig, SynthConfig};
use kd_core::models::seg::{Inference, SegNetConfig};
use kd_core::train::TrainConfig;
use kd_gdd::GddConfig;
use serde::{Deserialize, Serialize};

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
    /// The teacher.
    pub teacher: SegTeacher,
    /// The students, by name.
    pub students: Vec<SegStudent>,
    /// The rows, in display order after the teacher row.
    pub rows: Vec<SegRow>,
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

/// The teacher network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegTeacher {
    /// Row label.
    pub label: String,
    /// Network.
    pub net: SegNetConfig,
    /// Recipe used when it is trained here (not with `--teacher`).
    pub train: TrainConfig,
    /// The published number for this teacher, when the table runs the paper's teacher.
    #[serde(default)]
    pub paper: Option<f64>,
}

/// A named student network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegStudent {
    /// Name rows refer to.
    pub name: String,
    /// Network.
    pub net: SegNetConfig,
    /// Recipe.
    pub train: TrainConfig,
}

/// One row: a student trained with a method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegRow {
    /// Row label.
    pub label: String,
    /// Student name.
    pub student: String,
    /// Method.
    pub method: SegMethod,
    /// The published mIoU, when the table runs the paper's setting.
    #[serde(default)]
    pub paper: Option<f64>,
}

/// A segmentation method, by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SegMethod {
    /// The task loss alone (decode-head CE + auxiliary-head CE).
    None {
        /// Weight of the auxiliary head's CE.
        #[serde(default = "aux_weight")]
        aux_weight: f64,
    },
    /// Channel-wise distillation on the logits, plus the task loss.
    Cwd {
        /// Temperature τ of the spatial softmax.
        tau: f64,
        /// Loss weight λ.
        weight: f64,
        /// Weight of the auxiliary head's CE.
        #[serde(default = "aux_weight")]
        aux_weight: f64,
    },
    /// Generative denoise distillation on the last backbone stage, plus the task loss.
    Gdd(GddConfig),
}

fn aux_weight() -> f64 {
    0.4
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
    /// The student called `name`.
    pub fn student(&self, name: &str) -> Result<&SegStudent> {
        self.students.iter().find(|s| s.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.students.iter().map(|s| s.name.as_str()).collect();
            anyhow!("unknown student {name:?}; the [[students]] are {names:?}")
        })
    }

    /// Checks names and cross-references.
    pub fn validate(&self) -> Result<()> {
        if self.rows.is_empty() {
            bail!("table {}: no [[rows]]", self.table);
        }
        let mut labels = std::collections::BTreeSet::new();
        for row in &self.rows {
            self.student(&row.student)?;
            if !labels.insert(row.label.as_str()) || row.label == self.teacher.label {
                bail!("row label {:?} is used twice", row.label);
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.students {
            if !names.insert(s.name.as_str()) {
                bail!("student name {:?} is used twice", s.name);
            }
            if s.net.num_classes != self.teacher.net.num_classes {
                bail!(
                    "student {:?} predicts {} classes, the teacher {}",
                    s.name,
                    s.net.num_classes,
                    self.teacher.net.num_classes
                );
            }
        }
        if let Some(p) = &self.picture {
            for r in &p.rows {
                if !labels.contains(r.as_str()) {
                    bail!("[picture] row {r:?} is not a row label");
                }
            }
        }
        Ok(())
    }
}
