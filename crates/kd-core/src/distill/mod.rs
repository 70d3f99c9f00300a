//! The `Distiller` extension point.
//!
//! A distillation method is a [`Distiller`]: from one batch plus the student's and the frozen
//! teacher's outputs it returns named, already-weighted loss terms, and the trainer minimises
//! their sum. The classification loss is one of those terms, so "no KD" is itself a distiller
//! and the trainer knows no method. Auxiliary modules (adapters, generators, heads) are created
//! by the method's constructor under the `aux` path it is given: they are trained with the
//! student but never exported. A method may also hook the start of each epoch to choose which
//! samples the epoch visits.

use tch::{Device, Tensor};

use crate::data::{Batch, BatchSource};
use crate::models::{Model, ModelOutput};
use crate::{KdError, Result};

/// Where training stands, for schedules and warm-ups inside a distiller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Current epoch, 0-based.
    pub epoch: usize,
    /// Total number of epochs.
    pub epochs: usize,
    /// Optimiser steps taken before this one.
    pub global_step: usize,
    /// Steps in the current epoch.
    pub steps_per_epoch: usize,
}

impl Progress {
    /// Fraction of training done, in `[0, 1]`, counted in steps.
    pub fn fraction(&self) -> f64 {
        let total = (self.epochs * self.steps_per_epoch).max(1);
        (self.global_step as f64 / total as f64).min(1.0)
    }
}

/// Everything a distiller sees for one step.
pub struct StepCtx<'a> {
    /// The batch.
    pub batch: &'a Batch,
    /// The student (in train mode during training).
    pub student: &'a dyn Model,
    /// The frozen teacher, when the method uses one.
    pub teacher: Option<&'a dyn Model>,
    /// The student's forward output on `batch.x`.
    pub s_out: &'a ModelOutput,
    /// The teacher's output on `batch.x`, computed in eval mode under `no_grad`.
    pub t_out: Option<&'a ModelOutput>,
    /// Where training stands.
    pub progress: Progress,
}

/// Everything a distiller sees at the start of an epoch.
pub struct EpochCtx<'a> {
    /// Where training stands (`global_step` is the first step of this epoch).
    pub progress: Progress,
    /// The full training set (its size and name; batches come from the two builders below).
    pub train_set: &'a dyn BatchSource,
    /// The student.
    pub student: &'a dyn Model,
    /// The frozen teacher, when the method uses one.
    pub teacher: Option<&'a dyn Model>,
    /// Device the models live on.
    pub device: Device,
    /// Builds an evaluation batch (no augmentation, normalised) of the given sample indices, so a
    /// hook can score the whole training set, e.g. to select instances.
    pub eval_batch: &'a dyn Fn(&[usize]) -> Result<Batch>,
    /// Builds a batch of the given sample indices with the training loader's augmentation, drawn
    /// for this epoch (the same views the epoch's own batches use for those samples; identical
    /// to [`EpochCtx::eval_batch`] when the loader does not augment). For hooks that score
    /// samples the way training will see them. The teacher cache does not serve these inputs.
    pub aug_batch: &'a dyn Fn(&[usize]) -> Result<Batch>,
    /// The teacher's outputs over the training set, when the run computed them once.
    pub teacher_cache: Option<&'a TeacherCache>,
}

impl EpochCtx<'_> {
    /// The frozen teacher's output on a batch from [`EpochCtx::eval_batch`]: gathered from the
    /// teacher cache when there is one (its entries are exactly these un-augmented inputs'),
    /// computed otherwise.
    pub fn teacher_output(&self, batch: &Batch) -> Result<ModelOutput> {
        match (self.teacher_cache, self.teacher) {
            (Some(c), _) if c.len() == self.train_set.len() => c.get(&batch.index),
            (_, Some(t)) => Ok(tch::no_grad(|| t.forward_t(&batch.x, false))),
            _ => Err(KdError::invalid("this epoch has no teacher")),
        }
    }
}

/// Which samples an epoch visits.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum EpochPlan {
    /// Every sample of the training set, shuffled.
    #[default]
    All,
    /// Only these dataset indices, shuffled.
    Subset(Vec<usize>),
}

/// Named loss terms, each a scalar tensor already multiplied by its weight.
///
/// A method that gates samples may find that no sample of a batch takes part; it then marks the
/// terms with [`LossTerms::skip_update`], and the trainer takes no optimiser step for the batch
/// (no momentum or weight-decay move either), while the learning-rate schedule advances exactly
/// as if it had, so schedules stay comparable with ungated training.
#[derive(Debug)]
pub struct LossTerms {
    terms: Vec<(String, Tensor)>,
    /// Per term: the number of units (labelled pixels, boxes) it is the mean over, when that
    /// is not the batch's samples.
    units: Vec<Option<f64>>,
    update: bool,
}

impl Default for LossTerms {
    fn default() -> Self {
        Self {
            terms: Vec::new(),
            units: Vec::new(),
            update: true,
        }
    }
}

impl LossTerms {
    /// No terms.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the batch as contributing nothing: the trainer logs the terms but neither
    /// back-propagates nor steps the optimiser.
    pub fn skip_update(mut self) -> Self {
        self.update = false;
        self
    }

    /// Whether the trainer should back-propagate these terms and step (false after
    /// [`LossTerms::skip_update`]).
    pub fn updates(&self) -> bool {
        self.update
    }

    /// Adds a weighted scalar term that is a mean over the batch's samples (or any per-sample
    /// quantity whose number is the batch size).
    pub fn push(&mut self, name: impl Into<String>, value: Tensor) {
        self.terms.push((name.into(), value));
        self.units.push(None);
    }

    /// Adds a weighted scalar term that is a mean over `units` things whose number is not the
    /// batch size (the labelled pixels of a segmentation loss). Alone this is [`LossTerms::push`];
    /// in a data-parallel group the trainer weights each rank's term by its share of the
    /// group's units, so the step is the one a single process takes on the whole batch.
    pub fn push_mean_over(&mut self, name: impl Into<String>, value: Tensor, units: f64) {
        self.terms.push((name.into(), value));
        self.units.push(Some(units));
    }

    /// Per term, the units it is a mean over when given ([`LossTerms::push_mean_over`]).
    pub fn units(&self) -> &[Option<f64>] {
        &self.units
    }

    /// Builder-style [`LossTerms::push`].
    pub fn with(mut self, name: impl Into<String>, value: Tensor) -> Self {
        self.push(name, value);
        self
    }

    /// The terms in insertion order.
    pub fn terms(&self) -> &[(String, Tensor)] {
        &self.terms
    }

    /// Sum of all terms (a scalar tensor), or `None` when there are none.
    pub fn total(&self) -> Option<Tensor> {
        let mut it = self.terms.iter();
        let first = it.next()?.1.shallow_clone();
        Some(it.fold(first, |acc, (_, t)| acc + t))
    }
}

/// The supervised loss of a task (classification, segmentation, detection), as the terms a
/// method adds its own to.
///
/// Feature-level methods (GDD, CWD on feature maps) are task-agnostic: they compare taps. What
/// differs between a segmentation and a detection row is only the student's own loss, so the
/// methods hold one of these instead of being written once per task.
pub trait TaskLoss: std::fmt::Debug + Send {
    /// The task's loss terms for a training step (already weighted).
    fn task_terms(&self, ctx: &StepCtx<'_>) -> Result<LossTerms>;
}

/// A distillation method. See the module docs for the contract.
pub trait Distiller {
    /// Method name used in logs and result rows, e.g. `"kd"`.
    fn name(&self) -> String;

    /// Whether the trainer must run the teacher on every batch.
    fn needs_teacher(&self) -> bool {
        true
    }

    /// The loss terms for one training step. Terms are summed by the trainer.
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms>;

    /// The student's class scores `[B, K]` used for accuracy and evaluation. Methods that route
    /// the student through extra exported modules override this.
    fn student_logits(&self, _student: &dyn Model, s_out: &ModelOutput) -> Result<Tensor> {
        Ok(s_out.logits.shallow_clone())
    }

    /// A bound on the global gradient L2 norm that the method needs for its own stability
    /// (e.g. heads whose loss divides by a predicted variance). The trainer clips to the
    /// smaller of this and the recipe's `grad_clip`; `None` (the default) leaves the recipe's.
    fn max_grad_norm(&self) -> Option<f64> {
        None
    }

    /// Called before each epoch; may restrict the epoch to a subset of the training set.
    fn on_epoch_start(&mut self, _ctx: &EpochCtx<'_>) -> Result<EpochPlan> {
        Ok(EpochPlan::All)
    }

    /// Method state that must survive `--resume` besides the weights (counters, selections),
    /// as named tensors. Stored in the checkpoint.
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Restores what [`Distiller::state`] returned.
    fn load_state(&mut self, _state: &[(String, Tensor)]) -> Result<()> {
        Ok(())
    }

    /// Combines state that each rank of a data-parallel group updated from its own samples
    /// during the epoch (per-sample counters) into one value on every rank; the trainer calls
    /// it at every epoch end, before the checkpoint, on every rank ([`crate::dist`] has the
    /// collectives). The default does nothing: right for methods whose state changes only in
    /// [`Distiller::on_epoch_start`], which the trainer already makes rank 0's everywhere.
    fn merge_ranks(&mut self) -> Result<()> {
        Ok(())
    }

    /// Method-specific numbers to put beside the results (e.g. participation counts).
    fn report(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Writes what later stages need from this run besides the weights (e.g. per-sample
    /// statistics gathered while training a teacher) into `dir`, next to the exported weights.
    /// Called by the caller once training has finished; the default writes nothing.
    fn save_artifacts(&self, _dir: &std::path::Path) -> Result<()> {
        Ok(())
    }
}

pub mod teacher;
pub mod teacher_cache;

pub use teacher::{sorted_vars, Teacher};
pub use teacher_cache::TeacherCache;
