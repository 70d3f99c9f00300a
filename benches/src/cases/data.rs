//! The data pipelines, timed as images per second over one epoch: CIFAR-100 binary records
//! (decode to floats, pad-4 random crop, flip, normalise, batch 64) and Cityscapes-format PNGs
//! (decode, label-id mapping, MMSeg's rescale / crop / flip / photometric distortion,
//! normalise, batch 8). Both data sets are generated once into the data folder, in the real
//! file formats, and read through kd-core's readers and loaders.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kd_classify::data::{
    class_loader, read_cifar_bin, Augment, CifarKind, ClassLoader, InMemoryDataset, CIFAR_IMAGE_BYTES,
};
use kd_core::data::BatchSource;
use kd_core::{KdError, Result};
use kd_seg::data::{
    generate_synthetic_cityscapes, labels::LABEL_TO_TRAIN, open_cityscapes, PhotoOp, SegAugConfig, SegLoader,
    SegSource, SynthConfig,
};
use rand::{Rng as _, SeedableRng};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::case::{Case, Mode, Spec};
use crate::settings::Settings;

/// Images in the synthetic CIFAR-100 file.
const CIFAR_IMAGES: usize = 5120;
const CIFAR_BATCH: usize = 64;
/// Samples of the value check (the first batch of epoch 0, in index order).
const CHECK: usize = 8;

/// One Cityscapes-format configuration: image size, images, crop, batch.
#[derive(Clone, Copy)]
struct SegRow {
    label: &'static str,
    w: usize,
    h: usize,
    images: usize,
    crop: usize,
    batch: usize,
}

const SEG_ROWS: [SegRow; 2] = [
    SegRow {
        label: "quick",
        w: 256,
        h: 128,
        images: 64,
        crop: 64,
        batch: 8,
    },
    SegRow {
        label: "half",
        w: 1024,
        h: 512,
        images: 16,
        crop: 512,
        batch: 8,
    },
];

pub(super) fn specs() -> Vec<Spec> {
    let mut v = vec![Spec {
        kind: "cifar_pipeline",
        label: "real",
        shape: format!("{CIFAR_IMAGES} × [3, 32, 32], batch {CIFAR_BATCH}"),
        modes: vec![Mode::Epoch],
        params: json!({ "batch": CIFAR_BATCH, "pad": 4, "images": CIFAR_IMAGES }),
        sample_size: 10,
        throughput: Some(CIFAR_IMAGES as u64),
        min_bytes: None,
        build: Box::new(|s| Ok(Box::new(CifarCase::new(s)?) as Box<dyn Case>)),
    }];
    for row in SEG_ROWS {
        v.push(Spec {
            kind: "seg_pipeline",
            label: row.label,
            shape: format!("{} × {}×{} PNG → [{b}, 3, {c}, {c}]", row.images, row.w, row.h, b = row.batch, c = row.crop),
            modes: vec![Mode::Epoch],
            params: json!({ "batch": row.batch, "crop": row.crop, "images": row.images, "width": row.w, "height": row.h }),
            sample_size: 10,
            throughput: Some(row.images as u64),
            min_bytes: None,
            build: Box::new(move |s| Ok(Box::new(SegCase::new(s, row)?) as Box<dyn Case>)),
        });
    }
    v
}

/// Writes `n` random CIFAR-100 records to `path` (atomically), unless a file of that size is
/// already there.
fn write_cifar(path: &Path, n: usize) -> Result<()> {
    let rec = CifarKind::Cifar100.record_size();
    if fs::metadata(path).is_ok_and(|m| m.len() == (n * rec) as u64) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| KdError::file(dir, e))?;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(61);
    let mut bytes = Vec::with_capacity(n * rec);
    for _ in 0..n {
        let fine: u8 = r.gen_range(0..100);
        bytes.push(fine / 5);
        bytes.push(fine);
        bytes.extend((0..CIFAR_IMAGE_BYTES).map(|_| r.gen::<u8>()));
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(|e| KdError::file(&tmp, e))?;
    f.write_all(&bytes).map_err(|e| KdError::file(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| KdError::file(path, e))
}

/// The CIFAR-100 epoch: kd-core's binary reader, the classification loader with the CIFAR-100 augmentation.
struct CifarCase {
    file: PathBuf,
    loader: ClassLoader,
    epoch: usize,
}

impl CifarCase {
    fn new(s: &Settings) -> Result<Self> {
        let file = s.data_dir.join("cifar-100-binary").join("train.bin");
        write_cifar(&file, CIFAR_IMAGES)?;
        let (pixels, labels) = read_cifar_bin(&file, CifarKind::Cifar100)?;
        let ds = InMemoryDataset::from_parts("cifar-100/bench", [3, 32, 32], pixels, labels, 100)?;
        let loader = class_loader(Arc::new(ds), CIFAR_BATCH, Augment::cifar100(), false, 7)?;
        Ok(Self {
            file,
            loader,
            epoch: 0,
        })
    }
}

impl Case for CifarCase {
    fn run(&mut self, _mode: Mode) -> Result<f64> {
        self.epoch += 1;
        epoch_images(&self.loader, self.epoch)
    }

    fn export(&mut self) -> Result<Vec<(String, Tensor)>> {
        let idx: Vec<usize> = (0..CHECK).collect();
        let batch = self.loader.batch_of(&idx, 0, true)?;
        let draws: Vec<i64> = idx
            .iter()
            .flat_map(|&i| {
                let d = self.loader.source().draw(&mut self.loader.rng_of(i, 0));
                let (dy, dx) = d.crop.map_or((-1, -1), |(y, x)| (y as i64, x as i64));
                [dy, dx, i64::from(d.flip)]
            })
            .collect();
        let norm = self
            .loader
            .source()
            .augment()
            .normalize
            .as_ref()
            .map_or((vec![0.0], vec![1.0]), |n| (n.mean.clone(), n.std.clone()));
        Ok(vec![
            ("in.file".into(), path_tensor(&self.file)),
            (
                "in.draws".into(),
                Tensor::from_slice(&draws).view([CHECK as i64, 3]),
            ),
            ("in.mean".into(), Tensor::from_slice(&norm.0)),
            ("in.std".into(), Tensor::from_slice(&norm.1)),
            ("out.x".into(), batch.x),
            ("out.y".into(), batch.target.tensor().shallow_clone()),
        ])
    }
}

/// A path as a byte tensor, so the check file can carry it.
fn path_tensor(p: &Path) -> Tensor {
    Tensor::from_slice(p.to_string_lossy().as_bytes())
}

/// Runs one training epoch of `source` and returns the number of images delivered.
fn epoch_images(source: &dyn BatchSource, epoch: usize) -> Result<f64> {
    let mut n = 0usize;
    for b in source.batches(epoch, None, true) {
        n += b?.len();
    }
    Ok(n as f64)
}

/// The Cityscapes epoch: generated PNGs, `open_cityscapes`, `SegLoader` with MMSeg's pipeline.
struct SegCase {
    loader: SegLoader,
    files: Vec<(PathBuf, PathBuf)>,
    epoch: usize,
}

impl SegCase {
    fn new(s: &Settings, row: SegRow) -> Result<Self> {
        let root = s
            .data_dir
            .join(format!("cityscapes-{}x{}-{}", row.w, row.h, row.images));
        let cfg = SynthConfig {
            width: row.w,
            height: row.h,
            train: row.images,
            val: 0,
            seed: 0,
        };
        generate_synthetic_cityscapes(&root, &cfg)?;
        let ds = open_cityscapes(&root, "train", None)?;
        let files = (0..ds.len())
            .map(|i| {
                let (a, b) = ds.files(i).expect("index in range");
                (a.to_path_buf(), b.to_path_buf())
            })
            .collect();
        let aug = SegAugConfig::with_crop(row.crop, row.crop);
        let loader = kd_seg::data::seg_loader(Arc::new(ds), row.batch, Some(aug), false, 7)?;
        Ok(Self {
            loader,
            files,
            epoch: 0,
        })
    }
}

impl Case for SegCase {
    fn run(&mut self, _mode: Mode) -> Result<f64> {
        self.epoch += 1;
        epoch_images(&self.loader, self.epoch)
    }

    fn export(&mut self) -> Result<Vec<(String, Tensor)>> {
        let n = CHECK.min(self.files.len());
        let idx: Vec<usize> = (0..n).collect();
        let batch = self.loader.batch_of(&idx, 0, true)?;
        let list: Vec<String> = self
            .files
            .iter()
            .map(|(a, b)| format!("{}\t{}", a.display(), b.display()))
            .collect();
        let mut out = vec![
            ("in.lut".to_string(), Tensor::from_slice(&LABEL_TO_TRAIN)),
            (
                "in.files".to_string(),
                Tensor::from_slice(list.join("\n").as_bytes()),
            ),
            ("out.x".to_string(), batch.x),
            ("out.y".to_string(), batch.target.tensor().to_kind(Kind::Uint8)),
        ];
        for &i in &idx {
            let t = kd_seg::data::trace_of(&self.loader, i, 0)?;
            let (x0, y0, cw, ch) = t.crop;
            let geo = [t.resized.0, t.resized.1, x0, y0, cw, ch, usize::from(t.flip)].map(|v| v as i64);
            out.push((format!("in.geometry{i}"), Tensor::from_slice(&geo)));
            let ops: Vec<f32> = t
                .photometric
                .iter()
                .flat_map(|op| match *op {
                    PhotoOp::Brightness(v) => [0.0, v],
                    PhotoOp::Contrast(v) => [1.0, v],
                    PhotoOp::Saturation(v) => [2.0, v],
                    PhotoOp::Hue(v) => [3.0, v],
                })
                .collect();
            out.push((
                format!("in.photometric{i}"),
                Tensor::from_slice(&ops).view([-1, 2]),
            ));
        }
        Ok(out)
    }
}
