//! GDD settings, readable from TOML (`deny_unknown_fields`; errors name the key).

use kd_core::losses::CwdConfig;
use kd_core::{KdError, Result};
use serde::{Deserialize, Serialize};

/// The distribution of the noise added to the adapted student feature.
///
/// TOML: `noise = { kind = "gaussian", std = 1.0 }`, `{ kind = "uniform", low = -1.0, high =
/// 1.0 }` or `{ kind = "none" }`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NoiseKind {
    /// `N(0, std²)`; the released code uses `std = 1`, not scaled to the feature magnitude.
    Gaussian {
        /// Standard deviation, `>= 0`.
        std: f64,
    },
    /// `U[low, high)`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound, `>= low`.
        high: f64,
    },
    /// No noise: the generator sees the adapted feature itself.
    None,
}

impl Default for NoiseKind {
    /// `Gaussian { std: 1.0 }`, the released code's `N(0, 1)`.
    fn default() -> Self {
        NoiseKind::Gaussian { std: 1.0 }
    }
}

impl NoiseKind {
    fn validate(&self) -> Result<()> {
        match *self {
            NoiseKind::Gaussian { std } if !(std.is_finite() && std >= 0.0) => Err(KdError::invalid(
                format!("noise.std: must be finite and >= 0, got {std}"),
            )),
            NoiseKind::Uniform { low, high } if !(low.is_finite() && high.is_finite() && low <= high) => {
                Err(KdError::invalid(format!(
                    "noise.low, noise.high: must be finite with low <= high, got [{low}, {high}]"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Which dimensions share one noise draw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseShape {
    /// One map per sample, `[B, 1, H, W]`, broadcast over all channels (the released code).
    #[default]
    SharedAcrossChannels,
    /// An independent draw per channel, `[B, C_t, H, W]` (the paper's per-channel notation).
    PerChannel,
}

/// One distilled level: a student tap, the teacher tap it is pulled towards, and its weight α.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GddLevelSpec {
    /// Student tap name, e.g. `"stage4"` or an FPN level.
    pub student_tap: String,
    /// Teacher tap name.
    pub teacher_tap: String,
    /// Loss weight α of this level, `>= 0`.
    pub alpha: f64,
}

/// GDD settings. With `levels` empty (the default) there is one level,
/// `(student_tap, teacher_tap, alpha)`, as in the segmentation configs; a non-empty `levels`
/// list (detection: one entry per FPN level) replaces it, and then `student_tap`,
/// `teacher_tap` and `alpha` must keep their defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GddConfig {
    /// Temperature τ of the spatial softmax (default 4).
    #[serde(default = "default_tau")]
    pub tau: f64,
    /// Loss weight α of the single level (default 145, the PSPNet-R18 config).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Noise distribution (default `Gaussian { std: 1 }`).
    #[serde(default)]
    pub noise: NoiseKind,
    /// Noise sharing (default one map shared by all channels).
    #[serde(default)]
    pub noise_shape: NoiseShape,
    /// Student tap of the single level (default `"stage4"`).
    #[serde(default = "default_tap")]
    pub student_tap: String,
    /// Teacher tap of the single level (default `"stage4"`).
    #[serde(default = "default_tap")]
    pub teacher_tap: String,
    /// Explicit levels, replacing the single level when non-empty (default empty).
    #[serde(default)]
    pub levels: Vec<GddLevelSpec>,
    /// Channel-wise distillation of the logits on top (default off, as in the released
    /// segmentation configs, `use_logit = False`).
    #[serde(default)]
    pub logit_cwd: Option<CwdConfig>,
}

fn default_tau() -> f64 {
    4.0
}
fn default_alpha() -> f64 {
    145.0
}
fn default_tap() -> String {
    "stage4".into()
}

impl Default for GddConfig {
    /// The PSPNet-R18 ← PSPNet-R101 config: [`GddConfig::pspnet_r18`].
    fn default() -> Self {
        Self {
            tau: default_tau(),
            alpha: default_alpha(),
            noise: NoiseKind::default(),
            noise_shape: NoiseShape::default(),
            student_tap: default_tap(),
            teacher_tap: default_tap(),
            levels: Vec::new(),
            logit_cwd: None,
        }
    }
}

impl GddConfig {
    /// PSPNet-R18 student, PSPNet-R101 teacher: τ = 4, α = 145 on `stage4`.
    pub fn pspnet_r18() -> Self {
        Self::default()
    }

    /// DeepLabV3-R18 student, PSPNet-R101 teacher: τ = 4, α = 175 on `stage4`.
    pub fn deeplabv3_r18() -> Self {
        Self {
            alpha: 175.0,
            ..Self::default()
        }
    }

    /// The levels to distil: `levels` when given, else the single
    /// `(student_tap, teacher_tap, alpha)` level. Validates every knob; errors name the key.
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
        let bad = |key: &str, msg: String| Err(KdError::invalid(format!("{key}: {msg}")));
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return bad("tau", format!("must be finite and > 0, got {}", self.tau));
        }
        check_alpha("alpha", self.alpha)?;
        self.noise.validate()?;
        if let Some(c) = &self.logit_cwd {
            c.validate()
                .map_err(|e| KdError::invalid(format!("logit_cwd.{e}")))?;
        }
        if !self.levels.is_empty() {
            let defaults = (default_alpha(), default_tap());
            if self.alpha != defaults.0 || self.student_tap != defaults.1 || self.teacher_tap != defaults.1 {
                return bad(
                    "levels",
                    "give either levels or student_tap/teacher_tap/alpha, not both".into(),
                );
            }
            for (i, l) in self.levels.iter().enumerate() {
                check_alpha(&format!("levels[{i}].alpha"), l.alpha)?;
            }
        }
        Ok(())
    }
}

/// `levels` when non-empty, else the single level `(student_tap, teacher_tap, alpha)`: the rule
/// GDD's and MGD's settings share.
pub(crate) fn single_or_levels(
    levels: &[GddLevelSpec],
    student_tap: &str,
    teacher_tap: &str,
    alpha: f64,
) -> Vec<GddLevelSpec> {
    if levels.is_empty() {
        return vec![GddLevelSpec {
            student_tap: student_tap.into(),
            teacher_tap: teacher_tap.into(),
            alpha,
        }];
    }
    levels.to_vec()
}

fn check_alpha(key: &str, alpha: f64) -> Result<()> {
    if !(alpha.is_finite() && alpha >= 0.0) {
        return Err(KdError::invalid(format!(
            "{key}: must be finite and >= 0, got {alpha}"
        )));
    }
    Ok(())
}
