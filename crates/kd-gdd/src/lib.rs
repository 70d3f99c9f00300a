//! GDD (Liu et al., 2024, arXiv:2401.08332): generative denoise distillation for dense
//! prediction.
//!
//! The student's feature map (the "concept feature") is adapted to the teacher's channel count,
//! corrupted with random noise, and passed through a shallow generator; the generated
//! "instance feature" is pulled towards the teacher's map with a channel-wise spatial-softmax
//! KL (the CWD form). The noise keeps the generator from learning an identity map, so the
//! student has to carry the information the teacher's map holds. Adapter and generator are
//! auxiliary modules: trained with the student, dropped at inference.
//!
//! ```text
//! L = L_task + Σ_ℓ α_ℓ · τ²/(B·C_t) · Σ_{b,c,i} p_{b,c,i} (log p_{b,c,i} − log q_{b,c,i})
//! p = softmax_i(T/τ) (teacher, detached)     q = softmax_i(G(A(S) + ε)/τ)
//! ```
//!
//! - [`gdd_loss`]: the KL term without α (kd-core's CWD kernel);
//! - [`GddLevel`]: adapter, noise and generator of one tap, and its weighted loss;
//! - [`Gdd`]: the [`Distiller`](kd_core::distill::Distiller), the caller's task loss
//!   ([`TaskLoss`](kd_core::distill::TaskLoss): a segmentation net's cross-entropies, a
//!   detector's losses) plus one level per distilled tap pair (one for segmentation, one per
//!   FPN level for detection);
//! - [`GddConfig`]: the settings, with the released segmentation presets;
//! - [`Mgd`], [`MgdLevel`], [`MgdConfig`], [`mgd_loss`]: MGD, GDD's masked ancestor, as a
//!   baseline with the same [`Generator`]: a random spatial mask instead of noise, a summed
//!   squared error instead of the KL.
//!
//! # Knobs and defaults
//!
//! | knob | default | meaning |
//! |---|---|---|
//! | `tau` | 4 | temperature τ of the spatial softmax (all released configs) |
//! | `alpha` | 145 | α of the single level; [`GddConfig::pspnet_r18`] 145, [`GddConfig::deeplabv3_r18`] 175 |
//! | `noise` | `Gaussian { std: 1 }` | [`NoiseKind`]: `Gaussian { std }`, `Uniform { low, high }` or `None` |
//! | `noise_shape` | `SharedAcrossChannels` | [`NoiseShape`]: one `[B, 1, H, W]` map per sample (the code) or `PerChannel` `[B, C_t, H, W]` (the paper's notation) |
//! | `student_tap`, `teacher_tap` | `"stage4"` | the taps of the single level: the last backbone stage, output stride 8 |
//! | `levels` | empty | explicit `(student_tap, teacher_tap, alpha)` list replacing the single level |
//! | `logit_cwd` | off | optional CWD on the logits ([`CwdConfig`](kd_core::losses::CwdConfig)); the released segmentation configs have `use_logit = False` |
//!
//! # Choices the paper and the code leave open
//!
//! - The loss uses a fused `log_softmax` where the code takes `log(softmax(x))`: the same value
//!   up to rounding, without the underflow. The softmax and KL run in fp32 (fp64 for fp64
//!   inputs) whatever the feature precision.
//! - Adapter and generator convolutions are initialised as PyTorch's `Conv2d` default
//!   (weight and bias uniform in `±1/sqrt(fan_in)`), which is what the code gets implicitly.
//! - The noise is drawn from libtorch's generator, so `tch::manual_seed` makes it
//!   reproducible.
//! - `Uniform` noise and `NoiseKind::None` are ablation knobs; the released configs only
//!   use `N(0, 1)`.
//! - A student and teacher tap at different strides are rejected when the distiller is built,
//!   and maps of different spatial sizes at every step: never a silent resize.
//! - Several levels add their losses, each with its own α, and each draws its own noise.

mod config;
mod distiller;
mod generator;
mod level;
mod mgd;

pub use config::{GddConfig, GddLevelSpec, NoiseKind, NoiseShape};
pub use distiller::Gdd;
pub use generator::Generator;
pub use level::{gdd_loss, GddLevel, LevelParams};
pub use mgd::{mgd_loss, Mgd, MgdConfig, MgdLevel};

#[cfg(test)]
mod tests;
