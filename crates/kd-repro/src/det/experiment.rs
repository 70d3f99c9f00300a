//! The detection table description (`coco`).
//!
//! The same shape as the segmentation table: one teacher shared by every row and seed (the
//! paper distils from one released checkpoint), named students, and rows that pick a student
//! and a method. What is detection-specific: the data is a COCO tree (`--data`, or generated
//! scenes written as COCO JSON + PNG), the metric is COCO box AP, and a row may start its
//! student from the teacher's neck and head (`init_student`, as the released RepPoints, SOLO
//! and SparseInst configs do).

use anyhow::{anyhow, bail, Result};
use kd_core::boxes::PostprocessConfig;
use kd_core::data::det::{DetAugConfig, DetSynthConfig};
use kd_core::losses::det::FcosLoss;
use kd_core::models::det::DetectorConfig;
use kd_core::train::TrainConfig;
use kd_gdd::GddConfig;
use serde::{Deserialize, Serialize};

/// A whole detection experiment (one table at one scale).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetExperiment {
    /// Table name (`coco`).
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
    pub data: DetData,
    /// The detector's loss (focal, GIoU, centre-ness; shared by every network of the table).
    #[serde(default)]
    pub loss: FcosLoss,
    /// Test-time post-processing (score threshold, NMS, detections per image).
    #[serde(default)]
    pub postprocess: PostprocessConfig,
    /// The teacher.
    pub teacher: DetTeacher,
    /// The students, by name.
    pub students: Vec<DetStudent>,
    /// The rows, in display order after the teacher row.
    pub rows: Vec<DetRow>,
    /// Published numbers of other pairs, listed under the table for reference.
    #[serde(default)]
    pub references: Vec<Reference>,
    /// The picture of detections on validation images.
    #[serde(default)]
    pub picture: Option<Picture>,
}

/// Where the images come from and how they are fed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetData {
    /// The generated stand-in used without `--data` (default: [`DetSynthConfig::default`]).
    #[serde(default)]
    pub synth: DetSynthConfig,
    /// Training augmentation (resize keeping the aspect ratio, flip, normalisation, padding);
    /// validation uses the same resize and normalisation, without the flip.
    pub augment: DetAugConfig,
    /// Split folder names under the data root (`annotations/instances_<split>.json` + `<split>/`).
    #[serde(default = "train_split")]
    pub train_split: String,
    /// See `train_split`.
    #[serde(default = "val_split")]
    pub val_split: String,
    /// Images per evaluation batch.
    #[serde(default = "eval_batch")]
    pub eval_batch: usize,
    /// Decode every image once and keep the sets in memory (small or generated sets only).
    #[serde(default)]
    pub in_memory: bool,
}

fn train_split() -> String {
    "train2017".into()
}
fn val_split() -> String {
    "val2017".into()
}
fn eval_batch() -> usize {
    8
}

/// The teacher network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetTeacher {
    /// Row label.
    pub label: String,
    /// Network.
    pub net: DetectorConfig,
    /// Recipe used when it is trained here (not with `--teacher`).
    pub train: TrainConfig,
    /// The published box AP of this teacher, when the table runs the paper's teacher.
    #[serde(default)]
    pub paper: Option<f64>,
}

/// A named student network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetStudent {
    /// Name rows refer to.
    pub name: String,
    /// Network.
    pub net: DetectorConfig,
    /// Recipe.
    pub train: TrainConfig,
}

/// One row: a student trained with a method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetRow {
    /// Row label.
    pub label: String,
    /// Student name.
    pub student: String,
    /// Method.
    pub method: DetMethod,
    /// Copy every teacher weight outside the backbone (FPN and head) into the student before
    /// training (the released configs' `init_student`); needs equal neck and head shapes.
    #[serde(default)]
    pub init_student: bool,
    /// The published box AP of this row's pair and method, when known.
    #[serde(default)]
    pub paper: Option<f64>,
}

/// A detection method, by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DetMethod {
    /// The detector's own losses alone.
    None,
    /// Channel-wise distillation on FPN levels (no noise, no generator), plus the task loss.
    Cwd {
        /// Temperature τ of the spatial softmax.
        tau: f64,
        /// Loss weight λ, shared by the levels.
        weight: f64,
        /// The distilled taps (the same names on student and teacher), e.g. `["p3", …, "p7"]`.
        taps: Vec<String>,
    },
    /// Generative denoise distillation on FPN levels (one level per `levels` entry, each with
    /// its α), plus the task loss.
    Gdd(GddConfig),
}

/// A published number shown under the table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// What it is, e.g. "Faster R-CNN R50-FPN 2x, no KD (MGD repository)".
    pub label: String,
    /// Box AP in %.
    pub paper: f64,
}

/// The validation picture: detections drawn on a few images, one column per chosen row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Picture {
    /// PNG file name in the run folder.
    pub file: String,
    /// Number of validation images (the first ones, in dataset order).
    pub images: usize,
    /// Labels of the rows whose seed-0 detections are shown, one column each.
    pub rows: Vec<String>,
    /// Only detections scoring at least this are drawn.
    #[serde(default = "picture_score")]
    pub min_score: f64,
}

fn picture_score() -> f64 {
    0.3
}

impl DetExperiment {
    /// The student called `name`.
    pub fn student(&self, name: &str) -> Result<&DetStudent> {
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
        if self.data.eval_batch == 0 {
            bail!("data.eval_batch: must be > 0");
        }
        let mut labels = std::collections::BTreeSet::new();
        for row in &self.rows {
            self.student(&row.student)?;
            if !labels.insert(row.label.as_str()) || row.label == self.teacher.label {
                bail!("row label {:?} is used twice", row.label);
            }
            if let DetMethod::Cwd { taps, .. } = &row.method {
                if taps.is_empty() {
                    bail!("row {:?}: method.taps is empty", row.label);
                }
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
