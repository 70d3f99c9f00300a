//! The IDX format of MNIST and Fashion-MNIST.
//!
//! Files are accepted gzip-compressed or raw, told apart by their first bytes rather than their
//! name, because both forms circulate under both names. The format has no checksum, so the
//! reader checks the header against the payload length and reports a mismatch in words (how
//! many images the header promises, how many bytes there are) instead of yielding garbage
//! samples. The writer exists so tests can build files and so derived subsets keep the
//! official format.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::data::InMemoryDataset;
use kd_core::{KdError, Result};

/// Magic of an IDX file of unsigned bytes with 3 dimensions (images).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of an IDX file of unsigned bytes with 1 dimension (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| KdError::file(path, format!("cannot read: {e}")))
}

fn inflate_if_gz(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 2);
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .map_err(|e| KdError::file(path, format!("corrupt gzip data: {e}")))?;
    Ok(out)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn check_magic(bytes: &[u8], expected: u32, what: &str, path: &Path) -> Result<()> {
    if bytes.len() < 4 {
        return Err(KdError::file(
            path,
            format!("truncated: {} bytes, too short for an IDX header", bytes.len()),
        ));
    }
    let magic = be_u32(bytes, 0);
    if magic == expected {
        return Ok(());
    }
    let hint = match magic {
        IDX_IMAGES_MAGIC => " (this is an IDX image file, not a label file)",
        IDX_LABELS_MAGIC => " (this is an IDX label file, not an image file)",
        _ => "",
    };
    Err(KdError::file(
        path,
        format!("bad magic {magic:#010x}: expected {expected:#010x} for IDX {what}{hint}"),
    ))
}

/// Parses IDX image content (already read, gzip or raw). `source` names it in errors.
/// Returns `(n, h, w, pixels)` with `n*h*w` pixel bytes.
pub fn decode_idx_images(bytes: &[u8], source: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    decode_images_owned(bytes.to_vec(), source)
}

fn decode_images_owned(bytes: Vec<u8>, source: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let bytes = inflate_if_gz(bytes, source)?;
    check_magic(&bytes, IDX_IMAGES_MAGIC, "images", source)?;
    if bytes.len() < 16 {
        return Err(KdError::file(
            source,
            format!("truncated: {} bytes, an IDX image header needs 16", bytes.len()),
        ));
    }
    let (n, h, w) = (
        be_u32(&bytes, 4) as usize,
        be_u32(&bytes, 8) as usize,
        be_u32(&bytes, 12) as usize,
    );
    let have = bytes.len() - 16;
    let Some(need) = n.checked_mul(h).and_then(|nh| nh.checked_mul(w)) else {
        return Err(KdError::file(
            source,
            format!("header says {n} images of {h}×{w}: more pixels than any file holds (corrupt header?)"),
        ));
    };
    if have < need {
        return Err(KdError::file(
            source,
            format!(
                "truncated: header says {n} images of {h}×{w} ({need} bytes of pixels) but only {have} bytes of pixels"
            ),
        ));
    }
    if have > need {
        return Err(KdError::file(
            source,
            format!(
                "header says {n} images of {h}×{w} ({need} bytes of pixels) but there are {have} bytes of pixels"
            ),
        ));
    }
    let mut bytes = bytes;
    bytes.drain(..16);
    Ok((n, h, w, bytes))
}

/// Parses IDX label content (already read, gzip or raw). `source` names it in errors.
pub fn decode_idx_labels(bytes: &[u8], source: &Path) -> Result<Vec<u8>> {
    decode_labels_owned(bytes.to_vec(), source)
}

fn decode_labels_owned(bytes: Vec<u8>, source: &Path) -> Result<Vec<u8>> {
    let bytes = inflate_if_gz(bytes, source)?;
    check_magic(&bytes, IDX_LABELS_MAGIC, "labels", source)?;
    if bytes.len() < 8 {
        return Err(KdError::file(
            source,
            format!("truncated: {} bytes, an IDX label header needs 8", bytes.len()),
        ));
    }
    let n = be_u32(&bytes, 4) as usize;
    let have = bytes.len() - 8;
    if have != n {
        let kind = if have < n { "truncated: " } else { "" };
        return Err(KdError::file(
            source,
            format!("{kind}header says {n} labels but there are {have} bytes of labels"),
        ));
    }
    let mut bytes = bytes;
    bytes.drain(..8);
    Ok(bytes)
}

/// Reads an IDX image file (gzip or raw, detected by content): `(n, h, w, pixels)`.
pub fn read_idx_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    decode_images_owned(read_file(path)?, path)
}

/// Reads an IDX label file (gzip or raw, detected by content): one byte per label.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    decode_labels_owned(read_file(path)?, path)
}

/// Pairs decoded images and labels into a dataset, checking counts and label range.
pub(crate) fn pair(
    images: (usize, usize, usize, Vec<u8>),
    labels: Vec<u8>,
    images_path: &Path,
    labels_path: &Path,
    num_classes: usize,
    name: String,
) -> Result<InMemoryDataset> {
    let (n, h, w, pixels) = images;
    if labels.len() != n {
        return Err(KdError::file(
            labels_path,
            format!(
                "count mismatch: {} labels but {} has {n} images",
                labels.len(),
                images_path.display()
            ),
        ));
    }
    if let Some((i, &y)) = labels
        .iter()
        .enumerate()
        .find(|(_, &y)| usize::from(y) >= num_classes)
    {
        return Err(KdError::file(
            labels_path,
            format!("label {y} at position {i} is out of range for {num_classes} classes"),
        ));
    }
    let labels = labels.into_iter().map(i64::from).collect();
    InMemoryDataset::from_parts(name, [1, h, w], pixels, labels, num_classes)
}

/// Loads an IDX image file and its label file as one dataset of `num_classes` classes.
pub fn load_idx_pair(
    images: &Path,
    labels: &Path,
    num_classes: usize,
    name: &str,
) -> Result<InMemoryDataset> {
    let imgs = read_idx_images(images)?;
    let labs = read_idx_labels(labels)?;
    pair(imgs, labs, images, labels, num_classes, name.to_string())
}

/// The official base names of the four MNIST-style files: train images, train labels, test
/// images, test labels.
pub const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Finds `base` in `dir`, raw or `.gz`; the dotted variant (`train-images.idx3-ubyte`) some
/// mirrors use is accepted too.
pub(crate) fn find_idx_file(dir: &Path, base: &str) -> Option<PathBuf> {
    let dotted = base.replacen("-idx", ".idx", 1);
    [base, &dotted]
        .iter()
        .flat_map(|b| [b.to_string(), format!("{b}.gz")])
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// True when `dir` holds at least one MNIST-style IDX file.
pub(crate) fn has_idx_files(dir: &Path) -> bool {
    MNIST_FILES.iter().any(|b| find_idx_file(dir, b).is_some())
}

/// Loads an MNIST-layout folder (MNIST, Fashion-MNIST, ...) holding the four official files
/// [`MNIST_FILES`], each raw or `.gz`. Returns `(train, test)`, named `<folder>/train` and
/// `<folder>/test`. The class count is 10, or `max label + 1` when labels go higher.
pub fn load_mnist_dir(dir: &Path) -> Result<(InMemoryDataset, InMemoryDataset)> {
    let paths = MNIST_FILES
        .iter()
        .map(|base| {
            find_idx_file(dir, base).ok_or_else(|| {
                KdError::file(
                    dir.join(base),
                    format!("missing: expected {base} or {base}.gz in this folder"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let train_imgs = read_idx_images(&paths[0])?;
    let train_labs = read_idx_labels(&paths[1])?;
    let test_imgs = read_idx_images(&paths[2])?;
    let test_labs = read_idx_labels(&paths[3])?;
    if (train_imgs.1, train_imgs.2) != (test_imgs.1, test_imgs.2) {
        return Err(KdError::file(
            &paths[2],
            format!(
                "images are {}×{} but the training images in {} are {}×{}",
                test_imgs.1,
                test_imgs.2,
                paths[0].display(),
                train_imgs.1,
                train_imgs.2
            ),
        ));
    }
    let max_label = train_labs.iter().chain(&test_labs).copied().max().unwrap_or(0);
    let num_classes = 10.max(usize::from(max_label) + 1);
    let stem = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "idx".to_string());
    let train = pair(
        train_imgs,
        train_labs,
        &paths[0],
        &paths[1],
        num_classes,
        format!("{stem}/train"),
    )?;
    let test = pair(
        test_imgs,
        test_labs,
        &paths[2],
        &paths[3],
        num_classes,
        format!("{stem}/test"),
    )?;
    Ok((train, test))
}

fn write_maybe_gz(path: &Path, content: &[u8], gz: bool) -> Result<()> {
    let err = |e: std::io::Error| KdError::file(path, format!("cannot write: {e}"));
    if !gz {
        return fs::write(path, content).map_err(err);
    }
    // Zero timestamp and no file name: the same content always gives the same bytes.
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(content).map_err(err)?;
    fs::write(path, enc.finish().map_err(err)?).map_err(err)
}

/// Writes `pixels` (`n` images of `h×w`, `n = pixels.len() / (h*w)`) as an IDX image file,
/// gzip-compressed when `gz`.
pub fn write_idx_images(path: &Path, h: usize, w: usize, pixels: &[u8], gz: bool) -> Result<()> {
    if pixels.len().checked_rem(h * w) != Some(0) {
        return Err(KdError::file(
            path,
            format!(
                "cannot write: {} pixel bytes are not a whole number of {h}×{w} images",
                pixels.len()
            ),
        ));
    }
    let n = pixels.len() / (h * w);
    let mut content = Vec::with_capacity(16 + pixels.len());
    for v in [IDX_IMAGES_MAGIC, n as u32, h as u32, w as u32] {
        content.extend_from_slice(&v.to_be_bytes());
    }
    content.extend_from_slice(pixels);
    write_maybe_gz(path, &content, gz)
}

/// Writes `labels` as an IDX label file, gzip-compressed when `gz`.
pub fn write_idx_labels(path: &Path, labels: &[u8], gz: bool) -> Result<()> {
    let mut content = Vec::with_capacity(8 + labels.len());
    for v in [IDX_LABELS_MAGIC, labels.len() as u32] {
        content.extend_from_slice(&v.to_be_bytes());
    }
    content.extend_from_slice(labels);
    write_maybe_gz(path, &content, gz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    fn pixels(n: usize, h: usize, w: usize) -> Vec<u8> {
        (0..n * h * w).map(|i| (i * 7 % 256) as u8).collect()
    }

    #[test]
    fn round_trip_raw_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        for gz in [false, true] {
            let ip = dir.path().join(format!("img{gz}"));
            let lp = dir.path().join(format!("lab{gz}"));
            let px = pixels(5, 3, 4);
            write_idx_images(&ip, 3, 4, &px, gz).unwrap();
            write_idx_labels(&lp, &[0, 1, 2, 9, 4], gz).unwrap();
            let raw = fs::read(&ip).unwrap();
            assert_eq!(raw.starts_with(&GZIP_MAGIC), gz);
            assert_eq!(read_idx_images(&ip).unwrap(), (5, 3, 4, px.clone()));
            assert_eq!(read_idx_labels(&lp).unwrap(), vec![0, 1, 2, 9, 4]);
            let ds = load_idx_pair(&ip, &lp, 10, "t").unwrap();
            assert_eq!(ds.len(), 5);
            assert_eq!(ds.shape(), [1, 3, 4]);
            assert_eq!(ds.labels(), &[0, 1, 2, 9, 4]);
            assert_eq!(ds.image_bytes(1), &px[12..24]);
        }
    }

    #[test]
    fn truncated_images_name_file_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train-images-idx3-ubyte");
        write_idx_images(&p, 28, 28, &pixels(3, 28, 28), false).unwrap();
        let mut bytes = fs::read(&p).unwrap();
        bytes.truncate(16 + 1000);
        fs::write(&p, &bytes).unwrap();
        let msg = read_idx_images(&p).unwrap_err().to_string();
        assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
        assert!(
            msg.contains("truncated: header says 3 images of 28×28")
                && msg.contains("only 1000 bytes of pixels"),
            "{msg}"
        );
        // Same through gzip.
        let gzp = dir.path().join("x.gz");
        write_maybe_gz(&gzp, &bytes, true).unwrap();
        let msg = read_idx_images(&gzp).unwrap_err().to_string();
        assert!(msg.contains("x.gz") && msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn bad_magic_and_swapped_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.bin");
        fs::write(&p, b"\x12\x34\x56\x78rest of the file").unwrap();
        let msg = read_idx_images(&p).unwrap_err().to_string();
        assert!(
            msg.contains("junk.bin") && msg.contains("bad magic 0x12345678"),
            "{msg}"
        );
        let lp = dir.path().join("labels");
        write_idx_labels(&lp, &[1, 2], false).unwrap();
        let msg = read_idx_images(&lp).unwrap_err().to_string();
        assert!(msg.contains("label file, not an image file"), "{msg}");
    }

    #[test]
    fn count_mismatch_and_label_range() {
        let dir = tempfile::tempdir().unwrap();
        let ip = dir.path().join("i");
        let lp = dir.path().join("l");
        write_idx_images(&ip, 2, 2, &pixels(3, 2, 2), false).unwrap();
        write_idx_labels(&lp, &[0, 1], true).unwrap();
        let msg = load_idx_pair(&ip, &lp, 10, "t").unwrap_err().to_string();
        assert!(
            msg.contains("count mismatch: 2 labels but") && msg.contains("3 images"),
            "{msg}"
        );
        write_idx_labels(&lp, &[0, 1, 10], true).unwrap();
        let msg = load_idx_pair(&ip, &lp, 10, "t").unwrap_err().to_string();
        assert!(msg.contains("label 10 at position 2"), "{msg}");
    }

    #[test]
    fn mnist_dir_mixed_raw_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_idx_images(
            &d.join("train-images-idx3-ubyte.gz"),
            4,
            4,
            &pixels(6, 4, 4),
            true,
        )
        .unwrap();
        write_idx_labels(&d.join("train-labels-idx1-ubyte"), &[0, 1, 2, 3, 4, 5], false).unwrap();
        write_idx_images(&d.join("t10k-images-idx3-ubyte"), 4, 4, &pixels(2, 4, 4), false).unwrap();
        let msg = load_mnist_dir(d).unwrap_err().to_string();
        assert!(
            msg.contains("t10k-labels-idx1-ubyte") && msg.contains("missing"),
            "{msg}"
        );
        write_idx_labels(&d.join("t10k-labels-idx1-ubyte.gz"), &[7, 9], true).unwrap();
        let (train, test) = load_mnist_dir(d).unwrap();
        assert_eq!((train.len(), test.len()), (6, 2));
        assert_eq!(train.num_classes(), 10);
        assert_eq!(test.labels(), &[7, 9]);
        assert!(train.name().ends_with("/train"));
    }
}
