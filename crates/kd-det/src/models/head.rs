//! The FCOS head (MMDet's `FCOSHead` with `norm_on_bbox = True`, `centerness_on_reg = True`
//! and GroupNorm towers), shared by every pyramid level.
//!
//! One set of weights serves all levels, so the regression output is rescaled per level twice:
//! by a learnable scalar `scales.{l}` (init 1) and by the level stride, which makes the box
//! distances input pixels at every level (MMDet multiplies by the stride only at test time and
//! divides the targets instead; the loss of GIoU form is the same either way).

use tch::nn::{self, Init, Module};
use tch::Tensor;

/// N(0, 0.01²) weights, as MMDet's `AnchorFreeHead` initialises every head convolution.
const HEAD_INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.01,
};

/// A 3×3 stride-1 convolution `c_in → c_out` with `HEAD_INIT` weights and, when `bias` is
/// given, that constant bias.
fn head_conv(p: &nn::Path<'_>, c_in: i64, c_out: i64, bias: Option<f64>) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        padding: 1,
        bias: bias.is_some(),
        ws_init: HEAD_INIT,
        bs_init: Init::Const(bias.unwrap_or(0.0)),
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, 3, cfg)
}

/// One tower layer: 3×3 convolution without bias → GroupNorm → ReLU (`{i}.conv`, `{i}.gn`).
#[derive(Debug)]
struct ConvGnRelu {
    conv: nn::Conv2D,
    gn: nn::GroupNorm,
}

impl ConvGnRelu {
    fn new(p: &nn::Path<'_>, channels: i64, groups: i64) -> Self {
        Self {
            conv: head_conv(&(p / "conv"), channels, channels, None),
            gn: nn::group_norm(&(p / "gn"), groups, channels, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.conv).apply(&self.gn).relu()
    }
}

/// What the head predicts for one level of `B` images with an `H × W` map.
#[derive(Debug)]
pub struct LevelOutput {
    /// Class logits `[B, K, H, W]`.
    pub cls: Tensor,
    /// Box distances (l, t, r, b) in input pixels, ≥ 0, `[B, 4, H, W]`.
    pub boxes: Tensor,
    /// Centre-ness logits `[B, 1, H, W]`.
    pub centerness: Tensor,
}

/// The shared FCOS head: a classification tower and a regression tower of `stacked_convs`
/// 3×3 GN-ReLU layers each, then `conv_cls` (3×3 → K, bias `−ln((1 − p) / p)`), `conv_reg`
/// (3×3 → 4) and `conv_centerness` (3×3 → 1, on the regression tower), and one learnable scale
/// per level. GroupNorm has no running statistics, so the head behaves the same in train and
/// eval mode.
///
/// Variables (under the head's path): `cls_convs.{i}.conv.weight`, `cls_convs.{i}.gn.{weight,
/// bias}`, `reg_convs.…`, `conv_cls.{weight,bias}`, `conv_reg.…`, `conv_centerness.…`,
/// `scales.{l}.scale` (a 0-d tensor).
#[derive(Debug)]
pub struct FcosHead {
    cls_convs: Vec<ConvGnRelu>,
    reg_convs: Vec<ConvGnRelu>,
    conv_cls: nn::Conv2D,
    conv_reg: nn::Conv2D,
    conv_centerness: nn::Conv2D,
    scales: Vec<Tensor>,
}

impl FcosHead {
    /// A head on `channels`-channel maps with `stacked_convs` layers per tower, `gn_groups`
    /// GroupNorm groups (must divide `channels`), `num_classes` outputs, classification prior
    /// `prior_prob` and `num_levels` per-level scales. The caller validates the arguments.
    pub fn new(
        p: &nn::Path<'_>,
        channels: i64,
        stacked_convs: usize,
        gn_groups: i64,
        num_classes: i64,
        prior_prob: f64,
        num_levels: usize,
    ) -> Self {
        let tower = |name: &str| -> Vec<ConvGnRelu> {
            let tp = p / name;
            (0..stacked_convs)
                .map(|i| ConvGnRelu::new(&(&tp / i), channels, gn_groups))
                .collect()
        };
        let cls_bias = -((1.0 - prior_prob) / prior_prob).ln();
        let sp = p / "scales";
        Self {
            cls_convs: tower("cls_convs"),
            reg_convs: tower("reg_convs"),
            conv_cls: head_conv(&(p / "conv_cls"), channels, num_classes, Some(cls_bias)),
            conv_reg: head_conv(&(p / "conv_reg"), channels, 4, Some(0.0)),
            conv_centerness: head_conv(&(p / "conv_centerness"), channels, 1, Some(0.0)),
            scales: (0..num_levels)
                .map(|l| (&sp / l).var("scale", &[], Init::Const(1.0)))
                .collect(),
        }
    }

    /// The head on level `level` (an index into the levels, for its scale) of map `x`
    /// `[B, C, H, W]` whose stride is `stride` input pixels.
    pub fn forward_level(&self, x: &Tensor, level: usize, stride: i64) -> LevelOutput {
        let cls_feat = self
            .cls_convs
            .iter()
            .fold(x.shallow_clone(), |h, l| l.forward(&h));
        let reg_feat = self
            .reg_convs
            .iter()
            .fold(x.shallow_clone(), |h, l| l.forward(&h));
        let reg = self.conv_reg.forward(&reg_feat);
        let boxes = (reg * &self.scales[level]).relu() * stride as f64;
        LevelOutput {
            cls: self.conv_cls.forward(&cls_feat),
            boxes,
            centerness: self.conv_centerness.forward(&reg_feat),
        }
    }
}
