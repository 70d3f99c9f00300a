//! Executes an [`Experiment`]: per seed, a (cached) teacher, then every row's student; then the
//! table, the plots and the resolved config, all in one run folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kd_core::data::Augment;
use kd_core::data::Dataset;
use kd_core::data::Loader;
use kd_core::distill::{Distiller, FitNets, HintonKd, NoKd, Teacher};
use kd_core::models::{self, ModelSpec};
use kd_core::train::{export_student, TrainConfig, TrainReport, Trainer, AUX, STUDENT};
use kd_feature_agg::Unikd;
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use crate::experiment::{DataConfig, Experiment, Method, NetConfig};
use crate::plot::{self, Curve};
use crate::results::{RowResult, TableResult};
use crate::{cache, datasets};

/// How this invocation runs the experiment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunArgs {
    /// Dataset folder, or `None` for the embedded default.
    pub data: Option<PathBuf>,
    /// Number of seeds (seeds are 0..n).
    pub seeds: u64,
    /// Output folder.
    pub out: PathBuf,
    /// Device name.
    pub device: String,
    /// Continue an interrupted run in `out`.
    pub resume: bool,
}

/// What is saved beside the results: the experiment plus how it was run.
#[derive(Serialize)]
struct SavedConfig<'a> {
    run: &'a RunArgs,
    dataset: &'a str,
    experiment: &'a Experiment,
}

/// The data shared by all runs of the experiment.
struct Data {
    train: Arc<dyn Dataset>,
    test: Arc<dyn Dataset>,
    augment: Augment,
    spec: ModelSpec,
    fingerprint: String,
}

/// Evaluation batch size: large, since no gradients are kept.
const EVAL_BATCH: usize = 256;

/// Training and test loaders for one network's recipe and seed.
fn loaders(net: &NetConfig, data: &Data, seed: u64) -> Result<(Loader, Loader)> {
    let eval_aug = Augment {
        pad_crop: None,
        hflip: false,
        ..data.augment.clone()
    };
    Ok((
        Loader::new(
            data.train.clone(),
            net.train.batch_size,
            data.augment.clone(),
            false,
            seed,
        )?,
        Loader::new(data.test.clone(), EVAL_BATCH, eval_aug, false, seed)?,
    ))
}

/// Runs the whole experiment and returns the table.
pub fn run(exp: &Experiment, args: &RunArgs) -> Result<TableResult> {
    let device = kd_core::device::parse(&args.device)?;
    let datasets::Opened {
        train: train_ds,
        test: test_ds,
        label,
    } = datasets::open(args.data.as_deref(), exp.data.train_subset, exp.data.resize)?;
    let norm = datasets::channel_stats(train_ds.as_ref())?;
    let augment = Augment {
        pad_crop: (exp.data.pad_crop > 0).then_some(exp.data.pad_crop),
        hflip: exp.data.hflip,
        normalize: Some(norm),
    };
    let spec = ModelSpec {
        in_channels: train_ds.shape()[0] as i64,
        num_classes: train_ds.num_classes() as i64,
    };
    let fingerprint = datasets::fingerprint(train_ds.as_ref())?;
    let data = Data {
        train: train_ds.clone(),
        test: test_ds.clone(),
        augment,
        spec,
        fingerprint,
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let saved = SavedConfig {
        run: args,
        dataset: &label,
        experiment: exp,
    };
    kd_core::train::checkpoint::write_atomic(
        &args.out.join("config.toml"),
        toml::to_string_pretty(&saved)?.as_bytes(),
    )?;
    eprintln!(
        "==> {} ({} scale) on {label}: {} train / {} test samples, {} classes, device {device:?}; writing {}",
        exp.table,
        exp.scale,
        train_ds.len(),
        test_ds.len(),
        spec.num_classes,
        args.out.display()
    );

    let seeds: Vec<u64> = (0..args.seeds).collect();
    let teachers = distinct_teachers(exp);
    let mut teacher_reports: Vec<Vec<TrainReport>> = vec![Vec::new(); teachers.len()];
    let mut row_reports: Vec<Vec<TrainReport>> = vec![Vec::new(); exp.rows.len()];
    let mut trained: Vec<Option<Teacher>> = teachers.iter().map(|_| None).collect();
    for &seed in &seeds {
        for (k, t) in teachers.iter().enumerate() {
            // A shared teacher is trained once (seed 0) and distilled into every student seed.
            if !t.needed || (t.net.shared && trained[k].is_some()) {
                continue;
            }
            let teacher_seed = if t.net.shared { 0 } else { seed };
            let (teacher, report) = ensure_teacher(t.net, &exp.data, &data, teacher_seed, device)?;
            teacher_reports[k].push(report);
            trained[k] = Some(teacher);
        }
        for (i, row) in exp.rows.iter().enumerate() {
            let dir = args.out.join(slug(&row.label)).join(format!("seed{seed}"));
            let teacher = teacher_index(&teachers, exp.teacher_of(row)).and_then(|k| trained[k].as_ref());
            let report = train_row(
                exp.student_of(row),
                &data,
                &row.method,
                teacher,
                seed,
                device,
                &dir,
                args.resume,
                &row.label,
            )?;
            eprintln!("    {} seed {seed}: top-1 {:.2}%", row.label, report.final_acc);
            row_reports[i].push(report);
        }
    }

    // Each teacher's row goes right before the first row that uses it.
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let mut shown = vec![false; teachers.len()];
    let mut show_teacher = |k: usize, rows: &mut Vec<RowResult>, curves: &mut Vec<Curve>| {
        if shown[k] || !teachers[k].needed {
            return;
        }
        shown[k] = true;
        let reports = &teacher_reports[k];
        rows.push(RowResult::new(
            &teachers[k].label,
            "top1",
            reports.iter().map(|r| r.final_acc).collect(),
            teachers[k].net.paper,
        ));
        curves.push(mean_curve(&teachers[k].label, reports));
    };
    show_teacher(0, &mut rows, &mut curves);
    for (row, reports) in exp.rows.iter().zip(&row_reports) {
        if let Some(k) = teacher_index(&teachers, exp.teacher_of(row)) {
            show_teacher(k, &mut rows, &mut curves);
        }
        let mut r = RowResult::new(
            &row.label,
            "top1",
            reports.iter().map(|r| r.final_acc).collect(),
            row.paper,
        );
        let extras: Vec<&serde_json::Value> = reports
            .iter()
            .map(|r| &r.distiller)
            .filter(|v| !v.is_null())
            .collect();
        if !extras.is_empty() {
            r.extra = serde_json::json!({ "per_seed_report": extras });
        }
        rows.push(r);
        curves.push(mean_curve(&row.label, reports));
    }
    let table = TableResult {
        table: exp.table.clone(),
        dataset: label,
        scale: exp.scale.clone(),
        seeds,
        rows,
    };
    table.write(&args.out)?;

    let png = args.out.join("accuracy.png");
    if let Err(e) = plot::curves(
        &png,
        &format!("{}: test top-1 (mean over seeds)", exp.table),
        "top-1 %",
        &curves,
    ) {
        eprintln!("warning: could not draw {}: {e:#}", png.display());
    }
    Ok(table)
}

/// One distinct teacher recipe of the experiment.
struct TeacherSlot<'a> {
    net: &'a NetConfig,
    /// Row label, e.g. `teacher (resnet32x4)`.
    label: String,
    /// Whether any row distils from it (or it has a paper number to show).
    needed: bool,
}

/// The experiment's teacher first, then every other teacher a row names, in order of first use.
fn distinct_teachers(exp: &Experiment) -> Vec<TeacherSlot<'_>> {
    let mut slots = vec![TeacherSlot {
        net: &exp.teacher,
        label: teacher_label(&exp.teacher),
        needed: exp.teacher.paper.is_some(),
    }];
    for row in &exp.rows {
        let net = exp.teacher_of(row);
        let k = match teacher_index(&slots, net) {
            Some(k) => k,
            None => {
                let mut label = teacher_label(net);
                if slots.iter().any(|s| s.label == label) {
                    label = format!("{label} #{}", slots.len() + 1);
                }
                slots.push(TeacherSlot {
                    net,
                    label,
                    needed: net.paper.is_some(),
                });
                slots.len() - 1
            }
        };
        slots[k].needed |= row.method.needs_teacher();
    }
    slots
}

/// `teacher (arch)`, or `teacher (arch, one shared)` for a teacher shared by every seed.
fn teacher_label(net: &NetConfig) -> String {
    if net.shared {
        format!("teacher ({}, one shared)", net.arch)
    } else {
        format!("teacher ({})", net.arch)
    }
}

/// The slot holding the teacher recipe `net`.
fn teacher_index(slots: &[TeacherSlot<'_>], net: &NetConfig) -> Option<usize> {
    slots.iter().position(|s| s.net == net)
}

/// Mean test-accuracy curve over seeds (epochs where every seed was evaluated).
fn mean_curve(label: &str, reports: &[TrainReport]) -> Curve {
    let mut points = Vec::new();
    if let Some(first) = reports.first() {
        for (e, rec) in first.history.iter().enumerate() {
            let vals: Vec<f64> = reports
                .iter()
                .filter_map(|r| r.history.get(e).and_then(|h| h.test_acc))
                .collect();
            if rec.test_acc.is_some() && vals.len() == reports.len() {
                points.push(((e + 1) as f64, vals.iter().sum::<f64>() / vals.len() as f64));
            }
        }
    }
    Curve {
        label: label.into(),
        points,
    }
}

/// A file-system friendly form of a row label.
pub fn slug(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// Reads a `report.json` written by [`train_into`].
fn read_report(path: &Path) -> Result<TrainReport> {
    serde_json::from_slice(&std::fs::read(path)?).with_context(|| format!("reading {}", path.display()))
}

/// Returns the teacher of `seed`, training it (resumably) into the cache if needed.
fn ensure_teacher(
    net: &NetConfig,
    data_cfg: &DataConfig,
    data: &Data,
    seed: u64,
    device: Device,
) -> Result<(Teacher, TrainReport)> {
    let recipe = toml::to_string(net)?;
    let dcfg = toml::to_string(data_cfg)?;
    let key = cache::key(&[&recipe, &dcfg, &data.fingerprint, &seed.to_string()]);
    let dir = cache::teacher_dir(&key);
    let weights = dir.join(TEACHER_WEIGHTS);
    let report_path = dir.join(REPORT);
    let report = if report_path.is_file() {
        let report = read_report(&report_path)?;
        eprintln!(
            "    teacher {} seed {seed}: cached ({:.2}%) at {}",
            net.arch,
            report.final_acc,
            dir.display()
        );
        report
    } else {
        eprintln!(
            "    teacher {} seed {seed}: training (cached afterwards at {})",
            net.arch,
            dir.display()
        );
        let job = Job {
            net,
            method: &Method::None,
            teacher: None,
            seed,
            device,
            label: "teacher",
        };
        let report = train_into(&job, data, &dir, TEACHER_WEIGHTS, true)?;
        let _ = std::fs::remove_file(dir.join(CHECKPOINT));
        eprintln!(
            "    teacher {} seed {seed}: top-1 {:.2}%",
            net.arch, report.final_acc
        );
        report
    };
    Ok((Teacher::load(&net.arch, data.spec, &weights, device)?, report))
}

/// File names inside a run folder (a cached teacher's or a row's seed folder).
const REPORT: &str = "report.json";
const CHECKPOINT: &str = "checkpoint.safetensors";
const TEACHER_WEIGHTS: &str = "teacher.safetensors";
const STUDENT_WEIGHTS: &str = "student.safetensors";

/// One network to train with one method.
struct Job<'a> {
    net: &'a NetConfig,
    method: &'a Method,
    teacher: Option<&'a Teacher>,
    seed: u64,
    device: Device,
    label: &'a str,
}

/// Trains `job` in `dir` (checkpoint there, resumable), then exports the weights as `weights`
/// and writes `report.json` last, so a folder with a report is a finished run.
fn train_into(job: &Job<'_>, data: &Data, dir: &Path, weights: &str, resume: bool) -> Result<TrainReport> {
    std::fs::create_dir_all(dir)?;
    let run = NetRun {
        arch: &job.net.arch,
        train: &job.net.train,
        spec: data.spec,
        seed: job.seed,
        device: job.device,
    };
    let (train, test) = loaders(job.net, data, job.seed)?;
    let (vs, _model, report) = fit(
        &run,
        job.method,
        job.teacher,
        &train,
        &test,
        &dir.join(CHECKPOINT),
        resume,
        job.label,
    )?;
    export_student(&vs, &dir.join(weights))?;
    kd_core::train::checkpoint::write_atomic(
        &dir.join(REPORT),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn train_row(
    net: &NetConfig,
    data: &Data,
    method: &Method,
    teacher: Option<&Teacher>,
    seed: u64,
    device: Device,
    dir: &Path,
    resume: bool,
    label: &str,
) -> Result<TrainReport> {
    let report_path = dir.join(REPORT);
    if resume && report_path.is_file() {
        return read_report(&report_path);
    }
    let job = Job {
        net,
        method,
        teacher,
        seed,
        device,
        label,
    };
    train_into(&job, data, dir, STUDENT_WEIGHTS, resume)
}

/// Builds the student and the method's distiller in a fresh store, then trains.
#[allow(clippy::too_many_arguments)]
fn fit(
    run: &NetRun<'_>,
    method: &Method,
    teacher: Option<&Teacher>,
    train: &Loader,
    test: &Loader,
    checkpoint: &Path,
    resume: bool,
    label: &str,
) -> Result<(nn::VarStore, Box<dyn models::Model>, TrainReport)> {
    kd_core::rng::seed_torch(kd_core::rng::derive_u64(run.seed, 0x1417, 0));
    let vs = nn::VarStore::new(run.device);
    let student = models::build(run.arch, &(vs.root() / STUDENT), run.spec)?;
    let aux = vs.root() / AUX;
    let t_model = teacher.map(|t| t.model());
    let need = |what: &str| -> Result<&dyn models::Model> {
        match t_model {
            Some(t) => Ok(t),
            None => bail!("{what} needs a teacher"),
        }
    };
    let mut distiller: Box<dyn Distiller> = match method {
        Method::None => Box::new(NoKd),
        Method::Kd(c) => Box::new(HintonKd::new(c.clone())),
        Method::Fitnets(c) => Box::new(FitNets::new(c.clone(), &aux, student.as_ref(), need("fitnets")?)?),
        Method::Unikd(c) => Box::new(Unikd::new((**c).clone(), &aux, student.as_ref(), need("unikd")?)?),
    };
    let report = Trainer {
        cfg: run.train,
        seed: run.seed,
        device: run.device,
        vs: &vs,
        student: student.as_ref(),
        teacher: if distiller.needs_teacher() { t_model } else { None },
        distiller: distiller.as_mut(),
        train,
        test,
        checkpoint: Some(checkpoint.to_path_buf()),
        label: format!("{label} s{}", run.seed),
    }
    .fit(resume)?;
    Ok((vs, student, report))
}

/// One network to train: architecture, recipe, seed and device.
struct NetRun<'a> {
    arch: &'a str,
    train: &'a TrainConfig,
    spec: ModelSpec,
    seed: u64,
    device: Device,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::distinct_teachers;
    use crate::experiment::Experiment;
    use crate::tables::find;

    #[test]
    fn rows_naming_the_same_teacher_share_it() {
        let t = find("cifar100").unwrap();
        for (scale, text) in [("quick", t.quick), ("paper", t.paper)] {
            let exp: Experiment = kd_core::config::parse(Path::new(scale), text).unwrap();
            let slots = distinct_teachers(&exp);
            let archs: Vec<&str> = slots.iter().map(|s| s.net.arch.as_str()).collect();
            assert_eq!(archs[0], "resnet32x4", "{scale}");
            assert!(slots.iter().all(|s| s.needed), "{scale}: a teacher no row uses");
            if scale == "paper" {
                assert_eq!(archs, vec!["resnet32x4", "wrn_40_2"]);
                assert_eq!(slots[1].label, "teacher (wrn_40_2)");
                assert_eq!(slots[1].net.paper, Some(75.61));
            }
            let mut labels: Vec<&str> = exp.rows.iter().map(|r| r.label.as_str()).collect();
            labels.sort_unstable();
            labels.dedup();
            assert_eq!(labels.len(), exp.rows.len(), "{scale}: duplicate row labels");
        }
    }
}
