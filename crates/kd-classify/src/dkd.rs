//! Decoupled KD (Zhao et al., CVPR 2022) as a distiller: the logit baseline that CIFAR-100 and
//! ImageNet tables report beside Hinton KD.
//!
//! The loss is the authors' `mdistiller` recipe (`mdistiller/distillers/DKD.py`):
//! `L = ce_weight · CE + w(epoch) · (α · TCKD + β · NCKD)` with the kernel
//! [`kd_core::losses::dkd`] and a linear warm-up `w = min(epoch / warmup, 1)` of the DKD term.
//! mdistiller counts epochs from 1 and keeps `w` fixed within an epoch; short schedules (the
//! quick tables train one to three epochs) need a warm-up shorter than an epoch, so the
//! warm-up can also advance per step ([`Warmup::Step`]).

use serde::{Deserialize, Serialize};

use kd_core::distill::{Distiller, LossTerms, Progress, StepCtx};
use kd_core::losses::dkd::dkd_terms;
use kd_core::losses::kd::cross_entropy;
use kd_core::{KdError, Result};

/// How the warm-up of the DKD term advances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    /// mdistiller: `w = min(e / warmup_epochs, 1)` with `e` the 1-based epoch, fixed within it.
    #[default]
    Epoch,
    /// `w = min(t / warmup_epochs, 1)` with `t` the epochs done including this step, so
    /// `warmup_epochs` may be a fraction of an epoch.
    Step,
}

/// DKD settings (TOML: `{ kind = "dkd", alpha = 1.0, beta = 8.0, tau = 4.0 }`; the defaults are
/// mdistiller's CIFAR-100 `CFG.DKD`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkdConfig {
    /// Weight α of the target-class term TCKD (mdistiller: 1).
    #[serde(default = "one")]
    pub alpha: f64,
    /// Weight β of the non-target term NCKD (mdistiller CIFAR-100: 8 for most pairs; ImageNet
    /// ResNet-34 → ResNet-18: 0.5).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Temperature τ (CIFAR-100: 4; ImageNet: 1).
    #[serde(default = "default_tau")]
    pub tau: f64,
    /// Weight of the cross-entropy on the labels (mdistiller: 1).
    #[serde(default = "one")]
    pub ce_weight: f64,
    /// Epochs over which the DKD term ramps up (CIFAR-100: 20 of 240; ImageNet: 1 of 100);
    /// `0` = no warm-up.
    #[serde(default = "default_warmup")]
    pub warmup_epochs: f64,
    /// How the warm-up advances (default per epoch, as mdistiller).
    #[serde(default)]
    pub warmup: Warmup,
}

fn one() -> f64 {
    1.0
}
fn default_beta() -> f64 {
    8.0
}
fn default_tau() -> f64 {
    4.0
}
fn default_warmup() -> f64 {
    20.0
}

impl Default for DkdConfig {
    /// mdistiller's CIFAR-100 settings: α = 1, β = 8, τ = 4, CE weight 1, 20 warm-up epochs.
    fn default() -> Self {
        Self {
            alpha: 1.0,
            beta: default_beta(),
            tau: default_tau(),
            ce_weight: 1.0,
            warmup_epochs: default_warmup(),
            warmup: Warmup::Epoch,
        }
    }
}

impl DkdConfig {
    /// mdistiller's ImageNet ResNet-34 → ResNet-18 settings: β = 0.5, τ = 1, one warm-up epoch.
    pub fn imagenet() -> Self {
        Self {
            beta: 0.5,
            tau: 1.0,
            warmup_epochs: 1.0,
            ..Self::default()
        }
    }

    /// Checks every knob; errors name the key.
    pub fn validate(&self) -> Result<()> {
        kd_core::losses::check::temperature("dkd", self.tau)?;
        for (key, v) in [
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("ce_weight", self.ce_weight),
            ("warmup_epochs", self.warmup_epochs),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(KdError::invalid(format!("dkd: {key} = {v}: a finite value >= 0")));
            }
        }
        if self.alpha == 0.0 && self.beta == 0.0 {
            return Err(KdError::invalid(
                "dkd: alpha and beta are both 0: no distillation term",
            ));
        }
        Ok(())
    }

    /// The warm-up factor `w ∈ [0, 1]` of the DKD term at `progress`.
    pub fn warmup_factor(&self, progress: &Progress) -> f64 {
        if self.warmup_epochs == 0.0 {
            return 1.0;
        }
        let t = match self.warmup {
            Warmup::Epoch => (progress.epoch + 1) as f64,
            Warmup::Step => {
                let per = progress.steps_per_epoch.max(1) as f64;
                (progress.global_step + 1) as f64 / per
            }
        };
        (t / self.warmup_epochs).min(1.0)
    }
}

/// The DKD distiller. Terms: `"ce"` (weighted), `"tckd"` and `"nckd"` (each weighted by α or β
/// and the warm-up).
#[derive(Debug)]
pub struct Dkd {
    cfg: DkdConfig,
}

impl Dkd {
    /// A DKD distiller; fails on an invalid config (the message names the key).
    pub fn new(cfg: DkdConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg })
    }

    /// The settings.
    pub fn config(&self) -> &DkdConfig {
        &self.cfg
    }
}

impl Distiller for Dkd {
    fn name(&self) -> String {
        "dkd".into()
    }

    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let t = ctx.t_out.ok_or_else(|| KdError::invalid("dkd needs a teacher"))?;
        let labels = ctx.batch.target.labels()?;
        let ce = cross_entropy(&ctx.s_out.logits, labels)?;
        let (tckd, nckd) = dkd_terms(&ctx.s_out.logits, &t.logits, labels, self.cfg.tau)?;
        let w = self.cfg.warmup_factor(&ctx.progress);
        Ok(LossTerms::new()
            .with("ce", ce * self.cfg.ce_weight)
            .with("tckd", tckd * (w * self.cfg.alpha))
            .with("nckd", nckd * (w * self.cfg.beta)))
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use kd_core::data::{Batch, Target};
    use kd_core::models::{Model, ModelOutput};

    fn progress(epoch: usize, global_step: usize) -> Progress {
        Progress {
            epoch,
            epochs: 240,
            global_step,
            steps_per_epoch: 10,
        }
    }

    #[test]
    fn the_warm_up_follows_mdistiller_per_epoch_and_can_run_per_step() {
        let c = DkdConfig::default();
        // Epoch numbers 1, 10, 20, 21 (1-based) → 1/20, 1/2, 1, 1; fixed within an epoch.
        assert_eq!(c.warmup_factor(&progress(0, 0)), 0.05);
        assert_eq!(c.warmup_factor(&progress(0, 9)), 0.05);
        assert_eq!(c.warmup_factor(&progress(9, 95)), 0.5);
        assert_eq!(c.warmup_factor(&progress(19, 199)), 1.0);
        assert_eq!(c.warmup_factor(&progress(20, 200)), 1.0);
        let step = DkdConfig {
            warmup_epochs: 0.5,
            warmup: Warmup::Step,
            ..DkdConfig::default()
        };
        // 10 steps per epoch: step 0 has done 0.1 epochs of 0.5.
        assert!((step.warmup_factor(&progress(0, 0)) - 0.2).abs() < 1e-12);
        assert!((step.warmup_factor(&progress(0, 3)) - 0.8).abs() < 1e-12);
        assert_eq!(step.warmup_factor(&progress(0, 4)), 1.0);
        let none = DkdConfig {
            warmup_epochs: 0.0,
            ..DkdConfig::default()
        };
        assert_eq!(none.warmup_factor(&progress(0, 0)), 1.0);
    }

    #[test]
    fn the_terms_are_weighted_ce_tckd_and_nckd() {
        // One sample, three classes, τ = 1 (ImageNet), target class 0:
        // student z = [0, 0, 0] → p_S = [1/3, 1/3, 1/3]; teacher z = [ln 2, ln 2, 0] →
        // p_T = [2/5, 2/5, 1/5]. CE = ln 3.
        // TCKD = 2/5 ln(6/5) + 3/5 ln(9/10); NCKD: p̂_T = [2/3, 1/3], p̂_S = [1/2, 1/2]
        // → 2/3 ln(4/3) + 1/3 ln(2/3). Epoch 1 of a 1-epoch warm-up: w = 1.
        let l2 = 2f64.ln();
        let s = Tensor::from_slice(&[0.0f64, 0.0, 0.0]).view([1, 3]);
        let t = Tensor::from_slice(&[l2, l2, 0.0]).view([1, 3]);
        let batch = Batch {
            x: Tensor::zeros([1, 1], (Kind::Double, Device::Cpu)),
            target: Target::Labels(Tensor::from_slice(&[0i64])),
            index: Tensor::from_slice(&[0i64]),
            indices: vec![0],
        };
        let out = |z: &Tensor| ModelOutput {
            logits: z.shallow_clone(),
            aux_logits: None,
            features: Vec::new(),
            pooled: None,
            heads: Vec::new(),
        };
        let (s_out, t_out) = (out(&s), out(&t));
        struct Dummy;
        impl Model for Dummy {
            fn name(&self) -> &str {
                "dummy"
            }
            fn forward_t(&self, _x: &Tensor, _train: bool) -> ModelOutput {
                unreachable!()
            }
            fn taps(&self) -> &[kd_core::models::Tap] {
                &[]
            }
            fn num_classes(&self) -> i64 {
                3
            }
            fn in_channels(&self) -> i64 {
                1
            }
        }
        let ctx = StepCtx {
            batch: &batch,
            student: &Dummy,
            teacher: Some(&Dummy),
            s_out: &s_out,
            t_out: Some(&t_out),
            progress: progress(0, 0),
        };
        let mut d = Dkd::new(DkdConfig {
            ce_weight: 0.5,
            ..DkdConfig::imagenet()
        })
        .unwrap();
        let terms = d.loss(&ctx).unwrap();
        let got: Vec<(String, f64)> = terms
            .terms()
            .iter()
            .map(|(n, v)| (n.clone(), v.double_value(&[])))
            .collect();
        let tckd = 0.4 * 1.2f64.ln() + 0.6 * 0.9f64.ln();
        let nckd = 2.0 / 3.0 * (4.0f64 / 3.0).ln() + (2.0f64 / 3.0).ln() / 3.0;
        let want = [("ce", 0.5 * 3f64.ln()), ("tckd", tckd), ("nckd", 0.5 * nckd)];
        assert_eq!(got.len(), 3);
        for ((name, v), (want_name, w)) in got.iter().zip(want) {
            assert_eq!(name, want_name);
            assert!((v - w).abs() < 1e-12, "{name}: {v} vs {w}");
        }
    }

    #[test]
    fn configs_read_from_toml_and_bad_values_name_their_key() {
        let c: DkdConfig = toml::from_str("").unwrap();
        assert_eq!(c, DkdConfig::default());
        assert_eq!(
            (c.alpha, c.beta, c.tau, c.ce_weight, c.warmup_epochs),
            (1.0, 8.0, 4.0, 1.0, 20.0)
        );
        let i = DkdConfig::imagenet();
        assert_eq!((i.alpha, i.beta, i.tau, i.warmup_epochs), (1.0, 0.5, 1.0, 1.0));
        let s: DkdConfig = toml::from_str("warmup = \"step\"\nwarmup_epochs = 0.1").unwrap();
        assert_eq!(s.warmup, Warmup::Step);
        assert!(toml::from_str::<DkdConfig>("gamma = 1.0").is_err());
        for (cfg, key) in [
            (
                DkdConfig {
                    beta: -1.0,
                    ..DkdConfig::default()
                },
                "beta",
            ),
            (
                DkdConfig {
                    tau: 0.0,
                    ..DkdConfig::default()
                },
                "tau",
            ),
            (
                DkdConfig {
                    warmup_epochs: f64::NAN,
                    ..DkdConfig::default()
                },
                "warmup_epochs",
            ),
            (
                DkdConfig {
                    alpha: 0.0,
                    beta: 0.0,
                    ..DkdConfig::default()
                },
                "alpha and beta",
            ),
        ] {
            assert!(Dkd::new(cfg).unwrap_err().to_string().contains(key), "{key}");
        }
    }
}
