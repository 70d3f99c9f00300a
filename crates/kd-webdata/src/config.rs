//! KD³ settings.
//!
//! Every default is the authors' released training setting; the few choices of ours (marked
//! \[R\] in the crate docs) are fields too, so a different reading can be tried from a config
//! file without touching code. Unknown keys are rejected, and [`Kd3Config::validate`] names the
//! key of every out-of-range value.

use kd_core::{KdError, Result};
use serde::{Deserialize, Serialize};

/// Which web images an epoch trains on (spec §3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionMode {
    /// The combined teacher–student prediction `a(e)·z_T + (1 − a(e))·z_S` against
    /// class-adaptive thresholds (the method).
    #[default]
    Combined,
    /// The same thresholds on the teacher's prediction alone (`a ≡ 1`): the DFND-style row.
    TeacherOnly,
    /// Keep every image in every epoch (the "without selection" ablation).
    None,
    /// Per chunk of `selection_batch` images (in a seeded random order), keep the
    /// `⌈top_ratio · chunk⌉` with the highest combined confidence (the DFND batch rule).
    TopRatio,
}

/// Which views of the web images the selection pass scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionViews {
    /// The training loader's augmentation, drawn for the epoch (the released code scores
    /// augmented views).
    #[default]
    Augmented,
    /// Un-augmented images (cheaper when the teacher's outputs are cached).
    Clean,
}

/// The teacher's share `a(e)` of the combined prediction (spec §3.1):
///
/// ```text
/// a(e) = 1 − exp(−sharpness · ((e + 1)/ramp_epochs − 1)²)   for e < cutoff_epoch, else 0
/// ```
///
/// with `e` the 1-based epoch. The released constants assume a 240-epoch run; with
/// `reference_epochs = Some(R)` the run's 1-based epoch is first rescaled to `e · R / E` (`E`
/// the run's epochs), so a run of any length goes from teacher to student over the same
/// fraction of training (\[R\]); `None` reads the constants as absolute epochs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherShare {
    /// Steepness of the decay (5).
    #[serde(default = "default_sharpness")]
    pub sharpness: f64,
    /// Epoch scale of the curve (160).
    #[serde(default = "default_ramp")]
    pub ramp_epochs: f64,
    /// From this (1-based) epoch on the student alone decides (120).
    #[serde(default = "default_cutoff")]
    pub cutoff_epoch: f64,
    /// Length of the run the constants were written for (240); `None`: absolute epochs.
    #[serde(default = "default_reference")]
    pub reference_epochs: Option<f64>,
}

impl Default for TeacherShare {
    fn default() -> Self {
        Self {
            sharpness: default_sharpness(),
            ramp_epochs: default_ramp(),
            cutoff_epoch: default_cutoff(),
            reference_epochs: default_reference(),
        }
    }
}

impl TeacherShare {
    /// `a(e)` at a 1-based epoch `e` in the constants' own units (no rescaling), in `[0, 1]`.
    pub fn value(&self, e: f64) -> f64 {
        if e >= self.cutoff_epoch {
            return 0.0;
        }
        let r = (e + 1.0) / self.ramp_epochs - 1.0;
        1.0 - (-self.sharpness * r * r).exp()
    }

    /// `a` for the 0-based `epoch` of a run of `epochs` epochs, rescaled as the type docs say.
    pub fn at(&self, epoch: usize, epochs: usize) -> f64 {
        let e = (epoch + 1) as f64;
        let e = match self.reference_epochs {
            Some(r) => e * r / epochs.max(1) as f64,
            None => e,
        };
        self.value(e)
    }
}

/// Everything KD³ can be told. `Default` is the spec's §3 setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kd3Config {
    /// Instance-selection rule.
    #[serde(default)]
    pub selection: SelectionMode,
    /// The teacher's share `a(e)` of the combined prediction.
    #[serde(default)]
    pub teacher_share: TeacherShare,
    /// `p_cut` of the class-adaptive thresholds `θ_k = p_cut · σ_k / (2 − σ_k)` (0.95).
    #[serde(default = "default_p_cut")]
    pub p_cut: f64,
    /// Fraction ρ kept per chunk by [`SelectionMode::TopRatio`] (0.5).
    #[serde(default = "default_top_ratio")]
    pub top_ratio: f64,
    /// Images per forward pass of the selection, and the chunk of [`SelectionMode::TopRatio`].
    #[serde(default = "default_selection_batch")]
    pub selection_batch: usize,
    /// Which views the selection scores.
    #[serde(default)]
    pub selection_views: SelectionViews,
    /// Route the student through the projector into the teacher's frozen head (true). False is
    /// the "without the shared head" ablation: the student's own classifier, trained with
    /// Hinton KD on the teacher's logits (the projector still serves the feature alignment).
    #[serde(default = "yes")]
    pub shared_head: bool,
    /// Temperature of the Hinton KD term of the ablation without the shared head (4).
    #[serde(default = "default_kd_tau")]
    pub kd_tau: f64,
    /// Weight of that KD term (1).
    #[serde(default = "one")]
    pub kd_weight: f64,
    /// Bottleneck factor of the projector: its inner width is `C_t / factor` (2).
    #[serde(default = "default_factor")]
    pub projector_factor: i64,
    /// Weight of the disagreement-weighted feature MSE `L_FA` (1).
    #[serde(default = "one")]
    pub fa_weight: f64,
    /// MixDistribution and the instance-alignment loss `L_IA` (true). False is the
    /// "without MixDistribution" ablation: no perturbed branch, no `L_IA`, no embedding heads.
    #[serde(default = "yes")]
    pub mix_distribution: bool,
    /// Both parameters of the Beta distribution of the mixing weight λ (0.1).
    #[serde(default = "default_mix_alpha")]
    pub mix_alpha: f64,
    /// Probability that a batch is perturbed at all (1: always).
    #[serde(default = "one")]
    pub mix_p: f64,
    /// ε added to the variance before the square root in the statistics (1e-6).
    #[serde(default = "default_mix_eps")]
    pub mix_eps: f64,
    /// Width of the contrastive embeddings (128).
    #[serde(default = "default_embed")]
    pub embed_dim: i64,
    /// NT-Xent temperature τ_c (0.3).
    #[serde(default = "default_contrast_tau")]
    pub contrast_tau: f64,
    /// Weight of `L_IA` (0.001).
    #[serde(default = "default_ia_weight")]
    pub ia_weight: f64,
    /// Put every epoch's kept indices into the report (`kept_per_epoch`; true). On a web set of
    /// millions of images over hundreds of epochs that list is large; false keeps only the
    /// fractions. The checkpoint keeps the sets either way.
    #[serde(default = "yes")]
    pub report_kept: bool,
}

impl Default for Kd3Config {
    fn default() -> Self {
        Self {
            selection: SelectionMode::default(),
            teacher_share: TeacherShare::default(),
            p_cut: default_p_cut(),
            top_ratio: default_top_ratio(),
            selection_batch: default_selection_batch(),
            selection_views: SelectionViews::default(),
            shared_head: true,
            kd_tau: default_kd_tau(),
            kd_weight: 1.0,
            projector_factor: default_factor(),
            fa_weight: 1.0,
            mix_distribution: true,
            mix_alpha: default_mix_alpha(),
            mix_p: 1.0,
            mix_eps: default_mix_eps(),
            embed_dim: default_embed(),
            contrast_tau: default_contrast_tau(),
            ia_weight: default_ia_weight(),
            report_kept: true,
        }
    }
}

fn bad(key: &str, msg: impl std::fmt::Display) -> KdError {
    KdError::invalid(format!("kd3 config: {key} {msg}"))
}

fn positive(key: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(bad(key, format!("must be a positive number, got {v}")))
    }
}

fn non_negative(key: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(bad(key, format!("must be a finite number ≥ 0, got {v}")))
    }
}

fn unit(key: &str, v: f64, zero_ok: bool) -> Result<()> {
    let lower = if zero_ok { v >= 0.0 } else { v > 0.0 };
    if v.is_finite() && lower && v <= 1.0 {
        Ok(())
    } else {
        let range = if zero_ok { "[0, 1]" } else { "(0, 1]" };
        Err(bad(key, format!("must lie in {range}, got {v}")))
    }
}

impl Kd3Config {
    /// Checks every value; the error names the offending key.
    pub fn validate(&self) -> Result<()> {
        let s = &self.teacher_share;
        non_negative("teacher_share.sharpness", s.sharpness)?;
        positive("teacher_share.ramp_epochs", s.ramp_epochs)?;
        if s.cutoff_epoch.is_nan() {
            return Err(bad("teacher_share.cutoff_epoch", "must be a number"));
        }
        if let Some(r) = s.reference_epochs {
            positive("teacher_share.reference_epochs", r)?;
        }
        unit("p_cut", self.p_cut, false)?;
        unit("top_ratio", self.top_ratio, false)?;
        if self.selection_batch == 0 {
            return Err(bad("selection_batch", "must be at least 1"));
        }
        positive("kd_tau", self.kd_tau)?;
        non_negative("kd_weight", self.kd_weight)?;
        if self.projector_factor < 1 {
            return Err(bad(
                "projector_factor",
                format!("must be at least 1, got {}", self.projector_factor),
            ));
        }
        non_negative("fa_weight", self.fa_weight)?;
        positive("mix_alpha", self.mix_alpha)?;
        unit("mix_p", self.mix_p, true)?;
        positive("mix_eps", self.mix_eps)?;
        if self.embed_dim < 1 {
            return Err(bad(
                "embed_dim",
                format!("must be at least 1, got {}", self.embed_dim),
            ));
        }
        positive("contrast_tau", self.contrast_tau)?;
        non_negative("ia_weight", self.ia_weight)
    }
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn default_sharpness() -> f64 {
    5.0
}
fn default_ramp() -> f64 {
    160.0
}
fn default_cutoff() -> f64 {
    120.0
}
fn default_reference() -> Option<f64> {
    Some(240.0)
}
fn default_p_cut() -> f64 {
    0.95
}
fn default_top_ratio() -> f64 {
    0.5
}
fn default_selection_batch() -> usize {
    256
}
fn default_kd_tau() -> f64 {
    4.0
}
fn default_factor() -> i64 {
    2
}
fn default_mix_alpha() -> f64 {
    0.1
}
fn default_mix_eps() -> f64 {
    1e-6
}
fn default_embed() -> i64 {
    128
}
fn default_contrast_tau() -> f64 {
    0.3
}
fn default_ia_weight() -> f64 {
    0.001
}
