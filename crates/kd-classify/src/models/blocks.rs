//! Layers shared by the CIFAR zoo, initialised as torchvision and RepDistiller do.
//!
//! tch's defaults differ from PyTorch's in ways that matter for reproducing published numbers:
//! BatchNorm weights start uniform in `[0, 1)` instead of at 1, and `nn::linear` draws weights
//! from a ReLU-gain Kaiming uniform that is √6 times wider than `torch.nn.Linear`. The helpers
//! here pin the PyTorch behaviour in one place. Variable names follow the PyTorch modules
//! (`conv1.weight`, `bn1.running_mean`, `layer1.0.downsample.0.weight`, ...), so weights
//! exported from RepDistiller checkpoints map one to one.

pub(crate) use kd_vision::layers::bn;
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init, ModuleT};
use tch::Tensor;

use super::Tap;

/// Kaiming normal, fan-out mode, ReLU gain: `std = sqrt(2 / (C_out · k · k))`.
const CONV_INIT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// A bias-free `k × k` convolution with "same" padding for odd `k`.
pub(crate) fn conv(p: &nn::Path<'_>, c_in: i64, c_out: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        ws_init: CONV_INIT,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// A linear layer initialised like `torch.nn.Linear`: weight and bias uniform in
/// `±1/sqrt(fan_in)`.
pub(crate) fn linear(p: &nn::Path<'_>, d_in: i64, d_out: i64) -> nn::Linear {
    let bound = 1.0 / (d_in as f64).sqrt();
    let cfg = nn::LinearConfig {
        ws_init: Init::Uniform {
            lo: -bound,
            up: bound,
        },
        bs_init: Some(Init::Uniform {
            lo: -bound,
            up: bound,
        }),
        bias: true,
    };
    nn::linear(p, d_in, d_out, cfg)
}

/// A [`Tap`] description.
pub(crate) fn tap(name: &str, channels: i64, stride: i64) -> Tap {
    Tap::new(name, channels, stride)
}

/// Global average pooling `[B, C, H, W] -> [B, C]`.
pub(crate) fn global_avg_pool(x: &Tensor) -> Tensor {
    x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}

/// The post-activation residual block of CIFAR ResNets (`BasicBlock` in RepDistiller):
/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, where the shortcut is the identity or,
/// when the stride or width changes, a 1×1 convolution plus BatchNorm.
#[derive(Debug)]
pub(crate) struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: kd_core::models::BatchNorm,
    conv2: nn::Conv2D,
    bn2: kd_core::models::BatchNorm,
    downsample: Option<(nn::Conv2D, kd_core::models::BatchNorm)>,
}

impl BasicBlock {
    pub(crate) fn new(p: &nn::Path<'_>, c_in: i64, c_out: i64, stride: i64) -> Self {
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            (conv(&(&d / "0"), c_in, c_out, 1, stride), bn(&(&d / "1"), c_out))
        });
        Self {
            conv1: conv(&(p / "conv1"), c_in, c_out, 3, stride),
            bn1: bn(&(p / "bn1"), c_out),
            conv2: conv(&(p / "conv2"), c_out, c_out, 3, 1),
            bn2: bn(&(p / "bn2"), c_out),
            downsample,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = x
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train);
        let residual = match &self.downsample {
            Some((c, b)) => x.apply(c).apply_t(b, train),
            None => x.shallow_clone(),
        };
        (out + residual).relu()
    }
}

/// The pre-activation wide block of WRN (RepDistiller's `wrn.BasicBlock`):
/// `conv2(drop(relu(bn2(conv1(relu(bn1(x))))))) + shortcut`. When the width or stride changes,
/// the shortcut is a 1×1 convolution of the *activated* input `relu(bn1(x))`, as in the
/// reference code; otherwise it is `x` itself.
#[derive(Debug)]
pub(crate) struct WideBlock {
    bn1: kd_core::models::BatchNorm,
    conv1: nn::Conv2D,
    bn2: kd_core::models::BatchNorm,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
    drop_rate: f64,
}

impl WideBlock {
    pub(crate) fn new(p: &nn::Path<'_>, c_in: i64, c_out: i64, stride: i64, drop_rate: f64) -> Self {
        let shortcut =
            (stride != 1 || c_in != c_out).then(|| conv(&(p / "convShortcut"), c_in, c_out, 1, stride));
        Self {
            bn1: bn(&(p / "bn1"), c_in),
            conv1: conv(&(p / "conv1"), c_in, c_out, 3, stride),
            bn2: bn(&(p / "bn2"), c_out),
            conv2: conv(&(p / "conv2"), c_out, c_out, 3, 1),
            shortcut,
            drop_rate,
        }
    }
}

impl ModuleT for WideBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let a = x.apply_t(&self.bn1, train).relu();
        let mut out = a.apply(&self.conv1).apply_t(&self.bn2, train).relu();
        if self.drop_rate > 0.0 {
            out = out.dropout(self.drop_rate, train);
        }
        let out = out.apply(&self.conv2);
        match &self.shortcut {
            Some(c) => out + a.apply(c),
            None => out + x,
        }
    }
}
