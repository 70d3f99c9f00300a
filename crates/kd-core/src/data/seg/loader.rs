//! The seeded, parallel segmentation loader.
//!
//! The contract is [`crate::data::Loader`]'s: the epoch order comes from `(seed, epoch)`, each
//! sample's augmentation from `(seed, epoch, dataset index)`, and samples are decoded and
//! augmented on rayon threads in any order, so batches do not depend on the thread count.
//! Training batches come out at the crop size; evaluation batches keep the dataset's size and
//! only normalise, so a batch of evaluation samples must share one size (batch size 1 always
//! works).

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;
use tch::Tensor;

use super::augment::{
    augment_sample, augment_sample_traced, normalize_to_chw, SegAugConfig, SegAugTrace, IMAGENET_MEAN_255,
    IMAGENET_STD_255,
};
use super::SegSource;
use crate::data::epoch as super_epoch;
use crate::data::Batch;
use crate::rng;
use crate::{KdError, Result};

/// Splits a segmentation source into batches `x [B,3,h,w]` (float32, normalised) and
/// `y [B,h,w]` (int64 training ids, 255 = ignore); see the module docs.
#[derive(Clone)]
pub struct SegLoader {
    source: Arc<dyn SegSource>,
    batch_size: usize,
    augment: Option<SegAugConfig>,
    drop_last: bool,
    seed: u64,
}

impl fmt::Debug for SegLoader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegLoader")
            .field("source", &self.source.name())
            .field("len", &self.source.len())
            .field("batch_size", &self.batch_size)
            .field("augment", &self.augment)
            .field("drop_last", &self.drop_last)
            .field("seed", &self.seed)
            .finish()
    }
}

impl SegLoader {
    /// A loader over `source`. With `augment = None` the loader never augments (evaluation:
    /// ImageNet normalisation at the source's size); otherwise training epochs run the
    /// pipeline and evaluation epochs normalise with its statistics. `drop_last` drops the
    /// final partial batch of training epochs. Fails on batch size 0 or an invalid config.
    pub fn new(
        source: Arc<dyn SegSource>,
        batch_size: usize,
        augment: Option<SegAugConfig>,
        drop_last: bool,
        seed: u64,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(KdError::invalid("batch size must be at least 1"));
        }
        if let Some(a) = &augment {
            a.validate()?;
        }
        Ok(Self {
            source,
            batch_size,
            augment,
            drop_last,
            seed,
        })
    }

    /// The source.
    pub fn source(&self) -> &Arc<dyn SegSource> {
        &self.source
    }

    /// Number of samples in the source.
    pub fn len(&self) -> usize {
        self.source.len()
    }

    /// True when the source is empty.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// Samples per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The training augmentation, if any.
    pub fn augment(&self) -> Option<&SegAugConfig> {
        self.augment.as_ref()
    }

    /// The seed all shuffles and augmentations derive from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Optimiser steps in a training epoch over `n` samples.
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        super_epoch::num_batches(n, self.batch_size, self.drop_last, true)
    }

    /// The indices epoch `epoch` visits: `subset` (or all) shuffled from `(seed, epoch)` when
    /// `train`, as given otherwise. An out-of-range entry is an error.
    pub fn order(&self, epoch: usize, subset: Option<&[usize]>, train: bool) -> Result<Vec<usize>> {
        super_epoch::order(
            self.source.len(),
            &self.source.name(),
            self.seed,
            epoch,
            subset,
            train,
        )
    }

    /// The batches of one epoch, built lazily; see [`crate::data::Loader::epoch`].
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

    /// One batch of the given indices, in that order. When `augment` and the loader has a
    /// pipeline, sample `i` is augmented with a generator derived from `(seed, epoch, i)`;
    /// otherwise it is only normalised, and all samples must share one size. CPU tensors.
    pub fn batch_of(&self, indices: &[usize], epoch: usize, augment: bool) -> Result<Batch> {
        if indices.is_empty() {
            return Err(KdError::invalid(format!(
                "empty batch requested from {}",
                self.source.name()
            )));
        }
        let samples: Vec<(Vec<f32>, image::GrayImage)> = indices
            .par_iter()
            .map(|&i| {
                let s = self.source.get(i)?;
                if s.image.dimensions() != s.label.dimensions() {
                    return Err(KdError::invalid(format!(
                        "sample {i} of {}: image {:?} and label {:?} differ in size",
                        self.source.name(),
                        s.image.dimensions(),
                        s.label.dimensions()
                    )));
                }
                Ok(match (&self.augment, augment) {
                    (Some(cfg), true) => {
                        let mut r = rng::derive(self.seed, epoch as u64, i as u64);
                        augment_sample(cfg, &s.image, &s.label, &mut r)
                    }
                    (cfg, _) => {
                        let (mean, std) = cfg
                            .as_ref()
                            .map_or((IMAGENET_MEAN_255, IMAGENET_STD_255), |c| (c.mean, c.std));
                        (normalize_to_chw(&s.image, mean, std), s.label)
                    }
                })
            })
            .collect::<Result<_>>()?;
        let (w, h) = samples[0].1.dimensions();
        if let Some((k, (_, l))) = samples
            .iter()
            .enumerate()
            .find(|(_, (_, l))| l.dimensions() != (w, h))
        {
            return Err(KdError::BadShape {
                op: "SegLoader::batch_of".into(),
                name: format!("sample {} of {}", indices[k], self.source.name()),
                shape: vec![l.height() as i64, l.width() as i64],
                expected: format!("the batch's first sample size [{h}, {w}] (use batch size 1)"),
            });
        }
        let b = indices.len();
        let mut x = Vec::with_capacity(b * 3 * (w * h) as usize);
        let mut y = Vec::with_capacity(b * (w * h) as usize);
        for (xs, l) in &samples {
            x.extend_from_slice(xs);
            y.extend(l.as_raw().iter().map(|&v| v as i64));
        }
        let index: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let (b, h, w) = (b as i64, h as i64, w as i64);
        Ok(Batch {
            x: Tensor::from_slice(&x).reshape([b, 3, h, w]),
            y: Tensor::from_slice(&y).reshape([b, h, w]),
            index: Tensor::from_slice(&index),
            indices: indices.to_vec(),
        })
    }
}

impl SegLoader {
    /// What the training pipeline draws for sample `index` in epoch `epoch` (the same generator
    /// [`SegLoader::batch_of`] derives), with the augmented sample. Decodes the sample. Fails
    /// when the loader has no pipeline.
    pub fn trace_of(&self, index: usize, epoch: usize) -> Result<SegAugTrace> {
        let cfg = self
            .augment
            .as_ref()
            .ok_or_else(|| KdError::invalid("SegLoader::trace_of: the loader does not augment"))?;
        let s = self.source.get(index)?;
        let mut r = rng::derive(self.seed, epoch as u64, index as u64);
        Ok(augment_sample_traced(cfg, &s.image, &s.label, &mut r).2)
    }
}

impl crate::data::BatchSource for SegLoader {
    fn len(&self) -> usize {
        self.source.len()
    }

    fn name(&self) -> String {
        self.source.name()
    }

    fn steps_per_epoch(&self, n: usize) -> usize {
        SegLoader::steps_per_epoch(self, n)
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
        SegLoader::batch_of(self, indices, epoch, augment)
    }

    fn augments_at_random(&self) -> bool {
        self.augment.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::seg::{GrayImage, RgbImage, SegSample};

    /// 9 samples of 12×10; label = (x / 3 + index) % 4, image red = 20·label.
    struct Toy;

    impl SegSource for Toy {
        fn len(&self) -> usize {
            9
        }
        fn get(&self, index: usize) -> Result<SegSample> {
            let label =
                GrayImage::from_fn(12, 10, |x, _| image::Luma([((x / 3) as usize + index) as u8 % 4]));
            let image = RgbImage::from_fn(12, 10, |x, y| {
                image::Rgb([label.get_pixel(x, y)[0] * 20, index as u8, 0])
            });
            Ok(SegSample { image, label, index })
        }
        fn name(&self) -> String {
            "toy".into()
        }
    }

    fn loader(seed: u64) -> SegLoader {
        SegLoader::new(Arc::new(Toy), 4, Some(SegAugConfig::with_crop(8, 8)), false, seed).unwrap()
    }

    #[test]
    fn shapes_kinds_and_eval_values() {
        let l = SegLoader::new(Arc::new(Toy), 4, None, false, 0).unwrap();
        let batches: Vec<Batch> = l.epoch(0, None, false).map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].x.size(), vec![4, 3, 10, 12]);
        assert_eq!(batches[2].y.size(), vec![1, 10, 12]);
        assert_eq!(batches[0].x.kind(), tch::Kind::Float);
        assert_eq!(batches[0].y.kind(), tch::Kind::Int64);
        assert_eq!(
            batches.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>(),
            (0..9).collect::<Vec<_>>()
        );
        // Sample 1, pixel (x=3, y=0): label (1 + 1) % 4 = 2, red 40.
        let y = batches[0].y.int64_value(&[1, 0, 3]);
        assert_eq!(y, 2);
        let r = batches[0].x.double_value(&[1, 0, 0, 3]);
        assert!((r - (40.0 - 123.675) / 58.395).abs() < 1e-5);
        // Unaugmented training epochs of a loader without a pipeline keep the size.
        let b = l.epoch(0, None, true).next().unwrap().unwrap();
        assert_eq!(b.x.size(), vec![4, 3, 10, 12]);
        assert!(SegLoader::new(Arc::new(Toy), 0, None, false, 0).is_err());
        assert!(l.batch_of(&[], 0, false).is_err());
    }

    #[test]
    fn seeded_and_thread_independent() {
        let (a, b) = (loader(5), loader(5));
        let run = |l: &SegLoader, e| l.epoch(e, None, true).map(|b| b.unwrap()).collect::<Vec<_>>();
        let (ra, rb) = (run(&a, 1), run(&b, 1));
        assert_eq!(ra.len(), 3);
        for (p, q) in ra.iter().zip(&rb) {
            assert_eq!(p.indices, q.indices);
            assert!(p.x.equal(&q.x) && p.y.equal(&q.y));
            assert_eq!(p.x.size(), vec![p.len() as i64, 3, 8, 8]);
        }
        let order = |r: &[Batch]| r.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>();
        assert_ne!(order(&ra), order(&run(&a, 2)));
        assert_ne!(order(&ra), order(&run(&loader(6), 1)));
        let idx: Vec<usize> = (0..9).rev().collect();
        let build = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| a.batch_of(&idx, 3, true).unwrap())
        };
        let (one, two) = (build(1), build(2));
        assert!(one.x.equal(&two.x) && one.y.equal(&two.y));
        let d = SegLoader::new(Arc::new(Toy), 4, Some(SegAugConfig::with_crop(8, 8)), true, 5).unwrap();
        assert_eq!(d.steps_per_epoch(9), 2);
        assert_eq!(d.epoch(0, None, true).count(), 2);
        assert_eq!(d.epoch(0, None, false).count(), 3);
        let errs: Vec<_> = d.epoch(0, Some(&[1, 9]), true).collect();
        assert_eq!(errs.len(), 1);
        assert!(errs[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("index 9 out of range"));
    }

    struct Mixed;

    impl SegSource for Mixed {
        fn len(&self) -> usize {
            2
        }
        fn get(&self, index: usize) -> Result<SegSample> {
            let w = 4 + index as u32;
            Ok(SegSample {
                image: RgbImage::new(w, 3),
                label: GrayImage::new(w, 3),
                index,
            })
        }
        fn name(&self) -> String {
            "mixed".into()
        }
    }

    #[test]
    fn eval_batches_of_mixed_sizes_need_batch_size_one() {
        let l = SegLoader::new(Arc::new(Mixed), 2, None, false, 0).unwrap();
        let msg = l.batch_of(&[0, 1], 0, false).unwrap_err().to_string();
        assert!(
            msg.contains("sample 1 of mixed") && msg.contains("batch size 1"),
            "{msg}"
        );
        let one = SegLoader::new(Arc::new(Mixed), 1, None, false, 0).unwrap();
        let sizes: Vec<Vec<i64>> = one.epoch(0, None, false).map(|b| b.unwrap().y.size()).collect();
        assert_eq!(sizes, vec![vec![1, 3, 4], vec![1, 3, 5]]);
    }
}
