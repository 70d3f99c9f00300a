//! The binary versions of CIFAR-10 and CIFAR-100.
//!
//! These are the standard teacher/student benchmarks of the distillation literature. The files
//! are plain fixed-size records without a header, so the only structural check possible is that
//! a file is a whole number of records; a wrong record size (CIFAR-10 files in a CIFAR-100
//! folder, a partial download) is reported with the file name and the sizes involved. The
//! variant is detected from the file names, which differ between the two official archives.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::data::InMemoryDataset;
use kd_core::{KdError, Result};

/// Pixels per CIFAR image: 3 channels of 32×32, stored channel-major (CHW).
pub const CIFAR_IMAGE_BYTES: usize = 3 * 32 * 32;

/// Which CIFAR binary format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarKind {
    /// 10 classes; records are 1 label byte + 3072 pixel bytes.
    Cifar10,
    /// 100 fine classes; records are coarse label, fine label, 3072 pixel bytes.
    Cifar100,
}

impl CifarKind {
    /// Bytes per record.
    pub fn record_size(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1 + CIFAR_IMAGE_BYTES,
            CifarKind::Cifar100 => 2 + CIFAR_IMAGE_BYTES,
        }
    }

    /// Number of classes (fine classes for CIFAR-100).
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }

    /// `"cifar-10"` or `"cifar-100"`.
    pub fn name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar-10",
            CifarKind::Cifar100 => "cifar-100",
        }
    }

    /// The official training files, in order.
    pub fn train_files(self) -> &'static [&'static str] {
        match self {
            CifarKind::Cifar10 => &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            CifarKind::Cifar100 => &["train.bin"],
        }
    }

    /// The official test file.
    pub fn test_file(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "test_batch.bin",
            CifarKind::Cifar100 => "test.bin",
        }
    }

    /// The folder the official archive extracts to.
    pub fn archive_folder(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar-10-batches-bin",
            CifarKind::Cifar100 => "cifar-100-binary",
        }
    }
}

/// Reads one CIFAR binary file: `(pixels, labels)` with `CIFAR_IMAGE_BYTES` bytes per image.
/// For CIFAR-100 the label is the fine label.
pub fn read_cifar_bin(path: &Path, kind: CifarKind) -> Result<(Vec<u8>, Vec<i64>)> {
    let bytes = fs::read(path).map_err(|e| KdError::file(path, format!("cannot read: {e}")))?;
    let rec = kind.record_size();
    if bytes.is_empty() || bytes.len() % rec != 0 {
        return Err(KdError::file(
            path,
            format!(
                "size {} bytes is not a positive multiple of the {} record size {rec} \
                 (label byte{} + {CIFAR_IMAGE_BYTES} pixels)",
                bytes.len(),
                kind.name(),
                if kind == CifarKind::Cifar100 { "s" } else { "" },
            ),
        ));
    }
    let n = bytes.len() / rec;
    let label_at = rec - CIFAR_IMAGE_BYTES - 1;
    let mut pixels = Vec::with_capacity(n * CIFAR_IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let y = r[label_at];
        if usize::from(y) >= kind.num_classes() {
            return Err(KdError::file(
                path,
                format!(
                    "record {i} has label {y}, out of range for {} ({} classes); is this a {} file?",
                    kind.name(),
                    kind.num_classes(),
                    kind.name()
                ),
            ));
        }
        labels.push(i64::from(y));
        pixels.extend_from_slice(&r[rec - CIFAR_IMAGE_BYTES..]);
    }
    Ok((pixels, labels))
}

/// Finds the CIFAR folder and variant under `dir`: `dir` itself or the official extracted
/// folder inside it. CIFAR-10 is recognised by any of its batch files, CIFAR-100 by `train.bin`
/// or `test.bin`.
pub fn detect_cifar(dir: &Path) -> Option<(PathBuf, CifarKind)> {
    let kinds = [CifarKind::Cifar10, CifarKind::Cifar100];
    let mut candidates = vec![dir.to_path_buf()];
    candidates.extend(kinds.iter().map(|k| dir.join(k.archive_folder())));
    candidates.into_iter().find_map(|d| {
        kinds
            .iter()
            .find(|k| {
                k.train_files()
                    .iter()
                    .chain(std::iter::once(&k.test_file()))
                    .any(|f| d.join(f).is_file())
            })
            .map(|&k| (d, k))
    })
}

fn load_files(dir: &Path, files: &[&str], kind: CifarKind, split: &str) -> Result<InMemoryDataset> {
    let parts = files
        .par_iter()
        .map(|f| read_cifar_bin(&dir.join(f), kind))
        .collect::<Vec<_>>();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for part in parts {
        let (p, l) = part?;
        pixels.extend_from_slice(&p);
        labels.extend_from_slice(&l);
    }
    InMemoryDataset::from_parts(
        format!("{}/{split}", kind.name()),
        [3, 32, 32],
        pixels,
        labels,
        kind.num_classes(),
    )
}

/// Loads CIFAR-10 or CIFAR-100 (binary version) from `dir`, auto-detected by the files present
/// (see [`detect_cifar`]). Returns `(train, test)`, named e.g. `cifar-100/train`.
pub fn load_cifar_dir(dir: &Path) -> Result<(InMemoryDataset, InMemoryDataset)> {
    let (root, kind) = detect_cifar(dir).ok_or_else(|| {
        KdError::file(
            dir,
            "no CIFAR binary files: expected data_batch_1.bin..data_batch_5.bin and \
             test_batch.bin (CIFAR-10) or train.bin and test.bin (CIFAR-100), directly or in \
             cifar-10-batches-bin/ or cifar-100-binary/",
        )
    })?;
    for f in kind
        .train_files()
        .iter()
        .chain(std::iter::once(&kind.test_file()))
    {
        let p = root.join(f);
        if !p.is_file() {
            return Err(KdError::file(
                p,
                format!("missing: {} needs this file", kind.name()),
            ));
        }
    }
    let train = load_files(&root, kind.train_files(), kind, "train")?;
    let test = load_files(&root, &[kind.test_file()], kind, "test")?;
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    /// Writes `labels.len()` records; the pixels of record `i` are all `(i + label) % 256`.
    fn write(path: &Path, kind: CifarKind, labels: &[u8]) {
        let mut bytes = Vec::new();
        for (i, &y) in labels.iter().enumerate() {
            if kind == CifarKind::Cifar100 {
                bytes.push(y / 5); // coarse label
            }
            bytes.push(y);
            bytes.extend(std::iter::repeat_n(
                ((i + usize::from(y)) % 256) as u8,
                CIFAR_IMAGE_BYTES,
            ));
        }
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn cifar10_round_trip_in_official_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("cifar-10-batches-bin");
        fs::create_dir(&d).unwrap();
        for (b, f) in CifarKind::Cifar10.train_files().iter().enumerate() {
            write(&d.join(f), CifarKind::Cifar10, &[b as u8, 9]);
        }
        write(&d.join("test_batch.bin"), CifarKind::Cifar10, &[3, 4, 5]);
        let (train, test) = load_cifar_dir(tmp.path()).unwrap();
        assert_eq!((train.len(), test.len()), (10, 3));
        assert_eq!(train.shape(), [3, 32, 32]);
        assert_eq!(train.num_classes(), 10);
        assert_eq!(train.labels(), &[0, 9, 1, 9, 2, 9, 3, 9, 4, 9]);
        assert_eq!(test.image_bytes(2), &[7u8; CIFAR_IMAGE_BYTES][..]);
        assert_eq!(train.name(), "cifar-10/train");
    }

    #[test]
    fn cifar100_uses_fine_label() {
        let tmp = tempfile::tempdir().unwrap();
        write(&tmp.path().join("train.bin"), CifarKind::Cifar100, &[99, 42]);
        write(&tmp.path().join("test.bin"), CifarKind::Cifar100, &[17]);
        let (train, test) = load_cifar_dir(tmp.path()).unwrap();
        assert_eq!(train.num_classes(), 100);
        assert_eq!(train.labels(), &[99, 42]);
        assert_eq!(test.labels(), &[17]);
        assert_eq!(train.image_bytes(1)[0], 43);
        assert_eq!(test.name(), "cifar-100/test");
    }

    #[test]
    fn errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(&d.join("train.bin"), CifarKind::Cifar100, &[1]);
        let msg = load_cifar_dir(d).unwrap_err().to_string();
        assert!(msg.contains("test.bin") && msg.contains("missing"), "{msg}");
        fs::write(d.join("test.bin"), vec![0u8; 3074 * 2 - 1]).unwrap();
        let msg = load_cifar_dir(d).unwrap_err().to_string();
        assert!(
            msg.contains("test.bin") && msg.contains("not a positive multiple") && msg.contains("3074"),
            "{msg}"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(load_cifar_dir(empty.path()).is_err());
    }
}
