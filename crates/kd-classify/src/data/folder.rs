//! ImageNet-style training straight from image files: torchvision's `RandomResizedCrop` and
//! flip for training, the resize-and-centre-crop evaluation, ImageNet normalisation.
//!
//! An ImageNet-sized folder does not fit in memory the way [`super::InMemoryDataset`] keeps
//! CIFAR, and its augmentation needs the full-resolution image (the crop is chosen before the
//! resize), so each sample is decoded from its file when the loader asks for it, on the
//! loader's worker threads. The crop parameters are drawn from the loader's per-sample
//! generator, so a run is reproducible whatever the thread count. The arithmetic is
//! torchvision's (`RandomResizedCrop.get_params`, `Resize`, `CenterCrop`) with Pillow's
//! bilinear filter (`kd_vision::pil_resize`).

use std::path::PathBuf;

use kd_core::data::{Loader, SampleSource};
use kd_core::rng::Rng;
use kd_core::{KdError, Result};
use kd_vision::image_ops::{IMAGENET_MEAN_255, IMAGENET_STD_255};
use kd_vision::pil_resize::resize_bilinear_pil;
use rand::Rng as _;

use super::imagefolder::{decode, decode_resize_center_crop, FolderIndex};
use super::loader::StackImages;

/// How folder images become network inputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FolderTransform {
    /// Side of the square network input (224 for ImageNet).
    pub size: usize,
    /// Evaluation: the shorter side is resized to this before the centre crop (256 for
    /// ImageNet, i.e. `size / 0.875`).
    pub eval_resize: usize,
    /// Training: `RandomResizedCrop`'s area fraction range (`(0.08, 1.0)`).
    pub scale: (f64, f64),
    /// Training: its aspect-ratio range (`(3/4, 4/3)`), drawn log-uniformly.
    pub ratio: (f64, f64),
    /// Training: probability of a horizontal flip (0.5).
    pub flip: f64,
}

impl FolderTransform {
    /// torchvision's ImageNet recipe at input size `size` (`eval_resize = size · 256 / 224`).
    pub fn imagenet(size: usize) -> Self {
        Self {
            size,
            eval_resize: (size * 256).div_ceil(224),
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip: 0.5,
        }
    }
}

/// The samples of an ImageFolder split, decoded per request.
pub struct FolderSamples {
    name: String,
    index: FolderIndex,
    transform: FolderTransform,
    train: bool,
}

impl FolderSamples {
    /// Samples of `index` (named `name`), augmented when `train`.
    pub fn new(
        name: impl Into<String>,
        index: FolderIndex,
        transform: FolderTransform,
        train: bool,
    ) -> Result<Self> {
        let t = transform;
        let bad = t.size == 0
            || t.eval_resize < t.size
            || !(0.0 < t.scale.0 && t.scale.0 <= t.scale.1 && t.scale.1 <= 1.0)
            || !(0.0 < t.ratio.0 && t.ratio.0 <= t.ratio.1)
            || !(0.0..=1.0).contains(&t.flip);
        if bad {
            return Err(KdError::invalid(format!(
                "folder transform {t:?}: sizes or ranges out of bounds"
            )));
        }
        Ok(Self {
            name: name.into(),
            index,
            transform,
            train,
        })
    }

    /// The class names.
    pub fn classes(&self) -> &[String] {
        &self.index.classes
    }

    /// The files, labels and classes.
    pub fn index(&self) -> &FolderIndex {
        &self.index
    }

    fn file(&self, i: usize) -> Result<&PathBuf> {
        self.index
            .files
            .get(i)
            .ok_or_else(|| KdError::invalid(format!("{}: sample {i} out of range", self.name)))
    }
}

/// torchvision's `RandomResizedCrop.get_params`: `(top, left, height, width)` of the crop.
pub fn random_resized_crop(
    w: usize,
    h: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (w * h) as f64;
    let (lo, hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.gen_range(scale.0..=scale.1);
        let aspect = if hi > lo {
            rng.gen_range(lo..hi).exp()
        } else {
            ratio.0
        };
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.gen_range(0..=h - ch);
            let left = rng.gen_range(0..=w - cw);
            return (top, left, ch, cw);
        }
    }
    // Fallback: the centre crop with the aspect ratio clamped into range.
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, (w as f64 / ratio.0).round() as usize)
    } else if in_ratio > ratio.1 {
        ((h as f64 * ratio.1).round() as usize, h)
    } else {
        (w, h)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// RGB bytes in CHW order → ImageNet-normalised floats (`(v − mean) / std` per channel).
pub fn imagenet_normalise(chw: &[u8]) -> Vec<f32> {
    let plane = (chw.len() / 3).max(1);
    chw.chunks_exact(plane)
        .enumerate()
        .flat_map(|(c, p)| {
            p.iter()
                .map(move |&v| (f32::from(v) - IMAGENET_MEAN_255[c]) / IMAGENET_STD_255[c])
        })
        .collect()
}

impl SampleSource for FolderSamples {
    type Sample = (Vec<f32>, i64);

    fn len(&self) -> usize {
        self.index.files.len()
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn sample(&self, index: usize, rng: Option<&mut Rng>) -> Result<(Vec<f32>, i64)> {
        let path = self.file(index)?;
        let t = self.transform;
        let s = t.size;
        let chw = match rng.filter(|_| self.train) {
            None => decode_resize_center_crop(path, t.eval_resize, s)?,
            Some(rng) => {
                let img = decode(path)?.to_rgb8();
                let (w, h) = (img.width() as usize, img.height() as usize);
                let (top, left, ch, cw) = random_resized_crop(w, h, t.scale, t.ratio, rng);
                let crop =
                    image::imageops::crop_imm(&img, left as u32, top as u32, cw as u32, ch as u32).to_image();
                let resized = resize_bilinear_pil(crop.as_raw(), cw, ch, 3, s, s);
                let flip = rng.gen_bool(t.flip);
                let plane = s * s;
                let mut out = vec![0u8; 3 * plane];
                for y in 0..s {
                    for x in 0..s {
                        let sx = if flip { s - 1 - x } else { x };
                        for c in 0..3 {
                            out[c * plane + y * s + x] = resized[(y * s + sx) * 3 + c];
                        }
                    }
                }
                out
            }
        };
        Ok((imagenet_normalise(&chw), self.index.labels[index]))
    }

    fn augments_at_random(&self) -> bool {
        self.train
    }
}

/// The loader over an ImageFolder split: `x [B, 3, size, size]` float32, labels `[B]`.
pub type FolderLoader = Loader<FolderSamples, StackImages>;

/// A loader over `samples` (see [`class_loader`](super::class_loader) for `drop_last` and `seed`).
pub fn folder_loader(
    samples: FolderSamples,
    batch_size: usize,
    drop_last: bool,
    seed: u64,
) -> Result<FolderLoader> {
    let s = samples.transform.size;
    Loader::new(samples, StackImages::new([3, s, s]), batch_size, drop_last, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_resized_crops_stay_inside_and_follow_the_ranges() {
        let mut rng = kd_core::rng::derive(0, 0, 0);
        for _ in 0..500 {
            let (top, left, h, w) = random_resized_crop(300, 200, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(top + h <= 200 && left + w <= 300 && h > 0 && w > 0);
            let area = (h * w) as f64 / 60_000.0;
            assert!((0.07..=1.0).contains(&area), "{area}");
        }
        // No crop fits a 1000×10 strip's aspect range: the fallback clamps the ratio.
        let (top, left, h, w) = random_resized_crop(1000, 10, (0.9, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!((h, w), (10, 13));
        assert_eq!((top, left), (0, 493));
    }
}
