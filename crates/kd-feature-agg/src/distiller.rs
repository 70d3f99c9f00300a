//! UniKD as a kd-core [`Distiller`].
//!
//! ```text
//! L = ce_weight·CE(z_S, y) + α·τ²·KL(softmax(z_T/τ) ‖ softmax(z_S/τ))
//!   + β·w(t)·Σ_i β_i · (1/B) Σ_b (1/D_i) KL(N(μ_i^T, σ²_i^T) ‖ N(μ_i^S, σ²_i^S))
//! ```
//!
//! The student-side modules (AFF, FDP) are built under the `aux` path the trainer provides,
//! so they are optimised with the student and never exported. The teacher-side heads of mode B
//! are not: they are fitted once before distillation in their own store and then frozen.

use serde_json::json;
use tch::{nn, Tensor};

use kd_core::distill::{Distiller, EpochCtx, EpochPlan, LossTerms, Progress, StepCtx};
use kd_core::losses::{cross_entropy, hint_loss, kd_loss};
use kd_core::models::{Model, ModelOutput};
use kd_core::train::linear_ramp;
use kd_core::{KdError, Result};

use crate::aff::{resize, AffCascade};
use crate::config::{TargetMode, UnikdConfig, Upsample, Variant};
use crate::heads::{HeadsSpec, StageHeads};
use crate::loss::stage_kl;
use crate::moments::teacher_moments;
use crate::stages::StagePlan;
use crate::teacher_heads::TeacherHeads;

/// The student's trainable modules.
#[derive(Debug)]
enum StudentSide {
    /// AFF (unless "w/o AFF") then FDP: one Gaussian per loss stage.
    Gaussian(StageHeads),
    /// "w/o FDP": the fused maps themselves, matched to the teacher's maps with an MSE.
    Fused(AffCascade),
}

/// The UniKD distiller. See the crate docs for the method and its configuration.
pub struct Unikd {
    cfg: UnikdConfig,
    plan: StagePlan,
    student: StudentSide,
    teacher_heads: Option<TeacherHeads>,
}

impl std::fmt::Debug for Unikd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unikd")
            .field("cfg", &self.cfg)
            .field("plan", &self.plan)
            .field("teacher_heads", &self.teacher_heads)
            .finish()
    }
}

impl Unikd {
    /// Builds the student-side modules under `aux` (trained with the student, never exported)
    /// and, in mode B, the teacher-side heads (fitted at the first epoch start). `student` and
    /// `teacher` may have any stage widths; the taps named in `cfg` (or the defaults) must
    /// exist. Every configuration error is reported here, naming the key.
    pub fn new(
        cfg: UnikdConfig,
        aux: &nn::Path<'_>,
        student: &dyn Model,
        teacher: &dyn Model,
    ) -> Result<Self> {
        cfg.validate()?;
        if student.num_classes() != teacher.num_classes() {
            return Err(KdError::invalid(format!(
                "unikd: the student {} has {} classes but the teacher {} has {}",
                student.name(),
                student.num_classes(),
                teacher.name(),
                teacher.num_classes()
            )));
        }
        let plan = StagePlan::resolve(&cfg, student, teacher)?;
        let k = teacher.num_classes();
        let s_in: Vec<i64> = plan.pairs.iter().map(|p| p.student_channels).collect();
        let t_in: Vec<i64> = plan.pairs.iter().map(|p| p.teacher_channels).collect();
        let fused: Vec<i64> = plan.pairs.iter().map(|p| p.fused_channels).collect();
        let out_dims: Vec<i64> = plan
            .loss_stages
            .iter()
            .map(|&i| match cfg.mode {
                TargetMode::TeacherMoments => t_in[i],
                TargetMode::ClassSpaceHeads => k,
            })
            .collect();
        let root = aux / "unikd";
        let use_aff = cfg.variant != Variant::NoAff;
        let student_side = match cfg.variant {
            Variant::Full | Variant::NoAff => StudentSide::Gaussian(StageHeads::new(
                &(&root / "student"),
                &HeadsSpec {
                    in_channels: &s_in,
                    fused: &fused,
                    loss_stages: &plan.loss_stages,
                    out_dims: &out_dims,
                    use_aff,
                    upsample: cfg.upsample,
                    logvar_clamp: cfg.logvar_clamp,
                },
            )?),
            Variant::NoFdp => {
                if let Some(&i) = plan.loss_stages.iter().find(|&&i| fused[i] != t_in[i]) {
                    return Err(KdError::invalid(format!(
                        "unikd: variant no_fdp matches fused maps with the teacher's maps, so \
                         fused_channels must equal the teacher's channels; stage {:?} fuses to {} \
                         but the teacher's {:?} has {}",
                        plan.pairs[i].student_tap, fused[i], plan.pairs[i].teacher_tap, t_in[i]
                    )));
                }
                StudentSide::Fused(AffCascade::new(
                    &(&root / "student" / "aff"),
                    &s_in,
                    &fused,
                    cfg.upsample,
                )?)
            }
        };
        let teacher_heads = if cfg.uses_teacher_heads() {
            let taps = plan.pairs.iter().map(|p| p.teacher_tap.clone()).collect();
            Some(TeacherHeads::new(
                aux.device(),
                taps,
                &HeadsSpec {
                    in_channels: &t_in,
                    fused: &t_in,
                    loss_stages: &plan.loss_stages,
                    out_dims: &out_dims,
                    use_aff,
                    upsample: cfg.upsample,
                    logvar_clamp: cfg.logvar_clamp,
                },
                cfg.prefit.clone(),
            )?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            plan,
            student: student_side,
            teacher_heads,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UnikdConfig {
        &self.cfg
    }

    /// The resolved stages.
    pub fn plan(&self) -> &StagePlan {
        &self.plan
    }

    /// The student's AFF cascade (absent in the "w/o AFF" ablation).
    pub fn student_aff(&self) -> Option<&AffCascade> {
        match &self.student {
            StudentSide::Gaussian(h) => h.aff(),
            StudentSide::Fused(a) => Some(a),
        }
    }

    /// Mode B's teacher-side heads.
    pub fn teacher_heads(&self) -> Option<&TeacherHeads> {
        self.teacher_heads.as_ref()
    }

    /// Mode B's teacher-side heads, mutably (to pre-fit them outside a trainer).
    pub fn teacher_heads_mut(&mut self) -> Option<&mut TeacherHeads> {
        self.teacher_heads.as_mut()
    }

    /// The common weight of the stage losses at `progress`: `β · w(t)`, with `w` the linear
    /// warm-up from 0 at the first step to 1 after `warmup_epochs` epochs.
    pub fn stage_weight(&self, progress: &Progress) -> f64 {
        let epochs_done = progress.fraction() * progress.epochs as f64;
        self.cfg.beta * linear_ramp(epochs_done, self.cfg.warmup_epochs)
    }

    /// Name of loss stage `k`'s term, e.g. `"kl_stage2"` (or `"mse_stage2"` without FDP).
    pub fn stage_term_name(&self, k: usize) -> String {
        let tap = &self.plan.pairs[self.plan.loss_stages[k]].student_tap;
        match self.student {
            StudentSide::Gaussian(_) => format!("kl_{tap}"),
            StudentSide::Fused(_) => format!("mse_{tap}"),
        }
    }

    /// The unweighted stage losses, one scalar (nats, or squared feature units without FDP)
    /// per loss stage, shallow to deep. `train` selects the student modules' BatchNorm mode.
    pub fn stage_losses(&self, s_out: &ModelOutput, t_out: &ModelOutput, train: bool) -> Result<Vec<Tensor>> {
        let s_feats: Vec<&Tensor> = self
            .plan
            .pairs
            .iter()
            .map(|p| s_out.feature(&p.student_tap))
            .collect::<Result<_>>()?;
        let t_feats: Vec<&Tensor> = self
            .plan
            .pairs
            .iter()
            .map(|p| t_out.feature(&p.teacher_tap))
            .collect::<Result<_>>()?;
        match &self.student {
            StudentSide::Gaussian(heads) => {
                let preds = heads.forward(&s_feats, train)?;
                let targets: Vec<(Tensor, Tensor)> = match (&self.teacher_heads, self.cfg.mode) {
                    (Some(th), _) => {
                        if !th.is_fitted() {
                            return Err(KdError::invalid(
                                "unikd mode B: the teacher heads are not pre-fitted yet (the \
                                 trainer fits them at the first epoch start)",
                            ));
                        }
                        let tc = self.cfg.class_space_tau;
                        th.targets(t_out)?
                            .into_iter()
                            .map(|g| (g.mu / tc, g.logvar.exp() / (tc * tc)))
                            .collect()
                    }
                    (None, _) => self
                        .plan
                        .loss_stages
                        .iter()
                        .map(|&i| teacher_moments(t_feats[i], self.cfg.teacher_var_eps))
                        .collect::<Result<_>>()?,
                };
                preds
                    .iter()
                    .zip(&targets)
                    .map(|(p, (mu_t, var_t))| stage_kl(mu_t, var_t, p, self.cfg.direction.into()))
                    .collect()
            }
            StudentSide::Fused(aff) => {
                let out = aff.forward_t(&s_feats, train)?;
                self.plan
                    .loss_stages
                    .iter()
                    .map(|&i| {
                        let t = t_feats[i];
                        let ts = t.size();
                        let a = if ts.len() == 4 {
                            resize(&out.fused[i], ts[2], ts[3], Upsample::Bilinear)
                        } else {
                            out.fused[i].shallow_clone()
                        };
                        hint_loss(&a, t)
                    })
                    .collect()
            }
        }
    }
}

impl Distiller for Unikd {
    fn name(&self) -> String {
        "unikd".into()
    }

    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let t = ctx
            .t_out
            .ok_or_else(|| KdError::invalid("unikd needs a teacher"))?;
        let ce = cross_entropy(&ctx.s_out.logits, ctx.batch.target.labels()?)?;
        let kd = kd_loss(&ctx.s_out.logits, &t.logits, self.cfg.tau)?;
        let mut terms = LossTerms::new()
            .with("ce", ce * self.cfg.ce_weight)
            .with("kd", kd * self.cfg.alpha);
        let w = self.stage_weight(&ctx.progress);
        for (k, l) in self.stage_losses(ctx.s_out, t, true)?.into_iter().enumerate() {
            terms.push(self.stage_term_name(k), l * (w * self.plan.stage_weights[k]));
        }
        Ok(terms)
    }

    fn max_grad_norm(&self) -> Option<f64> {
        self.cfg.grad_clip
    }

    fn on_epoch_start(&mut self, ctx: &EpochCtx<'_>) -> Result<EpochPlan> {
        if let Some(th) = &mut self.teacher_heads {
            if !th.is_fitted() {
                if ctx.teacher.is_none() {
                    return Err(KdError::invalid(
                        "unikd mode B needs the teacher to pre-fit its heads",
                    ));
                }
                th.prefit(&|b| ctx.teacher_output(b), ctx.train_set.len(), ctx.eval_batch)?;
            }
        }
        Ok(EpochPlan::All)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.teacher_heads.as_ref().map(|t| t.state()).unwrap_or_default()
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        match &mut self.teacher_heads {
            Some(t) => t.load_state(state),
            None => Ok(()),
        }
    }

    fn report(&self) -> serde_json::Value {
        let stages: Vec<serde_json::Value> = self
            .plan
            .pairs
            .iter()
            .map(|p| json!([p.student_tap, p.teacher_tap]))
            .collect();
        json!({
            "mode": self.cfg.mode,
            "variant": self.cfg.variant,
            "stages": stages,
            "prefit": self.teacher_heads.as_ref().and_then(|t| t.report()),
        })
    }
}
