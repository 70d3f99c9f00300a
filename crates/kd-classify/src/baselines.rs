//! The classic baselines every KD library needs, as distillers: plain cross-entropy (no KD),
//! Hinton KD (with and without its label term) and FitNets. They double as the reference
//! implementations of the trait.

use serde::{Deserialize, Serialize};
use tch::nn;

use kd_core::distill::{Distiller, LossTerms, StepCtx, TaskLoss};
use kd_core::losses::fitnets::{hint_loss, HintAdapter};
use kd_core::losses::kd::{cross_entropy, kd_loss};
use kd_core::models::Model;
use kd_core::{KdError, Result};

/// Training with labels only: the "student (no KD)" row, and how teachers are trained.
#[derive(Debug, Default)]
pub struct NoKd;

impl Distiller for NoKd {
    fn name(&self) -> String {
        "none".into()
    }
    fn needs_teacher(&self) -> bool {
        false
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let ce = cross_entropy(&ctx.s_out.logits, ctx.batch.target.labels()?)?;
        Ok(LossTerms::new().with("ce", ce))
    }
}

impl TaskLoss for NoKd {
    /// `"ce"`: the cross-entropy on the batch's class labels.
    fn task_terms(&self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let ce = cross_entropy(&ctx.s_out.logits, ctx.batch.target.labels()?)?;
        Ok(LossTerms::new().with("ce", ce))
    }
}

/// Hinton KD settings: `L = ce_weight·CE + kd_weight·τ²·KL(p_T^τ ‖ p_S^τ)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdConfig {
    /// Temperature τ (4 in the CIFAR-100 benchmark).
    pub tau: f64,
    /// Weight of the cross-entropy term (0.1 in the benchmark).
    pub ce_weight: f64,
    /// Weight of the τ²-scaled KL term (0.9 in the benchmark).
    pub kd_weight: f64,
}

impl KdConfig {
    /// Fails unless τ is finite and positive and both weights are finite, non-negative and not
    /// both zero.
    pub fn validate(&self) -> Result<()> {
        kd_core::losses::check::temperature("kd", self.tau)?;
        check_weights(
            "kd",
            &[("ce_weight", self.ce_weight), ("kd_weight", self.kd_weight)],
        )
    }
}

/// Fails unless every weight is finite and non-negative and one of them is positive.
fn check_weights(method: &str, weights: &[(&str, f64)]) -> Result<()> {
    if let Some((k, w)) = weights.iter().find(|(_, w)| !(w.is_finite() && *w >= 0.0)) {
        return Err(KdError::invalid(format!(
            "{method}: {k} = {w}: a finite weight ≥ 0"
        )));
    }
    if weights.iter().all(|(_, w)| *w == 0.0) {
        let names: Vec<&str> = weights.iter().map(|(k, _)| *k).collect();
        return Err(KdError::invalid(format!(
            "{method}: {} are all 0: nothing to train on",
            names.join(", ")
        )));
    }
    Ok(())
}

/// Hinton et al. (2015) knowledge distillation.
#[derive(Debug)]
pub struct HintonKd {
    cfg: KdConfig,
}

impl HintonKd {
    /// A KD distiller with these settings.
    pub fn new(cfg: KdConfig) -> Self {
        Self { cfg }
    }
}

impl Distiller for HintonKd {
    fn name(&self) -> String {
        "kd".into()
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let t = ctx.t_out.ok_or_else(|| KdError::invalid("kd needs a teacher"))?;
        let ce = cross_entropy(&ctx.s_out.logits, ctx.batch.target.labels()?)?;
        let kd = kd_loss(&ctx.s_out.logits, &t.logits, self.cfg.tau)?;
        Ok(LossTerms::new()
            .with("ce", ce * self.cfg.ce_weight)
            .with("kd", kd * self.cfg.kd_weight))
    }
}

/// Hinton KD with no cross-entropy term: `kd_weight·τ²·KL(p_T^τ ‖ p_S^τ)`. Unlike
/// [`HintonKd`] at `ce_weight = 0`, it never touches the labels, so it trains on unlabelled
/// (label −1) data such as a web pool.
#[derive(Debug)]
pub struct LabelFreeKd(pub KdConfig);

impl Distiller for LabelFreeKd {
    fn name(&self) -> String {
        "kd".into()
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let t = ctx.t_out.ok_or_else(|| KdError::invalid("kd needs a teacher"))?;
        let kd = kd_loss(&ctx.s_out.logits, &t.logits, self.0.tau)?;
        Ok(LossTerms::new().with("kd", kd * self.0.kd_weight))
    }
}

/// FitNets settings in the single-stage CRD form: `L = ce_weight·CE + beta·MSE(F_T, r(F_S))`,
/// with `r` CRD's `ConvReg`: 1×1 conv, BatchNorm and, unless `relu = false`, a ReLU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitNetsConfig {
    /// Weight of the hint loss (100 in the benchmark).
    pub beta: f64,
    /// Weight of the cross-entropy term (1 in the benchmark).
    #[serde(default = "one")]
    pub ce_weight: f64,
    /// Student tap used as the guided layer (e.g. `"stage2"`).
    pub student_tap: String,
    /// Teacher tap used as the hint (e.g. `"stage2"`).
    pub teacher_tap: String,
    /// Build the 1×1 conv + BN (+ ReLU) regressor even when the shapes already agree (the
    /// benchmark does).
    #[serde(default = "yes")]
    pub force_adapter: bool,
    /// End the regressor with a ReLU: CRD's `ConvReg(use_relu=...)`, `true` there by default
    /// and here. Has no effect when no regressor is built.
    #[serde(default = "yes")]
    pub relu: bool,
}

fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

/// Romero et al. (2015) hint learning with a learned regressor.
pub struct FitNets {
    cfg: FitNetsConfig,
    adapter: Option<HintAdapter>,
}

impl FitNets {
    /// Builds the regressor under `aux` (trained, never exported), checking that both taps exist.
    pub fn new(
        cfg: FitNetsConfig,
        aux: &nn::Path<'_>,
        student: &dyn Model,
        teacher: &dyn Model,
    ) -> Result<Self> {
        check_weights("fitnets", &[("beta", cfg.beta), ("ce_weight", cfg.ce_weight)])?;
        let c_s = tap_channels(student, &cfg.student_tap)?;
        let c_t = tap_channels(teacher, &cfg.teacher_tap)?;
        let adapter = HintAdapter::maybe_new(&(aux / "fitnets_regressor"), c_s, c_t, cfg.force_adapter)
            .map(|a| a.with_relu(cfg.relu));
        Ok(Self { cfg, adapter })
    }
}

/// Channel count of the tap `name` of `model`, or an error listing the taps.
pub fn tap_channels(model: &dyn Model, name: &str) -> Result<i64> {
    model
        .taps()
        .iter()
        .find(|t| t.name == name)
        .map(|t| t.channels)
        .ok_or_else(|| {
            let names: Vec<&str> = model.taps().iter().map(|t| t.name.as_str()).collect();
            KdError::invalid(format!(
                "{} has no tap {name:?}; its taps are {names:?}",
                model.name()
            ))
        })
}

impl Distiller for FitNets {
    fn name(&self) -> String {
        "fitnets".into()
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let t = ctx
            .t_out
            .ok_or_else(|| KdError::invalid("fitnets needs a teacher"))?;
        let fs = ctx.s_out.feature(&self.cfg.student_tap)?;
        let ft = t.feature(&self.cfg.teacher_tap)?;
        let guided = match &self.adapter {
            Some(a) => a.forward_t(fs, true)?,
            None => fs.shallow_clone(),
        };
        let hint = hint_loss(&guided, ft)?;
        let ce = cross_entropy(&ctx.s_out.logits, ctx.batch.target.labels()?)?;
        Ok(LossTerms::new()
            .with("ce", ce * self.cfg.ce_weight)
            .with("hint", hint * self.cfg.beta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitnets_relu_defaults_to_on_and_false_is_honoured() {
        let base = "beta = 100.0\nstudent_tap = \"stage2\"\nteacher_tap = \"stage2\"\n";
        let default: FitNetsConfig = toml::from_str(base).unwrap();
        assert!(default.relu && default.force_adapter);
        assert_eq!(default.ce_weight, 1.0);
        let off: FitNetsConfig = toml::from_str(&format!("{base}relu = false\n")).unwrap();
        assert!(!off.relu);
        assert!(toml::from_str::<FitNetsConfig>(&format!("{base}use_relu = false\n")).is_err());
        // The flag reaches the regressor the distiller builds.
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let spec = kd_core::models::ModelSpec {
            in_channels: 3,
            num_classes: 10,
        };
        let net = crate::models::build("resnet8", &(vs.root() / "net"), spec).unwrap();
        for (i, (cfg, want)) in [(default, true), (off, false)].into_iter().enumerate() {
            let f = FitNets::new(cfg, &(vs.root() / "aux" / i), net.as_ref(), net.as_ref()).unwrap();
            assert_eq!(f.adapter.as_ref().unwrap().relu(), want);
        }
    }

    #[test]
    fn kd_settings_out_of_range_are_errors_naming_the_key() {
        let ok = KdConfig {
            tau: 4.0,
            ce_weight: 0.1,
            kd_weight: 0.9,
        };
        ok.validate().unwrap();
        let bad = |c: KdConfig| c.validate().unwrap_err().to_string();
        assert!(bad(KdConfig {
            tau: -4.0,
            ..ok.clone()
        })
        .contains("-4"));
        assert!(bad(KdConfig {
            tau: f64::NAN,
            ..ok.clone()
        })
        .contains("NaN"));
        assert!(bad(KdConfig {
            kd_weight: -0.5,
            ..ok.clone()
        })
        .contains("kd_weight = -0.5"));
        assert!(bad(KdConfig {
            ce_weight: 0.0,
            kd_weight: 0.0,
            ..ok
        })
        .contains("all 0"));
    }
}
