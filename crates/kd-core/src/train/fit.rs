//! The lifecycle of one training run, owned by the library.
//!
//! A finished run folder must be recognisable and a killed one resumable, whoever drives it (a
//! table, a user's own program): so the order is fixed here, not copied by callers. [`fit_into`]
//! builds a fresh store with the `student` and `aux` roots, trains with a checkpoint in the
//! folder (resumable), exports the student's weights, lets the method save what later stages
//! need, and writes `report.json` last and atomically: a folder with a report is a finished run.
//! In a data-parallel group every rank trains and rank 0 alone writes the folder.

use std::path::Path;

use tch::{nn, Device};

use super::evaluator::Evaluator;
use super::trainer::{export_student, TrainConfig, TrainReport, Trainer, AUX, STUDENT};
use crate::data::BatchSource;
use crate::distill::{Distiller, TeacherCache};
use crate::models::Model;
use crate::{KdError, Result};

/// File names inside a run folder: the report, written last.
pub const REPORT: &str = "report.json";
/// The resumable training checkpoint inside a run folder.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// A hook on a freshly built training store (see [`Job::init`]).
pub type InitFn<'a> = dyn Fn(&nn::VarStore) -> Result<()> + 'a;

/// One training job, whatever the task: recipe, seed, device, teacher, data and metric.
pub struct Job<'a> {
    /// Recipe.
    pub train: &'a TrainConfig,
    /// Seed.
    pub seed: u64,
    /// Device.
    pub device: Device,
    /// The frozen teacher, for methods that need one.
    pub teacher: Option<&'a dyn Model>,
    /// The teacher's outputs over the training set, when cached.
    pub teacher_cache: Option<&'a TeacherCache>,
    /// Training batches.
    pub train_data: &'a dyn BatchSource,
    /// Test batches.
    pub test_data: &'a dyn BatchSource,
    /// The test metric.
    pub evaluator: &'a dyn Evaluator,
    /// Continue from the checkpoint when there is one.
    pub resume: bool,
    /// Label for logs and errors.
    pub label: &'a str,
    /// Runs on the fresh training store once the network is built, before training (e.g. to
    /// start a detector's neck and head from the teacher's). A resumed run's checkpoint
    /// overrides what it set.
    pub init: Option<&'a InitFn<'a>>,
}

/// What [`fit`] returns: the training store, the trained network, the report and the distiller.
pub type Fitted = (nn::VarStore, Box<dyn Model>, TrainReport, Box<dyn Distiller>);

/// Builds the network (with `model`, under the `student` root) and, through `build` (given the
/// `aux` root and the network), the method's distiller in a fresh store, then trains with its
/// checkpoint at `checkpoint`. libtorch's generator is seeded from the job's seed first, so the
/// initial weights are the seed's.
pub fn fit(
    job: &Job<'_>,
    model: impl FnOnce(&nn::Path<'_>) -> Result<Box<dyn Model>>,
    build: impl FnOnce(&nn::Path<'_>, &dyn Model) -> Result<Box<dyn Distiller>>,
    checkpoint: &Path,
) -> Result<Fitted> {
    crate::rng::seed_torch(crate::rng::derive_u64(job.seed, 0x1417, 0));
    let vs = nn::VarStore::new(job.device);
    let student = model(&(vs.root() / STUDENT))?;
    if let Some(init) = job.init {
        init(&vs)?;
    }
    let aux = vs.root() / AUX;
    let mut distiller = build(&aux, student.as_ref())?;
    let report = Trainer {
        cfg: job.train,
        seed: job.seed,
        device: job.device,
        vs: &vs,
        student: student.as_ref(),
        teacher: if distiller.needs_teacher() {
            job.teacher
        } else {
            None
        },
        teacher_cache: job.teacher_cache,
        distiller: distiller.as_mut(),
        train: job.train_data,
        test: job.test_data,
        checkpoint: Some(checkpoint.to_path_buf()),
        label: format!("{} s{}", job.label, job.seed),
        evaluator: job.evaluator,
    }
    .fit(job.resume)?;
    Ok((vs, student, report, distiller))
}

/// [`fit`] into the run folder `dir`: trains there (resumable through its checkpoint), exports
/// the student's weights as `dir/weights`, saves the method's artifacts and writes
/// [`REPORT`] last. With `job.resume` and a finished folder, reads the report back and trains
/// nothing.
pub fn fit_into(
    job: &Job<'_>,
    model: impl FnOnce(&nn::Path<'_>) -> Result<Box<dyn Model>>,
    build: impl FnOnce(&nn::Path<'_>, &dyn Model) -> Result<Box<dyn Distiller>>,
    dir: &Path,
    weights: &str,
) -> Result<TrainReport> {
    let report_path = dir.join(REPORT);
    if job.resume && crate::dist::is_file_shared(&report_path)? {
        return read_report_shared(&report_path);
    }
    let writer = crate::dist::is_writer();
    if writer {
        std::fs::create_dir_all(dir).map_err(|e| KdError::file(dir, e))?;
    }
    let (vs, _model, report, distiller) = fit(job, model, build, &dir.join(CHECKPOINT))?;
    if writer {
        export_student(&vs, &dir.join(weights))?;
        distiller.save_artifacts(dir).map_err(|e| {
            KdError::invalid(format!(
                "saving what training {} produced into {}: {e}",
                job.label,
                dir.display()
            ))
        })?;
        let json = serde_json::to_string_pretty(&report).map_err(|e| KdError::file(&report_path, e))?;
        crate::io::write_atomic(&report_path, json.as_bytes())?;
    }
    // The others wait until the folder is finished, so whatever reads it next finds it whole.
    crate::dist::barrier()?;
    Ok(report)
}

/// [`read_report`] on every rank of a group from rank 0's file.
pub fn read_report_shared(path: &Path) -> Result<TrainReport> {
    let bytes = crate::dist::read_shared(path)?;
    serde_json::from_slice(&bytes).map_err(|e| KdError::file(path, format!("not a training report: {e}")))
}

/// Reads a [`REPORT`] written by [`fit_into`]; errors name the file.
pub fn read_report(path: &Path) -> Result<TrainReport> {
    let bytes = std::fs::read(path).map_err(|e| KdError::file(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| KdError::file(path, format!("not a training report: {e}")))
}
