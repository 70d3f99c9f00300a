//! `init_student`: the student starts from the teacher's neck and head.
//!
//! The GDD detection configs (RepPoints, SOLO, SparseInst) copy every teacher checkpoint entry
//! whose name does not start with `backbone.` into the student before training; only the
//! backbones differ. Both detectors are built with the same variable names below their roots,
//! so the copy matches names after the roots' prefixes: the teacher loaded on its own store
//! (prefix `""`, see `Teacher::load_built`) and the student under
//! [`STUDENT_PREFIX`](kd_core::train::STUDENT_PREFIX) in the trainer's store.
//!
//! The lateral 1×1 convolutions read the backbone maps, so their shapes match only when both
//! backbones have the same C`l` channel counts (R50 and R101 at the same width; R18 and R34 at
//! the same width): any mismatch is an error naming the variable, never a partial copy.

use std::collections::HashMap;

use tch::{nn, Tensor};

use kd_core::{KdError, Result};

/// Name prefix (below a detector's root) of the backbone variables, which are not copied.
pub const BACKBONE_SCOPE: &str = "backbone.";

/// The variables of `vs` whose names start with `prefix`, keyed by the rest of the name, minus
/// the backbone's.
fn neck_and_head(vs: &nn::VarStore, prefix: &str) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .filter_map(|(n, t)| {
            let rest = n.strip_prefix(prefix)?;
            (!rest.starts_with(BACKBONE_SCOPE)).then(|| (rest.to_string(), t))
        })
        .collect()
}

/// Copies every teacher variable named `teacher_prefix + rest` with `rest` not starting with
/// [`BACKBONE_SCOPE`] (the FPN neck and the head) into the student's variable
/// `student_prefix + rest`, and returns how many were copied. Prefixes are plain name prefixes:
/// `""` for a detector built at a store's root, `"student."` for the trainer's student.
///
/// Checks everything before copying anything, and fails with [`KdError::Invalid`] when the
/// teacher has no such variable under `teacher_prefix`, when a teacher variable has no student
/// counterpart or the student has a neck/head variable the teacher lacks (different levels or
/// tower depths), or when two shapes differ; the messages name the variable and both shapes.
/// The copy runs without gradient tracking and converts device and dtype as needed.
pub fn copy_neck_and_head(
    teacher: &nn::VarStore,
    teacher_prefix: &str,
    student: &nn::VarStore,
    student_prefix: &str,
) -> Result<usize> {
    let src = neck_and_head(teacher, teacher_prefix);
    if src.is_empty() {
        return Err(KdError::invalid(format!(
            "init_student: the teacher has no neck or head variables under {teacher_prefix:?}"
        )));
    }
    let mut dst = neck_and_head(student, student_prefix);
    let mut names: Vec<&String> = src.keys().collect();
    names.sort();
    for name in &names {
        let s = &src[*name];
        let Some(d) = dst.get(*name) else {
            return Err(KdError::invalid(format!(
                "init_student: the teacher's {teacher_prefix}{name} has no counterpart \
                 {student_prefix}{name} in the student (do the FPN levels and head depths match?)"
            )));
        };
        if s.size() != d.size() {
            return Err(KdError::Shape {
                op: "init_student".into(),
                left_name: format!("teacher {teacher_prefix}{name}"),
                left: s.size(),
                right_name: format!("student {student_prefix}{name}"),
                right: d.size(),
            });
        }
    }
    let mut extra: Vec<&String> = dst.keys().filter(|n| !src.contains_key(*n)).collect();
    if !extra.is_empty() {
        extra.sort();
        return Err(KdError::invalid(format!(
            "init_student: the student's {student_prefix}{} has no counterpart in the teacher \
             (do the FPN levels and head depths match?)",
            extra[0]
        )));
    }
    tch::no_grad(|| {
        for name in &names {
            let d = dst.get_mut(*name).expect("checked above");
            d.copy_(&src[*name]);
        }
    });
    Ok(names.len())
}
