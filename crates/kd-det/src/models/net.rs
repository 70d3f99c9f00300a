//! [`Detector`]: ResNet trunk + FPN + FCOS head as a kd-core [`Model`].

use tch::nn;
use tch::Tensor;

use super::fpn::Fpn;
use super::head::FcosHead;
use super::DetectorConfig;
use kd_core::models::{check_input_shape, Model, ModelOutput, Tap};
use kd_core::{KdError, Result};
use kd_vision::resnet_v1c::{Layout, OutputStride, ResNetV1c};

/// Input sides must be multiples of this (the trunk's output stride), so that every backbone
/// map is exactly `H / s` and the top-down pathway adds maps of equal size.
pub const SIZE_DIVISOR: i64 = 32;

/// An FCOS detector (see the [module docs](super) for the layout and the reconstruction
/// choices).
///
/// [`Model::forward_t`] on `x` `[B, C_in, H, W]` (`H`, `W` multiples of 32) returns
/// - `logits`: class logits `[B, A, K]`, `A = Σ_l H_l · W_l` over the levels in tap order,
///   row-major within a level;
/// - `heads`: `("box", [B, A, 4])` distances (l, t, r, b) in input pixels, ≥ 0, and
///   `("centerness", [B, A, 1])` logits;
/// - `features`: the FPN outputs `p<l>` `[B, C, ⌈H/2^l⌉, ⌈W/2^l⌉]` for each level `l`, before
///   any activation;
/// - `aux_logits` and `pooled`: `None`.
///
/// The backbone's BatchNorm follows the `train` flag; the neck has no normalisation and the
/// head's GroupNorm has no running statistics.
#[derive(Debug)]
pub struct Detector {
    name: String,
    cfg: DetectorConfig,
    backbone: ResNetV1c,
    neck: Fpn,
    head: FcosHead,
    taps: Vec<Tap>,
}

/// Builds the detector described by `cfg` with its variables under `path` (MMDet layout:
/// `backbone.*`, `neck.*`, `bbox_head.*`).
///
/// Fails with [`KdError::Invalid`] naming the key for an unknown backbone, a bad width,
/// non-positive channels or classes, levels outside `2..=5` / `5..=7`, GroupNorm groups that
/// do not divide the FPN channels, or a prior outside `(0, 1)`.
pub fn build(path: &nn::Path<'_>, cfg: &DetectorConfig) -> Result<Detector> {
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
    let ch = backbone.channels();
    let first_stage = cfg.start_level as usize - 2;
    let extra = (cfg.end_level - 5) as usize;
    let neck = Fpn::new(&(path / "neck"), &ch[first_stage..], cfg.fpn_channels, extra);
    let levels = cfg.levels();
    let head = FcosHead::new(
        &(path / "bbox_head"),
        cfg.fpn_channels,
        cfg.stacked_convs,
        cfg.resolved_gn_groups(),
        cfg.num_classes,
        cfg.prior_prob,
        levels.len(),
    );
    let taps = levels
        .iter()
        .map(|&l| Tap::new(&format!("p{l}"), cfg.fpn_channels, 1 << l))
        .collect();
    Ok(Detector {
        name: cfg.name(),
        cfg: cfg.clone(),
        backbone,
        neck,
        head,
        taps,
    })
}

impl Detector {
    /// The configuration this network was built from.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// The backbone trunk (stage strides 4, 8, 16, 32).
    pub fn backbone(&self) -> &ResNetV1c {
        &self.backbone
    }

    /// The FPN neck.
    pub fn neck(&self) -> &Fpn {
        &self.neck
    }

    /// The FCOS head.
    pub fn head(&self) -> &FcosHead {
        &self.head
    }

    /// The FPN outputs alone for `x` `[B, C_in, H, W]`: `[B, C, H_l, W_l]` per level.
    pub fn pyramid(&self, x: &Tensor, train: bool) -> Vec<Tensor> {
        let stages = self.backbone.forward_t(x, train);
        let first_stage = self.cfg.start_level as usize - 2;
        self.neck.forward(&stages[first_stage..])
    }
}

/// `[B, C, H, W]` → `[B, H·W, C]` (row-major positions).
fn flatten_level(x: &Tensor) -> Tensor {
    let s = x.size();
    x.permute([0, 2, 3, 1]).reshape([s[0], s[2] * s[3], s[1]])
}

impl Model for Detector {
    fn name(&self) -> &str {
        &self.name
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> ModelOutput {
        let pyramid = self.pyramid(x, train);
        let n = pyramid.len();
        let (mut cls, mut boxes, mut ctr) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (l, (p, t)) in pyramid.iter().zip(&self.taps).enumerate() {
            let out = self.head.forward_level(p, l, t.stride);
            cls.push(flatten_level(&out.cls));
            boxes.push(flatten_level(&out.boxes));
            ctr.push(flatten_level(&out.centerness));
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
            heads: vec![
                ("box".into(), Tensor::cat(&boxes, 1)),
                ("centerness".into(), Tensor::cat(&ctr, 1)),
            ],
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
}

/// The input contract every detector here shares: `x` `[B, in_channels, H, W]` with `H` and `W`
/// multiples of [`SIZE_DIVISOR`], in the dtype and on the device of the first weight `w`.
pub(crate) fn check_detector_input(name: &str, in_channels: i64, w: &Tensor, x: &Tensor) -> Result<()> {
    check_input_shape(name, in_channels, x)?;
    let s = x.size();
    if s[2] % SIZE_DIVISOR != 0 || s[3] % SIZE_DIVISOR != 0 {
        return Err(KdError::BadShape {
            op: format!("{name} input"),
            name: "x".into(),
            shape: s,
            expected: format!(
                "[B, {in_channels}, H, W] with H and W multiples of {SIZE_DIVISOR} (pad the batch)"
            ),
        });
    }
    let (kind, device) = (w.kind(), w.device());
    if x.kind() != kind || x.device() != device {
        return Err(KdError::invalid(format!(
            "{name} input: x is {:?} on {:?}, but the model's weights are {kind:?} on {device:?}",
            x.kind(),
            x.device()
        )));
    }
    Ok(())
}
