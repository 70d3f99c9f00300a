//! The FPN neck: MMDet's `FPN` with `add_extra_convs = 'on_output'` and
//! `relu_before_extra_convs = True`, as FCOS configures it, or with `add_extra_convs = False`,
//! as Faster R-CNN configures it (levels above the inputs by stride-2 subsampling of the last
//! output, `F.max_pool2d(x, 1, stride=2)`).
//!
//! The FPN outputs are what detection distillers compare, so the feature of a level is the raw
//! output of its output convolution: MMDet's FPN has no activation after `fpn_convs`, and the
//! ReLU before P7's convolution is applied to a copy, never to the returned P6.

use tch::nn::{self, Init};
use tch::Tensor;

/// Xavier-uniform initialisation of a `k × k` convolution `c_in → c_out` (MMDet's FPN
/// `init_cfg`): uniform in `±sqrt(6 / (fan_in + fan_out))`, `fan = C · k · k`.
fn xavier_uniform(c_in: i64, c_out: i64, k: i64) -> Init {
    let bound = (6.0 / ((c_in + c_out) * k * k) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A `k × k` convolution with bias 0 and Xavier-uniform weights under `p/conv` (MMDet's
/// `ConvModule` without a norm layer), size-preserving at stride 1.
fn conv_module(p: &nn::Path<'_>, c_in: i64, c_out: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        ws_init: xavier_uniform(c_in, c_out, k),
        bs_init: Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(&(p / "conv"), c_in, c_out, k, cfg)
}

/// The feature pyramid: lateral 1×1 convolutions on backbone maps C`start`…C5, a top-down
/// pathway (nearest upsampling to the finer map's size, then addition), a 3×3 output
/// convolution per level and, above level 5, stride-2 3×3 extra convolutions.
///
/// Variables (under the neck's path): `lateral_convs.{i}.conv.{weight,bias}` and
/// `fpn_convs.{i}.conv.{weight,bias}`, `i` counting levels from `start` (the extra
/// convolutions continue the `fpn_convs` numbering, as in MMDet).
#[derive(Debug)]
pub struct Fpn {
    lateral: Vec<nn::Conv2D>,
    output: Vec<nn::Conv2D>,
    extra: Vec<nn::Conv2D>,
    pooled: usize,
}

impl Fpn {
    /// An FPN taking backbone maps with `in_channels` channels (C`start` … C5, finest first)
    /// to `channels` channels, with `extra_levels` levels above P5. The caller validates the
    /// arguments (positive channels, at least one input).
    pub fn new(p: &nn::Path<'_>, in_channels: &[i64], channels: i64, extra_levels: usize) -> Self {
        let lp = p / "lateral_convs";
        let fp = p / "fpn_convs";
        let n = in_channels.len();
        let lateral = in_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| conv_module(&(&lp / i), c, channels, 1, 1))
            .collect();
        let output = (0..n)
            .map(|i| conv_module(&(&fp / i), channels, channels, 3, 1))
            .collect();
        let extra = (0..extra_levels)
            .map(|i| conv_module(&(&fp / (n + i)), channels, channels, 3, 2))
            .collect();
        Self {
            lateral,
            output,
            extra,
            pooled: 0,
        }
    }

    /// An FPN without extra convolutions (`add_extra_convs = False`): the `pooled_levels`
    /// levels above the last input are the last output subsampled by 2 each time (a 1×1 max
    /// pool at stride 2, i.e. every second row and column starting at 0).
    pub fn with_pooled_extra(
        p: &nn::Path<'_>,
        in_channels: &[i64],
        channels: i64,
        pooled_levels: usize,
    ) -> Self {
        let mut fpn = Self::new(p, in_channels, channels, 0);
        fpn.pooled = pooled_levels;
        fpn
    }

    /// Number of output levels.
    pub fn num_levels(&self) -> usize {
        self.output.len() + self.extra.len() + self.pooled
    }

    /// The pyramid for backbone maps `inputs` (C`start` … C5, finest first, each
    /// `[B, in_channels[i], H_i, W_i]` with `H_i ≥ H_{i+1}`): the outputs
    /// `[B, channels, H_l, W_l]` finest first, the extra levels at `⌈H/2⌉` of the level below.
    pub fn forward(&self, inputs: &[Tensor]) -> Vec<Tensor> {
        let mut lat: Vec<Tensor> = inputs
            .iter()
            .zip(&self.lateral)
            .map(|(x, c)| x.apply(c))
            .collect();
        for i in (1..lat.len()).rev() {
            let s = lat[i - 1].size();
            let up = lat[i].upsample_nearest2d([s[2], s[3]], None, None);
            lat[i - 1] = &lat[i - 1] + up;
        }
        let mut outs: Vec<Tensor> = lat.iter().zip(&self.output).map(|(x, c)| x.apply(c)).collect();
        for (i, conv) in self.extra.iter().enumerate() {
            let last = outs.last().expect("an FPN has at least one input level");
            let src = if i == 0 { last.shallow_clone() } else { last.relu() };
            outs.push(src.apply(conv));
        }
        for _ in 0..self.pooled {
            let last = outs.last().expect("an FPN has at least one input level");
            let pooled = last.max_pool2d([1, 1], [2, 2], [0, 0], [1, 1], false);
            outs.push(pooled);
        }
        outs
    }
}
