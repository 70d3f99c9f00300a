//! The segmentation task (GDD on Cityscapes): a Cityscapes-format tree (the real one with
//! `--data`, else a generated stand-in written in that very format), PSPNet/DeepLabV3 nets,
//! mIoU with the table's inference mode, and the prediction picture.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use kd_core::data::BatchSource;
use kd_core::distill::{Distiller, TaskLoss};
use kd_core::models::Model;
use kd_core::train::TrainReport;
use kd_seg::data::{self as segdata, seg_loader, InMemorySeg, SegLoader, SegResize, SegSource};
use kd_seg::models::{self as segmodels, Inference, SegNetConfig};
use kd_seg::MeanIou;
use tch::{nn, Device};

use crate::cache;
use crate::table::{dense_data_key, Header, Plan, RowPlan, RunArgs, Scored, Task, TrainOn};

mod experiment;
mod picture;

#[cfg(test)]
pub use experiment::plan;
pub use experiment::SegExperiment;

/// Per-class IoU of the final evaluation, inside a row's seed folder.
const IOU_FILE: &str = "per_class_iou.json";

/// A segmentation table's opened data.
pub struct Segmentation {
    head: Header<SegExperiment>,
    train: Arc<dyn SegSource>,
    val: Arc<dyn SegSource>,
    /// Identifies the training data for the teacher cache.
    fingerprint: String,
}

impl Segmentation {
    /// The validation loader: every image once, at its size, normalised, one per batch (sizes
    /// may differ). It draws nothing at random, so its seed does not matter.
    fn val_loader(&self) -> Result<SegLoader> {
        Ok(seg_loader(self.val.clone(), 1, None, false, 0)?)
    }

    /// The final protocol: the table's inference mode over the validation set.
    fn final_eval(&self) -> MeanIou {
        MeanIou {
            inference: self.head.exp.data.inference,
        }
    }
}

impl Task for Segmentation {
    type Exp = SegExperiment;
    type Net = SegNetConfig;
    type Eval<'a> = MeanIou;

    const METRIC: &'static str = "mIoU";
    const CURVES: &'static str = "miou.png";

    fn plan(exp: &SegExperiment, _args: &RunArgs) -> Result<Plan<SegNetConfig>> {
        experiment::plan(exp)
    }

    fn open(exp: SegExperiment, _plan: &Plan<SegNetConfig>, args: &RunArgs) -> Result<Self> {
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
                // Locked: the ranks of a data-parallel run (or two runs) generate it once.
                let _lock = cache::lock_entry(&dir)?;
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
        exp.data
            .augment
            .check_crop((0..train.len()).filter_map(|i| train.size(i)))
            .with_context(|| format!("[data] augment.crop against the images of {}", train.name()))?;
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
        let sizes = format!("{} train / {} val images", train.len(), val.len());
        Ok(Self {
            head: Header { exp, label, sizes },
            train,
            val,
            fingerprint: format!("{fingerprint}@{scale}"),
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

    fn build_net(&self, net: &SegNetConfig, p: &nn::Path<'_>) -> kd_core::Result<Box<dyn Model>> {
        Ok(Box::new(segmodels::build(p, net)?))
    }

    fn loaders(
        &self,
        batch: usize,
        seed: u64,
        _on: TrainOn,
    ) -> Result<(Box<dyn BatchSource>, Box<dyn BatchSource>)> {
        Ok((
            Box::new(seg_loader(
                self.train.clone(),
                batch,
                Some(self.head.exp.data.augment.clone()),
                true,
                seed,
            )?),
            Box::new(self.val_loader()?),
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
        let [h, w] = self.head.exp.data.augment.crop;
        [3, h as i64, w as i64]
    }

    fn evaluator(&self) -> Result<MeanIou> {
        // Per-epoch curves always use whole images (see `per_epoch_protocol`).
        Ok(MeanIou::default())
    }

    /// Training evaluates whole images over the validation set; the final protocol is the
    /// table's inference mode over the same set from the exported weights, the same numbers
    /// when that mode is whole-image.
    fn per_epoch_protocol(&self) -> Option<String> {
        match self.head.exp.data.inference {
            Inference::Whole => None,
            Inference::Slide { crop, stride } => Some(format!(
                "whole-image inference (the final number slides {}×{} windows every {}×{} pixels)",
                crop[0], crop[1], stride[0], stride[1]
            )),
        }
    }

    fn supervised(&self) -> Result<Box<dyn Distiller>> {
        Ok(Box::new(self.head.exp.loss.clone()))
    }

    fn task_loss(&self) -> Result<Box<dyn TaskLoss>> {
        Ok(Box::new(self.head.exp.loss.clone()))
    }

    fn cache_source(&self, _on: TrainOn) -> Result<Option<(Box<dyn BatchSource>, usize)>> {
        // Random rescale, crop and flip: a sample's input changes every epoch.
        Ok(None)
    }

    fn pretrained_prefix(&self) -> &'static str {
        "backbone."
    }

    fn score(&self, net: &dyn Model, device: Device) -> Result<Scored> {
        let cm = self
            .final_eval()
            .confusion(net, None, &self.val_loader()?, device)?;
        Ok(Scored {
            value: cm.miou(),
            extra: serde_json::Value::Null,
        })
    }

    /// mIoU (%) and per-class IoU (fractions) of the exported weights with the table's
    /// inference mode; computed once and kept in the seed folder, so `--resume` re-evaluates
    /// nothing.
    fn score_row(
        &self,
        dir: &Path,
        student: &SegNetConfig,
        _report: &TrainReport,
        _eval: &MeanIou,
        device: Device,
    ) -> Result<Scored> {
        let path = dir.join(IOU_FILE);
        let kept: Option<(f64, Vec<Option<f64>>)> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let (miou, iou) = match kept {
            Some(v) => v,
            None => {
                let weights = dir.join(crate::table::WEIGHTS);
                let net =
                    kd_core::distill::Teacher::load_built(|p| self.build_net(student, p), &weights, device)?;
                let cm = self
                    .final_eval()
                    .confusion(net.model(), None, &self.val_loader()?, device)?;
                let result = (cm.miou(), cm.iou());
                kd_core::io::write_atomic(&path, serde_json::to_string(&result)?.as_bytes())?;
                result
            }
        };
        Ok(Scored {
            value: miou,
            extra: serde_json::json!(iou),
        })
    }

    /// The mean over seeds of each class's IoU (in %), by class name; classes no seed could
    /// score are null.
    fn row_extra(
        &self,
        _row: &RowPlan,
        scored: &[Scored],
        _reports: &[TrainReport],
        extra: &mut serde_json::Value,
    ) {
        let per_seed: Vec<Vec<Option<f64>>> = scored
            .iter()
            .map(|s| serde_json::from_value(s.extra.clone()).unwrap_or_default())
            .collect();
        let mut out = serde_json::Map::new();
        for (c, name) in segdata::CLASS_NAMES.iter().enumerate() {
            let vals: Vec<f64> = per_seed
                .iter()
                .filter_map(|v| v.get(c).copied().flatten())
                .collect();
            let v = (!vals.is_empty()).then(|| 100.0 * vals.iter().sum::<f64>() / vals.len() as f64);
            out.insert((*name).to_string(), serde_json::json!(v));
        }
        if extra.is_null() {
            *extra = serde_json::json!({});
        }
        extra["per_class_iou"] = serde_json::Value::Object(out);
    }

    fn pictures(
        &self,
        plan: &Plan<SegNetConfig>,
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
