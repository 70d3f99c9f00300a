//! Weights from outside the run: a given teacher (`--teacher FILE`) and the pretrained weights
//! a network starts from (`init = "FILE"`, `--init FILE`).
//!
//! Both go through `kd_core::io::weights`, so any safetensors or `torch.save` file works and
//! every load prints what it filled. A given teacher must match its network completely; a
//! pretrained start is a partial load into the task's pretrained part (the backbone of a dense
//! model, the whole classifier), which lists what it skipped and fails only when nothing
//! matches. A given teacher that then scores near chance stops the run: that is what a silent
//! key or preprocessing mismatch looks like.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kd_core::distill::Teacher;
use kd_core::io::weights::{self, Import, PrefixMap, ReadOptions};
use kd_core::models::Model;
use kd_core::train::{InitFn, STUDENT_PREFIX};
use tch::{nn, Device};

/// [`given_teacher`] from weights already read.
pub fn teacher_from(
    build: impl FnOnce(&nn::Path<'_>) -> kd_core::Result<Box<dyn Model>>,
    w: &weights::Weights,
    device: Device,
) -> Result<Teacher> {
    let (teacher, summary) = Teacher::from_weights(build, w, device, &Import::default())
        .with_context(|| format!("loading the teacher from {}", w.path.display()))?;
    say!("    loaded {summary}");
    Ok(teacher)
}

/// Loads the given teacher from `file` into the network `build` makes, and says what it loaded.
pub fn given_teacher(
    build: impl FnOnce(&nn::Path<'_>) -> kd_core::Result<Box<dyn Model>>,
    file: &Path,
    weights_key: Option<&str>,
    device: Device,
) -> Result<Teacher> {
    let read = ReadOptions {
        weights_key: weights_key.map(str::to_string),
    };
    let w =
        weights::read(file, &read).with_context(|| format!("loading the teacher from {}", file.display()))?;
    teacher_from(build, &w, device)
}

/// Fails when a given teacher's `score` is within twice the chance level `chance` (both in
/// the table's unit).
pub fn check_above_chance(file: &Path, metric: &str, score: f64, chance: f64, classes: i64) -> Result<()> {
    if score <= 2.0 * chance {
        bail!(
            "the teacher from {} scores {metric} {score:.2} on the test set, near chance ({chance:.2} for {classes} classes): \
             its weights load, but do not fit this network or this data. Check the architecture, the number of classes, \
             the preprocessing the checkpoint was trained with, and --weights-key (--weak-teacher distils from it anyway).",
            file.display()
        );
    }
    Ok(())
}

/// The start from pretrained weights: a partial load of `file` into the student store's
/// variables under `prefix` (e.g. `"backbone."`; `""` for the whole network). A file that
/// fills fewer than half of them is taken for the wrong file and refused.
pub fn init_from<'a>(
    file: &'a Path,
    prefix: &'a str,
    weights_key: Option<&'a str>,
    label: &'a str,
) -> Box<InitFn<'a>> {
    Box::new(move |vs: &nn::VarStore| {
        let root = format!("{STUDENT_PREFIX}{prefix}");
        let mut vars: Vec<_> = vs
            .variables()
            .into_iter()
            .filter(|(n, _)| n.starts_with(&root))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let imp = Import {
            read: ReadOptions {
                weights_key: weights_key.map(str::to_string),
            },
            map: PrefixMap {
                var_prefix: root,
                ..Default::default()
            },
            partial: true,
        };
        let summary = weights::import(file, &vars, &imp)?;
        if summary.report.loaded * 2 < vars.len() {
            return Err(kd_core::KdError::file(
                file,
                format!(
                    "fills only {} of the {} variables it should start ({}*): not pretrained weights for this network\n  {}",
                    summary.report.loaded,
                    vars.len(),
                    imp.map.var_prefix,
                    summary.report.describe(12)
                ),
            ));
        }
        say!("    {label}: starts from {summary}");
        Ok(())
    })
}

/// Runs `first`, then `then`.
pub fn chain<'a>(first: Option<Box<InitFn<'a>>>, then: Option<Box<InitFn<'a>>>) -> Option<Box<InitFn<'a>>> {
    match (first, then) {
        (Some(a), Some(b)) => Some(Box::new(move |vs: &nn::VarStore| {
            a(vs)?;
            b(vs)
        })),
        (a, b) => a.or(b),
    }
}

/// The part of a cache key that names a pretrained start: the file and its size, so a
/// different file trains a different teacher.
pub fn key_part(init: Option<&Path>) -> Result<String> {
    let Some(p) = init else { return Ok(String::new()) };
    let meta = std::fs::metadata(p).with_context(|| format!("init file {}", p.display()))?;
    Ok(format!("init {} ({} bytes)", p.display(), meta.len()))
}

/// Fails unless `init` names a file.
pub fn check_exists(what: &str, init: Option<&Path>) -> Result<()> {
    if let Some(p) = init {
        if !p.is_file() {
            bail!(
                "{what}: init file {} does not exist (download the pretrained weights the recipe names, or drop `init`)",
                p.display()
            );
        }
    }
    Ok(())
}
