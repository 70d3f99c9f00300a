//! What a table runs, whatever its task: named teachers and students, rows that pair them with a
//! method, the report columns and plots, and published reference rows.
//!
//! Each task's experiment file has its own sections for data and networks, but every one of
//! them resolves to this plan, so the table loop, the validation of names and labels and the
//! teacher cache are written once.

use anyhow::{bail, Result};
use kd_core::train::TrainConfig;
use serde::{Deserialize, Serialize};

use crate::columns::{Column, PlotSpec};
use crate::methods::{Method, TeacherMethod};

/// Where a row's student trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainOn {
    /// The original labelled training set.
    #[default]
    Original,
    /// The unlabelled web pool (`--web DIR`, or the generated `[web]` pool); labels are −1.
    Web,
}

impl TrainOn {
    /// True for the original set.
    pub fn is_original(&self) -> bool {
        matches!(self, TrainOn::Original)
    }
}

/// A published number shown under the table without a run (e.g. the paper's own pair).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Row label, with its source.
    pub label: String,
    /// The published number.
    pub paper: f64,
}

/// A teacher of the table.
#[derive(Clone, Debug)]
pub struct TeacherPlan<N> {
    /// Name rows refer to it by.
    pub name: String,
    /// Row label.
    pub label: String,
    /// Network.
    pub net: N,
    /// Recipe when trained here.
    pub train: TrainConfig,
    /// How it is trained.
    pub method: TeacherMethod,
    /// One teacher (seed 0) for every student seed; otherwise one per seed.
    pub shared: bool,
    /// Published number.
    pub paper: Option<f64>,
    /// Shown (and trained) even when no row distils from it.
    pub always_shown: bool,
    /// Pretrained weights it starts from when trained here.
    pub init: Option<std::path::PathBuf>,
    /// Where it is written in the experiment file (`[teacher]`, `[[teachers]] name = "x"`),
    /// for errors.
    pub at: String,
}

/// A student network of the table.
#[derive(Clone, Debug)]
pub struct StudentPlan<N> {
    /// Name rows refer to it by.
    pub name: String,
    /// Network.
    pub net: N,
    /// Recipe.
    pub train: TrainConfig,
    /// Pretrained weights it starts from.
    pub init: Option<std::path::PathBuf>,
    /// Where it is written in the experiment file (`[student]`, `[[students]] name = "x"`),
    /// for errors.
    pub at: String,
}

/// One row: a student trained with a method, distilling from a teacher.
#[derive(Clone, Debug)]
pub struct RowPlan {
    /// Label.
    pub label: String,
    /// Index into [`Plan::students`].
    pub student: usize,
    /// Index into [`Plan::teachers`].
    pub teacher: usize,
    /// The method.
    pub method: Method,
    /// Published number for this setting.
    pub paper: Option<f64>,
    /// Where the student trains.
    pub train_on: TrainOn,
    /// Start the student from the teacher's weights where the task knows how (a detector's
    /// neck and head).
    pub init_student: bool,
}

/// A whole table, resolved.
#[derive(Clone, Debug)]
pub struct Plan<N> {
    /// Table name.
    pub table: String,
    /// `quick` or `paper`.
    pub scale: String,
    /// Seeds when `--seeds` is not given.
    pub seeds: Option<u64>,
    /// Teachers, in display order.
    pub teachers: Vec<TeacherPlan<N>>,
    /// Students.
    pub students: Vec<StudentPlan<N>>,
    /// Rows, in display order after the teachers.
    pub rows: Vec<RowPlan>,
    /// Extra columns from the methods' reports.
    pub columns: Vec<Column>,
    /// Extra plots against report quantities.
    pub plots: Vec<PlotSpec>,
    /// Published reference rows shown last.
    pub references: Vec<Reference>,
}

/// Position of `name` among `names`, or an error naming the row and listing the known names.
pub fn find_name<'a>(
    what: &str,
    row: &str,
    name: &str,
    names: impl Iterator<Item = &'a str> + Clone,
) -> Result<usize> {
    names.clone().position(|n| n == name).ok_or_else(|| {
        let known: Vec<&str> = names.collect();
        anyhow::anyhow!(
            "row {row:?}: unknown {what} {name:?}; known {what}s: {}",
            known.join(", ")
        )
    })
}

impl<N> Plan<N> {
    /// Whether teacher `t` is trained and shown: always-shown teachers, and those a row distils
    /// from.
    pub fn teacher_needed(&self, t: usize) -> bool {
        self.teachers[t].always_shown
            || self
                .rows
                .iter()
                .any(|r| r.teacher == t && r.method.needs_teacher())
    }

    /// Checks every teacher's and student's recipe against its allowed ranges before anything
    /// trains; one error lists every problem with the file, the section and the key.
    pub fn check_recipes(&self, file: &std::path::Path) -> Result<()> {
        let mut lines = Vec::new();
        let recipes = self
            .teachers
            .iter()
            .enumerate()
            .filter(|(i, _)| self.teacher_needed(*i))
            .map(|(_, t)| (&t.at, &t.train))
            .chain(self.students.iter().map(|s| (&s.at, &s.train)));
        for (at, train) in recipes {
            for p in train.problems() {
                let line = format!("{at} train.{p}");
                if !lines.contains(&line) {
                    lines.push(line);
                }
            }
        }
        if self.seeds == Some(0) {
            lines.push("seeds = 0: a table needs at least one seed".to_string());
        }
        if !lines.is_empty() {
            bail!("{}: {}", file.display(), lines.join("; "));
        }
        Ok(())
    }

    /// Checks what serde cannot: unique names, labels and folder names, and that picture rows
    /// exist.
    pub fn validate(&self, picture_rows: &[String]) -> Result<()> {
        if self.rows.is_empty() {
            bail!("table {}: no [[rows]]", self.table);
        }
        for (i, t) in self.teachers.iter().enumerate() {
            if self.teachers[..i].iter().any(|o| o.name == t.name) {
                bail!("[[teachers]]: the name {:?} is used twice", t.name);
            }
        }
        for (i, s) in self.students.iter().enumerate() {
            if self.students[..i].iter().any(|o| o.name == s.name) {
                bail!("[[students]]: the name {:?} is used twice", s.name);
            }
        }
        let mut labels: Vec<&str> = self.teachers.iter().map(|t| t.label.as_str()).collect();
        for row in &self.rows {
            if labels.contains(&row.label.as_str()) {
                bail!("[[rows]]: the label {:?} is used twice", row.label);
            }
            let slug = slug(&row.label);
            if let Some(other) = self
                .rows
                .iter()
                .find(|r| r.label != row.label && crate::table::slug(&r.label) == slug)
            {
                bail!(
                    "[[rows]]: the labels {:?} and {:?} share the folder name {slug:?}",
                    row.label,
                    other.label
                );
            }
            labels.push(&row.label);
        }
        for r in picture_rows {
            if !self.rows.iter().any(|row| &row.label == r) {
                bail!("[picture] row {r:?} is not a row label");
            }
        }
        Ok(())
    }
}

/// A file-system friendly form of a row label.
pub fn slug(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| match c {
            // Superscript digits are part of a name (KD³ → kd3).
            '¹' => '1',
            '²' => '2',
            '³' => '3',
            c if c.is_ascii_alphanumeric() => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}
