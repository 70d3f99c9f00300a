//! The classification zoo: CIFAR ResNets and WRNs, torchvision's ImageNet ResNets, LeNet-5 /
//! LeNet-5-half, built by name.
//!
//! Every network is a [`StagedNet`]: stages whose outputs are the taps, then global pooling and
//! one linear layer, so it supports the optional [`Model`] capabilities too (re-entry after a
//! tap, the pooled classifier head on its own, the linear head's parameters).

use kd_core::models::{check_input_shape, Model, ModelOutput, ModelSpec, Tap};

mod blocks;
pub mod imagenet;
pub mod lenet;
pub mod resnet;
mod staged;
pub mod wrn;
pub mod zoo;

pub use staged::StagedNet;
pub use zoo::build;

/// A frozen zoo teacher: builds `arch` for `spec` and loads weights exported by
/// `kd_core::train::export_student` from `path`. Errors name the file and any missing or
/// mis-shaped tensor.
pub fn load_teacher(
    arch: &str,
    spec: ModelSpec,
    path: &std::path::Path,
    device: tch::Device,
) -> kd_core::Result<kd_core::distill::Teacher> {
    kd_core::distill::Teacher::load_built(|root| build(arch, root, spec), path, device)
}

#[cfg(test)]
mod tests;
