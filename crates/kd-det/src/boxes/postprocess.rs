//! Test-time post-processing of FCOS outputs into detections, following MMDetection 2.x
//! (`FCOSHead.get_bboxes` with the FCOS test config).
//!
//! Per image: on each level keep the `nms_pre` points with the highest `max_k σ(cls_k)·σ(ctr)`;
//! decode their distances into boxes clipped to the image's unpadded size; every (point,
//! class) pair whose **classification** score `σ(cls_k)` exceeds `score_thr` becomes a
//! candidate scored `σ(cls_k)·σ(ctr)`; per-class NMS at IoU `iou_thr`; the best `max_per_img`
//! remain. The reported score is therefore `σ(cls)·σ(ctr)` — what the COCO evaluator ranks by
//! in MMDetection 2.x (not the square root that some later versions report).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{batched_nms_top, check_head_outputs, decode_ltrb, output_levels, ImageSize};
use kd_core::models::{ModelOutput, Tap};
use kd_core::{KdError, Result};

/// Post-processing settings; every default is MMDetection 2.x's FCOS `test_cfg`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostprocessConfig {
    /// Points kept per pyramid level before thresholding, ranked by `max_k σ(cls_k)·σ(ctr)`
    /// (default 1000; 0 keeps all).
    pub nms_pre: usize,
    /// Minimum classification score `σ(cls_k)` of a candidate, exclusive (default 0.05).
    pub score_thr: f64,
    /// IoU above which NMS suppresses a lower-scored box of the same class (default 0.5).
    pub iou_thr: f64,
    /// Detections kept per image after NMS (default 100, COCO's limit).
    pub max_per_img: usize,
}

impl Default for PostprocessConfig {
    /// `nms_pre = 1000`, `score_thr = 0.05`, `iou_thr = 0.5`, `max_per_img = 100`.
    fn default() -> Self {
        Self {
            nms_pre: 1000,
            score_thr: 0.05,
            iou_thr: 0.5,
            max_per_img: 100,
        }
    }
}

impl PostprocessConfig {
    /// Fails unless `score_thr` is finite and `iou_thr` lies in `[0, 1]`; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if !self.score_thr.is_finite() {
            return Err(KdError::invalid(format!(
                "score_thr: must be finite, got {}",
                self.score_thr
            )));
        }
        if !(0.0..=1.0).contains(&self.iou_thr) {
            return Err(KdError::invalid(format!(
                "iou_thr: must lie in [0, 1], got {}",
                self.iou_thr
            )));
        }
        Ok(())
    }
}

/// The detections of one image, sorted by decreasing score.
#[derive(Debug)]
pub struct Detections {
    /// Boxes `[M, 4]` xyxy in input pixels, clipped to the image's valid (unpadded) size.
    pub boxes: Tensor,
    /// Scores `[M]` Float, `σ(cls)·σ(ctr)` in `(0, 1)`.
    pub scores: Tensor,
    /// Contiguous class indices `[M]` Int64 in `0..K`.
    pub labels: Tensor,
}

impl Detections {
    /// Number of detections `M`.
    pub fn len(&self) -> usize {
        self.scores.size()[0] as usize
    }

    /// Whether there are no detections.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Detections of every image from a detector's dense outputs (contract 2 layout).
///
/// `logits` `[B, A, K]` class logits, `boxes` `[B, A, 4]` `(l, t, r, b)` distances in input
/// pixels, `centerness` `[B, A, 1]` logits, `points` `[A, 2]` the anchor points
/// ([`super::anchor_points`]), `level_counts` the number of points of each level (summing to
/// `A`, in order), `valid` the unpadded size of each of the `B` images. Runs without gradient;
/// the detections live on the outputs' device.
pub fn postprocess(
    logits: &Tensor,
    boxes: &Tensor,
    centerness: &Tensor,
    points: &Tensor,
    level_counts: &[i64],
    valid: &[ImageSize],
    cfg: &PostprocessConfig,
) -> Result<Vec<Detections>> {
    const OP: &str = "postprocess";
    cfg.validate()?;
    let total: i64 = level_counts.iter().sum();
    if level_counts.iter().any(|&c| c < 0) || points.size() != [total, 2] {
        return Err(KdError::BadShape {
            op: OP.into(),
            name: "points".into(),
            shape: points.size(),
            expected: format!("[A, 2] with A = {total}, the sum of the level counts {level_counts:?}"),
        });
    }
    let (b, _, _) = check_head_outputs(OP, logits, boxes, centerness, total)?;
    if valid.len() as i64 != b {
        return Err(KdError::invalid(format!(
            "{OP}: {} valid image sizes for a batch of {b} images",
            valid.len()
        )));
    }
    let points = points.to_device(logits.device()).to_kind(Kind::Float);
    tch::no_grad(|| {
        (0..b)
            .map(|i| {
                single(
                    &logits.get(i),
                    &boxes.get(i),
                    &centerness.get(i).view([-1]),
                    &points,
                    level_counts,
                    valid[i as usize],
                    cfg,
                )
            })
            .collect()
    })
}

/// [`postprocess`] on a model's output: the heads `"box"` and `"centerness"`, the levels read
/// from `out.features` and the strides from `taps` (as the model reports them).
pub fn postprocess_output(
    out: &ModelOutput,
    taps: &[Tap],
    valid: &[ImageSize],
    cfg: &PostprocessConfig,
) -> Result<Vec<Detections>> {
    let levels = output_levels(out, taps)?;
    let (points, _, _) = levels.points(out.logits.device())?;
    postprocess(
        &out.logits,
        out.head("box")?,
        out.head("centerness")?,
        &points,
        &levels.counts(),
        valid,
        cfg,
    )
}

fn single(
    logits: &Tensor,
    dist: &Tensor,
    ctr: &Tensor,
    points: &Tensor,
    level_counts: &[i64],
    valid: ImageSize,
    cfg: &PostprocessConfig,
) -> Result<Detections> {
    let device = logits.device();
    let cls = logits.to_kind(Kind::Float).sigmoid();
    let ctr = ctr.to_kind(Kind::Float).sigmoid();
    let mut picks = Vec::with_capacity(level_counts.len());
    let mut start = 0;
    for &count in level_counts {
        let range = Tensor::arange_start(start, start + count, (Kind::Int64, device));
        if cfg.nms_pre > 0 && count > cfg.nms_pre as i64 {
            let joint = cls.narrow(0, start, count) * ctr.narrow(0, start, count).unsqueeze(1);
            let order = joint.amax([1], false).argsort_stable(true, 0, true);
            picks.push(range.index_select(0, &order.narrow(0, 0, cfg.nms_pre as i64)));
        } else {
            picks.push(range);
        }
        start += count;
    }
    let idx = Tensor::cat(&picks, 0);
    let cls = cls.index_select(0, &idx);
    let ctr = ctr.index_select(0, &idx);
    let cand_boxes = decode_ltrb(
        &points.index_select(0, &idx),
        &dist.to_kind(Kind::Float).index_select(0, &idx),
        Some(valid),
    )?;
    // (row, class) pairs in row-major order, so equal scores resolve deterministically.
    let pairs = cls.gt(cfg.score_thr).nonzero();
    let (rows, labels) = (pairs.select(1, 0), pairs.select(1, 1));
    let scores = cls
        .index_select(0, &rows)
        .gather(1, &labels.unsqueeze(1), false)
        .view([-1])
        * ctr.index_select(0, &rows);
    let cand_boxes = cand_boxes.index_select(0, &rows);
    let keep = batched_nms_top(&cand_boxes, &scores, &labels, cfg.iou_thr, cfg.max_per_img)?;
    let m = keep.size()[0].min(cfg.max_per_img as i64);
    let keep = keep.narrow(0, 0, m);
    Ok(Detections {
        boxes: cand_boxes.index_select(0, &keep),
        scores: scores.index_select(0, &keep),
        labels: labels.index_select(0, &keep),
    })
}
