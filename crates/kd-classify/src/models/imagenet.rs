//! torchvision's ImageNet ResNets (`resnet18`, `resnet34`, `resnet50`, `resnet101`) as zoo
//! classifiers, so torchvision checkpoints are teachers and students here.
//!
//! The module tree is torchvision's `ResNet` (`torchvision/models/resnet.py`): a 7×7 stride-2
//! `conv1` with `bn1`, ReLU and a 3×3 stride-2 max-pool, four stages `layer1..4` of basic
//! (R18/34) or bottleneck (R50/101, stride on the 3×3 convolution, "v1.5") blocks whose
//! shortcut is `downsample.{0,1}`, then global average pooling and `fc`. The trunk is the same
//! code as the detectors' backbone (`kd_vision::resnet_v1c` with the 7×7 stem and output
//! stride 32), so one set of names serves both. Variable names equal torchvision's keys.
//!
//! Taps, in order: `stem` (after the max-pool, 64 channels, stride 4), then `stage1..4`
//! (R18/34: 64, 128, 256, 512; R50/101: 256, 512, 1024, 2048 channels; strides 4, 8, 16, 32).

use tch::nn::{self, ModuleT};

use kd_vision::resnet_v1c::{Layout, OutputStride, ResNetV1c};

use super::blocks::tap;
use super::{ModelSpec, StagedNet, Tap};
use kd_core::Result;

/// Builds torchvision's ResNet `depth` (18, 34, 50 or 101) called `name` under `p`.
pub fn imagenet_resnet(p: &nn::Path<'_>, name: &str, depth: u32, spec: ModelSpec) -> Result<StagedNet> {
    super::staged::check_spec(name, spec)?;
    let backbone = match depth {
        18 => "r18",
        34 => "r34",
        50 => "r50",
        _ => "r101",
    };
    let layout = Layout {
        output_stride: OutputStride::Os32,
        deep_stem: false,
    };
    let trunk = ResNetV1c::with_layout(p, backbone, 64, spec.in_channels, layout)?;
    let channels = trunk.channels();
    let strides = trunk.strides();
    let (stem, stages) = trunk.into_parts();
    let mut segments: Vec<(Tap, Box<dyn ModuleT>)> = vec![(tap("stem", 64, 4), Box::new(stem))];
    for (i, stage) in stages.into_iter().enumerate() {
        segments.push((
            tap(&format!("stage{}", i + 1), channels[i], strides[i]),
            Box::new(stage),
        ));
    }
    StagedNet::new(name, spec, segments, &(p / "fc"))
}
