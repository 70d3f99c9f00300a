//! What the trainer reads batches from.
//!
//! The trainer, the evaluators and the epoch-start hooks need the same four things from every
//! task's data: how many samples there are, how many steps an epoch over a subset takes, the
//! batches of an epoch, and a batch of chosen samples. [`BatchSource`] is that contract, object
//! safe so a trainer holds any task's loader; [`crate::data::Loader`] implements it for every
//! sample source.

use crate::data::Batch;
use crate::Result;

/// A seeded, deterministic source of batches over one dataset.
///
/// Batches are `x` `[B, C, H, W]` float32 (augmented when training, always normalised) and a
/// typed [`crate::data::Target`]. The same `(seed, epoch)` gives the same batches.
pub trait BatchSource: Send + Sync {
    /// Number of samples in the dataset.
    fn len(&self) -> usize;

    /// True when the dataset is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A short name for logs and errors.
    fn name(&self) -> String;

    /// Optimiser steps in a training epoch over `n` samples.
    fn steps_per_epoch(&self, n: usize) -> usize;

    /// The batches of one epoch over `subset` (every sample when `None`), shuffled and
    /// augmented when `train`, in dataset order otherwise. An invalid subset yields one error.
    fn batches<'a>(
        &'a self,
        epoch: usize,
        subset: Option<&'a [usize]>,
        train: bool,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + 'a>;

    /// The batches of one epoch as dataset indices, without building them: what
    /// [`BatchSource::batches`] would yield, batch by batch. A data-parallel trainer cuts each
    /// global batch into the ranks' parts, so the global sample order is one process's.
    fn epoch_plan(&self, epoch: usize, subset: Option<&[usize]>, train: bool) -> Result<Vec<Vec<usize>>>;

    /// One batch of the given samples in that order, augmented as epoch `epoch` would augment
    /// them when `augment`. Tensors are on the CPU.
    fn batch_of(&self, indices: &[usize], epoch: usize, augment: bool) -> Result<Batch>;

    /// Whether training batches are augmented at random, so that a sample's input differs from
    /// epoch to epoch (outputs cached once per sample cannot then stand in for a forward pass).
    fn augments_at_random(&self) -> bool;
}
