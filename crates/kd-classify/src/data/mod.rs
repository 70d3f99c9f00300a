//! Classification datasets, augmentation and batching.
//!
//! Every small on-disk format is decoded into an [`InMemoryDataset`] when opened: decoding once
//! turns format errors into immediate, file-naming errors and keeps epochs free of I/O. An
//! ImageNet-sized folder is the exception: [`FolderSamples`] decodes each image when it is
//! drawn, because its augmentation needs the full-resolution file. [`open_classification`] is the single entry point behind a
//! `--data` option; without a folder it falls back to the Fashion-MNIST subset compiled into
//! the crate, so everything runs offline. [`ClassLoader`] is kd-core's seeded loader over a
//! [`Dataset`]: images augmented per sample, stacked into `x [B, C, H, W]` and class labels.

use std::path::Path;
use std::sync::Arc;

use kd_core::{KdError, Result};

mod augment;
mod cifar;
mod embedded;
mod folder;
mod idx;
mod imagefolder;
mod loader;
mod memory;
mod resize;
mod subset;
mod synth_folder;

pub use augment::{
    crop_padded, hflip_in_place, AugDraw, Augment, Normalize, CIFAR100_MEAN, CIFAR100_STD, CIFAR10_MEAN,
    CIFAR10_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
};
pub use cifar::{detect_cifar, load_cifar_dir, read_cifar_bin, CifarKind, CIFAR_IMAGE_BYTES};
pub use embedded::{fashion_mnist_subset, FASHION_MNIST_CLASSES};
pub use folder::{
    folder_loader, imagenet_normalise, random_resized_crop, FolderLoader, FolderSamples, FolderTransform,
};
pub use idx::{
    decode_idx_images, decode_idx_labels, load_idx_pair, load_mnist_dir, read_idx_images, read_idx_labels,
    write_idx_images, write_idx_labels, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, MNIST_FILES,
};
pub use imagefolder::{
    decode_image_file, decode_resize_center_crop, index_image_folder, load_image_folder,
    load_unlabelled_folder, FolderIndex, IMAGE_EXTENSIONS,
};
pub use loader::{class_loader, ClassLoader, ImageSamples, StackImages};
pub use memory::InMemoryDataset;
pub use resize::resize_dataset;
pub use subset::Subset;
pub use synth_folder::{generate_image_folder, FolderSynthConfig, FOLDER_SYNTH_VERSION};

/// A decoded image, channels-first, values in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Channels.
    pub c: usize,
    /// Height in pixels.
    pub h: usize,
    /// Width in pixels.
    pub w: usize,
    /// `c * h * w` values, CHW order.
    pub data: Vec<f32>,
}

/// One labelled sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The image.
    pub image: Image,
    /// Class label in `0..K`, or `-1` when the sample is unlabelled.
    pub label: i64,
    /// Position of the sample in its dataset.
    pub index: usize,
}

/// A random-access dataset of images.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The raw (un-augmented) sample at `index`.
    fn get(&self, index: usize) -> Result<Sample>;
    /// Number of classes K.
    fn num_classes(&self) -> usize;
    /// Image shape `[C, H, W]` every sample has (after any fixed resize).
    fn shape(&self) -> [usize; 3];
    /// A short name for logs and results, e.g. `"fashion-mnist-subset/train"`.
    fn name(&self) -> String;
}

/// What [`open_classification`] accepts, for error messages.
const EXPECTED_LAYOUTS: &str = "expected data_batch_1.bin..data_batch_5.bin + test_batch.bin \
    (CIFAR-10) or train.bin + test.bin (CIFAR-100), directly or in cifar-10-batches-bin/ or \
    cifar-100-binary/; or train-images-idx3-ubyte, train-labels-idx1-ubyte, \
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz (MNIST, Fashion-MNIST)";

/// Opens a classification dataset as `(train, test)`.
///
/// With a folder, detects its layout: CIFAR-10/100 binary (see [`load_cifar_dir`]) first,
/// then MNIST-style IDX files (see [`load_mnist_dir`]). With `None`, returns the embedded
/// Fashion-MNIST subset ([`fashion_mnist_subset`]). Errors say what was expected.
pub fn open_classification(dir: Option<&Path>) -> Result<(Arc<dyn Dataset>, Arc<dyn Dataset>)> {
    let (train, test) = match dir {
        None => fashion_mnist_subset()?,
        Some(d) if !d.exists() => {
            return Err(KdError::invalid(format!(
                "--data {}: folder does not exist",
                d.display()
            )))
        }
        Some(d) if !d.is_dir() => {
            return Err(KdError::invalid(format!("--data {}: not a folder", d.display())))
        }
        Some(d) if detect_cifar(d).is_some() => load_cifar_dir(d)?,
        Some(d) if idx::has_idx_files(d) => load_mnist_dir(d)?,
        Some(d) => {
            return Err(KdError::invalid(format!(
                "no CIFAR-10/100 binary or IDX files found in {}; {EXPECTED_LAYOUTS}",
                d.display()
            )))
        }
    };
    Ok((Arc::new(train), Arc::new(test)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_classification_detects_layouts() {
        let (train, test) = open_classification(None).unwrap();
        assert_eq!((train.len(), test.len()), (10_000, 2_000));

        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let msg = open_classification(Some(&missing)).err().unwrap().to_string();
        assert!(msg.contains("nope: folder does not exist"), "{msg}");
        let msg = open_classification(Some(tmp.path())).err().unwrap().to_string();
        assert!(msg.contains("no CIFAR-10/100 binary or IDX files found"), "{msg}");

        let d = tmp.path();
        write_idx_images(&d.join("train-images-idx3-ubyte.gz"), 2, 2, &[0; 12], true).unwrap();
        write_idx_labels(&d.join("train-labels-idx1-ubyte.gz"), &[0, 1, 2], true).unwrap();
        write_idx_images(&d.join("t10k-images-idx3-ubyte.gz"), 2, 2, &[0; 4], true).unwrap();
        write_idx_labels(&d.join("t10k-labels-idx1-ubyte.gz"), &[3], true).unwrap();
        let (train, test) = open_classification(Some(d)).unwrap();
        assert_eq!((train.len(), test.len(), train.shape()), (3, 1, [1, 2, 2]));

        let c = tmp.path().join("c");
        std::fs::create_dir_all(c.join("cifar-100-binary")).unwrap();
        std::fs::write(c.join("cifar-100-binary/train.bin"), [0u8; 3074]).unwrap();
        std::fs::write(c.join("cifar-100-binary/test.bin"), [1u8; 3074]).unwrap();
        let (train, _) = open_classification(Some(&c)).unwrap();
        assert_eq!((train.num_classes(), train.shape()), (100, [3, 32, 32]));
    }
}
