//! The detection task (GDD on COCO-format data): a COCO tree (`--data`, or generated scenes
//! written as COCO JSON + PNG), detectors of one family ([`DetArch`]: FCOS for `coco`, Faster
//! R-CNN for `coco-frcnn`), COCO box AP, and the detections picture.
//!
//! A row may start its student from the teacher's neck and head (`init_student`, as the
//! released RepPoints, SOLO and SparseInst configs do). With `flip_prob = 0` and `pad_to`, every
//! training input has one shape and never changes, so the teacher's outputs are computed once
//! for all rows and seeds.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use kd_core::data::BatchSource;
use kd_core::distill::{Distiller, TaskLoss, Teacher};
use kd_core::models::Model;
use kd_core::train::{InitFn, TrainReport, STUDENT_PREFIX};
use kd_det::data::{self as detdata, det_loader, CocoDataset, DetLoader, DetSource, InMemoryDet};
use kd_det::metrics::{self as eval, BoxAp, CocoDetection, CocoGt, CocoStats};
use kd_det::models as detmodels;
use tch::{nn, Device};

use crate::cache;
use crate::table::{
    dense_data_key, Header, NetClasses, Plan, RowPlan, RunArgs, Scored, Task, TrainOn, WEIGHTS,
};

mod arch;
mod experiment;
mod picture;

pub use arch::{DetArch, FasterRcnn, Fcos};
#[cfg(test)]
pub use experiment::plan;
pub use experiment::DetExperiment;

/// The final COCO statistics of a row's seed, inside its folder.
const STATS_FILE: &str = "coco_stats.json";
/// The row's validation detections in the COCO results format, inside its seed folder.
const DETECTIONS_FILE: &str = "detections.json";

/// A detection table's opened data, for detector family `A`.
pub struct Detection<A: DetArch = Fcos> {
    head: Header<DetExperiment<A>>,
    train: Arc<dyn DetSource>,
    val: Arc<dyn DetSource>,
    /// The validation ground truth, read by the evaluator from the very annotation file.
    gt: CocoGt,
    /// Every validation image once in dataset order, resized and normalised as in training,
    /// never flipped.
    val_loader: DetLoader,
    /// The training images through the evaluation transform with their annotations, read when
    /// a recipe stops early on a split held out of them.
    held: Option<(DetLoader, CocoGt)>,
    /// Identifies the training data for the teacher cache.
    fingerprint: String,
}

/// An image source over `coco`, decoded once into memory when `in_memory`.
fn source(coco: CocoDataset, in_memory: bool) -> Result<Arc<dyn DetSource>> {
    Ok(if in_memory {
        Arc::new(InMemoryDet::load(coco)?)
    } else {
        Arc::new(coco)
    })
}

/// Writes a row's final statistics and its detections (COCO results format) into `dir`.
fn save_stats(dir: &Path, stats: &CocoStats, dets: &[CocoDetection]) -> Result<()> {
    eval::write_detections(&dir.join(DETECTIONS_FILE), dets)?;
    kd_core::io::write_atomic(
        &dir.join(STATS_FILE),
        serde_json::to_string_pretty(stats)?.as_bytes(),
    )?;
    Ok(())
}

impl<A: DetArch> Task for Detection<A> {
    type Exp = DetExperiment<A>;
    type Net = A::Net;
    type Eval<'a> = BoxAp<'a>;

    const METRIC: &'static str = "box AP";
    const CURVES: &'static str = "box_ap.png";

    fn plan(exp: &DetExperiment<A>, _args: &RunArgs) -> Result<Plan<A::Net>> {
        experiment::plan::<A>(exp)
    }

    fn open(exp: DetExperiment<A>, plan: &Plan<A::Net>, args: &RunArgs) -> Result<Self> {
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
                // Locked: the ranks of a data-parallel run (or two runs) generate it once.
                let _lock = cache::lock_entry(&dir)?;
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
        let nets = plan
            .teachers
            .iter()
            .map(|t| (t.name.as_str(), &t.net))
            .chain(plan.students.iter().map(|s| (s.name.as_str(), &s.net)));
        for (name, net) in nets {
            if net.num_classes() != k {
                bail!(
                    "{name}: the detector predicts {} classes but {} has {k} categories; set num_classes = {k}{}",
                    net.num_classes(),
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
        let stops_early = plan
            .teachers
            .iter()
            .map(|t| &t.train)
            .chain(plan.students.iter().map(|s| &s.train))
            .any(|t| t.early_stop.is_some());
        let train_gt = if stops_early {
            Some(CocoGt::from_file(train.ann_file())?)
        } else {
            None
        };
        let (train, val) = (
            source(train, exp.data.in_memory)?,
            source(val, exp.data.in_memory)?,
        );
        let val_loader = det_loader(
            val.clone(),
            exp.data.eval_batch,
            exp.data.augment.clone(),
            false,
            0,
        )?;
        let held = match train_gt {
            Some(gt) => Some((
                det_loader(
                    train.clone(),
                    exp.data.eval_batch,
                    exp.data.augment.clone(),
                    false,
                    0,
                )?,
                gt,
            )),
            None => None,
        };
        let sizes = format!("{} train / {} val images", train.len(), val.len());
        Ok(Self {
            head: Header { exp, label, sizes },
            train,
            val,
            gt,
            val_loader,
            held,
            fingerprint,
        })
    }

    fn header(&self) -> &Header<Self::Exp> {
        &self.head
    }

    fn data_key(&self) -> Result<String> {
        dense_data_key(
            &self.head.exp.data.augment,
            &self.head.exp.loss,
            &self.fingerprint,
        )
    }

    fn build_net(&self, net: &A::Net, p: &nn::Path<'_>) -> kd_core::Result<Box<dyn Model>> {
        A::build(net, p)
    }

    fn loaders(
        &self,
        batch: usize,
        seed: u64,
        _on: TrainOn,
    ) -> Result<(Box<dyn BatchSource>, Box<dyn BatchSource>)> {
        Ok((
            Box::new(det_loader(
                self.train.clone(),
                batch,
                self.head.exp.data.augment.clone(),
                true,
                seed,
            )?),
            Box::new(self.val_loader.clone()),
        ))
    }

    fn train_len(&self, _on: TrainOn) -> usize {
        self.train.len()
    }

    fn split_name(&self, on: Option<TrainOn>) -> String {
        match on {
            Some(_) => self.train.name(),
            None => self.val.name(),
        }
    }

    fn test_len(&self) -> usize {
        self.val.len()
    }

    fn train_input(&self, _on: TrainOn) -> [i64; 3] {
        let aug = &self.head.exp.data.augment;
        // Landscape at the longest side by the shortest, padded to the divisor (a portrait
        // image has the same area).
        let [w, h] = aug.pad_to.unwrap_or_else(|| {
            let up = |v: usize| v.div_ceil(aug.size_divisor.max(1)) * aug.size_divisor.max(1);
            [up(aug.img_scale[0]), up(aug.img_scale[1])]
        });
        [3, h as i64, w as i64]
    }

    fn evaluator(&self) -> Result<BoxAp<'_>> {
        let ap = BoxAp::new(&self.val_loader, &self.gt, self.head.exp.data.postprocess.clone());
        Ok(match &self.held {
            Some((loader, gt)) => ap.with_training_set(loader, gt),
            None => ap,
        })
    }

    fn supervised(&self) -> Result<Box<dyn Distiller>> {
        Ok(A::supervised(&self.head.exp.loss)?)
    }

    fn task_loss(&self) -> Result<Box<dyn TaskLoss>> {
        Ok(A::task_loss(&self.head.exp.loss)?)
    }

    /// The training images when inputs are deterministic (no flip, and `pad_to` gives every
    /// input one shape), in batches of `eval_batch`.
    fn cache_source(&self, _on: TrainOn) -> Result<Option<(Box<dyn BatchSource>, usize)>> {
        let aug = &self.head.exp.data.augment;
        if aug.flip_prob > 0.0 || aug.pad_to.is_none() {
            return Ok(None);
        }
        let batch = self.head.exp.data.eval_batch;
        let loader = det_loader(self.train.clone(), batch, aug.clone(), false, 0)?;
        Ok(Some((Box::new(loader), batch)))
    }

    fn init<'a>(&'a self, row: &'a RowPlan, teacher: &'a Teacher) -> Result<Option<Box<InitFn<'a>>>> {
        if !row.init_student {
            return Ok(None);
        }
        Ok(Some(Box::new(move |vs: &nn::VarStore| {
            let n = detmodels::copy_neck_and_head(teacher.var_store(), "", vs, STUDENT_PREFIX)?;
            tracing::info!("{}: copied {n} neck and head tensors from the teacher", row.label);
            Ok(())
        })))
    }

    fn pretrained_prefix(&self) -> &'static str {
        "backbone."
    }

    /// Box AP of a detector that has learnt nothing is ~0 whatever the class count.
    fn chance(&self, _net: &dyn Model) -> f64 {
        0.5
    }

    fn score(&self, net: &dyn Model, device: Device) -> Result<Scored> {
        let (stats, _) = eval::evaluate(
            net,
            &self.val_loader,
            &self.gt,
            &self.head.exp.data.postprocess,
            device,
        )?;
        Ok(Scored {
            value: 100.0 * stats.ap,
            extra: serde_json::json!({ "coco_stats": stats }),
        })
    }

    /// The COCO statistics of a finished row: the evaluator's evaluation after the last epoch
    /// when it trained now, else the kept file, else computed from the exported weights; the
    /// detections are written in the COCO results format beside them.
    fn score_row(
        &self,
        dir: &Path,
        student: &A::Net,
        _report: &TrainReport,
        ap: &BoxAp<'_>,
        device: Device,
    ) -> Result<Scored> {
        let path = dir.join(STATS_FILE);
        let stats = if let Some((stats, dets)) = ap.take_last() {
            save_stats(dir, &stats, &dets)?;
            stats
        } else if let Some(s) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<CocoStats>(&b).ok())
        {
            s
        } else {
            let net = Teacher::load_built(|p| self.build_net(student, p), &dir.join(WEIGHTS), device)?;
            let (stats, dets) = eval::evaluate(
                net.model(),
                &self.val_loader,
                &self.gt,
                &self.head.exp.data.postprocess,
                device,
            )?;
            save_stats(dir, &stats, &dets)?;
            stats
        };
        say!(
            "      AP50 {:.2}, AP75 {:.2}",
            100.0 * stats.ap50,
            100.0 * stats.ap75
        );
        Ok(Scored {
            value: 100.0 * stats.ap,
            extra: serde_json::to_value(&stats)?,
        })
    }

    fn row_extra(
        &self,
        _row: &RowPlan,
        scored: &[Scored],
        _reports: &[TrainReport],
        extra: &mut serde_json::Value,
    ) {
        let stats: Vec<CocoStats> = scored
            .iter()
            .filter_map(|s| serde_json::from_value(s.extra.clone()).ok())
            .collect();
        if extra.is_null() {
            *extra = serde_json::json!({});
        }
        extra["coco_stats_per_seed"] = serde_json::to_value(&stats).unwrap_or_default();
        extra["coco_stats_mean"] = eval::mean_stats(&stats);
    }

    fn pictures(
        &self,
        plan: &Plan<A::Net>,
        out: &Path,
        _reports: &[Vec<TrainReport>],
        device: Device,
    ) -> Result<()> {
        if let Some(p) = &self.head.exp.picture {
            let png = out.join(&p.file);
            let drawn = picture::draw(self, plan, p, out, device, &png);
            crate::plot::warn_if_not_drawn(&png, drawn);
        }
        Ok(())
    }
}
