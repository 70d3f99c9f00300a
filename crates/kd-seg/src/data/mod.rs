//! Semantic segmentation data in the Cityscapes format.
//!
//! - [`labels`]: the label table (label ids → the 19 training ids, names, colours);
//! - [`SegDataset`] / [`open_cityscapes`]: the `leftImg8bit` + `gtFine` reader, decoding each
//!   sample lazily (the real set is 2975 + 500 images of 2048×1024);
//! - [`generate_synthetic_cityscapes`]: a seeded street-scene generator writing the same
//!   layout and file format, so the stand-in is read through the real reader;
//! - [`SegAugConfig`]: the MMSeg-style training pipeline (rescale, crop with `cat_max_ratio`,
//!   flip, photometric distortion, normalisation, padding);
//! - [`SegLoader`]: kd-core's seeded, parallel loader over a [`SegSource`]: batches
//!   `x [B,3,h,w]` and label maps `[B,h,w]` (255 = ignore);
//! - [`colorize`] / [`save_seg_grid`]: result pictures in the Cityscapes colours.
//!
//! Label maps inside kd-rs always hold training ids (`0..19`, 255 = ignore); label ids appear
//! only in files.

use kd_core::Result;

mod augment;
mod cityscapes;
pub mod labels;
mod loader;
mod memory;
mod palette;
mod synth;

pub use augment::{
    augment_sample, augment_sample_traced, PhotoOp, PhotometricConfig, SegAugConfig, SegAugTrace,
};
pub use cityscapes::{
    open_cityscapes, read_label_png, read_rgb_png, SegDataset, SegResize, IMAGE_SUFFIX, LABEL_SUFFIX,
};
pub use image::{GrayImage, RgbImage};
pub use labels::{CLASS_NAMES, IGNORE, NUM_CLASSES, PALETTE};
pub use loader::{seg_loader, trace_of, SegLoader, SegSamples, StackSeg};
pub use memory::InMemorySeg;
pub use palette::{colorize, label_map, save_seg_grid};
pub use synth::{generate_synthetic_cityscapes, SynthConfig, SYNTH_VERSION};

/// One segmentation sample: an RGB image and its training-id map of the same size.
#[derive(Clone, Debug, PartialEq)]
pub struct SegSample {
    /// The image, RGB, 8 bits per channel.
    pub image: RgbImage,
    /// Training ids `0..19`, 255 = ignore.
    pub label: GrayImage,
    /// Position of the sample in its dataset.
    pub index: usize,
}

/// A random-access source of segmentation samples (images may differ in size).
pub trait SegSource: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The decoded, un-augmented sample at `index`.
    fn get(&self, index: usize) -> Result<SegSample>;
    /// A short name for logs and results, e.g. `"cityscapes/val"`.
    fn name(&self) -> String;
    /// A stable name of sample `index` (for Cityscapes: `<city>_<seq>_<frame>`), used to name
    /// prediction files.
    fn sample_name(&self, index: usize) -> String {
        format!("{index:06}")
    }
    /// Number of classes (19 for Cityscapes training ids).
    fn num_classes(&self) -> usize {
        NUM_CLASSES
    }
}
