//! The ImageNet task: an ImageFolder root (`train/`, `val/`; the real ImageNet with `--data`,
//! else a generated tree in the same layout), torchvision's training and evaluation
//! transforms on the files, zoo classifiers, top-1.
//!
//! Unlike the CIFAR tables, nothing is held in memory: every sample is decoded from its file
//! when drawn, and the random crop makes every epoch's inputs new, so there is no teacher
//! output cache.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kd_classify::baselines::NoKd;
use kd_classify::data::{
    folder_loader, generate_image_folder, index_image_folder, FolderIndex, FolderSamples, FolderTransform,
    FOLDER_SYNTH_VERSION,
};
use kd_classify::metrics::Top1;
use kd_core::data::BatchSource;
use kd_core::distill::{Distiller, TaskLoss};
use kd_core::models::{Model, ModelSpec};
use kd_core::train::{Evaluator, TrainReport};
use tch::{nn, Device};

use crate::cache;
use crate::table::{dense_data_key, Header, Plan, RunArgs, Scored, Task, TrainOn};

mod experiment;

pub use experiment::{ImageNetExperiment, ZooNet};

/// Images per evaluation batch.
const EVAL_BATCH: usize = 100;

/// An ImageNet table's opened data.
pub struct ImageNet {
    head: Header<ImageNetExperiment>,
    train: FolderIndex,
    val: FolderIndex,
    transform: FolderTransform,
    fingerprint: String,
}

/// Keeps the first `n` files of every class, round-robin, up to `n` in all.
fn balanced_prefix(index: FolderIndex, n: usize) -> FolderIndex {
    let k = index.classes.len();
    let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &l) in index.labels.iter().enumerate() {
        per_class[l as usize].push(i);
    }
    let mut keep = Vec::with_capacity(n);
    let mut round = 0;
    while keep.len() < n && per_class.iter().any(|c| c.len() > round) {
        for c in &per_class {
            if keep.len() < n {
                if let Some(&i) = c.get(round) {
                    keep.push(i);
                }
            }
        }
        round += 1;
    }
    keep.sort_unstable();
    FolderIndex {
        files: keep.iter().map(|&i| index.files[i].clone()).collect(),
        labels: keep.iter().map(|&i| index.labels[i]).collect(),
        classes: index.classes,
    }
}

impl ImageNet {
    fn samples(&self, index: &FolderIndex, split: &str, train: bool) -> Result<FolderSamples> {
        Ok(FolderSamples::new(split, index.clone(), self.transform, train)?)
    }

    fn spec(&self) -> ModelSpec {
        ModelSpec {
            in_channels: 3,
            num_classes: self.train.classes.len() as i64,
        }
    }
}

impl Task for ImageNet {
    type Exp = ImageNetExperiment;
    type Net = ZooNet;
    type Eval<'a> = Top1;

    const METRIC: &'static str = "top1";
    const CURVES: &'static str = "accuracy.png";

    fn plan(exp: &ImageNetExperiment, _args: &RunArgs) -> Result<Plan<ZooNet>> {
        experiment::plan(exp)
    }

    fn open(exp: ImageNetExperiment, _plan: &Plan<ZooNet>, args: &RunArgs) -> Result<Self> {
        let (root, mut label) = match &args.data {
            Some(d) => (d.clone(), format!("ImageFolder at {}", d.display())),
            None => {
                let cfg = &exp.data.synth;
                let key = cache::key(&[&toml::to_string(cfg)?, &FOLDER_SYNTH_VERSION.to_string()]);
                let dir = cache::user_cache().join("imagefolder-synth").join(&key);
                if generate_image_folder(&dir, cfg)? {
                    say!("    generated the stand-in ImageFolder tree at {}", dir.display());
                }
                (
                    dir,
                    format!(
                        "generated ImageFolder tree ({} classes of drawn objects)",
                        cfg.classes
                    ),
                )
            }
        };
        if let (None, Some(p)) = (&args.data, &exp.paper_dataset) {
            label.push_str(&format!(" — not {p}"));
        }
        let train = index_image_folder(&root.join("train"))
            .with_context(|| format!("{}: the training split", root.display()))?;
        let val = index_image_folder(&root.join("val"))
            .with_context(|| format!("{}: the validation split", root.display()))?;
        if train.classes != val.classes {
            bail!(
                "{}: train/ has {} classes and val/ has {}; they must list the same class folders",
                root.display(),
                train.classes.len(),
                val.classes.len()
            );
        }
        let train = match exp.data.train_subset {
            Some(n) if n < train.files.len() => {
                label.push_str(&format!(", {n} training images"));
                balanced_prefix(train, n)
            }
            _ => train,
        };
        let [lo, hi] = exp.data.crop_scale;
        let transform = FolderTransform {
            scale: (lo, hi),
            ..FolderTransform::imagenet(exp.data.size)
        };
        label.push_str(&format!(
            ", input {}×{} (crop area {lo}–{hi}; eval: resize {}, centre crop)",
            transform.size, transform.size, transform.eval_resize
        ));
        let sizes = format!(
            "{} train / {} val images, {} classes",
            train.files.len(),
            val.files.len(),
            train.classes.len()
        );
        let fingerprint = {
            let names: Vec<String> = train
                .files
                .iter()
                .map(|p| p.strip_prefix(&root).unwrap_or(p).display().to_string())
                .collect();
            cache::key(&[
                &root.canonicalize().unwrap_or(root.clone()).display().to_string(),
                &names.join("\n"),
            ])
        };
        Ok(Self {
            head: Header { exp, label, sizes },
            train,
            val,
            transform,
            fingerprint,
        })
    }

    fn header(&self) -> &Header<ImageNetExperiment> {
        &self.head
    }

    fn data_key(&self) -> Result<String> {
        // The data section fixes the transform (input size) and the training subset.
        dense_data_key(&self.head.exp.data, &self.head.exp.loss, &self.fingerprint)
    }

    fn build_net(&self, net: &ZooNet, p: &nn::Path<'_>) -> kd_core::Result<Box<dyn Model>> {
        kd_classify::models::build(&net.arch, p, self.spec())
    }

    fn loaders(
        &self,
        batch: usize,
        seed: u64,
        _on: TrainOn,
    ) -> Result<(Box<dyn BatchSource>, Box<dyn BatchSource>)> {
        Ok((
            Box::new(folder_loader(
                self.samples(&self.train, "train", true)?,
                batch,
                false,
                seed,
            )?),
            Box::new(folder_loader(
                self.samples(&self.val, "val", false)?,
                EVAL_BATCH,
                false,
                seed,
            )?),
        ))
    }

    fn train_len(&self, _on: TrainOn) -> usize {
        self.train.files.len()
    }

    fn test_len(&self) -> usize {
        self.val.files.len()
    }

    fn train_input(&self, _on: TrainOn) -> [i64; 3] {
        let s = self.transform.size as i64;
        [3, s, s]
    }

    fn evaluator(&self) -> Result<Top1> {
        Ok(Top1)
    }

    fn supervised(&self) -> Result<Box<dyn Distiller>> {
        Ok(Box::new(NoKd))
    }

    fn task_loss(&self) -> Result<Box<dyn TaskLoss>> {
        Ok(Box::new(NoKd))
    }

    fn cache_source(&self, _on: TrainOn) -> Result<Option<(Box<dyn BatchSource>, usize)>> {
        // RandomResizedCrop and flip: a sample's input changes every epoch.
        Ok(None)
    }

    fn score(&self, net: &dyn Model, device: Device) -> Result<Scored> {
        let val = folder_loader(self.samples(&self.val, "val", false)?, EVAL_BATCH, false, 0)?;
        Ok(Scored {
            value: Top1.evaluate(net, &NoKd, &val, device)?,
            extra: serde_json::Value::Null,
        })
    }

    /// The top-1 of the trainer's evaluation after the last epoch: the final protocol
    /// (resize and centre crop of the whole validation set) is the one every epoch is
    /// evaluated with.
    fn score_row(
        &self,
        _dir: &Path,
        _net: &ZooNet,
        report: &TrainReport,
        _eval: &Top1,
        _device: Device,
    ) -> Result<Scored> {
        Ok(Scored {
            value: report.final_metric,
            extra: serde_json::Value::Null,
        })
    }

    fn pictures(
        &self,
        _plan: &Plan<ZooNet>,
        _out: &Path,
        _reports: &[Vec<TrainReport>],
        _device: Device,
    ) -> Result<()> {
        Ok(())
    }
}
