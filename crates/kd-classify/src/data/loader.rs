//! kd-core's seeded loader over a classification [`Dataset`].
//!
//! The determinism contract is the generic loader's (`kd_core::data::Loader`); this file only
//! says what one sample is (its image, augmented with the draws of its generator, and its label)
//! and how a batch is stacked (`x [B, C, H, W]`, labels `[B]`).

use std::sync::Arc;

use kd_core::data::{Collate, Loader, SampleSource, Target};
use kd_core::rng::Rng;
use kd_core::{KdError, Result};
use tch::Tensor;

use super::{AugDraw, Augment, Dataset};

/// Samples of a [`Dataset`] with a per-sample [`Augment`] (pad-crop and flip in training,
/// normalisation always).
pub struct ImageSamples {
    dataset: Arc<dyn Dataset>,
    augment: Augment,
}

impl ImageSamples {
    /// Samples of `dataset` augmented by `augment`; fails when the normalisation does not fit
    /// the dataset's channel count.
    pub fn new(dataset: Arc<dyn Dataset>, augment: Augment) -> Result<Self> {
        augment
            .check_channels(dataset.shape()[0])
            .map_err(|e| KdError::invalid(format!("dataset {}: {e}", dataset.name())))?;
        Ok(Self { dataset, augment })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// The augmentation.
    pub fn augment(&self) -> &Augment {
        &self.augment
    }

    /// What a sample augmented with generator `rng` is drawn to be.
    pub fn draw(&self, rng: &mut Rng) -> AugDraw {
        self.augment.draw(rng)
    }
}

impl SampleSource for ImageSamples {
    /// The image's `C·H·W` values and its label.
    type Sample = (Vec<f32>, i64);

    fn len(&self) -> usize {
        self.dataset.len()
    }

    fn name(&self) -> String {
        self.dataset.name()
    }

    fn sample(&self, index: usize, rng: Option<&mut Rng>) -> Result<(Vec<f32>, i64)> {
        let shape = self.dataset.shape();
        let s = self.dataset.get(index)?;
        if [s.image.c, s.image.h, s.image.w] != shape || s.image.data.len() != shape.iter().product::<usize>()
        {
            return Err(KdError::BadShape {
                op: "Loader::batch_of".into(),
                name: format!("sample {index} of {}", self.dataset.name()),
                shape: vec![s.image.c as i64, s.image.h as i64, s.image.w as i64],
                expected: format!("the dataset shape {shape:?}"),
            });
        }
        let draw = rng.map_or_else(AugDraw::default, |r| self.augment.draw(r));
        Ok((self.augment.apply_drawn(&s.image, &draw).data, s.label))
    }

    fn augments_at_random(&self) -> bool {
        self.augment.pad_crop.is_some() || self.augment.hflip
    }
}

/// Stacks same-shape images into `x [B, C, H, W]` and their labels into [`Target::Labels`].
pub struct StackImages {
    shape: [usize; 3],
}

impl StackImages {
    /// Stacks images of `shape` `[C, H, W]`.
    pub fn new(shape: [usize; 3]) -> Self {
        Self { shape }
    }
}

impl Collate<(Vec<f32>, i64)> for StackImages {
    fn collate(
        &self,
        _source: &str,
        _indices: &[usize],
        samples: Vec<(Vec<f32>, i64)>,
    ) -> Result<(Tensor, Target)> {
        let [c, h, w] = self.shape;
        let b = samples.len();
        let mut x = Vec::with_capacity(b * c * h * w);
        let mut y = Vec::with_capacity(b);
        for (img, label) in samples {
            x.extend_from_slice(&img);
            y.push(label);
        }
        Ok((
            Tensor::from_slice(&x).reshape([b as i64, c as i64, h as i64, w as i64]),
            Target::Labels(Tensor::from_slice(&y)),
        ))
    }
}

/// The classification loader: batches of `x [B, C, H, W]` float32 and labels `[B]` int64.
pub type ClassLoader = Loader<ImageSamples, StackImages>;

/// A loader over `dataset` with `augment`. `drop_last` drops the final partial batch of
/// *training* epochs (evaluation always visits every sample). Fails when `batch_size` is 0 or
/// the normalisation does not fit the dataset's channel count.
pub fn class_loader(
    dataset: Arc<dyn Dataset>,
    batch_size: usize,
    augment: Augment,
    drop_last: bool,
    seed: u64,
) -> Result<ClassLoader> {
    let shape = dataset.shape();
    Loader::new(
        ImageSamples::new(dataset, augment)?,
        StackImages { shape },
        batch_size,
        drop_last,
        seed,
    )
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

    #[test]
    fn augmentation_follows_the_samples_generator() {
        let l = class_loader(dataset(), 5, augmenting(), false, 3).unwrap();
        let idx: Vec<usize> = (0..23).rev().collect();
        let aug = l.batch_of(&idx, 5, true).unwrap();
        let plain = l.batch_of(&idx, 5, false).unwrap();
        assert!(!aug.x.equal(&plain.x), "training batches are augmented");
        // Sample 7 of epoch 5 is the dataset image under the draw of generator (3, 5, 7).
        let draw = l.source().draw(&mut l.rng_of(7, 5));
        let want = l
            .source()
            .augment()
            .apply_drawn(&l.source().dataset().get(7).unwrap().image, &draw);
        let k = idx.iter().position(|&i| i == 7).unwrap() as i64;
        let got = Vec::<f32>::try_from(aug.x.get(k).view([-1])).unwrap();
        assert_eq!(got, want.data);
        assert!(kd_core::data::BatchSource::augments_at_random(&l));
    }

    #[test]
    fn batch_tensors_match_indices_and_labels() {
        let l = class_loader(dataset(), 5, Augment::none(), false, 0).unwrap();
        for batch in l.epoch(0, None, true) {
            let batch = batch.unwrap();
            let b = batch.indices.len() as i64;
            assert_eq!(batch.x.size(), vec![b, 1, 3, 3]);
            assert_eq!(batch.x.kind(), tch::Kind::Float);
            let y = batch.target.labels().unwrap();
            assert_eq!(y.kind(), tch::Kind::Int64);
            let index = Vec::<i64>::try_from(&batch.index).unwrap();
            let y = Vec::<i64>::try_from(y).unwrap();
            let first_pixel = Vec::<f32>::try_from(batch.x.view([b, 9]).select(1, 0)).unwrap();
            for (k, &i) in batch.indices.iter().enumerate() {
                assert_eq!(index[k], i as i64);
                assert_eq!(y[k], (i % 4) as i64);
                assert_eq!(first_pixel[k], i as f32 / 255.0);
            }
        }
        assert!(!kd_core::data::BatchSource::augments_at_random(&l));
        assert!(l.batch_of(&[], 0, false).is_err());
        assert!(class_loader(dataset(), 0, Augment::none(), false, 0).is_err());
        let msg = class_loader(dataset(), 4, Augment::cifar10(), false, 0)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("dataset toy"), "{msg}");
    }
}
