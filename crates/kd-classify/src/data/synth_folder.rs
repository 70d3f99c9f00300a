//! A generated ImageFolder tree (`train/<class>/*.png`, `val/<class>/*.png`) for running the
//! ImageNet table without ImageNet.
//!
//! The stand-in exercises the real path: files of different sizes and aspect ratios read by
//! the ImageFolder reader, `RandomResizedCrop` on the full image, the resize-and-centre-crop
//! evaluation. Each class is a shape (disc, square, ring, bars, cross, triangle, checker,
//! diamond, frame, X) at a random place and size, over a random smooth background strewn with
//! small distractor dots. Its colour is the class's own hue (jittered) in `class_colour` of
//! the images and random in the rest, so colour is an easy partial cue and the shape the whole
//! answer: a short training run learns the first, a longer one the second, which leaves a
//! teacher–student gap to distil. The tree is written once, atomically (see
//! `kd_vision::generated`).

use std::path::Path;

use image::RgbImage;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use kd_core::Result;

/// Number of distinct shapes, hence the most classes a tree can have.
pub const SHAPES: usize = 10;

/// Bumped whenever the drawing changes, so cached trees are redrawn.
pub const FOLDER_SYNTH_VERSION: u32 = 1;

/// What the generated tree holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderSynthConfig {
    /// Number of classes, at most 10 (one shape each).
    pub classes: usize,
    /// Training images per class.
    pub train_per_class: usize,
    /// Validation images per class.
    pub val_per_class: usize,
    /// Fraction of images drawn in their class's colour (the rest in a random one).
    pub class_colour: f64,
    /// Shorter side of the images, drawn uniformly from this range.
    pub min_side: [usize; 2],
    /// Seed of every draw.
    pub seed: u64,
}

/// Writes the tree into `root` unless it is already there; returns whether it drew anything.
pub fn generate_image_folder(root: &Path, cfg: &FolderSynthConfig) -> Result<bool> {
    if cfg.classes == 0
        || cfg.classes > SHAPES
        || cfg.train_per_class == 0
        || cfg.val_per_class == 0
        || cfg.min_side[0] < 8
        || cfg.min_side[1] < cfg.min_side[0]
    {
        return Err(kd_core::KdError::invalid(format!(
            "folder synth {cfg:?}: empty or too small"
        )));
    }
    let marker = format!(
        "{}\nversion {FOLDER_SYNTH_VERSION}",
        serde_json::to_string(cfg).map_err(|e| kd_core::KdError::invalid(e.to_string()))?
    );
    kd_vision::generated::write_tree_once(root, &marker, "generated ImageFolder tree", |tmp| {
        for (split, per, stream) in [
            ("train", cfg.train_per_class, 0u64),
            ("val", cfg.val_per_class, 1),
        ] {
            for c in 0..cfg.classes {
                let dir = tmp.join(split).join(format!("class_{c:02}"));
                std::fs::create_dir_all(&dir).map_err(|e| kd_core::KdError::file(&dir, e))?;
                for i in 0..per {
                    let mut rng = kd_core::rng::derive(cfg.seed, stream, (c * 1_000_000 + i) as u64);
                    let img = draw(c, cfg, &mut rng);
                    let path = dir.join(format!("{split}_{c:02}_{i:05}.png"));
                    img.save(&path).map_err(|e| kd_core::KdError::file(&path, e))?;
                }
            }
        }
        Ok(())
    })
}

fn hue(h: f64) -> [f64; 3] {
    let f = |n: f64| {
        let k = (n + h * 6.0) % 6.0;
        1.0 - (k.min(4.0 - k).clamp(0.0, 1.0))
    };
    [f(5.0), f(3.0), f(1.0)]
}

fn draw(class: usize, cfg: &FolderSynthConfig, rng: &mut kd_core::rng::Rng) -> RgbImage {
    let short = rng.gen_range(cfg.min_side[0]..=cfg.min_side[1]);
    let aspect = rng.gen_range(0.75..1.34f64);
    let (w, h) = if rng.gen_bool(0.5) {
        ((short as f64 * aspect) as usize, short)
    } else {
        (short, (short as f64 * aspect) as usize)
    };
    // Background: a random smooth gradient between two dull colours.
    let b0: [f64; 3] = [
        rng.gen_range(0.2..0.6),
        rng.gen_range(0.2..0.6),
        rng.gen_range(0.2..0.6),
    ];
    let b1: [f64; 3] = [
        rng.gen_range(0.2..0.6),
        rng.gen_range(0.2..0.6),
        rng.gen_range(0.2..0.6),
    ];
    let angle = rng.gen_range(0.0..std::f64::consts::TAU);
    // The object: the class's shape in a random colour, place and size.
    let kind = class;
    let shade = if rng.gen_bool(cfg.class_colour.clamp(0.0, 1.0)) {
        (class as f64 / SHAPES as f64 + rng.gen_range(-0.03..0.03) + 1.0) % 1.0
    } else {
        rng.gen_range(0.0..1.0)
    };
    let base = hue(shade);
    let tint = rng.gen_range(0.7..1.0);
    let color: Vec<f64> = base.iter().map(|v| (0.15 + 0.85 * v) * tint).collect();
    let r = rng.gen_range(0.2..0.36) * short as f64;
    // Distractors: a few small dots of random colours.
    let dots: Vec<(f64, f64, f64, [f64; 3])> = (0..rng.gen_range(0..4))
        .map(|_| {
            let c = hue(rng.gen_range(0.0..1.0));
            (
                rng.gen_range(0.0..w as f64),
                rng.gen_range(0.0..h as f64),
                rng.gen_range(0.03..0.07) * short as f64,
                c,
            )
        })
        .collect();
    let cx = rng.gen_range(r..(w as f64 - r).max(r + 1.0));
    let cy = rng.gen_range(r..(h as f64 - r).max(r + 1.0));
    let noise = 0.04;
    let mut img = RgbImage::new(w as u32, h as u32);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (xf, yf) = (x as f64 + 0.5, y as f64 + 0.5);
        let t = ((xf * angle.cos() + yf * angle.sin()) / (w + h) as f64 + 0.5).clamp(0.0, 1.0);
        let (dx, dy) = ((xf - cx) / r, (yf - cy) / r);
        let inside = match kind {
            0 => dx * dx + dy * dy <= 1.0,
            1 => dx.abs() <= 0.8 && dy.abs() <= 0.8,
            2 => (0.55..=1.0).contains(&(dx * dx + dy * dy).sqrt()),
            3 => dx.abs() <= 1.0 && dy.abs() <= 1.0 && ((dy + 1.0) * 2.5).floor() as i64 % 2 == 0,
            4 => (dx.abs() <= 0.25 && dy.abs() <= 1.0) || (dy.abs() <= 0.25 && dx.abs() <= 1.0),
            5 => (-1.0..=0.8).contains(&dy) && dx.abs() <= (dy + 1.0) / 1.8,
            6 => {
                dx.abs() <= 1.0
                    && dy.abs() <= 1.0
                    && (((dx + 1.0) * 2.0).floor() as i64 + ((dy + 1.0) * 2.0).floor() as i64) % 2 == 0
            }
            7 => dx.abs() + dy.abs() <= 1.0,
            8 => dx.abs().max(dy.abs()) <= 0.9 && dx.abs().max(dy.abs()) >= 0.6,
            _ => dx.abs() <= 0.95 && dy.abs() <= 0.95 && ((dx - dy).abs() <= 0.3 || (dx + dy).abs() <= 0.3),
        };
        let dot = dots
            .iter()
            .find(|(x0, y0, dr, _)| (xf - x0).powi(2) + (yf - y0).powi(2) <= dr * dr);
        let mut rgb = [0u8; 3];
        for c in 0..3 {
            let v = match (inside, dot) {
                (true, _) => color[c],
                (false, Some((_, _, _, dc))) => dc[c],
                _ => b0[c] * (1.0 - t) + b1[c] * t,
            };
            let v = v + rng.gen_range(-noise..noise);
            rgb[c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
        *px = image::Rgb(rgb);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_imagefolder_tree_once_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        let cfg = FolderSynthConfig {
            classes: 3,
            train_per_class: 2,
            val_per_class: 1,
            class_colour: 0.5,
            min_side: [20, 30],
            seed: 0,
        };
        assert!(generate_image_folder(&root, &cfg).unwrap());
        assert!(
            !generate_image_folder(&root, &cfg).unwrap(),
            "second call finds the finished tree"
        );
        let train = crate::data::index_image_folder(&root.join("train")).unwrap();
        assert_eq!(train.files.len(), 6);
        assert_eq!(train.labels, [0, 0, 1, 1, 2, 2]);
        let val = crate::data::index_image_folder(&root.join("val")).unwrap();
        assert_eq!(val.classes, ["class_00", "class_01", "class_02"]);
        let img = image::open(&train.files[0]).unwrap();
        assert!(img.width().min(img.height()) >= 20);
    }
}
