//! The experiment description: what a reproduction table runs.
//!
//! A table is data. Each row pairs a method configuration with the teacher/student
//! architectures and training recipes (the experiment's, unless the row names its own pair);
//! adding a row means adding a `[[rows]]` entry, never touching the trainer. The resolved
//! experiment is saved beside every result.

use kd_core::distill::{FitNetsConfig, KdConfig};
use kd_core::train::TrainConfig;
use kd_feature_agg::UnikdConfig;
use serde::{Deserialize, Serialize};

/// A whole experiment (one table at one scale).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Table name, e.g. `cifar100`.
    pub table: String,
    /// `quick` or `paper`.
    pub scale: String,
    /// Data handling.
    pub data: DataConfig,
    /// The teacher and how it is trained.
    pub teacher: NetConfig,
    /// The student and how it is trained (shared by every row unless a row overrides it).
    pub student: NetConfig,
    /// The rows, in display order. Teacher rows are implicit: one per distinct teacher, placed
    /// before the first row that uses it (the experiment's teacher always first).
    pub rows: Vec<Row>,
}

impl Experiment {
    /// The teacher of `row`: its own, or the experiment's.
    pub fn teacher_of<'a>(&'a self, row: &'a Row) -> &'a NetConfig {
        row.teacher.as_ref().unwrap_or(&self.teacher)
    }

    /// The student of `row`: its own, or the experiment's.
    pub fn student_of<'a>(&'a self, row: &'a Row) -> &'a NetConfig {
        row.student.as_ref().unwrap_or(&self.student)
    }
}

/// Data handling shared by every run of the experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Zero-padding (pixels) of the random crop; 0 disables it.
    pub pad_crop: usize,
    /// Random horizontal flip.
    pub hflip: bool,
    /// Use only this many training samples (class-balanced, first in order), if set.
    #[serde(default)]
    pub train_subset: Option<usize>,
    /// Resize every image (train and test) to this square size once, before training.
    #[serde(default)]
    pub resize: Option<usize>,
}

/// A network and its training recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Architecture name from the model zoo.
    pub arch: String,
    /// Training recipe.
    pub train: TrainConfig,
    /// The published number for this network trained alone (used for the teacher row).
    #[serde(default)]
    pub paper: Option<f64>,
    /// Teacher only: train one teacher (seed 0) and distil every student seed from it, as
    /// RepDistiller does with its single pretrained teacher. Otherwise each seed has its own.
    #[serde(default)]
    pub shared: bool,
}

/// One table row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// Label shown in the table, e.g. `KD`.
    pub label: String,
    /// The method and its settings.
    pub method: Method,
    /// The published number for this row, if one exists for this setting.
    #[serde(default)]
    pub paper: Option<f64>,
    /// This row's teacher, when it is not the experiment's (another pair in the same table).
    /// Teachers are cached by recipe, so rows sharing one train it once per seed.
    #[serde(default)]
    pub teacher: Option<NetConfig>,
    /// This row's student, when it is not the experiment's.
    #[serde(default)]
    pub student: Option<NetConfig>,
}

/// Every method the runner knows, by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Method {
    /// Cross-entropy only (the no-KD student).
    None,
    /// Hinton KD.
    Kd(KdConfig),
    /// FitNets hint learning.
    Fitnets(FitNetsConfig),
    /// UniKD: adaptive feature fusion, distribution heads and Gaussian KL (`kd-feature-agg`).
    Unikd(Box<UnikdConfig>),
}

impl Method {
    /// Whether the row needs a trained teacher.
    pub fn needs_teacher(&self) -> bool {
        !matches!(self, Method::None)
    }
}
