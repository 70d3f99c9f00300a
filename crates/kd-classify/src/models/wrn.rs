//! Wide residual networks WRN-d-k as used by the CRD/RepDistiller benchmark (`wrn_16_1`,
//! `wrn_16_2`, `wrn_40_1`, `wrn_40_2`).
//!
//! Unlike the CIFAR ResNets these use *pre-activation* blocks (BN → ReLU → conv), so the maps
//! between blocks are raw residual sums and the network ends with its own BN + ReLU before
//! pooling. The stem is a bare 3×3 convolution to 16 channels, followed by three groups of
//! `(d - 4) / 6` wide blocks of widths `16k`, `32k`, `64k` at strides 1, 2, 2.
//!
//! Taps, in order:
//!
//! | tap      | what                                   | channels | stride |
//! |----------|----------------------------------------|----------|--------|
//! | `stem`   | output of the stem convolution         | 16       | 1      |
//! | `block1` | output of group 1 (pre-activation sum) | 16k      | 1      |
//! | `block2` | output of group 2 (pre-activation sum) | 32k      | 2      |
//! | `block3` | group 3 *after* the final BN + ReLU    | 64k      | 4      |
//!
//! `block3` is taken after the final BN + ReLU so that, as for the ResNets, the last tap is
//! exactly what the pooling head sees and [`Model::classify`](super::Model::classify) applies
//! to it. `pooled` is its global average, `[B, 64k]`.

use tch::nn::{self, ModuleT};

use super::blocks::{bn, conv, tap, WideBlock};
use super::{ModelSpec, StagedNet, Tap};
use kd_core::{KdError, Result};

/// Builds WRN-`depth`-`widen` called `name` under `p`. `depth` must be `6n + 4` with `n ≥ 1`;
/// `drop_rate` is the dropout probability inside each block (0 in the benchmark). Variable
/// names follow RepDistiller's `wrn.py`.
pub fn wide_resnet(
    p: &nn::Path<'_>,
    name: &str,
    depth: i64,
    widen: i64,
    drop_rate: f64,
    spec: ModelSpec,
) -> Result<StagedNet> {
    if depth < 10 || (depth - 4) % 6 != 0 {
        return Err(KdError::invalid(format!(
            "{name}: WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, ...), got {depth}"
        )));
    }
    if widen < 1 {
        return Err(KdError::invalid(format!(
            "{name}: widen factor must be at least 1, got {widen}"
        )));
    }
    if !(0.0..1.0).contains(&drop_rate) {
        return Err(KdError::invalid(format!(
            "{name}: drop_rate must be in [0, 1), got {drop_rate}"
        )));
    }
    super::staged::check_spec(name, spec)?;
    let n = (depth - 4) / 6;
    let widths = [16, 16 * widen, 32 * widen, 64 * widen];

    let stem = conv(&(p / "conv1"), spec.in_channels, widths[0], 3, 1);
    let mut segments: Vec<(Tap, Box<dyn ModuleT>)> = vec![(tap("stem", widths[0], 1), Box::new(stem))];

    let mut c_in = widths[0];
    for (g, stride) in [1i64, 2, 2].into_iter().enumerate() {
        let c_out = widths[g + 1];
        let lp = p / format!("block{}", g + 1) / "layer";
        let mut group = nn::seq_t();
        for b in 0..n {
            let st = if b == 0 { stride } else { 1 };
            group = group.add(WideBlock::new(&(&lp / b), c_in, c_out, st, drop_rate));
            c_in = c_out;
        }
        if g == 2 {
            group = group.add(bn(&(p / "bn1"), c_out)).add_fn(|x| x.relu());
        }
        let total_stride = [1, 2, 4][g];
        segments.push((
            tap(&format!("block{}", g + 1), c_out, total_stride),
            Box::new(group),
        ));
    }
    StagedNet::new(name, spec, segments, &(p / "fc"))
}
