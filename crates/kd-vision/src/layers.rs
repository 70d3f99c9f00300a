//! The building blocks shared by the segmentation backbones and heads: MMSeg's `ConvModule`
//! (convolution without bias, BatchNorm, ReLU), the final 1×1 classifier and bilinear resizing.
//!
//! Variable names follow MMSeg (`<name>.conv.weight`, `<name>.bn.running_mean`, `conv_seg`), so
//! a checkpoint converted from an MMSeg model maps one to one.

use tch::nn::{self, Init, ModuleT};
use tch::Tensor;

/// Kaiming normal, fan-out mode, ReLU gain, as mmcv's `ConvModule` initialises its convolution.
const CONV_INIT: Init = Init::Kaiming {
    dist: nn::init::NormalOrUniform::Normal,
    fan: nn::init::FanInOut::FanOut,
    non_linearity: nn::init::NonLinearity::ReLU,
};

/// A bias-free `k × k` convolution with stride, dilation and the padding that keeps the size
/// (`dilation · (k − 1) / 2`) for odd `k`.
pub fn conv_d(p: &nn::Path<'_>, c_in: i64, c_out: i64, k: i64, stride: i64, dilation: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: dilation * (k - 1) / 2,
        dilation,
        bias: false,
        ws_init: CONV_INIT,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// Convolution (no bias) → BatchNorm → ReLU, with the variables under `p/conv` and `p/bn`.
#[derive(Debug)]
pub struct ConvBnRelu {
    conv: nn::Conv2D,
    bn: kd_core::models::BatchNorm,
}

impl ConvBnRelu {
    /// A `k × k` block `c_in → c_out` with the given dilation (stride 1, size-preserving).
    pub fn new(p: &nn::Path<'_>, c_in: i64, c_out: i64, k: i64, dilation: i64) -> Self {
        Self {
            conv: conv_d(&(p / "conv"), c_in, c_out, k, 1, dilation),
            bn: bn(&(p / "bn"), c_out),
        }
    }
}

impl ModuleT for ConvBnRelu {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        x.apply(&self.conv).apply_t(&self.bn, train).relu()
    }
}

/// The per-pixel classifier of a decode head: channel dropout (MMSeg's `Dropout2d`, train mode
/// only, skipped when `p = 0`) and a 1×1 convolution with bias, weights drawn from N(0, 0.01²)
/// and bias 0 as in MMSeg's `BaseDecodeHead`.
#[derive(Debug)]
pub struct Classifier {
    dropout: f64,
    conv: nn::Conv2D,
}

impl Classifier {
    /// `c_in → num_classes` under `p/conv_seg`.
    pub fn new(p: &nn::Path<'_>, c_in: i64, num_classes: i64, dropout: f64) -> Self {
        let cfg = nn::ConvConfig {
            ws_init: Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
            bs_init: Init::Const(0.0),
            ..Default::default()
        };
        Self {
            dropout,
            conv: nn::conv2d(&(p / "conv_seg"), c_in, num_classes, 1, cfg),
        }
    }
}

impl ModuleT for Classifier {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if self.dropout > 0.0 {
            x.feature_dropout(self.dropout, train).apply(&self.conv)
        } else {
            x.apply(&self.conv)
        }
    }
}

/// Bilinear resize of `x` `[B, C, h, w]` to `[B, C, height, width]` with `align_corners =
/// false` (MMSeg's `resize`); returns `x` itself when it already has that size.
pub fn resize_bilinear(x: &Tensor, height: i64, width: i64) -> Tensor {
    let s = x.size();
    if s[2] == height && s[3] == width {
        return x.shallow_clone();
    }
    x.upsample_bilinear2d([height, width], false, None, None)
}

/// BatchNorm2d with weight 1 and bias 0.
pub fn bn(p: &nn::Path<'_>, c: i64) -> kd_core::models::BatchNorm {
    let cfg = nn::BatchNormConfig {
        ws_init: Init::Const(1.0),
        bs_init: Init::Const(0.0),
        ..Default::default()
    };
    kd_core::models::batch_norm2d(p, c, cfg)
}
