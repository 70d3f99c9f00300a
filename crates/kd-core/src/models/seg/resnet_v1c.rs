//! Dilated ResNet-V1c backbones (MMSeg's `ResNetV1c` with `strides = (1, 2, 1, 1)`,
//! `dilations = (1, 1, 2, 4)`, `contract_dilation = True`): output stride 8.
//!
//! "V1c" replaces the 7×7 stem convolution by three 3×3 convolutions (`3 → w/2` at stride 2,
//! `w/2 → w/2`, `w/2 → w`, each with BatchNorm and ReLU) followed by a 3×3 max-pool at stride 2.
//! Stages 3 and 4 keep stride 1 and dilate their 3×3 convolutions by 2 and 4 instead, so the
//! last map stays at 1/8 of the input, which is what dense heads and the GDD tap need. The first
//! block of a dilated stage uses half the stage's dilation ("contract dilation").
//!
//! | stage | R18 blocks / channels | R50, R101 blocks / channels | stride | dilation (first block) |
//! |---|---|---|---|---|
//! | 1 | 2 / `w`  | 3, 3 / `4w`  | 4 | 1 (1) |
//! | 2 | 2 / `2w` | 4, 4 / `8w`  | 8 | 1 (1) |
//! | 3 | 2 / `4w` | 6, 23 / `16w`| 8 | 2 (1) |
//! | 4 | 2 / `8w` | 3, 3 / `32w` | 8 | 4 (2) |
//!
//! `w` is the base width, 64 for the standard networks.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::layers::conv_d;
use crate::models::blocks::bn;
use crate::{KdError, Result};

/// The backbones [`ResNetV1c::new`] builds, by config name.
pub const BACKBONES: &[&str] = &["r18", "r50", "r101"];

/// Per-stage stride and dilation of the output-stride-8 layout.
const STRIDES: [i64; 4] = [1, 2, 1, 1];
const DILATIONS: [i64; 4] = [1, 1, 2, 4];

/// MMSeg's `BasicBlock`: `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`. Only `conv1`
/// carries the stride and the dilation; `conv2` is a plain 3×3 convolution.
#[derive(Debug)]
struct Basic {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

/// MMSeg's `Bottleneck` (PyTorch style: the stride sits on the 3×3 convolution):
/// 1×1 `c_in → planes`, 3×3 `planes → planes` (stride, dilation), 1×1 `planes → 4·planes`.
#[derive(Debug)]
struct Bottleneck {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv3: nn::Conv2D,
    bn3: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

/// The 1×1 convolution + BatchNorm shortcut, built when the stride or the width changes.
fn downsample(p: &nn::Path<'_>, c_in: i64, c_out: i64, stride: i64) -> Option<(nn::Conv2D, nn::BatchNorm)> {
    (stride != 1 || c_in != c_out).then(|| {
        let d = p / "downsample";
        (
            conv_d(&(&d / "0"), c_in, c_out, 1, stride, 1),
            bn(&(&d / "1"), c_out),
        )
    })
}

fn shortcut(x: &Tensor, ds: &Option<(nn::Conv2D, nn::BatchNorm)>, train: bool) -> Tensor {
    match ds {
        Some((c, b)) => x.apply(c).apply_t(b, train),
        None => x.shallow_clone(),
    }
}

impl Basic {
    fn new(p: &nn::Path<'_>, c_in: i64, planes: i64, stride: i64, dilation: i64) -> Self {
        Self {
            conv1: conv_d(&(p / "conv1"), c_in, planes, 3, stride, dilation),
            bn1: bn(&(p / "bn1"), planes),
            conv2: conv_d(&(p / "conv2"), planes, planes, 3, 1, 1),
            bn2: bn(&(p / "bn2"), planes),
            downsample: downsample(p, c_in, planes, stride),
        }
    }
}

impl ModuleT for Basic {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = x
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train);
        (out + shortcut(x, &self.downsample, train)).relu()
    }
}

impl Bottleneck {
    fn new(p: &nn::Path<'_>, c_in: i64, planes: i64, stride: i64, dilation: i64) -> Self {
        Self {
            conv1: conv_d(&(p / "conv1"), c_in, planes, 1, 1, 1),
            bn1: bn(&(p / "bn1"), planes),
            conv2: conv_d(&(p / "conv2"), planes, planes, 3, stride, dilation),
            bn2: bn(&(p / "bn2"), planes),
            conv3: conv_d(&(p / "conv3"), planes, 4 * planes, 1, 1, 1),
            bn3: bn(&(p / "bn3"), 4 * planes),
            downsample: downsample(p, c_in, 4 * planes, stride),
        }
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = x
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train)
            .relu()
            .apply(&self.conv3)
            .apply_t(&self.bn3, train);
        (out + shortcut(x, &self.downsample, train)).relu()
    }
}

/// A dilated ResNet-V1c trunk with output stride 8, returning the four stage outputs.
#[derive(Debug)]
pub struct ResNetV1c {
    stem: nn::SequentialT,
    stages: Vec<nn::SequentialT>,
    channels: [i64; 4],
    blocks: [usize; 4],
    first_weight: Tensor,
}

impl ResNetV1c {
    /// Builds backbone `name` (`"r18"`, `"r50"` or `"r101"`) of base width `width` for
    /// `in_channels`-channel inputs under `p` (MMSeg names: `stem.{0,1,3,4,6,7}`,
    /// `layer{1..4}.{i}.conv1`, ...). `width` must be even and positive (the stem's first two
    /// convolutions have `width / 2` channels).
    pub fn new(p: &nn::Path<'_>, name: &str, width: i64, in_channels: i64) -> Result<Self> {
        let (blocks, bottleneck): ([usize; 4], bool) = match name {
            "r18" => ([2, 2, 2, 2], false),
            "r50" => ([3, 4, 6, 3], true),
            "r101" => ([3, 4, 23, 3], true),
            other => {
                return Err(KdError::invalid(format!(
                    "backbone: unknown backbone {other:?}; known backbones: {}",
                    BACKBONES.join(", ")
                )))
            }
        };
        if width < 2 || width % 2 != 0 {
            return Err(KdError::invalid(format!(
                "width: the base width must be even and at least 2, got {width}"
            )));
        }
        if in_channels < 1 {
            return Err(KdError::invalid(format!(
                "in_channels: must be at least 1, got {in_channels}"
            )));
        }
        let sp = p / "stem";
        let half = width / 2;
        let first = conv_d(&(&sp / "0"), in_channels, half, 3, 2, 1);
        let first_weight = first.ws.shallow_clone();
        let stem = nn::seq_t()
            .add(first)
            .add(bn(&(&sp / "1"), half))
            .add_fn(|x| x.relu())
            .add(conv_d(&(&sp / "3"), half, half, 3, 1, 1))
            .add(bn(&(&sp / "4"), half))
            .add_fn(|x| x.relu())
            .add(conv_d(&(&sp / "6"), half, width, 3, 1, 1))
            .add(bn(&(&sp / "7"), width))
            .add_fn(|x| x.relu())
            .add_fn(|x| x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false));

        let expansion = if bottleneck { 4 } else { 1 };
        let mut c_in = width;
        let mut channels = [0; 4];
        let mut stages = Vec::with_capacity(4);
        for s in 0..4 {
            let planes = width << s;
            let lp = p / format!("layer{}", s + 1);
            let dilation = DILATIONS[s];
            let mut stage = nn::seq_t();
            for b in 0..blocks[s] {
                let (stride, dil) = if b == 0 {
                    (STRIDES[s], if dilation > 1 { dilation / 2 } else { dilation })
                } else {
                    (1, dilation)
                };
                let bp = &lp / b;
                stage = if bottleneck {
                    stage.add(Bottleneck::new(&bp, c_in, planes, stride, dil))
                } else {
                    stage.add(Basic::new(&bp, c_in, planes, stride, dil))
                };
                c_in = planes * expansion;
            }
            channels[s] = c_in;
            stages.push(stage);
        }
        Ok(Self {
            stem,
            stages,
            channels,
            blocks,
            first_weight,
        })
    }

    /// Output channels of the four stages.
    pub fn channels(&self) -> [i64; 4] {
        self.channels
    }

    /// Number of residual blocks per stage (`[3, 4, 23, 3]` for R101).
    pub fn blocks(&self) -> [usize; 4] {
        self.blocks
    }

    /// The first convolution's weight, whose kind and device are the trunk's.
    pub fn first_weight(&self) -> &Tensor {
        &self.first_weight
    }

    /// Down-sampling factor of each stage's output: `[4, 8, 8, 8]`.
    pub fn strides(&self) -> [i64; 4] {
        [4, 8, 8, 8]
    }

    /// The four stage outputs for `x` `[B, C_in, H, W]`: `[B, channels[i], ⌈H/s_i⌉, ⌈W/s_i⌉]`
    /// with `s = [4, 8, 8, 8]` (exactly `H/s` when `H` is a multiple of 8).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Vec<Tensor> {
        let mut h = x.apply_t(&self.stem, train);
        let mut out = Vec::with_capacity(4);
        for stage in &self.stages {
            h = h.apply_t(stage, train);
            out.push(h.shallow_clone());
        }
        out
    }
}
