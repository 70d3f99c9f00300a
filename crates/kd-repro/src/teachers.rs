//! Teachers: trained once per (recipe, data, seed) into the per-user cache, then reused.
//!
//! A table may compare several ways of training the teacher; each resolved recipe (with its
//! training method) is its own cache entry. What a teacher's training produces besides the
//! weights (e.g. a significance vector) is written next to them before `report.json`, so a
//! cache entry with a report is complete.

use std::path::PathBuf;

use anyhow::Result;
use kd_core::distill::{Teacher, TeacherCache};
use kd_core::train::{TrainConfig, TrainReport};
use serde::Serialize;
use tch::Device;

use crate::cache;
use crate::experiment::{DataConfig, TeacherMethod, TeacherNet};
use crate::methods;
use crate::runner::{loaders, read_report, train_into, Data, NetRun, CHECKPOINT, REPORT};

/// The teacher's weights inside its cache folder.
const TEACHER_WEIGHTS: &str = "teacher.safetensors";

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
    /// Its outputs over the training set, when they can stand in for its forward pass.
    pub cache: Option<TeacherCache>,
}

/// The teacher's outputs over the training set, if the data is not augmented at random and they
/// fit in `budget_mb` MiB (0 disables the cache).
pub fn output_cache(
    t: &TrainedTeacher,
    data: &Data,
    device: Device,
    budget_mb: usize,
) -> Result<Option<TeacherCache>> {
    if budget_mb == 0 {
        return Ok(None);
    }
    let (train, _) = loaders(CACHE_BATCH, data, 0)?;
    let started = std::time::Instant::now();
    let cache = TeacherCache::build(t.teacher.model(), &train, device, CACHE_BATCH, budget_mb << 20)?;
    if let Some(c) = &cache {
        eprintln!(
            "    {}: outputs over {} cached ({} MiB, {:.1}s)",
            t.name,
            data.train.name(),
            c.bytes() >> 20,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(cache)
}

/// Batch size of the one pass that fills a teacher's output cache.
const CACHE_BATCH: usize = 256;

/// What the cache key covers: what decides the trained weights. The row label, the paper number
/// and whether the teacher is shared across seeds do not (a shared teacher is simply the seed-0 one).
#[derive(Serialize)]
struct Recipe<'a> {
    arch: &'a str,
    train: &'a TrainConfig,
    #[serde(skip_serializing_if = "TeacherMethod::is_plain")]
    method: &'a TeacherMethod,
}

/// The recipe part of a teacher's cache key.
fn recipe_key(net: &TeacherNet) -> Result<String> {
    Ok(toml::to_string(&Recipe {
        arch: &net.arch,
        train: &net.train,
        method: &net.method,
    })?)
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
    let recipe = recipe_key(net)?;
    let dcfg = toml::to_string(data_cfg)?;
    let key = cache::key(&[&recipe, &dcfg, &data.fingerprint, &seed.to_string()]);
    let dir = cache::teacher_dir(&key);
    let weights = dir.join(TEACHER_WEIGHTS);
    let report_path = dir.join(REPORT);
    let label = net.row_label();
    let report = if report_path.is_file() {
        let report = read_report(&report_path)?;
        eprintln!(
            "    {label} seed {seed}: cached ({:.2}%) at {}",
            report.final_acc,
            dir.display()
        );
        report
    } else {
        eprintln!(
            "    {label} seed {seed}: training (cached afterwards at {})",
            dir.display()
        );
        let run = NetRun {
            arch: &net.arch,
            train: &net.train,
            spec: data.spec,
            seed,
            device,
        };
        let n_train = data.train.len();
        let report = train_into(
            &run,
            |_, _| methods::teacher_distiller(&net.method, n_train),
            None,
            None,
            data,
            &dir,
            TEACHER_WEIGHTS,
            true,
            name,
        )?;
        let _ = std::fs::remove_file(dir.join(CHECKPOINT));
        eprintln!("    {label} seed {seed}: top-1 {:.2}%", report.final_acc);
        report
    };
    Ok(TrainedTeacher {
        name: name.into(),
        teacher: Teacher::load(&net.arch, data.spec, &weights, device)?,
        report,
        dir,
        cache: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::Experiment;

    fn key(net: &TeacherNet) -> String {
        recipe_key(net).unwrap()
    }

    /// Labels and sharing leave the cache key alone; the training method changes it.
    #[test]
    fn the_cache_key_covers_what_decides_the_weights() {
        let exp: Experiment = kd_core::config::parse(
            std::path::Path::new("cifar100.paper.toml"),
            crate::tables::find("cifar100").unwrap().paper,
        )
        .unwrap();
        let t = exp.teacher.clone();
        let relabelled = TeacherNet {
            label: Some("x".into()),
            shared: !t.shared,
            ..t.clone()
        };
        assert_eq!(key(&t), key(&relabelled));
        let selfreg = TeacherNet {
            method: TeacherMethod::Selfreg(kd_selfreg::TeacherConfig::default()),
            ..t.clone()
        };
        assert_ne!(key(&t), key(&selfreg));
        let other_arch = TeacherNet {
            arch: "wrn_40_2".into(),
            ..t
        };
        assert_ne!(key(&exp.teacher), key(&other_arch));
    }
}
