//! Teachers: trained once per (recipe, data, seed) into the per-user cache, then reused.
//!
//! A table may compare several ways of training the teacher; each resolved recipe (with its
//! training method) is its own cache entry. What a teacher's training produces besides the
//! weights (e.g. a significance vector) is written next to them before `report.json`, so a
//! cache entry with a report is complete.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kd_core::distill::Teacher;
use kd_core::train::{export_student, TrainConfig, TrainReport};
use serde::Serialize;
use tch::Device;

use crate::cache;
use crate::experiment::{DataConfig, TeacherMethod, TeacherNet};
use crate::methods;
use crate::runner::{fit, loaders, Data, NetRun};

/// A trained teacher of one seed.
pub struct TrainedTeacher {
    /// The name rows refer to it by.
    pub name: String,
    /// The frozen network.
    pub teacher: Teacher,
    /// How its training went.
    pub report: TrainReport,
    /// Its cache folder (weights, report and artifacts such as the significance vector).
    pub dir: PathBuf,
}

/// What the cache key covers. Serialises exactly like the old single-teacher recipe when the
/// method is plain, so existing cache entries stay valid.
#[derive(Serialize)]
struct Recipe<'a> {
    arch: &'a str,
    train: &'a TrainConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    paper: Option<f64>,
    #[serde(skip_serializing_if = "TeacherMethod::is_plain")]
    method: &'a TeacherMethod,
}

/// Returns the teacher `name` of `seed`, training it (resumably) into the cache if needed.
pub fn ensure(
    name: &str,
    net: &TeacherNet,
    data_cfg: &DataConfig,
    data: &Data,
    seed: u64,
    device: Device,
) -> Result<TrainedTeacher> {
    let recipe = toml::to_string(&Recipe {
        arch: &net.arch,
        train: &net.train,
        paper: net.paper,
        method: &net.method,
    })?;
    let dcfg = toml::to_string(data_cfg)?;
    let key = cache::key(&[&recipe, &dcfg, &data.fingerprint, &seed.to_string()]);
    let dir = cache::teacher_dir(&key);
    let weights = dir.join("teacher.safetensors");
    let report_path = dir.join("report.json");
    let label = net.row_label();
    if report_path.is_file() {
        let report: TrainReport = serde_json::from_slice(&std::fs::read(&report_path)?)
            .with_context(|| format!("reading {}", report_path.display()))?;
        eprintln!(
            "    {label} seed {seed}: cached ({:.2}%) at {}",
            report.final_acc,
            dir.display()
        );
        let teacher = Teacher::load(&net.arch, data.spec, &weights, device)?;
        return Ok(TrainedTeacher {
            name: name.into(),
            teacher,
            report,
            dir,
        });
    }
    eprintln!(
        "    {label} seed {seed}: training (cached afterwards at {})",
        dir.display()
    );
    std::fs::create_dir_all(&dir)?;
    let run = NetRun {
        arch: &net.arch,
        train: &net.train,
        spec: data.spec,
        seed,
        device,
    };
    let (train, test) = loaders(net.train.batch_size, data, seed)?;
    let n_train = data.train.len();
    let (vs, model, report, distiller) = fit(
        &run,
        |_, _| methods::teacher_distiller(&net.method, n_train),
        None,
        &train,
        &test,
        &dir.join("checkpoint.safetensors"),
        true,
        name,
    )?;
    export_student(&vs, &weights)?;
    distiller
        .save_artifacts(&dir)
        .with_context(|| format!("saving what training {label} produced into {}", dir.display()))?;
    kd_core::train::checkpoint::write_atomic(
        &report_path,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let _ = std::fs::remove_file(dir.join("checkpoint.safetensors"));
    drop(model);
    let teacher = Teacher::load(&net.arch, data.spec, &weights, device)?;
    eprintln!("    {label} seed {seed}: top-1 {:.2}%", report.final_acc);
    Ok(TrainedTeacher {
        name: name.into(),
        teacher,
        report,
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{Experiment, NetConfig};

    /// A plainly trained teacher keeps the cache key it had before teachers could have a
    /// training method, so existing cache entries stay valid.
    #[test]
    fn plain_teacher_recipes_serialise_as_before() {
        let exp: Experiment = kd_core::config::parse(
            std::path::Path::new("cifar100.paper.toml"),
            crate::tables::find("cifar100").unwrap().paper,
        )
        .unwrap();
        let t = &exp.teacher;
        let old = toml::to_string(&NetConfig {
            arch: t.arch.clone(),
            train: t.train.clone(),
            paper: t.paper,
        })
        .unwrap();
        let new = toml::to_string(&Recipe {
            arch: &t.arch,
            train: &t.train,
            paper: t.paper,
            method: &t.method,
        })
        .unwrap();
        assert_eq!(old, new);
        let selfreg = TeacherMethod::Selfreg(kd_selfreg::TeacherConfig::default());
        let other = toml::to_string(&Recipe {
            method: &selfreg,
            arch: &t.arch,
            train: &t.train,
            paper: t.paper,
        })
        .unwrap();
        assert_ne!(old, other);
    }
}
