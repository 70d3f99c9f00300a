//! Decode heads on the stride-8 backbone map: PSP (pyramid pooling) and ASPP (atrous spatial
//! pyramid pooling), plus the FCN auxiliary head on stage 3. All follow MMSeg's `PSPHead`,
//! `ASPPHead` and `FCNHead` (with `num_convs = 1`, `concat_input = False`), every convolution
//! being conv–BN–ReLU, and all end in [`Classifier`] (dropout, 1×1 conv to `K`).
//!
//! They return logits at the resolution of their input map; [`super::SegNet`] resizes them.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use kd_vision::layers::{resize_bilinear, Classifier, ConvBnRelu};

/// Bin counts of the PSP pyramid (adaptive average pooling to `b × b`).
pub const PSP_BINS: [i64; 4] = [1, 2, 3, 6];

/// PSPNet's head: for each bin `b` in [`PSP_BINS`], adaptive average pooling to `b × b`, a 1×1
/// conv `c_in → channels` and bilinear upsampling back to the map's size; the four results are
/// concatenated after the input (`c_in + 4·channels`), fused by a 3×3 conv to `channels`, then
/// classified. `[B, c_in, h, w] → [B, K, h, w]`.
#[derive(Debug)]
pub struct PspHead {
    pools: Vec<(i64, ConvBnRelu)>,
    bottleneck: ConvBnRelu,
    cls: Classifier,
}

impl PspHead {
    /// Builds the head under `p` (`psp_modules.{i}.1`, `bottleneck`, `conv_seg`).
    pub fn new(p: &nn::Path<'_>, c_in: i64, channels: i64, num_classes: i64, dropout: f64) -> Self {
        let pools = PSP_BINS
            .iter()
            .enumerate()
            .map(|(i, &bin)| {
                let pp = p / "psp_modules" / i / "1";
                (bin, ConvBnRelu::new(&pp, c_in, channels, 1, 1))
            })
            .collect();
        let fused = c_in + PSP_BINS.len() as i64 * channels;
        Self {
            pools,
            bottleneck: ConvBnRelu::new(&(p / "bottleneck"), fused, channels, 3, 1),
            cls: Classifier::new(p, channels, num_classes, dropout),
        }
    }
}

impl ModuleT for PspHead {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let (h, w) = (x.size()[2], x.size()[3]);
        let mut parts = vec![x.shallow_clone()];
        for (bin, conv) in &self.pools {
            let pooled = x.adaptive_avg_pool2d([*bin, *bin]).apply_t(conv, train);
            parts.push(resize_bilinear(&pooled, h, w));
        }
        Tensor::cat(&parts, 1)
            .apply_t(&self.bottleneck, train)
            .apply_t(&self.cls, train)
    }
}

/// DeepLabV3's head: an image-pooling branch (global average pooling, 1×1 conv `c_in →
/// channels`, upsampling) and one branch per dilation (a 1×1 conv for dilation 1, a 3×3 conv
/// with that dilation otherwise), concatenated (`(1 + n)·channels`), fused by a 3×3 conv to
/// `channels`, then classified. `[B, c_in, h, w] → [B, K, h, w]`.
#[derive(Debug)]
pub struct AsppHead {
    image_pool: ConvBnRelu,
    branches: Vec<ConvBnRelu>,
    bottleneck: ConvBnRelu,
    cls: Classifier,
}

impl AsppHead {
    /// Builds the head under `p` (`image_pool.1`, `aspp_modules.{i}`, `bottleneck`,
    /// `conv_seg`). `dilations` are positive (checked by the caller).
    pub fn new(
        p: &nn::Path<'_>,
        c_in: i64,
        channels: i64,
        dilations: &[i64],
        num_classes: i64,
        dropout: f64,
    ) -> Self {
        let branches = dilations
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let k = if d == 1 { 1 } else { 3 };
                ConvBnRelu::new(&(p / "aspp_modules" / i), c_in, channels, k, d)
            })
            .collect();
        let fused = (1 + dilations.len() as i64) * channels;
        Self {
            image_pool: ConvBnRelu::new(&(p / "image_pool" / "1"), c_in, channels, 1, 1),
            branches,
            bottleneck: ConvBnRelu::new(&(p / "bottleneck"), fused, channels, 3, 1),
            cls: Classifier::new(p, channels, num_classes, dropout),
        }
    }
}

impl ModuleT for AsppHead {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let (h, w) = (x.size()[2], x.size()[3]);
        let pooled = x.adaptive_avg_pool2d([1, 1]).apply_t(&self.image_pool, train);
        let mut parts = vec![resize_bilinear(&pooled, h, w)];
        parts.extend(self.branches.iter().map(|b| x.apply_t(b, train)));
        Tensor::cat(&parts, 1)
            .apply_t(&self.bottleneck, train)
            .apply_t(&self.cls, train)
    }
}

/// MMSeg's `FCNHead`: `num_convs` 3×3 convs (`c_in → channels`, then `channels → channels`),
/// optionally fused with the input by a 3×3 conv over their concatenation (`concat_input`,
/// `c_in + channels → channels`), then classified. `[B, c_in, h, w] → [B, K, h, w]`. The
/// auxiliary head is one conv without the fusion; FCN's decode head two convs with it.
#[derive(Debug)]
pub struct FcnHead {
    convs: Vec<ConvBnRelu>,
    conv_cat: Option<ConvBnRelu>,
    cls: Classifier,
}

impl FcnHead {
    /// The auxiliary head under `p` (`convs.0`, `conv_seg`).
    pub fn new(p: &nn::Path<'_>, c_in: i64, channels: i64, num_classes: i64, dropout: f64) -> Self {
        Self::with_convs(p, c_in, channels, 1, false, num_classes, dropout)
    }

    /// The head with `num_convs ≥ 1` convolutions (`convs.{i}`) and, when `concat_input`, the
    /// fusion (`conv_cat`).
    pub fn with_convs(
        p: &nn::Path<'_>,
        c_in: i64,
        channels: i64,
        num_convs: usize,
        concat_input: bool,
        num_classes: i64,
        dropout: f64,
    ) -> Self {
        let convs = (0..num_convs.max(1))
            .map(|i| {
                ConvBnRelu::new(
                    &(p / "convs" / i),
                    if i == 0 { c_in } else { channels },
                    channels,
                    3,
                    1,
                )
            })
            .collect();
        let conv_cat =
            concat_input.then(|| ConvBnRelu::new(&(p / "conv_cat"), c_in + channels, channels, 3, 1));
        Self {
            convs,
            conv_cat,
            cls: Classifier::new(p, channels, num_classes, dropout),
        }
    }
}

impl ModuleT for FcnHead {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self
            .convs
            .iter()
            .fold(x.shallow_clone(), |h, c| h.apply_t(c, train));
        let h = match &self.conv_cat {
            Some(cat) => Tensor::cat(&[x.shallow_clone(), h], 1).apply_t(cat, train),
            None => h,
        };
        h.apply_t(&self.cls, train)
    }
}
