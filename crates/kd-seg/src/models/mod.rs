//! Semantic-segmentation networks: PSPNet and DeepLabV3 on dilated ResNet-V1c backbones, as
//! used by the Cityscapes distillation benchmarks (CWD, MGD, GDD).
//!
//! Those benchmarks fix their pairs to MMSeg's models: a PSPNet-R101-D8 teacher and
//! PSPNet-R18-D8 / DeepLabV3-R18-D8 students, with a 1/8-resolution backbone map as the
//! distillation tap and an auxiliary FCN head on stage 3 trained with weight 0.4. Feature
//! distillation compares teacher and student maps position by position, so the layout
//! (deep stem, dilation instead of striding in stages 3 and 4, contracted first dilation) has
//! to match theirs exactly; the reference layout is documented in [`kd_vision::resnet_v1c`].
//!
//! A [`SegNet`] is a kd-core [`Model`](kd_core::models::Model): one forward pass gives the
//! full-resolution logits `[B, K, H, W]`, the auxiliary logits and the four stage taps, so every
//! distiller sees segmentation students and teachers through the same trait as classifiers.
//! The `width` knob scales every backbone channel count, so quick runs can use narrow nets
//! with the same topology.

use serde::{Deserialize, Serialize};

pub mod heads;
mod inference;
mod net;

pub use heads::{AsppHead, FcnHead, PspHead, PSP_BINS};
pub use inference::Inference;
pub use kd_vision::layers::resize_bilinear;
pub use kd_vision::resnet_v1c::{ResNetV1c, BACKBONES};
pub use net::{build, SegNet};

use kd_core::{KdError, Result};

/// The decode heads [`build`] knows, by config name.
pub const HEADS: &[&str] = &["psp", "aspp", "fcn"];

/// Configuration of a [`SegNet`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegNetConfig {
    /// Backbone: `"r18"` (basic blocks `[2, 2, 2, 2]`), `"r34"` (basic blocks `[3, 4, 6, 3]`),
    /// `"r50"` (bottlenecks `[3, 4, 6, 3]`) or `"r101"` (bottlenecks `[3, 4, 23, 3]`).
    pub backbone: String,
    /// Base width `w` of the backbone (default 64); stage channels are `w, 2w, 4w, 8w` for R18
    /// and R34, and `4w, 8w, 16w, 32w` for the bottleneck nets. Must be even.
    #[serde(default = "default_width")]
    pub width: i64,
    /// Decode head: `"psp"` (PSPNet), `"aspp"` (DeepLabV3) or `"fcn"` (FCN: two 3×3 convs and
    /// the fusion with the input).
    pub head: String,
    /// Channels inside the decode head (MMSeg: 128 for R18, 512 for R50/R101).
    pub head_channels: i64,
    /// Channels of the auxiliary FCN head on stage 3 (MMSeg: 64 for R18, 256 for R50/R101);
    /// 0 builds no auxiliary head.
    pub aux_channels: i64,
    /// Dilations of the ASPP branches (default `[1, 12, 24, 36]`; dilation 1 is a 1×1 conv).
    /// Ignored by the PSP head.
    #[serde(default = "default_aspp_dilations")]
    pub aspp_dilations: Vec<i64>,
    /// Number of classes K (19 for Cityscapes).
    pub num_classes: i64,
    /// Channel dropout before each classifier, train mode only (default 0.1).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Input channels (default 3).
    #[serde(default = "default_in_channels")]
    pub in_channels: i64,
}

fn default_width() -> i64 {
    64
}
fn default_aspp_dilations() -> Vec<i64> {
    vec![1, 12, 24, 36]
}
fn default_dropout() -> f64 {
    0.1
}
fn default_in_channels() -> i64 {
    3
}

impl SegNetConfig {
    fn paper(backbone: &str, head: &str, head_channels: i64, aux_channels: i64, num_classes: i64) -> Self {
        Self {
            backbone: backbone.into(),
            width: default_width(),
            head: head.into(),
            head_channels,
            aux_channels,
            aspp_dilations: default_aspp_dilations(),
            num_classes,
            dropout: default_dropout(),
            in_channels: default_in_channels(),
        }
    }

    /// PSPNet-R18-D8 as in MMSeg's Cityscapes config: head 128 channels, auxiliary head 64.
    pub fn pspnet_r18(num_classes: i64) -> Self {
        Self::paper("r18", "psp", 128, 64, num_classes)
    }

    /// DeepLabV3-R18-D8 as in MMSeg's Cityscapes config: head 128 channels, dilations
    /// `[1, 12, 24, 36]`, auxiliary head 64.
    pub fn deeplabv3_r18(num_classes: i64) -> Self {
        Self::paper("r18", "aspp", 128, 64, num_classes)
    }

    /// PSPNet-R101-D8 as in MMSeg's Cityscapes config: head 512 channels, auxiliary head 256.
    pub fn pspnet_r101(num_classes: i64) -> Self {
        Self::paper("r101", "psp", 512, 256, num_classes)
    }

    /// The same network with backbone base width `width`.
    pub fn with_width(mut self, width: i64) -> Self {
        self.width = width;
        self
    }

    /// The model name: `pspnet_<backbone>`, `deeplabv3_<backbone>` or `fcn_<backbone>` (the head
    /// name itself for an unknown head), with `_w<width>` appended when the width is not 64.
    pub fn name(&self) -> String {
        let head = match self.head.as_str() {
            "psp" => "pspnet",
            "aspp" => "deeplabv3",
            other => other,
        };
        let mut name = format!("{head}_{}", self.backbone);
        if self.width != default_width() {
            name.push_str(&format!("_w{}", self.width));
        }
        name
    }

    /// Checks every knob; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(KdError::invalid(format!("{key}: {msg}")));
        kd_vision::check_backbone(&self.backbone)?;
        if !HEADS.contains(&self.head.as_str()) {
            return bad(
                "head",
                format!(
                    "unknown decode head {:?}; known heads: {}",
                    self.head,
                    HEADS.join(", ")
                ),
            );
        }
        if self.width < 2 || self.width % 2 != 0 {
            return bad(
                "width",
                format!("must be even and at least 2, got {}", self.width),
            );
        }
        if self.head_channels < 1 {
            return bad(
                "head_channels",
                format!("must be at least 1, got {}", self.head_channels),
            );
        }
        if self.aux_channels < 0 {
            return bad(
                "aux_channels",
                format!(
                    "must be 0 (no auxiliary head) or positive, got {}",
                    self.aux_channels
                ),
            );
        }
        if self.head == "aspp"
            && (self.aspp_dilations.is_empty() || self.aspp_dilations.iter().any(|&d| d < 1))
        {
            return bad(
                "aspp_dilations",
                format!(
                    "must be a non-empty list of positive dilations, got {:?}",
                    self.aspp_dilations
                ),
            );
        }
        if self.num_classes < 1 {
            return bad(
                "num_classes",
                format!("must be at least 1, got {}", self.num_classes),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("must lie in [0, 1), got {}", self.dropout));
        }
        if self.in_channels < 1 {
            return bad(
                "in_channels",
                format!("must be at least 1, got {}", self.in_channels),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
