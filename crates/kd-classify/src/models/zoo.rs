//! The model zoo: every architecture of the CIFAR distillation benchmark, torchvision's
//! ImageNet ResNets, and the LeNet-5 pair of the data-efficiency literature, built by name.
//!
//! Configuration files and the command line name models by string (`"resnet32x4"`), so the
//! mapping from names to architectures lives in one table; an unknown name is an error that
//! lists the known ones.

use tch::nn;

use super::imagenet::imagenet_resnet;
use super::lenet::{lenet, LENET5_HALF_WIDTHS, LENET5_WIDTHS};
use super::resnet::{cifar_resnet, WIDTHS, WIDTHS_X4};
use super::wrn::wide_resnet;
use super::{Model, ModelSpec, StagedNet};
use kd_core::{KdError, Result};

type Build = fn(&nn::Path<'_>, &str, ModelSpec) -> Result<StagedNet>;

const ZOO: &[(&str, Build)] = &[
    ("resnet8", |p, n, s| cifar_resnet(p, n, 8, WIDTHS, s)),
    ("resnet14", |p, n, s| cifar_resnet(p, n, 14, WIDTHS, s)),
    ("resnet20", |p, n, s| cifar_resnet(p, n, 20, WIDTHS, s)),
    ("resnet32", |p, n, s| cifar_resnet(p, n, 32, WIDTHS, s)),
    ("resnet44", |p, n, s| cifar_resnet(p, n, 44, WIDTHS, s)),
    ("resnet56", |p, n, s| cifar_resnet(p, n, 56, WIDTHS, s)),
    ("resnet110", |p, n, s| cifar_resnet(p, n, 110, WIDTHS, s)),
    ("resnet8x4", |p, n, s| cifar_resnet(p, n, 8, WIDTHS_X4, s)),
    ("resnet32x4", |p, n, s| cifar_resnet(p, n, 32, WIDTHS_X4, s)),
    ("wrn_16_1", |p, n, s| wide_resnet(p, n, 16, 1, 0.0, s)),
    ("wrn_16_2", |p, n, s| wide_resnet(p, n, 16, 2, 0.0, s)),
    ("wrn_40_1", |p, n, s| wide_resnet(p, n, 40, 1, 0.0, s)),
    ("wrn_40_2", |p, n, s| wide_resnet(p, n, 40, 2, 0.0, s)),
    ("resnet18", |p, n, s| imagenet_resnet(p, n, 18, s)),
    ("resnet34", |p, n, s| imagenet_resnet(p, n, 34, s)),
    ("resnet50", |p, n, s| imagenet_resnet(p, n, 50, s)),
    ("resnet101", |p, n, s| imagenet_resnet(p, n, 101, s)),
    ("lenet5", |p, n, s| lenet(p, n, LENET5_WIDTHS, s)),
    ("lenet5_half", |p, n, s| lenet(p, n, LENET5_HALF_WIDTHS, s)),
];

const NAMES: &[&str] = &[
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "lenet5",
    "lenet5_half",
];

/// The names [`build`] accepts, in a stable order.
pub fn names() -> &'static [&'static str] {
    NAMES
}

/// Builds the zoo model `name` for `spec`, with its variables under `path`.
///
/// Fails with [`KdError::Invalid`] for an unknown name (the message lists the known names) or
/// a spec with fewer than one input channel or class.
pub fn build(name: &str, path: &nn::Path<'_>, spec: ModelSpec) -> Result<Box<dyn Model>> {
    let (_, f) = ZOO.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        KdError::invalid(format!(
            "unknown model {name:?}; known models: {}",
            NAMES.join(", ")
        ))
    })?;
    Ok(Box::new(f(path, name, spec)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_table() {
        let table: Vec<&str> = ZOO.iter().map(|(n, _)| *n).collect();
        assert_eq!(table, names());
    }
}
