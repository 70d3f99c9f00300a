//! Datasets and batching.
//!
//! Every sample carries its dataset index: self-regulated KD counts per-sample participation and
//! KD³ logs which web images were selected, so the index must survive shuffling and batching.

use tch::Tensor;

use crate::Result;

/// A decoded image, channels-first, values in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Channels.
    pub c: usize,
    /// Height in pixels.
    pub h: usize,
    /// Width in pixels.
    pub w: usize,
    /// `c * h * w` values, CHW order.
    pub data: Vec<f32>,
}

/// One labelled sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The image.
    pub image: Image,
    /// Class label in `0..K`, or `-1` when the sample is unlabelled.
    pub label: i64,
    /// Position of the sample in its dataset.
    pub index: usize,
}

/// A random-access dataset of images.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The raw (un-augmented) sample at `index`.
    fn get(&self, index: usize) -> Result<Sample>;
    /// Number of classes K.
    fn num_classes(&self) -> usize;
    /// Image shape `[C, H, W]` every sample has (after any fixed resize).
    fn shape(&self) -> [usize; 3];
    /// A short name for logs and results, e.g. `"fashion-mnist-subset/train"`.
    fn name(&self) -> String;
}

/// A batch ready for a forward pass.
#[derive(Debug)]
pub struct Batch {
    /// Inputs `[B, C, H, W]`, float32, augmented and normalised.
    pub x: Tensor,
    /// Labels `[B]`, int64 (`-1` for unlabelled samples).
    pub y: Tensor,
    /// Dataset indices `[B]`, int64.
    pub index: Tensor,
    /// The same indices on the host.
    pub indices: Vec<usize>,
}
pub mod subset;
