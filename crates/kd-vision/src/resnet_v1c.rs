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
//! `w` is the base width, 64 for the standard networks. R34 has R18's basic blocks in
//! `[3, 4, 6, 3]`.
//!
//! Detectors need the undilated layout instead: [`OutputStride::Os32`] gives stages 2–4
//! stride 2 and no dilation (strides 4, 8, 16, 32), the C2–C5 maps an FPN consumes. MMDet's
//! detection ResNets also use the single 7×7 stem (`conv1`, `bn1`: a 7×7 stride-2 convolution
//! `3 → w` with BatchNorm and ReLU, then the max-pool) rather than the deep stem; [`Layout`]
//! selects either. The default layout is the segmentation one above.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::layers::bn;
use super::layers::conv_d;
use kd_core::{KdError, Result};

/// The backbones [`ResNetV1c::new`] builds, by config name.
pub const BACKBONES: &[&str] = &["r18", "r34", "r50", "r101"];

/// Fails unless `name` is one of [`BACKBONES`]; the error names the `backbone` key and lists
/// the known names. Every network config that holds a trunk name checks it with this.
pub fn check_backbone(name: &str) -> Result<()> {
    if BACKBONES.contains(&name) {
        Ok(())
    } else {
        Err(unknown_backbone(name))
    }
}

fn unknown_backbone(name: &str) -> KdError {
    KdError::invalid(format!(
        "backbone: unknown backbone {name:?}; known backbones: {}",
        BACKBONES.join(", ")
    ))
}

/// Where the trunk stops down-sampling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputStride {
    /// Stages 3 and 4 dilated by 2 and 4 instead of strided: stage strides `[4, 8, 8, 8]`
    /// (segmentation).
    #[default]
    Os8Dilated,
    /// Every stage after the first halves the resolution, no dilation: stage strides
    /// `[4, 8, 16, 32]` (detection, the C2–C5 maps of an FPN).
    Os32,
}

impl OutputStride {
    /// Per-stage (stride of the first block, dilation) of this layout.
    fn stages(self) -> ([i64; 4], [i64; 4]) {
        match self {
            Self::Os8Dilated => ([1, 2, 1, 1], [1, 1, 2, 4]),
            Self::Os32 => ([1, 2, 2, 2], [1, 1, 1, 1]),
        }
    }

    /// Down-sampling factor of each stage's output.
    fn out_strides(self) -> [i64; 4] {
        match self {
            Self::Os8Dilated => [4, 8, 8, 8],
            Self::Os32 => [4, 8, 16, 32],
        }
    }
}

/// The trunk's layout: output stride and stem. The default is MMSeg's V1c segmentation layout
/// (dilated, output stride 8, deep stem).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Dilated output stride 8 or plain output stride 32.
    pub output_stride: OutputStride,
    /// `true`: the V1c deep stem (three 3×3 convolutions, `stem.{0,1,3,4,6,7}`); `false`: the
    /// single 7×7 stride-2 convolution of the original ResNet (`conv1`, `bn1`).
    pub deep_stem: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            output_stride: OutputStride::Os8Dilated,
            deep_stem: true,
        }
    }
}

/// MMSeg's `BasicBlock`: `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`. Only `conv1`
/// carries the stride and the dilation; `conv2` is a plain 3×3 convolution.
#[derive(Debug)]
struct Basic {
    conv1: nn::Conv2D,
    bn1: kd_core::models::BatchNorm,
    conv2: nn::Conv2D,
    bn2: kd_core::models::BatchNorm,
    downsample: Option<(nn::Conv2D, kd_core::models::BatchNorm)>,
}

/// MMSeg's `Bottleneck` (PyTorch style: the stride sits on the 3×3 convolution):
/// 1×1 `c_in → planes`, 3×3 `planes → planes` (stride, dilation), 1×1 `planes → 4·planes`.
#[derive(Debug)]
struct Bottleneck {
    conv1: nn::Conv2D,
    bn1: kd_core::models::BatchNorm,
    conv2: nn::Conv2D,
    bn2: kd_core::models::BatchNorm,
    conv3: nn::Conv2D,
    bn3: kd_core::models::BatchNorm,
    downsample: Option<(nn::Conv2D, kd_core::models::BatchNorm)>,
}

/// The 1×1 convolution + BatchNorm shortcut, built when the stride or the width changes.
fn downsample(
    p: &nn::Path<'_>,
    c_in: i64,
    c_out: i64,
    stride: i64,
) -> Option<(nn::Conv2D, kd_core::models::BatchNorm)> {
    (stride != 1 || c_in != c_out).then(|| {
        let d = p / "downsample";
        (
            conv_d(&(&d / "0"), c_in, c_out, 1, stride, 1),
            bn(&(&d / "1"), c_out),
        )
    })
}

fn shortcut(x: &Tensor, ds: &Option<(nn::Conv2D, kd_core::models::BatchNorm)>, train: bool) -> Tensor {
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

/// A ResNet trunk returning the four stage outputs: by default the dilated ResNet-V1c with
/// output stride 8; see [`Layout`] for the detection layout.
#[derive(Debug)]
pub struct ResNetV1c {
    stem: nn::SequentialT,
    stages: Vec<nn::SequentialT>,
    channels: [i64; 4],
    blocks: [usize; 4],
    strides: [i64; 4],
    first_weight: Tensor,
}

impl ResNetV1c {
    /// Builds backbone `name` (`"r18"`, `"r34"`, `"r50"` or `"r101"`) of base width `width`
    /// for `in_channels`-channel inputs under `p` in the default (segmentation) layout (MMSeg
    /// names: `stem.{0,1,3,4,6,7}`, `layer{1..4}.{i}.conv1`, ...). `width` must be even and
    /// positive (the stem's first two convolutions have `width / 2` channels).
    pub fn new(p: &nn::Path<'_>, name: &str, width: i64, in_channels: i64) -> Result<Self> {
        Self::with_layout(p, name, width, in_channels, Layout::default())
    }

    /// [`ResNetV1c::new`] with an explicit [`Layout`]. With the 7×7 stem the width only has
    /// to be positive.
    pub fn with_layout(
        p: &nn::Path<'_>,
        name: &str,
        width: i64,
        in_channels: i64,
        layout: Layout,
    ) -> Result<Self> {
        let (blocks, bottleneck): ([usize; 4], bool) = match name {
            "r18" => ([2, 2, 2, 2], false),
            "r34" => ([3, 4, 6, 3], false),
            "r50" => ([3, 4, 6, 3], true),
            "r101" => ([3, 4, 23, 3], true),
            other => return Err(unknown_backbone(other)),
        };
        if layout.deep_stem && (width < 2 || width % 2 != 0) {
            return Err(KdError::invalid(format!(
                "width: the base width must be even and at least 2, got {width}"
            )));
        }
        if width < 1 {
            return Err(KdError::invalid(format!(
                "width: the base width must be positive, got {width}"
            )));
        }
        if in_channels < 1 {
            return Err(KdError::invalid(format!(
                "in_channels: must be at least 1, got {in_channels}"
            )));
        }
        let (stem, first_weight) = if layout.deep_stem {
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
                .add_fn(|x| x.relu());
            (stem, first_weight)
        } else {
            let first = conv_d(&(p / "conv1"), in_channels, width, 7, 2, 1);
            let first_weight = first.ws.shallow_clone();
            let stem = nn::seq_t()
                .add(first)
                .add(bn(&(p / "bn1"), width))
                .add_fn(|x| x.relu());
            (stem, first_weight)
        };
        let stem = stem.add_fn(|x| x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false));
        let (strides, dilations) = layout.output_stride.stages();

        let expansion = if bottleneck { 4 } else { 1 };
        let mut c_in = width;
        let mut channels = [0; 4];
        let mut stages = Vec::with_capacity(4);
        for s in 0..4 {
            let planes = width << s;
            let lp = p / format!("layer{}", s + 1);
            let dilation = dilations[s];
            let mut stage = nn::seq_t();
            for b in 0..blocks[s] {
                let (stride, dil) = if b == 0 {
                    (strides[s], if dilation > 1 { dilation / 2 } else { dilation })
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
            strides: layout.output_stride.out_strides(),
            first_weight,
        })
    }

    /// The trunk as separate modules: the stem (ending with the max-pool, stride 4) and the
    /// four stages, for networks that tap between them.
    pub fn into_parts(self) -> (nn::SequentialT, Vec<nn::SequentialT>) {
        (self.stem, self.stages)
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

    /// Down-sampling factor of each stage's output: `[4, 8, 8, 8]` in the dilated layout,
    /// `[4, 8, 16, 32]` in [`OutputStride::Os32`].
    pub fn strides(&self) -> [i64; 4] {
        self.strides
    }

    /// The four stage outputs for `x` `[B, C_in, H, W]`: `[B, channels[i], ⌈H/s_i⌉, ⌈W/s_i⌉]`
    /// with `s` = [`ResNetV1c::strides`] (exactly `H/s` when `H` is a multiple of the last
    /// stride).
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
