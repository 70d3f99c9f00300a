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
use serde::{Deserialize, Serialize};

use super::arch::{DetArch, Fcos};
use crate::methods::Method;
use crate::table::{PictureRows, Plan, SingleTeacherExp};

/// A whole detection experiment (one table at one scale) for detector family `A`: the
/// single-teacher schema with the detection data section (which holds the test-time
/// post-processing), the family's task loss (`[loss]`, shared by every network of the table)
/// and the detections picture.
pub type DetExperiment<A = Fcos> =
    SingleTeacherExp<DetData, <A as DetArch>::Loss, <A as DetArch>::Net, Picture>;

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
    /// Test-time post-processing (score threshold, NMS, detections per image).
    #[serde(default)]
    pub postprocess: PostprocessConfig,
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

impl PictureRows for Picture {
    fn rows(&self) -> &[String] {
        &self.rows
    }
}

/// The plan of a detection experiment; its methods are none, CWD on named FPN taps, MGD and GDD.
pub fn plan<A: DetArch>(exp: &DetExperiment<A>) -> Result<Plan<A::Net>> {
    if exp.data.eval_batch == 0 {
        bail!("data.eval_batch: must be > 0");
    }
    exp.plan(|m| match m {
        Method::None | Method::Gdd(_) | Method::Mgd(_) => Ok(()),
        Method::Cwd(c) if c.taps.is_empty() => bail!("method.taps is empty"),
        Method::Cwd(_) => Ok(()),
        other => bail!(
            "method {:?} is not a detection method (none, cwd on FPN taps, mgd, gdd)",
            other.kind()
        ),
    })
}
