//! Object-detection data in the COCO format.
//!
//! Detection is evaluated against a COCO annotation file, so the data path reads that format
//! and nothing else: the synthetic stand-in is written as COCO JSON + PNG images and read
//! back through the same reader, and the evaluator is handed the very JSON the loader read.
//!
//! - [`CocoDataset`] / [`open_coco`] / [`open_coco_root`]: the `instances_*.json` reader (boxes,
//!   category-id map, crowd flags, images without objects), with pixels decoded lazily;
//! - [`InMemoryDet`]: the same set with every image decoded once (small sets);
//! - [`generate_synthetic_coco`]: seeded scenes of shapes, clutter, occlusion and crowds in
//!   the official COCO layout;
//! - [`DetAugConfig`]: MMDet's pipeline (resize keeping the ratio, flip, normalise, pad);
//! - [`DetLoader`]: seeded, parallel batches `x [B,3,Hp,Wp]`, `y [B,N,6]` implementing
//!   [`kd_core::data::BatchSource`], and [`ImageMeta`] to map predictions back to the original
//!   image for evaluation;
//! - [`draw_boxes`] / [`batch_image`]: pictures of boxes on inputs.
//!
//! Box conventions: COCO files hold `[x, y, w, h]` in original pixels; inside kd-rs boxes are
//! `(x1, y1, x2, y2)` in continuous pixel coordinates (pixel `i` spans `[i, i+1)`), and class
//! indices are contiguous `0..K` in the order of increasing COCO category id.

use image::RgbImage;

use kd_core::Result;

mod augment;
mod coco;
mod draw;
mod loader;
mod memory;
mod synth;

pub use augment::{flip_boxes, pad_to_multiple, rescale_size, transform_targets, DetAugConfig, DetInput};
pub use coco::{open_coco, open_coco_root, CocoAnnotation, CocoCategory, CocoDataset, CocoImage};
pub use draw::{batch_image, class_colour, draw_boxes};
pub use loader::{det_loader, DetLoader, DetSamples, PadBoxes};
pub use memory::InMemoryDet;
pub use synth::{generate_synthetic_coco, DetSynthConfig, DET_SYNTH_VERSION, SHAPE_NAMES};

/// One training target: a box `(x1, y1, x2, y2)` in pixels, its contiguous class and crowd flag.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetTarget {
    /// `(x1, y1, x2, y2)` in pixels of the image it belongs to.
    pub bbox: [f64; 4],
    /// Contiguous class index `0..K`.
    pub class: usize,
    /// True for a crowd region (`iscrowd = 1`).
    pub iscrowd: bool,
}

/// What evaluation needs to map predictions on an input back to its original image: the input
/// is the original resized by `scale_x`, `scale_y` (input pixels per original pixel) to
/// `valid_w × valid_h`, then padded bottom/right. Describes the un-augmented transform.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageMeta {
    /// COCO image id.
    pub image_id: i64,
    /// Original width in pixels.
    pub orig_w: usize,
    /// Original height in pixels.
    pub orig_h: usize,
    /// Input pixels per original pixel, horizontally.
    pub scale_x: f64,
    /// Input pixels per original pixel, vertically.
    pub scale_y: f64,
    /// Unpadded input width in pixels.
    pub valid_w: usize,
    /// Unpadded input height in pixels.
    pub valid_h: usize,
}

impl ImageMeta {
    /// A box `(x1, y1, x2, y2)` in input pixels mapped back to original pixels as COCO
    /// `[x, y, w, h]`, after clipping to the valid input area.
    pub fn to_original_xywh(&self, b: [f64; 4]) -> [f64; 4] {
        let (vw, vh) = (self.valid_w as f64, self.valid_h as f64);
        let x1 = b[0].clamp(0.0, vw) / self.scale_x;
        let y1 = b[1].clamp(0.0, vh) / self.scale_y;
        let x2 = b[2].clamp(0.0, vw) / self.scale_x;
        let y2 = b[3].clamp(0.0, vh) / self.scale_y;
        [x1, y1, (x2 - x1).max(0.0), (y2 - y1).max(0.0)]
    }
}

/// A random-access source of detection images over one annotation file.
pub trait DetSource: Send + Sync {
    /// The annotations, categories and image records.
    fn coco(&self) -> &CocoDataset;

    /// The RGB pixels of image `index` (position in the annotation file's `images` list).
    fn image(&self, index: usize) -> Result<RgbImage>;

    /// Number of images.
    fn len(&self) -> usize {
        self.coco().len()
    }

    /// True when there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A short name for logs and errors.
    fn name(&self) -> String {
        self.coco().name()
    }
}
