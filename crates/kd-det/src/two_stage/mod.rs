//! Faster R-CNN with a ResNet-FPN (Ren et al., NeurIPS 2015; Lin et al., CVPR 2017), the
//! two-stage student of GDD's, MGD's and CWD's detection results, with MMDetection 2.x's
//! semantics (`configs/_base_/models/faster_rcnn_r50_fpn.py` and the modules it names:
//! `AnchorGenerator`, `RPNHead`, `MaxIoUAssigner`, `RandomSampler`, `DeltaXYWHBBoxCoder`,
//! `SingleRoIExtractor` with `RoIAlign`, `Shared2FCBBoxHead`, `multiclass_nms`).
//!
//! | Module | What |
//! | --- | --- |
//! | [`anchors`] | anchors of every level (one scale, three ratios, strides 4–64) |
//! | [`delta`] | the offset coding of boxes against anchors and proposals |
//! | [`assign`] | max-IoU assignment and random sampling |
//! | [`rpn`] | the RPN head, its loss and its proposals |
//! | [`roi_align`] | RoIAlign and the multi-level RoI extractor |
//! | [`bbox_head`] | the box head, its targets, loss and post-processing |
//! | [`net`] | [`FasterRcnn`] as a kd-core model, and its loss terms |
//!
//! The trainer's model contract has no targets in the forward pass, and a second stage needs
//! them (its RoIs are sampled against the ground truth), so the split is: `forward_t` runs the
//! backbone, the FPN (taps `p2` … `p6`, what the distillers compare) and the RPN; the task loss
//! ([`FrcnnSupervised`]) and inference ([`FasterRcnn::detect`]) reach the network through
//! [`Model::as_any`](kd_core::models::Model::as_any) and run the second stage.
//!
//! Reconstruction choices [R], as for FCOS: a PyTorch-style ResNet trained from scratch with
//! BatchNorm in train mode (the released configs start from ImageNet weights with frozen BN and
//! a frozen stem); anchors cover the whole padded input (MMDet marks anchors whose centre lies in
//! the padding invalid; the batch carries no unpadded sizes at training time) and training
//! proposals are clipped to the padded input; test-time proposals and detections are clipped to
//! each image's unpadded size, as in MMDet.

pub mod anchors;
pub mod assign;
pub mod bbox_head;
pub mod delta;
pub mod net;
pub mod roi_align;
pub mod rpn;

mod loss;

pub use assign::{AssignerConfig, SamplerConfig};
pub use bbox_head::RcnnConfig;
pub use loss::{FrcnnLoss, FrcnnSupervised};
pub use net::{build, FasterRcnn};
pub use rpn::{ProposalConfig, RpnConfig};

use serde::{Deserialize, Serialize};

use crate::models::check_trunk;
use kd_core::{KdError, Result};

/// Anchor shapes: `scales × ratios` per position, of side `stride · scale` at ratio 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorConfig {
    /// Multiples of the level stride (default `[8]`: 32 pixels on P2, 512 on P6).
    #[serde(default = "anchor_scales")]
    pub scales: Vec<f64>,
    /// Height over width (default `[0.5, 1, 2]`).
    #[serde(default = "anchor_ratios")]
    pub ratios: Vec<f64>,
}

fn anchor_scales() -> Vec<f64> {
    vec![8.0]
}
fn anchor_ratios() -> Vec<f64> {
    vec![0.5, 1.0, 2.0]
}

impl Default for AnchorConfig {
    fn default() -> Self {
        Self {
            scales: anchor_scales(),
            ratios: anchor_ratios(),
        }
    }
}

impl AnchorConfig {
    /// Anchors per position.
    pub fn per_position(&self) -> i64 {
        (self.scales.len() * self.ratios.len()) as i64
    }
}

/// Configuration of a [`FasterRcnn`]: ResNet trunk, FPN P2–P6 (P6 by subsampling P5), RPN and
/// the shared-2fc box head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FasterRcnnConfig {
    /// Backbone: `"r18"`, `"r34"`, `"r50"` or `"r101"`.
    pub backbone: String,
    /// Base width of the backbone (default 64).
    #[serde(default = "width")]
    pub width: i64,
    /// `true` for the V1c deep stem (default `false`, the 7×7 stem).
    #[serde(default)]
    pub deep_stem: bool,
    /// Input channels (default 3).
    #[serde(default = "in_channels")]
    pub in_channels: i64,
    /// FPN channels (default 256).
    #[serde(default = "fpn_channels")]
    pub fpn_channels: i64,
    /// Anchor scales and ratios.
    #[serde(default)]
    pub anchors: AnchorConfig,
    /// RPN training and test settings.
    #[serde(default)]
    pub rpn: RpnConfig,
    /// Box head settings.
    #[serde(default)]
    pub rcnn: RcnnConfig,
    /// Number of object classes K (80 for COCO).
    pub num_classes: i64,
}

fn width() -> i64 {
    64
}
fn in_channels() -> i64 {
    3
}
fn fpn_channels() -> i64 {
    256
}

/// The FPN levels of the network: P2 … P6.
pub const LEVELS: [u32; 5] = [2, 3, 4, 5, 6];
/// The levels the box head reads (P2 … P5, strides 4 … 32).
pub const ROI_LEVELS: usize = 4;

impl FasterRcnnConfig {
    /// Faster R-CNN R50-FPN with every knob at the released default.
    pub fn r50_fpn(num_classes: i64) -> Self {
        Self::with_backbone("r50", num_classes)
    }

    /// Faster R-CNN with backbone `backbone` and the released defaults.
    pub fn with_backbone(backbone: &str, num_classes: i64) -> Self {
        Self {
            backbone: backbone.into(),
            width: width(),
            deep_stem: false,
            in_channels: in_channels(),
            fpn_channels: fpn_channels(),
            anchors: AnchorConfig::default(),
            rpn: RpnConfig::default(),
            rcnn: RcnnConfig::default(),
            num_classes,
        }
    }

    /// The model name: `faster_rcnn_<backbone>_fpn`, then `_w<width>` and `_c<channels>` when
    /// those are not 64 and 256.
    pub fn name(&self) -> String {
        let mut name = format!("faster_rcnn_{}_fpn", self.backbone);
        if self.width != width() {
            name.push_str(&format!("_w{}", self.width));
        }
        if self.fpn_channels != fpn_channels() {
            name.push_str(&format!("_c{}", self.fpn_channels));
        }
        name
    }

    /// Checks every knob; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(KdError::invalid(format!("{key}: {msg}")));
        check_trunk(&self.backbone, self.width, self.deep_stem)?;
        for (key, v) in [
            ("in_channels", self.in_channels),
            ("fpn_channels", self.fpn_channels),
            ("num_classes", self.num_classes),
        ] {
            if v < 1 {
                return bad(key, format!("must be at least 1, got {v}"));
            }
        }
        anchors::check_positive("anchors.scales", &self.anchors.scales)?;
        anchors::check_positive("anchors.ratios", &self.anchors.ratios)?;
        self.rpn.validate()?;
        self.rcnn.validate()
    }
}

#[cfg(test)]
mod tests;
