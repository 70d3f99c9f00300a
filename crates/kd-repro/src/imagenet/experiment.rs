//! The ImageNet table description (`imagenet`): ResNet-34 → ResNet-18 from image files.
//!
//! The single-teacher schema, as the dense tables use: the papers distil from one released
//! teacher (torchvision's ResNet-34, given with `--teacher`), so it is shared by every row and
//! seed. The data section says how files become inputs (input size, the evaluation resize)
//! and what stand-in tree is generated without `--data`.

use anyhow::{bail, Result};
use kd_classify::data::FolderSynthConfig;
use serde::{Deserialize, Serialize};

use crate::methods::Method;
use crate::table::{NetClasses, PictureRows, Plan, SingleTeacherExp};

/// A whole ImageNet experiment: the single-teacher schema with the folder data section,
/// cross-entropy as the task loss and no picture.
pub type ImageNetExperiment = SingleTeacherExp<FolderData, CrossEntropy, ZooNet, NoPicture>;

/// Where the images come from and how they are fed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderData {
    /// The generated stand-in used without `--data`.
    pub synth: FolderSynthConfig,
    /// Side of the square network input (224 for ImageNet): `RandomResizedCrop(size)` and
    /// flip in training, the shorter side resized to `size · 256 / 224` and the centre crop in
    /// evaluation, ImageNet normalisation throughout.
    pub size: usize,
    /// `RandomResizedCrop`'s range of the crop's area fraction (default `[0.08, 1.0]`,
    /// torchvision's); the quick scale narrows it so that few epochs suffice [R].
    #[serde(default = "default_crop_scale")]
    pub crop_scale: [f64; 2],
    /// Keep a class-balanced prefix of this many training images (e.g. for a short check on
    /// the real data); all by default.
    #[serde(default)]
    pub train_subset: Option<usize>,
}

fn default_crop_scale() -> [f64; 2] {
    [0.08, 1.0]
}

/// The task loss: cross-entropy on the labels (the only one; the section takes no keys).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossEntropy {}

/// A zoo network by name; its class count is the data's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZooNet {
    /// Zoo name (`resnet18`, `resnet34`, ...).
    pub arch: String,
}

impl NetClasses for ZooNet {
    /// Every zoo network is built for the data's classes, so teacher and students agree.
    fn num_classes(&self) -> i64 {
        0
    }
}

/// This table draws no picture.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoPicture {}

impl PictureRows for NoPicture {
    fn rows(&self) -> &[String] {
        &[]
    }
}

/// The plan; the methods are the logit ones (none, KD) and FitNets on the taps.
pub fn plan(exp: &ImageNetExperiment) -> Result<Plan<ZooNet>> {
    let zoo = kd_classify::models::zoo::names();
    for net in std::iter::once(&exp.teacher.net).chain(exp.students.iter().map(|s| &s.net)) {
        if !zoo.contains(&net.arch.as_str()) {
            bail!("unknown arch {:?}; known: {}", net.arch, zoo.join(", "));
        }
    }
    if exp.data.size < 16 {
        bail!("[data] size = {}: at least 16 pixels", exp.data.size);
    }
    if exp.data.train_subset == Some(0) {
        bail!("[data] train_subset = 0: at least 1 (leave it out to train on the whole set)");
    }
    let [lo, hi] = exp.data.crop_scale;
    if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi && hi <= 1.0) {
        bail!("[data] crop_scale = [{lo}, {hi}]: need 0 < lo ≤ hi ≤ 1 (fractions of the image area)");
    }
    exp.plan(|m| match m {
        Method::None | Method::Kd(_) | Method::Dkd(_) | Method::Fitnets(_) => Ok(()),
        other => bail!(
            "method {:?} is not an ImageNet method here (none, kd, dkd, fitnets)",
            other.kind()
        ),
    })
}
