//! The experiment description: what a reproduction table runs.
//!
//! A table is data. Each row pairs a method configuration with a teacher/student pair and its
//! training recipes; adding a row means adding a `[[rows]]` entry, never touching the trainer.
//! The resolved experiment is saved beside every result.
//!
//! Most tables distil one pair. Tables with more pairs, or that compare ways of training the
//! teacher, declare further `[[teachers]]` (each with its own architecture, recipe or training
//! method) and `[[students]]`, and a row names the ones it uses with `teacher = "<name>"` and
//! `student = "<name>"`. Rows can also show numbers from the methods' reports as extra
//! `[[columns]]`, and extra `[[plots]]` draw accuracy against a per-epoch quantity of those
//! reports.
//!
//! Tables in the webly-supervised setting add a `[web]` section (the stand-in web pool, see
//! [`crate::webpool`]) and mark the rows whose student trains on that unlabelled pool with
//! `train_on = "web"`; every row is still evaluated on the original test set. A row's
//! `paper_by_dataset` holds published numbers per `--data` dataset.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};
use kd_core::train::TrainConfig;
use serde::{Deserialize, Serialize};

use super::webpool::WebConfig;
use crate::columns::{Column, PlotSpec};
use crate::methods::{Method, TeacherMethod};
use crate::table::TrainOn;

/// A whole experiment (one table at one scale).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Table name, e.g. `cifar100`.
    pub table: String,
    /// `quick` or `paper`.
    pub scale: String,
    /// The data the paper-scale table runs on (e.g. `CIFAR-100`). When the embedded default
    /// runs instead, the table header says "— not <this>".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paper_dataset: Option<String>,
    /// Seeds run when `--seeds` is not given (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<u64>,
    /// Data handling.
    pub data: DataConfig,
    /// The default teacher and how it is trained. It is trained (and shown as the first row)
    /// when a row without `teacher` distils from it, when it has a paper number, or when named
    /// `teachers` exist (it is then the baseline they are compared with).
    pub teacher: TeacherNet,
    /// Further teachers, shown after the default one in this order. Rows refer to them by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teachers: Vec<NamedTeacher>,
    /// The default student and how it is trained.
    pub student: NetConfig,
    /// Further students (other pairs of the same table). Rows refer to them by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub students: Vec<NamedStudent>,
    /// The rows, in display order. The teacher rows are implicit and come first.
    pub rows: Vec<Row>,
    /// Extra table columns taken from the methods' reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<Column>,
    /// Extra plots of test accuracy against a per-epoch quantity of the methods' reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plots: Vec<PlotSpec>,
    /// The stand-in web pool that rows with `train_on = "web"` train on when no `--web` folder
    /// is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebConfig>,
    /// The plot of the kept share of in-distribution and junk web images per epoch, for rows
    /// whose method reports `kept_per_epoch` (drawn when the pool's origins are known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_plot: Option<SelectionPlot>,
}

/// The kept-fraction plot of instance-selecting rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionPlot {
    /// PNG file name in the run folder.
    pub file: String,
    /// Title.
    pub title: String,
    /// Key, in each row's report, of the list (one entry per epoch) of kept pool indices.
    #[serde(default = "kept_key")]
    pub key: String,
}

/// The report key of the kept pool indices per epoch, unless a `[selection_plot]` names another.
pub const KEPT_KEY: &str = "kept_per_epoch";

fn kept_key() -> String {
    KEPT_KEY.into()
}

/// Name by which rows refer to the default `[teacher]` (and the default `[student]`).
pub const DEFAULT_TEACHER: &str = "teacher";
/// Name by which rows refer to the default `[student]`.
pub const DEFAULT_STUDENT: &str = "student";

/// A teacher network, its recipe and how it is trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherNet {
    /// Architecture name from the model zoo.
    pub arch: String,
    /// Training recipe.
    pub train: TrainConfig,
    /// The published number for this network trained alone.
    #[serde(default)]
    pub paper: Option<f64>,
    /// Train one teacher (seed 0) and distil every student seed from it, as RepDistiller does
    /// with its single pretrained teacher. Otherwise each seed has its own teacher.
    #[serde(default)]
    pub shared: bool,
    /// How the teacher is trained (default: cross-entropy on labels).
    #[serde(default, skip_serializing_if = "TeacherMethod::is_plain")]
    pub method: TeacherMethod,
    /// Row label (default: `teacher (<arch>)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Pretrained weights the network starts from before training (any file `--teacher`
    /// takes; a partial load into the task's pretrained part, e.g. the backbone), relative to
    /// the working folder. `--init` overrides it for students.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<std::path::PathBuf>,
}

impl TeacherNet {
    /// The row label.
    pub fn row_label(&self) -> String {
        self.label.clone().unwrap_or_else(|| {
            if self.shared {
                format!("teacher ({}, one shared)", self.arch)
            } else {
                format!("teacher ({})", self.arch)
            }
        })
    }
}

/// A further teacher; `arch`, `train` and `shared` default to the `[teacher]` ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedTeacher {
    /// Name that rows refer to (`teacher = "<name>"`).
    pub name: String,
    /// Row label (default: `teacher (<arch>)`).
    #[serde(default)]
    pub label: Option<String>,
    /// Architecture (default: the `[teacher]`'s).
    #[serde(default)]
    pub arch: Option<String>,
    /// Training recipe (default: the `[teacher]`'s).
    #[serde(default)]
    pub train: Option<TrainConfig>,
    /// The published number, if any.
    #[serde(default)]
    pub paper: Option<f64>,
    /// Shared across seeds (default: the `[teacher]`'s setting).
    #[serde(default)]
    pub shared: Option<bool>,
    /// How it is trained.
    #[serde(default)]
    pub method: TeacherMethod,
    /// Pretrained weights the network starts from before training (any file `--teacher`
    /// takes; a partial load into the task's pretrained part, e.g. the backbone), relative to
    /// the working folder. `--init` overrides it for students.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<std::path::PathBuf>,
}

impl NamedTeacher {
    /// This teacher with the defaults of `base` filled in.
    pub fn resolve(&self, base: &TeacherNet) -> TeacherNet {
        TeacherNet {
            arch: self.arch.clone().unwrap_or_else(|| base.arch.clone()),
            train: self.train.clone().unwrap_or_else(|| base.train.clone()),
            paper: self.paper,
            shared: self.shared.unwrap_or(base.shared),
            method: self.method.clone(),
            label: self.label.clone(),
            init: self.init.clone(),
        }
    }
}

/// A further student; `train` defaults to the `[student]`'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedStudent {
    /// Name that rows refer to (`student = "<name>"`).
    pub name: String,
    /// Architecture name from the model zoo.
    pub arch: String,
    /// Training recipe (default: the `[student]`'s).
    #[serde(default)]
    pub train: Option<TrainConfig>,
    /// Pretrained weights the network starts from before training (any file `--teacher`
    /// takes; a partial load into the task's pretrained part, e.g. the backbone), relative to
    /// the working folder. `--init` overrides it for students.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<std::path::PathBuf>,
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
    /// The published number for this network trained alone.
    #[serde(default)]
    pub paper: Option<f64>,
    /// Pretrained weights the network starts from before training (any file `--teacher`
    /// takes; a partial load into the task's pretrained part, e.g. the backbone), relative to
    /// the working folder. `--init` overrides it for students.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<std::path::PathBuf>,
}

/// One table row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// Label shown in the table, e.g. `KD`.
    pub label: String,
    /// The method and its settings.
    pub method: Method,
    /// The teacher this row distils from, by name (default: the `[teacher]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
    /// The student this row trains, by name (default: the `[student]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student: Option<String>,
    /// The published number for this row, if one exists for this setting.
    #[serde(default)]
    pub paper: Option<f64>,
    /// Published numbers by the dataset `--data` holds (`"cifar-10"`, `"cifar-100"`, ...: see
    /// [`crate::datasets::Opened::kind`]); shown instead of `paper` when the run's data is one
    /// of them, and nothing is shown on other data.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub paper_by_dataset: BTreeMap<String, f64>,
    /// Where the student trains (default: the original labelled set).
    #[serde(default, skip_serializing_if = "TrainOn::is_original")]
    pub train_on: TrainOn,
}

impl Row {
    /// The published number to show when the run's data is of kind `dataset`.
    pub fn paper_for(&self, dataset: &str) -> Option<f64> {
        if self.paper_by_dataset.is_empty() {
            self.paper
        } else {
            self.paper_by_dataset.get(dataset).copied()
        }
    }
}

impl Experiment {
    /// Every teacher, resolved, in display order: the default one (named
    /// [`DEFAULT_TEACHER`]) first, then the named ones.
    pub fn all_teachers(&self) -> Vec<(String, TeacherNet)> {
        let mut v = vec![(DEFAULT_TEACHER.to_string(), self.teacher.clone())];
        v.extend(
            self.teachers
                .iter()
                .map(|t| (t.name.clone(), t.resolve(&self.teacher))),
        );
        v
    }

    /// Position in [`Experiment::all_teachers`] of the teacher `row` distils from.
    pub fn teacher_of(&self, row: &Row) -> anyhow::Result<usize> {
        let name = row.teacher.as_deref().unwrap_or(DEFAULT_TEACHER);
        let names = || std::iter::once(DEFAULT_TEACHER).chain(self.teachers.iter().map(|t| t.name.as_str()));
        names().position(|n| n == name).ok_or_else(|| {
            let known: Vec<&str> = names().collect();
            anyhow!(
                "row {:?}: unknown teacher {name:?}; known teachers: {}",
                row.label,
                known.join(", ")
            )
        })
    }

    /// The student network and recipe `row` trains.
    pub fn student_of(&self, row: &Row) -> anyhow::Result<NetConfig> {
        let Some(name) = row.student.as_deref().filter(|n| *n != DEFAULT_STUDENT) else {
            return Ok(self.student.clone());
        };
        let s = self.students.iter().find(|s| s.name == name).ok_or_else(|| {
            let mut known = vec![DEFAULT_STUDENT];
            known.extend(self.students.iter().map(|s| s.name.as_str()));
            anyhow!(
                "row {:?}: unknown student {name:?}; known students: {}",
                row.label,
                known.join(", ")
            )
        })?;
        Ok(NetConfig {
            arch: s.arch.clone(),
            train: s.train.clone().unwrap_or_else(|| self.student.train.clone()),
            paper: None,
            init: s.init.clone(),
        })
    }

    /// Whether some row trains on the web pool.
    pub fn uses_web(&self) -> bool {
        self.rows.iter().any(|r| r.train_on == TrainOn::Web)
    }

    /// Checks what serde cannot and the generic plan does not: that rows on the web pool read
    /// no labels and have a pool to train on, unique names and known references, and that every
    /// method is a classification method.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.data.train_subset == Some(0) {
            bail!("[data] train_subset = 0: at least 1 (leave it out to train on the whole set)");
        }
        if self.data.resize == Some(0) {
            bail!("[data] resize = 0: at least 1 pixel (leave it out to keep the stored size)");
        }
        if let Some(w) = &self.web {
            w.validate()?;
        }
        for row in self.rows.iter().filter(|r| r.train_on == TrainOn::Web) {
            if self.web.is_none() {
                bail!(
                    "row {:?} trains on the web pool, but the experiment has no [web] section",
                    row.label
                );
            }
            if row.method.reads_labels() {
                bail!(
                    "row {:?} trains on the unlabelled web pool, but its method reads labels \
                     (use a method without cross-entropy, e.g. kd with ce_weight = 0)",
                    row.label
                );
            }
            if !row.method.needs_teacher() {
                bail!("row {:?} trains on the web pool without a teacher", row.label);
            }
        }
        let mut names = vec![DEFAULT_TEACHER];
        for t in &self.teachers {
            if names.contains(&t.name.as_str()) {
                bail!(
                    "[[teachers]]: the name {:?} is used twice (\"{DEFAULT_TEACHER}\" is the default [teacher])",
                    t.name
                );
            }
            names.push(&t.name);
        }
        let mut names = vec![DEFAULT_STUDENT];
        for s in &self.students {
            if names.contains(&s.name.as_str()) {
                bail!(
                    "[[students]]: the name {:?} is used twice (\"{DEFAULT_STUDENT}\" is the default [student])",
                    s.name
                );
            }
            names.push(&s.name);
        }
        for row in &self.rows {
            self.teacher_of(row)?;
            self.student_of(row)?;
            if !matches!(
                row.method,
                Method::None
                    | Method::Kd(_)
                    | Method::Dkd(_)
                    | Method::Fitnets(_)
                    | Method::Unikd(_)
                    | Method::Selfreg(_)
                    | Method::Kd3(_)
            ) {
                bail!(
                    "row {:?}: method {:?} is not a classification method (none, kd, dkd, fitnets, unikd, selfreg, kd3)",
                    row.label,
                    row.method.kind()
                );
            }
        }
        Ok(())
    }
}
