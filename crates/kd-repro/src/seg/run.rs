//! Runs a segmentation table: data, teacher, rows × seeds, mIoU table, curves and the picture.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kd_core::data::seg::{self as segdata, InMemorySeg, SegLoader, SegResize, SegSource};
use kd_core::data::BatchSource;
use kd_core::distill::{Cwd, CwdConfig, Distiller, SegSupervised, Teacher};
use kd_core::metrics::ConfusionMatrix;
use kd_core::models::seg::{self as segmodels, Inference, SegNetConfig};
use kd_core::models::Model;
use kd_core::train::TrainReport;
use kd_gdd::Gdd;
use tch::{nn, Device};

use super::experiment::{SegExperiment, SegMethod, SegRow};
use crate::cache;
use crate::plot;
use crate::results::{RowResult, TableResult};
use crate::runner::{
    cached_teacher, mean_curve, per_seed_extra, read_report, save_config, slug, train_job_into,
    write_table_and_curves, Job, RunArgs, REPORT,
};

/// Weights file of a trained network inside its folder.
pub(super) const WEIGHTS: &str = "student.safetensors";
/// Per-class IoU of the final evaluation, inside a row's seed folder.
const IOU_FILE: &str = "per_class_iou.json";

/// The opened data of a run.
struct SegRunData {
    train: Arc<dyn SegSource>,
    val: Arc<dyn SegSource>,
    label: String,
    /// Identifies the training data for the teacher cache.
    fingerprint: String,
}

/// Runs the whole table.
pub fn run(exp: &SegExperiment, args: &RunArgs) -> Result<TableResult> {
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
    let seeds: Vec<u64> = (0..args.seeds).collect();
    let mut reports: Vec<Vec<TrainReport>> = vec![Vec::new(); exp.rows.len()];
    let mut ious: Vec<Vec<Vec<Option<f64>>>> = vec![Vec::new(); exp.rows.len()];
    let mut mious: Vec<Vec<f64>> = vec![Vec::new(); exp.rows.len()];
    for &seed in &seeds {
        for (i, row) in exp.rows.iter().enumerate() {
            let dir = row_dir(&args.out, row, seed);
            let report = train_row(exp, row, &data, &teacher, seed, device, &dir, args.resume)?;
            let (miou, iou) = final_iou(exp, row, &data, &dir, device)?;
            eprintln!("    {} seed {seed}: mIoU {miou:.2}", row.label);
            reports[i].push(report);
            mious[i].push(miou);
            ious[i].push(iou);
        }
    }

    let mut rows = vec![teacher_row];
    let mut curves = Vec::new();
    for (i, row) in exp.rows.iter().enumerate() {
        let mut r = RowResult::new(&row.label, "mIoU", mious[i].clone(), row.paper);
        r.extra = per_seed_extra(&reports[i]);
        if r.extra.is_null() {
            r.extra = serde_json::json!({});
        }
        r.extra["per_class_iou"] = class_means(&ious[i]);
        rows.push(r);
        curves.push(mean_curve(&row.label, &reports[i]));
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
    write_table_and_curves(&args.out, &table, &curves, "miou.png", "mIoU")?;
    if let Some(p) = &exp.picture {
        let png = args.out.join(&p.file);
        let drawn = super::picture::draw(exp, p, &data.val, &args.out, device, &png);
        plot::warn_if_not_drawn(&png, drawn);
    }
    Ok(table)
}

/// The folder of one row's seed.
pub(super) fn row_dir(out: &Path, row: &SegRow, seed: u64) -> PathBuf {
    out.join(slug(&row.label)).join(format!("seed{seed}"))
}

/// Opens `--data` (real Cityscapes) or the generated stand-in, at the table's scale.
fn open_data(exp: &SegExperiment, args: &RunArgs) -> Result<SegRunData> {
    let (root, mut label, fingerprint) = match &args.data {
        Some(d) => (
            d.clone(),
            format!("Cityscapes at {}", d.display()),
            format!("cityscapes:{}", d.canonicalize().unwrap_or(d.clone()).display()),
        ),
        None => {
            let cfg = &exp.data.synth;
            let key = cache::key(&[&toml::to_string(cfg)?, &segdata::SYNTH_VERSION.to_string()]);
            let dir = cache::user_cache().join("cityscapes-synth").join(&key);
            segdata::generate_synthetic_cityscapes(&dir, cfg)?;
            (
                dir,
                format!(
                    "synthetic street scenes in Cityscapes format ({}×{}, generated)",
                    cfg.width, cfg.height
                ),
                format!("synth:{key}"),
            )
        }
    };
    if let (None, Some(p)) = (&args.data, &exp.paper_dataset) {
        label.push_str(&format!(" — not {p}"));
    }
    let scale = exp.data.scale;
    let resize = (scale != 1.0).then_some(SegResize::Factor(scale));
    let train = segdata::open_cityscapes(&root, "train", resize)?;
    let val = segdata::open_cityscapes(&root, "val", resize)?;
    let (train, val): (Arc<dyn SegSource>, Arc<dyn SegSource>) = if exp.data.in_memory {
        (
            Arc::new(InMemorySeg::load(&train)?),
            Arc::new(InMemorySeg::load(&val)?),
        )
    } else {
        (Arc::new(train), Arc::new(val))
    };
    if scale != 1.0 {
        label.push_str(&format!(", images scaled by {scale}"));
    }
    Ok(SegRunData {
        train,
        val,
        label,
        fingerprint: format!("{fingerprint}@{scale}"),
    })
}

/// Training and validation loaders for a batch size and seed.
fn loaders(
    exp: &SegExperiment,
    data: &SegRunData,
    batch: usize,
    seed: u64,
) -> Result<(SegLoader, SegLoader)> {
    Ok((
        SegLoader::new(
            data.train.clone(),
            batch,
            Some(exp.data.augment.clone()),
            true,
            seed,
        )?,
        val_loader(&data.val)?,
    ))
}

/// The validation loader: every image once, at its size, normalised, one per batch (sizes may
/// differ). It draws nothing at random, so its seed does not matter.
pub(super) fn val_loader(val: &Arc<dyn SegSource>) -> Result<SegLoader> {
    Ok(SegLoader::new(val.clone(), 1, None, false, 0)?)
}

/// The frozen teacher (from `--teacher`, the cache, or trained now) and its table row.
fn ensure_teacher(
    exp: &SegExperiment,
    args: &RunArgs,
    data: &SegRunData,
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
                &data.fingerprint,
            ]);
            let dir = cached_teacher(&t.label, &key, |dir| {
                let (train, val) = loaders(exp, data, t.train.batch_size, 0)?;
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
                    evaluator: None,
                    init: None,
                };
                train_job_into(
                    &job,
                    |p| build_net(&t.net, p),
                    |_, _| Ok(Box::new(SegSupervised::default()) as Box<dyn Distiller>),
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
    let val = val_loader(&data.val)?;
    let miou = confusion(teacher.model(), &val, exp.data.inference, device)?.miou();
    eprintln!("    {label}: mIoU {miou:.2}");
    Ok((teacher, RowResult::new(&label, "mIoU", vec![miou], t.paper)))
}

/// Builds a segmentation net under `p`.
pub(super) fn build_net(cfg: &SegNetConfig, p: &nn::Path<'_>) -> kd_core::Result<Box<dyn Model>> {
    Ok(Box::new(segmodels::build(p, cfg)?))
}

/// Trains (or, with `resume`, reloads) one row's student of one seed into `dir`.
#[allow(clippy::too_many_arguments)]
fn train_row(
    exp: &SegExperiment,
    row: &SegRow,
    data: &SegRunData,
    teacher: &Teacher,
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
    let job = Job {
        train: &student.train,
        seed,
        device,
        teacher: Some(teacher.model()),
        teacher_cache: None,
        train_data: &train,
        test_data: &val,
        resume,
        label: &row.label,
        evaluator: None,
        init: None,
    };
    train_job_into(
        &job,
        |p| build_net(&student.net, p),
        |aux, s| seg_distiller(&row.method, aux, s, teacher.model()),
        dir,
        WEIGHTS,
    )
}

/// The distiller of a row.
fn seg_distiller(
    method: &SegMethod,
    aux: &nn::Path<'_>,
    student: &dyn Model,
    teacher: &dyn Model,
) -> Result<Box<dyn Distiller>> {
    Ok(match method {
        SegMethod::None { aux_weight } => Box::new(SegSupervised {
            aux_weight: *aux_weight,
            ..SegSupervised::default()
        }),
        SegMethod::Cwd {
            tau,
            weight,
            aux_weight,
        } => Box::new(Cwd::new(
            CwdConfig {
                tau: *tau,
                weight: *weight,
            },
            SegSupervised {
                aux_weight: *aux_weight,
                ..SegSupervised::default()
            },
        )?),
        SegMethod::Gdd(cfg) => Box::new(Gdd::for_models(aux, cfg.clone(), student, teacher)?),
    })
}

/// mIoU (%) and per-class IoU (fractions) of a trained row on the validation set, with the
/// table's inference mode; computed once and kept in its folder.
fn final_iou(
    exp: &SegExperiment,
    row: &SegRow,
    data: &SegRunData,
    dir: &Path,
    device: Device,
) -> Result<(f64, Vec<Option<f64>>)> {
    let path = dir.join(IOU_FILE);
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(v) = serde_json::from_slice(&bytes) {
            return Ok(v);
        }
    }
    let student = exp.student(&row.student)?;
    let net = Teacher::load_built(|p| build_net(&student.net, p), &dir.join(WEIGHTS), device)?;
    let val = val_loader(&data.val)?;
    let cm = confusion(net.model(), &val, exp.data.inference, device)?;
    let result = (cm.miou(), cm.iou());
    kd_core::train::checkpoint::write_atomic(&path, serde_json::to_string(&result)?.as_bytes())?;
    Ok(result)
}

/// The confusion matrix of `net` over every batch of `loader` (eval mode, no gradients).
pub fn confusion(
    net: &dyn Model,
    loader: &dyn BatchSource,
    inference: Inference,
    device: Device,
) -> Result<ConfusionMatrix> {
    let mut cm = ConfusionMatrix::new(net.num_classes() as usize, 255);
    for batch in loader.batches(0, None, false) {
        let batch = batch?;
        let x = batch.x.to_device(device);
        let pred = inference.logits(net, &x)?.argmax(1, false);
        cm.update(&pred, &batch.y.to_device(device))?;
    }
    Ok(cm)
}

/// Mean over seeds of each class's IoU (in %), by class name; classes no seed could score are null.
fn class_means(per_seed: &[Vec<Option<f64>>]) -> serde_json::Value {
    let names = segdata::CLASS_NAMES;
    let mut out = serde_json::Map::new();
    for (c, name) in names.iter().enumerate() {
        let vals: Vec<f64> = per_seed
            .iter()
            .filter_map(|v| v.get(c).copied().flatten())
            .collect();
        let v = (!vals.is_empty()).then(|| 100.0 * vals.iter().sum::<f64>() / vals.len() as f64);
        out.insert((*name).to_string(), serde_json::json!(v));
    }
    serde_json::Value::Object(out)
}
