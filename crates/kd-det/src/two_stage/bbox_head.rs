//! The second stage of MMDetection 2.x's Faster R-CNN: `StandardRoIHead` with a
//! `SingleRoIExtractor` (RoIAlign 7×7, `aligned`, adaptive sampling) and a `Shared2FCBBoxHead`
//! (two shared fully connected layers, then a `K + 1`-way classifier, background last, and
//! class-specific box offsets); its training targets (proposals plus the ground truth, max-IoU
//! assignment at 0.5, 512 RoIs a quarter positive) and its test-time post-processing.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::assign::{max_iou_assign, random_sample, AssignerConfig, SamplerConfig};
use super::delta::{decode, encode, RCNN_STDS};
use crate::boxes::{batched_nms_top, Detections, ImageSize, PostprocessConfig};
use kd_core::{KdError, Result};

/// The box head's settings (the released Faster R-CNN R50-FPN defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcnnConfig {
    /// Proposal assignment (0.5 / 0.5 / 0.5, no low-quality matches).
    #[serde(default = "AssignerConfig::rcnn")]
    pub assigner: AssignerConfig,
    /// RoI sampling (512 per image, a quarter positive, ground truth added).
    #[serde(default = "SamplerConfig::rcnn")]
    pub sampler: SamplerConfig,
    /// `finest_scale` of the level mapping (56: a RoI of side < 112 pixels reads P2).
    #[serde(default = "finest_scale")]
    pub finest_scale: f64,
    /// Side of the pooled RoI features (7).
    #[serde(default = "roi_size")]
    pub roi_size: i64,
    /// Width of the two shared fully connected layers (1024).
    #[serde(default = "fc_channels")]
    pub fc_channels: i64,
}

fn finest_scale() -> f64 {
    56.0
}
fn roi_size() -> i64 {
    7
}
fn fc_channels() -> i64 {
    1024
}

impl Default for RcnnConfig {
    fn default() -> Self {
        Self {
            assigner: AssignerConfig::rcnn(),
            sampler: SamplerConfig::rcnn(),
            finest_scale: finest_scale(),
            roi_size: roi_size(),
            fc_channels: fc_channels(),
        }
    }
}

impl RcnnConfig {
    /// Checks every knob; errors name the key.
    pub fn validate(&self) -> Result<()> {
        self.assigner.validate("rcnn.assigner")?;
        self.sampler.validate("rcnn.sampler")?;
        if !(self.finest_scale.is_finite() && self.finest_scale > 0.0) {
            return Err(KdError::invalid(format!(
                "rcnn.finest_scale: must be positive, got {}",
                self.finest_scale
            )));
        }
        if self.roi_size < 1 || self.fc_channels < 1 {
            return Err(KdError::invalid(format!(
                "rcnn: roi_size and fc_channels must be positive, got {} and {}",
                self.roi_size, self.fc_channels
            )));
        }
        Ok(())
    }
}

/// `Shared2FCBBoxHead`: `shared_fcs.{0,1}` (Xavier-uniform, bias 0) with ReLU, `fc_cls`
/// (`K + 1` outputs, N(0, 0.01²)) and `fc_reg` (`4K` outputs, N(0, 0.001²)).
#[derive(Debug)]
pub struct BboxHead {
    fc0: nn::Linear,
    fc1: nn::Linear,
    cls: nn::Linear,
    reg: nn::Linear,
    num_classes: i64,
}

fn linear(p: &nn::Path<'_>, i: i64, o: i64, ws: Init) -> nn::Linear {
    nn::linear(
        p,
        i,
        o,
        nn::LinearConfig {
            ws_init: ws,
            bs_init: Some(Init::Const(0.0)),
            bias: true,
        },
    )
}

fn xavier(i: i64, o: i64) -> Init {
    let bound = (6.0 / (i + o) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

impl BboxHead {
    /// The head on `[R, channels, roi, roi]` RoI features with `fc` hidden units and
    /// `num_classes` classes.
    pub fn new(p: &nn::Path<'_>, channels: i64, roi: i64, fc: i64, num_classes: i64) -> Self {
        let inp = channels * roi * roi;
        let sp = p / "shared_fcs";
        Self {
            fc0: linear(&(&sp / 0), inp, fc, xavier(inp, fc)),
            fc1: linear(&(&sp / 1), fc, fc, xavier(fc, fc)),
            cls: linear(
                &(p / "fc_cls"),
                fc,
                num_classes + 1,
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
            ),
            reg: linear(
                &(p / "fc_reg"),
                fc,
                4 * num_classes,
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.001,
                },
            ),
            num_classes,
        }
    }

    /// Class logits `[R, K + 1]` (background last) and offsets `[R, 4K]` of RoI features
    /// `[R, C, roi, roi]`.
    pub fn forward(&self, feats: &Tensor) -> (Tensor, Tensor) {
        let x = feats
            .flatten(1, -1)
            .apply(&self.fc0)
            .relu()
            .apply(&self.fc1)
            .relu();
        (x.apply(&self.cls), x.apply(&self.reg))
    }

    /// Number of object classes `K`.
    pub fn num_classes(&self) -> i64 {
        self.num_classes
    }
}

/// The sampled RoIs of a batch and their targets.
#[derive(Debug)]
pub struct RoiTargets {
    /// `[R, 5]` rows `(image, x1, y1, x2, y2)`, each image's positives first.
    pub rois: Tensor,
    /// `[R]` class of each RoI, `K` (background) for negatives.
    pub labels: Tensor,
    /// Row indices of the positives in `rois`, `[P]`.
    pub pos_rows: Tensor,
    /// Encoded ground truth of the positives `[P, 4]` (standard deviations 0.1, 0.1, 0.2, 0.2).
    pub pos_targets: Tensor,
}

/// Assigns and samples each image's proposals (`props[i]` `[P_i, 4]`) against its ground truth
/// (`gts[i]` `[G_i, 4]`, `labels[i]` `[G_i]`), as `StandardRoIHead.forward_train` does.
pub fn roi_targets(
    props: &[Tensor],
    gts: &[Tensor],
    labels: &[Tensor],
    num_classes: i64,
    cfg: &RcnnConfig,
) -> Result<RoiTargets> {
    let dev = gts.first().map_or(tch::Device::Cpu, Tensor::device);
    let (mut rois, mut labs, mut pos_rows, mut targets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut row = 0i64;
    for (i, ((p, gt), gl)) in props.iter().zip(gts).zip(labels).enumerate() {
        let mut assigned = max_iou_assign(gt, p, &cfg.assigner)?;
        let g = gt.size()[0];
        let cands = if cfg.sampler.add_gt_as_proposals && g > 0 {
            let mut with_gt: Vec<i64> = (1..=g).collect();
            with_gt.append(&mut assigned);
            assigned = with_gt;
            Tensor::cat(&[&gt.to_kind(Kind::Float), &p.to_kind(Kind::Float)], 0)
        } else {
            p.to_kind(Kind::Float)
        };
        let s = random_sample(&assigned, &cfg.sampler);
        let idx: Vec<i64> = s.pos.iter().chain(&s.neg).copied().collect();
        if idx.is_empty() {
            continue;
        }
        let boxes = cands.index_select(0, &Tensor::from_slice(&idx).to_device(dev));
        let n = idx.len() as i64;
        let img = Tensor::full([n, 1], i as f64, (Kind::Float, dev));
        rois.push(Tensor::cat(&[img, boxes.shallow_clone()], 1));
        let np = s.pos.len() as i64;
        let gi: Vec<i64> = s.pos.iter().map(|&q| assigned[q as usize] - 1).collect();
        let gi = Tensor::from_slice(&gi).to_device(dev);
        let pos_labels = gl.index_select(0, &gi);
        labs.push(Tensor::cat(
            &[
                pos_labels,
                Tensor::full([n - np], num_classes, (Kind::Int64, dev)),
            ],
            0,
        ));
        if np > 0 {
            pos_rows.push(Tensor::arange_start(row, row + np, (Kind::Int64, dev)));
            targets.push(encode(
                &boxes.narrow(0, 0, np),
                &gt.to_kind(Kind::Float).index_select(0, &gi),
                &RCNN_STDS,
            )?);
        }
        row += n;
    }
    let cat_or = |v: Vec<Tensor>, empty: Tensor| if v.is_empty() { empty } else { Tensor::cat(&v, 0) };
    Ok(RoiTargets {
        rois: cat_or(rois, Tensor::zeros([0, 5], (Kind::Float, dev))),
        labels: cat_or(labs, Tensor::zeros([0], (Kind::Int64, dev))),
        pos_rows: cat_or(pos_rows, Tensor::zeros([0], (Kind::Int64, dev))),
        pos_targets: cat_or(targets, Tensor::zeros([0, 4], (Kind::Float, dev))),
    })
}

/// The box head's loss `(classification, box)`: cross-entropy of `cls` `[R, K + 1]` against
/// the RoI labels averaged over the `R` RoIs, and L1 of the positives' offsets for their own
/// class (read from `reg` `[R, 4K]`) against their targets, summed and divided by `R`.
pub fn rcnn_loss(cls: &Tensor, reg: &Tensor, t: &RoiTargets, num_classes: i64) -> Result<(Tensor, Tensor)> {
    let r = cls.size()[0];
    if r == 0 {
        let zero = cls.sum(Kind::Float) * 0.0 + reg.sum(Kind::Float) * 0.0;
        return Ok((zero.shallow_clone(), zero));
    }
    let loss_cls = cls.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
        &t.labels,
        None,
        tch::Reduction::Mean,
        -100,
        0.0,
    );
    let p = t.pos_rows.size()[0];
    let loss_box = if p == 0 {
        reg.sum(Kind::Float) * 0.0
    } else {
        let pos_labels = t.labels.index_select(0, &t.pos_rows);
        let per_class = reg
            .to_kind(Kind::Float)
            .view([r, num_classes, 4])
            .index_select(0, &t.pos_rows);
        let idx = pos_labels.view([p, 1, 1]).expand([p, 1, 4], false);
        let pred = per_class.gather(1, &idx, false).view([p, 4]);
        (pred - &t.pos_targets).abs().sum(Kind::Float) / r as f64
    };
    Ok((loss_cls, loss_box))
}

/// The detections of one image from its RoIs `rois` `[P, 4]` and the head outputs `cls`
/// `[P, K + 1]`, `reg` `[P, 4K]` (MMDet's `multiclass_nms`): softmax scores, class-specific
/// boxes clipped to `size`, every (RoI, class) pair scoring above `post.score_thr`, NMS per
/// class at `post.iou_thr`, the best `post.max_per_img`.
pub fn detect_image(
    rois: &Tensor,
    cls: &Tensor,
    reg: &Tensor,
    size: ImageSize,
    post: &PostprocessConfig,
) -> Result<Detections> {
    let dev = cls.device();
    let p = rois.size()[0];
    let k = cls.size()[1] - 1;
    if p == 0 {
        return Ok(Detections {
            boxes: Tensor::zeros([0, 4], (Kind::Float, dev)),
            scores: Tensor::zeros([0], (Kind::Float, dev)),
            labels: Tensor::zeros([0], (Kind::Int64, dev)),
        });
    }
    let scores = cls.to_kind(Kind::Float).softmax(1, Kind::Float).narrow(1, 0, k);
    let boxes = decode(rois, reg, &RCNN_STDS, Some(size))?.view([p, k, 4]);
    let pairs = scores.gt(post.score_thr).nonzero();
    let (rows, labels) = (pairs.select(1, 0), pairs.select(1, 1));
    let flat = &rows * k + &labels;
    let s = scores.reshape([-1]).index_select(0, &flat);
    let b = boxes.reshape([-1, 4]).index_select(0, &flat);
    let keep = batched_nms_top(&b, &s, &labels, post.iou_thr, post.max_per_img)?;
    let m = keep.size()[0].min(post.max_per_img as i64);
    let keep = keep.narrow(0, 0, m);
    Ok(Detections {
        boxes: b.index_select(0, &keep),
        scores: s.index_select(0, &keep),
        labels: labels.index_select(0, &keep),
    })
}
