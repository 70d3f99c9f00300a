//! FCOS detectors: a ResNet trunk at output stride 32, an FPN neck and the FCOS head, as a
//! kd-core [`Model`](kd_core::models::Model).
//!
//! Detection distillation (GDD, CWD on FPN) compares teacher and student FPN outputs level by
//! level, so every FPN output is a feature tap (`p3` … `p7`), and the student can inherit the
//! teacher's neck and head ([`copy_neck_and_head`], the `init_student` of the GDD detection
//! configs). The paper's detectors come from MMDetection; variable names follow MMDet
//! (`backbone.layer1.0.conv1.weight`, `neck.lateral_convs.0.conv.weight`,
//! `neck.fpn_convs.3.conv.weight`, `bbox_head.cls_convs.0.gn.weight`, `bbox_head.scales.0.scale`)
//! so the same names match between teacher and student, and a converted MMDet checkpoint maps
//! one to one.
//!
//! FCOS is our one-stage stand-in for the paper's Faster R-CNN student [R]: dense per-point
//! outputs need no RoI sampling, and the FPN levels that GDD distils are the same. The layout
//! follows MMDet's `fcos_r50_caffe_fpn_gn-head` with the "tricks" that later configs turn on
//! (centre-ness on the regression tower, `norm_on_bbox`), with these reconstruction choices:
//! - the trunk is the PyTorch-style ResNet (stride on the 3×3 convolution), trained from scratch
//!   with BatchNorm in train mode, instead of MMDet's ImageNet-pretrained caffe-style trunk with
//!   frozen BatchNorm and a frozen stem [R];
//! - the stem is the single 7×7 convolution as in MMDet by default; `deep_stem = true` selects
//!   the V1c stem of the segmentation nets [R];
//! - the GroupNorm group count adapts to narrow quick-scale heads (see
//!   [`DetectorConfig::gn_groups`]) [R].
//!
//! Output layout (the detector contract): `logits` `[B, A, K]` (sigmoid scores, no background
//! class), head outputs `box` `[B, A, 4]` (distances l, t, r, b in input pixels, ≥ 0) and
//! `centerness` `[B, A, 1]` (a logit). `A` concatenates the levels in tap order; within a level,
//! positions are row-major, and cell `(i, j)` at stride `s` is the point
//! `(j·s + ⌊s/2⌋, i·s + ⌊s/2⌋)`.

use serde::{Deserialize, Serialize};

mod fpn;
mod head;
mod init;
mod net;

pub use fpn::Fpn;
pub use head::{FcosHead, LevelOutput};
pub use init::{copy_neck_and_head, BACKBONE_SCOPE};
pub(crate) use net::check_detector_input;
pub use net::{build, Detector, SIZE_DIVISOR};

use kd_core::{KdError, Result};

/// Configuration of a [`Detector`] (FCOS with a ResNet-FPN).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Backbone: `"r18"`, `"r34"` (basic blocks `[2, 2, 2, 2]`, `[3, 4, 6, 3]`), `"r50"` or
    /// `"r101"` (bottlenecks `[3, 4, 6, 3]`, `[3, 4, 23, 3]`).
    pub backbone: String,
    /// Base width `w` of the backbone (default 64): stage channels `w, 2w, 4w, 8w` for
    /// R18/R34, `4w, 8w, 16w, 32w` for R50/R101.
    #[serde(default = "default_width")]
    pub width: i64,
    /// `true` for the V1c deep stem (three 3×3 convolutions; width must then be even), `false`
    /// (default) for the 7×7 stem of MMDet's detection ResNets.
    #[serde(default)]
    pub deep_stem: bool,
    /// Input channels (default 3).
    #[serde(default = "default_in_channels")]
    pub in_channels: i64,
    /// Channels `C` of every FPN level and of the head towers (default 256).
    #[serde(default = "default_fpn_channels")]
    pub fpn_channels: i64,
    /// First pyramid level (default 3): level `l` has stride `2^l`; 2 ≤ `start_level` ≤ 5.
    /// Levels up to 5 come from backbone stages C`l` through lateral convolutions.
    #[serde(default = "default_start_level")]
    pub start_level: u32,
    /// Last pyramid level (default 7), 5 ≤ `end_level` ≤ 7. Levels above 5 are the extra
    /// stride-2 3×3 convolutions on the P5 output (MMDet `add_extra_convs = 'on_output'`, with
    /// a ReLU before every extra convolution after the first).
    #[serde(default = "default_end_level")]
    pub end_level: u32,
    /// 3×3 convolutions in each head tower (classification and regression), default 4.
    #[serde(default = "default_stacked_convs")]
    pub stacked_convs: usize,
    /// GroupNorm groups in the head towers; must divide `fpn_channels`. Default (absent): the
    /// largest divisor of `fpn_channels` that is at most 32 and leaves at least 8 channels per
    /// group (one group below 8 channels): 32 for the paper's 256 channels, 8 for 64, 2 for
    /// 16, so narrow heads keep the paper's 8 channels per group [R].
    #[serde(default)]
    pub gn_groups: Option<i64>,
    /// Prior probability of the classification bias initialisation (default 0.01): the bias is
    /// `−ln((1 − p) / p)`, so every class starts at sigmoid score `p`.
    #[serde(default = "default_prior_prob")]
    pub prior_prob: f64,
    /// Number of classes K (80 for COCO).
    pub num_classes: i64,
}

fn default_width() -> i64 {
    64
}
fn default_in_channels() -> i64 {
    3
}
fn default_fpn_channels() -> i64 {
    256
}
fn default_start_level() -> u32 {
    3
}
fn default_end_level() -> u32 {
    7
}
fn default_stacked_convs() -> usize {
    4
}
fn default_prior_prob() -> f64 {
    0.01
}

impl DetectorConfig {
    /// FCOS R50-FPN as in MMDet: R50 of width 64, 256 FPN channels, levels P3–P7, four GN
    /// convolutions per tower.
    pub fn fcos_r50_fpn(num_classes: i64) -> Self {
        Self::fcos("r50", num_classes)
    }

    /// FCOS with backbone `backbone` and every other knob at the paper default.
    pub fn fcos(backbone: &str, num_classes: i64) -> Self {
        Self {
            backbone: backbone.into(),
            width: default_width(),
            deep_stem: false,
            in_channels: default_in_channels(),
            fpn_channels: default_fpn_channels(),
            start_level: default_start_level(),
            end_level: default_end_level(),
            stacked_convs: default_stacked_convs(),
            gn_groups: None,
            prior_prob: default_prior_prob(),
            num_classes,
        }
    }

    /// The same network with backbone base width `width`.
    pub fn with_width(mut self, width: i64) -> Self {
        self.width = width;
        self
    }

    /// The same network with `channels` FPN (and head) channels.
    pub fn with_fpn_channels(mut self, channels: i64) -> Self {
        self.fpn_channels = channels;
        self
    }

    /// The same network with `n` convolutions per head tower.
    pub fn with_stacked_convs(mut self, n: usize) -> Self {
        self.stacked_convs = n;
        self
    }

    /// The same network with pyramid levels `start ..= end`.
    pub fn with_levels(mut self, start: u32, end: u32) -> Self {
        self.start_level = start;
        self.end_level = end;
        self
    }

    /// The model name: `fcos_<backbone>_fpn`, then `_w<width>` when the width is not 64,
    /// `_c<channels>` when the FPN has not 256 channels, and `_p<start><end>` when the levels
    /// are not P3–P7.
    pub fn name(&self) -> String {
        let mut name = format!("fcos_{}_fpn", self.backbone);
        if self.width != default_width() {
            name.push_str(&format!("_w{}", self.width));
        }
        if self.fpn_channels != default_fpn_channels() {
            name.push_str(&format!("_c{}", self.fpn_channels));
        }
        if (self.start_level, self.end_level) != (default_start_level(), default_end_level()) {
            name.push_str(&format!("_p{}{}", self.start_level, self.end_level));
        }
        name
    }

    /// The pyramid levels `start_level ..= end_level`.
    pub fn levels(&self) -> Vec<u32> {
        (self.start_level..=self.end_level).collect()
    }

    /// The GroupNorm group count of the head towers: `gn_groups` or the default rule.
    pub fn resolved_gn_groups(&self) -> i64 {
        self.gn_groups
            .unwrap_or_else(|| auto_gn_groups(self.fpn_channels))
    }

    /// Checks every knob; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(KdError::invalid(format!("{key}: {msg}")));
        check_trunk(&self.backbone, self.width, self.deep_stem)?;
        if self.in_channels < 1 {
            return bad(
                "in_channels",
                format!("must be at least 1, got {}", self.in_channels),
            );
        }
        if self.fpn_channels < 1 {
            return bad(
                "fpn_channels",
                format!("must be at least 1, got {}", self.fpn_channels),
            );
        }
        if !(2..=5).contains(&self.start_level) {
            return bad(
                "start_level",
                format!("must lie in 2..=5, got {}", self.start_level),
            );
        }
        if !(5..=7).contains(&self.end_level) {
            return bad("end_level", format!("must lie in 5..=7, got {}", self.end_level));
        }
        if let Some(g) = self.gn_groups {
            if g < 1 || self.fpn_channels % g != 0 {
                return bad(
                    "gn_groups",
                    format!(
                        "{g} GroupNorm groups do not divide fpn_channels = {}",
                        self.fpn_channels
                    ),
                );
            }
        }
        if !(self.prior_prob > 0.0 && self.prior_prob < 1.0) {
            return bad(
                "prior_prob",
                format!("must lie in (0, 1), got {}", self.prior_prob),
            );
        }
        if self.num_classes < 1 {
            return bad(
                "num_classes",
                format!("must be at least 1, got {}", self.num_classes),
            );
        }
        Ok(())
    }
}

/// The default GroupNorm group count for `c` channels (see [`DetectorConfig::gn_groups`]).
fn auto_gn_groups(c: i64) -> i64 {
    (1..=32.min(c))
        .rev()
        .find(|&g| c % g == 0 && c / g >= 8)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests;

/// The trunk keys both detector families share: `backbone` one of
/// [`kd_vision::BACKBONES`], `width` positive and even with the deep stem.
pub(crate) fn check_trunk(backbone: &str, width: i64, deep_stem: bool) -> Result<()> {
    kd_vision::check_backbone(backbone)?;
    if width < 1 || (deep_stem && width % 2 != 0) {
        return Err(KdError::invalid(format!(
            "width: must be positive (and even with the deep stem), got {width}"
        )));
    }
    Ok(())
}
