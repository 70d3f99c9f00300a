//! Opening the data a table runs on, and the two things the runner derives from it: the
//! normalisation statistics (computed from the training set itself, so any dataset in a
//! supported format works without a table of constants) and a fingerprint for the teacher cache.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use kd_classify::data::Dataset;
use kd_classify::data::Normalize;
use kd_classify::data::Subset;
use sha2::{Digest, Sha256};

/// The opened data of a run.
pub struct Opened {
    /// Training set.
    pub train: Arc<dyn Dataset>,
    /// Test set.
    pub test: Arc<dyn Dataset>,
    /// What it is, for table headers.
    pub label: String,
}

/// Which dataset `dir` holds, to pick per-dataset paper numbers: `"cifar-10"`, `"cifar-100"`,
/// `"idx"` (an MNIST-style folder) or `"embedded"` (`None`: the embedded subset).
pub fn kind(dir: Option<&Path>) -> String {
    match dir {
        None => "embedded".into(),
        Some(d) => match kd_classify::data::detect_cifar(d) {
            Some((_, k)) => k.name().into(),
            None => "idx".into(),
        },
    }
}

/// Opens `(train, test, label)`: the folder's CIFAR/IDX data, or the embedded subset.
/// `train_subset` keeps a class-balanced prefix of the training set; `resize` shrinks every image
/// to a square of that size once.
pub fn open(dir: Option<&Path>, train_subset: Option<usize>, resize: Option<usize>) -> Result<Opened> {
    let (mut train, mut test) = kd_classify::data::open_classification(dir)?;
    let mut label = match dir {
        Some(d) => format!("{} from {}", train.name(), d.display()),
        None => "embedded Fashion-MNIST subset (10k train / 2k test, 28×28 grey)".to_string(),
    };
    if let Some(size) = resize {
        train = Arc::new(kd_classify::data::resize_dataset(train.as_ref(), size, size)?);
        test = Arc::new(kd_classify::data::resize_dataset(test.as_ref(), size, size)?);
        label.push_str(&format!(", resized to {size}×{size}"));
    }
    let train: Arc<dyn Dataset> = match train_subset {
        Some(n) if n < train.len() => {
            label.push_str(&format!(", {n} training samples"));
            Arc::new(Subset::balanced(train, n)?)
        }
        _ => train,
    };
    Ok(Opened { train, test, label })
}

/// Per-channel mean and standard deviation of the (un-augmented) training images.
pub fn channel_stats(ds: &dyn Dataset) -> Result<Normalize> {
    let c = ds.shape()[0];
    let (mut sum, mut sq, mut n) = (vec![0f64; c], vec![0f64; c], 0f64);
    for i in 0..ds.len() {
        let img = ds.get(i)?.image;
        let plane = img.h * img.w;
        for ch in 0..c {
            for &v in &img.data[ch * plane..(ch + 1) * plane] {
                sum[ch] += v as f64;
                sq[ch] += (v as f64) * (v as f64);
            }
        }
        n += plane as f64;
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std: Vec<f32> = sq
        .iter()
        .zip(&mean)
        .map(|(q, &m)| ((q / n - (m as f64).powi(2)).max(1e-12)).sqrt() as f32)
        .collect();
    Ok(Normalize { mean, std })
}

/// A content fingerprint of a dataset: its name, size, every label and every 97th image.
pub fn fingerprint(ds: &dyn Dataset) -> Result<String> {
    let mut h = Sha256::new();
    h.update(ds.name().as_bytes());
    h.update((ds.len() as u64).to_le_bytes());
    for i in 0..ds.len() {
        let s = ds.get(i)?;
        h.update(s.label.to_le_bytes());
        if i % 97 == 0 {
            for v in &s.image.data {
                h.update(v.to_le_bytes());
            }
        }
    }
    Ok(h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect())
}
