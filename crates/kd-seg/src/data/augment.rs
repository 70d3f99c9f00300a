//! The segmentation training pipeline, step for step as in MMSeg's Cityscapes recipe:
//!
//! 1. random rescale: a ratio `r` uniform in `ratio_range` scales the base scale `(W, H)` to
//!    `(⌊W·r⌋, ⌊H·r⌋)`, and the image is resized keeping its aspect ratio to the largest size
//!    that fits (image bilinear, labels nearest);
//! 2. random crop of `crop = [h, w]`; while the crop is dominated by one class (more than
//!    `cat_max_ratio` of its non-ignored pixels, or fewer than two classes), a new offset is drawn,
//!    at most `crop_tries` times, the last draw being kept;
//! 3. horizontal flip with probability `flip_prob`;
//! 4. photometric distortion, each part with probability `prob`: brightness, then contrast
//!    either here or last (a coin decides), saturation, hue; the image is clipped to `0..=255`
//!    and truncated to bytes after each part, and HSV is computed in floating point;
//! 5. normalisation `(v - mean) / std` on `0..=255` values;
//! 6. padding at the bottom and right to the crop size: 0 for the (normalised) image, 255 for
//!    the labels.
//!
//! Every draw comes from the generator passed in, in the order the steps are listed, so the
//! loader can derive one per `(seed, epoch, index)` and augment in parallel.

use image::{GrayImage, RgbImage};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use super::labels::IGNORE;
use kd_core::rng::Rng;
use kd_core::{KdError, Result};
use kd_vision::image_ops::{
    normalize_to_chw, resize_label_nearest, resize_rgb_bilinear, IMAGENET_MEAN_255, IMAGENET_STD_255,
};

/// Photometric distortion parameters (MMSeg's defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhotometricConfig {
    /// Probability of each of the four parts.
    pub prob: f64,
    /// Brightness offset drawn from `[-delta, delta]`.
    pub brightness_delta: f32,
    /// Contrast factor range.
    pub contrast_range: [f32; 2],
    /// Saturation factor range.
    pub saturation_range: [f32; 2],
    /// Hue offset, an integer in `[-delta, delta]` in OpenCV units of 2 degrees.
    pub hue_delta: i32,
}

impl Default for PhotometricConfig {
    fn default() -> Self {
        Self {
            prob: 0.5,
            brightness_delta: 32.0,
            contrast_range: [0.5, 1.5],
            saturation_range: [0.5, 1.5],
            hue_delta: 18,
        }
    }
}

/// The training augmentation; defaults are the MMSeg Cityscapes recipe (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegAugConfig {
    /// Base scale `[W, H]` of the random rescale; unset = each image's own size (on the
    /// 2048×1024 Cityscapes images that is the recipe's `(2048, 1024)`).
    pub scale: Option<[usize; 2]>,
    /// Range of the rescale ratio; `[1, 1]` leaves the size alone.
    pub ratio_range: [f64; 2],
    /// Crop size `[h, w]`: every training sample comes out at this size.
    pub crop: [usize; 2],
    /// Largest share of the crop one class may cover; 1 or more disables the re-draws.
    pub cat_max_ratio: f64,
    /// How many times a crop offset is re-drawn.
    pub crop_tries: usize,
    /// Probability of a horizontal flip.
    pub flip_prob: f64,
    /// Photometric distortion; unset = none.
    pub photometric: Option<PhotometricConfig>,
    /// Normalisation mean on `0..=255` (RGB); also used for evaluation.
    pub mean: [f32; 3],
    /// Normalisation standard deviation on `0..=255` (RGB); also used for evaluation.
    pub std: [f32; 3],
}

impl Default for SegAugConfig {
    fn default() -> Self {
        Self {
            scale: None,
            ratio_range: [0.5, 2.0],
            crop: [512, 512],
            cat_max_ratio: 0.75,
            crop_tries: 10,
            flip_prob: 0.5,
            photometric: Some(PhotometricConfig::default()),
            mean: IMAGENET_MEAN_255,
            std: IMAGENET_STD_255,
        }
    }
}

impl SegAugConfig {
    /// The default recipe with crop size `[h, w]`.
    pub fn with_crop(h: usize, w: usize) -> Self {
        Self {
            crop: [h, w],
            ..Self::default()
        }
    }

    /// The size `(w, h)` an image of `(w0, h0)` has after the rescale with ratio `r`: the base
    /// scale times `r`, fitted keeping the aspect ratio (MMSeg's `keep_ratio` rescale).
    pub fn rescaled_size(&self, w0: usize, h0: usize, r: f64) -> (usize, usize) {
        let [lo, hi] = self.ratio_range;
        if lo == hi && lo == 1.0 {
            return (w0, h0);
        }
        let [bw, bh] = self.scale.unwrap_or([w0, h0]);
        let (tw, th) = ((bw as f64 * r) as usize, (bh as f64 * r) as usize);
        let (long, short) = (tw.max(th) as f64, tw.min(th) as f64);
        let f = (long / w0.max(h0) as f64).min(short / w0.min(h0) as f64);
        let w = ((w0 as f64 * f + 0.5) as usize).max(1);
        let h = ((h0 as f64 * f + 0.5) as usize).max(1);
        (w, h)
    }

    /// Checks the crop against the training images' sizes `(w, h)`: a crop larger than every
    /// image at the largest rescale would be padding on that side in every sample, so it is an
    /// error naming the sizes.
    pub fn check_crop(&self, sizes: impl IntoIterator<Item = (usize, usize)>) -> Result<()> {
        let [ch, cw] = self.crop;
        let hi = self.ratio_range[1];
        let (mut mw, mut mh) = (0, 0);
        for (w, h) in sizes {
            let (w, h) = self.rescaled_size(w, h, hi);
            mw = mw.max(w);
            mh = mh.max(h);
        }
        if mw > 0 && (cw > mw || ch > mh) {
            return Err(KdError::invalid(format!(
                "crop [{ch}, {cw}] ([h, w]) is larger than the largest training image after the rescale ({mh}×{mw} at ratio {hi}): every crop would be mostly padding"
            )));
        }
        Ok(())
    }

    /// Checks the ranges (useful after deserialising).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(KdError::invalid(format!("segmentation augmentation: {m}")));
        let [lo, hi] = self.ratio_range;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return bad(format!(
                "ratio_range {:?} must satisfy 0 < lo <= hi",
                self.ratio_range
            ));
        }
        if self.crop.contains(&0) {
            return bad(format!("crop {:?} has a zero side", self.crop));
        }
        if self.scale.is_some_and(|s| s.contains(&0)) {
            return bad(format!("scale {:?} has a zero side", self.scale));
        }
        if !(0.0..=1.0).contains(&self.flip_prob) {
            return bad(format!("flip_prob {} is not a probability", self.flip_prob));
        }
        if self.cat_max_ratio.is_nan() || self.cat_max_ratio <= 0.0 {
            return bad(format!("cat_max_ratio {} must be positive", self.cat_max_ratio));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad(format!("std {s} must be positive and finite"));
        }
        if let Some(p) = &self.photometric {
            if !(0.0..=1.0).contains(&p.prob) {
                return bad(format!("photometric prob {} is not a probability", p.prob));
            }
            for (name, r) in [
                ("contrast_range", p.contrast_range),
                ("saturation_range", p.saturation_range),
            ] {
                if !(r[0] >= 0.0 && r[0] <= r[1]) {
                    return bad(format!("{name} {r:?} must satisfy 0 <= lo <= hi"));
                }
            }
            if p.brightness_delta < 0.0 || p.hue_delta < 0 {
                return bad("brightness_delta and hue_delta must not be negative".into());
            }
        }
        Ok(())
    }
}

fn crop_rgb(img: &RgbImage, x0: usize, y0: usize, w: usize, h: usize) -> RgbImage {
    image::imageops::crop_imm(img, x0 as u32, y0 as u32, w as u32, h as u32).to_image()
}

fn crop_gray(img: &GrayImage, x0: usize, y0: usize, w: usize, h: usize) -> GrayImage {
    image::imageops::crop_imm(img, x0 as u32, y0 as u32, w as u32, h as u32).to_image()
}

/// True when the crop of `label` at `(x0, y0, w, h)` has at least two classes and none covers
/// `cat_max_ratio` or more of its non-ignored pixels.
fn crop_is_varied(label: &GrayImage, x0: usize, y0: usize, w: usize, h: usize, cat_max_ratio: f64) -> bool {
    let mut counts = [0u64; 256];
    let lw = label.width() as usize;
    let raw = label.as_raw();
    for y in y0..y0 + h {
        for &v in &raw[y * lw + x0..y * lw + x0 + w] {
            counts[v as usize] += 1;
        }
    }
    counts[IGNORE as usize] = 0;
    let total: u64 = counts.iter().sum();
    let classes = counts.iter().filter(|&&c| c > 0).count();
    let max = counts.iter().copied().max().unwrap_or(0);
    classes > 1 && (max as f64) < cat_max_ratio * total as f64
}

fn to_byte(v: f32) -> u8 {
    v.clamp(0.0, 255.0) as u8
}

fn rgb_to_hsv(p: [u8; 3]) -> [f32; 3] {
    let [r, g, b] = p.map(|v| v as f32 / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let h = if d == 0.0 {
        0.0
    } else if max == r {
        60.0 * ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    let s = if max == 0.0 { 0.0 } else { d / max };
    [h, s, max]
}

fn hsv_to_rgb([h, s, v]: [f32; 3]) -> [u8; 3] {
    let c = v * s;
    let hp = h.rem_euclid(360.0) / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r, g, b].map(|u| ((u + m) * 255.0).round().clamp(0.0, 255.0) as u8)
}

fn map_hsv(img: &mut RgbImage, f: impl Fn([f32; 3]) -> [f32; 3]) {
    for px in img.pixels_mut() {
        px.0 = hsv_to_rgb(f(rgb_to_hsv(px.0)));
    }
}

fn linear(img: &mut RgbImage, alpha: f32, beta: f32) {
    for v in img.iter_mut() {
        *v = to_byte(*v as f32 * alpha + beta);
    }
}

fn photometric(img: &mut RgbImage, p: &PhotometricConfig, rng: &mut Rng, ops: &mut Vec<PhotoOp>) {
    let contrast = |img: &mut RgbImage, rng: &mut Rng, ops: &mut Vec<PhotoOp>| {
        if rng.gen_bool(p.prob) {
            let a = rng.gen_range(p.contrast_range[0]..=p.contrast_range[1]);
            linear(img, a, 0.0);
            ops.push(PhotoOp::Contrast(a));
        }
    };
    if rng.gen_bool(p.prob) {
        let b = rng.gen_range(-p.brightness_delta..=p.brightness_delta);
        linear(img, 1.0, b);
        ops.push(PhotoOp::Brightness(b));
    }
    let contrast_first = rng.gen_bool(0.5);
    if contrast_first {
        contrast(img, rng, ops);
    }
    if rng.gen_bool(p.prob) {
        let a = rng.gen_range(p.saturation_range[0]..=p.saturation_range[1]);
        map_hsv(img, |[h, s, v]| [h, (s * a).clamp(0.0, 1.0), v]);
        ops.push(PhotoOp::Saturation(a));
    }
    if rng.gen_bool(p.prob) {
        let d = rng.gen_range(-p.hue_delta..=p.hue_delta) as f32 * 2.0;
        map_hsv(img, |[h, s, v]| [h + d, s, v]);
        ops.push(PhotoOp::Hue(d));
    }
    if !contrast_first {
        contrast(img, rng, ops);
    }
}

/// One applied part of the photometric distortion, with its drawn parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PhotoOp {
    /// `v + b`, clipped and truncated to bytes.
    Brightness(f32),
    /// `v · a`, clipped and truncated to bytes.
    Contrast(f32),
    /// HSV saturation `s · a`, clipped to `[0, 1]`.
    Saturation(f32),
    /// HSV hue `h + d` degrees.
    Hue(f32),
}

/// What [`augment_sample_traced`] drew for one sample, so another implementation of the
/// pipeline can replay it exactly (the benchmarks' value check does).
#[derive(Clone, Debug, PartialEq)]
pub struct SegAugTrace {
    /// Size `(w, h)` after the random rescale.
    pub resized: (usize, usize),
    /// The crop window `(x0, y0, w, h)` in the rescaled image.
    pub crop: (usize, usize, usize, usize),
    /// Whether the sample was flipped.
    pub flip: bool,
    /// The photometric parts applied, in order.
    pub photometric: Vec<PhotoOp>,
}

/// Runs the training pipeline on one sample (see the module docs) and returns the normalised
/// image (`3 × h × w` floats, CHW) and the training-id map, both at the crop size `[h, w]`.
///
/// # Panics
/// When `image` and `label` differ in size.
pub fn augment_sample(
    cfg: &SegAugConfig,
    image: &RgbImage,
    label: &GrayImage,
    rng: &mut Rng,
) -> (Vec<f32>, GrayImage) {
    let (x, y, _) = augment_sample_traced(cfg, image, label, rng);
    (x, y)
}

/// [`augment_sample`], also returning what was drawn.
///
/// # Panics
/// When `image` and `label` differ in size.
pub fn augment_sample_traced(
    cfg: &SegAugConfig,
    image: &RgbImage,
    label: &GrayImage,
    rng: &mut Rng,
) -> (Vec<f32>, GrayImage, SegAugTrace) {
    assert_eq!(
        image.dimensions(),
        label.dimensions(),
        "image and label sizes differ"
    );
    let (w0, h0) = (image.width() as usize, image.height() as usize);
    // 1. Rescale.
    let [lo, hi] = cfg.ratio_range;
    let (mut img, mut lab) = if lo == hi && lo == 1.0 {
        (image.clone(), label.clone())
    } else {
        let r = if lo == hi { lo } else { rng.gen_range(lo..hi) };
        let (w, h) = cfg.rescaled_size(w0, h0, r);
        (
            resize_rgb_bilinear(image, w, h),
            resize_label_nearest(label, w, h),
        )
    };
    // 2. Crop.
    let [ch, cw] = cfg.crop;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (cw_eff, ch_eff) = (cw.min(w), ch.min(h));
    let draw = |rng: &mut Rng| (rng.gen_range(0..=w - cw_eff), rng.gen_range(0..=h - ch_eff));
    let (mut x0, mut y0) = draw(rng);
    if cfg.cat_max_ratio < 1.0 {
        for _ in 0..cfg.crop_tries {
            if crop_is_varied(&lab, x0, y0, cw_eff, ch_eff, cfg.cat_max_ratio) {
                break;
            }
            (x0, y0) = draw(rng);
        }
    }
    if (cw_eff, ch_eff) != (w, h) {
        img = crop_rgb(&img, x0, y0, cw_eff, ch_eff);
        lab = crop_gray(&lab, x0, y0, cw_eff, ch_eff);
    }
    // 3. Flip.
    let flip = rng.gen_bool(cfg.flip_prob);
    if flip {
        image::imageops::flip_horizontal_in_place(&mut img);
        image::imageops::flip_horizontal_in_place(&mut lab);
    }
    // 4. Photometric distortion.
    let mut ops = Vec::new();
    if let Some(p) = &cfg.photometric {
        photometric(&mut img, p, rng, &mut ops);
    }
    let trace = SegAugTrace {
        resized: (w, h),
        crop: (x0, y0, cw_eff, ch_eff),
        flip,
        photometric: ops,
    };
    // 5. Normalise, 6. pad.
    let x = normalize_to_chw(&img, cfg.mean, cfg.std);
    if (cw_eff, ch_eff) == (cw, ch) {
        return (x, lab, trace);
    }
    let mut xp = vec![0f32; 3 * ch * cw];
    let mut yp = GrayImage::from_pixel(cw as u32, ch as u32, image::Luma([IGNORE]));
    for c in 0..3 {
        for y in 0..ch_eff {
            let src = &x[c * ch_eff * cw_eff + y * cw_eff..][..cw_eff];
            xp[c * ch * cw + y * cw..][..cw_eff].copy_from_slice(src);
        }
    }
    image::imageops::replace(&mut yp, &lab, 0, 0);
    (xp, yp, trace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A label map of 4×4 blocks with classes 0..6 and some ignore, and an image whose red
    /// channel is 10·class (ignore → 250), green = 0, blue = 0.
    fn coded(w: u32, h: u32) -> (RgbImage, GrayImage) {
        let lab = GrayImage::from_fn(w, h, |x, y| {
            let k = (x / 4 + 3 * (y / 4)) % 7;
            image::Luma([if k == 6 { IGNORE } else { k as u8 }])
        });
        let img = RgbImage::from_fn(w, h, |x, y| {
            let k = lab.get_pixel(x, y)[0];
            image::Rgb([if k == IGNORE { 250 } else { 10 * k }, 0, 0])
        });
        (img, lab)
    }

    fn plain() -> SegAugConfig {
        SegAugConfig {
            photometric: None,
            mean: [0.0; 3],
            std: [1.0; 3],
            ..SegAugConfig::with_crop(24, 20)
        }
    }

    #[test]
    fn labels_stay_aligned_under_rescale_crop_and_flip() {
        let (img, lab) = coded(40, 28);
        let cfg = SegAugConfig {
            ratio_range: [1.0, 2.0],
            ..plain()
        };
        let (mut flipped, mut kept) = (0, 0);
        for seed in 0..40 {
            let (x, y) = augment_sample(&cfg, &img, &lab, &mut Rng::seed_from_u64(seed));
            assert_eq!(y.dimensions(), (20, 24));
            assert_eq!(x.len(), 3 * 24 * 20);
            let (w, h) = (20usize, 24usize);
            let mut checked = 0;
            for yy in 1..h - 1 {
                for xx in 1..w - 1 {
                    let k = y.get_pixel(xx as u32, yy as u32)[0];
                    // Only pixels whose 3×3 neighbourhood is one class: bilinear blends edges.
                    let uniform = (0..3).all(|dy| {
                        (0..3).all(|dx| y.get_pixel((xx + dx - 1) as u32, (yy + dy - 1) as u32)[0] == k)
                    });
                    if !uniform {
                        continue;
                    }
                    let red = x[yy * w + xx];
                    let want = if k == IGNORE { 250.0 } else { 10.0 * k as f32 };
                    assert!(
                        (red - want).abs() <= 1.0,
                        "seed {seed} at ({xx},{yy}): label {k}, red {red}"
                    );
                    checked += 1;
                }
            }
            assert!(checked > 30, "seed {seed}: only {checked} interior pixels");
            // Classes grow by one (mod 7, ignore = 6) left to right unless flipped.
            let row: Vec<u8> = (0..w as u32).map(|xx| y.get_pixel(xx, 0)[0]).collect();
            let code = |k: u8| if k == IGNORE { 6 } else { k };
            if let Some(p) = row.windows(2).find(|p| p[0] != p[1]) {
                match (code(p[1]) + 7 - code(p[0])) % 7 {
                    1 => kept += 1,
                    6 => flipped += 1,
                    _ => {}
                }
            }
        }
        assert!(flipped > 5 && kept > 5, "{flipped} flipped, {kept} kept");
    }

    #[test]
    fn padding_uses_zero_and_ignore() {
        let (img, lab) = coded(8, 6);
        let cfg = SegAugConfig {
            ratio_range: [1.0, 1.0],
            flip_prob: 0.0,
            ..plain()
        };
        let (x, y) = augment_sample(&cfg, &img, &lab, &mut Rng::seed_from_u64(1));
        assert_eq!(y.dimensions(), (20, 24));
        for yy in 0..24u32 {
            for xx in 0..20u32 {
                let inside = xx < 8 && yy < 6;
                let k = y.get_pixel(xx, yy)[0];
                if inside {
                    assert_eq!(k, lab.get_pixel(xx, yy)[0]);
                } else {
                    assert_eq!(k, IGNORE);
                    for c in 0..3 {
                        assert_eq!(x[c * 480 + (yy * 20 + xx) as usize], 0.0);
                    }
                }
            }
        }
        // Normalisation: red 10 at (4,0) with mean 5, std 2 → 2.5; pad stays 0.
        let cfg = SegAugConfig {
            mean: [5.0, 0.0, 0.0],
            std: [2.0, 1.0, 1.0],
            ..cfg
        };
        let (x, _) = augment_sample(&cfg, &img, &lab, &mut Rng::seed_from_u64(1));
        assert_eq!(x[4], 2.5);
        assert_eq!(x[10], 0.0);
    }

    #[test]
    fn cat_max_ratio_is_respected_when_possible() {
        // 64×64: the left 56 columns are class 1, the right 8 columns class 2. A 16×16 crop
        // mixes classes only near the right edge.
        let lab = GrayImage::from_fn(64, 64, |x, _| image::Luma([if x < 56 { 1 } else { 2 }]));
        let img = RgbImage::new(64, 64);
        let cfg = SegAugConfig {
            ratio_range: [1.0, 1.0],
            flip_prob: 0.0,
            ..SegAugConfig {
                crop: [16, 16],
                ..plain()
            }
        };
        let mut varied = 0;
        let n = 200;
        for seed in 0..n {
            let (_, y) = augment_sample(&cfg, &img, &lab, &mut Rng::seed_from_u64(seed));
            let twos = y.iter().filter(|&&v| v == 2).count();
            if twos > 0 && (256 - twos) < 192 {
                varied += 1;
            }
        }
        // Without re-draws, P(share of class 1 < 0.75) is 1/49 per draw; with 11 draws ≈ 20%.
        let without = SegAugConfig {
            cat_max_ratio: 1.0,
            ..cfg.clone()
        };
        let mut varied_without = 0;
        for seed in 0..n {
            let (_, y) = augment_sample(&without, &img, &lab, &mut Rng::seed_from_u64(seed));
            let twos = y.iter().filter(|&&v| v == 2).count();
            if twos > 0 && (256 - twos) < 192 {
                varied_without += 1;
            }
        }
        assert!(varied > 3 * varied_without.max(1), "{varied} vs {varied_without}");
        // Where a varied crop exists among two classes split evenly, it is always found.
        let lab = GrayImage::from_fn(32, 32, |x, _| image::Luma([if x < 16 { 3 } else { 4 }]));
        let cfg = SegAugConfig { crop: [8, 8], ..cfg };
        let img = RgbImage::new(32, 32);
        let mut ok = 0;
        for seed in 0..50 {
            let (_, y) = augment_sample(&cfg, &img, &lab, &mut Rng::seed_from_u64(seed));
            let threes = y.iter().filter(|&&v| v == 3).count();
            if threes > 16 && threes < 48 {
                ok += 1;
            }
        }
        assert!(ok >= 25, "{ok}");
    }

    #[test]
    fn photometric_changes_pixels_only_and_is_seeded() {
        let (_, lab) = coded(16, 16);
        let img = RgbImage::from_fn(16, 16, |x, y| image::Rgb([100 + x as u8, 80 + y as u8, 60]));
        let cfg = SegAugConfig {
            ratio_range: [1.0, 1.0],
            flip_prob: 0.0,
            photometric: Some(PhotometricConfig {
                prob: 1.0,
                ..PhotometricConfig::default()
            }),
            ..SegAugConfig::with_crop(16, 16)
        };
        let (a, la) = augment_sample(&cfg, &img, &lab, &mut Rng::seed_from_u64(3));
        let (b, _) = augment_sample(&cfg, &img, &lab, &mut Rng::seed_from_u64(3));
        let (c, _) = augment_sample(&cfg, &img, &lab, &mut Rng::seed_from_u64(4));
        assert_eq!(la, lab);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let plain = normalize_to_chw(&img, cfg.mean, cfg.std);
        assert_ne!(a, plain);
    }

    #[test]
    fn hsv_round_trip_and_resizers() {
        for p in [
            [0u8, 0, 0],
            [255, 255, 255],
            [12, 200, 99],
            [250, 3, 3],
            [7, 7, 240],
            [128, 128, 0],
        ] {
            assert_eq!(hsv_to_rgb(rgb_to_hsv(p)), p);
        }
        let lab = GrayImage::from_fn(4, 2, |x, y| image::Luma([(x + 4 * y) as u8]));
        let up = resize_label_nearest(&lab, 8, 4);
        assert_eq!(up.get_pixel(7, 3)[0], 7);
        assert_eq!(up.get_pixel(2, 1)[0], 1);
        let down = resize_label_nearest(&lab, 2, 1);
        assert_eq!(down.as_raw(), &vec![5, 7]); // centres of source pixels (1, 1) and (3, 1)
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([if x == 0 { 0 } else { 200 }; 3]));
        let up = resize_rgb_bilinear(&img, 4, 1);
        // Centres at 0.25, 0.75 of a source pixel: weights 0, 0.25, 0.75, 1 of the right pixel.
        let reds: Vec<u8> = up.pixels().map(|p| p[0]).collect();
        assert_eq!(reds, vec![0, 50, 150, 200]);
    }

    #[test]
    fn config_serde_defaults_and_validation() {
        let c: SegAugConfig = toml::from_str("crop = [128, 256]").unwrap();
        assert_eq!(c, SegAugConfig::with_crop(128, 256));
        assert_eq!(c.ratio_range, [0.5, 2.0]);
        assert_eq!(c.photometric.as_ref().unwrap().hue_delta, 18);
        assert!(toml::from_str::<SegAugConfig>("crop_size = [1, 1]").is_err());
        let back: SegAugConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(c.validate().is_ok());
        assert!(SegAugConfig::with_crop(0, 4).validate().is_err());
        assert!(SegAugConfig {
            ratio_range: [2.0, 1.0],
            ..c
        }
        .validate()
        .is_err());
    }

    #[test]
    fn the_crop_is_checked_against_the_largest_rescaled_image() {
        // MMSeg's Cityscapes recipe: scale (2048, 1024), ratio up to 2, crop 512×1024.
        let cfg = SegAugConfig {
            scale: Some([2048, 1024]),
            crop: [512, 1024],
            ..SegAugConfig::default()
        };
        assert_eq!(cfg.rescaled_size(2048, 1024, 2.0), (4096, 2048));
        assert_eq!(cfg.rescaled_size(2048, 1024, 0.5), (1024, 512));
        cfg.check_crop([(2048, 1024)]).unwrap();
        // Each image's own size as the base: 128×64 images reach 256×128 at ratio 2.
        let own = SegAugConfig::with_crop(128, 256);
        own.check_crop([(128, 64), (100, 50)]).unwrap();
        let e = SegAugConfig::with_crop(129, 256)
            .check_crop([(128, 64)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("crop [129, 256]") && e.contains("128×256"), "{e}");
        let e = SegAugConfig::with_crop(4096, 4096)
            .check_crop([(128, 64)])
            .unwrap_err();
        assert!(e.to_string().contains("mostly padding"));
    }
}
