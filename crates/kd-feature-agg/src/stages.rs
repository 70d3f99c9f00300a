//! Which student and teacher stages are distilled, and how wide everything is.
//!
//! Resolving the plan once, in the constructor, turns every configuration mistake (a tap that
//! does not exist, lists of different lengths, stages out of network order) into one error
//! naming the key, before any training starts; the training step then indexes taps directly.

use kd_core::models::{Model, Tap};
use kd_core::{KdError, Result};

use crate::config::UnikdConfig;

/// One distilled stage pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagePair {
    /// Student tap name.
    pub student_tap: String,
    /// Its index in the student's taps.
    pub student_index: usize,
    /// Student channels `C_i^S`.
    pub student_channels: i64,
    /// Teacher tap name.
    pub teacher_tap: String,
    /// Its index in the teacher's taps.
    pub teacher_index: usize,
    /// Teacher channels `C_i^T`.
    pub teacher_channels: i64,
    /// Fused width `C_a(i)`.
    pub fused_channels: i64,
}

/// The resolved stages, shallow to deep.
#[derive(Clone, Debug, PartialEq)]
pub struct StagePlan {
    /// Every stage fed to the fusion, shallow to deep.
    pub pairs: Vec<StagePair>,
    /// Indices into `pairs` of the stages that get a loss (all, or all but the deepest).
    pub loss_stages: Vec<usize>,
    /// β multiplier of each loss stage, aligned with `loss_stages`.
    pub stage_weights: Vec<f64>,
}

/// Resolves `names` (or the default, every tap but the stem) against `model`'s taps.
fn select(model: &dyn Model, names: Option<&[String]>, key: &str) -> Result<Vec<(usize, Tap)>> {
    let taps = model.taps();
    let all: Vec<&str> = taps.iter().map(|t| t.name.as_str()).collect();
    let chosen: Vec<(usize, Tap)> = match names {
        None => {
            let skip = usize::from(taps.len() > 1);
            taps.iter().cloned().enumerate().skip(skip).collect()
        }
        Some(names) => names
            .iter()
            .map(|n| {
                taps.iter()
                    .position(|t| &t.name == n)
                    .map(|i| (i, taps[i].clone()))
                    .ok_or_else(|| {
                        KdError::invalid(format!(
                            "unikd.{key}: {} has no tap {n:?}; its taps are {all:?}",
                            model.name()
                        ))
                    })
            })
            .collect::<Result<_>>()?,
    };
    if chosen.is_empty() {
        return Err(KdError::invalid(format!(
            "unikd.{key}: no stage selected ({} has taps {all:?})",
            model.name()
        )));
    }
    if chosen.windows(2).any(|w| w[0].0 >= w[1].0) {
        let names: Vec<&str> = chosen.iter().map(|(_, t)| t.name.as_str()).collect();
        return Err(KdError::invalid(format!(
            "unikd.{key}: stages must be distinct and in network order (shallow to deep), got \
             {names:?} for {} whose taps are {all:?}",
            model.name()
        )));
    }
    Ok(chosen)
}

impl StagePlan {
    /// Resolves the configuration against the two networks.
    pub fn resolve(cfg: &UnikdConfig, student: &dyn Model, teacher: &dyn Model) -> Result<Self> {
        let s = select(student, cfg.student_taps.as_deref(), "student_taps")?;
        let t = select(teacher, cfg.teacher_taps.as_deref(), "teacher_taps")?;
        if s.len() != t.len() {
            let sn: Vec<&str> = s.iter().map(|(_, t)| t.name.as_str()).collect();
            let tn: Vec<&str> = t.iter().map(|(_, t)| t.name.as_str()).collect();
            return Err(KdError::invalid(format!(
                "unikd: {} student stages {sn:?} but {} teacher stages {tn:?}; set student_taps and \
                 teacher_taps to lists of equal length",
                s.len(),
                t.len()
            )));
        }
        let n = s.len();
        let fused: Vec<i64> = match &cfg.fused_channels {
            Some(c) if c.len() != n => {
                return Err(KdError::invalid(format!(
                    "unikd.fused_channels has {} entries but {n} stages are distilled",
                    c.len()
                )))
            }
            Some(c) => c.clone(),
            None => t.iter().map(|(_, tap)| tap.channels).collect(),
        };
        let pairs: Vec<StagePair> = s
            .into_iter()
            .zip(t)
            .zip(fused)
            .map(|(((si, st), (ti, tt)), c_a)| StagePair {
                student_tap: st.name,
                student_index: si,
                student_channels: st.channels,
                teacher_tap: tt.name,
                teacher_index: ti,
                teacher_channels: tt.channels,
                fused_channels: c_a,
            })
            .collect();
        let loss_stages: Vec<usize> = if cfg.include_last {
            (0..n).collect()
        } else {
            (0..n - 1).collect()
        };
        if loss_stages.is_empty() {
            return Err(KdError::invalid(
                "unikd.include_last = false with a single stage leaves no stage to distil",
            ));
        }
        let stage_weights = match &cfg.stage_weights {
            Some(w) if w.len() != loss_stages.len() => {
                return Err(KdError::invalid(format!(
                    "unikd.stage_weights has {} entries but {} stages get a loss",
                    w.len(),
                    loss_stages.len()
                )))
            }
            Some(w) => w.clone(),
            None => vec![1.0; loss_stages.len()],
        };
        Ok(Self {
            pairs,
            loss_stages,
            stage_weights,
        })
    }

    /// Number of stages fed to the fusion.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Always false for a resolved plan.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}
