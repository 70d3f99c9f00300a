//! The training losses of the FCOS detector (Tian et al., ICCV 2019) in MMDetection 2.x's
//! improved form: centre sampling, centre-ness on the regression branch, GIoU box loss.
//!
//! | Module | What |
//! | --- | --- |
//! | [`focal`] | sigmoid focal loss (Lin et al., ICCV 2017) of the classification branch |
//! | [`giou`] | GIoU loss of decoded boxes |
//! | [`centerness`] | centre-ness targets and their binary cross-entropy |
//! | [`assign`] | FCOS target assignment: which point regresses which box |
//! | [`fcos`] | [`FcosLoss`], the three terms of one batch from a detector's output |
//!
//! The classification head must start from a prior foreground probability π = 0.01 (bias
//! `−ln((1 − π)/π) = −ln 99 ≈ −4.595` on every class logit), as in the focal-loss paper;
//! otherwise the background points swamp the first iterations.

pub mod assign;
pub mod centerness;
pub mod fcos;
pub mod focal;
pub mod giou;

pub use assign::{default_regress_ranges, fcos_targets, gt_from_rows};
pub use centerness::{centerness_loss, centerness_targets};
pub use fcos::FcosLoss;
pub use focal::sigmoid_focal_loss;
pub use giou::giou_loss;

/// The classification bias that makes every class start at foreground probability `prior`:
/// `−ln((1 − prior)/prior)` (`prior = 0.01` gives `−ln 99 ≈ −4.595`).
pub fn prior_bias(prior: f64) -> f64 {
    -((1.0 - prior) / prior).ln()
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
