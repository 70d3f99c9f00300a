//! The two batch normalisations of a weighted per-sample loss.
//!
//! Dividing by the total weight (a weighted mean) keeps the loss scale fixed however few samples
//! take part, which raises the effective learning rate of the remaining ones; dividing by the
//! batch size lets a gated or down-weighted batch move the weights less. Which one the paper
//! used is not known, and the choice changes training, so both are available.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use kd_core::losses::{per_batch_mean, weighted_mean};
use kd_core::Result;

/// How `Σ_b w_b ℓ_b` is normalised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalisation {
    /// `Σ w ℓ / max(ε, Σ w)` (the default reconstruction): for a 0/1 mask, the mean over the
    /// participating samples; 0 when none takes part.
    #[default]
    WeightedMean,
    /// `Σ w ℓ / B`.
    PerBatch,
}

/// Reduces `values [B]` with `weights [B]` (non-negative, treated as constants) to a scalar.
pub fn reduce(values: &Tensor, weights: &Tensor, norm: Normalisation) -> Result<Tensor> {
    let w = weights.detach();
    match norm {
        Normalisation::WeightedMean => weighted_mean(values, &w),
        Normalisation::PerBatch => per_batch_mean(values, &w),
    }
}
