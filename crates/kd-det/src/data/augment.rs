//! The detection pipeline, step for step as MMDet's COCO recipe:
//!
//! 1. resize keeping the aspect ratio (`Resize(img_scale=(long, short), keep_ratio=True)`):
//!    the scale factor is `min(long / max(h, w), short / min(h, w))`, the new size
//!    `(⌊w·s + ½⌋, ⌊h·s + ½⌋)`, the image is resized bilinearly and the boxes are scaled by
//!    the per-axis ratios `new_w / w`, `new_h / h` and clipped to the new image;
//! 2. horizontal flip with probability `flip_prob` (training only): `x1' = W − x2`,
//!    `x2' = W − x1` with `W` the resized width;
//! 3. normalisation `(v − mean) / std` on `0..=255` RGB values;
//! 4. padding with zeros at the bottom and right, to a multiple of `size_divisor` and then to
//!    the largest image of the batch (done by the loader); or, with `pad_to`, to one fixed size
//!    for every batch (MMDet's `Pad(size=...)`), so that inputs, and hence a frozen teacher's
//!    outputs, have one shape per sample and can be cached.
//!
//! The resize is the same in training and evaluation, so [`super::ImageMeta`] describes both.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::DetTarget;
use kd_core::{KdError, Result};
use kd_vision::image_ops::{normalize_to_chw, resize_rgb_bilinear, IMAGENET_MEAN_255, IMAGENET_STD_255};

/// The detection pipeline's parameters; defaults are MMDet's COCO recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetAugConfig {
    /// `[long, short]`: the longest and shortest side an image may have after the resize
    /// (default `[1333, 800]`).
    pub img_scale: [usize; 2],
    /// Probability of a horizontal flip in training (default 0.5).
    pub flip_prob: f64,
    /// Normalisation mean on `0..=255` RGB (default ImageNet `[123.675, 116.28, 103.53]`).
    pub mean: [f32; 3],
    /// Normalisation standard deviation on `0..=255` RGB (default `[58.395, 57.12, 57.375]`).
    pub std: [f32; 3],
    /// Inputs are padded to a multiple of this many pixels on both sides (default 32).
    pub size_divisor: usize,
    /// Pad every input to exactly `[width, height]` pixels instead of to the batch's largest
    /// image (default: absent). Both must be multiples of `size_divisor` and fit every resized
    /// image, i.e. at least `img_scale`'s long side by its short side for landscape images.
    pub pad_to: Option<[usize; 2]>,
}

impl Default for DetAugConfig {
    fn default() -> Self {
        Self {
            img_scale: [1333, 800],
            flip_prob: 0.5,
            mean: IMAGENET_MEAN_255,
            std: IMAGENET_STD_255,
            size_divisor: 32,
            pad_to: None,
        }
    }
}

/// One image after the pipeline, before batch padding.
#[derive(Clone, Debug, PartialEq)]
pub struct DetInput {
    /// Normalised pixels `[3, height, width]`, CHW order.
    pub chw: Vec<f32>,
    /// Width after the resize, in pixels (the valid width).
    pub width: usize,
    /// Height after the resize, in pixels (the valid height).
    pub height: usize,
    /// Input pixels per original pixel, horizontally.
    pub scale_x: f64,
    /// Input pixels per original pixel, vertically.
    pub scale_y: f64,
    /// Targets in input pixels.
    pub targets: Vec<DetTarget>,
}

impl DetAugConfig {
    /// The default recipe resizing to at most `long × short`.
    pub fn with_scale(long: usize, short: usize) -> Self {
        Self {
            img_scale: [long, short],
            ..Self::default()
        }
    }

    /// Checks the ranges (useful after deserialising).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(KdError::invalid(format!("detection augmentation: {m}")));
        if self.img_scale.contains(&0) {
            return bad(format!("img_scale {:?} has a zero side", self.img_scale));
        }
        if !(0.0..=1.0).contains(&self.flip_prob) {
            return bad(format!("flip_prob {} is not a probability", self.flip_prob));
        }
        if self.size_divisor == 0 {
            return bad("size_divisor must be at least 1".into());
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad(format!("std {s} must be positive and finite"));
        }
        if let Some([w, h]) = self.pad_to {
            if w == 0 || h == 0 || w % self.size_divisor != 0 || h % self.size_divisor != 0 {
                return bad(format!(
                    "pad_to [{w}, {h}] must be positive multiples of size_divisor {}",
                    self.size_divisor
                ));
            }
        }
        Ok(())
    }

    /// Runs steps 1–3 on `img` and its `targets` (original pixels), flipping when `flip`.
    pub fn apply(&self, img: &RgbImage, targets: &[DetTarget], flip: bool) -> DetInput {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let (nw, nh) = rescale_size(w, h, self.img_scale);
        let mut resized = resize_rgb_bilinear(img, nw, nh);
        if flip {
            image::imageops::flip_horizontal_in_place(&mut resized);
        }
        let (sx, sy) = (nw as f64 / w as f64, nh as f64 / h as f64);
        DetInput {
            chw: normalize_to_chw(&resized, self.mean, self.std),
            width: nw,
            height: nh,
            scale_x: sx,
            scale_y: sy,
            targets: transform_targets(targets, sx, sy, nw, nh, flip),
        }
    }
}

/// The size `(w', h')` an image of `w × h` gets when resized keeping its aspect ratio to fit
/// `img_scale = [long, short]`: `s = min(long / max(w, h), short / min(w, h))`,
/// `w' = ⌊w·s + ½⌋`, `h' = ⌊h·s + ½⌋` (at least 1).
pub fn rescale_size(w: usize, h: usize, img_scale: [usize; 2]) -> (usize, usize) {
    let [long, short] = img_scale;
    let (long, short) = (long.max(short) as f64, long.min(short) as f64);
    let s = (long / w.max(h) as f64).min(short / w.min(h) as f64);
    let r = |v: usize| ((v as f64 * s + 0.5).floor() as usize).max(1);
    (r(w), r(h))
}

/// `n` rounded up to a multiple of `divisor`.
pub fn pad_to_multiple(n: usize, divisor: usize) -> usize {
    n.div_ceil(divisor) * divisor
}

/// Mirrors boxes in an image `width` pixels wide: `x1' = width − x2`, `x2' = width − x1`.
pub fn flip_boxes(targets: &mut [DetTarget], width: f64) {
    for t in targets {
        let [x1, y1, x2, y2] = t.bbox;
        t.bbox = [width - x2, y1, width - x1, y2];
    }
}

/// Boxes in original pixels → input pixels: scaled by `(sx, sy)`, clipped to the resized
/// image `new_w × new_h`, then mirrored when `flip`.
pub fn transform_targets(
    targets: &[DetTarget],
    sx: f64,
    sy: f64,
    new_w: usize,
    new_h: usize,
    flip: bool,
) -> Vec<DetTarget> {
    let (w, h) = (new_w as f64, new_h as f64);
    let mut out: Vec<DetTarget> = targets
        .iter()
        .map(|t| {
            let [x1, y1, x2, y2] = t.bbox;
            DetTarget {
                bbox: [
                    (x1 * sx).clamp(0.0, w),
                    (y1 * sy).clamp(0.0, h),
                    (x2 * sx).clamp(0.0, w),
                    (y2 * sy).clamp(0.0, h),
                ],
                ..*t
            }
        })
        .collect();
    if flip {
        flip_boxes(&mut out, w);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(b: [f64; 4]) -> DetTarget {
        DetTarget {
            bbox: b,
            class: 1,
            iscrowd: false,
        }
    }

    #[test]
    fn rescale_keeps_the_ratio_mmdet_style() {
        // COCO 640×480 at (1333, 800): s = min(1333/640, 800/480) = 1.6667 → 1067×800.
        assert_eq!(rescale_size(640, 480, [1333, 800]), (1067, 800));
        // A wide 1000×200: s = min(1.333, 4) = 1.333 → 1333×267 (266.67 rounds up).
        assert_eq!(rescale_size(1000, 200, [1333, 800]), (1333, 267));
        // Portrait 480×640 is bounded by the short side too: → 800×1067.
        assert_eq!(rescale_size(480, 640, [1333, 800]), (800, 1067));
        // Order of the pair does not matter; shrinking works the same way.
        assert_eq!(rescale_size(176, 144, [96, 128]), (117, 96));
        assert_eq!(rescale_size(3, 1000, [10, 5]), (1, 10));
        assert_eq!((pad_to_multiple(800, 32), pad_to_multiple(1067, 32)), (800, 1088));
        assert_eq!((pad_to_multiple(1, 32), pad_to_multiple(64, 32)), (32, 64));
    }

    #[test]
    fn boxes_follow_the_resize_and_the_flip() {
        // 10×8 image → 20×16 (s = 2); then flipped in a 20-px-wide image.
        let cfg = DetAugConfig::with_scale(20, 16);
        let img = RgbImage::from_fn(10, 8, |x, _| image::Rgb([x as u8 * 20, 0, 0]));
        let boxes = [t([1.0, 2.0, 4.0, 5.0]), t([8.0, 0.0, 11.0, 3.0])];
        let a = cfg.apply(&img, &boxes, false);
        assert_eq!((a.width, a.height, a.scale_x, a.scale_y), (20, 16, 2.0, 2.0));
        assert_eq!(a.targets[0].bbox, [2.0, 4.0, 8.0, 10.0]);
        // The second box sticks out of the image: clipped to x2 = 20.
        assert_eq!(a.targets[1].bbox, [16.0, 0.0, 20.0, 6.0]);
        let f = cfg.apply(&img, &boxes, true);
        assert_eq!(f.targets[0].bbox, [12.0, 4.0, 18.0, 10.0]);
        assert_eq!(f.targets[1].bbox, [0.0, 0.0, 4.0, 6.0]);
        // The image is mirrored too: column 0 of the flip is the last column of the original.
        let plane = 20 * 16;
        assert_eq!(f.chw.len(), 3 * plane);
        assert_eq!(f.chw[0], a.chw[19]);
        assert_ne!(f.chw[0], a.chw[0]);
        let red = (180.0 - 123.675) / 58.395;
        assert!((a.chw[19] - red).abs() < 1e-5, "{}", a.chw[19]);
        // Flipping twice is the identity.
        let mut b = boxes.to_vec();
        flip_boxes(&mut b, 10.0);
        assert_eq!(b[0].bbox, [6.0, 2.0, 9.0, 5.0]);
        flip_boxes(&mut b, 10.0);
        assert_eq!(b, boxes.to_vec());
        // Unequal scales per axis: 7×3 → (1333, 800) gives s = 190.43 → 1333×571.
        let r = transform_targets(
            &[t([7.0, 3.0, 7.0, 3.0])],
            1333.0 / 7.0,
            571.0 / 3.0,
            1333,
            571,
            false,
        );
        assert_eq!(r[0].bbox, [1333.0, 571.0, 1333.0, 571.0]);
    }

    #[test]
    fn validation() {
        assert!(DetAugConfig::default().validate().is_ok());
        for bad in [
            DetAugConfig {
                img_scale: [0, 5],
                ..Default::default()
            },
            DetAugConfig {
                flip_prob: 1.5,
                ..Default::default()
            },
            DetAugConfig {
                size_divisor: 0,
                ..Default::default()
            },
            DetAugConfig {
                std: [1.0, 0.0, 1.0],
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let e = serde_json::from_str::<DetAugConfig>(r#"{"flip": 0.5}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let c: DetAugConfig = serde_json::from_str(r#"{"img_scale": [176, 144]}"#).unwrap();
        assert_eq!((c.img_scale, c.size_divisor), ([176, 144], 32));
    }
}
