//! CIFAR ResNets as used by the CRD/RepDistiller benchmark (`resnet8` … `resnet110`,
//! `resnet8x4`, `resnet32x4`).
//!
//! These are *not* the ImageNet ResNets: the stem is a single 3×3 convolution (no max-pool),
//! there are three stages of `n` basic blocks at strides 1, 2, 2, and depth is `6n + 2`. The
//! benchmark's teacher/student pairs (e.g. resnet32x4 → resnet8x4) only make sense with this
//! exact layout, so the widths, shortcuts and initialisation follow the reference code.
//!
//! Taps, in order (all *post*-activation, i.e. after the block's final ReLU):
//!
//! | tap      | channels   | stride |
//! |----------|------------|--------|
//! | `stem`   | `widths[0]`| 1      |
//! | `stage1` | `widths[1]`| 1      |
//! | `stage2` | `widths[2]`| 2      |
//! | `stage3` | `widths[3]`| 4      |
//!
//! `pooled` is the globally averaged `stage3` map, `[B, widths[3]]`.

use tch::nn::{self, ModuleT};

use super::blocks::{bn, conv, tap, BasicBlock};
use super::{ModelSpec, StagedNet, Tap};
use kd_core::{KdError, Result};

/// Widths `[stem, stage1, stage2, stage3]` of the plain CIFAR ResNets.
pub const WIDTHS: [i64; 4] = [16, 16, 32, 64];

/// Widths of the ×4 variants (`resnet8x4`, `resnet32x4`).
pub const WIDTHS_X4: [i64; 4] = [32, 64, 128, 256];

/// Builds a CIFAR ResNet called `name` of depth `6n + 2` (`n ≥ 1` basic blocks per stage) with
/// the given widths under `p`. Variable names follow RepDistiller's `resnet.py`.
pub fn cifar_resnet(
    p: &nn::Path<'_>,
    name: &str,
    depth: i64,
    widths: [i64; 4],
    spec: ModelSpec,
) -> Result<StagedNet> {
    if depth < 8 || (depth - 2) % 6 != 0 {
        return Err(KdError::invalid(format!(
            "{name}: CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}"
        )));
    }
    if widths.iter().any(|&w| w < 1) {
        return Err(KdError::invalid(format!(
            "{name}: widths must be positive, got {widths:?}"
        )));
    }
    super::staged::check_spec(name, spec)?;
    let n = (depth - 2) / 6;

    let stem = nn::seq_t()
        .add(conv(&(p / "conv1"), spec.in_channels, widths[0], 3, 1))
        .add(bn(&(p / "bn1"), widths[0]))
        .add_fn(|x| x.relu());
    let mut segments: Vec<(Tap, Box<dyn ModuleT>)> = vec![(tap("stem", widths[0], 1), Box::new(stem))];

    let mut c_in = widths[0];
    for (s, stride) in [1i64, 2, 2].into_iter().enumerate() {
        let c_out = widths[s + 1];
        let lp = p / format!("layer{}", s + 1);
        let mut stage = nn::seq_t();
        for b in 0..n {
            let st = if b == 0 { stride } else { 1 };
            stage = stage.add(BasicBlock::new(&(&lp / b), c_in, c_out, st));
            c_in = c_out;
        }
        let total_stride = [1, 2, 4][s];
        segments.push((
            tap(&format!("stage{}", s + 1), c_out, total_stride),
            Box::new(stage),
        ));
    }
    StagedNet::new(name, spec, segments, &(p / "fc"))
}
