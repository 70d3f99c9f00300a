//! The seeded, parallel batch loader.
//!
//! Reproducibility is the design constraint: a run, its resumed continuation and a re-run on a
//! machine with a different core count must see the same batches. So nothing depends on
//! scheduling: the epoch's order comes from a generator derived from `(seed, epoch)`, and each
//! sample's augmentation from one derived from `(seed, epoch, dataset index)`. Samples are then
//! free to be decoded and augmented on any rayon thread, in any order. The index of every sample
//! travels with it into the batch, because some methods keep per-sample state.

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;
use tch::Tensor;

use crate::data::epoch as super_epoch;
use crate::data::{AugDraw, Augment, Batch, BatchSource, Dataset};
use crate::rng::{self, Rng};
use crate::{KdError, Result};

/// Splits a dataset into augmented batches; see the module docs for the determinism contract.
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    batch_size: usize,
    augment: Augment,
    drop_last: bool,
    seed: u64,
}

impl fmt::Debug for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("dataset", &self.dataset.name())
            .field("len", &self.dataset.len())
            .field("batch_size", &self.batch_size)
            .field("augment", &self.augment)
            .field("drop_last", &self.drop_last)
            .field("seed", &self.seed)
            .finish()
    }
}

impl Loader {
    /// A loader over `dataset`. `drop_last` drops the final partial batch of *training* epochs
    /// (evaluation always visits every sample). Fails when `batch_size` is 0 or the
    /// normalisation does not fit the dataset's channel count.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        batch_size: usize,
        augment: Augment,
        drop_last: bool,
        seed: u64,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(KdError::invalid("batch size must be at least 1"));
        }
        augment
            .check_channels(dataset.shape()[0])
            .map_err(|e| KdError::invalid(format!("dataset {}: {e}", dataset.name())))?;
        Ok(Self {
            dataset,
            batch_size,
            augment,
            drop_last,
            seed,
        })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// Samples per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The augmentation.
    pub fn augment(&self) -> &Augment {
        &self.augment
    }

    /// Whether training epochs drop their final partial batch.
    pub fn drop_last(&self) -> bool {
        self.drop_last
    }

    /// The seed all shuffles and augmentations derive from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Optimiser steps in a training epoch over `n` samples.
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        super_epoch::num_batches(n, self.batch_size, self.drop_last, true)
    }

    /// The dataset indices epoch `epoch` visits, in order: `subset` (or every index) shuffled by
    /// a generator derived from `(seed, epoch)` when `train`, as given otherwise. Subset entries
    /// may repeat; an out-of-range entry is an error.
    pub fn order(&self, epoch: usize, subset: Option<&[usize]>, train: bool) -> Result<Vec<usize>> {
        super_epoch::order(
            self.dataset.len(),
            &self.dataset.name(),
            self.seed,
            epoch,
            subset,
            train,
        )
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
        super_epoch::lazy_batches(
            self.order(epoch, subset, train),
            self.batch_size,
            self.drop_last,
            train,
            move |idx| loader.batch_of(idx, epoch, train),
        )
    }

    /// One batch of the given dataset indices, in that order. When `train`, sample `i` is
    /// augmented with a generator derived from `(seed, epoch, i)`; normalisation always applies.
    /// Tensors are on the CPU.
    pub fn batch_of(&self, indices: &[usize], epoch: usize, train: bool) -> Result<Batch> {
        if indices.is_empty() {
            return Err(KdError::invalid(format!(
                "empty batch requested from {}",
                self.dataset.name()
            )));
        }
        let shape = self.dataset.shape();
        let [c, h, w] = shape;
        let per = c * h * w;
        let b = indices.len();
        let mut x = vec![0f32; b * per];
        let mut y = vec![0i64; b];
        let results: Vec<Result<()>> = x
            .par_chunks_mut(per)
            .zip(y.par_iter_mut())
            .zip(indices.par_iter())
            .map(|((xs, ys), &i)| {
                let s = self.dataset.get(i)?;
                if [s.image.c, s.image.h, s.image.w] != shape || s.image.data.len() != per {
                    return Err(KdError::BadShape {
                        op: "Loader::batch_of".into(),
                        name: format!("sample {i} of {}", self.dataset.name()),
                        shape: vec![s.image.c as i64, s.image.h as i64, s.image.w as i64],
                        expected: format!("the dataset shape {shape:?}"),
                    });
                }
                let draw = if train {
                    self.draw_of(i, epoch)
                } else {
                    AugDraw::default()
                };
                let img = self.augment.apply_drawn(&s.image, &draw);
                xs.copy_from_slice(&img.data);
                *ys = s.label;
                Ok(())
            })
            .collect();
        results.into_iter().collect::<Result<()>>()?;
        let index: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        Ok(Batch {
            x: Tensor::from_slice(&x).reshape([b as i64, c as i64, h as i64, w as i64]),
            y: Tensor::from_slice(&y),
            index: Tensor::from_slice(&index),
            indices: indices.to_vec(),
        })
    }
}

impl Loader {
    /// The augmentation [`Loader::batch_of`] applies to dataset sample `index` in a training
    /// batch of epoch `epoch` (drawn from the generator derived from `(seed, epoch, index)`).
    pub fn draw_of(&self, index: usize, epoch: usize) -> AugDraw {
        let mut rng: Rng = rng::derive(self.seed, epoch as u64, index as u64);
        self.augment.draw(&mut rng)
    }
}

impl BatchSource for Loader {
    fn len(&self) -> usize {
        self.dataset.len()
    }

    fn name(&self) -> String {
        self.dataset.name()
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

    fn batch_of(&self, indices: &[usize], epoch: usize, augment: bool) -> Result<Batch> {
        Loader::batch_of(self, indices, epoch, augment)
    }

    fn augments_at_random(&self) -> bool {
        self.augment.pad_crop.is_some() || self.augment.hflip
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{InMemoryDataset, Normalize};

    /// 23 images of 1×3×3 whose pixels all equal the index; label = index % 4.
    fn dataset() -> Arc<dyn Dataset> {
        let n = 23;
        let pixels = (0..n).flat_map(|i| [i as u8; 9]).collect();
        let labels = (0..n).map(|i| (i % 4) as i64).collect();
        Arc::new(InMemoryDataset::from_parts("toy", [1, 3, 3], pixels, labels, 4).unwrap())
    }

    fn augmenting() -> Augment {
        Augment {
            pad_crop: Some(1),
            hflip: true,
            normalize: Some(Normalize::fashion_mnist()),
        }
    }

    fn loader(drop_last: bool, seed: u64) -> Loader {
        Loader::new(dataset(), 5, augmenting(), drop_last, seed).unwrap()
    }

    fn visit(l: &Loader, epoch: usize, subset: Option<&[usize]>, train: bool) -> Vec<Vec<usize>> {
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
        // Evaluation keeps the dataset order.
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
        let a = loader(false, 7);
        let b = loader(false, 7);
        assert_eq!(visit(&a, 2, None, true), visit(&b, 2, None, true));
        assert_ne!(visit(&a, 2, None, true), visit(&a, 3, None, true));
        assert_ne!(visit(&a, 2, None, true), visit(&loader(false, 8), 2, None, true));
        let xa: Vec<Tensor> = a.epoch(2, None, true).map(|b| b.unwrap().x).collect();
        let xb: Vec<Tensor> = b.epoch(2, None, true).map(|b| b.unwrap().x).collect();
        assert!(xa.iter().zip(&xb).all(|(p, q)| p.equal(q)));
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
        assert!(one.y.equal(&two.y));
        // Augmentation really happened: some sample differs from its normalised original.
        let plain = l.batch_of(&idx, 5, false).unwrap();
        assert!(!one.x.equal(&plain.x));
    }

    #[test]
    fn subset_is_respected() {
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
    }

    #[test]
    fn batch_tensors_match_indices_and_labels() {
        let l = Loader::new(dataset(), 5, Augment::none(), false, 0).unwrap();
        for batch in l.epoch(0, None, true) {
            let batch = batch.unwrap();
            let b = batch.indices.len() as i64;
            assert_eq!(batch.x.size(), vec![b, 1, 3, 3]);
            assert_eq!(batch.x.kind(), tch::Kind::Float);
            assert_eq!(batch.y.kind(), tch::Kind::Int64);
            let index = Vec::<i64>::try_from(&batch.index).unwrap();
            let y = Vec::<i64>::try_from(&batch.y).unwrap();
            let first_pixel = Vec::<f32>::try_from(batch.x.view([b, 9]).select(1, 0)).unwrap();
            for (k, &i) in batch.indices.iter().enumerate() {
                assert_eq!(index[k], i as i64);
                assert_eq!(y[k], (i % 4) as i64);
                assert_eq!(first_pixel[k], i as f32 / 255.0);
            }
        }
        assert!(l.batch_of(&[], 0, false).is_err());
        assert!(Loader::new(dataset(), 0, Augment::none(), false, 0).is_err());
        assert!(Loader::new(dataset(), 4, Augment::cifar10(), false, 0).is_err());
    }
}
