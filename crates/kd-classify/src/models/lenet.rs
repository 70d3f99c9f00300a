//! LeNet-5 and its half-width variant (`lenet5`, `lenet5_half`), the small pair of the
//! data-efficiency literature (self-regulated and confidence-conditioned KD train LeNet-5-half
//! students on MNIST and Fashion-MNIST).
//!
//! The layout is LeNet-5 with ReLU and max-pooling, as it is usually trained today:
//! `conv 5×5 (pad 2) → ReLU → pool 2 → conv 5×5 → ReLU → pool 2 → fc → ReLU → fc → ReLU → fc`.
//! On a 28×28 input the second pooled map is exactly 5×5, as in the original network. To keep
//! one architecture valid for 32×32 (CIFAR) inputs too, that map is adaptively average-pooled to
//! 5×5 before the first fully connected layer; at 28×28 this pooling is the identity.
//!
//! To share [`StagedNet`]'s tap bookkeeping, the two hidden fully connected layers form the last
//! segment, whose output is returned as a `[B, f2, 1, 1]` map; the head's global pooling is then
//! the identity and its linear layer is LeNet's output layer. Taps, in order:
//!
//! | tap      | what                              | channels (full / half) | nominal stride |
//! |----------|-----------------------------------|------------------------|----------------|
//! | `stage1` | conv1 → ReLU → pool               | 6 / 3                  | 2              |
//! | `stage2` | conv2 → ReLU → pool               | 16 / 8                 | 4              |
//! | `stage3` | fc1 → ReLU → fc2 → ReLU, as 1×1   | 84 / 42                | whole image    |
//!
//! The unpadded second convolution makes `stage2` 4 pixels smaller than `H / 4` before pooling
//! (5×5 at 28×28, 6×6 at 32×32), and inputs must be at least 10×10. Every layer has a bias and
//! PyTorch's default initialisation, uniform in `±1/sqrt(fan_in)`.

use tch::nn::{self, Init};

use super::blocks::{linear, tap};
use super::{ModelSpec, StagedNet, Tap};
use kd_core::{KdError, Result};

/// Widths `[conv1, conv2, fc1, fc2]` of LeNet-5.
pub const LENET5_WIDTHS: [i64; 4] = [6, 16, 120, 84];

/// Widths of LeNet-5-half: every layer at half width.
pub const LENET5_HALF_WIDTHS: [i64; 4] = [3, 8, 60, 42];

/// Side of the map the first fully connected layer reads.
const FC_SIDE: i64 = 5;

/// A 5×5 convolution with bias, PyTorch's default initialisation (`±1/sqrt(fan_in)`).
fn conv5(p: &nn::Path<'_>, c_in: i64, c_out: i64, padding: i64) -> nn::Conv2D {
    let bound = 1.0 / ((c_in * 25) as f64).sqrt();
    let uniform = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let cfg = nn::ConvConfig {
        padding,
        bias: true,
        ws_init: uniform,
        bs_init: uniform,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, 5, cfg)
}

/// Builds a LeNet-5 called `name` with the given widths under `p`. Variable names are
/// `conv1`, `conv2`, `fc1`, `fc2` and the output layer `fc`.
pub fn lenet(p: &nn::Path<'_>, name: &str, widths: [i64; 4], spec: ModelSpec) -> Result<StagedNet> {
    if widths.iter().any(|&w| w < 1) {
        return Err(KdError::invalid(format!(
            "{name}: widths must be positive, got {widths:?}"
        )));
    }
    super::staged::check_spec(name, spec)?;
    let [c1, c2, f1, f2] = widths;
    let stage1 = nn::seq_t()
        .add(conv5(&(p / "conv1"), spec.in_channels, c1, 2))
        .add_fn(|x| x.relu().max_pool2d_default(2));
    let stage2 = nn::seq_t()
        .add(conv5(&(p / "conv2"), c1, c2, 0))
        .add_fn(|x| x.relu().max_pool2d_default(2));
    let stage3 = nn::seq_t()
        .add_fn(|x| x.adaptive_avg_pool2d([FC_SIDE, FC_SIDE]).flatten(1, -1))
        .add(linear(&(p / "fc1"), c2 * FC_SIDE * FC_SIDE, f1))
        .add_fn(|x| x.relu())
        .add(linear(&(p / "fc2"), f1, f2))
        .add_fn(|x| x.relu().unsqueeze(-1).unsqueeze(-1));
    let segments: Vec<(Tap, Box<dyn nn::ModuleT>)> = vec![
        (tap("stage1", c1, 2), Box::new(stage1)),
        (tap("stage2", c2, 4), Box::new(stage2)),
        (tap("stage3", f2, 32), Box::new(stage3)),
    ];
    StagedNet::new(name, spec, segments, &(p / "fc"))
}
