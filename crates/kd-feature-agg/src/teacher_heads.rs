//! Mode B's teacher-side heads: class-space Gaussians read off the frozen teacher.
//!
//! In mode B every stage's distribution lives in class space (`D_i = K`). The teacher has no
//! such output of its own, so it gets its own AFF + FDP heads. Trained jointly with the student
//! against each other, both sides could agree on any constant; instead the heads are fitted
//! first, on the frozen teacher alone, and then frozen for the whole distillation:
//!
//! ```text
//! L_prefit = Σ_i  ce_weight·CE(μ_i^T, y) + kd_weight·τ²·KL(softmax(z_T/τ) ‖ softmax(μ_i^T/τ))
//!               + var_weight·½·mean[log σ²_i^T + (z_T − sg(μ_i^T))² / σ²_i^T]
//! ```
//!
//! The last term is the Gaussian negative log-likelihood of the teacher's own logits: without
//! it the variance head would receive no gradient at all and keep its random initialisation.
//! With the mean detached (`sg`), it fits σ² to how far each stage's class-space reading is
//! from the teacher's actual logits: the heads' own uncertainty, which is then what the student
//! is asked to match.
//!
//! The heads live in their own `VarStore`, so the trainer's optimiser never sees them; the
//! pre-fit runs from the distiller's epoch-start hook over the training set (un-augmented
//! evaluation batches), and the fitted weights are part of the distiller's checkpoint state, so
//! a resumed run neither repeats nor loses the pre-fit.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use kd_core::data::Batch;
use kd_core::losses::{cross_entropy_per_sample, kd_loss, masked_mean};
use kd_core::models::ModelOutput;
use kd_core::train::Optimizer;
use kd_core::{KdError, Result};

use crate::config::PrefitConfig;
use crate::fdp::DiagGaussian;
use crate::heads::{HeadsSpec, StageHeads};

/// Name of the checkpoint entry that marks fitted heads.
const FITTED: &str = "teacher_heads.fitted";
/// Name of the checkpoint entry that holds the pre-fit summary.
const SUMMARY: &str = "teacher_heads.prefit";
/// Prefix of the heads' variables in the checkpoint.
const VARS: &str = "teacher_heads/";

/// What the pre-fit did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefitReport {
    /// Optimiser steps taken.
    pub steps: usize,
    /// Mean pre-fit loss over the last pass.
    pub final_loss: f64,
    /// Top-1 accuracy (%) of each stage's mean `μ_i^T` against the labels over the last pass.
    pub stage_train_acc: Vec<f64>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The teacher-side AFF + FDP of mode B, with their own frozen-after-fitting store.
pub struct TeacherHeads {
    vs: nn::VarStore,
    heads: StageHeads,
    taps: Vec<String>,
    cfg: PrefitConfig,
    fitted: bool,
    report: Option<PrefitReport>,
}

impl std::fmt::Debug for TeacherHeads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeacherHeads")
            .field("taps", &self.taps)
            .field("fitted", &self.fitted)
            .finish()
    }
}

impl TeacherHeads {
    /// Builds untrained heads on `device` over the teacher taps `taps` (shallow to deep, whose
    /// channels are `spec.in_channels`). Every `spec.out_dims` entry is the number of classes.
    pub fn new(device: Device, taps: Vec<String>, spec: &HeadsSpec<'_>, cfg: PrefitConfig) -> Result<Self> {
        if taps.len() != spec.in_channels.len() {
            return Err(KdError::invalid(format!(
                "TeacherHeads: {} taps for {} stages",
                taps.len(),
                spec.in_channels.len()
            )));
        }
        let vs = nn::VarStore::new(device);
        let heads = StageHeads::new(&vs.root(), spec)?;
        Ok(Self {
            vs,
            heads,
            taps,
            cfg,
            fitted: false,
            report: None,
        })
    }

    /// Whether the heads have been pre-fitted (and frozen).
    pub fn is_fitted(&self) -> bool {
        self.fitted
    }

    /// The pre-fit summary, once fitted.
    pub fn report(&self) -> Option<&PrefitReport> {
        self.report.as_ref()
    }

    /// The heads' variables.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn feats<'a>(&self, t_out: &'a ModelOutput) -> Result<Vec<&'a Tensor>> {
        self.taps.iter().map(|n| t_out.feature(n)).collect()
    }

    /// The targets: one class-space Gaussian `[B, K]` per loss stage, from the teacher's
    /// output, with the heads in eval mode and without gradient.
    pub fn targets(&self, t_out: &ModelOutput) -> Result<Vec<DiagGaussian>> {
        let feats = self.feats(t_out)?;
        tch::no_grad(|| self.heads.forward(&feats, false))
    }

    /// The pre-fit loss of one batch (module docs) with the heads in train mode, and the
    /// number of correct top-1 predictions of each stage's mean among the labelled samples.
    /// `t_out` is the frozen teacher's output on the batch, `y` its `[B]` labels (−1 for
    /// unlabelled samples, which only enter the KL and NLL terms).
    pub fn prefit_loss(&self, t_out: &ModelOutput, y: &Tensor) -> Result<(Tensor, Vec<i64>)> {
        let feats = self.feats(t_out)?;
        let preds = self.heads.forward(&feats, true)?;
        let z_t = t_out.logits.detach().to_kind(Kind::Float);
        let labelled = y.ge(0);
        let y_safe = y.clamp_min(0);
        let c = &self.cfg;
        let mut total = Tensor::zeros([], (Kind::Float, z_t.device()));
        let mut hits = Vec::with_capacity(preds.len());
        for g in &preds {
            let ce = masked_mean(&cross_entropy_per_sample(&g.mu, &y_safe)?, &labelled)?;
            let kd = kd_loss(&g.mu, &z_t, c.tau)?;
            let mu = g.mu.detach();
            let nll = ((&g.logvar + (&z_t - &mu).square() * (-&g.logvar).exp()) * 0.5).mean(Kind::Float);
            total = total + ce * c.ce_weight + kd * c.kd_weight + nll * c.var_weight;
            let correct = mu.argmax(-1, false).eq_tensor(y).logical_and(&labelled);
            hits.push(correct.sum(Kind::Int64).int64_value(&[]));
        }
        Ok((total, hits))
    }

    /// Fits the heads over the `n` training samples, drawing batches through `batch_of`
    /// (un-augmented, normalised, on the heads' device) and the frozen teacher's outputs on
    /// them through `teacher_out`, then freezes them.
    ///
    /// The shuffles come from libtorch's generator, which the trainer re-seeds from
    /// `(seed, epoch)` before every epoch-start hook, so the pre-fit is reproducible.
    pub fn prefit(
        &mut self,
        teacher_out: &dyn Fn(&Batch) -> Result<ModelOutput>,
        n: usize,
        batch_of: &dyn Fn(&[usize]) -> Result<Batch>,
    ) -> Result<()> {
        if self.fitted {
            return Ok(());
        }
        if n == 0 {
            return Err(KdError::invalid("unikd pre-fit: the training set is empty"));
        }
        let started = Instant::now();
        let c = self.cfg.clone();
        let mut params: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut opt = Optimizer::new(c.optimizer.clone(), params);
        let spe = n
            .div_ceil(c.batch_size)
            .min(c.max_steps_per_epoch.unwrap_or(usize::MAX));
        let mut report = PrefitReport {
            steps: 0,
            final_loss: 0.0,
            stage_train_acc: Vec::new(),
            seconds: 0.0,
        };
        for epoch in 0..c.epochs {
            let perm = Tensor::randperm(n as i64, (Kind::Int64, Device::Cpu));
            let perm: Vec<i64> = Vec::<i64>::try_from(&perm)?;
            let (mut loss_sum, mut hits, mut seen) = (0.0, vec![0i64; 0], 0i64);
            let mut steps = 0usize;
            for (step, chunk) in perm.chunks(c.batch_size).take(spe).enumerate() {
                let idx: Vec<usize> = chunk.iter().map(|&i| i as usize).collect();
                let batch = batch_of(&idx)?;
                let t_out = teacher_out(&batch)?;
                let labels = batch.target.labels()?;
                let (loss, h) = self.prefit_loss(&t_out, labels)?;
                let value = loss.double_value(&[]);
                if !value.is_finite() {
                    return Err(KdError::invalid(format!(
                        "unikd pre-fit of the teacher heads: non-finite loss at pass {epoch}, step {step}"
                    )));
                }
                opt.zero_grad();
                loss.backward();
                if let Some(max) = c.grad_clip {
                    opt.clip_grad_norm(max);
                }
                opt.step(c.lr.lr_at(epoch, step, spe, c.epochs));
                if hits.is_empty() {
                    hits = vec![0; h.len()];
                }
                hits.iter_mut().zip(&h).for_each(|(a, b)| *a += b);
                seen += labels.ge(0).sum(Kind::Int64).int64_value(&[]);
                loss_sum += value;
                steps += 1;
            }
            report.steps += steps;
            report.final_loss = loss_sum / steps.max(1) as f64;
            report.stage_train_acc = hits
                .iter()
                .map(|&h| 100.0 * h as f64 / seen.max(1) as f64)
                .collect();
            tracing::info!(
                "unikd pre-fit pass {}/{}: loss {:.4}, stage accuracy {:?}",
                epoch + 1,
                c.epochs,
                report.final_loss,
                report.stage_train_acc
            );
        }
        // Leave no pre-fit gradient behind on the frozen heads.
        opt.zero_grad();
        report.seconds = started.elapsed().as_secs_f64();
        self.freeze(report);
        Ok(())
    }

    fn freeze(&mut self, report: PrefitReport) {
        self.vs.freeze();
        self.fitted = true;
        self.report = Some(report);
    }

    /// Checkpoint state: the heads' variables, a fitted flag and the pre-fit summary. Empty
    /// before the pre-fit, so a run resumed from an earlier checkpoint fits again.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let Some(r) = &self.report else {
            return Vec::new();
        };
        let mut out: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (format!("{VARS}{n}"), t))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.push((FITTED.into(), Tensor::from_slice(&[1.0f64])));
        let mut summary = vec![r.steps as f64, r.final_loss, r.seconds];
        summary.extend(&r.stage_train_acc);
        out.push((SUMMARY.into(), Tensor::from_slice(&summary)));
        out
    }

    /// Restores what [`TeacherHeads::state`] returned; a state without the fitted flag leaves
    /// the heads untouched (they are fitted at the next epoch start).
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        if !state.iter().any(|(n, _)| n == FITTED) {
            return Ok(());
        }
        let find = |name: &str| state.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        tch::no_grad(|| -> Result<()> {
            for (name, mut var) in self.vs.variables() {
                let key = format!("{VARS}{name}");
                let src = find(&key)
                    .ok_or_else(|| KdError::invalid(format!("unikd checkpoint state has no {key:?}")))?;
                if src.size() != var.size() {
                    return Err(KdError::invalid(format!(
                        "unikd checkpoint state {key:?} has shape {:?}, expected {:?}",
                        src.size(),
                        var.size()
                    )));
                }
                var.copy_(&src.to_device(var.device()).to_kind(var.kind()));
            }
            Ok(())
        })?;
        let summary: Vec<f64> = match find(SUMMARY) {
            Some(t) => Vec::<f64>::try_from(&t.to_kind(Kind::Double))?,
            None => Vec::new(),
        };
        let report = PrefitReport {
            steps: summary.first().copied().unwrap_or(0.0) as usize,
            final_loss: summary.get(1).copied().unwrap_or(f64::NAN),
            seconds: summary.get(2).copied().unwrap_or(0.0),
            stage_train_acc: summary.iter().skip(3).copied().collect(),
        };
        self.freeze(report);
        Ok(())
    }
}
