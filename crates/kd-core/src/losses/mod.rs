//! Task-independent loss kernels shared by every method.
//!
//! Each distillation method combines a few standard divergences; implementing them once, here,
//! keeps their numerics and conventions identical across methods and lets each be tested
//! against closed forms and finite differences in isolation:
//!
//! | Module | Loss | Used by |
//! | --- | --- | --- |
//! | [`kl`] | temperature softmax KL, forward or reverse | everything on logits |
//! | [`dkd`] | decoupled KD: target and non-target KL | DKD baseline |
//! | [`kd`] | Hinton KD, cross-entropy (per sample and per position, with ignored labels) | baselines, UniKD, self-reg, the dense task losses |
//! | [`fitnets`] | hint MSE and its conv + BN + ReLU regressor (CRD's `ConvReg`) | FitNets baseline |
//! | [`cwd`] | channel-wise spatial-softmax KL | CWD baseline, GDD |
//! | [`gaussian`] | closed-form diagonal-Gaussian KL | UniKD stage losses |
//! | [`contrastive`] | InfoNCE, NT-Xent | KD³ |
//! | [`reduce`] | weighted / masked batch reductions | self-reg, KD³ |
//!
//! Conventions shared by every kernel:
//! - **Validation first.** Shapes (and dtypes of labels, devices, temperatures) are checked in
//!   Rust before libtorch is called; a mismatch is a [`KdError::Shape`](crate::KdError::Shape)
//!   naming both operands, never a libtorch panic.
//! - **Precision.** The math runs in fp32 (half and bfloat16 inputs are promoted; fp64 inputs
//!   stay fp64), and every log-probability comes from a fused `log_softmax`, never from
//!   `softmax(..).log()`.
//! - **Teacher detached.** Arguments that belong to the teacher are detached inside the loss,
//!   so a teacher output that still carries a graph can never receive gradient.
//! - **No loss weights.** Kernels return the unweighted term (KD's τ² and CWD's τ² are part of
//!   the term's definition); the method applies its λ, β or α.
//! - **Units.** Divergences and cross-entropies are in nats.

pub mod check;
pub mod contrastive;
pub mod cwd;
pub mod dkd;
pub mod fitnets;
pub mod gaussian;
pub mod kd;
pub mod kl;
pub mod reduce;

pub mod gradcheck;

pub use contrastive::{info_nce, nt_xent};
pub use cwd::{cwd_loss, cwd_loss_per_sample, CwdConfig};
pub use dkd::{dkd_loss, dkd_terms};
pub use fitnets::{hint_loss, HintAdapter};
pub use gaussian::{
    gaussian_kl, gaussian_kl_directed, gaussian_kl_mean, gaussian_kl_per_sample, LOGVAR_MAX, LOGVAR_MIN,
    VAR_EPS,
};
pub use kd::{
    cross_entropy, cross_entropy_per_sample, dense_cross_entropy, kd_loss, kd_per_sample, KdMix, IGNORE_INDEX,
};
pub use kl::{
    reverse_softmax_kl_per_sample, softmax_kl_per_sample, softmax_kl_per_sample_directed,
    temperature_log_softmax, KlDirection,
};
pub use reduce::{masked_mean, per_batch_mean, weighted_mean, WEIGHT_EPS};
