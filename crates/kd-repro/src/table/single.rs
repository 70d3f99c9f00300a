//! The schema pieces of tables that distil every row from one teacher (the dense-prediction
//! tables): the teacher, named students, and rows that pick a student and a method.
//!
//! The papers distil from one released checkpoint, so the teacher is trained once (seed 0) and
//! shared by every row and seed, or given with `--teacher FILE`.

use anyhow::Result;
use kd_core::train::TrainConfig;
use serde::{Deserialize, Serialize};

use super::plan::{find_name, Plan, Reference, RowPlan, StudentPlan, TeacherMethod, TeacherPlan, TrainOn};
use crate::methods::Method;

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

/// The table's common part, as written in its file.
pub struct SingleTeacherTable<'a, N> {
    /// Table name.
    pub table: &'a str,
    /// Scale.
    pub scale: &'a str,
    /// Seeds when `--seeds` is not given.
    pub seeds: Option<u64>,
    /// The teacher.
    pub teacher: &'a SingleTeacher<N>,
    /// The students.
    pub students: &'a [NetStudent<N>],
    /// The rows.
    pub rows: &'a [NetRow],
    /// Published reference rows.
    pub references: &'a [Reference],
    /// Labels of the rows a picture shows.
    pub picture_rows: &'a [String],
}

impl<N: Clone> SingleTeacherTable<'_, N> {
    /// The plan: the one shared teacher, the students and the rows; names and labels checked.
    pub fn plan(&self) -> Result<Plan<N>> {
        let names = self.students.iter().map(|s| s.name.as_str());
        let rows = self
            .rows
            .iter()
            .map(|r| {
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
        let t = self.teacher;
        let plan = Plan {
            table: self.table.to_string(),
            scale: self.scale.to_string(),
            seeds: self.seeds,
            teachers: vec![TeacherPlan {
                name: "teacher".into(),
                label: t.label.clone(),
                net: t.net.clone(),
                train: t.train.clone(),
                method: TeacherMethod::None,
                shared: true,
                paper: t.paper,
                always_shown: true,
            }],
            students: self
                .students
                .iter()
                .map(|s| StudentPlan {
                    name: s.name.clone(),
                    net: s.net.clone(),
                    train: s.train.clone(),
                })
                .collect(),
            rows,
            columns: Vec::new(),
            plots: Vec::new(),
            references: self.references.to_vec(),
        };
        plan.validate(self.picture_rows)?;
        Ok(plan)
    }
}

/// The cache key of a dense-prediction teacher: its network and recipe, the training
/// augmentation, the task loss and the training data's fingerprint.
pub fn dense_teacher_key<N: Serialize>(
    t: &super::TeacherPlan<N>,
    augment: &impl Serialize,
    loss: &impl Serialize,
    fingerprint: &str,
) -> Result<String> {
    Ok([
        toml::to_string(&t.net)?,
        toml::to_string(&t.train)?,
        toml::to_string(augment)?,
        toml::to_string(loss)?,
        fingerprint.to_string(),
    ]
    .join("\n"))
}
