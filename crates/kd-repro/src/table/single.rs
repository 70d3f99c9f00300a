//! The schema pieces of tables that distil every row from one teacher (the dense-prediction
//! tables): the teacher, named students, and rows that pick a student and a method.
//!
//! The papers distil from one released checkpoint, so the teacher is trained once (seed 0) and
//! shared by every row and seed, or given with `--teacher FILE`.

use anyhow::Result;
use kd_core::train::TrainConfig;
use serde::{Deserialize, Serialize};

use super::plan::{find_name, Plan, Reference, RowPlan, StudentPlan, TeacherPlan, TrainOn};
use crate::methods::Method;
use crate::methods::TeacherMethod;

/// The teacher network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SingleTeacher<N> {
    /// Row label.
    pub label: String,
    /// Network.
    pub net: N,
    /// Recipe used when it is trained here (not with `--teacher`).
    pub train: TrainConfig,
    /// The published number for this teacher, when the table runs the paper's teacher.
    #[serde(default)]
    pub paper: Option<f64>,
    /// Pretrained weights the network starts from before training (any file `--teacher`
    /// takes; a partial load into the task's pretrained part, e.g. the backbone), relative to
    /// the working folder. `--init` overrides it for students.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<std::path::PathBuf>,
    /// Train and show it even when no row distils from it (default: a table shows its
    /// teacher; a run of the student alone does not).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub shown: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A named student network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetStudent<N> {
    /// Name rows refer to.
    pub name: String,
    /// Network.
    pub net: N,
    /// Recipe.
    pub train: TrainConfig,
    /// Pretrained weights the network starts from before training (any file `--teacher`
    /// takes; a partial load into the task's pretrained part, e.g. the backbone), relative to
    /// the working folder. `--init` overrides it for students.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<std::path::PathBuf>,
}

/// One row: a student trained with a method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRow {
    /// Row label.
    pub label: String,
    /// Student name.
    pub student: String,
    /// Method.
    pub method: Method,
    /// Start the student from the teacher's weights where the task knows how (a detector's
    /// neck and head).
    #[serde(default)]
    pub init_student: bool,
    /// The published number, when the table runs the paper's setting.
    #[serde(default)]
    pub paper: Option<f64>,
}

/// What a table's picture shows: the labels of the rows drawn.
pub trait PictureRows {
    /// Labels of the rows whose seed-0 outputs are drawn.
    fn rows(&self) -> &[String];
}

/// A network whose class count can be checked against the teacher's.
pub trait NetClasses {
    /// Number of classes the network predicts.
    fn num_classes(&self) -> i64;
}

/// A single-teacher experiment file: the data section `D`, the task loss `L` (shared by the
/// teacher and every student), networks `N` and the picture `P`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    bound(
        serialize = "D: Serialize, L: Serialize, N: Serialize, P: Serialize",
        deserialize = "D: Deserialize<'de>, L: Deserialize<'de> + Default, N: Deserialize<'de>, P: Deserialize<'de>"
    )
)]
pub struct SingleTeacherExp<D, L: Default, N, P> {
    /// Table name (`cityscapes`, `coco`).
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
    pub data: D,
    /// The task loss of the teacher and of every student.
    #[serde(default)]
    pub loss: L,
    /// The teacher.
    pub teacher: SingleTeacher<N>,
    /// The students, by name.
    pub students: Vec<NetStudent<N>>,
    /// The rows, in display order after the teacher row.
    pub rows: Vec<NetRow>,
    /// Published numbers of other pairs, listed under the table for reference.
    #[serde(default)]
    pub references: Vec<Reference>,
    /// The picture of validation outputs.
    #[serde(default)]
    pub picture: Option<P>,
}

impl<D, L: Default, N: Clone + NetClasses, P: PictureRows> SingleTeacherExp<D, L, N, P> {
    /// The plan: the one shared teacher, the students and the rows; checks that every student
    /// predicts the teacher's classes, that every row's method passes `method_ok`, and the
    /// names and labels.
    pub fn plan(&self, method_ok: impl Fn(&Method) -> Result<()>) -> Result<Plan<N>> {
        for s in &self.students {
            if s.net.num_classes() != self.teacher.net.num_classes() {
                anyhow::bail!(
                    "student {:?} predicts {} classes, the teacher {}",
                    s.name,
                    s.net.num_classes(),
                    self.teacher.net.num_classes()
                );
            }
        }
        let names = self.students.iter().map(|s| s.name.as_str());
        let rows = self
            .rows
            .iter()
            .map(|r| {
                method_ok(&r.method).map_err(|e| anyhow::anyhow!("row {:?}: {e}", r.label))?;
                Ok(RowPlan {
                    label: r.label.clone(),
                    student: find_name("student", &r.label, &r.student, names.clone())?,
                    teacher: 0,
                    method: r.method.clone(),
                    paper: r.paper,
                    train_on: TrainOn::Original,
                    init_student: r.init_student,
                })
            })
            .collect::<Result<_>>()?;
        let t = &self.teacher;
        let plan = Plan {
            table: self.table.clone(),
            scale: self.scale.clone(),
            seeds: self.seeds,
            teachers: vec![TeacherPlan {
                name: "teacher".into(),
                label: t.label.clone(),
                net: t.net.clone(),
                train: t.train.clone(),
                method: TeacherMethod::None,
                shared: true,
                paper: t.paper,
                always_shown: t.shown,
                init: t.init.clone(),
                at: "[teacher]".into(),
            }],
            students: self
                .students
                .iter()
                .map(|s| StudentPlan {
                    name: s.name.clone(),
                    net: s.net.clone(),
                    train: s.train.clone(),
                    init: s.init.clone(),
                    at: format!("[[students]] name = {:?}", s.name),
                })
                .collect(),
            rows,
            columns: Vec::new(),
            plots: Vec::new(),
            references: self.references.clone(),
        };
        plan.validate(self.picture.as_ref().map_or(&[][..], |p| p.rows()))?;
        Ok(plan)
    }
}

/// The data part of a dense-prediction teacher's cache key: the training augmentation, the
/// task loss and the training data's fingerprint.
pub fn dense_data_key(augment: &impl Serialize, loss: &impl Serialize, fingerprint: &str) -> Result<String> {
    Ok([
        toml::to_string(augment)?,
        toml::to_string(loss)?,
        fingerprint.to_string(),
    ]
    .join("\n"))
}
