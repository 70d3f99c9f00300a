//! Image operations both dense-prediction stacks use.
//!
//! Segmentation and detection resize, normalise and draw images the same way (MMCV's
//! conventions: bilinear resize with aligned pixel centres, `(v − mean) / std` on `0..=255`
//! values); one copy keeps their inputs identical byte for byte.

use std::fs;
use std::path::Path;

use image::{GrayImage, RgbImage};
use kd_core::{KdError, Result};
use tch::{Kind, Tensor};

/// ImageNet channel means on `0..=255` (RGB).
pub const IMAGENET_MEAN_255: [f32; 3] = [123.675, 116.28, 103.53];
/// ImageNet channel standard deviations on `0..=255` (RGB).
pub const IMAGENET_STD_255: [f32; 3] = [58.395, 57.12, 57.375];

/// Bilinear resize with pixel centres aligned (no anti-aliasing), rounding to bytes.
pub fn resize_rgb_bilinear(img: &RgbImage, w: usize, h: usize) -> RgbImage {
    let (sw, sh) = (img.width() as usize, img.height() as usize);
    if (sw, sh) == (w, h) {
        return img.clone();
    }
    let taps = |src: usize, dst: usize| -> Vec<(usize, usize, f32)> {
        let scale = src as f32 / dst as f32;
        (0..dst)
            .map(|d| {
                let s = ((d as f32 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f32);
                let i0 = s.floor() as usize;
                let i1 = (i0 + 1).min(src - 1);
                (i0, i1, s - i0 as f32)
            })
            .collect()
    };
    let (xs, ys) = (taps(sw, w), taps(sh, h));
    let src = img.as_raw();
    let mut out = vec![0u8; w * h * 3];
    for (y, &(y0, y1, fy)) in ys.iter().enumerate() {
        let (r0, r1) = (
            &src[y0 * sw * 3..(y0 + 1) * sw * 3],
            &src[y1 * sw * 3..(y1 + 1) * sw * 3],
        );
        let row = &mut out[y * w * 3..(y + 1) * w * 3];
        for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let top = r0[x0 * 3 + c] as f32 * (1.0 - fx) + r0[x1 * 3 + c] as f32 * fx;
                let bot = r1[x0 * 3 + c] as f32 * (1.0 - fx) + r1[x1 * 3 + c] as f32 * fx;
                row[x * 3 + c] = (top * (1.0 - fy) + bot * fy).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage::from_raw(w as u32, h as u32, out).expect("buffer size matches")
}

/// Nearest-neighbour resize (each output pixel takes the source pixel under its centre).
pub fn resize_label_nearest(map: &GrayImage, w: usize, h: usize) -> GrayImage {
    let (sw, sh) = (map.width() as usize, map.height() as usize);
    if (sw, sh) == (w, h) {
        return map.clone();
    }
    let idx = |src: usize, dst: usize| -> Vec<usize> {
        (0..dst)
            .map(|d| (((d as f64 + 0.5) * src as f64 / dst as f64) as usize).min(src - 1))
            .collect()
    };
    let (xs, ys) = (idx(sw, w), idx(sh, h));
    let src = map.as_raw();
    let mut out = Vec::with_capacity(w * h);
    for &sy in &ys {
        let row = &src[sy * sw..(sy + 1) * sw];
        out.extend(xs.iter().map(|&sx| row[sx]));
    }
    GrayImage::from_raw(w as u32, h as u32, out).expect("buffer size matches")
}

/// `(v - mean) / std` per channel, HWC bytes → CHW floats.
pub fn normalize_to_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut out = vec![0f32; 3 * plane];
    let inv = std.map(|s| 1.0 / s);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 - mean[c]) * inv[c];
        }
    }
    out
}

/// Turns a normalised input `[3, H, W]` (any device and float kind) back into an image:
/// `v · std + mean`, rounded and clipped to bytes.
pub fn denormalize(x: &Tensor, mean: [f32; 3], std: [f32; 3]) -> Result<RgbImage> {
    let size = x.size();
    if size.len() != 3 || size[0] != 3 {
        return Err(KdError::BadShape {
            op: "denormalize".into(),
            name: "x".into(),
            shape: size,
            expected: "[3, H, W]".into(),
        });
    }
    let (h, w) = (size[1] as usize, size[2] as usize);
    let v = Vec::<f32>::try_from(
        x.to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
            .contiguous()
            .view([-1]),
    )?;
    let plane = h * w;
    let mut out = vec![0u8; plane * 3];
    for i in 0..plane {
        for c in 0..3 {
            out[i * 3 + c] = (v[c * plane + i] * std[c] + mean[c]).round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(RgbImage::from_raw(w as u32, h as u32, out).expect("buffer size matches"))
}

fn write_png(path: &Path, bytes: &[u8], w: usize, h: usize, color: image::ExtendedColorType) -> Result<()> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let file = fs::File::create(path).map_err(|e| KdError::file(path, format!("cannot create: {e}")))?;
    let mut out = std::io::BufWriter::new(file);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(bytes, w as u32, h as u32, color)
        .map_err(|e| KdError::file(path, format!("cannot write PNG: {e}")))?;
    use std::io::Write;
    out.flush()
        .map_err(|e| KdError::file(path, format!("cannot write: {e}")))
}

/// Writes an RGB PNG (not atomically: callers that publish a picture write a temporary file
/// and rename it).
pub fn write_rgb_png(path: &Path, img: &RgbImage) -> Result<()> {
    write_png(
        path,
        img.as_raw(),
        img.width() as usize,
        img.height() as usize,
        image::ExtendedColorType::Rgb8,
    )
}

/// Writes an 8-bit grey PNG (label ids or training ids).
pub fn write_label_png(path: &Path, map: &GrayImage) -> Result<()> {
    write_png(
        path,
        map.as_raw(),
        map.width() as usize,
        map.height() as usize,
        image::ExtendedColorType::L8,
    )
}
