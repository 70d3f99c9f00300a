//! kd-core's seeded loader over a segmentation [`SegSource`].
//!
//! The determinism contract is the generic loader's (`kd_core::data::Loader`): the epoch order
//! comes from `(seed, epoch)`, each sample's augmentation from `(seed, epoch, dataset index)`.
//! Training batches come out at the crop size; evaluation batches keep the dataset's size and
//! only normalise, so a batch of evaluation samples must share one size (batch size 1 always
//! works).

use std::sync::Arc;

use kd_core::data::{Collate, Loader, SampleSource, Target};
use kd_core::rng::Rng;
use kd_core::{KdError, Result};
use tch::Tensor;

use super::augment::{augment_sample, augment_sample_traced, SegAugConfig, SegAugTrace};
use super::SegSource;
use kd_vision::image_ops::{normalize_to_chw, IMAGENET_MEAN_255, IMAGENET_STD_255};

/// Samples of a [`SegSource`]: with a pipeline, training samples run it (MMSeg's rescale,
/// crop, flip, photometric distortion, normalisation, padding); evaluation samples, and every
/// sample without a pipeline, are only normalised (ImageNet statistics by default).
pub struct SegSamples {
    source: Arc<dyn SegSource>,
    augment: Option<SegAugConfig>,
}

impl SegSamples {
    /// Samples of `source` through `augment`; fails on an invalid pipeline.
    pub fn new(source: Arc<dyn SegSource>, augment: Option<SegAugConfig>) -> Result<Self> {
        if let Some(a) = &augment {
            a.validate()?;
        }
        Ok(Self { source, augment })
    }

    /// The source.
    pub fn source(&self) -> &Arc<dyn SegSource> {
        &self.source
    }

    /// The training pipeline, if any.
    pub fn augment(&self) -> Option<&SegAugConfig> {
        self.augment.as_ref()
    }
}

impl SampleSource for SegSamples {
    /// The image as normalised CHW values, and its training-id map.
    type Sample = (Vec<f32>, image::GrayImage);

    fn len(&self) -> usize {
        self.source.len()
    }

    fn name(&self) -> String {
        self.source.name()
    }

    fn sample(&self, i: usize, rng: Option<&mut Rng>) -> Result<Self::Sample> {
        let s = self.source.get(i)?;
        if s.image.dimensions() != s.label.dimensions() {
            return Err(KdError::invalid(format!(
                "sample {i} of {}: image {:?} and label {:?} differ in size",
                self.source.name(),
                s.image.dimensions(),
                s.label.dimensions()
            )));
        }
        Ok(match (&self.augment, rng) {
            (Some(cfg), Some(r)) => augment_sample(cfg, &s.image, &s.label, r),
            (cfg, _) => {
                let (mean, std) = cfg
                    .as_ref()
                    .map_or((IMAGENET_MEAN_255, IMAGENET_STD_255), |c| (c.mean, c.std));
                (normalize_to_chw(&s.image, mean, std), s.label)
            }
        })
    }

    fn augments_at_random(&self) -> bool {
        self.augment.is_some()
    }
}

/// Stacks same-size samples into `x [B, 3, h, w]` and [`Target::LabelMap`] `[B, h, w]`.
pub struct StackSeg;

impl Collate<(Vec<f32>, image::GrayImage)> for StackSeg {
    fn collate(
        &self,
        source: &str,
        indices: &[usize],
        samples: Vec<(Vec<f32>, image::GrayImage)>,
    ) -> Result<(Tensor, Target)> {
        let (w, h) = samples[0].1.dimensions();
        if let Some((k, (_, l))) = samples
            .iter()
            .enumerate()
            .find(|(_, (_, l))| l.dimensions() != (w, h))
        {
            return Err(KdError::BadShape {
                op: "SegLoader::batch_of".into(),
                name: format!("sample {} of {source}", indices[k]),
                shape: vec![l.height() as i64, l.width() as i64],
                expected: format!("the batch's first sample size [{h}, {w}] (use batch size 1)"),
            });
        }
        let b = samples.len();
        let mut x = Vec::with_capacity(b * 3 * (w * h) as usize);
        let mut y = Vec::with_capacity(b * (w * h) as usize);
        for (xs, l) in &samples {
            x.extend_from_slice(xs);
            y.extend(l.as_raw().iter().map(|&v| v as i64));
        }
        let (b, h, w) = (b as i64, h as i64, w as i64);
        Ok((
            Tensor::from_slice(&x).reshape([b, 3, h, w]),
            Target::LabelMap(Tensor::from_slice(&y).reshape([b, h, w])),
        ))
    }
}

/// The segmentation loader: batches `x [B,3,h,w]` (float32, normalised) and label maps
/// `[B,h,w]` (int64 training ids, 255 = ignore).
pub type SegLoader = Loader<SegSamples, StackSeg>;

/// A loader over `source`. With `augment = None` the loader never augments (evaluation:
/// ImageNet normalisation at the source's size); otherwise training epochs run the pipeline and
/// evaluation epochs normalise with its statistics. `drop_last` drops the final partial batch of
/// training epochs. Fails on batch size 0 or an invalid config.
pub fn seg_loader(
    source: Arc<dyn SegSource>,
    batch_size: usize,
    augment: Option<SegAugConfig>,
    drop_last: bool,
    seed: u64,
) -> Result<SegLoader> {
    Loader::new(
        SegSamples::new(source, augment)?,
        StackSeg,
        batch_size,
        drop_last,
        seed,
    )
}

/// What the training pipeline of `loader` draws for sample `index` in epoch `epoch` (the same
/// generator its batches derive), with the augmented sample. Decodes the sample. Fails when the
/// loader has no pipeline.
pub fn trace_of(loader: &SegLoader, index: usize, epoch: usize) -> Result<SegAugTrace> {
    let samples = loader.source();
    let cfg = samples
        .augment()
        .ok_or_else(|| KdError::invalid("trace_of: the loader does not augment"))?;
    let s = samples.source().get(index)?;
    let mut r = loader.rng_of(index, epoch);
    Ok(augment_sample_traced(cfg, &s.image, &s.label, &mut r).2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{GrayImage, RgbImage, SegSample};
    use kd_core::data::Batch;

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
        seg_loader(Arc::new(Toy), 4, Some(SegAugConfig::with_crop(8, 8)), false, seed).unwrap()
    }

    #[test]
    fn shapes_kinds_and_eval_values() {
        let l = seg_loader(Arc::new(Toy), 4, None, false, 0).unwrap();
        let batches: Vec<Batch> = l.epoch(0, None, false).map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].x.size(), vec![4, 3, 10, 12]);
        assert_eq!(batches[2].target.tensor().size(), vec![1, 10, 12]);
        assert_eq!(batches[0].x.kind(), tch::Kind::Float);
        assert_eq!(batches[0].target.tensor().kind(), tch::Kind::Int64);
        assert_eq!(
            batches.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>(),
            (0..9).collect::<Vec<_>>()
        );
        // Sample 1, pixel (x=3, y=0): label (1 + 1) % 4 = 2, red 40.
        let y = batches[0].target.tensor().int64_value(&[1, 0, 3]);
        assert_eq!(y, 2);
        let r = batches[0].x.double_value(&[1, 0, 0, 3]);
        assert!((r - (40.0 - 123.675) / 58.395).abs() < 1e-5);
        // Unaugmented training epochs of a loader without a pipeline keep the size.
        let b = l.epoch(0, None, true).next().unwrap().unwrap();
        assert_eq!(b.x.size(), vec![4, 3, 10, 12]);
        assert!(seg_loader(Arc::new(Toy), 0, None, false, 0).is_err());
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
            assert!(p.x.equal(&q.x) && p.target.tensor().equal(q.target.tensor()));
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
        assert!(one.x.equal(&two.x) && one.target.tensor().equal(two.target.tensor()));
        let d = seg_loader(Arc::new(Toy), 4, Some(SegAugConfig::with_crop(8, 8)), true, 5).unwrap();
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
        let l = seg_loader(Arc::new(Mixed), 2, None, false, 0).unwrap();
        let msg = l.batch_of(&[0, 1], 0, false).unwrap_err().to_string();
        assert!(
            msg.contains("sample 1 of mixed") && msg.contains("batch size 1"),
            "{msg}"
        );
        let one = seg_loader(Arc::new(Mixed), 1, None, false, 0).unwrap();
        let sizes: Vec<Vec<i64>> = one
            .epoch(0, None, false)
            .map(|b| b.unwrap().target.tensor().size())
            .collect();
        assert_eq!(sizes, vec![vec![1, 3, 4], vec![1, 3, 5]]);
    }
}
