//! Batches and the one seeded loader every task uses.
//!
//! Every sample carries its dataset index: self-regulated KD counts per-sample participation and
//! KD³ logs which web images were selected, so the index must survive shuffling and batching.
//! A batch's target is typed ([`Target`]): a class label, a label map or box rows are different
//! things, and a loss that reads the wrong one must fail with a message, not index garbage.
//!
//! How a task decodes, augments and stacks its samples is its own business (the task crates
//! implement [`SampleSource`] and [`Collate`]); which samples an epoch visits, in which order,
//! and which generator each sample's augmentation draws from is decided here once, by
//! [`Loader`], so every task has the same determinism contract.

use tch::{Device, Tensor};

use crate::{KdError, Result};

mod epoch;
mod loader;
mod source;
mod subset;

pub use loader::{Collate, Loader, SampleSource};
pub use source::BatchSource;
pub use subset::SubsetSource;

/// What a batch is supervised with.
#[derive(Debug)]
pub enum Target {
    /// Class labels `[B]`, int64, in `0..K`; `-1` marks an unlabelled sample.
    Labels(Tensor),
    /// Label maps `[B, H, W]`, int64; values outside `0..K` (e.g. 255) are ignored.
    LabelMap(Tensor),
    /// Box targets `[B, N, 6]`, float32, one row `(x1, y1, x2, y2, class, iscrowd)` per box in
    /// input pixels of `x`, padded with rows of class −1.
    Boxes(Tensor),
}

impl Target {
    /// The target tensor, whatever its kind.
    pub fn tensor(&self) -> &Tensor {
        match self {
            Target::Labels(t) | Target::LabelMap(t) | Target::Boxes(t) => t,
        }
    }

    /// What kind of target this is, for messages: `"class labels [B]"`, ….
    pub fn kind_name(&self) -> &'static str {
        match self {
            Target::Labels(_) => "class labels [B]",
            Target::LabelMap(_) => "label maps [B, H, W]",
            Target::Boxes(_) => "box rows [B, N, 6]",
        }
    }

    /// The class labels `[B]`, or an error naming what the batch holds instead.
    pub fn labels(&self) -> Result<&Tensor> {
        match self {
            Target::Labels(t) => Ok(t),
            other => Err(other.mismatch("class labels [B]")),
        }
    }

    /// The label maps `[B, H, W]`, or an error naming what the batch holds instead.
    pub fn label_map(&self) -> Result<&Tensor> {
        match self {
            Target::LabelMap(t) => Ok(t),
            other => Err(other.mismatch("label maps [B, H, W]")),
        }
    }

    /// The box rows `[B, N, 6]`, or an error naming what the batch holds instead.
    pub fn boxes(&self) -> Result<&Tensor> {
        match self {
            Target::Boxes(t) => Ok(t),
            other => Err(other.mismatch("box rows [B, N, 6]")),
        }
    }

    /// Per-position class targets for a top-1 count: the labels `[B]` or the label maps
    /// `[B, H, W]`; `None` for box rows, which have no top-1.
    pub fn classes(&self) -> Option<&Tensor> {
        match self {
            Target::Labels(t) | Target::LabelMap(t) => Some(t),
            Target::Boxes(_) => None,
        }
    }

    /// The same target with its tensor on `device` (a shallow copy when already there).
    pub fn to_device(&self, device: Device) -> Target {
        let t = self.tensor().to_device(device);
        match self {
            Target::Labels(_) => Target::Labels(t),
            Target::LabelMap(_) => Target::LabelMap(t),
            Target::Boxes(_) => Target::Boxes(t),
        }
    }

    fn mismatch(&self, wanted: &str) -> KdError {
        KdError::invalid(format!(
            "this loss needs {wanted} as targets, but the batch holds {} of shape {:?}",
            self.kind_name(),
            self.tensor().size()
        ))
    }
}

/// A batch ready for a forward pass.
#[derive(Debug)]
pub struct Batch {
    /// Inputs `[B, C, H, W]`, float32, augmented and normalised.
    pub x: Tensor,
    /// The targets.
    pub target: Target,
    /// Dataset indices `[B]`, int64.
    pub index: Tensor,
    /// The same indices on the host.
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True when the batch holds no samples.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The same batch with its tensors on `device` (a shallow copy when already there).
    pub fn to_device(&self, device: Device) -> Batch {
        Batch {
            x: self.x.to_device(device),
            target: self.target.to_device(device),
            index: self.index.to_device(device),
            indices: self.indices.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch {
            x: Tensor::from_slice(&[1f32, 2.]).view([1, 1, 1, 2]),
            target: Target::Labels(Tensor::from_slice(&[3i64])),
            index: Tensor::from_slice(&[7i64]),
            indices: vec![7],
        }
    }

    #[test]
    fn batch_to_device_keeps_content() {
        let b = batch();
        for d in crate::device::test_devices() {
            let m = b.to_device(d);
            assert_eq!(m.x.device(), d);
            assert!(m
                .target
                .labels()
                .unwrap()
                .to_device(Device::Cpu)
                .equal(b.target.labels().unwrap()));
            assert_eq!(m.len(), 1);
        }
    }

    #[test]
    fn the_wrong_target_kind_is_an_error_naming_both() {
        let b = batch();
        let msg = b.target.label_map().unwrap_err().to_string();
        assert!(
            msg.contains("needs label maps [B, H, W]") && msg.contains("holds class labels [B] of shape [1]"),
            "{msg}"
        );
        assert!(b.target.boxes().is_err());
        let boxes = Target::Boxes(Tensor::zeros([2, 3, 6], (tch::Kind::Float, Device::Cpu)));
        assert!(boxes.classes().is_none());
        let msg = boxes.labels().unwrap_err().to_string();
        assert!(msg.contains("box rows [B, N, 6] of shape [2, 3, 6]"), "{msg}");
        let map = Target::LabelMap(Tensor::zeros([1, 2, 2], (tch::Kind::Int64, Device::Cpu)));
        assert_eq!(map.classes().unwrap().size(), vec![1, 2, 2]);
    }
}
