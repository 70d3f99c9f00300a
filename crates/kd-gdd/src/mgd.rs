//! MGD (Yang et al., *Masked Generative Distillation*, ECCV 2022): GDD's direct ancestor and
//! the comparison GDD's paper makes. The same adapter and generator ([`Generator`]), but the
//! adapted student map is corrupted by a random spatial mask instead of noise, and the
//! generated map is matched to the teacher's by a summed squared error:
//!
//! ```text
//! M_{b,i} = 0 with probability λ, else 1      one draw per position, shared by all channels
//! L = α · (1/B) Σ_{b,c,i} (G(A(S) ⊙ M)_{b,c,i} − T_{b,c,i})²
//! ```
//!
//! As released (`yzd-v/MGD`, `FeatureLoss.get_dis_loss` in its `mmseg`/`mmdet` loss files):
//! `mat = rand(N, 1, H, W)`, zero where `mat > 1 − λ`; `MSELoss(reduction = "sum") / N`; α =
//! 2e-5 everywhere; λ = 0.75 for segmentation (on the last backbone stage, plus CWD on the
//! logits at τ = 4, weight 3, `use_logit = True`) and 0.65 for detection (each FPN level).

use kd_core::distill::{Distiller, LossTerms, StepCtx, TaskLoss};
use kd_core::losses::{check, CwdConfig};
use kd_core::models::{Model, ModelOutput, Tap};
use kd_core::{KdError, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::config::{single_or_levels, GddLevelSpec};
use crate::distiller::{build_levels, feature_terms, level_losses, with_task_terms};
use crate::generator::Generator;

/// MGD's loss of a generated map against the teacher's, without α:
/// `(1/B) Σ_{b,c,h,w} (generated − teacher)²`.
///
/// `generated`, `teacher`: `[B, C, H, W]` of one shape (a mismatch is a [`KdError::Shape`]).
/// Returns a 0-dim tensor in squared feature units, computed in fp32 (fp64 for fp64 inputs).
/// The teacher is detached.
pub fn mgd_loss(generated: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    const OP: &str = "mgd";
    check::pair(
        OP,
        "[B, C, H, W]",
        4,
        "generated feature",
        generated,
        "teacher feature",
        teacher,
    )?;
    check::non_empty(OP, "generated feature", generated)?;
    let kind = check::work_kind(&[generated, teacher]);
    let d = generated.to_kind(kind) - teacher.detach().to_kind(kind);
    let b = generated.size()[0] as f64;
    Ok(d.square().sum(kind) / b)
}

/// MGD settings. As for GDD, `levels` empty (the default) means one level
/// `(student_tap, teacher_tap, alpha)`; a non-empty list (detection: one per FPN level)
/// replaces it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MgdConfig {
    /// Loss weight α of the single level (released: 2e-5).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Masked fraction λ of the positions, in `[0, 1]` (released: 0.75 segmentation, 0.65
    /// detection).
    #[serde(default = "default_lambda")]
    pub lambda: f64,
    /// Student tap of the single level (default `"stage4"`).
    #[serde(default = "default_tap")]
    pub student_tap: String,
    /// Teacher tap of the single level (default `"stage4"`).
    #[serde(default = "default_tap")]
    pub teacher_tap: String,
    /// Explicit levels, replacing the single level when non-empty.
    #[serde(default)]
    pub levels: Vec<GddLevelSpec>,
    /// CWD on the dense logits on top (default off; the released segmentation configs have it
    /// at τ = 4, weight 3: [`MgdConfig::segmentation`]).
    #[serde(default)]
    pub logit_cwd: Option<CwdConfig>,
}

fn default_alpha() -> f64 {
    2e-5
}
fn default_lambda() -> f64 {
    0.75
}
fn default_tap() -> String {
    "stage4".into()
}

impl Default for MgdConfig {
    /// What an empty TOML table gives: α = 2e-5, λ = 0.75 on `stage4`, no logit term.
    fn default() -> Self {
        Self {
            alpha: default_alpha(),
            lambda: default_lambda(),
            student_tap: default_tap(),
            teacher_tap: default_tap(),
            levels: Vec::new(),
            logit_cwd: None,
        }
    }
}

impl MgdConfig {
    /// The released segmentation config (PSPNet-R18 and DeepLabV3-R18 ← PSPNet-R101):
    /// α = 2e-5, λ = 0.75 on `stage4`, and `use_logit = True`: CWD on the logits at τ = 4,
    /// weight 3.
    pub fn segmentation() -> Self {
        Self {
            logit_cwd: Some(CwdConfig::paper()),
            ..Self::default()
        }
    }

    /// The released detection setting on the given FPN taps (same name on both networks):
    /// α = 2e-5 per level, λ = 0.65, no logit term.
    pub fn detection(taps: &[&str]) -> Self {
        Self {
            lambda: 0.65,
            levels: taps
                .iter()
                .map(|t| GddLevelSpec {
                    student_tap: t.to_string(),
                    teacher_tap: t.to_string(),
                    alpha: default_alpha(),
                })
                .collect(),
            ..Self::default()
        }
    }

    /// The levels to distil; validates every knob (errors name the key).
    pub fn resolved_levels(&self) -> Result<Vec<GddLevelSpec>> {
        self.validate()?;
        Ok(single_or_levels(
            &self.levels,
            &self.student_tap,
            &self.teacher_tap,
            self.alpha,
        ))
    }

    /// Checks every knob; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(KdError::invalid(format!("mgd: {key}: {msg}")));
        if !(self.lambda.is_finite() && (0.0..=1.0).contains(&self.lambda)) {
            return bad(
                "lambda",
                format!("a masked fraction in [0, 1], got {}", self.lambda),
            );
        }
        let alphas = std::iter::once(("alpha".to_string(), self.alpha)).chain(
            self.levels
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("levels[{i}].alpha"), l.alpha)),
        );
        for (key, a) in alphas {
            if !(a.is_finite() && a >= 0.0) {
                return bad(&key, format!("must be finite and >= 0, got {a}"));
            }
        }
        if let Some(c) = &self.logit_cwd {
            c.validate()
                .map_err(|e| KdError::invalid(format!("mgd: logit_cwd.{e}")))?;
        }
        let single = (
            self.alpha != default_alpha(),
            self.student_tap != default_tap(),
            self.teacher_tap != default_tap(),
        );
        if !self.levels.is_empty() && (single.0 || single.1 || single.2) {
            return bad(
                "levels",
                "give either levels or student_tap/teacher_tap/alpha, not both".into(),
            );
        }
        Ok(())
    }
}

/// One MGD level: `L = α · mgd_loss(G(A(S) ⊙ M), T)`, with [`Generator`]'s variables
/// (`align.*` when `C_s ≠ C_t`, `generation.0.*`, `generation.2.*`).
#[derive(Debug)]
pub struct MgdLevel {
    net: Generator,
    alpha: f64,
    lambda: f64,
}

impl MgdLevel {
    /// Builds the adapter (iff `c_s ≠ c_t`) and the generator under `p`.
    pub fn new(p: &nn::Path<'_>, c_s: i64, c_t: i64, alpha: f64, lambda: f64) -> Result<Self> {
        if !(alpha.is_finite() && alpha >= 0.0 && lambda.is_finite() && (0.0..=1.0).contains(&lambda)) {
            return Err(KdError::invalid(format!(
                "mgd level: alpha must be finite and >= 0 and lambda in [0, 1], got alpha = {alpha}, lambda = {lambda}"
            )));
        }
        Ok(Self {
            net: Generator::new(p, "mgd level", c_s, c_t)?,
            alpha,
            lambda,
        })
    }

    /// The adapter and generator.
    pub fn generator(&self) -> &Generator {
        &self.net
    }

    /// A fresh mask for maps of shape `[B, C, H, W]` like `like`: `[B, 1, H, W]` of `like`'s
    /// kind and device, 0 at a fraction λ of the positions in expectation (drawn from
    /// libtorch's generator: `u ~ U[0, 1)`, 0 where `u > 1 − λ`, as released).
    pub fn draw_mask(&self, like: &Tensor) -> Tensor {
        let s = like.size();
        let u = Tensor::rand([s[0], 1, s[2], s[3]], (like.kind(), like.device()));
        u.le(1.0 - self.lambda).to_kind(like.kind())
    }

    /// The level's loss with a given mask `[B, 1, H, W]` (1 keeps a position, 0 masks it):
    /// `α · (1/B) Σ (G(A(S) ⊙ M) − T)²`, a 0-dim tensor. `s`: `[B, C_s, H, W]`; `t`:
    /// `[B, C_t, H, W]`; shapes are checked first and named in the error.
    pub fn forward_with_mask(&self, s: &Tensor, t: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.net.check_pair("mgd level", s, t)?;
        self.masked_loss(s, t, mask)
    }

    /// [`MgdLevel::forward_with_mask`] once `s` and `t` are checked.
    fn masked_loss(&self, s: &Tensor, t: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let ss = s.size();
        if mask.size() != [ss[0], 1, ss[2], ss[3]] {
            return Err(KdError::BadShape {
                op: "mgd level".into(),
                name: "mask".into(),
                shape: mask.size(),
                expected: format!("[{}, 1, {}, {}]", ss[0], ss[2], ss[3]),
            });
        }
        let a = self.net.adapt(s);
        let generated = self.net.generate(&(a * mask));
        Ok(mgd_loss(&generated, t)? * self.alpha)
    }

    /// The level's loss with a fresh mask ([`MgdLevel::draw_mask`]).
    pub fn forward(&self, s: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.net.check_pair("mgd level", s, t)?;
        let mask = self.draw_mask(t);
        self.masked_loss(s, t, &mask)
    }
}

/// Masked generative distillation on one or more taps, on top of the caller's task loss.
///
/// Terms: the task terms, `"mgd"` (the sum of every level's loss) and `"cwd"` when
/// `logit_cwd` is set (on [`ModelOutput::dense_logits`]). Levels live under `<aux>/mgd/<i>`.
#[derive(Debug)]
pub struct Mgd {
    cfg: MgdConfig,
    task: Box<dyn TaskLoss>,
    levels: Vec<(GddLevelSpec, MgdLevel)>,
}

impl Mgd {
    /// One level per entry of [`MgdConfig::resolved_levels`], with the channel counts of the
    /// named taps. Fails on an invalid config, a tap that does not exist (the message lists
    /// the taps) or a tap pair at different strides.
    pub fn new(
        aux: &nn::Path<'_>,
        cfg: MgdConfig,
        student_taps: &[Tap],
        teacher_taps: &[Tap],
        task: Box<dyn TaskLoss>,
    ) -> Result<Self> {
        let specs = cfg.resolved_levels()?;
        let lambda = cfg.lambda;
        let levels = build_levels(
            &(aux / "mgd"),
            "mgd",
            specs,
            student_taps,
            teacher_taps,
            |p, c_s, c_t, alpha| MgdLevel::new(p, c_s, c_t, alpha, lambda),
        )?;
        Ok(Self { cfg, task, levels })
    }

    /// [`Mgd::new`] with the taps of `student` and `teacher`.
    pub fn for_models(
        aux: &nn::Path<'_>,
        cfg: MgdConfig,
        student: &dyn Model,
        teacher: &dyn Model,
        task: Box<dyn TaskLoss>,
    ) -> Result<Self> {
        Self::new(aux, cfg, student.taps(), teacher.taps(), task)
    }

    /// The settings.
    pub fn config(&self) -> &MgdConfig {
        &self.cfg
    }

    /// The levels, in config order.
    pub fn levels(&self) -> &[(GddLevelSpec, MgdLevel)] {
        &self.levels
    }

    /// The distillation terms alone: `"mgd"` and, when configured, `"cwd"`.
    pub fn distill_terms(&self, s_out: &ModelOutput, t_out: &ModelOutput) -> Result<LossTerms> {
        let losses = level_losses(&self.levels, s_out, t_out, |l, s, t| l.forward(s, t))?;
        feature_terms("mgd", losses, self.cfg.logit_cwd.as_ref(), s_out, t_out)
    }
}

impl Distiller for Mgd {
    fn name(&self) -> String {
        "mgd".into()
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let t_out = ctx.t_out.ok_or_else(|| KdError::invalid("mgd needs a teacher"))?;
        with_task_terms(self.task.as_ref(), ctx, self.distill_terms(ctx.s_out, t_out)?)
    }
}
