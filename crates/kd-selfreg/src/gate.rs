//! The self-regulation gate: which samples of a batch take part in the backward pass.
//!
//! A sample is skipped only when the model already classifies it correctly *and* is confident
//! about it; everything else (every mistake, every unsure hit) takes part. What "confident"
//! means is the open part of the method, so the measure and the threshold are both knobs:
//! the fixed threshold β of the seed paper's abstract reading, and the schedule
//! `η(e) = 1 − exp(−α·e)` of the authors' follow-up work, which starts by letting only mistakes
//! through and gates correct samples ever more strictly as `η → 1`.
//!
//! The gate is computed on the forward pass the step makes anyway; only the gradient is gated.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use kd_core::{KdError, Result};

/// How confident the model is in a sample, from its probabilities `p = softmax(z)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfidenceMeasure {
    /// `p_y`, the probability of the true class (the default reconstruction).
    #[default]
    TrueClass,
    /// `max_k p_k`. For correctly classified samples it equals `p_y`.
    MaxProb,
    /// Top-1 minus top-2 probability, `p_(1) − p_(2)` (the follow-up work's δ).
    Margin,
}

/// The confidence a correct sample needs to be skipped.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Threshold {
    /// A fixed β in `[0, 1]`. β = 1 means "never confident" (every sample takes part, which is
    /// ordinary training); β = 0 lets only misclassified samples take part.
    Fixed {
        /// β.
        beta: f64,
    },
    /// `η(e) = 1 − exp(−α·e)` at epoch `e` (0-based): 0 in the first epoch (only mistakes take
    /// part), rising towards 1.
    EpochSchedule {
        /// α > 0, per epoch.
        alpha: f64,
    },
}

impl Default for Threshold {
    /// β = 0.9, the spec's reconstruction.
    fn default() -> Self {
        Threshold::Fixed { beta: 0.9 }
    }
}

impl Threshold {
    /// The threshold in force during `epoch` (0-based), in `[0, 1]`.
    pub fn at(&self, epoch: usize) -> f64 {
        match *self {
            Threshold::Fixed { beta } => beta,
            Threshold::EpochSchedule { alpha } => 1.0 - (-alpha * epoch as f64).exp(),
        }
    }

    /// Fails unless β lies in `[0, 1]` or α is finite and positive.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Threshold::Fixed { beta } if !(0.0..=1.0).contains(&beta) => Err(KdError::invalid(format!(
                "self-regulation threshold: beta must lie in [0, 1], got {beta}"
            ))),
            Threshold::EpochSchedule { alpha } if !(alpha.is_finite() && alpha > 0.0) => {
                Err(KdError::invalid(format!(
                    "self-regulation threshold: alpha must be finite and positive, got {alpha}"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The gate's settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// The confidence measure (default: true-class probability).
    #[serde(default)]
    pub measure: ConfidenceMeasure,
    /// The threshold (default: fixed β = 0.9).
    #[serde(default)]
    pub threshold: Threshold,
    /// Epochs at the start in which every sample takes part, `E_w` (default 0).
    #[serde(default)]
    pub warmup_epochs: usize,
}

impl GateConfig {
    /// Fails on an invalid threshold.
    pub fn validate(&self) -> Result<()> {
        self.threshold.validate()
    }

    /// The threshold in force during `epoch`, or `None` during warm-up (no gating).
    pub fn threshold_at(&self, epoch: usize) -> Option<f64> {
        (epoch >= self.warmup_epochs).then(|| self.threshold.at(epoch))
    }
}

/// Checks `logits [B, K]` against `labels [B]` (Int64 in `[0, K)`) before indexing with them.
fn check(op: &str, logits: &Tensor, labels: &Tensor) -> Result<()> {
    let (ls, ys) = (logits.size(), labels.size());
    if ls.len() != 2 || ls[0] == 0 || ls[1] == 0 || ys != [ls[0]] {
        return Err(KdError::Shape {
            op: op.into(),
            left_name: "logits [B, K]".into(),
            left: ls,
            right_name: "labels [B]".into(),
            right: ys,
        });
    }
    if labels.kind() != Kind::Int64 {
        return Err(KdError::invalid(format!(
            "{op}: labels must be Int64, got {:?}",
            labels.kind()
        )));
    }
    let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
    if lo < 0 || hi >= ls[1] {
        return Err(KdError::invalid(format!(
            "{op}: labels must lie in [0, {}), got values in [{lo}, {hi}]",
            ls[1]
        )));
    }
    Ok(())
}

/// The confidence of each sample under `measure`, from `logits [B, K]` and `labels [B]`.
/// Returns `[B]` probabilities (or a probability difference for the margin) in fp32 at least,
/// without autograd history.
pub fn confidence(logits: &Tensor, labels: &Tensor, measure: ConfidenceMeasure) -> Result<Tensor> {
    check("confidence", logits, labels)?;
    let kind = if logits.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    Ok(tch::no_grad(|| {
        let p = logits.detach().to_kind(kind).softmax(-1, kind);
        match measure {
            ConfidenceMeasure::TrueClass => p.gather(1, &labels.unsqueeze(1), false).squeeze_dim(1),
            ConfidenceMeasure::MaxProb => p.amax([1].as_slice(), false),
            ConfidenceMeasure::Margin => {
                if p.size()[1] < 2 {
                    return p.ones_like().select(1, 0);
                }
                let (top, _) = p.topk(2, 1, true, true);
                top.select(1, 0) - top.select(1, 1)
            }
        }
    }))
}

/// The participation mask `m [B]` (Bool): `¬correct ∨ ¬confident`, where a sample is correct
/// when the arg-max of `logits` is its label and confident when its [`confidence`] reaches the
/// threshold. A threshold of 1 or more is never reached (so every sample takes part, even if
/// fp32 rounds a probability to exactly 1); `None` (warm-up) lets every sample take part.
pub fn participation_mask(
    logits: &Tensor,
    labels: &Tensor,
    measure: ConfidenceMeasure,
    threshold: Option<f64>,
) -> Result<Tensor> {
    let conf = confidence(logits, labels, measure)?;
    let b = labels.size()[0];
    let all = Tensor::ones([b], (Kind::Bool, labels.device()));
    let Some(eta) = threshold else {
        return Ok(all);
    };
    if eta >= 1.0 {
        return Ok(all);
    }
    Ok(tch::no_grad(|| {
        let correct = logits.detach().argmax(-1, false).eq_tensor(labels);
        let confident = conf.ge(eta);
        correct.logical_and(&confident).logical_not()
    }))
}

/// [`participation_mask`] for `cfg` at `epoch` (0-based).
pub fn gate(logits: &Tensor, labels: &Tensor, cfg: &GateConfig, epoch: usize) -> Result<Tensor> {
    participation_mask(logits, labels, cfg.measure, cfg.threshold_at(epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits whose softmax is exactly `probs` (up to fp rounding): `z = ln p`.
    fn from_probs(rows: &[[f64; 3]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flatten().map(|p| p.ln()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 3])
    }

    fn mask(t: &Tensor) -> Vec<bool> {
        Vec::<bool>::try_from(t).unwrap()
    }

    #[test]
    fn truth_table_of_the_gate() {
        // Rows: correct & p_y = 0.95; wrong (label 1, arg-max 0) with p = 0.95 on the wrong
        // class; correct & p_y = 0.6; wrong with low confidence.
        let z = from_probs(&[
            [0.95, 0.03, 0.02],
            [0.95, 0.03, 0.02],
            [0.6, 0.3, 0.1],
            [0.4, 0.35, 0.25],
        ]);
        let y = Tensor::from_slice(&[0i64, 1, 0, 2]);
        for measure in [
            ConfidenceMeasure::TrueClass,
            ConfidenceMeasure::MaxProb,
            ConfidenceMeasure::Margin,
        ] {
            let m = participation_mask(&z, &y, measure, Some(0.9)).unwrap();
            // Confident-correct skipped; any mistake kept (even a confident one); unsure hit kept.
            assert_eq!(mask(&m), [false, true, true, true], "{measure:?}");
        }
    }

    #[test]
    fn measures_have_the_documented_values() {
        let z = from_probs(&[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]]);
        let y = Tensor::from_slice(&[1i64, 0]);
        let get = |m| Vec::<f64>::try_from(confidence(&z, &y, m).unwrap()).unwrap();
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(&get(ConfidenceMeasure::TrueClass), &[0.2, 0.5]));
        assert!(close(&get(ConfidenceMeasure::MaxProb), &[0.7, 0.5]));
        assert!(close(&get(ConfidenceMeasure::Margin), &[0.5, 0.2]));
    }

    #[test]
    fn beta_edge_cases() {
        // A saturated row: fp32 softmax rounds p_y to exactly 1.
        let z = Tensor::from_slice(&[100f32, 0., 0., 0.2, 0.1, 0.0, 0.0, 5.0, 0.0]).view([3, 3]);
        let y = Tensor::from_slice(&[0i64, 0, 0]);
        let p = confidence(&z, &y, ConfidenceMeasure::TrueClass).unwrap();
        assert_eq!(p.double_value(&[0]), 1.0);
        // β = 1: never confident, everyone takes part.
        let m = participation_mask(&z, &y, ConfidenceMeasure::TrueClass, Some(1.0)).unwrap();
        assert_eq!(mask(&m), [true, true, true]);
        // β = 0: only the misclassified third row takes part.
        let m = participation_mask(&z, &y, ConfidenceMeasure::TrueClass, Some(0.0)).unwrap();
        assert_eq!(mask(&m), [false, false, true]);
        // Warm-up: everyone.
        let cfg = GateConfig {
            warmup_epochs: 2,
            threshold: Threshold::Fixed { beta: 0.0 },
            ..Default::default()
        };
        assert_eq!(mask(&gate(&z, &y, &cfg, 1).unwrap()), [true, true, true]);
        assert_eq!(mask(&gate(&z, &y, &cfg, 2).unwrap()), [false, false, true]);
    }

    #[test]
    fn epoch_schedule_starts_at_zero_and_rises_to_one() {
        let t = Threshold::EpochSchedule { alpha: 0.5 };
        assert_eq!(t.at(0), 0.0);
        assert!((t.at(2) - (1.0 - (-1.0f64).exp())).abs() < 1e-15);
        let v: Vec<f64> = (0..50).map(|e| t.at(e)).collect();
        assert!(v.windows(2).all(|w| w[1] > w[0]) && v[49] < 1.0 && v[49] > 0.99);
        // Epoch 0: only mistakes take part, however unsure the correct samples are.
        let z = from_probs(&[[0.34, 0.33, 0.33], [0.2, 0.5, 0.3]]);
        let y = Tensor::from_slice(&[0i64, 0]);
        let cfg = GateConfig {
            measure: ConfidenceMeasure::Margin,
            threshold: t,
            warmup_epochs: 0,
        };
        assert_eq!(mask(&gate(&z, &y, &cfg, 0).unwrap()), [false, true]);
        // Later the unsure hit (margin 0.01) takes part again.
        assert_eq!(mask(&gate(&z, &y, &cfg, 3).unwrap()), [true, true]);
    }

    #[test]
    fn bad_inputs_and_settings_are_errors() {
        let z = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu));
        let y3 = Tensor::from_slice(&[0i64, 1, 2]);
        assert!(matches!(
            confidence(&z, &y3, ConfidenceMeasure::TrueClass),
            Err(KdError::Shape { .. })
        ));
        let bad = Tensor::from_slice(&[0i64, 3]);
        let msg = confidence(&z, &bad, ConfidenceMeasure::TrueClass)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("[0, 3)"), "{msg}");
        assert!(Threshold::Fixed { beta: 1.5 }.validate().is_err());
        assert!(Threshold::EpochSchedule { alpha: 0.0 }.validate().is_err());
        assert!(Threshold::EpochSchedule { alpha: 0.01 }.validate().is_ok());
    }
}
