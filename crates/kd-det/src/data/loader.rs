//! kd-core's seeded loader over detection images.
//!
//! The epoch plan (order, shuffle, batch cuts) is the generic loader's, so a detection run with
//! the same seed visits samples in the same order as a classification or segmentation run
//! would. Images of one batch are decoded and transformed in parallel; each draws its flip from
//! the generator derived from `(seed, epoch, index)`, so batches do not depend on the thread
//! count. Images differ in size, so every batch is padded to its own largest image (rounded up
//! to `size_divisor`, or to a fixed `pad_to`), and its box rows to its own largest annotation
//! count.

use std::sync::Arc;

use kd_core::data::{Collate, Loader, SampleSource, Target};
use kd_core::rng::Rng;
use kd_core::{KdError, Result};
use rand::Rng as _;
use tch::Tensor;

use super::augment::{pad_to_multiple, DetAugConfig, DetInput};
use super::{DetSource, ImageMeta};

/// Images of a [`DetSource`] through MMDet's pipeline (`aug`): resized keeping the ratio,
/// flipped in training with `flip_prob`, normalised.
pub struct DetSamples {
    source: Arc<dyn DetSource>,
    aug: DetAugConfig,
}

impl DetSamples {
    /// Samples of `source` through `aug`; fails on an invalid config.
    pub fn new(source: Arc<dyn DetSource>, aug: DetAugConfig) -> Result<Self> {
        aug.validate()?;
        Ok(Self { source, aug })
    }

    /// The source.
    pub fn source(&self) -> &Arc<dyn DetSource> {
        &self.source
    }

    /// The pipeline.
    pub fn aug(&self) -> &DetAugConfig {
        &self.aug
    }

    /// Contiguous class `k` → COCO `category_id`.
    pub fn category_ids(&self) -> &[i64] {
        self.source.coco().category_ids()
    }

    /// Number of classes K.
    pub fn num_classes(&self) -> usize {
        self.source.coco().num_classes()
    }

    /// How image `index` is mapped to its input by the evaluation transform (no flip).
    pub fn meta(&self, index: usize) -> Result<ImageMeta> {
        let info = self.source.coco().image_info(index)?;
        let (vw, vh) = super::rescale_size(info.width, info.height, self.aug.img_scale);
        Ok(ImageMeta {
            image_id: info.id,
            orig_w: info.width,
            orig_h: info.height,
            scale_x: vw as f64 / info.width as f64,
            scale_y: vh as f64 / info.height as f64,
            valid_w: vw,
            valid_h: vh,
        })
    }

    /// Image `index` through the pipeline, flipped when `rng` is given and draws a flip.
    pub fn input(&self, index: usize, rng: Option<&mut Rng>) -> Result<DetInput> {
        let img = self.source.image(index)?;
        let info = self.source.coco().image_info(index)?;
        let flip = match rng {
            Some(r) => self.aug.flip_prob > 0.0 && r.gen_bool(self.aug.flip_prob),
            None => false,
        };
        Ok(self.aug.apply(&img, &info.targets(), flip))
    }
}

impl SampleSource for DetSamples {
    type Sample = DetInput;

    fn len(&self) -> usize {
        self.source.len()
    }

    fn name(&self) -> String {
        self.source.name()
    }

    fn sample(&self, index: usize, rng: Option<&mut Rng>) -> Result<DetInput> {
        self.input(index, rng)
    }

    fn augments_at_random(&self) -> bool {
        self.aug.flip_prob > 0.0
    }
}

/// Pads a batch of inputs to one size and their targets to one row count: `x` `[B, 3, Hp, Wp]`
/// (zero-padded bottom/right, to a multiple of `size_divisor`, or exactly `pad_to`) and
/// [`Target::Boxes`] `[B, N, 6]` rows `(x1, y1, x2, y2, class, iscrowd)` in input pixels, padded
/// with rows `(0, 0, 0, 0, −1, 0)` to `N = max(1, largest target count in the batch)`.
pub struct PadBoxes {
    /// Padded sizes are multiples of this.
    pub size_divisor: usize,
    /// A fixed padded size `[w, h]`, when every batch must have one shape.
    pub pad_to: Option<[usize; 2]>,
}

impl Collate<DetInput> for PadBoxes {
    fn collate(&self, source: &str, indices: &[usize], inputs: Vec<DetInput>) -> Result<(Tensor, Target)> {
        let div = self.size_divisor;
        let hp = pad_to_multiple(inputs.iter().map(|d| d.height).max().unwrap_or(1), div);
        let wp = pad_to_multiple(inputs.iter().map(|d| d.width).max().unwrap_or(1), div);
        let (wp, hp) = match self.pad_to {
            Some([w, h]) if wp <= w && hp <= h => (w, h),
            Some([w, h]) => {
                let (k, d) = inputs
                    .iter()
                    .enumerate()
                    .find(|(_, d)| d.width > w || d.height > h)
                    .expect("some input exceeds the padded size");
                return Err(KdError::invalid(format!(
                    "{source}: image {} is {}×{} after the resize, larger than pad_to [{w}, {h}]",
                    indices[k], d.width, d.height
                )));
            }
            None => (wp, hp),
        };
        let n = inputs.iter().map(|d| d.targets.len()).max().unwrap_or(0).max(1);
        let b = inputs.len();
        let plane = hp * wp;
        let mut x = vec![0f32; b * 3 * plane];
        let mut y = vec![0f32; b * n * 6];
        for (k, d) in inputs.iter().enumerate() {
            for c in 0..3 {
                let src = &d.chw[c * d.width * d.height..(c + 1) * d.width * d.height];
                let dst = &mut x[(k * 3 + c) * plane..(k * 3 + c + 1) * plane];
                for (row_src, row_dst) in src.chunks_exact(d.width).zip(dst.chunks_exact_mut(wp)) {
                    row_dst[..d.width].copy_from_slice(row_src);
                }
            }
            for r in 0..n {
                let row = &mut y[(k * n + r) * 6..(k * n + r + 1) * 6];
                match d.targets.get(r) {
                    Some(t) => {
                        let [x1, y1, x2, y2] = t.bbox;
                        row.copy_from_slice(&[
                            x1 as f32,
                            y1 as f32,
                            x2 as f32,
                            y2 as f32,
                            t.class as f32,
                            if t.iscrowd { 1.0 } else { 0.0 },
                        ]);
                    }
                    None => row[4] = -1.0,
                }
            }
        }
        Ok((
            Tensor::from_slice(&x).reshape([b as i64, 3, hp as i64, wp as i64]),
            Target::Boxes(Tensor::from_slice(&y).reshape([b as i64, n as i64, 6])),
        ))
    }
}

/// The detection loader; see [`PadBoxes`] for the batch layout.
pub type DetLoader = Loader<DetSamples, PadBoxes>;

/// A loader over `source` with pipeline `aug` (the flip applies to training batches only).
/// `drop_last` drops the final partial batch of training epochs. Fails on batch size 0 or an
/// invalid config.
pub fn det_loader(
    source: Arc<dyn DetSource>,
    batch_size: usize,
    aug: DetAugConfig,
    drop_last: bool,
    seed: u64,
) -> Result<DetLoader> {
    let pad = PadBoxes {
        size_divisor: aug.size_divisor,
        pad_to: aug.pad_to,
    };
    Loader::new(DetSamples::new(source, aug)?, pad, batch_size, drop_last, seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{generate_synthetic_coco, open_coco, open_coco_root, DetSynthConfig, InMemoryDet};
    use image::RgbImage;
    use kd_core::data::Batch;
    use kd_core::data::BatchSource;
    use serde_json::json;

    /// Two images: 40×20 with boxes (one crowd, one too thin to train on), 20×30 with none.
    fn toy() -> (tempfile::TempDir, Arc<dyn DetSource>) {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        RgbImage::from_fn(40, 20, |x, y| image::Rgb([x as u8 * 5, y as u8 * 10, 100]))
            .save(d.join("a.png"))
            .unwrap();
        RgbImage::from_pixel(20, 30, image::Rgb([9, 9, 9]))
            .save(d.join("b.png"))
            .unwrap();
        let v = json!({
            "images": [
                {"id": 11, "file_name": "a.png", "width": 40, "height": 20},
                {"id": 12, "file_name": "b.png", "width": 20, "height": 30}
            ],
            "annotations": [
                {"id": 1, "image_id": 11, "category_id": 5, "bbox": [2, 3, 10, 6], "area": 60, "iscrowd": 0},
                {"id": 2, "image_id": 11, "category_id": 9, "bbox": [20, 0, 20, 20], "area": 400, "iscrowd": 1},
                {"id": 3, "image_id": 11, "category_id": 5, "bbox": [5, 5, 0.5, 4], "area": 2, "iscrowd": 0}
            ],
            "categories": [{"id": 9, "name": "b"}, {"id": 5, "name": "a"}]
        });
        std::fs::write(d.join("ann.json"), v.to_string()).unwrap();
        let ds = open_coco(&d.join("ann.json"), d).unwrap();
        (tmp, Arc::new(ds))
    }

    #[test]
    fn batch_layout_padding_and_meta() {
        let (_tmp, src) = toy();
        // (80, 40): 40×20 → s = min(2, 2) = 2 → 80×40; 20×30 → s = min(80/30, 40/20) = 2 → 40×60.
        let l = det_loader(src, 2, DetAugConfig::with_scale(80, 40), false, 0).unwrap();
        assert_eq!(l.source().category_ids(), &[5, 9]);
        let b = l.batch_of(&[0, 1], 0, false).unwrap();
        // Common size: max(40, 60) = 60 → 64 rows; max(80, 40) = 80 → 96 columns.
        assert_eq!(b.x.size(), vec![2, 3, 64, 96]);
        assert_eq!(b.target.tensor().size(), vec![2, 2, 6]);
        assert_eq!(b.target.tensor().kind(), tch::Kind::Float);
        let rows = Vec::<f32>::try_from(b.target.tensor().view([-1])).unwrap();
        assert_eq!(
            rows,
            vec![
                4.0, 6.0, 24.0, 18.0, 0.0, 0.0, // class of id 5 is 0
                40.0, 0.0, 80.0, 40.0, 1.0, 1.0, // the crowd box, flagged
                0.0, 0.0, 0.0, 0.0, -1.0, 0.0, // image 1 has no objects: padding only
                0.0, 0.0, 0.0, 0.0, -1.0, 0.0,
            ]
        );
        // Padding is zero in the normalised input; the image content is not.
        assert_eq!(b.x.double_value(&[0, 0, 50, 10]), 0.0);
        assert_eq!(b.x.double_value(&[1, 1, 10, 50]), 0.0);
        let v = b.x.double_value(&[1, 0, 10, 10]);
        assert!((v - (9.0 - 123.675) / 58.395).abs() < 1e-5, "{v}");
        assert_eq!(b.indices, vec![0, 1]);

        let m = l.source().meta(1).unwrap();
        assert_eq!(
            m,
            ImageMeta {
                image_id: 12,
                orig_w: 20,
                orig_h: 30,
                scale_x: 2.0,
                scale_y: 2.0,
                valid_w: 40,
                valid_h: 60
            }
        );
        // Boxes of the batch mapped back by the meta are the file's boxes.
        let m0 = l.source().meta(0).unwrap();
        assert_eq!(m0.to_original_xywh([4.0, 6.0, 24.0, 18.0]), [2.0, 3.0, 10.0, 6.0]);
        assert!(l.source().meta(2).is_err());
        // A lone empty image still has one padding row.
        let e = l.batch_of(&[1], 0, false).unwrap();
        assert_eq!(e.target.tensor().size(), vec![1, 1, 6]);
        assert_eq!(e.x.size(), vec![1, 3, 64, 64]);
        assert!(l.batch_of(&[], 0, false).is_err());
        assert!(l.batch_of(&[2], 0, false).is_err());
    }

    #[test]
    fn a_fixed_pad_size_gives_every_batch_one_shape() {
        let (_tmp, src) = toy();
        let fixed = |pad_to| DetAugConfig {
            pad_to,
            ..DetAugConfig::with_scale(80, 40)
        };
        let l = det_loader(src.clone(), 2, fixed(Some([96, 64])), false, 0).unwrap();
        // Without pad_to the lone 40×60 image would be 64×64 and the pair 96×64.
        assert_eq!(l.batch_of(&[1], 0, false).unwrap().x.size(), vec![1, 3, 64, 96]);
        assert_eq!(
            l.batch_of(&[0, 1], 0, false).unwrap().x.size(),
            vec![2, 3, 64, 96]
        );
        // Too small for the 80×40 image: one error naming the image and both sizes.
        let small = det_loader(src, 2, fixed(Some([64, 64])), false, 0).unwrap();
        let msg = small.batch_of(&[1, 0], 0, false).unwrap_err().to_string();
        assert!(
            msg.contains("image 0 is 80×40") && msg.contains("pad_to [64, 64]"),
            "{msg}"
        );
        let msg = fixed(Some([90, 64])).validate().unwrap_err().to_string();
        assert!(msg.contains("multiples of size_divisor 32"), "{msg}");
    }

    #[test]
    fn flips_follow_the_seed() {
        let (_tmp, src) = toy();
        let always = DetAugConfig {
            flip_prob: 1.0,
            ..DetAugConfig::with_scale(80, 40)
        };
        let l = det_loader(src.clone(), 2, always, false, 0).unwrap();
        assert!(l.augments_at_random());
        let b = l.batch_of(&[0], 3, true).unwrap();
        // x1' = 80 − 24 = 56, x2' = 80 − 4 = 76.
        let r = Vec::<f32>::try_from(b.target.tensor().get(0).get(0)).unwrap();
        assert_eq!(r, vec![56.0, 6.0, 76.0, 18.0, 0.0, 0.0]);
        // Evaluation batches never flip.
        let e = l.batch_of(&[0], 3, false).unwrap();
        assert_eq!(e.target.tensor().double_value(&[0, 0, 0]), 4.0);
        let never = det_loader(
            src,
            2,
            DetAugConfig {
                flip_prob: 0.0,
                ..DetAugConfig::with_scale(80, 40)
            },
            false,
            0,
        )
        .unwrap();
        assert!(!never.augments_at_random());
        assert!(never
            .batch_of(&[0], 3, true)
            .unwrap()
            .target
            .tensor()
            .equal(e.target.tensor()));
    }

    #[test]
    fn synthetic_epochs_are_deterministic_and_invert_by_meta() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("s");
        generate_synthetic_coco(&root, &DetSynthConfig::tiny()).unwrap();
        let ds = open_coco_root(&root, "train2017").unwrap();
        let src: Arc<dyn DetSource> = Arc::new(InMemoryDet::load(ds.clone()).unwrap());
        let mk = |seed| det_loader(src.clone(), 3, DetAugConfig::with_scale(96, 64), true, seed).unwrap();
        let (a, b) = (mk(4), mk(4));
        let run = |l: &DetLoader, e| l.epoch(e, None, true).map(|b| b.unwrap()).collect::<Vec<_>>();
        let (ra, rb) = (run(&a, 1), run(&b, 1));
        assert_eq!(ra.len(), ds.len() / 3);
        for (p, q) in ra.iter().zip(&rb) {
            assert_eq!(p.indices, q.indices);
            assert!(p.x.equal(&q.x) && p.target.tensor().equal(q.target.tensor()));
            let s = p.x.size();
            assert!(s[2] % 32 == 0 && s[3] % 32 == 0, "{s:?}");
        }
        let order = |r: &[Batch]| r.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>();
        assert_ne!(order(&ra), order(&run(&a, 2)));
        let idx: Vec<usize> = (0..ds.len()).rev().collect();
        let build = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| a.batch_of(&idx, 3, true).unwrap())
        };
        let (one, two) = (build(1), build(2));
        assert!(one.x.equal(&two.x) && one.target.tensor().equal(two.target.tensor()));
        // Some training images are flipped, and flipping changes the rows.
        let ev = a.batch_of(&idx, 3, false).unwrap();
        assert!(!one.target.tensor().equal(ev.target.tensor()));

        // Evaluation rows mapped back with the meta are the file's trainable boxes.
        let mut checked = 0;
        for (k, &i) in idx.iter().enumerate() {
            let m = a.source().meta(i).unwrap();
            let targets = ds.images()[i].targets();
            for (r, t) in targets.iter().enumerate() {
                let row = Vec::<f64>::try_from(
                    ev.target
                        .tensor()
                        .get(k as i64)
                        .get(r as i64)
                        .to_kind(tch::Kind::Double),
                )
                .unwrap();
                let back = m.to_original_xywh([row[0], row[1], row[2], row[3]]);
                let [x1, y1, x2, y2] = t.bbox;
                let want = [x1, y1, x2 - x1, y2 - y1];
                for (g, w) in back.iter().zip(want) {
                    assert!((g - w).abs() < 1e-3, "{back:?} vs {want:?}");
                }
                assert_eq!(row[4] as usize, t.class);
                checked += 1;
            }
            let valid = (m.valid_h as i64, m.valid_w as i64);
            assert!(valid.0 <= ev.x.size()[2] && valid.1 <= ev.x.size()[3]);
        }
        assert!(checked > 3);
        assert_eq!(BatchSource::len(&a), ds.len());
        assert_eq!(BatchSource::steps_per_epoch(&a, 7), 2);
    }
}
