//! Pillow's bilinear resize, reproduced exactly, so the ImageNet evaluation transform
//! (torchvision's `Resize` on a PIL image) gives the same bytes here as in PyTorch.
//!
//! Pillow does not interpolate between the two nearest pixels: it convolves with a triangle
//! filter widened by the downscaling factor (antialiasing), in two separable passes
//! (horizontal, then vertical), with 22-bit fixed-point weights and a rounding to bytes after
//! each pass (`libImaging/Resample.c`). A plain bilinear resize differs from it by several grey
//! levels, enough to move a top-1 number; this follows the same arithmetic step for step.

/// Bits of the fixed-point weights (`PRECISION_BITS` in Pillow: 32 − 8 − 2).
const PRECISION_BITS: u32 = 22;

/// Per output pixel: the first input pixel, the number of taps, and the fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `[0, in_size)`.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle's support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            *kx = triangle((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *kx;
        }
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        bounds,
        ksize,
        weights,
    }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes interleaved 8-bit pixels `src` (`h × w × channels`, row-major) to `nw × nh` as
/// Pillow's `Image.resize(..., Image.BILINEAR)` does.
pub fn resize_bilinear_pil(src: &[u8], w: usize, h: usize, channels: usize, nw: usize, nh: usize) -> Vec<u8> {
    assert_eq!(
        src.len(),
        w * h * channels,
        "resize_bilinear_pil: buffer is not h × w × channels"
    );
    let half = 1i64 << (PRECISION_BITS - 1);
    let horiz = coeffs(w, nw);
    let vert = coeffs(h, nh);
    // Rows of the source the vertical pass reads.
    let first = vert.bounds[0].0;
    let last = vert.bounds[nh - 1].0 + vert.bounds[nh - 1].1;
    let (tmp, tmp_w, row0) = if nw != w {
        let rows = last - first;
        let mut out = vec![0u8; rows * nw * channels];
        for y in 0..rows {
            let row = &src[(y + first) * w * channels..(y + first + 1) * w * channels];
            for (xx, &(xmin, n)) in horiz.bounds.iter().enumerate() {
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
                for c in 0..channels {
                    let acc = k.iter().enumerate().fold(half, |a, (x, &kx)| {
                        a + i64::from(row[(x + xmin) * channels + c]) * i64::from(kx)
                    });
                    out[(y * nw + xx) * channels + c] = clip8(acc);
                }
            }
        }
        (out, nw, first)
    } else {
        (src.to_vec(), w, 0)
    };
    if nh == h {
        return tmp;
    }
    let mut out = vec![0u8; nh * tmp_w * channels];
    for (yy, &(ymin, n)) in vert.bounds.iter().enumerate() {
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        for x in 0..tmp_w {
            for c in 0..channels {
                let acc = k.iter().enumerate().fold(half, |a, (y, &ky)| {
                    a + i64::from(tmp[((y + ymin - row0) * tmp_w + x) * channels + c]) * i64::from(ky)
                });
                out[(yy * tmp_w + x) * channels + c] = clip8(acc);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy_and_constant_images_stay_constant() {
        let src: Vec<u8> = (0..4 * 3 * 3).map(|i| i as u8).collect();
        assert_eq!(resize_bilinear_pil(&src, 4, 3, 3, 4, 3), src);
        let flat = vec![77u8; 10 * 7];
        assert!(resize_bilinear_pil(&flat, 10, 7, 1, 3, 5)
            .iter()
            .all(|&v| v == 77));
        assert!(resize_bilinear_pil(&flat, 10, 7, 1, 23, 19)
            .iter()
            .all(|&v| v == 77));
    }

    #[test]
    fn halving_averages_pixel_pairs_with_the_widened_triangle() {
        // Downscaling 4 → 2: support 2, taps at distances 0.25 and 0.75 of the widened
        // triangle (weights 3/8, 3/8 on the near pixels, 1/8 on the far ones).
        let out = resize_bilinear_pil(&[0, 80, 160, 240], 4, 1, 1, 2, 1);
        // Output 0: pixels 0..3 with weights (0.375, 0.375, 0.125) normalised over 0.875.
        let want0 = (0.0 * 0.375 + 80.0 * 0.375 + 160.0 * 0.125) / 0.875;
        let want1 = (80.0 * 0.125 + 160.0 * 0.375 + 240.0 * 0.375) / 0.875;
        assert!((f64::from(out[0]) - want0).abs() <= 0.5, "{out:?} vs {want0}");
        assert!((f64::from(out[1]) - want1).abs() <= 0.5, "{out:?} vs {want1}");
    }
}
