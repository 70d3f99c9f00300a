//! Folders of image files: labelled (`root/<class>/*.png`) and unlabelled.
//!
//! Web-collected and custom data arrive as loose PNG/JPEG files of arbitrary sizes. They are
//! decoded **once, in parallel, when the folder is opened**, resized to one fixed shape and kept
//! as bytes in an [`InMemoryDataset`]. The trade-off is memory for speed: `C×H×W` bytes per image
//! stay resident (100 000 RGB images at 32×32 take about 300 MB; at 224×224, 15 GB), in exchange
//! for epochs that never touch the disk or a decoder and for a decode error surfacing at open
//! time rather than mid-training. For folders that do not fit, subsample them first.

use std::fs;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;

use crate::data::InMemoryDataset;
use kd_core::{KdError, Result};

/// File extensions recognised as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.starts_with('.'))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| KdError::file(dir, format!("cannot list folder: {e}")))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| KdError::file(dir, format!("cannot list folder: {e}")))?;
    entries.retain(|p| !is_hidden(p));
    entries.sort();
    Ok(entries)
}

/// Image files in `dir` (and its sub-folders when `recursive`), sorted by path.
fn image_files(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    for p in read_dir_sorted(dir)? {
        if p.is_dir() {
            if recursive {
                image_files(&p, true, out)?;
            }
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

fn check_args(root: &Path, size: (usize, usize), channels: usize) -> Result<()> {
    if !root.is_dir() {
        return Err(KdError::file(root, "not a folder (or does not exist)"));
    }
    if size.0 == 0 || size.1 == 0 {
        return Err(KdError::invalid(format!(
            "image size {}×{} has a zero side",
            size.0, size.1
        )));
    }
    if channels != 1 && channels != 3 {
        return Err(KdError::invalid(format!(
            "images can be loaded with 1 or 3 channels, not {channels}"
        )));
    }
    Ok(())
}

/// Decodes one image file, its format detected from its content; errors name the file.
pub(crate) fn decode(path: &Path) -> Result<image::DynamicImage> {
    image::ImageReader::open(path)
        .map_err(|e| KdError::file(path, format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| KdError::file(path, format!("cannot read: {e}")))?
        .decode()
        .map_err(|e| KdError::file(path, format!("cannot decode image: {e}")))
}

/// Decodes one image file (format detected from content), resizes it to `size = (h, w)` with a
/// bilinear filter when needed and returns `channels × h × w` bytes in CHW order (1 channel =
/// luma, 3 = RGB; alpha is dropped).
pub fn decode_image_file(path: &Path, size: (usize, usize), channels: usize) -> Result<Vec<u8>> {
    let img = decode(path)?;
    let (h, w) = size;
    let img = if img.width() as usize != w || img.height() as usize != h {
        img.resize_exact(w as u32, h as u32, FilterType::Triangle)
    } else {
        img
    };
    Ok(if channels == 1 {
        img.to_luma8().into_raw()
    } else {
        // HWC → CHW.
        let rgb = img.to_rgb8().into_raw();
        let mut chw = vec![0u8; rgb.len()];
        let plane = h * w;
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = px[c];
            }
        }
        chw
    })
}

/// Decodes `files` in parallel; the first failure in file order is the error returned.
fn decode_all(files: &[PathBuf], size: (usize, usize), channels: usize) -> Result<Vec<u8>> {
    let decoded = files
        .par_iter()
        .map(|p| decode_image_file(p, size, channels))
        .collect::<Vec<_>>();
    let mut pixels = Vec::with_capacity(files.len() * channels * size.0 * size.1);
    for d in decoded {
        pixels.extend_from_slice(&d?);
    }
    Ok(pixels)
}

fn folder_name(root: &Path) -> String {
    root.canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "images".to_string())
}

/// The samples of an ImageFolder split: files sorted by path, their class indices, and the
/// class names (sub-folder names in name order).
#[derive(Clone, Debug, PartialEq)]
pub struct FolderIndex {
    /// Image files, class by class, sorted by path.
    pub files: Vec<PathBuf>,
    /// Class index of each file.
    pub labels: Vec<i64>,
    /// Class names; index `k` is class `k`.
    pub classes: Vec<String>,
}

/// Lists an ImageFolder tree: every sub-folder of `root` is a class, classes are numbered in
/// name order (as torchvision's `ImageFolder` does), and every `png`/`jpg`/`jpeg` file directly
/// inside a class folder is a sample. Other files and hidden entries are ignored; an empty
/// class folder still counts as a class.
pub fn index_image_folder(root: &Path) -> Result<FolderIndex> {
    if !root.is_dir() {
        return Err(KdError::file(root, "not a folder (or does not exist)"));
    }
    let class_dirs: Vec<PathBuf> = read_dir_sorted(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if class_dirs.is_empty() {
        return Err(KdError::file(
            root,
            "no class sub-folders: expected root/<class>/<image>.png|jpg|jpeg",
        ));
    }
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (k, class_dir) in class_dirs.iter().enumerate() {
        let before = files.len();
        image_files(class_dir, false, &mut files)?;
        labels.extend(std::iter::repeat_n(k as i64, files.len() - before));
    }
    if files.is_empty() {
        return Err(KdError::file(
            root,
            "no png/jpg/jpeg images in any class sub-folder",
        ));
    }
    let classes = class_dirs
        .iter()
        .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .collect();
    Ok(FolderIndex {
        files,
        labels,
        classes,
    })
}

/// Loads an ImageFolder tree (see [`index_image_folder`]) into memory. Images are resized to
/// `size = (h, w)` and converted to `channels` (1 or 3). Class names are attached to the
/// dataset; it is named after `root`.
pub fn load_image_folder(root: &Path, size: (usize, usize), channels: usize) -> Result<InMemoryDataset> {
    check_args(root, size, channels)?;
    let index = index_image_folder(root)?;
    let pixels = decode_all(&index.files, size, channels)?;
    InMemoryDataset::from_parts(
        folder_name(root),
        [channels, size.0, size.1],
        pixels,
        index.labels,
        index.classes.len(),
    )?
    .with_class_names(index.classes)
}

/// The evaluation transform of torchvision's ImageNet recipe on one file: the image converted
/// to RGB, its shorter side resized to `resize` (the longer to `int(resize · long / short)`) with
/// Pillow's antialiased bilinear filter, then the centre `crop × crop` window (offsets rounded
/// half to even, as `CenterCrop`'s Python `round` does). Returns `3 × crop × crop` RGB bytes, CHW.
pub fn decode_resize_center_crop(path: &Path, resize: usize, crop: usize) -> Result<Vec<u8>> {
    let img = decode(path)?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 || resize == 0 || crop == 0 || crop > resize {
        return Err(KdError::file(
            path,
            format!("cannot resize a {w}×{h} image to {resize} and crop {crop}"),
        ));
    }
    let long = |l: usize, s: usize| (resize as f64 * l as f64 / s as f64) as usize;
    let (nw, nh) = if w <= h {
        (resize, long(h, w))
    } else {
        (long(w, h), resize)
    };
    // The whole resized image is built before the crop; a sliver (1×60000 px, a few hundred
    // bytes of PNG) would need gigabytes for it.
    const MAX_RESIZED_BYTES: usize = 256 << 20;
    if nw.saturating_mul(nh).saturating_mul(3) > MAX_RESIZED_BYTES {
        return Err(KdError::file(
            path,
            format!(
                "a {w}×{h} image resized to a short side of {resize} becomes {nw}×{nh}, over \
                 {} MiB: its aspect ratio is too extreme for this transform",
                MAX_RESIZED_BYTES >> 20
            ),
        ));
    }
    let rgb = if (nw, nh) != (w, h) {
        kd_vision::pil_resize::resize_bilinear_pil(img.as_raw(), w, h, 3, nw, nh)
    } else {
        img.into_raw()
    };
    let half_even = |v: usize| {
        let (q, r) = (v / 2, v % 2);
        // (v / 2) rounded half to even: an odd v sits exactly between q and q + 1.
        if r == 1 && q % 2 == 1 {
            q + 1
        } else {
            q
        }
    };
    let (top, left) = (half_even(nh - crop), half_even(nw - crop));
    let plane = crop * crop;
    let mut chw = vec![0u8; 3 * plane];
    for y in 0..crop {
        for x in 0..crop {
            let src = ((top + y) * nw + left + x) * 3;
            for c in 0..3 {
                chw[c * plane + y * crop + x] = rgb[src + c];
            }
        }
    }
    Ok(chw)
}

/// Loads every `png`/`jpg`/`jpeg` file in `root` (and its sub-folders when `recursive`) as an
/// unlabelled dataset: labels are `-1` and the class count is 0. Files are sorted by path, so
/// indices are stable across runs. Images are resized to `size = (h, w)` and converted to
/// `channels` (1 or 3).
pub fn load_unlabelled_folder(
    root: &Path,
    size: (usize, usize),
    channels: usize,
    recursive: bool,
) -> Result<InMemoryDataset> {
    check_args(root, size, channels)?;
    let mut files = Vec::new();
    image_files(root, recursive, &mut files)?;
    if files.is_empty() {
        return Err(KdError::file(root, "no png/jpg/jpeg images found"));
    }
    let pixels = decode_all(&files, size, channels)?;
    let n = files.len();
    InMemoryDataset::from_parts(
        folder_name(root),
        [channels, size.0, size.1],
        pixels,
        vec![-1; n],
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    fn png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
            .save(path)
            .unwrap();
    }

    #[test]
    fn image_folder_resizes_and_labels_by_sorted_class() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        for c in ["zebra", "ant", "cat"] {
            fs::create_dir(r.join(c)).unwrap();
        }
        png(&r.join("zebra/a.png"), 5, 7, [255, 0, 0]);
        png(&r.join("ant/b.PNG"), 16, 16, [0, 255, 0]);
        png(&r.join("cat/c.png"), 3, 2, [0, 0, 255]);
        png(&r.join("cat/d.png"), 8, 8, [10, 20, 30]);
        fs::write(r.join("cat/notes.txt"), "ignored").unwrap();
        fs::write(r.join("stray.png"), "not in a class folder").unwrap();

        let ds = load_image_folder(r, (4, 6), 3).unwrap();
        assert_eq!(ds.len(), 4);
        assert_eq!(ds.shape(), [3, 4, 6]);
        assert_eq!(ds.num_classes(), 3);
        assert_eq!(ds.class_names(), &["ant", "cat", "zebra"]);
        assert_eq!(ds.labels(), &[0, 1, 1, 2]);
        // A uniform image stays uniform after resizing; planes are R, G, B.
        let zebra = ds.image_bytes(3);
        assert!(zebra[..24].iter().all(|&p| p == 255));
        assert!(zebra[24..].iter().all(|&p| p == 0));
        let d = ds.image_bytes(2);
        assert_eq!((d[0], d[24], d[48]), (10, 20, 30));

        let gray = load_image_folder(r, (2, 2), 1).unwrap();
        assert_eq!(gray.shape(), [1, 2, 2]);
    }

    #[test]
    fn unlabelled_flat_and_recursive() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        fs::create_dir(r.join("sub")).unwrap();
        png(&r.join("1.png"), 4, 4, [1, 1, 1]);
        png(&r.join("sub/2.png"), 9, 3, [2, 2, 2]);
        png(&r.join("sub/3.jpg"), 8, 8, [200, 200, 200]); // JPEG encoder picks the format
        let flat = load_unlabelled_folder(r, (4, 4), 1, false).unwrap();
        assert_eq!(flat.len(), 1);
        let all = load_unlabelled_folder(r, (4, 4), 1, true).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all.labels(), &[-1, -1, -1]);
        assert_eq!(all.num_classes(), 0);
        assert!(all.image_bytes(1).iter().all(|&p| p == 2));
        // JPEG is lossy: close to the encoded grey.
        assert!(all.image_bytes(2).iter().all(|&p| p.abs_diff(200) <= 3));
    }

    #[test]
    fn unreadable_image_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        fs::create_dir(r.join("a")).unwrap();
        png(&r.join("a/good.png"), 4, 4, [0, 0, 0]);
        fs::write(r.join("a/broken.jpg"), b"definitely not a jpeg").unwrap();
        let msg = load_image_folder(r, (4, 4), 3).unwrap_err().to_string();
        assert!(msg.contains("broken.jpg"), "{msg}");
        let msg = load_image_folder(&r.join("missing"), (4, 4), 3)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("missing") && msg.contains("not a folder"), "{msg}");
    }
}
