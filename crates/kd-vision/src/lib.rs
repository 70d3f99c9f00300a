//! kd-vision: what the vision task crates share.
//!
//! Segmentation and detection both feed ResNet trunks with resized, normalised RGB images, draw
//! result pictures, and write generated stand-in datasets in a real on-disk format; the
//! classification zoo shares their BatchNorm initialisation. Keeping one copy here keeps the
//! stacks' inputs and weights identical and keeps the task crates from depending on each other.
//!
//! - [`image_ops`]: bilinear/nearest resizing with aligned centres, ImageNet normalisation,
//!   de-normalisation for pictures, PNG writing;
//! - [`resnet_v1c`] and [`layers`]: the ResNet(-V1c) trunk at output stride 8 (dilated, for
//!   segmentation) or 32 (for an FPN), with MMSeg/MMDet variable names, and its building blocks;
//! - [`feature_cwd`]: CWD on any pair of feature taps, with a task loss from the caller (the
//!   dense-feature baseline of the GDD tables);
//! - [`generated`]: the atomic writer of generated stand-in data trees.

pub mod feature_cwd;
pub mod generated;
pub mod image_ops;
pub mod layers;
pub mod pil_resize;
pub mod resnet_v1c;

pub use feature_cwd::{FeatureCwd, FeatureCwdLevel};
pub use resnet_v1c::{check_backbone, ResNetV1c, BACKBONES};
