//! `kd convert`: weights rewritten as a safetensors file for PyTorch (`--naming pytorch`) or
//! for this project (`--naming kd`).
//!
//! The network is built and filled from the input first, so a file that does not fit the
//! architecture fails here, with the key lists, rather than later in someone's
//! `load_state_dict`. With PyTorch naming the output is exactly the state dict of the original
//! module definition (torchvision's `ResNet`, RepDistiller's CIFAR nets, MMSeg's and MMDet's
//! models), `num_batches_tracked` buffers included, so
//! `model.load_state_dict(safetensors.torch.load_file(OUT))` succeeds in strict mode. The class
//! and input-channel counts are read from the input's head and first convolution.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kd_core::distill::sorted_vars;
use kd_core::io::weights::{self, PrefixMap, ReadOptions};
use kd_core::models::{Model, ModelSpec};
use tch::Device;

use crate::eval::DenseArch;
use crate::table::teacher_from;

/// Builds a network under a var-store path.
type BuildNet = dyn Fn(&tch::nn::Path<'_>) -> kd_core::Result<Box<dyn Model>>;

/// Arguments of `kd convert`.
#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Input weights: safetensors (e.g. a run's `student.safetensors`) or a `torch.save` file.
    pub input: PathBuf,
    /// The network the weights belong to (as for `kd eval --arch`).
    #[arg(long)]
    pub arch: String,
    /// Output safetensors file.
    #[arg(long)]
    pub to: PathBuf,
    /// `pytorch`: the original module definitions' state-dict names, with
    /// `num_batches_tracked`; `kd`: this project's variable names.
    #[arg(long, value_enum, default_value = "pytorch")]
    pub naming: Naming,
    /// Where the state dict sits inside the input (dotted key); auto-detected by default.
    #[arg(long)]
    pub weights_key: Option<String>,
}

/// The names a written weights file uses (`--naming`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Naming {
    /// The original PyTorch module definitions' state-dict names, with `num_batches_tracked`.
    Pytorch,
    /// This project's variable names.
    Kd,
}

impl Naming {
    /// The name on the command line and in a file's metadata.
    pub fn name(self) -> &'static str {
        match self {
            Naming::Pytorch => "pytorch",
            Naming::Kd => "kd",
        }
    }

    /// `vars` (this project's names, sorted) under these names.
    pub fn apply(self, vars: Vec<(String, tch::Tensor)>) -> Vec<(String, tch::Tensor)> {
        match self {
            Naming::Pytorch => weights::to_file_names(&vars, &PrefixMap::default()),
            Naming::Kd => vars,
        }
    }
}

/// The first tensor among `keys` in `w`, with its name.
fn first<'a>(w: &'a weights::Weights, keys: &[&str]) -> Option<&'a tch::Tensor> {
    keys.iter().find_map(|k| w.get(k))
}

/// The class count of a classifier's weights, from its linear head.
pub(crate) fn head_classes(w: &weights::Weights) -> Option<i64> {
    first(w, &["fc.bias", "classifier.bias"]).map(|t| t.size()[0])
}

/// Runs `kd convert`.
pub fn run(a: &ConvertArgs) -> Result<()> {
    if a.to.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("--to {}: the output is a .safetensors file", a.to.display());
    }
    let read = ReadOptions {
        weights_key: a.weights_key.clone(),
    };
    let w = weights::read(&a.input, &read)?;
    let size0 = |t: Option<&tch::Tensor>, what: &str| -> Result<i64> {
        t.map(|t| t.size()[0])
            .with_context(|| format!("{}: cannot tell the {what} (no {what} tensor)", a.input.display()))
    };
    let dense = DenseArch::parse(&a.arch)?;
    let build: Box<BuildNet> = match dense {
        Some(DenseArch::Seg(mut cfg)) => {
            cfg.num_classes = size0(first(&w, &["decode_head.conv_seg.bias"]), "class count")?;
            Box::new(move |root| kd_seg::models::build(root, &cfg).map(|n| Box::new(n) as Box<dyn Model>))
        }
        Some(DenseArch::Det(backbone)) => {
            let k = size0(first(&w, &["bbox_head.conv_cls.bias"]), "class count")?;
            let cfg = kd_det::models::DetectorConfig::fcos(&backbone, k);
            Box::new(move |root| kd_det::models::build(root, &cfg).map(|n| Box::new(n) as Box<dyn Model>))
        }
        None => {
            let classes = head_classes(&w).with_context(|| {
                format!(
                    "{}: cannot tell the class count (no class count tensor)",
                    a.input.display()
                )
            })?;
            let in_channels = first(&w, &["conv1.weight", "features.0.weight"])
                .map(|t| t.size()[1])
                .unwrap_or(3);
            let spec = ModelSpec {
                in_channels,
                num_classes: classes,
            };
            let arch = a.arch.clone();
            Box::new(move |root| kd_classify::models::build(&arch, root, spec))
        }
    };
    let net = teacher_from(|root| build(root), &w, Device::Cpu)?;
    drop(w);
    let vars = sorted_vars(net.var_store());
    let out = a.naming.apply(vars);
    let meta = serde_json::json!({
        "arch": a.arch,
        "naming": a.naming.name(),
        "source": a.input.display().to_string(),
    });
    kd_core::io::checkpoint::save(&a.to, &out, &meta)?;
    println!(
        "wrote {} tensors ({} naming) to {}",
        out.len(),
        a.naming.name(),
        a.to.display()
    );
    Ok(())
}
