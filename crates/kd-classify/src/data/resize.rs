//! Resizing a whole dataset once, up front.
//!
//! A quick-scale run may shrink the images (compute grows with H·W). Doing it once into memory
//! keeps the loader's per-batch work unchanged and makes every epoch see identical pixels.

use image::imageops::FilterType;
use rayon::prelude::*;

use super::{Dataset, InMemoryDataset};
use kd_core::{KdError, Result};

/// Copies `ds` into memory with every image resized to `h × w` (triangle filter, which
/// averages over the source footprint when shrinking). Labels and order are kept.
pub fn resize_dataset(ds: &dyn Dataset, h: usize, w: usize) -> Result<InMemoryDataset> {
    if h == 0 || w == 0 {
        return Err(KdError::invalid(format!(
            "cannot resize {} to {h}×{w}",
            ds.name()
        )));
    }
    let [c, _, _] = ds.shape();
    let resized: Vec<(Vec<u8>, i64)> = (0..ds.len())
        .into_par_iter()
        .map(|i| {
            let s = ds.get(i)?;
            let mut out = Vec::with_capacity(c * h * w);
            let plane = s.image.h * s.image.w;
            for ch in 0..c {
                let bytes: Vec<u8> = s.image.data[ch * plane..(ch + 1) * plane]
                    .iter()
                    .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                    .collect();
                let img = image::GrayImage::from_raw(s.image.w as u32, s.image.h as u32, bytes)
                    .ok_or_else(|| KdError::invalid(format!("sample {i} of {} has a bad size", ds.name())))?;
                out.extend_from_slice(&image::imageops::resize(
                    &img,
                    w as u32,
                    h as u32,
                    FilterType::Triangle,
                ));
            }
            Ok((out, s.label))
        })
        .collect::<Result<_>>()?;
    let mut pixels = Vec::with_capacity(ds.len() * c * h * w);
    let mut labels = Vec::with_capacity(ds.len());
    for (p, l) in resized {
        pixels.extend(p);
        labels.push(l);
    }
    InMemoryDataset::from_parts(
        format!("{}@{h}x{w}", ds.name()),
        [c, h, w],
        pixels,
        labels,
        ds.num_classes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_and_keeps_labels_and_mean() {
        // A 4×4 image, left half 0, right half 255, shrunk to 2×2. The triangle filter, widened
        // by the scale factor 2, weights source columns at distances 0.5, 0.5, 1.5, 2.5 from an
        // output centre by 0.75, 0.75, 0.25, 0 (sum 1.75). Left column: 255·0.25/1.75 = 36.4 → 36;
        // right column: 255·1.5/1.75 = 218.6 → 219.
        let mut px = Vec::new();
        for _ in 0..4 {
            px.extend_from_slice(&[0u8, 0, 255, 255]);
        }
        let ds = InMemoryDataset::from_parts("t", [1, 4, 4], px, vec![3], 5).unwrap();
        let r = resize_dataset(&ds, 2, 2).unwrap();
        assert_eq!(r.shape(), [1, 2, 2]);
        assert_eq!(r.labels(), &[3]);
        assert_eq!(r.pixels(), &[36, 219, 36, 219]);
        assert!(resize_dataset(&ds, 0, 2).is_err());
    }
}
