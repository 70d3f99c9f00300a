//! Per-sample augmentation and normalisation.
//!
//! Only the two augmentations the CIFAR/Fashion-MNIST distillation recipes use are provided:
//! random crop after zero padding, and horizontal flip. They act on one [`Image`] with a
//! generator the caller derives per sample, so the loader can augment in parallel and still be
//! bit-for-bit reproducible. Normalisation is applied in training *and* evaluation, since the
//! network must always see the same input statistics. The structs are serde-friendly so run
//! configurations can spell them out.

use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::data::Image;
use kd_core::rng::Rng;
use kd_core::{KdError, Result};

/// Per-channel normalisation `(x - mean) / std`, applied to values in `[0, 1]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    /// Mean per channel (one value is broadcast to every channel).
    pub mean: Vec<f32>,
    /// Standard deviation per channel (one value is broadcast to every channel).
    pub std: Vec<f32>,
}

/// Fashion-MNIST training-set pixel mean.
pub const FASHION_MNIST_MEAN: f32 = 0.2860;
/// Fashion-MNIST training-set pixel standard deviation.
pub const FASHION_MNIST_STD: f32 = 0.3530;
/// CIFAR-10 training-set per-channel mean (RGB).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 training-set per-channel standard deviation (RGB), computed over all pixels.
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// CIFAR-100 training-set per-channel mean (RGB), the values common distillation benchmarks use.
pub const CIFAR100_MEAN: [f32; 3] = [0.5071, 0.4867, 0.4408];
/// CIFAR-100 training-set per-channel standard deviation (RGB), the values common distillation
/// benchmarks use.
pub const CIFAR100_STD: [f32; 3] = [0.2675, 0.2565, 0.2761];

impl Normalize {
    /// Checked constructor: same non-zero length for both, every std positive and finite.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Self> {
        let n = Self { mean, std };
        n.validate()?;
        Ok(n)
    }

    /// Fashion-MNIST statistics (one channel).
    pub fn fashion_mnist() -> Self {
        Self {
            mean: vec![FASHION_MNIST_MEAN],
            std: vec![FASHION_MNIST_STD],
        }
    }

    /// CIFAR-10 statistics.
    pub fn cifar10() -> Self {
        Self {
            mean: CIFAR10_MEAN.to_vec(),
            std: CIFAR10_STD.to_vec(),
        }
    }

    /// CIFAR-100 statistics.
    pub fn cifar100() -> Self {
        Self {
            mean: CIFAR100_MEAN.to_vec(),
            std: CIFAR100_STD.to_vec(),
        }
    }

    /// Checks the invariants of [`Normalize::new`] (useful after deserialising).
    pub fn validate(&self) -> Result<()> {
        if self.mean.is_empty() || self.mean.len() != self.std.len() {
            return Err(KdError::invalid(format!(
                "normalize: mean has {} values and std has {}; they need the same non-zero count",
                self.mean.len(),
                self.std.len()
            )));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(KdError::invalid(format!(
                "normalize: std {s} must be positive and finite"
            )));
        }
        Ok(())
    }

    /// Checks that these statistics fit images with `channels` channels (1 value or one per
    /// channel).
    pub fn check_channels(&self, channels: usize) -> Result<()> {
        self.validate()?;
        if self.mean.len() != 1 && self.mean.len() != channels {
            return Err(KdError::invalid(format!(
                "normalize has {} channel statistics but the images have {channels} channels",
                self.mean.len()
            )));
        }
        Ok(())
    }

    /// Normalises `img` in place.
    ///
    /// # Panics
    /// When the statistics fit neither one nor `img.c` channels (see
    /// [`Normalize::check_channels`]).
    pub fn apply_in_place(&self, img: &mut Image) {
        assert!(
            self.mean.len() == 1 || self.mean.len() == img.c,
            "normalize has {} channel statistics but the image has {} channels",
            self.mean.len(),
            img.c
        );
        let plane = img.h * img.w;
        for (c, values) in img.data.chunks_mut(plane).enumerate() {
            let k = if self.mean.len() == 1 { 0 } else { c };
            let (m, inv) = (self.mean[k], 1.0 / self.std[k]);
            for v in values {
                *v = (*v - m) * inv;
            }
        }
    }
}

/// What to do to each sample before batching.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Random crop of the original size after zero-padding each side by this many pixels
    /// (training only).
    #[serde(default)]
    pub pad_crop: Option<usize>,
    /// Random horizontal flip with probability ½ (training only).
    #[serde(default)]
    pub hflip: bool,
    /// Normalisation, applied in training and evaluation.
    #[serde(default)]
    pub normalize: Option<Normalize>,
}

impl Augment {
    /// No augmentation and no normalisation: values stay in `[0, 1]`.
    pub fn none() -> Self {
        Self::default()
    }

    /// The usual CIFAR-10 recipe: pad 4 + random crop, flip, CIFAR-10 statistics.
    pub fn cifar10() -> Self {
        Self {
            pad_crop: Some(4),
            hflip: true,
            normalize: Some(Normalize::cifar10()),
        }
    }

    /// The usual CIFAR-100 recipe: pad 4 + random crop, flip, CIFAR-100 statistics.
    pub fn cifar100() -> Self {
        Self {
            pad_crop: Some(4),
            hflip: true,
            normalize: Some(Normalize::cifar100()),
        }
    }

    /// A Fashion-MNIST recipe: pad 2 + random crop, flip, Fashion-MNIST statistics.
    pub fn fashion_mnist() -> Self {
        Self {
            pad_crop: Some(2),
            hflip: true,
            normalize: Some(Normalize::fashion_mnist()),
        }
    }

    /// Checks that the normalisation (if any) fits images with `channels` channels.
    pub fn check_channels(&self, channels: usize) -> Result<()> {
        match &self.normalize {
            Some(n) => n.check_channels(channels),
            None => Ok(()),
        }
    }

    /// Returns the augmented, normalised copy of `img`.
    ///
    /// When `train`, draws from `rng` in a fixed order — crop offsets (row, then column) if
    /// `pad_crop`, then the flip coin if `hflip` — so the same generator state always gives
    /// the same result. Padding is zero in pixel space, i.e. before normalisation. When not
    /// `train`, only normalisation is applied and `rng` is untouched.
    ///
    /// # Panics
    /// When the normalisation does not fit `img.c` (see [`Augment::check_channels`]).
    pub fn apply(&self, img: &Image, rng: &mut Rng, train: bool) -> Image {
        let draw = if train { self.draw(rng) } else { AugDraw::default() };
        self.apply_drawn(img, &draw)
    }

    /// The random part of one training-time augmentation, drawn from `rng` in the order
    /// [`Augment::apply`] documents.
    pub fn draw(&self, rng: &mut Rng) -> AugDraw {
        let crop = self.pad_crop.filter(|&p| p > 0).map(|p| {
            let dy = rng.gen_range(0..=2 * p);
            let dx = rng.gen_range(0..=2 * p);
            (dy, dx)
        });
        let flip = self.hflip && rng.gen_bool(0.5);
        AugDraw { crop, flip }
    }

    /// [`Augment::apply`] with the random part given: crop at `draw.crop` (after padding by
    /// `pad_crop`), flip if `draw.flip`, then normalise.
    ///
    /// # Panics
    /// As [`Augment::apply`].
    pub fn apply_drawn(&self, img: &Image, draw: &AugDraw) -> Image {
        let mut out = match (self.pad_crop.filter(|&p| p > 0), draw.crop) {
            (Some(p), Some((dy, dx))) => crop_padded(img, p, dy, dx),
            _ => img.clone(),
        };
        if draw.flip {
            hflip_in_place(&mut out);
        }
        if let Some(n) = &self.normalize {
            n.apply_in_place(&mut out);
        }
        out
    }
}

/// What [`Augment::draw`] drew for one sample: the crop offset `(dy, dx)` into the padded
/// image (`None` without cropping) and whether to flip. The default is no augmentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AugDraw {
    /// Row and column offset of the crop window in the padded image.
    pub crop: Option<(usize, usize)>,
    /// Horizontal flip.
    pub flip: bool,
}

/// The `h×w` window at offset `(dy, dx)` of `img` zero-padded by `pad` on every side.
pub fn crop_padded(img: &Image, pad: usize, dy: usize, dx: usize) -> Image {
    let (h, w) = (img.h, img.w);
    let mut data = vec![0.0f32; img.data.len()];
    for c in 0..img.c {
        let src = &img.data[c * h * w..(c + 1) * h * w];
        let dst = &mut data[c * h * w..(c + 1) * h * w];
        for y in 0..h {
            // Source row in the unpadded image.
            let Some(sy) = (y + dy).checked_sub(pad).filter(|&s| s < h) else {
                continue;
            };
            for x in 0..w {
                if let Some(sx) = (x + dx).checked_sub(pad).filter(|&s| s < w) {
                    dst[y * w + x] = src[sy * w + sx];
                }
            }
        }
    }
    Image { c: img.c, h, w, data }
}

/// Mirrors `img` left-right.
pub fn hflip_in_place(img: &mut Image) {
    let w = img.w;
    for row in img.data.chunks_mut(w) {
        row.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// 2 channels of 2×3; value = 100·c + 10·y + x.
    fn img() -> Image {
        let mut data = Vec::new();
        for c in 0..2 {
            for y in 0..2 {
                for x in 0..3 {
                    data.push((100 * c + 10 * y + x) as f32);
                }
            }
        }
        Image {
            c: 2,
            h: 2,
            w: 3,
            data,
        }
    }

    #[test]
    fn flip_mirrors_rows() {
        let mut i = img();
        hflip_in_place(&mut i);
        assert_eq!(
            i.data,
            vec![2., 1., 0., 12., 11., 10., 102., 101., 100., 112., 111., 110.]
        );
    }

    #[test]
    fn crop_with_zero_padding() {
        let i = img();
        // Offset (pad, pad) is the identity.
        assert_eq!(crop_padded(&i, 1, 1, 1), i);
        // Shift down-right by one: top row and left column come from the padding.
        let c = crop_padded(&i, 1, 0, 0);
        assert_eq!(&c.data[..6], &[0., 0., 0., 0., 0., 1.]);
        assert_eq!(&c.data[6..], &[0., 0., 0., 0., 100., 101.]);
        // Shift up-left by one.
        let c = crop_padded(&i, 1, 2, 2);
        assert_eq!(&c.data[..6], &[11., 12., 0., 0., 0., 0.]);
    }

    #[test]
    fn normalisation_values_and_eval_mode() {
        let i = Image {
            c: 3,
            h: 1,
            w: 1,
            data: vec![0.4914, 1.0, 0.0],
        };
        let aug = Augment::cifar10();
        let mut rng = Rng::seed_from_u64(0);
        let before = rng.clone();
        let out = aug.apply(&i, &mut rng, false);
        assert_eq!(rng, before, "evaluation must not draw");
        assert!(out.data[0].abs() < 1e-6);
        assert!((out.data[1] - (1.0 - 0.4822) / 0.2435).abs() < 1e-5);
        assert!((out.data[2] - (-0.4465 / 0.2616)).abs() < 1e-5);

        let fm = Normalize::fashion_mnist();
        let mut g = Image {
            c: 1,
            h: 1,
            w: 2,
            data: vec![0.2860, 0.6390],
        };
        fm.apply_in_place(&mut g);
        assert!(g.data[0].abs() < 1e-6 && (g.data[1] - 1.0).abs() < 1e-5);
        assert!(Augment::fashion_mnist().check_channels(3).is_ok()); // broadcast
        assert!(Augment::cifar10().check_channels(1).is_err());
        assert!(Normalize::new(vec![0.5], vec![0.0]).is_err());
    }

    #[test]
    fn train_augmentation_is_seeded_and_varies() {
        let aug = Augment {
            pad_crop: Some(1),
            hflip: true,
            normalize: None,
        };
        let i = img();
        let a = aug.apply(&i, &mut Rng::seed_from_u64(7), true);
        let b = aug.apply(&i, &mut Rng::seed_from_u64(7), true);
        assert_eq!(a, b);
        let distinct: std::collections::HashSet<Vec<u32>> = (0..64)
            .map(|s| {
                let o = aug.apply(&i, &mut Rng::seed_from_u64(s), true);
                o.data.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        // 3×3 offsets × 2 flips = 18 outcomes; 64 draws see many of them.
        assert!(distinct.len() > 6, "{}", distinct.len());
    }

    #[test]
    fn serde_round_trip() {
        let a = Augment::cifar100();
        let s = toml::to_string(&a).unwrap();
        assert_eq!(toml::from_str::<Augment>(&s).unwrap(), a);
        let partial: Augment = toml::from_str("hflip = true").unwrap();
        assert_eq!(partial.pad_crop, None);
        assert!(toml::from_str::<Augment>("flip = true").is_err());
    }
}
