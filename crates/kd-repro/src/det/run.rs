//! Runs a detection table: data, teacher, rows × seeds, box-AP table, curves and the picture.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kd_core::data::det::{self as detdata, CocoDataset, DetLoader, DetSource, InMemoryDet};
use kd_core::distill::{DetSupervised, Distiller, FeatureCwd, FeatureCwdLevel, Teacher, TeacherCache};
use kd_core::metrics::coco::{CocoDetection, CocoGt, CocoStats};
use kd_core::models::det::{self as detmodels, DetectorConfig};
use kd_core::models::Model;
use kd_core::train::{TrainReport, STUDENT_PREFIX};
use kd_gdd::Gdd;
use tch::{nn, Device};

use super::eval::{self, BoxAp};
use super::experiment::{DetExperiment, DetMethod, DetRow};
use crate::cache;
use crate::plot;
use crate::results::{RowResult, TableResult};
use crate::runner::{
    cached_teacher, mean_curve, per_seed_extra, read_report, save_config, slug, train_job_into,
    write_table_and_curves, InitFn, Job, RunArgs, REPORT,
};

/// Weights file of a trained network inside its folder.
pub(super) const WEIGHTS: &str = "student.safetensors";
/// The final COCO statistics of a row's seed, inside its folder.
const STATS_FILE: &str = "coco_stats.json";
/// The row's validation detections in the COCO results format, inside its seed folder.
const DETECTIONS_FILE: &str = "detections.json";

/// The opened data of a run.
pub(super) struct DetRunData {
    pub train: Arc<dyn DetSource>,
    pub val: Arc<dyn DetSource>,
    /// The validation ground truth, read by the evaluator from the very annotation file.
    pub gt: CocoGt,
    label: String,
    /// Identifies the training data for the teacher cache.
    fingerprint: String,
}

/// Runs the whole table.
pub fn run(exp: &DetExperiment, args: &RunArgs) -> Result<TableResult> {
    exp.validate()?;
    if args.web.is_some() {
        bail!("--web: table {:?} has no web pool", exp.table);
    }
    let device = kd_core::device::parse(&args.device)?;
    let data = open_data(exp, args)?;
    save_config(args, &data.label, exp)?;
    eprintln!(
        "==> {} ({} scale) on {}: {} train / {} val images, device {device:?}; writing {}",
        exp.table,
        exp.scale,
        data.label,
        data.train.len(),
        data.val.len(),
        args.out.display()
    );

    let (teacher, teacher_row) = ensure_teacher(exp, args, &data, device)?;
    let cache = teacher_cache(exp, args, &data, &teacher, device)?;
    let seeds: Vec<u64> = (0..args.seeds).collect();
    let mut reports: Vec<Vec<TrainReport>> = vec![Vec::new(); exp.rows.len()];
    let mut stats: Vec<Vec<CocoStats>> = vec![Vec::new(); exp.rows.len()];
    for &seed in &seeds {
        for (i, row) in exp.rows.iter().enumerate() {
            let dir = row_dir(&args.out, row, seed);
            let report = train_row(
                exp,
                row,
                &data,
                (&teacher, cache.as_ref()),
                seed,
                device,
                &dir,
                args.resume,
            )?;
            let s = final_stats(exp, row, &data, &dir, device)?;
            eprintln!(
                "    {} seed {seed}: box AP {:.2} (AP50 {:.2}, AP75 {:.2})",
                row.label,
                100.0 * s.ap,
                100.0 * s.ap50,
                100.0 * s.ap75
            );
            reports[i].push(report);
            stats[i].push(s);
        }
    }

    let mut rows = vec![teacher_row];
    let mut curves = Vec::new();
    for (i, row) in exp.rows.iter().enumerate() {
        let aps = stats[i].iter().map(|s| 100.0 * s.ap).collect();
        let mut r = RowResult::new(&row.label, "box AP", aps, row.paper);
        r.extra = per_seed_extra(&reports[i]);
        if r.extra.is_null() {
            r.extra = serde_json::json!({});
        }
        r.extra["coco_stats_per_seed"] = serde_json::to_value(&stats[i])?;
        r.extra["coco_stats_mean"] = eval::mean_stats(&stats[i]);
        rows.push(r);
        curves.push(mean_curve(&row.label, &reports[i]));
    }
    for reference in &exp.references {
        rows.push(RowResult::reference(&reference.label, "box AP", reference.paper));
    }
    let table = TableResult {
        table: exp.table.clone(),
        dataset: data.label.clone(),
        scale: exp.scale.clone(),
        seeds,
        rows,
        columns: Vec::new(),
        web: None,
    };
    write_table_and_curves(&args.out, &table, &curves, "box_ap.png", "box AP")?;
    if let Some(p) = &exp.picture {
        let png = args.out.join(&p.file);
        let drawn = super::picture::draw(exp, p, &data, &args.out, device, &png);
        plot::warn_if_not_drawn(&png, drawn);
    }
    Ok(table)
}

/// The folder of one row's seed.
pub(super) fn row_dir(out: &Path, row: &DetRow, seed: u64) -> PathBuf {
    out.join(slug(&row.label)).join(format!("seed{seed}"))
}

/// Opens `--data` (a COCO tree) or the generated stand-in.
fn open_data(exp: &DetExperiment, args: &RunArgs) -> Result<DetRunData> {
    let (root, mut label, fingerprint) = match &args.data {
        Some(d) => (
            d.clone(),
            format!("COCO-format data at {}", d.display()),
            format!("coco:{}", d.canonicalize().unwrap_or(d.clone()).display()),
        ),
        None => {
            let cfg = &exp.data.synth;
            let key = cache::key(&[&toml::to_string(cfg)?, &detdata::DET_SYNTH_VERSION.to_string()]);
            let dir = cache::user_cache().join("coco-synth").join(&key);
            detdata::generate_synthetic_coco(&dir, cfg)?;
            (
                dir,
                "synthetic scenes in COCO format (generated)".to_string(),
                format!("synth:{key}"),
            )
        }
    };
    if let (None, Some(p)) = (&args.data, &exp.paper_dataset) {
        label.push_str(&format!(" — not {p}"));
    }
    let train = detdata::open_coco_root(&root, &exp.data.train_split)?;
    let val = detdata::open_coco_root(&root, &exp.data.val_split)?;
    if train.category_ids() != val.category_ids() {
        bail!(
            "{} and {} list different categories ({:?} against {:?})",
            train.ann_file().display(),
            val.ann_file().display(),
            train.category_ids(),
            val.category_ids()
        );
    }
    let k = train.num_classes() as i64;
    let nets = std::iter::once(("teacher", &exp.teacher.net))
        .chain(exp.students.iter().map(|s| (s.name.as_str(), &s.net)));
    for (name, net) in nets {
        if net.num_classes != k {
            bail!(
                "{name}: the detector predicts {} classes but {} has {k} categories; set num_classes = {k}{}",
                net.num_classes,
                train.ann_file().display(),
                if args.data.is_none() {
                    " or pass --data with a COCO tree"
                } else {
                    ""
                }
            );
        }
    }
    let gt = CocoGt::from_file(val.ann_file())?;
    let (train, val) = (
        source(train, exp.data.in_memory)?,
        source(val, exp.data.in_memory)?,
    );
    Ok(DetRunData {
        train,
        val,
        gt,
        label,
        fingerprint,
    })
}

/// An image source over `coco`, decoded once into memory when `in_memory`.
fn source(coco: CocoDataset, in_memory: bool) -> Result<Arc<dyn DetSource>> {
    Ok(if in_memory {
        Arc::new(InMemoryDet::load(coco)?)
    } else {
        Arc::new(coco)
    })
}

/// Training and validation loaders for a batch size and seed.
fn loaders(
    exp: &DetExperiment,
    data: &DetRunData,
    batch: usize,
    seed: u64,
) -> Result<(DetLoader, DetLoader)> {
    Ok((
        DetLoader::new(data.train.clone(), batch, exp.data.augment.clone(), true, seed)?,
        val_loader(exp, data)?,
    ))
}

/// The validation loader: every image once in dataset order, resized and normalised as in
/// training, never flipped.
pub(super) fn val_loader(exp: &DetExperiment, data: &DetRunData) -> Result<DetLoader> {
    Ok(DetLoader::new(
        data.val.clone(),
        exp.data.eval_batch,
        exp.data.augment.clone(),
        false,
        0,
    )?)
}

/// The frozen teacher (from `--teacher`, the cache, or trained now) and its table row.
fn ensure_teacher(
    exp: &DetExperiment,
    args: &RunArgs,
    data: &DetRunData,
    device: Device,
) -> Result<(Teacher, RowResult)> {
    let t = &exp.teacher;
    let (weights, label) = match &args.teacher {
        Some(file) => (file.clone(), format!("{} (given: {})", t.label, file.display())),
        None => {
            let key = cache::key(&[
                &toml::to_string(&t.net)?,
                &toml::to_string(&t.train)?,
                &toml::to_string(&exp.data.augment)?,
                &toml::to_string(&exp.loss)?,
                &data.fingerprint,
            ]);
            let dir = cached_teacher(&t.label, &key, |dir| {
                let (train, val) = loaders(exp, data, t.train.batch_size, 0)?;
                let ap = BoxAp::new(&val, &data.gt, exp.postprocess.clone());
                let job = Job {
                    train: &t.train,
                    seed: 0,
                    device,
                    teacher: None,
                    teacher_cache: None,
                    train_data: &train,
                    test_data: &val,
                    resume: true,
                    label: "teacher",
                    evaluator: Some(&ap),
                    init: None,
                };
                train_job_into(
                    &job,
                    |p| build_net(&t.net, p),
                    |_, _| Ok(Box::new(DetSupervised::new(exp.loss.clone())?) as Box<dyn Distiller>),
                    dir,
                    WEIGHTS,
                )?;
                Ok(())
            })?;
            (dir.join(WEIGHTS), t.label.clone())
        }
    };
    let teacher = Teacher::load_built(|p| build_net(&t.net, p), &weights, device)
        .with_context(|| format!("loading the teacher from {}", weights.display()))?;
    let val = val_loader(exp, data)?;
    let (stats, _) = eval::evaluate(teacher.model(), &val, &data.gt, &exp.postprocess, device)?;
    eprintln!("    {label}: box AP {:.2}", 100.0 * stats.ap);
    let mut row = RowResult::new(&label, "box AP", vec![100.0 * stats.ap], t.paper);
    row.extra = serde_json::json!({ "coco_stats": stats });
    Ok((teacher, row))
}

/// The teacher's outputs over the training set, computed once for every row and seed, when
/// training inputs are deterministic (no flip, and `pad_to` gives every input one shape) and
/// they fit in `--teacher-cache-mb`.
fn teacher_cache(
    exp: &DetExperiment,
    args: &RunArgs,
    data: &DetRunData,
    teacher: &Teacher,
    device: Device,
) -> Result<Option<TeacherCache>> {
    let aug = &exp.data.augment;
    if args.teacher_cache_mb == 0 || aug.flip_prob > 0.0 || aug.pad_to.is_none() {
        return Ok(None);
    }
    let loader = DetLoader::new(data.train.clone(), exp.data.eval_batch, aug.clone(), false, 0)?;
    let started = std::time::Instant::now();
    let cache = TeacherCache::build(
        teacher.model(),
        &loader,
        device,
        exp.data.eval_batch,
        args.teacher_cache_mb << 20,
    )?;
    if let Some(c) = &cache {
        eprintln!(
            "    teacher outputs over the training set cached ({} MiB, {:.1}s)",
            c.bytes() >> 20,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(cache)
}

/// Builds a detector under `p`.
pub(super) fn build_net(cfg: &DetectorConfig, p: &nn::Path<'_>) -> kd_core::Result<Box<dyn Model>> {
    Ok(Box::new(detmodels::build(p, cfg)?))
}

/// Trains (or, with `resume`, reloads) one row's student of one seed into `dir`.
#[allow(clippy::too_many_arguments)]
fn train_row(
    exp: &DetExperiment,
    row: &DetRow,
    data: &DetRunData,
    (teacher, cache): (&Teacher, Option<&TeacherCache>),
    seed: u64,
    device: Device,
    dir: &Path,
    resume: bool,
) -> Result<TrainReport> {
    let report_path = dir.join(REPORT);
    if resume && report_path.is_file() {
        return read_report(&report_path);
    }
    let student = exp.student(&row.student)?;
    let (train, val) = loaders(exp, data, student.train.batch_size, seed)?;
    let ap = BoxAp::new(&val, &data.gt, exp.postprocess.clone());
    let copy = |vs: &nn::VarStore| -> Result<()> {
        let n = detmodels::copy_neck_and_head(teacher.var_store(), "", vs, STUDENT_PREFIX)?;
        tracing::info!("{}: copied {n} neck and head tensors from the teacher", row.label);
        Ok(())
    };
    let job = Job {
        train: &student.train,
        seed,
        device,
        teacher: Some(teacher.model()),
        teacher_cache: cache,
        train_data: &train,
        test_data: &val,
        resume,
        label: &row.label,
        evaluator: Some(&ap),
        init: row.init_student.then_some(&copy as &InitFn<'_>),
    };
    let report = train_job_into(
        &job,
        |p| build_net(&student.net, p),
        |aux, s| det_distiller(exp, &row.method, aux, s, teacher.model()),
        dir,
        WEIGHTS,
    )?;
    // The trainer evaluated the exported weights after the last epoch; keep that evaluation as
    // the row's final one. (A run resumed with every epoch done evaluates nothing here, and
    // `final_stats` computes it.)
    if let Some((stats, dets)) = ap.take_last() {
        save_stats(dir, &stats, &dets)?;
    }
    Ok(report)
}

/// Writes a row's final statistics and its detections (COCO results format) into `dir`.
fn save_stats(dir: &Path, stats: &CocoStats, dets: &[CocoDetection]) -> Result<()> {
    kd_core::metrics::coco::write_detections(&dir.join(DETECTIONS_FILE), dets)?;
    kd_core::train::checkpoint::write_atomic(
        &dir.join(STATS_FILE),
        serde_json::to_string_pretty(stats)?.as_bytes(),
    )?;
    Ok(())
}

/// The distiller of a row: the detector's own losses plus the method's terms.
fn det_distiller(
    exp: &DetExperiment,
    method: &DetMethod,
    aux: &nn::Path<'_>,
    student: &dyn Model,
    teacher: &dyn Model,
) -> Result<Box<dyn Distiller>> {
    let task = DetSupervised::new(exp.loss.clone())?;
    Ok(match method {
        DetMethod::None => Box::new(task),
        DetMethod::Cwd { tau, weight, taps } => Box::new(FeatureCwd::new(
            aux,
            taps.iter()
                .map(|t| FeatureCwdLevel {
                    student_tap: t.clone(),
                    teacher_tap: t.clone(),
                })
                .collect(),
            *tau,
            *weight,
            student.taps(),
            teacher.taps(),
            Box::new(task),
        )?),
        DetMethod::Gdd(cfg) => {
            Box::new(Gdd::for_models(aux, cfg.clone(), student, teacher)?.with_task(Box::new(task)))
        }
    })
}

/// The COCO statistics of a trained row on the validation set; computed once, with the
/// detections written in the COCO results format beside them.
fn final_stats(
    exp: &DetExperiment,
    row: &DetRow,
    data: &DetRunData,
    dir: &Path,
    device: Device,
) -> Result<CocoStats> {
    let path = dir.join(STATS_FILE);
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(v) = serde_json::from_slice(&bytes) {
            return Ok(v);
        }
    }
    let student = exp.student(&row.student)?;
    let net = Teacher::load_built(|p| build_net(&student.net, p), &dir.join(WEIGHTS), device)?;
    let val = val_loader(exp, data)?;
    let (stats, dets) = eval::evaluate(net.model(), &val, &data.gt, &exp.postprocess, device)?;
    save_stats(dir, &stats, &dets)?;
    Ok(stats)
}
