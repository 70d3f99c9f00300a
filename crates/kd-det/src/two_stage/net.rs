//! [`FasterRcnn`]: ResNet trunk + FPN (P2–P6) + RPN as a kd-core [`Model`], with the box head
//! run by its loss terms and its detection.

use tch::{nn, Kind, Tensor};

use super::anchors::pyramid_anchors;
use super::bbox_head::{detect_image, rcnn_loss, roi_targets, BboxHead};
use super::loss::FrcnnLoss;
use super::roi_align::extract_multi_level;
use super::rpn::{proposals, rpn_loss, ProposalConfig, RpnHead};
use super::{FasterRcnnConfig, LEVELS, ROI_LEVELS};
use crate::boxes::{Detections, ImageSize, PostprocessConfig};
use crate::losses::gt_from_rows;
use crate::models::{check_detector_input, Fpn};
use kd_core::distill::LossTerms;
use kd_core::models::{Model, ModelOutput, Tap};
use kd_core::{KdError, Result};
use kd_vision::resnet_v1c::{Layout, OutputStride, ResNetV1c};

/// The head output holding the RPN's box offsets `[B, N, 4]` (the logits are its objectness
/// `[B, N, 1]`).
pub const RPN_BOX: &str = "rpn_box";

/// A Faster R-CNN detector (see the [module docs](super)).
///
/// [`Model::forward_t`] on `x` `[B, C_in, H, W]` (`H`, `W` multiples of 32) returns
/// - `logits`: RPN objectness logits `[B, N, 1]`, `N = Σ_l H_l·W_l·A` over P2 … P6, positions
///   row-major and the `A` anchors inner;
/// - `heads`: `("rpn_box", [B, N, 4])`, the RPN offsets;
/// - `features`: the FPN outputs `p2` … `p6` `[B, C, H/2^l, W/2^l]`.
///
/// Variables follow MMDet: `backbone.*`, `neck.lateral_convs.{0..3}.conv`,
/// `neck.fpn_convs.{0..3}.conv`, `rpn_head.rpn_{conv,cls,reg}`,
/// `roi_head.bbox_head.{shared_fcs.0,shared_fcs.1,fc_cls,fc_reg}`.
#[derive(Debug)]
pub struct FasterRcnn {
    name: String,
    cfg: FasterRcnnConfig,
    backbone: ResNetV1c,
    neck: Fpn,
    rpn: RpnHead,
    bbox: BboxHead,
    taps: Vec<Tap>,
}

/// Builds the network described by `cfg` under `path`; fails naming the key on a bad config.
pub fn build(path: &nn::Path<'_>, cfg: &FasterRcnnConfig) -> Result<FasterRcnn> {
    cfg.validate()?;
    let layout = Layout {
        output_stride: OutputStride::Os32,
        deep_stem: cfg.deep_stem,
    };
    let backbone = ResNetV1c::with_layout(
        &(path / "backbone"),
        &cfg.backbone,
        cfg.width,
        cfg.in_channels,
        layout,
    )?;
    let neck = Fpn::with_pooled_extra(&(path / "neck"), &backbone.channels(), cfg.fpn_channels, 1);
    let rpn = RpnHead::new(&(path / "rpn_head"), cfg.fpn_channels, cfg.anchors.per_position());
    let bbox = BboxHead::new(
        &(path / "roi_head" / "bbox_head"),
        cfg.fpn_channels,
        cfg.rcnn.roi_size,
        cfg.rcnn.fc_channels,
        cfg.num_classes,
    );
    let taps = LEVELS
        .iter()
        .map(|&l| Tap::new(&format!("p{l}"), cfg.fpn_channels, 1 << l))
        .collect();
    Ok(FasterRcnn {
        name: cfg.name(),
        cfg: cfg.clone(),
        backbone,
        neck,
        rpn,
        bbox,
        taps,
    })
}

impl FasterRcnn {
    /// The Faster R-CNN behind a model handle, or an error naming the model.
    pub fn of(model: &dyn Model) -> Result<&FasterRcnn> {
        model
            .as_any()
            .and_then(|a| a.downcast_ref::<FasterRcnn>())
            .ok_or_else(|| {
                KdError::invalid(format!(
                    "{} is not a Faster R-CNN: the two-stage loss and detection need one",
                    model.name()
                ))
            })
    }

    /// The configuration this network was built from.
    pub fn config(&self) -> &FasterRcnnConfig {
        &self.cfg
    }

    /// The FPN levels of `out` (P2 … P6), checked against the taps.
    fn levels<'a>(&self, out: &'a ModelOutput) -> Result<Vec<&'a Tensor>> {
        self.taps.iter().map(|t| out.feature(&t.name)).collect()
    }

    /// The anchors `[N, 4]` of the pyramid `levels` and the count per level.
    fn anchors(&self, levels: &[&Tensor]) -> Result<(Tensor, Vec<i64>)> {
        let sizes: Vec<(i64, i64, i64)> = levels
            .iter()
            .zip(&self.taps)
            .map(|(f, t)| {
                let s = f.size();
                (t.stride, s[2], s[3])
            })
            .collect();
        let dev = levels[0].device();
        pyramid_anchors(&sizes, &self.cfg.anchors.scales, &self.cfg.anchors.ratios, dev)
    }

    /// RPN outputs `(logits [B, N, 1], deltas [B, N, 4])` of `out`, checked against `n` anchors.
    fn rpn_outputs<'a>(&self, out: &'a ModelOutput, n: i64) -> Result<(&'a Tensor, &'a Tensor)> {
        let logits = &out.logits;
        let deltas = out.head(RPN_BOX)?;
        let b = logits.size()[0];
        if logits.size() != [b, n, 1] || deltas.size() != [b, n, 4] {
            return Err(KdError::BadShape {
                op: format!("{} outputs", self.name),
                name: "logits / rpn_box".into(),
                shape: logits.size(),
                expected: format!("[B, {n}, 1] and [B, {n}, 4] for the pyramid's {n} anchors"),
            });
        }
        Ok((logits, deltas))
    }

    /// Each image's proposals `[P_i, 4]` (no gradient), clipped to `sizes[i]`.
    fn image_proposals(
        &self,
        out: &ModelOutput,
        anchors: &Tensor,
        counts: &[i64],
        sizes: &[ImageSize],
        cfg: &ProposalConfig,
    ) -> Result<Vec<Tensor>> {
        let (logits, deltas) = self.rpn_outputs(out, anchors.size()[0])?;
        (0..logits.size()[0])
            .map(|i| {
                let (p, _) = proposals(
                    &logits.get(i),
                    &deltas.get(i),
                    anchors,
                    counts,
                    sizes[i as usize],
                    cfg,
                )?;
                Ok(p)
            })
            .collect()
    }

    /// `[R, 5]` RoI rows from per-image boxes.
    fn rois_of(props: &[Tensor]) -> Tensor {
        let rows: Vec<Tensor> = props
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let n = p.size()[0];
                let img = Tensor::full([n, 1], i as f64, (Kind::Float, p.device()));
                Tensor::cat(&[img, p.to_kind(Kind::Float)], 1)
            })
            .collect();
        Tensor::cat(&rows, 0)
    }

    /// Box-head outputs for `rois` `[R, 5]` over the levels P2 … P5 of `levels`.
    fn second_stage(&self, levels: &[&Tensor], rois: &Tensor) -> Result<(Tensor, Tensor)> {
        let strides: Vec<i64> = self.taps[..ROI_LEVELS].iter().map(|t| t.stride).collect();
        let feats = extract_multi_level(
            &levels[..ROI_LEVELS],
            &strides,
            rois,
            self.cfg.rcnn.roi_size,
            self.cfg.rcnn.finest_scale,
            0,
        )?;
        Ok(self.bbox.forward(&feats))
    }

    /// The training loss terms of `out` (this network's forward on a batch of input size
    /// `input`) against the box rows `y` `[B, N, 6]`: `"rpn_cls"`, `"rpn_box"`, `"cls"`, `"box"`,
    /// weighted by `w`. Errors name the image and row of a bad label.
    pub fn loss_terms(
        &self,
        out: &ModelOutput,
        y: &Tensor,
        input: ImageSize,
        w: &FrcnnLoss,
    ) -> Result<LossTerms> {
        let levels = self.levels(out)?;
        let (anchors, counts) = self.anchors(&levels)?;
        let (logits, deltas) = self.rpn_outputs(out, anchors.size()[0])?;
        let b = logits.size()[0];
        let ys = y.size();
        if ys.len() != 3 || ys[0] != b || ys[2] != 6 {
            return Err(KdError::BadShape {
                op: format!("{} loss", self.name),
                name: "y".into(),
                shape: ys,
                expected: format!("[{b}, N, 6] rows (x1, y1, x2, y2, class, iscrowd)"),
            });
        }
        let dev = logits.device();
        let y_host = y.to_device(tch::Device::Cpu);
        let (mut gts, mut labels) = (Vec::new(), Vec::new());
        for i in 0..b {
            let (g, l) = gt_from_rows(&y_host.get(i), self.cfg.num_classes)
                .map_err(|e| KdError::invalid(format!("{} loss: image {i}: {e}", self.name)))?;
            gts.push(g.to_device(dev));
            labels.push(l.to_device(dev));
        }
        let (rpn_cls, rpn_box, rpn_units) = rpn_loss(
            logits,
            deltas,
            &anchors,
            &gts,
            &self.cfg.rpn.assigner,
            &self.cfg.rpn.sampler,
        )?;
        let sizes = vec![input; b as usize];
        let props = self.image_proposals(out, &anchors, &counts, &sizes, &self.cfg.rpn.train)?;
        let t = roi_targets(&props, &gts, &labels, self.cfg.num_classes, &self.cfg.rcnn)?;
        let (cls, reg) = self.second_stage(&levels, &t.rois)?;
        let (loss_cls, loss_box) = rcnn_loss(&cls, &reg, &t, self.cfg.num_classes)?;
        let rois = t.rois.size()[0].max(1) as f64;
        let mut terms = LossTerms::new();
        terms.push_mean_over("rpn_cls", rpn_cls * w.rpn_cls_weight, rpn_units);
        terms.push_mean_over("rpn_box", rpn_box * w.rpn_box_weight, rpn_units);
        terms.push_mean_over("cls", loss_cls * w.cls_weight, rois);
        terms.push_mean_over("box", loss_box * w.box_weight, rois);
        Ok(terms)
    }

    /// The detections of every image of `out` (this network's eval-mode forward), boxes in input
    /// pixels clipped to each image's unpadded size `valid[i]`, with `post`'s score threshold,
    /// NMS IoU and per-image limit. Runs without gradient.
    pub fn detect(
        &self,
        out: &ModelOutput,
        valid: &[ImageSize],
        post: &PostprocessConfig,
    ) -> Result<Vec<Detections>> {
        post.validate()?;
        tch::no_grad(|| {
            let levels = self.levels(out)?;
            let b = levels[0].size()[0];
            if valid.len() as i64 != b {
                return Err(KdError::invalid(format!(
                    "{} detect: {} valid image sizes for a batch of {b} images",
                    self.name,
                    valid.len()
                )));
            }
            let (anchors, counts) = self.anchors(&levels)?;
            let props = self.image_proposals(out, &anchors, &counts, valid, &self.cfg.rpn.test)?;
            let rois = Self::rois_of(&props);
            let (cls, reg) = self.second_stage(&levels, &rois)?;
            let mut start = 0;
            props
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let n = p.size()[0];
                    let d = detect_image(
                        p,
                        &cls.narrow(0, start, n),
                        &reg.narrow(0, start, n),
                        valid[i],
                        post,
                    );
                    start += n;
                    d
                })
                .collect()
        })
    }
}

impl Model for FasterRcnn {
    fn name(&self) -> &str {
        &self.name
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> ModelOutput {
        let stages = self.backbone.forward_t(x, train);
        let pyramid = self.neck.forward(&stages);
        let (mut cls, mut reg) = (Vec::new(), Vec::new());
        for p in &pyramid {
            let (c, r) = self.rpn.forward_level(p);
            cls.push(c);
            reg.push(r);
        }
        let features = self
            .taps
            .iter()
            .zip(pyramid)
            .map(|(t, p)| (t.name.clone(), p))
            .collect();
        ModelOutput {
            logits: Tensor::cat(&cls, 1),
            aux_logits: None,
            features,
            pooled: None,
            heads: vec![(RPN_BOX.into(), Tensor::cat(&reg, 1))],
        }
    }

    fn taps(&self) -> &[Tap] {
        &self.taps
    }

    fn num_classes(&self) -> i64 {
        self.cfg.num_classes
    }

    fn in_channels(&self) -> i64 {
        self.cfg.in_channels
    }

    /// Also requires `H` and `W` to be multiples of 32 and `x` to have the weights' dtype and
    /// device.
    fn check_input(&self, x: &Tensor) -> Result<()> {
        check_detector_input(&self.name, self.cfg.in_channels, self.backbone.first_weight(), x)
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}
