//! Executes an [`Experiment`]: per seed, the (cached) teachers, then every row's student; then
//! the table, the plots and the resolved config, all in one run folder.
//!
//! Rows with `train_on = "web"` train their student on the web pool ([`crate::webpool`]) instead
//! of the original training set: same recipe, same teacher, same (original) test set. Their
//! teacher's cached outputs, if any, are computed over the pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;
use anyhow::{Context, Result};
use kd_core::data::Augment;
use kd_core::data::Dataset;
use kd_core::data::{BatchSource, Loader};
use kd_core::distill::{Distiller, TeacherCache};
use kd_core::models::{self, ModelSpec};
use kd_core::train::{export_student, Evaluator, TrainConfig, TrainReport, Trainer, AUX, STUDENT};
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use crate::columns::{self, RowKind};
use crate::experiment::{Experiment, NetConfig, Row, TrainOn};
use crate::plot::{self, Curve};
use crate::results::{RowResult, TableResult};
use crate::teachers::{self, TrainedTeacher};
use crate::webpool::{self, WebPool};
use crate::{datasets, methods};

/// How this invocation runs the experiment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunArgs {
    /// Dataset folder, or `None` for the embedded default.
    pub data: Option<PathBuf>,
    /// Folder of unlabelled web images, or `None` for the generated pool of the `[web]` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<PathBuf>,
    /// Number of seeds (seeds are 0..n).
    pub seeds: u64,
    /// Output folder.
    pub out: PathBuf,
    /// Device name.
    pub device: String,
    /// Continue an interrupted run in `out`.
    pub resume: bool,
    /// Memory budget (MiB) for caching a teacher's outputs over the training set when the data
    /// is not augmented at random; 0 disables the cache.
    pub teacher_cache_mb: usize,
    /// Teacher weights to use instead of training one (segmentation tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<PathBuf>,
}

/// What is saved beside the results: the experiment plus how it was run.
#[derive(Serialize)]
struct SavedConfig<'a, E: Serialize> {
    run: &'a RunArgs,
    dataset: &'a str,
    experiment: &'a E,
}

/// Creates the run folder and writes the resolved config into it as `config.toml`: how the
/// run was invoked, the data it read and the whole experiment, so the results never travel
/// without what produced them.
pub fn save_config<E: Serialize>(args: &RunArgs, dataset: &str, experiment: &E) -> Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let saved = SavedConfig {
        run: args,
        dataset,
        experiment,
    };
    kd_core::train::checkpoint::write_atomic(
        &args.out.join("config.toml"),
        toml::to_string_pretty(&saved)?.as_bytes(),
    )?;
    Ok(())
}

/// The folder of the cached teacher with key `key`, training it there first (through `train`,
/// given the folder) unless a finished one is cached. The resumable checkpoint is removed once
/// the teacher is finished; only its weights and report stay.
pub fn cached_teacher(label: &str, key: &str, train: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let dir = crate::cache::teacher_dir(key);
    if dir.join(REPORT).is_file() {
        eprintln!("    {label}: cached at {}", dir.display());
    } else {
        eprintln!("    {label}: training (cached afterwards at {})", dir.display());
        train(&dir)?;
        let _ = std::fs::remove_file(dir.join(CHECKPOINT));
    }
    Ok(dir)
}

/// Writes a table's results into `out` and its validation curves (one line per row against the
/// epoch, `metric` in % on the y axis) as `out/<png>`.
pub fn write_table_and_curves(
    out: &Path,
    table: &TableResult,
    curves: &[Curve],
    png: &str,
    metric: &str,
) -> Result<()> {
    table.write(out)?;
    let png = out.join(png);
    let title = format!("{}: validation {metric} (mean over seeds)", table.table);
    plot::warn_if_not_drawn(
        &png,
        plot::curves(&png, &title, "epoch", &format!("{metric} %"), curves),
    );
    Ok(())
}

/// The data shared by all runs of the experiment.
pub struct Data {
    /// Training set.
    pub train: Arc<dyn Dataset>,
    /// Test set.
    pub test: Arc<dyn Dataset>,
    /// Training augmentation (normalisation included).
    pub augment: Augment,
    /// What the models are built for.
    pub spec: ModelSpec,
    /// Content fingerprint of the training set, for the teacher cache.
    pub fingerprint: String,
}

/// Evaluation batch size: large, since no gradients are kept.
const EVAL_BATCH: usize = 256;

/// Training and test loaders for a recipe's batch size and seed.
pub fn loaders(batch_size: usize, data: &Data, seed: u64) -> Result<(Loader, Loader)> {
    let eval_aug = Augment {
        pad_crop: None,
        hflip: false,
        ..data.augment.clone()
    };
    Ok((
        Loader::new(data.train.clone(), batch_size, data.augment.clone(), false, seed)?,
        Loader::new(data.test.clone(), EVAL_BATCH, eval_aug, false, seed)?,
    ))
}

/// Runs the whole experiment and returns the table.
pub fn run(exp: &Experiment, args: &RunArgs) -> Result<TableResult> {
    exp.validate()?;
    let device = kd_core::device::parse(&args.device)?;
    let datasets::Opened {
        train: train_ds,
        test: test_ds,
        mut label,
        kind: data_kind,
    } = datasets::open(args.data.as_deref(), exp.data.train_subset, exp.data.resize)?;
    if let (None, Some(paper)) = (&args.data, &exp.paper_dataset) {
        label.push_str(&format!(" — not {paper}"));
    }
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
    let pool = open_pool(exp, args, &data)?;
    let web_data = match &pool {
        Some(p) => Some(Data {
            train: p.dataset.clone(),
            test: test_ds.clone(),
            augment: data.augment.clone(),
            spec,
            fingerprint: datasets::fingerprint(p.dataset.as_ref())?,
        }),
        None => None,
    };
    let data_of = |row: &Row| -> &Data {
        match (row.train_on, &web_data) {
            (TrainOn::Web, Some(w)) => w,
            _ => &data,
        }
    };
    save_config(args, &label, exp)?;
    eprintln!(
        "==> {} ({} scale) on {label}: {} train / {} test samples, {} classes, device {device:?}; writing {}",
        exp.table,
        exp.scale,
        train_ds.len(),
        test_ds.len(),
        spec.num_classes,
        args.out.display()
    );
    if let Some(p) = &pool {
        eprintln!(
            "    web pool: {} ({} images at {})",
            p.label,
            p.dataset.len(),
            p.dir.display()
        );
    }

    let seeds: Vec<u64> = (0..args.seeds).collect();
    let all_teachers = exp.all_teachers();
    let needed = exp.teachers_needed()?;
    let row_teacher: Vec<usize> = exp
        .rows
        .iter()
        .map(|r| exp.teacher_of(r))
        .collect::<Result<_>>()?;
    let row_student: Vec<NetConfig> = exp
        .rows
        .iter()
        .map(|r| exp.student_of(r))
        .collect::<Result<_>>()?;
    // Teachers some row distils from (not merely shown): their outputs may be cached.
    let mut distils = vec![false; all_teachers.len()];
    let mut distils_web = vec![false; all_teachers.len()];
    for (row, &t) in exp.rows.iter().zip(&row_teacher) {
        let web = row.train_on == TrainOn::Web;
        distils[t] |= row.method.needs_teacher() && !web;
        distils_web[t] |= row.method.needs_teacher() && web;
    }
    // Each teacher's outputs over the web pool, for the rows that train on it.
    let mut web_caches: Vec<Option<TeacherCache>> = all_teachers.iter().map(|_| None).collect();
    let mut teacher_reports: Vec<Vec<TrainReport>> = vec![Vec::new(); all_teachers.len()];
    let mut row_reports: Vec<Vec<TrainReport>> = vec![Vec::new(); exp.rows.len()];
    let mut trained: Vec<Option<TrainedTeacher>> = all_teachers.iter().map(|_| None).collect();
    for &seed in &seeds {
        for (i, (name, net)) in all_teachers.iter().enumerate() {
            // A shared teacher is trained once (seed 0) and distilled into every student seed.
            if !needed[i] || (net.shared && trained[i].is_some()) {
                continue;
            }
            let teacher_seed = if net.shared { 0 } else { seed };
            let mut t = teachers::ensure(name, net, &exp.data, &data, teacher_seed, device)?;
            if distils[i] {
                t.cache = teachers::output_cache(&t, &data, device, args.teacher_cache_mb)?;
            }
            if let (true, Some(w)) = (distils_web[i], &web_data) {
                web_caches[i] = teachers::output_cache(&t, w, device, args.teacher_cache_mb)?;
            }
            teacher_reports[i].push(t.report.clone());
            trained[i] = Some(t);
        }
        for (i, row) in exp.rows.iter().enumerate() {
            let dir = args.out.join(slug(&row.label)).join(format!("seed{seed}"));
            let teacher = trained[row_teacher[i]].as_ref();
            let cache = match row.train_on {
                TrainOn::Web => web_caches[row_teacher[i]].as_ref(),
                TrainOn::Original => teacher.and_then(|t| t.cache.as_ref()),
            };
            let report = train_row(
                &row_student[i],
                data_of(row),
                row,
                teacher,
                cache,
                seed,
                device,
                &dir,
                args.resume,
            )?;
            eprintln!("    {} seed {seed}: top-1 {:.2}%", row.label, report.final_acc);
            row_reports[i].push(report);
        }
    }

    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let mut labelled: Vec<(String, &[TrainReport])> = Vec::new();
    for (i, (_, net)) in all_teachers.iter().enumerate() {
        if !needed[i] {
            continue;
        }
        let reports = &teacher_reports[i];
        let label = net.row_label();
        let mut r = RowResult::new(
            &label,
            "top1",
            reports.iter().map(|r| r.final_acc).collect(),
            net.paper,
        );
        r.extra = per_seed_extra(reports);
        r.columns = columns::values(&exp.columns, RowKind::Teacher, reports, &[]);
        rows.push(r);
        curves.push(mean_curve(&label, reports));
        labelled.push((label, reports));
    }
    // Rows that report the pool indices they kept get a summary whether or not a plot is drawn.
    let kept_key = exp
        .selection_plot
        .as_ref()
        .map_or(crate::experiment::KEPT_KEY, |p| p.key.as_str());
    let mut selection_curves = Vec::new();
    for (i, (row, reports)) in exp.rows.iter().zip(&row_reports).enumerate() {
        let mut r = RowResult::new(
            &row.label,
            "top1",
            reports.iter().map(|r| r.final_acc).collect(),
            row.paper_for(&data_kind),
        );
        r.extra = per_seed_extra(reports);
        if row.train_on == TrainOn::Web {
            let origins = pool.as_ref().and_then(|p| p.origins.as_deref());
            if let Some((extra, curves)) = selection_summary(&row.label, reports, kept_key, origins) {
                strip_key(&mut r.extra, kept_key);
                r.extra["kept"] = extra;
                selection_curves.extend(curves);
            }
        }
        let teacher: &[TrainReport] = if row.method.needs_teacher() {
            &teacher_reports[row_teacher[i]]
        } else {
            &[]
        };
        r.columns = columns::values(&exp.columns, RowKind::Student, reports, teacher);
        rows.push(r);
        curves.push(mean_curve(&row.label, reports));
        labelled.push((row.label.clone(), reports));
    }
    let table = TableResult {
        table: exp.table.clone(),
        dataset: label,
        scale: exp.scale.clone(),
        seeds,
        rows,
        columns: columns::heads(&exp.columns),
        web: pool.as_ref().map(WebPool::summary),
    };
    table.write(&args.out)?;

    let png = args.out.join("accuracy.png");
    plot::warn_if_not_drawn(
        &png,
        plot::curves(
            &png,
            &format!("{}: test top-1 (mean over seeds)", exp.table),
            "epoch",
            "top-1 %",
            &curves,
        ),
    );
    if let Some(sp) = &exp.selection_plot {
        let png = args.out.join(&sp.file);
        match pool.as_ref().map(|p| p.origins.is_some()) {
            Some(true) if !selection_curves.is_empty() => {
                // Each row's pair of curves shares a colour; junk is dashed.
                for (i, c) in selection_curves.iter_mut().enumerate() {
                    c.color = Some(i / 2);
                }
                let drawn = plot::curves(&png, &sp.title, "epoch", "kept (% of its kind)", &selection_curves);
                plot::warn_if_not_drawn(&png, drawn);
            }
            Some(false) => eprintln!(
                "note: the web pool has no {} listing each image's origin, so {} (kept in-distribution vs junk images) is not drawn",
                webpool::ORIGINS_FILE,
                png.display()
            ),
            _ => {}
        }
    }
    for spec in &exp.plots {
        let curves: Vec<Curve> = labelled
            .iter()
            .map(|(label, reports)| columns::report_curve(label, reports, spec))
            .filter(|c| !c.points.is_empty())
            .collect();
        let png = args.out.join(&spec.file);
        plot::warn_if_not_drawn(
            &png,
            plot::curves(&png, &spec.title, &spec.x_label, "top-1 %", &curves),
        );
    }
    Ok(table)
}

/// Opens the web pool when some row trains on it: the `--web` folder, or the pool generated from
/// the original training images (at their stored size, before any `resize`).
fn open_pool(exp: &Experiment, args: &RunArgs, data: &Data) -> Result<Option<WebPool>> {
    if !exp.uses_web() {
        if let Some(w) = &args.web {
            bail!(
                "--web {}: table {:?} has no row that trains on a web pool",
                w.display(),
                exp.table
            );
        }
        return Ok(None);
    }
    let cfg = exp
        .web
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the experiment has rows on the web pool but no [web] section"))?;
    // The generator works from the stored images (before `resize` and `train_subset`); a
    // `--web` folder needs no source.
    let source = match &args.web {
        Some(_) => data.train.clone(),
        None => kd_core::data::open_classification(args.data.as_deref())?.0,
    };
    let pool = webpool::open(args.web.as_deref(), cfg, source.as_ref(), data.train.shape())?;
    if pool.dataset.shape()[0] != data.train.shape()[0] {
        bail!("web pool and original data differ in channels");
    }
    Ok(Some(pool))
}

/// For a row that reports its kept pool indices per epoch under `key`: the kept share of
/// in-distribution and of junk images per epoch (mean over seeds) as the row's `kept` extra and
/// two plot curves. `None` when the row reports nothing under `key`.
fn selection_summary(
    label: &str,
    reports: &[TrainReport],
    key: &str,
    origins: Option<&[webpool::Origin]>,
) -> Option<(serde_json::Value, Vec<Curve>)> {
    let per_seed: Vec<Vec<Vec<usize>>> = reports
        .iter()
        .filter_map(|r| r.distiller.get(key)?.as_array().cloned())
        .map(|epochs| {
            epochs
                .iter()
                .map(|e| {
                    e.as_array()
                        .map(|ix| ix.iter().filter_map(|v| v.as_u64().map(|v| v as usize)).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect();
    if per_seed.is_empty() {
        return None;
    }
    let kept_counts: Vec<Vec<usize>> = per_seed
        .iter()
        .map(|s| s.iter().map(Vec::len).collect())
        .collect();
    let Some(origins) = origins else {
        return Some((serde_json::json!({ "count_per_epoch": kept_counts }), Vec::new()));
    };
    let epochs = per_seed.iter().map(Vec::len).min().unwrap_or(0);
    let (mut id, mut junk) = (Vec::new(), Vec::new());
    for e in 0..epochs {
        let fr: Vec<(f64, f64)> = per_seed
            .iter()
            .map(|s| webpool::kept_fractions(origins, &s[e]))
            .collect();
        let n = fr.len() as f64;
        id.push(fr.iter().map(|f| f.0).sum::<f64>() / n);
        junk.push(fr.iter().map(|f| f.1).sum::<f64>() / n);
    }
    let curve = |what: &str, v: &[f64], dashed: bool| Curve {
        dashed,
        ..Curve::new(
            format!("{label}: {what}"),
            v.iter().enumerate().map(|(e, &y)| ((e + 1) as f64, y)).collect(),
        )
    };
    let curves = vec![
        curve("in-distribution kept", &id, false),
        curve("junk kept (dashed)", &junk, true),
    ];
    Some((
        serde_json::json!({
            "count_per_epoch": kept_counts,
            "in_distribution_pct_per_epoch": id,
            "junk_pct_per_epoch": junk,
        }),
        curves,
    ))
}

/// Removes `key` from every per-seed report in a row's `extra` (a long list already summarised).
fn strip_key(extra: &mut serde_json::Value, key: &str) {
    if let Some(seeds) = extra.get_mut("per_seed_report").and_then(|v| v.as_array_mut()) {
        for s in seeds {
            if let Some(o) = s.as_object_mut() {
                o.remove(key);
            }
        }
    }
    if extra.is_null() {
        *extra = serde_json::json!({});
    }
}

/// The distillers' per-seed reports as a row's `extra`, or null when they report nothing.
pub fn per_seed_extra(reports: &[TrainReport]) -> serde_json::Value {
    let extras: Vec<&serde_json::Value> = reports
        .iter()
        .map(|r| &r.distiller)
        .filter(|v| !v.is_null())
        .collect();
    if extras.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::json!({ "per_seed_report": extras })
    }
}

/// Mean test-accuracy curve over seeds (epochs where every seed was evaluated).
pub fn mean_curve(label: &str, reports: &[TrainReport]) -> Curve {
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
    Curve::new(label, points)
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

/// File names inside a run folder (a cached teacher's or a row's seed folder).
pub const REPORT: &str = "report.json";
/// The resumable training checkpoint (removed from the teacher cache once training is done).
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// Reads a `report.json` written by [`train_into`].
pub fn read_report(path: &Path) -> Result<TrainReport> {
    serde_json::from_slice(&std::fs::read(path)?).with_context(|| format!("reading {}", path.display()))
}

/// Trains one network into `dir` (checkpoint there, resumable), then exports its weights as
/// `weights`, lets the method save what else it produced, and writes `report.json` last, so a
/// folder with a report is a finished run.
#[allow(clippy::too_many_arguments)]
pub fn train_into(
    run: &NetRun<'_>,
    build: impl FnOnce(&nn::Path<'_>, &dyn models::Model) -> Result<Box<dyn Distiller>>,
    teacher: Option<&dyn models::Model>,
    teacher_cache: Option<&TeacherCache>,
    data: &Data,
    dir: &Path,
    weights: &str,
    resume: bool,
    label: &str,
) -> Result<TrainReport> {
    let (train, test) = loaders(run.train.batch_size, data, run.seed)?;
    let job = Job {
        train: run.train,
        seed: run.seed,
        device: run.device,
        teacher,
        teacher_cache,
        train_data: &train,
        test_data: &test,
        resume,
        label,
        evaluator: None,
        init: None,
    };
    train_job_into(
        &job,
        |p| models::build(run.arch, p, run.spec),
        build,
        dir,
        weights,
    )
}

/// A hook on a freshly built training store (see [`Job::init`]).
pub type InitFn<'a> = dyn Fn(&nn::VarStore) -> Result<()> + 'a;

/// One training job, whatever the task: recipe, seed, device, teacher and data.
pub struct Job<'a> {
    /// Recipe.
    pub train: &'a TrainConfig,
    /// Seed.
    pub seed: u64,
    /// Device.
    pub device: Device,
    /// The frozen teacher, for methods that need one.
    pub teacher: Option<&'a dyn models::Model>,
    /// The teacher's outputs over the training set, when cached.
    pub teacher_cache: Option<&'a TeacherCache>,
    /// Training batches.
    pub train_data: &'a dyn BatchSource,
    /// Test batches.
    pub test_data: &'a dyn BatchSource,
    /// Continue from the checkpoint when there is one.
    pub resume: bool,
    /// Label for logs and errors.
    pub label: &'a str,
    /// The test metric when it is not the built-in one (top-1 or mIoU), e.g. box AP.
    pub evaluator: Option<&'a dyn Evaluator>,
    /// Runs on the fresh training store once the network is built, before training (e.g. to
    /// start a detector's neck and head from the teacher's). A resumed run's checkpoint
    /// overrides what it set.
    pub init: Option<&'a InitFn<'a>>,
}

/// [`train_into`] for any network and data: builds the network with `model`, trains it in
/// `dir`, exports the weights as `weights`, saves the method's artifacts and writes the report
/// last.
pub fn train_job_into(
    job: &Job<'_>,
    model: impl FnOnce(&nn::Path<'_>) -> kd_core::Result<Box<dyn models::Model>>,
    build: impl FnOnce(&nn::Path<'_>, &dyn models::Model) -> Result<Box<dyn Distiller>>,
    dir: &Path,
    weights: &str,
) -> Result<TrainReport> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (vs, _model, report, distiller) = fit_job(job, model, build, &dir.join(CHECKPOINT))
        .with_context(|| format!("{}, seed {}", job.label, job.seed))?;
    export_student(&vs, &dir.join(weights))?;
    distiller.save_artifacts(dir).with_context(|| {
        format!(
            "saving what training {} produced into {}",
            job.label,
            dir.display()
        )
    })?;
    kd_core::train::checkpoint::write_atomic(
        &dir.join(REPORT),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

/// Trains (or, with `resume`, reloads) one row's student of one seed into `dir`.
#[allow(clippy::too_many_arguments)]
fn train_row(
    net: &NetConfig,
    data: &Data,
    row: &Row,
    teacher: Option<&TrainedTeacher>,
    teacher_cache: Option<&TeacherCache>,
    seed: u64,
    device: Device,
    dir: &Path,
    resume: bool,
) -> Result<TrainReport> {
    let report_path = dir.join(REPORT);
    if resume && report_path.is_file() {
        return read_report(&report_path);
    }
    let run = NetRun {
        arch: &net.arch,
        train: &net.train,
        spec: data.spec,
        seed,
        device,
    };
    let n_train = data.train.len();
    train_into(
        &run,
        |aux, student| methods::student_distiller(&row.method, aux, student, teacher, n_train, seed),
        teacher.map(|t| t.teacher.model()),
        teacher_cache,
        data,
        dir,
        "student.safetensors",
        resume,
        &row.label,
    )
}

/// What [`fit`] returns: the training store, the trained network, the report and the distiller.
pub type Fitted = (
    nn::VarStore,
    Box<dyn models::Model>,
    TrainReport,
    Box<dyn Distiller>,
);

/// Builds the network (with `model`, under the student path) and, through `build` (given the
/// `aux` path and the network), the method's distiller in a fresh store, then trains.
pub fn fit_job(
    job: &Job<'_>,
    model: impl FnOnce(&nn::Path<'_>) -> kd_core::Result<Box<dyn models::Model>>,
    build: impl FnOnce(&nn::Path<'_>, &dyn models::Model) -> Result<Box<dyn Distiller>>,
    checkpoint: &Path,
) -> Result<Fitted> {
    kd_core::rng::seed_torch(kd_core::rng::derive_u64(job.seed, 0x1417, 0));
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

/// One network to train: architecture, recipe, seed and device.
pub struct NetRun<'a> {
    /// Architecture name.
    pub arch: &'a str,
    /// Training recipe.
    pub train: &'a TrainConfig,
    /// What it is built for.
    pub spec: ModelSpec,
    /// Seed.
    pub seed: u64,
    /// Device.
    pub device: Device,
}
