//! [`FcosLoss`]: the three FCOS training terms of one batch, read from a detector's output in
//! contract-2 layout (`logits` `[B, A, K]`, heads `"box"` `[B, A, 4]` and `"centerness"`
//! `[B, A, 1]`, one feature map per pyramid level).
//!
//! The terms follow MMDetection 2.x's `FCOSHead.loss` with `norm_on_bbox`, centre sampling and
//! the GIoU loss:
//! - `"cls"`: sigmoid focal loss over all points and classes, divided by `max(#positives, 1)`;
//! - `"box"`: GIoU loss of the positives' decoded boxes, weighted by their centre-ness targets
//!   and divided by the sum of those targets;
//! - `"ctr"`: binary cross-entropy of the positives' centre-ness, averaged over positives.
//!
//! `norm_on_bbox` (MMDetection divides distances by the stride) is immaterial here: distances
//! stay in pixels and GIoU is scale invariant, so the box term is the same either way.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::sigmoid_focal_loss;
use super::{
    centerness_loss, centerness_targets, default_regress_ranges, fcos_targets, giou_loss, gt_from_rows,
};
use crate::boxes::{check_head_outputs, decode_ltrb, output_levels, PyramidLevels};
use kd_core::distill::LossTerms;
use kd_core::losses::check;
use kd_core::models::{ModelOutput, Tap};
use kd_core::{KdError, Result};

/// The FCOS loss and its settings; every default is MMDetection 2.x's FCOS (improved) recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FcosLoss {
    /// Focal loss α, the weight of positives (default 0.25).
    pub focal_alpha: f64,
    /// Focal loss γ, the focusing exponent (default 2.0).
    pub focal_gamma: f64,
    /// Weight of the `"cls"` term (default 1).
    pub cls_weight: f64,
    /// Weight of the `"box"` term (default 1).
    pub box_weight: f64,
    /// Weight of the `"ctr"` term (default 1).
    pub ctr_weight: f64,
    /// Whether positives are sampled from a centre region only (default true).
    pub center_sampling: bool,
    /// Half-side of the centre region in strides of the point's level (default 1.5).
    pub center_radius: f64,
    /// Regression range `[lo, hi]` (pixels) of each level, in tap order; `None` (default)
    /// derives them from the strides with [`default_regress_ranges`] (MMDetection's ranges for
    /// P3–P7). In TOML, `regress_ranges = [[-1, 64], [64, 128], [128, inf]]`.
    pub regress_ranges: Option<Vec<[f64; 2]>>,
}

impl Default for FcosLoss {
    /// α 0.25, γ 2, weights 1/1/1, centre sampling with radius 1.5, derived ranges.
    fn default() -> Self {
        Self {
            focal_alpha: 0.25,
            focal_gamma: 2.0,
            cls_weight: 1.0,
            box_weight: 1.0,
            ctr_weight: 1.0,
            center_sampling: true,
            center_radius: 1.5,
            regress_ranges: None,
        }
    }
}

impl FcosLoss {
    /// Fails on an out-of-range setting; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.focal_alpha) {
            return Err(KdError::invalid(format!(
                "focal_alpha: must lie in [0, 1], got {}",
                self.focal_alpha
            )));
        }
        for (key, v) in [
            ("focal_gamma", self.focal_gamma),
            ("cls_weight", self.cls_weight),
            ("box_weight", self.box_weight),
            ("ctr_weight", self.ctr_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(KdError::invalid(format!(
                    "{key}: must be finite and >= 0, got {v}"
                )));
            }
        }
        if !(self.center_radius.is_finite() && self.center_radius > 0.0) {
            return Err(KdError::invalid(format!(
                "center_radius: must be finite and > 0, got {}",
                self.center_radius
            )));
        }
        if let Some(r) = &self.regress_ranges {
            if r.iter().any(|&[lo, hi]| lo.is_nan() || hi.is_nan() || lo > hi) {
                return Err(KdError::invalid(format!(
                    "regress_ranges: each [lo, hi] needs lo <= hi, got {r:?}"
                )));
            }
        }
        Ok(())
    }

    /// The regression ranges for levels of the given strides: the configured ones (which must
    /// count one per level) or [`default_regress_ranges`].
    pub fn ranges(&self, strides: &[i64]) -> Result<Vec<(f64, f64)>> {
        match &self.regress_ranges {
            None => Ok(default_regress_ranges(strides)),
            Some(r) if r.len() == strides.len() => Ok(r.iter().map(|&[lo, hi]| (lo, hi)).collect()),
            Some(r) => Err(KdError::invalid(format!(
                "regress_ranges: {} ranges configured but the detector has {} levels (strides {strides:?})",
                r.len(),
                strides.len()
            ))),
        }
    }

    /// The training targets of a batch: labels `[B, A]` Int64 (`K` = background) and distance
    /// targets `[B, A, 4]` Float (pixels), for the output `s_out` of a detector with `taps`
    /// and the batch labels `y` `[B, N, 6]` (contract 1). Also returns the levels and checks
    /// every shape first.
    pub fn targets(
        &self,
        s_out: &ModelOutput,
        taps: &[Tap],
        y: &Tensor,
    ) -> Result<(Tensor, Tensor, PyramidLevels)> {
        const OP: &str = "FcosLoss";
        self.validate()?;
        let levels = output_levels(s_out, taps)?;
        let (b, a, k) = check_head_outputs(
            OP,
            &s_out.logits,
            s_out.head("box")?,
            s_out.head("centerness")?,
            levels.num_points(),
        )?;
        let ys = y.size();
        if ys.len() != 3 || ys[0] != b || ys[2] != 6 || !y.is_floating_point() {
            return Err(KdError::Shape {
                op: format!("{OP} (expected logits [B, A, K] and floating box labels y [B, N, 6])"),
                left_name: "logits".into(),
                left: s_out.logits.size(),
                right_name: format!("y ({:?})", y.kind()),
                right: ys,
            });
        }
        let device = s_out.logits.device();
        let (points, strides, lvl) = levels.points(device)?;
        let ranges = self.ranges(&levels.strides)?;
        let radius = self.center_sampling.then_some(self.center_radius);
        // One read-back of the labels for the whole batch.
        let y_host = y.to_device(tch::Device::Cpu);
        let mut labels = Vec::with_capacity(b as usize);
        let mut boxes = Vec::with_capacity(b as usize);
        for i in 0..b {
            let (gb, gl) = gt_from_rows(&y_host.get(i), k)
                .map_err(|e| KdError::invalid(format!("{OP}: image {i}: {e}")))?;
            let (l, t) = fcos_targets(&points, &strides, &lvl, &ranges, &gb, &gl, k, radius)?;
            labels.push(l);
            boxes.push(t);
        }
        debug_assert_eq!(points.size()[0], a);
        Ok((Tensor::stack(&labels, 0), Tensor::stack(&boxes, 0), levels))
    }

    /// The weighted terms `"cls"`, `"box"` and `"ctr"` (in that order) for the detector output
    /// `s_out`, its `taps` (level strides, contract 2) and the batch labels `y` `[B, N, 6]`.
    ///
    /// Errors name the offending tensor and its shape (logits, heads, features, y) or the label
    /// row (image and row index) before any libtorch call.
    pub fn terms(&self, s_out: &ModelOutput, taps: &[Tap], y: &Tensor) -> Result<LossTerms> {
        let (labels, box_t, levels) = self.targets(s_out, taps, y)?;
        let logits = &s_out.logits;
        let (b, a, k) = (logits.size()[0], logits.size()[1], logits.size()[2]);
        let dist = s_out.head("box")?;
        let ctr = s_out.head("centerness")?;
        let kind = check::work_kind(&[logits, dist, ctr]);
        let device = logits.device();

        let labels = labels.view([b * a]);
        let pos = labels.lt(k).nonzero().view([-1]);
        let num_pos = pos.size()[0];
        let onehot = labels.one_hot(k + 1).narrow(1, 0, k).to_kind(kind);
        let cls = sigmoid_focal_loss(
            &logits.to_kind(kind).view([b * a, k]),
            &onehot,
            self.focal_alpha,
            self.focal_gamma,
        )? / (num_pos.max(1) as f64);

        let (points, _, _) = levels.points(device)?;
        let pos_points = points.to_kind(kind).repeat([b, 1]).index_select(0, &pos);
        let pos_dist = dist.to_kind(kind).view([b * a, 4]).index_select(0, &pos);
        let pos_target = box_t.to_kind(kind).view([b * a, 4]).index_select(0, &pos);
        let pos_ctr = ctr.to_kind(kind).view([b * a]).index_select(0, &pos);
        let ctr_t = centerness_targets(&pos_target)?;
        let denom = ctr_t.sum(kind).clamp_min(1e-6);
        let giou = giou_loss(
            &decode_ltrb(&pos_points, &pos_dist, None)?,
            &decode_ltrb(&pos_points, &pos_target, None)?,
            Some(&ctr_t),
        )? / denom;
        let ctr_loss = centerness_loss(&pos_ctr, &ctr_t)?;
        // Means over the positives (and the box term over their centre-ness), not over images:
        // a data-parallel step weights each rank by its share of those, as MMDet's
        // `reduce_mean` of the normalisers does.
        let (pos_units, ctr_units) = (num_pos as f64, ctr_t.sum(kind).double_value(&[]));
        let mut terms = LossTerms::new();
        terms.push_mean_over("cls", cls * self.cls_weight, pos_units);
        terms.push_mean_over("box", giou * self.box_weight, ctr_units);
        terms.push_mean_over("ctr", ctr_loss * self.ctr_weight, pos_units);
        Ok(terms)
    }
}
