//! [`SegNet`]: backbone + decode head (+ auxiliary head) as a kd-core [`Model`].

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::heads::{AsppHead, FcnHead, PspHead};
use super::{SegNetConfig, HEADS};
use kd_core::models::{check_input_shape, Model, ModelOutput, Tap, NATIVE_LOGITS};
use kd_core::{KdError, Result};
use kd_vision::layers::resize_bilinear;
use kd_vision::resnet_v1c::ResNetV1c;

/// A semantic-segmentation network: a dilated ResNet-V1c trunk (output stride 8), a PSP or
/// ASPP decode head on stage 4 and, optionally, an FCN auxiliary head on stage 3.
///
/// [`Model::forward_t`] on `x` `[B, C_in, H, W]` returns
/// - `logits`: the decode head's output bilinearly resized to the input, `[B, K, H, W]`;
/// - `aux_logits`: the auxiliary head's output resized the same way, `[B, K, H, W]`, or `None`
///   when the net has no auxiliary head;
/// - `features`: the stage outputs `stage1` … `stage4` (strides 4, 8, 8, 8), `stage4` being
///   the last backbone map that GDD distils;
/// - `pooled`: `None`;
/// - `heads`: [`NATIVE_LOGITS`], the decode head's output before the resize, `[B, K, h, w]`
///   at stride 8 (MMSeg's `decode_head.conv_seg`), which logit distillation reads.
///
/// BatchNorm and dropout follow the `train` flag. In train mode BatchNorm needs more than one
/// value per channel, so the ASPP image-pooling branch (a 1×1 map) needs `B ≥ 2`.
#[derive(Debug)]
pub struct SegNet {
    name: String,
    cfg: SegNetConfig,
    backbone: ResNetV1c,
    decode: Box<dyn ModuleT>,
    aux: Option<FcnHead>,
    taps: Vec<Tap>,
}

/// Builds the network described by `cfg` with its variables under `path` (MMSeg layout:
/// `backbone.*`, `decode_head.*`, `auxiliary_head.*`).
///
/// Fails with [`KdError::Invalid`] naming the key for an unknown `backbone` or `head`, a width
/// that is odd or below 2, non-positive channels or classes, an empty or non-positive
/// `aspp_dilations` for the ASPP head, or a dropout outside `[0, 1)`.
pub fn build(path: &nn::Path<'_>, cfg: &SegNetConfig) -> Result<SegNet> {
    cfg.validate()?;
    let backbone = ResNetV1c::new(&(path / "backbone"), &cfg.backbone, cfg.width, cfg.in_channels)?;
    let ch = backbone.channels();
    let dp = path / "decode_head";
    let decode: Box<dyn ModuleT> = match cfg.head.as_str() {
        "psp" => Box::new(PspHead::new(
            &dp,
            ch[3],
            cfg.head_channels,
            cfg.num_classes,
            cfg.dropout,
        )),
        "aspp" => Box::new(AsppHead::new(
            &dp,
            ch[3],
            cfg.head_channels,
            &cfg.aspp_dilations,
            cfg.num_classes,
            cfg.dropout,
        )),
        // MMSeg's FCN (`fcn_r50-d8`): two convs and the fusion with the input.
        "fcn" => Box::new(FcnHead::with_convs(
            &dp,
            ch[3],
            cfg.head_channels,
            2,
            true,
            cfg.num_classes,
            cfg.dropout,
        )),
        other => {
            return Err(KdError::invalid(format!(
                "head: unknown decode head {other:?}; known heads: {}",
                HEADS.join(", ")
            )))
        }
    };
    let aux = (cfg.aux_channels > 0).then(|| {
        FcnHead::new(
            &(path / "auxiliary_head"),
            ch[2],
            cfg.aux_channels,
            cfg.num_classes,
            cfg.dropout,
        )
    });
    let strides = backbone.strides();
    let taps = (0..4)
        .map(|i| Tap::new(&format!("stage{}", i + 1), ch[i], strides[i]))
        .collect();
    Ok(SegNet {
        name: cfg.name(),
        cfg: cfg.clone(),
        backbone,
        decode,
        aux,
        taps,
    })
}

impl SegNet {
    /// The configuration this network was built from.
    pub fn config(&self) -> &SegNetConfig {
        &self.cfg
    }

    /// The backbone trunk.
    pub fn backbone(&self) -> &ResNetV1c {
        &self.backbone
    }

    /// Whether the net has the auxiliary FCN head.
    pub fn has_aux_head(&self) -> bool {
        self.aux.is_some()
    }
}

impl Model for SegNet {
    fn name(&self) -> &str {
        &self.name
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> ModelOutput {
        let (h, w) = (x.size()[2], x.size()[3]);
        let stages = self.backbone.forward_t(x, train);
        let native = self.decode.forward_t(&stages[3], train);
        let logits = resize_bilinear(&native, h, w);
        let aux_logits = self
            .aux
            .as_ref()
            .map(|a| resize_bilinear(&a.forward_t(&stages[2], train), h, w));
        let features = self
            .taps
            .iter()
            .zip(stages)
            .map(|(t, s)| (t.name.clone(), s))
            .collect();
        ModelOutput {
            logits,
            aux_logits,
            features,
            pooled: None,
            heads: vec![(NATIVE_LOGITS.to_string(), native)],
        }
    }

    fn taps(&self) -> &[Tap] {
        &self.taps
    }

    fn num_classes(&self) -> i64 {
        self.cfg.num_classes
    }

    fn in_channels(&self) -> i64 {
        self.cfg.in_channels
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        check_input_shape(&self.name, self.cfg.in_channels, x)?;
        let w = self.backbone.first_weight();
        let (kind, device) = (w.kind(), w.device());
        if x.kind() != kind || x.device() != device {
            return Err(KdError::invalid(format!(
                "{} input: x is {:?} on {:?}, but the model's weights are {kind:?} on {device:?}",
                self.name,
                x.kind(),
                x.device()
            )));
        }
        Ok(())
    }
}
