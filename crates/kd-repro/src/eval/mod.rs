//! `kd eval`: a network and a weights file scored on a dataset, the way the reference code
//! evaluates it.
//!
//! This is how a user checks that their PyTorch checkpoint imported correctly before
//! distilling from it: the number printed should be the one the checkpoint's authors report.
//! Classification prints `top1 = NN.NN` and `top5 = NN.NN` (and can write one CSV line per
//! sample); segmentation prints per-class IoU and `mIoU = NN.NN` on a Cityscapes tree;
//! detection prints COCOeval's twelve numbers and `box AP = NN.NN` on a COCO root.

use std::path::PathBuf;

use anyhow::{bail, Result};

mod classify;
mod dense;

pub use dense::{DenseArch, DET_NAMES, SEG_NAMES};

/// Arguments of `kd eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Network: a classification zoo name (`resnet18`, `resnet32x4`, `wrn_40_2`, ...),
    /// `pspnet_r18` / `deeplabv3_r50` / ... (MMSeg's d8 segmentors), or `fcos_r50` / ...
    /// (MMDet's FCOS with FPN and GN head).
    #[arg(long)]
    pub arch: String,
    /// Weights: safetensors or a PyTorch `torch.save` checkpoint (zip or legacy, nested or not).
    #[arg(long)]
    pub weights: PathBuf,
    /// Where the state dict sits inside the weights file (dotted key); auto-detected by default.
    #[arg(long)]
    pub weights_key: Option<String>,
    /// Data: a CIFAR-10/100 binary folder, an IDX (MNIST-style) folder or an ImageFolder root
    /// (`val/` inside it, or the split folder itself) for classifiers; a Cityscapes root for
    /// segmentors; a COCO root (`annotations/`, `val2017/`) for detectors.
    #[arg(long)]
    pub data: PathBuf,
    /// Split to evaluate where the data has several: `val` (Cityscapes), `val2017` (COCO);
    /// for an ImageFolder root, the sub-folder (default `val`).
    #[arg(long)]
    pub split: Option<String>,
    /// Classification: write `sample,label,prediction` per sample to this CSV file (`sample`
    /// is the record index for CIFAR and IDX, the path relative to the split folder for
    /// ImageFolder).
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// ImageFolder: the shorter side is resized to this before the centre crop (torchvision's
    /// ImageNet evaluation: 256).
    #[arg(long, default_value_t = 256)]
    pub resize: usize,
    /// ImageFolder: side of the centre crop fed to the network (224).
    #[arg(long, default_value_t = 224)]
    pub crop: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Runs `kd eval`.
pub fn run(a: &EvalArgs) -> Result<()> {
    if !a.weights.is_file() {
        bail!("--weights {}: file does not exist", a.weights.display());
    }
    if !a.data.exists() {
        bail!("--data {}: does not exist", a.data.display());
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = kd_core::device::parse(&a.device)?;
    if let Some(dense) = dense::DenseArch::parse(&a.arch)? {
        if a.predictions.is_some() {
            bail!("--predictions is for classifiers; {} is a dense model", a.arch);
        }
        return dense::run(&dense, a, device);
    }
    if !kd_classify::models::zoo::names().contains(&a.arch.as_str()) {
        bail!(
            "unknown --arch {:?}; classifiers: {}; segmentors: {}; detectors: {}",
            a.arch,
            kd_classify::models::zoo::names().join(", "),
            dense::SEG_NAMES,
            dense::DET_NAMES
        );
    }
    classify::run(a, device)
}
