//! Top-1/top-5 of a classifier, with the references' test-time preprocessing: CIFAR is
//! `ToTensor` then CIFAR-100's mean and std (RepDistiller's test transform, used for both
//! CIFARs), IDX is `ToTensor` then the dataset's mean and std, an ImageFolder is torchvision's
//! ImageNet evaluation (shorter side 256, centre crop 224 by default, ImageNet mean and std).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kd_classify::data::{
    decode_resize_center_crop, imagenet_normalise, index_image_folder, Dataset, FolderIndex, InMemoryDataset,
    Normalize,
};
use kd_core::models::ModelSpec;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::EvalArgs;
use crate::table::teacher_from;

/// The evaluation split.
enum Split {
    /// Decoded records (CIFAR, IDX) and their normalisation.
    Records(Arc<dyn Dataset>, Normalize),
    /// Files of an ImageFolder split, the folder itself, and the resize and crop sides.
    Folder(FolderIndex, PathBuf, usize, usize),
}

impl Split {
    fn len(&self) -> usize {
        match self {
            Split::Records(d, _) => d.len(),
            Split::Folder(i, ..) => i.files.len(),
        }
    }

    fn classes(&self) -> usize {
        match self {
            Split::Records(d, _) => d.num_classes(),
            Split::Folder(i, ..) => i.classes.len(),
        }
    }

    fn shape(&self) -> [usize; 3] {
        match self {
            Split::Records(d, _) => d.shape(),
            Split::Folder(.., crop) => [3, *crop, *crop],
        }
    }

    fn describe(&self, data: &Path) -> String {
        match self {
            Split::Records(d, _) => format!("{} ({} images)", d.name(), d.len()),
            Split::Folder(i, dir, resize, crop) => format!(
                "ImageFolder {} ({} images; resize {resize}, centre crop {crop})",
                dir.strip_prefix(data)
                    .map_or(dir.as_path(), |p| if p.as_os_str().is_empty() {
                        dir.as_path()
                    } else {
                        p
                    })
                    .display(),
                i.files.len()
            ),
        }
    }

    /// Samples `range` as a normalised `[B, C, H, W]` batch, their labels and names.
    fn batch(&self, range: std::ops::Range<usize>) -> Result<(Tensor, Vec<i64>, Vec<String>)> {
        let [c, h, w] = self.shape();
        let n = range.len();
        let mut x = Vec::with_capacity(n * c * h * w);
        let mut labels = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        match self {
            Split::Records(d, norm) => {
                for i in range {
                    let mut s = d.get(i)?;
                    norm.apply_in_place(&mut s.image);
                    x.extend_from_slice(&s.image.data);
                    labels.push(s.label);
                    names.push(i.to_string());
                }
            }
            Split::Folder(index, dir, resize, crop) => {
                let decoded: Vec<kd_core::Result<Vec<u8>>> = index.files[range.clone()]
                    .par_iter()
                    .map(|p| decode_resize_center_crop(p, *resize, *crop))
                    .collect();
                for (i, bytes) in range.zip(decoded) {
                    x.extend(imagenet_normalise(&bytes?));
                    labels.push(index.labels[i]);
                    let rel = index.files[i].strip_prefix(dir).unwrap_or(&index.files[i]);
                    names.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        let t = Tensor::from_slice(&x).view([n as i64, c as i64, h as i64, w as i64]);
        Ok((t, labels, names))
    }
}

/// The evaluation split of `data` (see [`EvalArgs::data`]).
fn open(data: &Path, split: Option<&str>, resize: usize, crop: usize) -> Result<Split> {
    if let Some((root, kind)) = kd_classify::data::detect_cifar(data) {
        let file = root.join(kind.test_file());
        let (pixels, labels) = kd_classify::data::read_cifar_bin(&file, kind)?;
        let name = format!("{}/test", kind.name());
        let test = InMemoryDataset::from_parts(name, [3, 32, 32], pixels, labels, kind.num_classes())?;
        return Ok(Split::Records(Arc::new(test), Normalize::cifar100()));
    }
    let find = |base: &str| {
        [base.to_string(), format!("{base}.gz")]
            .into_iter()
            .map(|f| data.join(f))
            .find(|p| p.is_file())
    };
    let [_, _, images, labels] = kd_classify::data::MNIST_FILES;
    if let (Some(images), Some(labels)) = (find(images), find(labels)) {
        let test = kd_classify::data::load_idx_pair(&images, &labels, 10, "idx/test")?;
        let fashion = data.to_string_lossy().to_lowercase().contains("fashion");
        let norm = if fashion {
            Normalize::fashion_mnist()
        } else {
            // MNIST's mean and std, as torchvision's MNIST examples normalise.
            Normalize::new(vec![0.1307], vec![0.3081])?
        };
        return Ok(Split::Records(Arc::new(test), norm));
    }
    let sub = data.join(split.unwrap_or("val"));
    let dir = if sub.is_dir() {
        sub
    } else if split.is_some() {
        bail!("--split: {} is not a folder", sub.display());
    } else {
        data.to_path_buf()
    };
    let index = index_image_folder(&dir).with_context(|| {
        format!(
            "{}: neither CIFAR binary, IDX files nor an ImageFolder tree (root/<class>/<image>)",
            data.display()
        )
    })?;
    if crop == 0 || crop > resize {
        bail!("--crop {crop} must be between 1 and --resize {resize}");
    }
    Ok(Split::Folder(index, dir, resize, crop))
}

/// Quotes a CSV field when it needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub(super) fn run(a: &EvalArgs, device: Device) -> Result<()> {
    let split = open(&a.data, a.split.as_deref(), a.resize, a.crop)?;
    let [c, _, _] = split.shape();
    // The network predicts the checkpoint's classes (1000 for an ImageNet model evaluated on a
    // subset of its classes); the data's labels must be among them.
    let read = kd_core::io::weights::ReadOptions {
        weights_key: a.weights_key.clone(),
    };
    let w = kd_core::io::weights::read(&a.weights, &read)?;
    let classes = crate::convert::head_classes(&w).unwrap_or(split.classes() as i64);
    if (split.classes() as i64) > classes {
        bail!(
            "{}: the data has {} classes but the checkpoint's head predicts {classes}",
            a.data.display(),
            split.classes()
        );
    }
    let spec = ModelSpec {
        in_channels: c as i64,
        num_classes: classes,
    };
    let teacher = teacher_from(|root| kd_classify::models::build(&a.arch, root, spec), &w, device)
        .with_context(|| format!("{} for {} classes, {c} input channels", a.arch, spec.num_classes))?;
    drop(w);
    eprintln!("==> {} on {}, device {device:?}", a.arch, split.describe(&a.data));
    let n = split.len();
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut csv = String::from("sample,label,prediction\n");
    let k = (spec.num_classes as i64).min(5);
    for start in (0..n).step_by(a.batch_size) {
        let (x, labels, names) = split.batch(start..(start + a.batch_size).min(n))?;
        let logits = teacher
            .forward(&x.to_device(device))
            .logits
            .to_device(Device::Cpu);
        let (_, idx) = logits.topk(k, 1, true, true);
        let idx = Vec::<i64>::try_from(idx.to_kind(Kind::Int64).flatten(0, -1))?;
        for (i, (&label, name)) in labels.iter().zip(&names).enumerate() {
            let best = &idx[i * k as usize..(i + 1) * k as usize];
            top1 += usize::from(best[0] == label);
            top5 += usize::from(best.contains(&label));
            let _ = writeln!(csv, "{},{label},{}", csv_field(name), best[0]);
        }
    }
    if n == 0 {
        bail!("{}: no samples to evaluate", a.data.display());
    }
    let pct = |c: usize| 100.0 * c as f64 / n as f64;
    println!("top1 = {:.2}", pct(top1));
    println!("top5 = {:.2}", pct(top5));
    println!("({n} samples, {} classes)", spec.num_classes);
    if let Some(p) = &a.predictions {
        kd_core::io::write_atomic(p, csv.as_bytes())?;
        eprintln!("predictions: {}", p.display());
    }
    Ok(())
}
