//! The region proposal network of MMDetection 2.x's `RPNHead`: one shared 3×3 convolution and
//! ReLU, then per position an objectness logit and four box offsets for each of the `A`
//! anchors; its training targets (max-IoU assignment and random sampling over the anchors) and
//! its proposals (per level the best `nms_pre` anchors, decoded, NMS per level, the best
//! `max_per_img` kept).

use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::assign::{max_iou_assign, random_sample, AssignerConfig, SamplerConfig};
use super::delta::{decode, encode, RPN_STDS};
use crate::boxes::{batched_nms_top, ImageSize};
use kd_core::{KdError, Result};

/// How proposals are made from the RPN outputs (MMDet's `rpn_proposal` / `test_cfg.rpn`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalConfig {
    /// Anchors kept per level by objectness before decoding (0 keeps all).
    pub nms_pre: usize,
    /// Proposals kept per image after NMS.
    pub max_per_img: usize,
    /// NMS IoU threshold (within each level).
    pub iou_thr: f64,
    /// Proposals must be wider and higher than this (pixels).
    pub min_bbox_size: f64,
}

impl ProposalConfig {
    /// Training: 2000 per level, 1000 per image, NMS 0.7.
    pub fn train() -> Self {
        Self {
            nms_pre: 2000,
            max_per_img: 1000,
            iou_thr: 0.7,
            min_bbox_size: 0.0,
        }
    }

    /// Testing: 1000 per level, 1000 per image, NMS 0.7.
    pub fn test() -> Self {
        Self {
            nms_pre: 1000,
            ..Self::train()
        }
    }

    /// Fails on a zero `max_per_img`, an IoU outside `[0, 1]` or a negative size; names `key`.
    pub fn validate(&self, key: &str) -> Result<()> {
        if self.max_per_img == 0
            || !(0.0..=1.0).contains(&self.iou_thr)
            || self.min_bbox_size.is_nan()
            || self.min_bbox_size < 0.0
        {
            return Err(KdError::invalid(format!(
                "{key}: max_per_img must be positive, iou_thr in [0, 1] and min_bbox_size ≥ 0, got {self:?}"
            )));
        }
        Ok(())
    }
}

/// The RPN's training and test settings (the released Faster R-CNN defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpnConfig {
    /// Anchor assignment (0.7 / 0.3 / 0.3, low-quality matches).
    #[serde(default = "AssignerConfig::rpn")]
    pub assigner: AssignerConfig,
    /// Anchor sampling (256 per image, half positive).
    #[serde(default = "SamplerConfig::rpn")]
    pub sampler: SamplerConfig,
    /// Proposals for the box head during training (2000 / 1000 / 0.7).
    #[serde(default = "ProposalConfig::train")]
    pub train: ProposalConfig,
    /// Proposals at test time (1000 / 1000 / 0.7).
    #[serde(default = "ProposalConfig::test")]
    pub test: ProposalConfig,
}

impl Default for RpnConfig {
    fn default() -> Self {
        Self {
            assigner: AssignerConfig::rpn(),
            sampler: SamplerConfig::rpn(),
            train: ProposalConfig::train(),
            test: ProposalConfig::test(),
        }
    }
}

impl RpnConfig {
    /// Checks every section; errors name the key.
    pub fn validate(&self) -> Result<()> {
        self.assigner.validate("rpn.assigner")?;
        self.sampler.validate("rpn.sampler")?;
        self.train.validate("rpn.train")?;
        self.test.validate("rpn.test")
    }
}

const NORMAL_001: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.01,
};

/// The RPN head's layers: `rpn_conv` (3×3, `C → C`), `rpn_cls` (1×1, `C → A`), `rpn_reg` (1×1,
/// `C → 4A`), weights N(0, 0.01²) and biases 0 (MMDet's `RPNHead` init).
#[derive(Debug)]
pub struct RpnHead {
    conv: nn::Conv2D,
    cls: nn::Conv2D,
    reg: nn::Conv2D,
    anchors: i64,
}

impl RpnHead {
    /// The head for `channels`-channel levels and `anchors` anchors per position.
    pub fn new(p: &nn::Path<'_>, channels: i64, anchors: i64) -> Self {
        let cfg = |k: i64| nn::ConvConfig {
            padding: k / 2,
            ws_init: NORMAL_001,
            bs_init: Init::Const(0.0),
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(&(p / "rpn_conv"), channels, channels, 3, cfg(3)),
            cls: nn::conv2d(&(p / "rpn_cls"), channels, anchors, 1, cfg(1)),
            reg: nn::conv2d(&(p / "rpn_reg"), channels, 4 * anchors, 1, cfg(1)),
            anchors,
        }
    }

    /// Objectness logits `[B, H·W·A, 1]` and offsets `[B, H·W·A, 4]` of one level
    /// `[B, C, H, W]`, positions row-major and anchors inner (the anchors' layout).
    pub fn forward_level(&self, x: &Tensor) -> (Tensor, Tensor) {
        let t = x.apply(&self.conv).relu();
        let b = x.size()[0];
        let cls = t.apply(&self.cls).permute([0, 2, 3, 1]).reshape([b, -1, 1]);
        let reg = t.apply(&self.reg).permute([0, 2, 3, 1]).reshape([b, -1, 4]);
        debug_assert_eq!(cls.size()[1] % self.anchors, 0);
        (cls, reg)
    }
}

/// The RPN loss of a batch: `(objectness, box, sampled anchors)`, each loss summed over the sampled anchors of every
/// image and divided by the number of sampled anchors (positive and negative) of the batch:
/// binary cross-entropy of the logits against 1 (positive) or 0 (negative), L1 of the offsets
/// of the positives against their encoded ground truth.
///
/// `logits` `[B, N, 1]`, `deltas` `[B, N, 4]`, `anchors` `[N, 4]`, `gts` each image's
/// ground-truth boxes `[G_b, 4]`.
pub fn rpn_loss(
    logits: &Tensor,
    deltas: &Tensor,
    anchors: &Tensor,
    gts: &[Tensor],
    assigner: &AssignerConfig,
    sampler: &SamplerConfig,
) -> Result<(Tensor, Tensor, f64)> {
    let b = logits.size()[0];
    if gts.len() as i64 != b {
        return Err(KdError::invalid(format!(
            "rpn loss: {} box sets for {b} images",
            gts.len()
        )));
    }
    let dev = logits.device();
    let mut cls_terms = Vec::new();
    let mut box_terms = Vec::new();
    let mut total = 0usize;
    for (i, gt) in gts.iter().enumerate() {
        let assigned = max_iou_assign(gt, anchors, assigner)?;
        let s = random_sample(&assigned, sampler);
        total += s.pos.len() + s.neg.len();
        let lg = logits.get(i as i64).view([-1]);
        let idx: Vec<i64> = s.pos.iter().chain(&s.neg).copied().collect();
        let target: Vec<f32> = s
            .pos
            .iter()
            .map(|_| 1.0)
            .chain(s.neg.iter().map(|_| 0.0))
            .collect();
        if !idx.is_empty() {
            let sel = lg.index_select(0, &Tensor::from_slice(&idx).to_device(dev));
            let t = Tensor::from_slice(&target).to_device(dev);
            cls_terms.push(sel.binary_cross_entropy_with_logits::<Tensor>(
                &t,
                None,
                None,
                tch::Reduction::Sum,
            ));
        }
        if !s.pos.is_empty() {
            let pos = Tensor::from_slice(&s.pos).to_device(dev);
            let gi: Vec<i64> = s.pos.iter().map(|&p| assigned[p as usize] - 1).collect();
            let matched = gt.index_select(0, &Tensor::from_slice(&gi).to_device(dev));
            let target = encode(&anchors.index_select(0, &pos), &matched, &RPN_STDS)?;
            let pred = deltas.get(i as i64).index_select(0, &pos);
            box_terms.push((pred - target).abs().sum(Kind::Float));
        }
    }
    let avg = total.max(1) as f64;
    let sum = |v: Vec<Tensor>| -> Tensor {
        if v.is_empty() {
            // Keep the graph: a zero that still depends on the outputs.
            (logits.sum(Kind::Float) * 0.0).to_kind(Kind::Float)
        } else {
            Tensor::stack(&v, 0).sum(Kind::Float)
        }
    };
    Ok((sum(cls_terms) / avg, sum(box_terms) / avg, avg))
}

/// The proposals of one image: `([P, 4] boxes, [P] objectness)` sorted by decreasing score,
/// without gradient. `logits` `[N, 1]` and `deltas` `[N, 4]` are the image's RPN outputs,
/// `anchors` `[N, 4]` with `level_counts` anchors per level in order, `size` the image's valid
/// size (boxes are clipped to it).
pub fn proposals(
    logits: &Tensor,
    deltas: &Tensor,
    anchors: &Tensor,
    level_counts: &[i64],
    size: ImageSize,
    cfg: &ProposalConfig,
) -> Result<(Tensor, Tensor)> {
    tch::no_grad(|| {
        let dev = logits.device();
        let scores = logits.view([-1]).to_kind(Kind::Float).sigmoid();
        let deltas = deltas.to_kind(Kind::Float);
        let (mut boxes, mut sc, mut lv) = (Vec::new(), Vec::new(), Vec::new());
        let mut start = 0;
        for (l, &count) in level_counts.iter().enumerate() {
            let s = scores.narrow(0, start, count);
            let (s, order) = s.sort(0, true);
            let keep = if cfg.nms_pre > 0 && count > cfg.nms_pre as i64 {
                cfg.nms_pre as i64
            } else {
                count
            };
            let order = order.narrow(0, 0, keep) + start;
            let s = s.narrow(0, 0, keep);
            let d = deltas.index_select(0, &order);
            let a = anchors.index_select(0, &order);
            boxes.push(decode(&a, &d, &RPN_STDS, Some(size))?);
            sc.push(s);
            lv.push(Tensor::full([keep], l as i64, (Kind::Int64, dev)));
            start += count;
        }
        let (boxes, sc, lv) = (Tensor::cat(&boxes, 0), Tensor::cat(&sc, 0), Tensor::cat(&lv, 0));
        let w = boxes.select(1, 2) - boxes.select(1, 0);
        let h = boxes.select(1, 3) - boxes.select(1, 1);
        let valid = w.gt(cfg.min_bbox_size).logical_and(&h.gt(cfg.min_bbox_size));
        let idx = valid.nonzero().view([-1]);
        let (boxes, sc, lv) = (
            boxes.index_select(0, &idx),
            sc.index_select(0, &idx),
            lv.index_select(0, &idx),
        );
        if boxes.size()[0] == 0 {
            return Ok((boxes, sc));
        }
        let keep = batched_nms_top(&boxes, &sc, &lv, cfg.iou_thr, cfg.max_per_img)?;
        let m = keep.size()[0].min(cfg.max_per_img as i64);
        let keep = keep.narrow(0, 0, m);
        Ok((boxes.index_select(0, &keep), sc.index_select(0, &keep)))
    })
}
