//! The GDD distiller: a task loss plus one [`GddLevel`] per distilled tap.
//!
//! GDD itself is task-agnostic (it compares taps), so the task loss is a [`TaskLoss`] the
//! caller supplies: a segmentation net's cross-entropies, a detector's own losses.

use kd_core::distill::{Distiller, LossTerms, StepCtx, TaskLoss};
use kd_core::models::{paired_taps, Model, ModelOutput, Tap};
use kd_core::{KdError, Result};
use tch::{nn, Tensor};

use crate::config::{GddConfig, GddLevelSpec};
use crate::level::{GddLevel, LevelParams};
use kd_core::losses::CwdConfig;

/// Generative denoise distillation.
///
/// Loss terms: the task terms (e.g. a segmentation loss's `"ce"`, `"aux_ce"`), `"gdd"` = the sum of
/// every level's `α_ℓ · τ²/(B·C_t) · Σ KL`, and `"cwd"` when `logit_cwd` is set. The levels'
/// adapters and generators live under `<aux>/gdd/<i>`, so they are optimised with the student
/// and never exported.
#[derive(Debug)]
pub struct Gdd {
    cfg: GddConfig,
    task: Box<dyn TaskLoss>,
    levels: Vec<(GddLevelSpec, GddLevel)>,
}

impl Gdd {
    /// Builds one level per entry of [`GddConfig::resolved_levels`] under `aux/gdd/<i>`, with
    /// the channel counts of the named taps in `student_taps` and `teacher_taps` (as returned
    /// by [`Model::taps`]), on top of the task loss `task`.
    ///
    /// Fails on an invalid config, a tap that does not exist (the message lists the taps), or
    /// a student/teacher tap pair at different strides.
    pub fn new(
        aux: &nn::Path<'_>,
        cfg: GddConfig,
        student_taps: &[Tap],
        teacher_taps: &[Tap],
        task: Box<dyn TaskLoss>,
    ) -> Result<Self> {
        let specs = cfg.resolved_levels()?;
        let levels = build_levels(
            &(aux / "gdd"),
            "gdd",
            specs,
            student_taps,
            teacher_taps,
            |p, c_s, c_t, alpha| {
                let params = LevelParams {
                    tau: cfg.tau,
                    alpha,
                    noise: cfg.noise,
                    noise_shape: cfg.noise_shape,
                };
                GddLevel::new(p, c_s, c_t, params)
            },
        )?;
        Ok(Self { cfg, task, levels })
    }

    /// [`Gdd::new`] with the taps of `student` and `teacher`.
    pub fn for_models(
        aux: &nn::Path<'_>,
        cfg: GddConfig,
        student: &dyn Model,
        teacher: &dyn Model,
        task: Box<dyn TaskLoss>,
    ) -> Result<Self> {
        Self::new(aux, cfg, student.taps(), teacher.taps(), task)
    }

    /// The settings.
    pub fn config(&self) -> &GddConfig {
        &self.cfg
    }

    /// The levels, in config order, with the taps and weight each one distils.
    pub fn levels(&self) -> &[(GddLevelSpec, GddLevel)] {
        &self.levels
    }

    /// Each level's weighted loss, in order (one noise draw per level, in order).
    pub fn level_losses(&self, s_out: &ModelOutput, t_out: &ModelOutput) -> Result<Vec<Tensor>> {
        level_losses(&self.levels, s_out, t_out, |l, s, t| l.forward(s, t))
    }

    /// The distillation terms alone: `"gdd"` (the sum of [`Gdd::level_losses`]) and, when
    /// configured, `"cwd"` on the dense logits at their head's resolution
    /// ([`ModelOutput::dense_logits`]). Detection methods add these to their own task loss.
    pub fn distill_terms(&self, s_out: &ModelOutput, t_out: &ModelOutput) -> Result<LossTerms> {
        feature_terms(
            "gdd",
            self.level_losses(s_out, t_out)?,
            self.cfg.logit_cwd.as_ref(),
            s_out,
            t_out,
        )
    }
}

/// One level per spec under `root/<i>`, built by `make(path, C_s, C_t, α)` with the channel
/// counts of the named taps. Fails on a tap that does not exist (the message lists the taps) or
/// a student/teacher pair at different strides.
pub(crate) fn build_levels<L>(
    root: &nn::Path<'_>,
    method: &str,
    specs: Vec<GddLevelSpec>,
    student_taps: &[Tap],
    teacher_taps: &[Tap],
    make: impl Fn(&nn::Path<'_>, i64, i64, f64) -> Result<L>,
) -> Result<Vec<(GddLevelSpec, L)>> {
    let mut levels = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let (s, t) = paired_taps(
            &format!("{method} level {i}"),
            student_taps,
            &spec.student_tap,
            teacher_taps,
            &spec.teacher_tap,
        )?;
        let level = make(&(root / i), s.channels, t.channels, spec.alpha)?;
        levels.push((spec, level));
    }
    Ok(levels)
}

/// Each level's loss `forward(level, student tap, teacher tap)`, in level order.
pub(crate) fn level_losses<L>(
    levels: &[(GddLevelSpec, L)],
    s_out: &ModelOutput,
    t_out: &ModelOutput,
    forward: impl Fn(&L, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    levels
        .iter()
        .map(|(spec, level)| {
            forward(
                level,
                s_out.feature(&spec.student_tap)?,
                t_out.feature(&spec.teacher_tap)?,
            )
        })
        .collect()
}

/// `name` = the sum of the level losses, plus `"cwd"` on the dense logits when configured.
pub(crate) fn feature_terms(
    name: &str,
    losses: Vec<Tensor>,
    logit_cwd: Option<&CwdConfig>,
    s_out: &ModelOutput,
    t_out: &ModelOutput,
) -> Result<LossTerms> {
    let total = losses
        .into_iter()
        .reduce(|a, b| a + b)
        .ok_or_else(|| KdError::invalid(format!("{name} has no level")))?;
    let mut terms = LossTerms::new().with(name, total);
    if let Some(cwd) = logit_cwd {
        terms.push("cwd", cwd.term(s_out.dense_logits(), t_out.dense_logits())?);
    }
    Ok(terms)
}

/// The task terms of `ctx` followed by `distill`'s terms.
pub(crate) fn with_task_terms(
    task: &dyn TaskLoss,
    ctx: &StepCtx<'_>,
    distill: LossTerms,
) -> Result<LossTerms> {
    let mut terms = task.task_terms(ctx)?;
    for (name, value) in distill.terms() {
        terms.push(name.clone(), value.shallow_clone());
    }
    Ok(terms)
}

impl Distiller for Gdd {
    fn name(&self) -> String {
        "gdd".into()
    }

    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let t_out = ctx.t_out.ok_or_else(|| KdError::invalid("gdd needs a teacher"))?;
        with_task_terms(self.task.as_ref(), ctx, self.distill_terms(ctx.s_out, t_out)?)
    }
}
