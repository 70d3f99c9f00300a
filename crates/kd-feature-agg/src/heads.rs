//! AFF followed by one FDP head per distilled stage: the module that turns a network's stage
//! maps into one diagonal Gaussian per stage.
//!
//! The student always has one. In mode B the teacher has its own, pre-fitted and then frozen
//! (see [`crate::teacher_heads`]); building both from this one type keeps the two sides
//! structurally identical, including in the "w/o AFF" ablation, where FDP reads the raw stage
//! maps on both sides.

use tch::{nn, Tensor};

use kd_core::{KdError, Result};

use crate::aff::{global_avg_pool, AffCascade};
use crate::config::Upsample;
use crate::fdp::{DiagGaussian, FdpHead};

/// Optional AFF cascade plus FDP heads on the loss stages.
#[derive(Debug)]
pub struct StageHeads {
    aff: Option<AffCascade>,
    fdp: Vec<FdpHead>,
    loss_stages: Vec<usize>,
    in_channels: Vec<i64>,
}

/// Shapes of a [`StageHeads`].
#[derive(Clone, Debug, PartialEq)]
pub struct HeadsSpec<'a> {
    /// Channels of each input stage map, shallow to deep.
    pub in_channels: &'a [i64],
    /// Fused width `C_a(i)` of each stage (ignored without AFF).
    pub fused: &'a [i64],
    /// Stages (indices into the inputs) that get an FDP head, shallow to deep.
    pub loss_stages: &'a [usize],
    /// Output dimension `D_i` of each FDP head, aligned with `loss_stages`.
    pub out_dims: &'a [i64],
    /// Whether the stage maps are fused by AFF first (false: FDP reads the raw maps).
    pub use_aff: bool,
    /// AFF's upsampling.
    pub upsample: Upsample,
    /// Clamp of the predicted log-variance.
    pub logvar_clamp: f64,
}

impl StageHeads {
    /// Builds the modules under `path` (`path/aff/...`, `path/fdp{i}/...`).
    pub fn new(path: &nn::Path<'_>, spec: &HeadsSpec<'_>) -> Result<Self> {
        let n = spec.in_channels.len();
        if spec.out_dims.len() != spec.loss_stages.len() || spec.loss_stages.iter().any(|&i| i >= n) {
            return Err(KdError::invalid(format!(
                "StageHeads: loss stages {:?} and output dims {:?} do not fit {n} stages",
                spec.loss_stages, spec.out_dims
            )));
        }
        let aff = if spec.use_aff {
            Some(AffCascade::new(
                &(path / "aff"),
                spec.in_channels,
                spec.fused,
                spec.upsample,
            )?)
        } else {
            None
        };
        let fdp = spec
            .loss_stages
            .iter()
            .zip(spec.out_dims)
            .map(|(&i, &d)| {
                let c = if spec.use_aff {
                    spec.fused[i]
                } else {
                    spec.in_channels[i]
                };
                FdpHead::new(&(path / format!("fdp{i}")), c, d, spec.logvar_clamp)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            aff,
            fdp,
            loss_stages: spec.loss_stages.to_vec(),
            in_channels: spec.in_channels.to_vec(),
        })
    }

    /// The AFF cascade, when this side fuses.
    pub fn aff(&self) -> Option<&AffCascade> {
        self.aff.as_ref()
    }

    /// One Gaussian per loss stage, from the stage maps `feats[i]: [B, C_i, H_i, W_i]`
    /// (shallow to deep). Each Gaussian is `[B, D_i]`.
    pub fn forward(&self, feats: &[&Tensor], train: bool) -> Result<Vec<DiagGaussian>> {
        let pooled: Vec<Tensor> = match &self.aff {
            Some(aff) => aff
                .forward_t(feats, train)?
                .fused
                .iter()
                .map(global_avg_pool)
                .collect(),
            None => {
                if feats.len() != self.in_channels.len() {
                    return Err(KdError::invalid(format!(
                        "StageHeads expects {} stage maps, got {}",
                        self.in_channels.len(),
                        feats.len()
                    )));
                }
                feats
                    .iter()
                    .zip(&self.in_channels)
                    .enumerate()
                    .map(|(i, (f, &c))| {
                        let s = f.size();
                        if s.len() != 4 || s[1] != c {
                            return Err(KdError::BadShape {
                                op: "StageHeads::forward".into(),
                                name: format!("stage {i} map"),
                                shape: s,
                                expected: format!("[B, {c}, H, W]"),
                            });
                        }
                        Ok(global_avg_pool(f))
                    })
                    .collect::<Result<_>>()?
            }
        };
        self.loss_stages
            .iter()
            .zip(&self.fdp)
            .map(|(&i, head)| head.forward(&pooled[i]))
            .collect()
    }
}
