//! The Cityscapes reader.
//!
//! Layout (the official one):
//!
//! ```text
//! ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png   RGB image
//! ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png    8-bit grey, label ids
//! ```
//!
//! Opening lists every image (cities and files sorted by name), requires its label file and
//! reads both PNG headers to check that the sizes agree and the label map is 8-bit grey, so
//! layout errors surface at once and name the file. Pixels are decoded lazily, one sample per
//! [`SegSource::get`], because the real training set does not fit comfortably in memory.

use std::fs;
use std::path::{Path, PathBuf};

use image::{ColorType, GrayImage, ImageDecoder, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::labels::{LABEL_TO_TRAIN, MAX_LABEL_ID};
use super::{SegSample, SegSource};
use kd_core::{KdError, Result};
use kd_vision::image_ops::{resize_label_nearest, resize_rgb_bilinear};

/// Suffix of image files.
pub const IMAGE_SUFFIX: &str = "_leftImg8bit.png";
/// Suffix of label-id files.
pub const LABEL_SUFFIX: &str = "_gtFine_labelIds.png";

/// A fixed resize applied to every sample when it is decoded (image bilinear, labels nearest).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SegResize {
    /// Scale both sides by this factor (rounded to the nearest pixel, at least 1).
    Factor(f64),
    /// Resize to exactly this size.
    Size {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
}

impl SegResize {
    /// The output size `(w, h)` for an input of `(w, h)`.
    pub fn apply(&self, w: usize, h: usize) -> (usize, usize) {
        match *self {
            SegResize::Factor(f) => (
                ((w as f64 * f).round() as usize).max(1),
                ((h as f64 * f).round() as usize).max(1),
            ),
            SegResize::Size { width, height } => (width, height),
        }
    }

    fn validate(&self) -> Result<()> {
        let ok = match *self {
            SegResize::Factor(f) => f.is_finite() && f > 0.0,
            SegResize::Size { width, height } => width > 0 && height > 0,
        };
        if ok {
            Ok(())
        } else {
            Err(KdError::invalid(format!("resize {self:?}: must be positive")))
        }
    }
}

/// One image/label pair on disk.
#[derive(Clone, Debug, PartialEq)]
struct Pair {
    image: PathBuf,
    label: PathBuf,
    stem: String,
    size: (usize, usize),
}

/// A Cityscapes-format split, decoded lazily; see the module docs.
#[derive(Clone, Debug)]
pub struct SegDataset {
    root: PathBuf,
    split: String,
    pairs: Vec<Pair>,
    resize: Option<SegResize>,
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = fs::read_dir(dir)
        .map_err(|e| KdError::file(dir, format!("cannot list folder: {e}")))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| KdError::file(dir, format!("cannot list folder: {e}")))?;
    v.retain(|p| {
        !p.file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with('.'))
    });
    v.sort();
    Ok(v)
}

fn png_header(path: &Path) -> Result<(usize, usize, ColorType)> {
    let dec = image::ImageReader::open(path)
        .map_err(|e| KdError::file(path, format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| KdError::file(path, format!("cannot read: {e}")))?
        .into_decoder()
        .map_err(|e| KdError::file(path, format!("cannot read PNG header: {e}")))?;
    let (w, h) = dec.dimensions();
    Ok((w as usize, h as usize, dec.color_type()))
}

fn decode(path: &Path) -> Result<image::DynamicImage> {
    image::ImageReader::open(path)
        .map_err(|e| KdError::file(path, format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| KdError::file(path, format!("cannot read: {e}")))?
        .decode()
        .map_err(|e| KdError::file(path, format!("cannot decode PNG: {e}")))
}

/// Decodes an image file as RGB (alpha dropped, grey expanded).
pub fn read_rgb_png(path: &Path) -> Result<RgbImage> {
    Ok(decode(path)?.to_rgb8())
}

/// Decodes a label map, which must be an 8-bit single-channel PNG. Values are returned as stored.
pub fn read_label_png(path: &Path) -> Result<GrayImage> {
    match decode(path)? {
        image::DynamicImage::ImageLuma8(g) => Ok(g),
        other => Err(KdError::file(
            path,
            format!("label map must be an 8-bit grey PNG, found {:?}", other.color()),
        )),
    }
}

fn expected_layout(root: &Path, split: &str) -> String {
    format!(
        "expected the Cityscapes layout {r}/leftImg8bit/{split}/<city>/<city>_<seq>_<frame>{IMAGE_SUFFIX} \
         with {r}/gtFine/{split}/<city>/<city>_<seq>_<frame>{LABEL_SUFFIX}",
        r = root.display()
    )
}

/// Opens split `split` (e.g. `"train"`, `"val"`) of the Cityscapes-format tree at `root`; see
/// [`SegDataset::open`]. A missing `leftImg8bit/<split>` or `gtFine/<split>` folder is an error
/// that spells out the expected layout.
pub fn open_cityscapes(root: &Path, split: &str, resize: Option<SegResize>) -> Result<SegDataset> {
    SegDataset::open(root, split, resize)
}

impl SegDataset {
    /// Lists and checks the pairs of `split` under `root` (see the module docs). `resize`
    /// rescales every sample when decoded. Errors name the file: a missing label file, a label
    /// whose size differs from its image, an unreadable PNG header, a label map that is not
    /// 8-bit grey, or a split without images.
    pub fn open(root: &Path, split: &str, resize: Option<SegResize>) -> Result<Self> {
        if let Some(r) = &resize {
            r.validate()?;
        }
        let img_dir = root.join("leftImg8bit").join(split);
        let gt_dir = root.join("gtFine").join(split);
        for d in [&img_dir, &gt_dir] {
            if !d.is_dir() {
                return Err(KdError::file(
                    d,
                    format!("folder missing; {}", expected_layout(root, split)),
                ));
            }
        }
        let mut pending = Vec::new();
        for city_dir in sorted_entries(&img_dir)?.into_iter().filter(|p| p.is_dir()) {
            let city = city_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            for img in sorted_entries(&city_dir)? {
                let Some(stem) = img
                    .file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| f.strip_suffix(IMAGE_SUFFIX))
                else {
                    continue;
                };
                let label = gt_dir.join(&city).join(format!("{stem}{LABEL_SUFFIX}"));
                pending.push((img.clone(), label, stem.to_string()));
            }
        }
        if pending.is_empty() {
            return Err(KdError::file(
                &img_dir,
                format!("no *{IMAGE_SUFFIX} files; {}", expected_layout(root, split)),
            ));
        }
        // A label without its image would silently shrink the split.
        let labelled: std::collections::HashSet<&Path> =
            pending.iter().map(|(_, l, _)| l.as_path()).collect();
        for city_dir in sorted_entries(&gt_dir)?.into_iter().filter(|p| p.is_dir()) {
            for label in sorted_entries(&city_dir)? {
                let is_label = label
                    .file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.ends_with(LABEL_SUFFIX));
                if is_label && !labelled.contains(label.as_path()) {
                    let city = city_dir.file_name().unwrap_or_default();
                    return Err(KdError::file(
                        &label,
                        format!(
                            "label file without its image (expected it in {}); {}",
                            img_dir.join(city).display(),
                            expected_layout(root, split)
                        ),
                    ));
                }
            }
        }
        let pairs = pending
            .into_par_iter()
            .map(|(image, label, stem)| {
                if !label.is_file() {
                    return Err(KdError::file(
                        &label,
                        format!("label file missing for image {}", image.display()),
                    ));
                }
                let (iw, ih, _) = png_header(&image)?;
                let (lw, lh, color) = png_header(&label)?;
                if color != ColorType::L8 {
                    return Err(KdError::file(
                        &label,
                        format!("label map must be an 8-bit grey PNG, found {color:?}"),
                    ));
                }
                if (iw, ih) != (lw, lh) {
                    return Err(KdError::file(
                        &label,
                        format!(
                            "label map is {lw}×{lh} but its image {} is {iw}×{ih}",
                            image.display()
                        ),
                    ));
                }
                Ok(Pair {
                    image,
                    label,
                    stem,
                    size: (iw, ih),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            root: root.to_path_buf(),
            split: split.to_string(),
            pairs,
            resize,
        })
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The split name.
    pub fn split(&self) -> &str {
        &self.split
    }

    /// The fixed resize, if any.
    pub fn resize(&self) -> Option<SegResize> {
        self.resize
    }

    /// Image and label-id file of sample `index`.
    pub fn files(&self, index: usize) -> Option<(&Path, &Path)> {
        self.pairs
            .get(index)
            .map(|p| (p.image.as_path(), p.label.as_path()))
    }

    /// The size `(w, h)` sample `index` has after the fixed resize.
    pub fn size(&self, index: usize) -> Option<(usize, usize)> {
        self.pairs.get(index).map(|p| match self.resize {
            Some(r) => r.apply(p.size.0, p.size.1),
            None => p.size,
        })
    }
}

impl SegSource for SegDataset {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn get(&self, index: usize) -> Result<SegSample> {
        let p = self.pairs.get(index).ok_or_else(|| {
            KdError::invalid(format!(
                "sample {index} out of range for {} ({} samples)",
                self.name(),
                self.pairs.len()
            ))
        })?;
        let image = read_rgb_png(&p.image)?;
        let mut label = read_label_png(&p.label)?;
        if image.dimensions() != label.dimensions() {
            return Err(KdError::file(
                &p.label,
                format!(
                    "label map is {:?} but its image is {:?}",
                    label.dimensions(),
                    image.dimensions()
                ),
            ));
        }
        if let Some(&bad) = label.iter().find(|&&v| v > MAX_LABEL_ID) {
            let n = label.iter().filter(|&&v| v > MAX_LABEL_ID).count();
            return Err(KdError::file(
                &p.label,
                format!(
                    "unknown label id {bad} at {n} pixel(s): labelIds maps hold the official ids 0..={MAX_LABEL_ID}"
                ),
            ));
        }
        for v in label.iter_mut() {
            *v = LABEL_TO_TRAIN[*v as usize];
        }
        let (image, label) = match self.resize {
            Some(r) => {
                let (w, h) = r.apply(image.width() as usize, image.height() as usize);
                (
                    resize_rgb_bilinear(&image, w, h),
                    resize_label_nearest(&label, w, h),
                )
            }
            None => (image, label),
        };
        Ok(SegSample { image, label, index })
    }

    fn name(&self) -> String {
        let base = self
            .root
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cityscapes".into());
        format!("{base}/{}", self.split)
    }

    fn sample_name(&self, index: usize) -> String {
        self.pairs
            .get(index)
            .map(|p| p.stem.clone())
            .unwrap_or_else(|| format!("{index:06}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::labels::{label_id, IGNORE};
    use kd_vision::image_ops::{write_label_png, write_rgb_png};

    /// Writes image + label for `city`/`frame`: label id = road (7) on the left half, car (26)
    /// on the right, ego vehicle (1) in the last row; image red channel = label id × 5.
    pub(crate) fn write_pair(root: &Path, split: &str, city: &str, frame: usize, w: u32, h: u32) {
        let stem = format!("{city}_000000_{frame:06}");
        let img_dir = root.join("leftImg8bit").join(split).join(city);
        let gt_dir = root.join("gtFine").join(split).join(city);
        fs::create_dir_all(&img_dir).unwrap();
        fs::create_dir_all(&gt_dir).unwrap();
        let lab = GrayImage::from_fn(w, h, |x, y| {
            image::Luma([if y == h - 1 {
                1
            } else if x < w / 2 {
                7
            } else {
                26
            }])
        });
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([lab.get_pixel(x, y)[0] * 5, frame as u8, (x + y) as u8])
        });
        write_rgb_png(&img_dir.join(format!("{stem}{IMAGE_SUFFIX}")), &img).unwrap();
        write_label_png(&gt_dir.join(format!("{stem}{LABEL_SUFFIX}")), &lab).unwrap();
    }

    fn tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for (city, frame) in [("zurich", 3), ("aachen", 7), ("aachen", 2), ("zurich", 1)] {
            write_pair(tmp.path(), "val", city, frame, 8, 4);
        }
        tmp
    }

    #[test]
    fn round_trip_sorted_with_train_ids() {
        let tmp = tree();
        // Unrelated files are skipped.
        fs::write(tmp.path().join("leftImg8bit/val/aachen/notes.txt"), "x").unwrap();
        let ds = open_cityscapes(tmp.path(), "val", None).unwrap();
        assert_eq!(ds.len(), 4);
        let names: Vec<String> = (0..4).map(|i| ds.sample_name(i)).collect();
        assert_eq!(
            names,
            [
                "aachen_000000_000002",
                "aachen_000000_000007",
                "zurich_000000_000001",
                "zurich_000000_000003"
            ]
        );
        let s = ds.get(1).unwrap();
        assert_eq!(s.index, 1);
        assert_eq!(s.image.dimensions(), (8, 4));
        assert_eq!(s.label.get_pixel(0, 0)[0], 0); // road
        assert_eq!(s.label.get_pixel(7, 0)[0], 13); // car
        assert_eq!(s.label.get_pixel(3, 3)[0], IGNORE); // ego vehicle
        assert_eq!(s.image.get_pixel(7, 0).0, [26 * 5, 7, 7]);
        assert_eq!(label_id(s.label.get_pixel(7, 0)[0]), Some(26));
        assert_eq!(ds.size(0), Some((8, 4)));
        assert!(ds.get(4).is_err());

        let half = open_cityscapes(tmp.path(), "val", Some(SegResize::Factor(0.5))).unwrap();
        let s = half.get(1).unwrap();
        assert_eq!(s.label.dimensions(), (4, 2));
        assert_eq!(half.size(1), Some((4, 2)));
        assert_eq!(s.label.get_pixel(0, 0)[0], 0);
        assert_eq!(s.label.get_pixel(3, 0)[0], 13);
        let fixed =
            open_cityscapes(tmp.path(), "val", Some(SegResize::Size { width: 16, height: 6 })).unwrap();
        assert_eq!(fixed.get(0).unwrap().image.dimensions(), (16, 6));
        assert!(open_cityscapes(tmp.path(), "val", Some(SegResize::Factor(0.0))).is_err());
    }

    #[test]
    fn layout_errors_name_the_file() {
        let tmp = tree();
        let r = tmp.path();
        let msg = open_cityscapes(r, "train", None).unwrap_err().to_string();
        assert!(
            msg.contains("leftImg8bit/train") && msg.contains("expected the Cityscapes layout"),
            "{msg}"
        );

        // Missing label.
        let lab = r.join("gtFine/val/zurich/zurich_000000_000003_gtFine_labelIds.png");
        fs::rename(&lab, r.join("moved.png")).unwrap();
        let msg = open_cityscapes(r, "val", None).unwrap_err().to_string();
        assert!(
            msg.contains("zurich_000000_000003_gtFine_labelIds.png") && msg.contains("missing"),
            "{msg}"
        );

        // Size mismatch.
        let small = GrayImage::from_pixel(4, 4, image::Luma([7]));
        write_label_png(&lab, &small).unwrap();
        let msg = open_cityscapes(r, "val", None).unwrap_err().to_string();
        assert!(
            msg.contains("zurich_000000_000003_gtFine_labelIds.png") && msg.contains("4×4"),
            "{msg}"
        );

        // Label not 8-bit grey.
        write_rgb_png(&lab, &RgbImage::new(8, 4)).unwrap();
        let msg = open_cityscapes(r, "val", None).unwrap_err().to_string();
        assert!(
            msg.contains("zurich_000000_000003_gtFine_labelIds.png") && msg.contains("8-bit grey"),
            "{msg}"
        );

        // Corrupt image.
        write_label_png(&lab, &GrayImage::new(8, 4)).unwrap();
        let img = r.join("leftImg8bit/val/aachen/aachen_000000_000002_leftImg8bit.png");
        fs::write(&img, b"not a png").unwrap();
        let msg = open_cityscapes(r, "val", None).unwrap_err().to_string();
        assert!(msg.contains("aachen_000000_000002_leftImg8bit.png"), "{msg}");

        // A truncated PNG whose header is fine fails when decoded, naming the file.
        write_pair(r, "val", "aachen", 2, 8, 4);
        let bytes = fs::read(&img).unwrap();
        fs::write(&img, &bytes[..bytes.len() / 2 + 10]).unwrap();
        let ds = open_cityscapes(r, "val", None).unwrap();
        let msg = ds.get(0).unwrap_err().to_string();
        assert!(msg.contains("aachen_000000_000002_leftImg8bit.png"), "{msg}");

        let empty = tempfile::tempdir().unwrap();
        fs::create_dir_all(empty.path().join("leftImg8bit/val")).unwrap();
        fs::create_dir_all(empty.path().join("gtFine/val")).unwrap();
        let msg = open_cityscapes(empty.path(), "val", None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no *_leftImg8bit.png files"), "{msg}");
    }
}
