//! Which boxes train which targets: MMDetection 2.x's `MaxIoUAssigner` and `RandomSampler`,
//! shared by the RPN (over anchors) and the box head (over proposals).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::boxes::box_iou;
use kd_core::{KdError, Result};

/// `MaxIoUAssigner` settings (`ignore_iof_thr = -1`: crowd regions are not ground truth and
/// ignore nothing, as in the released Faster R-CNN configs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignerConfig {
    /// A box whose best IoU with a ground-truth box reaches this is positive for that box.
    pub pos_iou_thr: f64,
    /// A box whose best IoU lies in `[0, neg_iou_thr)` is negative.
    pub neg_iou_thr: f64,
    /// The least IoU at which a ground-truth box claims its best boxes (low-quality matches).
    pub min_pos_iou: f64,
    /// Whether every ground-truth box claims the boxes it overlaps best, even below
    /// `pos_iou_thr` (each one of equal best IoU: `gt_max_assign_all = True`).
    pub match_low_quality: bool,
}

impl AssignerConfig {
    /// The RPN's: 0.7 / 0.3 / 0.3, low-quality matches on.
    pub fn rpn() -> Self {
        Self {
            pos_iou_thr: 0.7,
            neg_iou_thr: 0.3,
            min_pos_iou: 0.3,
            match_low_quality: true,
        }
    }

    /// The box head's: 0.5 / 0.5 / 0.5, low-quality matches off.
    pub fn rcnn() -> Self {
        Self {
            pos_iou_thr: 0.5,
            neg_iou_thr: 0.5,
            min_pos_iou: 0.5,
            match_low_quality: false,
        }
    }

    /// Fails unless the thresholds lie in `[0, 1]` with `neg_iou_thr ≤ pos_iou_thr`; names `key`.
    pub fn validate(&self, key: &str) -> Result<()> {
        let ok = |v: f64| (0.0..=1.0).contains(&v);
        if !(ok(self.pos_iou_thr) && ok(self.neg_iou_thr) && ok(self.min_pos_iou))
            || self.neg_iou_thr > self.pos_iou_thr
        {
            return Err(KdError::invalid(format!(
                "{key}: IoU thresholds must lie in [0, 1] with neg_iou_thr ≤ pos_iou_thr, got {self:?}"
            )));
        }
        Ok(())
    }
}

/// `RandomSampler` settings (`neg_pos_ub = -1`: negatives fill whatever the positives leave).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    /// Boxes sampled per image.
    pub num: usize,
    /// At most `⌊num · pos_fraction⌋` of them positive.
    pub pos_fraction: f64,
    /// Whether the ground-truth boxes join the candidates (each assigned to itself) before
    /// sampling.
    pub add_gt_as_proposals: bool,
}

impl SamplerConfig {
    /// The RPN's: 256 anchors, half positive, no ground truth added.
    pub fn rpn() -> Self {
        Self {
            num: 256,
            pos_fraction: 0.5,
            add_gt_as_proposals: false,
        }
    }

    /// The box head's: 512 RoIs, a quarter positive, ground truth added.
    pub fn rcnn() -> Self {
        Self {
            num: 512,
            pos_fraction: 0.25,
            add_gt_as_proposals: true,
        }
    }

    /// Fails unless `num > 0` and `pos_fraction` lies in `[0, 1]`; names `key`.
    pub fn validate(&self, key: &str) -> Result<()> {
        if self.num == 0 || !(0.0..=1.0).contains(&self.pos_fraction) {
            return Err(KdError::invalid(format!(
                "{key}: num must be positive and pos_fraction in [0, 1], got {self:?}"
            )));
        }
        Ok(())
    }
}

/// The assignment of `n` boxes: `0` negative, `-1` ignored, `g + 1` positive for ground-truth
/// box `g`.
pub type Assignment = Vec<i64>;

/// `MaxIoUAssigner.assign` of `boxes` `[N, 4]` to ground truth `gt` `[G, 4]` (xyxy, pixels).
///
/// Every box starts ignored; a best IoU in `[0, neg_iou_thr)` makes it negative, one
/// `≥ pos_iou_thr` positive for its best box; then, with low-quality matching, each ground-truth
/// box in order claims every box of its own best IoU when that IoU is `≥ min_pos_iou` (later
/// boxes overwrite earlier ones). With no ground truth every box is negative.
pub fn max_iou_assign(gt: &Tensor, boxes: &Tensor, cfg: &AssignerConfig) -> Result<Assignment> {
    let n = boxes.size()[0] as usize;
    let g = gt.size()[0] as usize;
    if g == 0 || n == 0 {
        return Ok(vec![0; n]);
    }
    let iou = box_iou(&gt.to_kind(Kind::Float), &boxes.to_kind(Kind::Float))?;
    let iou = Vec::<f32>::try_from(iou.to_device(tch::Device::Cpu).reshape([-1]))?;
    Ok(assign_overlaps(&iou, g, n, cfg))
}

/// [`max_iou_assign`] on precomputed overlaps `iou` (`G × N`, row-major).
pub fn assign_overlaps(iou: &[f32], g: usize, n: usize, cfg: &AssignerConfig) -> Assignment {
    let mut assigned = vec![-1i64; n];
    for (j, a) in assigned.iter_mut().enumerate() {
        // argmax over the ground truth: the first of equal maxima, as torch.max returns it
        // on the CPU.
        let (mut best, mut arg) = (iou[j], 0usize);
        for i in 1..g {
            if iou[i * n + j] > best {
                best = iou[i * n + j];
                arg = i;
            }
        }
        let best = f64::from(best);
        if best >= 0.0 && best < cfg.neg_iou_thr {
            *a = 0;
        }
        if best >= cfg.pos_iou_thr {
            *a = arg as i64 + 1;
        }
    }
    if cfg.match_low_quality {
        for i in 0..g {
            let row = &iou[i * n..(i + 1) * n];
            let gt_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if f64::from(gt_max) >= cfg.min_pos_iou {
                for (j, &v) in row.iter().enumerate() {
                    if v == gt_max {
                        assigned[j] = i as i64 + 1;
                    }
                }
            }
        }
    }
    assigned
}

/// The sampled boxes of one image: indices into the assignment, positives then negatives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sampled {
    /// Positive indices, ascending.
    pub pos: Vec<i64>,
    /// Negative indices, ascending.
    pub neg: Vec<i64>,
}

/// `RandomSampler.sample` on `assigned`: up to `⌊num · pos_fraction⌋` positives, then negatives
/// up to `num` in all, each side drawn without replacement from libtorch's generator (a
/// `randperm` prefix) when it has more candidates than places, else taken whole.
pub fn random_sample(assigned: &[i64], cfg: &SamplerConfig) -> Sampled {
    let pick = |cands: Vec<i64>, want: usize| -> Vec<i64> {
        if cands.len() <= want {
            return cands;
        }
        let perm = Tensor::randperm(cands.len() as i64, (Kind::Int64, tch::Device::Cpu));
        let perm = Vec::<i64>::try_from(perm.narrow(0, 0, want as i64)).unwrap_or_default();
        perm.into_iter().map(|p| cands[p as usize]).collect()
    };
    let want_pos = (cfg.num as f64 * cfg.pos_fraction) as usize;
    let pos_c: Vec<i64> = (0..assigned.len() as i64)
        .filter(|&i| assigned[i as usize] > 0)
        .collect();
    let pos = pick(pos_c, want_pos);
    let want_neg = cfg.num - pos.len();
    let neg_c: Vec<i64> = (0..assigned.len() as i64)
        .filter(|&i| assigned[i as usize] == 0)
        .collect();
    let mut neg = pick(neg_c, want_neg);
    // `BaseSampler.sample` keeps `pos_inds.unique()` and `neg_inds.unique()`: sorted.
    let mut pos = pos;
    pos.sort_unstable();
    neg.sort_unstable();
    Sampled { pos, neg }
}
