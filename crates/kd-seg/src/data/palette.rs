//! Result pictures: training-id maps in the Cityscapes colours, normalised inputs turned back
//! into images, and a grid of both written as one PNG.

use std::path::Path;

use image::{GrayImage, RgbImage};
use tch::{Kind, Tensor};

use super::labels::PALETTE;
use kd_core::{KdError, Result};
use kd_vision::image_ops::write_rgb_png;

/// Gap between grid cells, in pixels.
const GAP: u32 = 2;

/// Paints a training-id map in the Cityscapes colours; 255 (ignore) and any id ≥ 19 are black.
pub fn colorize(map: &GrayImage) -> RgbImage {
    RgbImage::from_fn(map.width(), map.height(), |x, y| {
        image::Rgb(
            PALETTE
                .get(map.get_pixel(x, y)[0] as usize)
                .copied()
                .unwrap_or([0, 0, 0]),
        )
    })
}

/// A label map `[H, W]` (integer tensor of training ids, any device) as an image; values
/// outside `0..=255` become 255.
pub fn label_map(t: &Tensor) -> Result<GrayImage> {
    let size = t.size();
    if size.len() != 2 {
        return Err(KdError::BadShape {
            op: "label_map".into(),
            name: "labels".into(),
            shape: size,
            expected: "[H, W]".into(),
        });
    }
    let v = Vec::<i64>::try_from(
        t.to_kind(Kind::Int64)
            .to_device(tch::Device::Cpu)
            .contiguous()
            .view([-1]),
    )?;
    let bytes = v.iter().map(|&k| u8::try_from(k).unwrap_or(255)).collect();
    Ok(GrayImage::from_raw(size[1] as u32, size[0] as u32, bytes).expect("buffer size matches"))
}

/// Writes a grid of pictures as one PNG: `rows[r][c]` is drawn in row `r` (top to bottom),
/// column `c` (left to right), e.g. one row per sample holding the input, the ground truth and
/// then each prediction. Cells are as large as the largest picture, separated by 2 black pixels;
/// smaller pictures sit at their cell's top-left. The file is written to a temporary sibling and
/// renamed into place.
pub fn save_seg_grid(path: &Path, rows: &[Vec<RgbImage>]) -> Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    if rows.is_empty() || cols == 0 {
        return Err(KdError::invalid(format!(
            "{}: a picture grid needs at least one picture",
            path.display()
        )));
    }
    let cw = rows.iter().flatten().map(|i| i.width()).max().unwrap_or(1);
    let ch = rows.iter().flatten().map(|i| i.height()).max().unwrap_or(1);
    let n = rows.len() as u32;
    let mut canvas = RgbImage::new(cols * cw + (cols - 1) * GAP, n * ch + (n - 1) * GAP);
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let (x, y) = (c as u32 * (cw + GAP), r as u32 * (ch + GAP));
            image::imageops::replace(&mut canvas, img, x as i64, y as i64);
        }
    }
    let name = path
        .file_name()
        .ok_or_else(|| KdError::file(path, "not a file path"))?;
    let tmp = path.with_file_name(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    write_rgb_png(&tmp, &canvas)?;
    std::fs::rename(&tmp, path).map_err(|e| KdError::file(path, format!("cannot rename into place: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kd_vision::image_ops::{denormalize, normalize_to_chw, IMAGENET_MEAN_255, IMAGENET_STD_255};

    #[test]
    fn colours_denormalisation_and_grid() {
        let map = GrayImage::from_raw(3, 1, vec![0, 13, 255]).unwrap();
        let rgb = colorize(&map);
        assert_eq!(rgb.get_pixel(0, 0).0, [128, 64, 128]);
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 0, 142]);
        assert_eq!(rgb.get_pixel(2, 0).0, [0, 0, 0]);

        let img = RgbImage::from_fn(4, 3, |x, y| image::Rgb([x as u8 * 60, y as u8 * 100, 7]));
        let x =
            Tensor::from_slice(&normalize_to_chw(&img, IMAGENET_MEAN_255, IMAGENET_STD_255)).view([3, 3, 4]);
        assert_eq!(denormalize(&x, IMAGENET_MEAN_255, IMAGENET_STD_255).unwrap(), img);
        assert!(denormalize(&x.view([1, 3, 3, 4]), IMAGENET_MEAN_255, IMAGENET_STD_255).is_err());
        let lm = label_map(&Tensor::from_slice(&[0i64, 18, 255, -3]).view([2, 2])).unwrap();
        assert_eq!(lm.as_raw(), &vec![0, 18, 255, 255]);

        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("grid.png");
        save_seg_grid(&p, &[vec![img.clone(), rgb.clone()], vec![rgb]]).unwrap();
        let back = image::open(&p).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (4 * 2 + 2, 3 * 2 + 2));
        assert_eq!(back.get_pixel(6, 0).0, [128, 64, 128]); // row 0, column 1
        assert_eq!(back.get_pixel(1, 5).0, [0, 0, 142]); // row 1, column 0
        assert_eq!(back.get_pixel(1, 0).0, [60, 0, 7]);
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        assert!(save_seg_grid(&p, &[]).is_err());
    }
}
