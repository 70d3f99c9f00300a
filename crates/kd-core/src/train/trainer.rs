//! The training loop.
//!
//! One loop serves every method: the distiller supplies the loss terms, optionally restricts
//! each epoch to a subset, and the trainer handles everything else — learning-rate schedule,
//! teacher forward under `no_grad`, the NaN guard, evaluation, checkpoints and resume.
//!
//! Determinism: batches are drawn from generators derived from (seed, epoch), and libtorch's
//! own generator is re-seeded from (seed, epoch) at every epoch start. Checkpoints are taken at
//! epoch boundaries, so a resumed run replays exactly what an uninterrupted run would do.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::budget::EarlyStop;
use super::evaluator::Evaluator;
use super::optim::{Optimizer, OptimizerConfig};
use super::schedule::LrSchedule;
use crate::data::{Batch, BatchSource, Target};
use crate::dist;
use crate::distill::sorted_vars;
use crate::distill::TeacherCache;
use crate::distill::{Distiller, EpochCtx, EpochPlan, Progress, StepCtx};
use crate::io::checkpoint;
use crate::models::{with_norm, Model, NormMode, SyncBnFailed};
use crate::{KdError, Result};

/// Settings of one training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Number of epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Optimiser.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    pub lr: LrSchedule,
    /// Evaluate every this many epochs (and always after the last).
    #[serde(default = "one")]
    pub eval_every: usize,
    /// Clip the global gradient L2 norm to this value. A distiller may ask for a tighter bound
    /// ([`Distiller::max_grad_norm`]); the smaller one applies.
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Stop each epoch after this many steps (for smoke runs of paper-scale configs).
    #[serde(default)]
    pub max_steps_per_epoch: Option<usize>,
    /// The statistics of the networks' BatchNorm layers in training steps: `per_rank` (each
    /// process's part of the batch, the default), `sync` (the whole global batch across the
    /// processes, MMSeg's and MMDet's `SyncBN`) or `frozen` (the running statistics). With one
    /// process `per_rank` and `sync` are the same.
    #[serde(default, skip_serializing_if = "NormMode::is_default")]
    pub norm: NormMode,
    /// How the original recipe spread `batch_size` over its GPUs, e.g. MMSeg's Cityscapes
    /// schedule `4 × 2`: what the paper ran, for the reader and the launcher's note. The
    /// global batch stays `batch_size` whatever the number of processes here; the layout
    /// changes no number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<BatchLayout>,
    /// A floor in optimiser updates: on data too small for `epochs` to give this many, the run
    /// takes more epochs ([`TrainConfig::resolved`]), so a recipe tuned on one dataset size
    /// still trains on a smaller one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_updates: Option<usize>,
    /// Stop when the metric on a split held out of the training set stops improving, and keep
    /// the best epoch's weights; the epochs are then a ceiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStop>,
}

/// A recipe's batch as its paper ran it: `gpus` processes of `per_gpu` samples each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLayout {
    /// Processes (GPUs) of the original run.
    pub gpus: usize,
    /// Samples per process per step.
    pub per_gpu: usize,
}

fn one() -> usize {
    1
}

/// The best evaluated epoch of a training history as `(epoch, metric)`, the epoch 1-based (as
/// in `epochs.jsonl`): the highest `test_metric` among the epochs that have one (the trainer
/// evaluates every `eval_every` epochs and after the last), the earliest on a tie, a NaN never
/// (as `f64::max` ignores it); `None` when no epoch was evaluated. Every metric is
/// higher-is-better ([`crate::train::Evaluator`]). [`TrainReport::best_metric`] is its value.
pub fn best_epoch(history: &[EpochRecord]) -> Option<(usize, f64)> {
    history
        .iter()
        .filter_map(|r| r.test_metric.map(|m| (r.epoch + 1, m)))
        .filter(|(_, m)| !m.is_nan())
        .fold(None, |best, (e, m)| match best {
            Some((_, b)) if b >= m => best,
            _ => Some((e, m)),
        })
}

/// What happened in one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch, 0-based.
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean total training loss.
    pub loss: f64,
    /// Mean of each loss term.
    pub terms: BTreeMap<String, f64>,
    /// Top-1 training accuracy in %, on the labelled samples (or pixels) seen; 0 for targets
    /// without a top-1 (boxes).
    pub train_acc: f64,
    /// The test metric ([`TrainReport::metric`]), when evaluated.
    #[serde(alias = "test_acc")]
    pub test_metric: Option<f64>,
    /// The same metric on the split held out of the training set, when the recipe stops early
    /// ([`TrainConfig::early_stop`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_metric: Option<f64>,
    /// Number of samples the epoch visited.
    pub samples: usize,
    /// Optimiser updates taken (batches whose update was skipped do not count).
    #[serde(default)]
    pub updates: usize,
    /// Batches whose update the distiller skipped ([`crate::distill::LossTerms::skip_update`]):
    /// no optimiser step was taken, but the learning-rate schedule advanced.
    #[serde(default)]
    pub skipped: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The outcome of [`Trainer::fit`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainReport {
    /// The test metric's name ([`Evaluator::name`]), e.g. `"top1"`, `"mIoU"`, `"box AP"`.
    #[serde(default)]
    pub metric: String,
    /// One record per epoch, including those replayed from a checkpoint.
    pub history: Vec<EpochRecord>,
    /// The test metric after the last epoch.
    #[serde(alias = "final_acc")]
    pub final_metric: f64,
    /// The best test metric seen at any evaluation.
    #[serde(alias = "best_acc")]
    pub best_metric: f64,
    /// The distiller's own report.
    pub distiller: serde_json::Value,
    /// With early stopping, the epoch (1-based) whose weights were kept: the best on the
    /// held-out split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_epoch: Option<usize>,
}

impl TrainReport {
    /// Optimiser updates over the whole run.
    pub fn updates(&self) -> usize {
        self.history.iter().map(|r| r.updates).sum()
    }

    /// Training samples seen over the whole run (a sample seen in two epochs counts twice).
    pub fn samples_seen(&self) -> usize {
        self.history.iter().map(|r| r.samples).sum()
    }
}

/// Trains a student (plus the distiller's auxiliary modules) against an optional teacher.
pub struct Trainer<'a> {
    /// Settings.
    pub cfg: &'a TrainConfig,
    /// Run seed.
    pub seed: u64,
    /// Device of the models.
    pub device: Device,
    /// Store holding the student and the distiller's modules; all its trainable variables are
    /// optimised.
    pub vs: &'a nn::VarStore,
    /// The student.
    pub student: &'a dyn Model,
    /// The frozen teacher.
    pub teacher: Option<&'a dyn Model>,
    /// The teacher's outputs for every training sample, computed once; used instead of the
    /// teacher's forward pass when it serves the training loader (no random augmentation).
    pub teacher_cache: Option<&'a TeacherCache>,
    /// The method.
    pub distiller: &'a mut dyn Distiller,
    /// Training batches.
    pub train: &'a dyn BatchSource,
    /// Test batches.
    pub test: &'a dyn BatchSource,
    /// Checkpoint path, written after every epoch and read by `resume`.
    pub checkpoint: Option<PathBuf>,
    /// Label shown on the progress bar.
    pub label: String,
    /// The test metric.
    pub evaluator: &'a dyn Evaluator,
}

/// Moves a batch to `device`.
pub fn batch_to(batch: Batch, device: Device) -> Batch {
    if device == Device::Cpu {
        return batch;
    }
    Batch {
        x: batch.x.to_device(device),
        target: batch.target.to_device(device),
        index: batch.index.to_device(device),
        ..batch
    }
}

/// The gradient-norm bound of a step: the smaller of the recipe's and the method's, if any.
pub fn effective_clip(recipe: Option<f64>, method: Option<f64>) -> Option<f64> {
    match (recipe, method) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Number of correct top-1 predictions among labelled targets, and that count. `logits` is
/// `[B, K]` with labels `[B]`, or `[B, K, H, W]` with label maps `[B, H, W]`; a target counts
/// when its label is in `0..K` (so −1 for unlabelled samples and 255 for ignored pixels do not).
/// Box targets (a detector's) have no top-1 and count nothing.
pub fn top1_counts(logits: &Tensor, target: &Target) -> (i64, i64) {
    let Some(labels) = target.classes() else {
        return (0, 0);
    };
    if !matches!((logits.dim(), labels.dim()), (2, 1) | (4, 3)) {
        return (0, 0);
    }
    let k = logits.size()[1];
    let mask = labels.ge(0).logical_and(&labels.lt(k));
    let hits = logits.argmax(1, false).eq_tensor(labels).logical_and(&mask);
    (
        hits.sum(Kind::Int64).int64_value(&[]),
        mask.sum(Kind::Int64).int64_value(&[]),
    )
}

impl TrainConfig {
    /// SGD (momentum 0.9, weight decay 5e-4, no Nesterov) at `lr` with a cosine decay to 0, no
    /// warm-up, no clipping, evaluated after every epoch: a plain recipe to adjust field by field.
    pub fn sgd_cosine(epochs: usize, batch_size: usize, lr: f64) -> Self {
        TrainConfig {
            epochs,
            batch_size,
            optimizer: crate::train::OptimizerConfig::Sgd {
                momentum: 0.9,
                weight_decay: 5e-4,
                nesterov: false,
            },
            lr: crate::train::LrSchedule {
                lr,
                warmup_epochs: 0.0,
                warmup_start: 0.1,
                schedule: crate::train::Schedule::Cosine { min_lr: 0.0 },
            },
            eval_every: 1,
            grad_clip: None,
            max_steps_per_epoch: None,
            norm: NormMode::PerRank,
            layout: None,
            min_updates: None,
            early_stop: None,
        }
    }
}

impl Trainer<'_> {
    fn trainable(&self) -> Vec<(String, Tensor)> {
        sorted_vars(self.vs)
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect()
    }

    fn save(&self, opt: &Optimizer, history: &[EpochRecord]) -> Result<()> {
        let Some(path) = &self.checkpoint else {
            return Ok(());
        };
        if !dist::is_writer() {
            return Ok(());
        }
        let mut tensors: Vec<(String, Tensor)> = sorted_vars(self.vs)
            .into_iter()
            .map(|(n, t)| (format!("vars/{n}"), t))
            .collect();
        tensors.extend(opt.state());
        tensors.extend(
            self.distiller
                .state()
                .into_iter()
                .map(|(n, t)| (format!("distiller/{n}"), t)),
        );
        let meta = serde_json::json!({
            "epochs_done": history.len(),
            "seed": self.seed,
            "history": history,
            "method": self.distiller.name(),
        });
        checkpoint::save(path, &tensors, &meta)?;
        self.write_epoch_log(&path.with_file_name(EPOCH_LOG), history)
    }

    /// Writes one JSON line per finished epoch (see [`EPOCH_LOG`]), whole and atomically, so
    /// the file always matches the checkpoint beside it, a resumed run included.
    fn write_epoch_log(&self, path: &std::path::Path, history: &[EpochRecord]) -> Result<()> {
        let metric = self.evaluator.name();
        let mut text = String::new();
        for r in history {
            let line = serde_json::json!({
                "epoch": r.epoch + 1,
                "lr": r.lr,
                "loss": r.loss,
                "terms": r.terms,
                "train_acc": r.train_acc,
                "metric": metric,
                "test": r.test_metric,
                "held_out": r.held_metric,
                "samples": r.samples,
                "updates": r.updates,
                "skipped": r.skipped,
                "seconds": r.seconds,
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        crate::io::write_atomic(path, text.as_bytes())
    }

    /// Loads the checkpoint into the store, optimiser and distiller; returns the history.
    fn restore(&mut self, opt: &mut Optimizer) -> Result<Vec<EpochRecord>> {
        let path = self
            .checkpoint
            .clone()
            .ok_or_else(|| KdError::invalid("--resume needs a checkpoint path"))?;
        // Rank 0 reads the file and every rank gets its bytes: the ranks need not share a disk.
        let ckpt = checkpoint::from_bytes(&path, &dist::read_shared(&path)?)?;
        let vars: Vec<(String, Tensor)> = sorted_vars(self.vs)
            .into_iter()
            .map(|(n, t)| (format!("vars/{n}"), t))
            .collect();
        checkpoint::copy_into(&path, &ckpt, &vars)?;
        opt.load_state(&ckpt.tensors)
            .map_err(|e| KdError::file(&path, e))?;
        let dist: Vec<(String, Tensor)> = ckpt
            .tensors
            .iter()
            .filter_map(|(n, t)| {
                n.strip_prefix("distiller/")
                    .map(|k| (k.to_string(), t.shallow_clone()))
            })
            .collect();
        self.distiller
            .load_state(&dist)
            .map_err(|e| KdError::file(&path, e))?;
        serde_json::from_value(ckpt.meta["history"].clone())
            .map_err(|e| KdError::file(&path, format!("checkpoint metadata has no valid history: {e}")))
    }

    /// Rank 0's variables (parameters and buffers of the student and the method's modules)
    /// and method state on every rank; nothing alone.
    fn broadcast_state(&mut self) -> Result<()> {
        let Some(g) = dist::world() else {
            return Ok(());
        };
        dist::broadcast_vars(&sorted_vars(self.vs))?;
        let (names, mut ts): (Vec<String>, Vec<Tensor>) = self
            .distiller
            .state()
            .into_iter()
            .map(|(n, t)| (n, t.detach().contiguous()))
            .unzip();
        g.broadcast(&mut ts, 0)?;
        let named: Vec<(String, Tensor)> = names.into_iter().zip(ts).collect();
        self.distiller.load_state(&named)
    }

    /// The epoch plan, the variables and the method state of rank 0 on every rank, after
    /// each rank ran the epoch-start hook: selections and pre-fitted modules are then the same
    /// everywhere by construction, not by the hope that each rank computed them alike.
    fn agree_on(&mut self, plan: EpochPlan) -> Result<EpochPlan> {
        if dist::world().is_none() {
            return Ok(plan);
        }
        let encoded: Vec<u8> = match &plan {
            EpochPlan::All => Vec::new(),
            EpochPlan::Subset(v) => std::iter::once(1u8)
                .chain(v.iter().flat_map(|&i| (i as u64).to_le_bytes()))
                .collect(),
        };
        let shared = dist::share_bytes(encoded)?;
        self.broadcast_state()?;
        Ok(match shared.split_first() {
            None => EpochPlan::All,
            Some((_, rest)) => EpochPlan::Subset(
                rest.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()) as usize)
                    .collect(),
            ),
        })
    }

    /// The test metric of the student now.
    fn test_metric(&self) -> Result<f64> {
        self.evaluator
            .evaluate(self.student, &*self.distiller, self.test, self.device)
    }

    /// Runs training; with `resume`, continues from the checkpoint when one exists.
    ///
    /// The recipe runs as [`TrainConfig::resolved`] makes it for the training data (more
    /// epochs when `min_updates` asks for them). With `early_stop`, a seeded split of the
    /// training set is held out and never trained on, the metric on it is taken after every
    /// evaluated epoch, training ends once it stops improving, and the best epoch's weights
    /// (kept beside the checkpoint as [`BEST`], so a resumed run keeps them too) are the
    /// result.
    ///
    /// In a data-parallel group ([`crate::dist::world`]) every rank calls it with the same
    /// recipe and data: rank 0's weights, optimiser state and method state (fresh, or read
    /// from its checkpoint) start every rank, each rank trains on its part of every global
    /// batch, gradients are averaged before each step, and only rank 0 writes the checkpoint.
    pub fn fit(&mut self, resume: bool) -> Result<TrainReport> {
        let split = self.split()?;
        let mut opt = Optimizer::new(self.cfg.optimizer.clone(), self.trainable());
        let mut history = Vec::new();
        let has_ckpt = match &self.checkpoint {
            Some(p) => dist::is_file_shared(p)?,
            None => false,
        };
        if resume && has_ckpt {
            history = self.restore(&mut opt)?;
        } else {
            self.broadcast_state()?;
            // An initial checkpoint, so a NaN in the first epoch still leaves a good one.
            self.save(&opt, &history)?;
        }
        let mut kept = match (&split.stop, resume && has_ckpt) {
            (Some(stop), true) => self.read_best(stop, &history, split.cfg.epochs)?,
            _ => None,
        };
        for epoch in history.len()..split.cfg.epochs {
            if split
                .stop
                .as_ref()
                .is_some_and(|s| s.should_stop(&history, split.cfg.epochs))
            {
                break;
            }
            let skipped: usize = history.iter().map(|r| r.skipped).sum();
            let record = self.run_epoch(&split, epoch, &mut opt, skipped)?;
            history.push(record);
            if let Some(stop) = &split.stop {
                if stop
                    .best(&history, split.cfg.epochs)
                    .is_some_and(|(e, _)| e == epoch)
                {
                    kept = Some((epoch, self.snapshot()));
                    self.save_best(epoch)?;
                }
            }
            self.save(&opt, &history)?;
        }
        let last = history.len().checked_sub(1);
        let kept_epoch = match kept {
            Some((e, vars)) if Some(e) != last => {
                self.load_snapshot(&vars)?;
                Some(e)
            }
            Some((e, _)) => Some(e),
            None => None,
        };
        let final_metric = match kept_epoch.or(last).and_then(|e| history[e].test_metric) {
            Some(a) => a,
            None => self.test_metric()?,
        };
        let best_metric = best_epoch(&history).map_or(final_metric, |(_, b)| b.max(final_metric));
        Ok(TrainReport {
            metric: self.evaluator.name(),
            history,
            final_metric,
            best_metric,
            distiller: self.distiller.report(),
            kept_epoch: kept_epoch.map(|e| e + 1),
        })
    }

    /// The recipe resolved for the training data and, with early stopping, the held-out and
    /// the trained samples.
    fn split(&self) -> Result<Split> {
        let n = self.train.len();
        let cfg = self.cfg.resolved(self.cfg.steps_per_epoch_on(self.train));
        let Some(stop) = self.cfg.early_stop.clone() else {
            return Ok(Split {
                cfg,
                stop: None,
                held: Vec::new(),
                held_eval_batch: 0,
                trained: None,
            });
        };
        if n < 2 {
            return Err(KdError::invalid(format!(
                "{}: early stopping holds samples out of the training set, which has {n}",
                self.train.name()
            )));
        }
        let held = stop.held_indices(n, self.seed);
        let trained: Vec<usize> = (0..n).filter(|i| held.binary_search(i).is_err()).collect();
        // The held-out split is scored in the test set's evaluation batches (its protocol's
        // batch size).
        let held_eval_batch = self.test.epoch_plan(0, None, false)?.first().map_or(1, Vec::len);
        Ok(Split {
            cfg,
            stop: Some(stop),
            held,
            held_eval_batch,
            trained: Some(trained),
        })
    }

    /// Copies of every variable of the store, to restore the best epoch's weights.
    fn snapshot(&self) -> Snapshot {
        sorted_vars(self.vs)
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect()
    }

    fn load_snapshot(&self, vars: &[(String, Tensor)]) -> Result<()> {
        let now: BTreeMap<String, Tensor> = sorted_vars(self.vs).into_iter().collect();
        tch::no_grad(|| {
            for (n, t) in vars {
                let Some(dst) = now.get(n) else {
                    return Err(KdError::invalid(format!(
                        "the kept weights have an unknown variable {n:?}"
                    )));
                };
                dst.shallow_clone().f_copy_(t)?;
            }
            Ok(())
        })
    }

    fn best_path(&self) -> Option<PathBuf> {
        self.checkpoint.as_ref().map(|p| p.with_file_name(BEST))
    }

    /// Writes the store's variables as the best epoch's, beside the checkpoint (rank 0).
    fn save_best(&self, epoch: usize) -> Result<()> {
        let Some(path) = self.best_path() else {
            return Ok(());
        };
        if !dist::is_writer() {
            return Ok(());
        }
        let meta = serde_json::json!({ "epoch": epoch, "seed": self.seed });
        checkpoint::save(&path, &sorted_vars(self.vs), &meta)
    }

    /// The best epoch's weights of a resumed run, from [`BEST`] beside its checkpoint.
    fn read_best(
        &self,
        stop: &EarlyStop,
        history: &[EpochRecord],
        epochs: usize,
    ) -> Result<Option<(usize, Snapshot)>> {
        let Some(epoch) = stop.best(history, epochs).map(|(e, _)| e) else {
            return Ok(None);
        };
        if Some(epoch) == history.len().checked_sub(1) {
            return Ok(Some((epoch, self.snapshot())));
        }
        let path = self
            .best_path()
            .ok_or_else(|| KdError::invalid("early stopping needs a checkpoint path to resume"))?;
        let ckpt = checkpoint::from_bytes(&path, &dist::read_shared(&path)?)?;
        let saved = ckpt.meta["epoch"].as_u64();
        if saved != Some(epoch as u64) {
            return Err(KdError::file(
                &path,
                format!("holds epoch {saved:?}, but the checkpoint's history says the best held-out epoch is {epoch}"),
            ));
        }
        let vars = self.snapshot();
        checkpoint::copy_into(&path, &ckpt, &vars)?;
        Ok(Some((epoch, vars)))
    }

    /// One epoch. `skipped_before` counts the batches of earlier epochs that took no optimiser
    /// step, so that `opt.steps() + skipped_before` is the global batch counter.
    fn run_epoch(
        &mut self,
        split: &Split,
        epoch: usize,
        opt: &mut Optimizer,
        skipped_before: usize,
    ) -> Result<EpochRecord> {
        let cfg = &split.cfg;
        let started = Instant::now();
        crate::rng::seed_torch(crate::rng::derive_u64(self.seed, 0x7e0c, epoch as u64));
        let n_all = split.trained.as_ref().map_or(self.train.len(), Vec::len);
        let spe_all = self.train.steps_per_epoch(n_all);
        let cap = cfg.max_steps_per_epoch.unwrap_or(usize::MAX);
        let global_start = opt.steps() as usize + skipped_before;
        let progress = Progress {
            epoch,
            epochs: cfg.epochs,
            global_step: global_start,
            steps_per_epoch: spe_all,
        };
        let train = self.train;
        let eval_batch = |idx: &[usize]| -> Result<Batch> {
            Ok(batch_to(train.batch_of(idx, epoch, false)?, self.device))
        };
        let aug_batch =
            |idx: &[usize]| -> Result<Batch> { Ok(batch_to(train.batch_of(idx, epoch, true)?, self.device)) };
        let plan = self.distiller.on_epoch_start(&EpochCtx {
            progress,
            train_set: self.train,
            student: self.student,
            teacher: self.teacher,
            device: self.device,
            eval_batch: &eval_batch,
            aug_batch: &aug_batch,
            teacher_cache: self.teacher_cache,
        })?;
        let plan = match (self.agree_on(plan)?, &split.trained) {
            (plan, None) => plan,
            // The held-out samples are never trained on, whatever the method selects.
            (EpochPlan::All, Some(trained)) => EpochPlan::Subset(trained.clone()),
            (EpochPlan::Subset(v), Some(_)) => EpochPlan::Subset(
                v.into_iter()
                    .filter(|i| split.held.binary_search(i).is_err())
                    .collect(),
            ),
        };
        let subset = match &plan {
            EpochPlan::All => None,
            EpochPlan::Subset(v) => Some(v.as_slice()),
        };
        let n = subset.map_or(n_all, |s| s.len());
        let spe = self.train.steps_per_epoch(n).min(cap);
        let bar = if dist::is_writer() {
            progress_bar(spe, &format!("{} {}/{}", self.label, epoch + 1, cfg.epochs))
        } else {
            ProgressBar::hidden()
        };
        let (mut loss_sum, mut term_sums, mut hit, mut seen, mut samples) =
            (0.0, BTreeMap::new(), 0i64, 0i64, 0usize);
        let (mut lr, mut batches, mut skipped, mut updates) = (0.0, 0usize, 0usize, 0usize);
        let cached = self.teacher_cache.filter(|c| c.serves(self.train));
        let (rank, world) = (dist::rank(), dist::world_size());
        let norm = cfg.norm;
        let global_batches = self.train.epoch_plan(epoch, subset, true)?;
        for (i, global) in global_batches.iter().take(spe).enumerate() {
            lr = cfg.lr.lr_at(epoch, i, spe, cfg.epochs);
            if global.len() < world {
                // A rank would get no sample; every rank skips the same batch.
                tracing::warn!(
                    "{}: batch {i} of epoch {epoch} has {} samples for {world} processes; skipped",
                    self.label,
                    global.len()
                );
                skipped += 1;
                continue;
            }
            let part = &global[dist::shard(global.len(), rank, world)];
            let batch = batch_to(self.train.batch_of(part, epoch, true)?, self.device);
            let s_out = sync_bn_errors(|| with_norm(norm, || self.student.forward_t(&batch.x, true)))?;
            let t_out = match (self.teacher, self.distiller.needs_teacher()) {
                (Some(t), true) => Some(match cached {
                    Some(cache) => cache.get(&batch.index)?,
                    None => tch::no_grad(|| t.forward_t(&batch.x, false)),
                }),
                (None, true) => {
                    return Err(KdError::invalid(format!(
                        "{} needs a teacher",
                        self.distiller.name()
                    )))
                }
                _ => None,
            };
            let ctx = StepCtx {
                batch: &batch,
                student: self.student,
                teacher: self.teacher,
                s_out: &s_out,
                t_out: t_out.as_ref(),
                progress: Progress {
                    global_step: global_start + i,
                    steps_per_epoch: spe,
                    ..progress
                },
            };
            let terms = sync_bn_errors(|| with_norm(norm, || self.distiller.loss(&ctx)))??;
            let total = terms
                .total()
                .ok_or_else(|| KdError::invalid("the distiller returned no loss terms"))?;
            let value = total.double_value(&[]);
            let term_values: Vec<f64> = terms.terms().iter().map(|(_, t)| t.double_value(&[])).collect();
            // Whether any rank went non-finite or takes an update, so every rank decides alike,
            // and each term's units (samples, or what it is a mean over) over the group.
            let finite = value.is_finite() && term_values.iter().all(|v| v.is_finite());
            let units: Vec<f64> = terms
                .units()
                .iter()
                .map(|u| u.unwrap_or(part.len() as f64))
                .collect();
            let mut local = vec![f64::from(u8::from(!finite)), f64::from(u8::from(terms.updates()))];
            local.extend(&units);
            let flags = dist::sum_f64(&local)?;
            // A term's weight on this rank: its share of the group's units (1 alone).
            let weights: Vec<f64> = units
                .iter()
                .zip(&flags[2..])
                .map(|(u, all)| if *all > 0.0 { u / all } else { 0.0 })
                .collect();
            if flags[0] > 0.0 {
                // The lowest failing rank names itself to the others.
                let failing = -dist::max_f64(if finite { f64::MIN } else { -(rank as f64) })?;
                let bad = if finite {
                    format!("loss on rank {failing} of {world}")
                } else {
                    terms
                        .terms()
                        .iter()
                        .zip(&term_values)
                        .find(|(_, v)| !v.is_finite())
                        .map_or("loss".to_string(), |((n, _), _)| format!("loss term {n:?}"))
                };
                bar.abandon();
                return Err(KdError::NonFinite {
                    what: bad,
                    epoch,
                    step: global_start + i,
                    checkpoint: self.checkpoint.clone().unwrap_or_default(),
                });
            }
            if flags[1] > 0.0 {
                opt.zero_grad();
                let seed = if !terms.updates() {
                    // This rank contributes nothing, but its backward must still run through
                    // the same graph: a synchronised BatchNorm's backward waits for every rank.
                    if total.requires_grad() {
                        total * 0.0
                    } else {
                        s_out.logits.sum(s_out.logits.kind()) * 0.0
                    }
                } else if world == 1 {
                    total
                } else {
                    // Each rank's term scaled by its share times the world size: the average
                    // over the ranks is the whole batch's term.
                    terms
                        .terms()
                        .iter()
                        .zip(&weights)
                        .map(|((_, t), w)| t * (w * world as f64))
                        .reduce(|a, b| a + b)
                        .unwrap_or(total)
                };
                seed.f_backward()?;
                dist::average_gradients(opt.params())?;
                if let Some(max) = effective_clip(cfg.grad_clip, self.distiller.max_grad_norm()) {
                    opt.clip_grad_norm(max);
                }
                opt.step(lr);
                updates += 1;
            } else {
                skipped += 1;
            }
            batches += 1;
            let logits = tch::no_grad(|| self.distiller.student_logits(self.student, &s_out))?;
            let (h, c) = top1_counts(&logits, &batch.target);
            // The record's numbers over the global batch: each rank's terms weighted by its
            // share of their units.
            let mut local = vec![h as f64, c as f64];
            local.extend(term_values.iter().zip(&weights).map(|(v, w)| v * w));
            let global_stats = dist::sum_f64(&local)?;
            for ((name, _), v) in terms.terms().iter().zip(&global_stats[2..]) {
                *term_sums.entry(name.clone()).or_insert(0.0) += v;
            }
            let step_loss = if world == 1 {
                value
            } else {
                global_stats[2..].iter().sum()
            };
            hit += global_stats[0] as i64;
            seen += global_stats[1] as i64;
            loss_sum += step_loss;
            samples += global.len();
            bar.set_message(format!(
                "loss {:.4} acc {:.1}%",
                loss_sum / (i + 1) as f64,
                100.0 * hit as f64 / seen.max(1) as f64
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        if dist::world().is_some() {
            self.distiller.merge_ranks()?;
            // Per-rank BatchNorm moves each rank's running statistics its own way; rank 0's
            // are the ones evaluated and checkpointed (PyTorch DDP's `broadcast_buffers`).
            let buffers: Vec<(String, Tensor)> = sorted_vars(self.vs)
                .into_iter()
                .filter(|(_, t)| !t.requires_grad())
                .collect();
            dist::broadcast_vars(&buffers)?;
        }
        let steps = batches.max(1) as f64;
        let last = epoch + 1 == cfg.epochs;
        let test_metric = if last || (epoch + 1).is_multiple_of(cfg.eval_every.max(1)) {
            Some(self.test_metric()?)
        } else {
            None
        };
        let held_metric = match (&split.stop, test_metric) {
            (Some(_), Some(_)) => Some(self.evaluator.evaluate_held(
                self.student,
                &*self.distiller,
                self.train,
                &split.held,
                split.held_eval_batch,
                self.device,
            )?),
            _ => None,
        };
        let record = EpochRecord {
            epoch,
            lr,
            loss: loss_sum / steps,
            terms: term_sums.into_iter().map(|(k, v)| (k, v / steps)).collect(),
            train_acc: 100.0 * hit as f64 / seen.max(1) as f64,
            test_metric,
            held_metric,
            samples,
            updates,
            skipped,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            "{} epoch {}/{}: loss {:.4} train {:.2}% test {}{} ({:.1}s)",
            self.label,
            epoch + 1,
            cfg.epochs,
            record.loss,
            record.train_acc,
            test_metric.map_or("-".into(), |a| format!("{a:.2} {}", self.evaluator.name())),
            held_metric.map_or(String::new(), |a| format!(" held-out {a:.2}")),
            record.seconds
        );
        Ok(record)
    }
}

/// Runs `f`, turning the panic a failed synchronised BatchNorm raises inside a forward pass
/// (where `ModuleT` cannot return an error) back into the collective's error.
fn sync_bn_errors<R>(f: impl FnOnce() -> R) -> Result<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Ok(r),
        Err(payload) => match payload.downcast::<SyncBnFailed>() {
            Ok(failed) => Err(KdError::invalid(failed.0)),
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}

fn progress_bar(len: usize, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_string());
    bar
}

/// Writes the student's weights alone — the variables under `student` in `vs`, prefix
/// stripped — to a safetensors file. The distiller's auxiliary modules (under `aux`) are not
/// exported.
pub fn export_student(vs: &nn::VarStore, path: &std::path::Path) -> Result<()> {
    let vars: Vec<(String, Tensor)> = sorted_vars(vs)
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix(STUDENT_PREFIX).map(|k| (k.to_string(), t)))
        .collect();
    if vars.is_empty() {
        return Err(KdError::invalid(format!(
            "no variables under {STUDENT_PREFIX:?} to export"
        )));
    }
    checkpoint::save(path, &vars, &serde_json::json!({"kind": "student"}))
}

/// The per-epoch log beside a run's checkpoint: one JSON object per finished epoch, with
/// `epoch` (1-based), `lr` (at the epoch's last step), `loss` and `terms` (epoch means of the
/// total and of each named term), `train_acc` (%), `metric` (its name) and `test` (its value,
/// `null` when the epoch was not evaluated), `held_out` (the metric on the split held out of
/// the training set, with early stopping), `samples`, `updates`, `skipped` and `seconds`.
pub const EPOCH_LOG: &str = "epochs.jsonl";

/// The best held-out epoch's weights beside a run's checkpoint, with early stopping.
pub const BEST: &str = "best.safetensors";

/// Copies of a store's variables, by name.
type Snapshot = Vec<(String, Tensor)>;

/// How a run uses its training data: the recipe resolved for it and, with early stopping,
/// the held-out samples (ascending), the batch size they are scored in, and the trained ones.
struct Split {
    cfg: TrainConfig,
    stop: Option<EarlyStop>,
    held: Vec<usize>,
    held_eval_batch: usize,
    trained: Option<Vec<usize>>,
}

/// Name prefix of the student's variables in the training store (`vs.root() / "student"`).
pub const STUDENT_PREFIX: &str = "student.";
/// Path segment under which the student is built.
pub const STUDENT: &str = "student";
/// Path segment under which a distiller builds its auxiliary (never exported) modules.
pub const AUX: &str = "aux";

#[cfg(test)]
mod tests {
    use super::effective_clip;

    #[test]
    fn the_tighter_clip_wins() {
        assert_eq!(effective_clip(None, None), None);
        assert_eq!(effective_clip(Some(2.0), None), Some(2.0));
        assert_eq!(effective_clip(None, Some(5.0)), Some(5.0));
        assert_eq!(effective_clip(Some(2.0), Some(5.0)), Some(2.0));
        assert_eq!(effective_clip(Some(9.0), Some(5.0)), Some(5.0));
    }
}
