//! Learning-rate schedules and loss-weight ramps.
//!
//! Schedules are pure functions of (epoch, step), so a resumed run recomputes the same learning
//! rate without storing schedule state.

use serde::{Deserialize, Serialize};

/// The decay rule after warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// Constant learning rate.
    Constant,
    /// Multiply by `gamma` at each milestone epoch.
    Multistep {
        /// Epochs (0-based) at which the rate is multiplied by `gamma`.
        milestones: Vec<usize>,
        /// Decay factor.
        gamma: f64,
    },
    /// Cosine annealing from the base rate to `min_lr` over training, per step.
    Cosine {
        /// Final learning rate.
        #[serde(default)]
        min_lr: f64,
    },
    /// Polynomial decay `(1 − t)^power`, per step (the segmentation recipe uses 0.9).
    Poly {
        /// Exponent.
        power: f64,
        /// Floor.
        #[serde(default)]
        min_lr: f64,
    },
}

/// A learning-rate schedule: base rate, optional linear warm-up, then a decay rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// Base learning rate.
    pub lr: f64,
    /// Linear warm-up length in epochs (may be fractional), from `lr·warmup_start` to `lr`.
    #[serde(default)]
    pub warmup_epochs: f64,
    /// Starting factor of the warm-up.
    #[serde(default = "default_warmup_start")]
    pub warmup_start: f64,
    /// Decay rule.
    pub schedule: Schedule,
}

fn default_warmup_start() -> f64 {
    0.1
}

impl LrSchedule {
    /// Learning rate at `step_in_epoch` of `epoch` (both 0-based).
    pub fn lr_at(&self, epoch: usize, step_in_epoch: usize, steps_per_epoch: usize, epochs: usize) -> f64 {
        let spe = steps_per_epoch.max(1) as f64;
        let t_epochs = epoch as f64 + step_in_epoch as f64 / spe;
        let frac = (t_epochs / epochs.max(1) as f64).clamp(0.0, 1.0);
        let base = match &self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Multistep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| epoch >= m).count();
                self.lr * gamma.powi(passed as i32)
            }
            Schedule::Cosine { min_lr } => {
                min_lr + (self.lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
            }
            Schedule::Poly { power, min_lr } => min_lr + (self.lr - min_lr) * (1.0 - frac).powf(*power),
        };
        if self.warmup_epochs > 0.0 && t_epochs < self.warmup_epochs {
            let w = t_epochs / self.warmup_epochs;
            base * (self.warmup_start + (1.0 - self.warmup_start) * w)
        } else {
            base
        }
    }
}

/// A linear ramp from 0 to 1 over `epochs` epochs (fractional progress in epochs), then 1.
/// Used for loss-weight warm-ups.
pub fn linear_ramp(progress_epochs: f64, epochs: f64) -> f64 {
    if epochs <= 0.0 {
        1.0
    } else {
        (progress_epochs / epochs).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multistep_decays_at_milestones() {
        let s = LrSchedule {
            lr: 0.05,
            warmup_epochs: 0.0,
            warmup_start: 0.1,
            schedule: Schedule::Multistep {
                milestones: vec![150, 180, 210],
                gamma: 0.1,
            },
        };
        assert!((s.lr_at(0, 0, 10, 240) - 0.05).abs() < 1e-12);
        assert!((s.lr_at(149, 9, 10, 240) - 0.05).abs() < 1e-12);
        assert!((s.lr_at(150, 0, 10, 240) - 0.005).abs() < 1e-12);
        assert!((s.lr_at(239, 0, 10, 240) - 0.00005).abs() < 1e-12);
    }

    #[test]
    fn cosine_and_poly_endpoints() {
        let c = LrSchedule {
            lr: 1.0,
            warmup_epochs: 0.0,
            warmup_start: 0.1,
            schedule: Schedule::Cosine { min_lr: 0.0 },
        };
        assert!((c.lr_at(0, 0, 4, 10) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(5, 0, 4, 10) - 0.5).abs() < 1e-12);
        let p = LrSchedule {
            lr: 0.01,
            warmup_epochs: 0.0,
            warmup_start: 0.1,
            schedule: Schedule::Poly {
                power: 0.9,
                min_lr: 1e-4,
            },
        };
        let half = 1e-4 + (0.01 - 1e-4) * 0.5f64.powf(0.9);
        assert!((p.lr_at(5, 0, 4, 10) - half).abs() < 1e-12);
    }

    #[test]
    fn warmup_is_linear_then_hands_over() {
        let s = LrSchedule {
            lr: 1.0,
            warmup_epochs: 2.0,
            warmup_start: 0.0,
            schedule: Schedule::Constant,
        };
        assert!((s.lr_at(0, 0, 10, 10) - 0.0).abs() < 1e-12);
        assert!((s.lr_at(1, 0, 10, 10) - 0.5).abs() < 1e-12);
        assert!((s.lr_at(2, 0, 10, 10) - 1.0).abs() < 1e-12);
        assert_eq!(linear_ramp(0.5, 2.0), 0.25);
        assert_eq!(linear_ramp(3.0, 2.0), 1.0);
    }
}
