//! Stage 1: training the teacher with self-regulation, and counting who took part.
//!
//! The teacher is trained from scratch on labels, but a sample reaches the gradient only while
//! the teacher misclassifies it or is unsure about it (see [`crate::gate`]). How often each
//! sample took part in the counting epochs is its significance. The first epochs can be left
//! out of the count (`counting_start`), because an untrained network gets almost everything
//! wrong and would mark every sample as significant.
//!
//! The schedule is untouched: a batch in which nobody takes part takes no optimiser step, but
//! the learning rate advances as in conventional training.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use kd_core::distill::{Distiller, EpochCtx, EpochPlan, LossTerms, StepCtx};
use kd_core::losses::cross_entropy_per_sample;
use kd_core::{KdError, Result};

use crate::counter::ParticipationCounter;
use crate::gate::{gate, GateConfig};
use crate::reduce::{reduce, Normalisation};
use crate::significance::{Significance, SignificanceNorm, SIGNIFICANCE_FILE};

/// Settings of self-regulated teacher training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// The participation gate (default: true-class probability, fixed β = 0.9, no warm-up).
    #[serde(default)]
    pub gate: GateConfig,
    /// First epoch (0-based) whose participations count towards significance, `E_c`
    /// (default 1).
    #[serde(default = "one")]
    pub counting_start: usize,
    /// How counts become significance (default: divided by the number of counting epochs).
    #[serde(default)]
    pub significance: SignificanceNorm,
    /// Normalisation of the masked cross-entropy (default: mean over participants).
    #[serde(default)]
    pub normalisation: Normalisation,
}

fn one() -> usize {
    1
}

impl Default for TeacherConfig {
    fn default() -> Self {
        Self {
            gate: GateConfig::default(),
            counting_start: 1,
            significance: SignificanceNorm::default(),
            normalisation: Normalisation::default(),
        }
    }
}

impl TeacherConfig {
    /// Fails on an invalid gate.
    pub fn validate(&self) -> Result<()> {
        self.gate.validate()
    }
}

/// Trains a network on labels with self-regulation; use it as the distiller of a teacher run
/// (it needs no teacher itself). After training, [`SelfRegTeacher::significance`] gives the
/// per-sample significance and [`Distiller::save_artifacts`] writes it next to the weights.
#[derive(Debug)]
pub struct SelfRegTeacher {
    cfg: TeacherConfig,
    counter: ParticipationCounter,
    epochs: usize,
}

impl SelfRegTeacher {
    /// A teacher trainer for a training set of `n_samples` samples.
    pub fn new(cfg: TeacherConfig, n_samples: usize) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            counter: ParticipationCounter::new(n_samples),
            epochs: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &TeacherConfig {
        &self.cfg
    }

    /// The participation counter.
    pub fn counter(&self) -> &ParticipationCounter {
        &self.counter
    }

    /// Number of counting epochs of the run, `E_T − E_c`.
    pub fn counting_epochs(&self) -> usize {
        self.epochs.saturating_sub(self.cfg.counting_start)
    }

    /// The significance gathered so far (complete once training has finished).
    pub fn significance(&self) -> Result<Significance> {
        let counts = Vec::<i64>::try_from(self.counter.counts())?;
        Significance::from_counts(counts, self.counting_epochs(), self.cfg.significance)
    }
}

impl Distiller for SelfRegTeacher {
    fn name(&self) -> String {
        "selfreg-teacher".into()
    }

    fn needs_teacher(&self) -> bool {
        false
    }

    fn on_epoch_start(&mut self, ctx: &EpochCtx<'_>) -> Result<EpochPlan> {
        let n = ctx.train_set.len();
        if n != self.counter.len() {
            return Err(KdError::invalid(format!(
                "self-regulated teacher: built for {} samples but {} has {n}",
                self.counter.len(),
                ctx.train_set.name()
            )));
        }
        if self.cfg.counting_start >= ctx.progress.epochs {
            return Err(KdError::invalid(format!(
                "self-regulated teacher: counting_start = {} leaves no counting epoch in a \
                 {}-epoch run",
                self.cfg.counting_start, ctx.progress.epochs
            )));
        }
        self.epochs = ctx.progress.epochs;
        Ok(EpochPlan::All)
    }

    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let epoch = ctx.progress.epoch;
        let z = &ctx.s_out.logits;
        let y = ctx.batch.target.labels()?;
        let ce = cross_entropy_per_sample(z, y)?;
        let m = gate(z, y, &self.cfg.gate, epoch)?;
        let counting = epoch >= self.cfg.counting_start;
        let took = self.counter.record(epoch, &ctx.batch.index, &m, counting)?;
        let w = m.to_kind(ce.kind());
        let loss = reduce(&ce, &w, self.cfg.normalisation)?;
        let mut terms = LossTerms::new();
        crate::student::push_reduced(&mut terms, "ce", loss, &w, self.cfg.normalisation);
        Ok(if took == 0 { terms.skip_update() } else { terms })
    }

    fn merge_ranks(&mut self) -> Result<()> {
        self.counter.merge_ranks()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = self.counter.state();
        s.push(("epochs".into(), Tensor::from_slice(&[self.epochs as i64])));
        s
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        self.counter.load_state(state)?;
        if let Some((_, t)) = state.iter().find(|(n, _)| n == "epochs") {
            self.epochs = t.int64_value(&[0]).max(0) as usize;
        }
        Ok(())
    }

    fn report(&self) -> serde_json::Value {
        let acc = self.counter.accounting(self.epochs);
        let mut v = serde_json::to_value(&acc).unwrap_or_default();
        if let Ok(s) = self.significance() {
            let n = s.len().max(1) as f64;
            let mean = s.values().iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            v["counting_epochs"] = self.counting_epochs().into();
            v["d_sig"] = s.subset(0.0).len().into();
            v["d_sig_pct"] = (100.0 * s.subset(0.0).len() as f64 / n).into();
            v["mean_significance"] = mean.into();
        }
        v
    }

    fn save_artifacts(&self, dir: &Path) -> Result<()> {
        self.significance()?.save(&dir.join(SIGNIFICANCE_FILE))
    }
}
