//! The seeded, parallel batch loader, generic over the task's samples.
//!
//! Reproducibility is the design constraint: a run, its resumed continuation and a re-run on a
//! machine with a different core count must see the same batches. So nothing depends on
//! scheduling: the epoch's order comes from a generator derived from `(seed, epoch)`, and each
//! sample's augmentation from one derived from `(seed, epoch, dataset index)`. Samples are then
//! free to be decoded and augmented on any rayon thread, in any order, and are stacked into a
//! batch in the order asked for. The index of every sample travels with it into the batch,
//! because some methods keep per-sample state.
//!
//! A task supplies two pieces: a [`SampleSource`] (decode and augment one sample, given its
//! generator) and a [`Collate`] step (stack samples into `x` and a typed target).

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;
use tch::Tensor;

use super::epoch;
use crate::data::{Batch, BatchSource, Target};
use crate::rng::{self, Rng};
use crate::{KdError, Result};

/// One sample at a time: the task's decoding and augmentation.
pub trait SampleSource: Send + Sync {
    /// A decoded (and, in training, augmented) sample, ready to be stacked.
    type Sample: Send;

    /// Number of samples.
    fn len(&self) -> usize;

    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A short name for logs and errors.
    fn name(&self) -> String;

    /// Sample `index`. With `rng` (training batches), augmented with draws from it, the
    /// generator derived from `(seed, epoch, index)`; without it, only normalised.
    fn sample(&self, index: usize, rng: Option<&mut Rng>) -> Result<Self::Sample>;

    /// Whether training samples are augmented at random, so that a sample's input differs from
    /// epoch to epoch.
    fn augments_at_random(&self) -> bool;
}

/// Stacks the samples of one batch.
pub trait Collate<S>: Send + Sync {
    /// `x` `[B, C, H, W]` and the target of `samples` (dataset indices `indices`, in that
    /// order) from the source called `source`, which errors name.
    fn collate(&self, source: &str, indices: &[usize], samples: Vec<S>) -> Result<(Tensor, Target)>;
}

/// Splits a sample source into batches; see the module docs for the determinism contract.
pub struct Loader<S, C> {
    source: Arc<S>,
    collate: Arc<C>,
    batch_size: usize,
    drop_last: bool,
    seed: u64,
}

impl<S, C> Clone for Loader<S, C> {
    fn clone(&self) -> Self {
        Self {
            source: self.source.clone(),
            collate: self.collate.clone(),
            batch_size: self.batch_size,
            drop_last: self.drop_last,
            seed: self.seed,
        }
    }
}

impl<S: SampleSource, C> fmt::Debug for Loader<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("source", &self.source.name())
            .field("len", &self.source.len())
            .field("batch_size", &self.batch_size)
            .field("drop_last", &self.drop_last)
            .field("seed", &self.seed)
            .finish()
    }
}

impl<S, C> Loader<S, C>
where
    S: SampleSource + 'static,
    C: Collate<S::Sample> + 'static,
{
    /// A loader over `source`. `drop_last` drops the final partial batch of *training* epochs
    /// (evaluation always visits every sample). Fails when `batch_size` is 0.
    pub fn new(source: S, collate: C, batch_size: usize, drop_last: bool, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            return Err(KdError::invalid(format!(
                "{}: batch size must be at least 1",
                source.name()
            )));
        }
        Ok(Self {
            source: Arc::new(source),
            collate: Arc::new(collate),
            batch_size,
            drop_last,
            seed,
        })
    }

    /// The sample source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The collate step.
    pub fn collate(&self) -> &C {
        &self.collate
    }

    /// Samples per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Whether training epochs drop their final partial batch.
    pub fn drop_last(&self) -> bool {
        self.drop_last
    }

    /// The seed all shuffles and augmentations derive from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.source.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// Optimiser steps in a training epoch over `n` samples.
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        epoch::num_batches(n, self.batch_size, self.drop_last, true)
    }

    /// The dataset indices epoch `epoch` visits, in order: `subset` (or every index) shuffled by
    /// a generator derived from `(seed, epoch)` when `train`, as given otherwise. Subset entries
    /// may repeat; an out-of-range entry is an error.
    pub fn order(&self, epoch: usize, subset: Option<&[usize]>, train: bool) -> Result<Vec<usize>> {
        epoch::order(
            self.source.len(),
            &self.source.name(),
            self.seed,
            epoch,
            subset,
            train,
        )
    }

    /// The generator sample `index` draws its augmentation from in epoch `epoch`.
    pub fn rng_of(&self, index: usize, epoch: usize) -> Rng {
        rng::derive(self.seed, epoch as u64, index as u64)
    }

    /// The batches of one epoch (see [`Loader::order`]), built lazily one at a time; each batch
    /// is built in parallel. When `train`, samples are augmented; the final partial batch is
    /// dropped if `drop_last`. The iterator owns what it needs, so it does not borrow `self`.
    /// An invalid subset yields a single error.
    pub fn epoch(
        &self,
        epoch: usize,
        subset: Option<&[usize]>,
        train: bool,
    ) -> impl Iterator<Item = Result<Batch>> + Send + 'static {
        let loader = self.clone();
        epoch::lazy_batches(
            self.order(epoch, subset, train),
            self.batch_size,
            self.drop_last,
            train,
            move |idx| loader.batch_of(idx, epoch, train),
        )
    }

    /// One batch of the given dataset indices, in that order. When `augment`, sample `i` is
    /// augmented with the generator derived from `(seed, epoch, i)`. Tensors are on the CPU.
    pub fn batch_of(&self, indices: &[usize], epoch: usize, augment: bool) -> Result<Batch> {
        if indices.is_empty() {
            return Err(KdError::invalid(format!(
                "empty batch requested from {}",
                self.source.name()
            )));
        }
        let samples: Vec<S::Sample> = indices
            .par_iter()
            .map(|&i| {
                let mut rng = augment.then(|| self.rng_of(i, epoch));
                self.source.sample(i, rng.as_mut())
            })
            .collect::<Result<_>>()?;
        let (x, target) = self.collate.collate(&self.source.name(), indices, samples)?;
        let index: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        Ok(Batch {
            x,
            target,
            index: Tensor::from_slice(&index),
            indices: indices.to_vec(),
        })
    }
}

impl<S, C> BatchSource for Loader<S, C>
where
    S: SampleSource + 'static,
    C: Collate<S::Sample> + 'static,
{
    fn len(&self) -> usize {
        self.source.len()
    }

    fn name(&self) -> String {
        self.source.name()
    }

    fn steps_per_epoch(&self, n: usize) -> usize {
        Loader::steps_per_epoch(self, n)
    }

    fn batches<'a>(
        &'a self,
        epoch: usize,
        subset: Option<&'a [usize]>,
        train: bool,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + 'a> {
        Box::new(self.epoch(epoch, subset, train))
    }

    fn epoch_plan(&self, epoch: usize, subset: Option<&[usize]>, train: bool) -> Result<Vec<Vec<usize>>> {
        let order = self.order(epoch, subset, train)?;
        let batches = epoch::num_batches(order.len(), self.batch_size, self.drop_last, train);
        Ok((0..batches)
            .map(|b| order[b * self.batch_size..((b + 1) * self.batch_size).min(order.len())].to_vec())
            .collect())
    }

    fn batch_of(&self, indices: &[usize], epoch: usize, augment: bool) -> Result<Batch> {
        Loader::batch_of(self, indices, epoch, augment)
    }

    fn augments_at_random(&self) -> bool {
        self.source.augments_at_random()
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng as _;

    use super::*;

    /// 23 samples; sample `i` is `i` plus, when augmented, a draw in `[0, 1)`.
    struct Toy;

    impl SampleSource for Toy {
        type Sample = f32;
        fn len(&self) -> usize {
            23
        }
        fn name(&self) -> String {
            "toy".into()
        }
        fn sample(&self, index: usize, rng: Option<&mut Rng>) -> Result<f32> {
            Ok(index as f32 + rng.map_or(0.0, |r| r.gen::<f32>()))
        }
        fn augments_at_random(&self) -> bool {
            true
        }
    }

    /// `x [B, 1, 1, 1]` = the samples, labels = index % 4.
    struct Stack;

    impl Collate<f32> for Stack {
        fn collate(&self, _: &str, indices: &[usize], samples: Vec<f32>) -> Result<(Tensor, Target)> {
            let b = samples.len() as i64;
            let y: Vec<i64> = indices.iter().map(|&i| (i % 4) as i64).collect();
            Ok((
                Tensor::from_slice(&samples).view([b, 1, 1, 1]),
                Target::Labels(Tensor::from_slice(&y)),
            ))
        }
    }

    fn loader(drop_last: bool, seed: u64) -> Loader<Toy, Stack> {
        Loader::new(Toy, Stack, 5, drop_last, seed).unwrap()
    }

    fn visit(l: &Loader<Toy, Stack>, epoch: usize, subset: Option<&[usize]>, train: bool) -> Vec<Vec<usize>> {
        l.epoch(epoch, subset, train)
            .map(|b| b.unwrap().indices)
            .collect()
    }

    #[test]
    fn every_index_once_per_epoch() {
        let l = loader(false, 1);
        let batches = visit(&l, 0, None, true);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![5, 5, 5, 5, 3]
        );
        let mut all: Vec<usize> = batches.concat();
        assert_ne!(all, (0..23).collect::<Vec<_>>(), "training order is shuffled");
        all.sort();
        assert_eq!(all, (0..23).collect::<Vec<_>>());
        assert_eq!(l.steps_per_epoch(23), 5);
        assert_eq!(visit(&l, 0, None, false).concat(), (0..23).collect::<Vec<_>>());
    }

    #[test]
    fn drop_last_only_in_training() {
        let l = loader(true, 1);
        assert_eq!(l.steps_per_epoch(23), 4);
        assert_eq!(visit(&l, 3, None, true).len(), 4);
        assert_eq!(visit(&l, 3, None, false).concat().len(), 23);
    }

    #[test]
    fn seeded_order_and_augmentation() {
        let (a, b) = (loader(false, 7), loader(false, 7));
        assert_eq!(visit(&a, 2, None, true), visit(&b, 2, None, true));
        assert_ne!(visit(&a, 2, None, true), visit(&a, 3, None, true));
        assert_ne!(visit(&a, 2, None, true), visit(&loader(false, 8), 2, None, true));
        let xa: Vec<Tensor> = a.epoch(2, None, true).map(|b| b.unwrap().x).collect();
        let xb: Vec<Tensor> = b.epoch(2, None, true).map(|b| b.unwrap().x).collect();
        assert!(xa.iter().zip(&xb).all(|(p, q)| p.equal(q)));
        // Sample i of epoch e draws from (seed, e, i) whatever batch it lands in.
        let one = a.batch_of(&[4], 2, true).unwrap();
        let mut r = a.rng_of(4, 2);
        assert_eq!(one.x.double_value(&[0, 0, 0, 0]) as f32, 4.0 + r.gen::<f32>());
        let plain = a.batch_of(&[4], 2, false).unwrap();
        assert_eq!(plain.x.double_value(&[0, 0, 0, 0]), 4.0);
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let l = loader(false, 3);
        let idx: Vec<usize> = (0..23).rev().collect();
        let build = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| l.batch_of(&idx, 5, true).unwrap())
        };
        let (one, two) = (build(1), build(2));
        assert!(one.x.equal(&two.x));
        assert!(one.target.labels().unwrap().equal(two.target.labels().unwrap()));
        assert_eq!(one.indices, idx);
        assert_eq!(Vec::<i64>::try_from(&one.index).unwrap()[0], 22);
    }

    #[test]
    fn subset_and_bad_input() {
        let l = loader(false, 1);
        let subset = [3, 17, 4, 4, 22, 0];
        let mut seen = visit(&l, 0, Some(&subset), true).concat();
        seen.sort();
        assert_eq!(seen, vec![0, 3, 4, 4, 17, 22]);
        assert_eq!(visit(&l, 0, Some(&subset), false).concat(), subset.to_vec());
        let errs: Vec<_> = l.epoch(0, Some(&[1, 23]), true).collect();
        assert_eq!(errs.len(), 1);
        let msg = errs.into_iter().next().unwrap().unwrap_err().to_string();
        assert!(msg.contains("index 23 out of range"), "{msg}");
        assert!(l.batch_of(&[], 0, false).is_err());
        let msg = Loader::new(Toy, Stack, 0, false, 0).unwrap_err().to_string();
        assert!(msg.contains("toy: batch size must be at least 1"), "{msg}");
    }
}
