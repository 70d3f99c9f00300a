//! Pictures of boxes: inputs turned back into images and boxes drawn as outlines.
//!
//! Results include a picture of detections on a few validation images; no font is needed, so a
//! class is shown by colour (a small filled square in the box's top-left corner).

use image::RgbImage;
use tch::Tensor;

use super::{DetAugConfig, ImageMeta};
use kd_core::{KdError, Result};
use kd_vision::image_ops::denormalize;

/// Twelve well-separated colours, cycled by class index.
const PALETTE: [[u8; 3]; 12] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
    [0, 128, 128],
    [170, 110, 40],
];

/// The colour of class `k` (cycles after 12 classes).
pub fn class_colour(k: usize) -> [u8; 3] {
    PALETTE[k % PALETTE.len()]
}

/// Image `k` of a batch input `x` `[B, 3, Hp, Wp]` (normalised with `aug`'s statistics) back
/// as RGB, cropped to its valid (unpadded) size `meta.valid_w × meta.valid_h`.
pub fn batch_image(x: &Tensor, k: usize, meta: &ImageMeta, aug: &DetAugConfig) -> Result<RgbImage> {
    let s = x.size();
    if s.len() != 4
        || s[1] != 3
        || k as i64 >= s[0]
        || meta.valid_h as i64 > s[2]
        || meta.valid_w as i64 > s[3]
    {
        return Err(KdError::BadShape {
            op: "batch_image".into(),
            name: "x".into(),
            shape: s,
            expected: format!(
                "[B > {k}, 3, H >= {}, W >= {}] for image {k} of the batch",
                meta.valid_h, meta.valid_w
            ),
        });
    }
    let full = denormalize(&x.get(k as i64), aug.mean, aug.std)?;
    Ok(image::imageops::crop_imm(&full, 0, 0, meta.valid_w as u32, meta.valid_h as u32).to_image())
}

/// Draws `boxes` `(x1, y1, x2, y2)` (pixels of `img`) as outlines, 1 px wide (2 px on images
/// of 256 px or more), in `colour` or else the class colour, with a filled class-coloured
/// square inside the top-left corner. Boxes with a negative label (padding rows) are skipped;
/// parts outside the image are clipped. `labels` must be as long as `boxes`.
pub fn draw_boxes(
    img: &mut RgbImage,
    boxes: &[[f32; 4]],
    labels: &[i64],
    colour: Option<[u8; 3]>,
) -> Result<()> {
    if boxes.len() != labels.len() {
        return Err(KdError::invalid(format!(
            "draw_boxes: {} boxes but {} labels",
            boxes.len(),
            labels.len()
        )));
    }
    let (w, h) = (img.width() as i64, img.height() as i64);
    let thick = if w.min(h) >= 256 { 2 } else { 1 };
    let legend = 2 + thick;
    let mut fill = |x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]| {
        for y in y0.max(0)..y1.min(h) {
            for x in x0.max(0)..x1.min(w) {
                img.put_pixel(x as u32, y as u32, image::Rgb(c));
            }
        }
    };
    for (b, &l) in boxes.iter().zip(labels) {
        if l < 0 || b.iter().any(|v| !v.is_finite()) {
            continue;
        }
        let cls = class_colour(l as usize);
        let c = colour.unwrap_or(cls);
        let (x0, y0) = (b[0].floor() as i64, b[1].floor() as i64);
        let (x1, y1) = ((b[2].ceil() as i64).max(x0 + 1), (b[3].ceil() as i64).max(y0 + 1));
        fill(x0, y0, x1, y0 + thick, c);
        fill(x0, y1 - thick, x1, y1, c);
        fill(x0, y0, x0 + thick, y1, c);
        fill(x1 - thick, y0, x1, y1, c);
        fill(x0, y0, x0 + legend, y0 + legend, cls);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kd_vision::image_ops::normalize_to_chw;

    #[test]
    fn outlines_legend_and_crop() {
        let mut img = RgbImage::new(20, 10);
        draw_boxes(
            &mut img,
            &[[2.0, 1.0, 12.0, 8.0], [0.0, 0.0, 5.0, 5.0]],
            &[3, -1],
            Some([9, 9, 9]),
        )
        .unwrap();
        assert_eq!(img.get_pixel(7, 1).0, [9, 9, 9]); // top edge
        assert_eq!(img.get_pixel(11, 5).0, [9, 9, 9]); // right edge (x2 = 12 exclusive)
        assert_eq!(img.get_pixel(7, 7).0, [9, 9, 9]); // bottom edge
        assert_eq!(img.get_pixel(7, 4).0, [0, 0, 0]); // inside untouched
        assert_eq!(img.get_pixel(3, 2).0, class_colour(3)); // legend square
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]); // the padding row is not drawn
        assert!(draw_boxes(&mut img, &[[0.0; 4]], &[], None).is_err());
        // Boxes outside the picture are clipped, never a panic.
        draw_boxes(&mut img, &[[-5.0, -5.0, 40.0, 40.0]], &[0], None).unwrap();

        let src = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]));
        let aug = DetAugConfig::default();
        let mut padded = vec![0f32; 2 * 3 * 4 * 8];
        let chw = normalize_to_chw(&src, aug.mean, aug.std);
        for c in 0..3 {
            for y in 0..3 {
                for x in 0..5 {
                    padded[3 * 32 + c * 32 + y * 8 + x] = chw[c * 15 + y * 5 + x];
                }
            }
        }
        let x = Tensor::from_slice(&padded).view([2, 3, 4, 8]);
        let meta = ImageMeta {
            image_id: 1,
            orig_w: 5,
            orig_h: 3,
            scale_x: 1.0,
            scale_y: 1.0,
            valid_w: 5,
            valid_h: 3,
        };
        assert_eq!(batch_image(&x, 1, &meta, &aug).unwrap(), src);
        assert!(batch_image(&x, 2, &meta, &aug).is_err());
    }
}
