//! A class-balanced Fashion-MNIST subset compiled into the library.
//!
//! Examples, tests and a first run must work offline and without choosing a dataset, yet the
//! data must be real enough for distillation to show an effect. 10 000 training and 2 000 test
//! images (1 000 / 200 per class, about 5 MB as gzip-compressed IDX) satisfy both. The files
//! are the official format and are parsed by the same IDX reader as a downloaded copy, so the
//! embedded path exercises the real loader. Provenance, licence (MIT, Zalando SE) and how the
//! subset was chosen are in `crates/kd-classify/data/fashion-mnist-subset/`.

use std::path::Path;

use crate::data::idx::{decode_idx_images, decode_idx_labels, pair};
use crate::data::InMemoryDataset;
use kd_core::Result;

/// Fashion-MNIST class names, indexed by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const NAME: &str = "fashion-mnist-subset";

const TRAIN_IMAGES: &[u8] = include_bytes!("../../data/fashion-mnist-subset/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] = include_bytes!("../../data/fashion-mnist-subset/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] = include_bytes!("../../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] = include_bytes!("../../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz");

fn split(images: &[u8], labels: &[u8], files: [&str; 2], split: &str) -> Result<InMemoryDataset> {
    let ip = Path::new("<embedded>").join(NAME).join(files[0]);
    let lp = Path::new("<embedded>").join(NAME).join(files[1]);
    let imgs = decode_idx_images(images, &ip)?;
    let labs = decode_idx_labels(labels, &lp)?;
    pair(imgs, labs, &ip, &lp, 10, format!("{NAME}/{split}"))?
        .with_class_names(FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect())
}

/// The embedded subset as `(train, test)`: 10 000 and 2 000 grayscale 28×28 images, 1 000 and
/// 200 per class, named `fashion-mnist-subset/train` and `fashion-mnist-subset/test`, with
/// [`FASHION_MNIST_CLASSES`] attached. Each call decompresses the data afresh.
pub fn fashion_mnist_subset() -> Result<(InMemoryDataset, InMemoryDataset)> {
    let train = split(
        TRAIN_IMAGES,
        TRAIN_LABELS,
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"],
        "train",
    )?;
    let test = split(
        TEST_IMAGES,
        TEST_LABELS,
        ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
        "test",
    )?;
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    #[test]
    fn subset_is_balanced() {
        let (train, test) = fashion_mnist_subset().unwrap();
        assert_eq!((train.len(), test.len()), (10_000, 2_000));
        assert_eq!(train.shape(), [1, 28, 28]);
        assert_eq!(train.class_counts(), vec![1000; 10]);
        assert_eq!(test.class_counts(), vec![200; 10]);
        assert_eq!(train.name(), "fashion-mnist-subset/train");
        assert_eq!(train.class_names()[9], "Ankle boot");
        // Real images, not zeros: the mean is near the dataset statistic 0.286.
        let mean =
            train.pixels().iter().map(|&p| f64::from(p)).sum::<f64>() / train.pixels().len() as f64 / 255.0;
        assert!((mean - 0.286).abs() < 0.02, "{mean}");
    }
}
