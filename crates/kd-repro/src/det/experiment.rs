//! The detection table description (`coco`).
//!
//! The same shape as the segmentation table: one teacher shared by every row and seed (the
//! paper distils from one released checkpoint), named students, and rows that pick a student
//! and a method. What is detection-specific: the data is a COCO tree (`--data`, or generated
//! scenes written as COCO JSON + PNG), the metric is COCO box AP, and a row may start its
//! student from the teacher's neck and head (`init_student`, as the released RepPoints, SOLO
//! and SparseInst configs do).

use anyhow::{bail, Result};
use kd_det::boxes::PostprocessConfig;
use kd_det::data::{DetAugConfig, DetSynthConfig};
use kd_det::losses::FcosLoss;
use kd_det::models::DetectorConfig;
use serde::{Deserialize, Serialize};

use crate::methods::Method;
use crate::table::{NetRow, NetStudent, Plan, Reference, SingleTeacher, SingleTeacherTable};

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
    pub teacher: SingleTeacher<DetectorConfig>,
    /// The students, by name.
    pub students: Vec<NetStudent<DetectorConfig>>,
    /// The rows, in display order after the teacher row.
    pub rows: Vec<NetRow>,
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
    /// The plan; checks the detector-specific rules (class counts, CWD taps, batch size).
    pub fn plan(&self) -> Result<Plan<DetectorConfig>> {
        if self.data.eval_batch == 0 {
            bail!("data.eval_batch: must be > 0");
        }
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
                Method::Cwd(c) if c.taps.is_empty() => {
                    bail!("row {:?}: method.taps is empty", r.label)
                }
                Method::Cwd(_) => {}
                other => bail!(
                    "row {:?}: method {:?} is not a detection method (none, cwd on FPN taps, gdd)",
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
