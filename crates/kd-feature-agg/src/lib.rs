//! UniKD (Huang et al., ECCV 2024): adaptive feature fusion plus heads that predict
//! distribution parameters, distilled with a closed-form Gaussian KL.
//!
//! DOCS-PLACEHOLDER

pub mod aff;
pub mod config;
pub mod distiller;
pub mod fdp;
pub mod heads;
pub mod loss;
pub mod moments;
pub mod stages;
pub mod teacher_heads;

#[cfg(test)]
mod tests;

pub use aff::{AffCascade, AffOutput, Gate};
pub use config::{Direction, PrefitConfig, TargetMode, UnikdConfig, Upsample, Variant};
pub use distiller::Unikd;
pub use fdp::{DiagGaussian, FdpHead};
pub use heads::{HeadsSpec, StageHeads};
pub use loss::stage_kl;
pub use moments::teacher_moments;
pub use stages::{StagePair, StagePlan};
pub use teacher_heads::{PrefitReport, TeacherHeads};
