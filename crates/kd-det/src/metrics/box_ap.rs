//! COCO box AP of a detector over a loader: forward, post-processing, mapping back to the
//! original image pixels, and the COCO evaluation against the validation annotation file.
//!
//! The same path serves the per-epoch curve (as the trainer's [`Evaluator`]) and the final
//! numbers, so the curve's last point and the table agree.

use std::cell::RefCell;

use kd_core::data::{BatchSource, SubsetSource};
use kd_core::distill::Distiller;
use kd_core::models::Model;
use kd_core::train::Evaluator;
use kd_core::Result;
use tch::{Device, Kind};

use super::{evaluate_bbox, CocoDetection, CocoGt, CocoStats};
use crate::boxes::{self, ImageSize, PostprocessConfig};
use crate::data::{DetLoader, ImageMeta};
use crate::two_stage::FasterRcnn;

/// The trainer's test metric for detectors: COCO box AP in %.
///
/// It keeps the statistics and detections of its latest evaluation: the trainer evaluates after
/// the last epoch, so the row's final numbers need no second pass over the validation set.
pub struct BoxAp<'a> {
    loader: &'a DetLoader,
    gt: &'a CocoGt,
    post: PostprocessConfig,
    last: RefCell<Option<(CocoStats, Vec<CocoDetection>)>>,
    /// The training images through the evaluation transform and their annotations, for a
    /// split held out of them (see [`BoxAp::with_training_set`]).
    train: Option<(&'a DetLoader, &'a CocoGt)>,
}

impl<'a> BoxAp<'a> {
    /// Scores detections of the images of `loader` against `gt` after `post`.
    pub fn new(loader: &'a DetLoader, gt: &'a CocoGt, post: PostprocessConfig) -> Self {
        Self {
            loader,
            gt,
            post,
            last: RefCell::new(None),
            train: None,
        }
    }

    /// Also scores splits held out of the training set (early stopping): `loader` reads the
    /// training images, in the training source's order, through the evaluation transform, and
    /// `gt` holds their annotations. A held-out split is scored against the annotations of its
    /// images alone; without this, [`Evaluator::evaluate_held`] fails, naming the reason.
    pub fn with_training_set(mut self, loader: &'a DetLoader, gt: &'a CocoGt) -> Self {
        self.train = Some((loader, gt));
        self
    }

    /// The statistics and detections of the latest evaluation in this process, if any.
    pub fn take_last(&self) -> Option<(CocoStats, Vec<CocoDetection>)> {
        self.last.borrow_mut().take()
    }
}

impl Evaluator for BoxAp<'_> {
    fn name(&self) -> String {
        "box AP".into()
    }

    fn evaluate(
        &self,
        student: &dyn Model,
        _distiller: &dyn Distiller,
        data: &dyn BatchSource,
        device: Device,
    ) -> Result<f64> {
        if data.len() != self.loader.len() {
            return Err(kd_core::KdError::invalid(format!(
                "box AP: the test set has {} images but the evaluator's loader {}",
                data.len(),
                self.loader.len()
            )));
        }
        let (stats, dets) = evaluate(student, self.loader, self.gt, &self.post, device)?;
        let ap = 100.0 * stats.ap;
        *self.last.borrow_mut() = Some((stats, dets));
        Ok(ap)
    }

    fn evaluate_held(
        &self,
        student: &dyn Model,
        _distiller: &dyn Distiller,
        train: &dyn BatchSource,
        held: &[usize],
        eval_batch: usize,
        device: Device,
    ) -> Result<f64> {
        let Some((loader, gt)) = self.train else {
            return Err(kd_core::KdError::invalid(
                "box AP: a split held out of the training set needs the training set's \
                 annotations, and this evaluator was given none",
            ));
        };
        if train.len() != loader.len() {
            return Err(kd_core::KdError::invalid(format!(
                "box AP: the training set has {} images but the held-out evaluator's loader {}",
                train.len(),
                loader.len()
            )));
        }
        let data = SubsetSource::new(loader, held.to_vec(), "held out")?.with_eval_batch(eval_batch);
        let meta = |i: usize| -> Result<ImageMeta> {
            let at = *held.get(i).ok_or_else(|| {
                kd_core::KdError::invalid(format!("box AP: held-out sample {i} is out of range"))
            })?;
            loader.source().meta(at)
        };
        let cat_ids = loader.source().category_ids().to_vec();
        let dets = detect_on(student, &data, &meta, &cat_ids, &self.post, device, 0.0)?;
        let ids = held
            .iter()
            .map(|&i| loader.source().meta(i).map(|m| m.image_id))
            .collect::<Result<Vec<_>>>()?;
        Ok(100.0 * evaluate_bbox(&gt.subset(&ids)?, &dets)?.ap)
    }
}

/// Runs `net` (eval mode, no gradients) over every image of `loader` and returns the COCO
/// statistics against `gt` together with the detections in original image pixels.
pub fn evaluate(
    net: &dyn Model,
    loader: &DetLoader,
    gt: &CocoGt,
    post: &PostprocessConfig,
    device: Device,
) -> Result<(CocoStats, Vec<CocoDetection>)> {
    let dets = detect(net, loader, post, device, 0.0)?;
    let stats = evaluate_bbox(gt, &dets)?;
    Ok((stats, dets))
}

/// The detections of `net` over every image of `loader`, scoring at least `min_score`, in the
/// COCO results format (boxes `[x, y, w, h]` in original image pixels, COCO category ids).
pub fn detect(
    net: &dyn Model,
    loader: &DetLoader,
    post: &PostprocessConfig,
    device: Device,
    min_score: f64,
) -> Result<Vec<CocoDetection>> {
    let cat_ids = loader.source().category_ids().to_vec();
    let meta = |i: usize| loader.source().meta(i);
    detect_on(net, loader, &meta, &cat_ids, post, device, min_score)
}

/// [`detect`] over any source of evaluation batches: `meta` maps a batch's sample index to how
/// its image was transformed, `cat_ids` a contiguous class to its COCO category id.
fn detect_on(
    net: &dyn Model,
    data: &dyn BatchSource,
    meta: &dyn Fn(usize) -> Result<ImageMeta>,
    cat_ids: &[i64],
    post: &PostprocessConfig,
    device: Device,
    min_score: f64,
) -> Result<Vec<CocoDetection>> {
    // (position of the image in the evaluation order, detection): each rank detects on its part
    // of every batch; gathered and put back in that order, the list is one process's.
    let mut out: Vec<(usize, CocoDetection)> = Vec::new();
    for batch in kd_core::dist::eval_batches(data) {
        let batch = batch?;
        let x = batch.x.to_device(device);
        net.check_input(&x)?;
        let metas = batch
            .indices
            .iter()
            .map(|&i| meta(i))
            .collect::<Result<Vec<_>>>()?;
        let per_image = tch::no_grad(|| -> Result<_> {
            let o = net.forward_t(&x, false);
            let sizes: Vec<ImageSize> = metas
                .iter()
                .map(|m| ImageSize::new(m.valid_w as f64, m.valid_h as f64))
                .collect();
            match net.as_any().and_then(|a| a.downcast_ref::<FasterRcnn>()) {
                Some(two_stage) => two_stage.detect(&o, &sizes, post),
                None => boxes::postprocess_output(&o, net.taps(), &sizes, post),
            }
        })?;
        for ((d, meta), &at) in per_image.iter().zip(&metas).zip(&batch.indices) {
            let b = Vec::<f32>::try_from(d.boxes.to_device(Device::Cpu).to_kind(Kind::Float).reshape([-1]))?;
            let s = Vec::<f32>::try_from(d.scores.to_device(Device::Cpu).to_kind(Kind::Float))?;
            let l = Vec::<i64>::try_from(d.labels.to_device(Device::Cpu).to_kind(Kind::Int64))?;
            for ((bx, &score), &label) in b.chunks(4).zip(&s).zip(&l) {
                if f64::from(score) < min_score {
                    continue;
                }
                let x1 = f64::from(bx[0]) / meta.scale_x;
                let y1 = f64::from(bx[1]) / meta.scale_y;
                let x2 = f64::from(bx[2]) / meta.scale_x;
                let y2 = f64::from(bx[3]) / meta.scale_y;
                out.push((
                    at,
                    CocoDetection {
                        image_id: meta.image_id,
                        category_id: cat_ids[label as usize],
                        bbox: [x1, y1, x2 - x1, y2 - y1],
                        score: f64::from(score),
                    },
                ));
            }
        }
    }
    if kd_core::dist::world().is_some() {
        let mut all: Vec<(usize, CocoDetection)> = Vec::new();
        for part in kd_core::dist::gather_bytes(&encode(&out))? {
            all.extend(decode(&part)?);
        }
        // Stable: within an image, the detections keep their order.
        all.sort_by_key(|(at, _)| *at);
        out = all;
    }
    Ok(out.into_iter().map(|(_, d)| d).collect())
}

/// Bytes of one gathered detection: its image's position, image id, category id, box, score.
const RECORD: usize = 8 * 8;

/// Detections as little-endian records, bit for bit (a decimal round trip could move a box by
/// one unit in the last place and so change the matching).
fn encode(dets: &[(usize, CocoDetection)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dets.len() * RECORD);
    for (at, d) in dets {
        out.extend((*at as u64).to_le_bytes());
        out.extend(d.image_id.to_le_bytes());
        out.extend(d.category_id.to_le_bytes());
        for v in d.bbox.iter().chain([&d.score]) {
            out.extend(v.to_le_bytes());
        }
    }
    out
}

/// The detections [`encode`] wrote.
fn decode(bytes: &[u8]) -> Result<Vec<(usize, CocoDetection)>> {
    if !bytes.len().is_multiple_of(RECORD) {
        return Err(kd_core::KdError::invalid(format!(
            "detections from another rank: {} bytes are not whole records",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(RECORD)
        .map(|r| {
            let word = |i: usize| -> [u8; 8] { r[i * 8..i * 8 + 8].try_into().unwrap_or_default() };
            let f = |i: usize| f64::from_le_bytes(word(i));
            (
                u64::from_le_bytes(word(0)) as usize,
                CocoDetection {
                    image_id: i64::from_le_bytes(word(1)),
                    category_id: i64::from_le_bytes(word(2)),
                    bbox: [f(3), f(4), f(5), f(6)],
                    score: f(7),
                },
            )
        })
        .collect())
}

/// The mean over seeds of each COCO statistic, as a JSON object keyed like [`CocoStats`].
pub fn mean_stats(per_seed: &[CocoStats]) -> serde_json::Value {
    let values: Vec<serde_json::Value> = per_seed
        .iter()
        .filter_map(|s| serde_json::to_value(s).ok())
        .collect();
    let mut out = serde_json::Map::new();
    if let Some(serde_json::Value::Object(first)) = values.first() {
        for key in first.keys() {
            let v: Vec<f64> = values.iter().filter_map(|s| s[key].as_f64()).collect();
            if v.len() == values.len() {
                out.insert(
                    key.clone(),
                    serde_json::json!(v.iter().sum::<f64>() / v.len() as f64),
                );
            }
        }
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_detections_come_back_bit_for_bit() {
        let d = |image_id, score| CocoDetection {
            image_id,
            category_id: 90,
            bbox: [0.1 + 0.2, 1.0 / 3.0, 1e-300, 640.0],
            score,
        };
        let dets = vec![
            (0, d(139, 0.05)),
            (7, d(-1, f64::MIN_POSITIVE)),
            (usize::MAX, d(i64::MAX, 1.0)),
        ];
        let back = decode(&encode(&dets)).unwrap();
        assert_eq!(back.len(), dets.len());
        for ((a, x), (b, y)) in dets.iter().zip(&back) {
            assert_eq!(a, b);
            assert_eq!((x.image_id, x.category_id), (y.image_id, y.category_id));
            for (u, v) in x
                .bbox
                .iter()
                .chain([&x.score])
                .zip(y.bbox.iter().chain([&y.score]))
            {
                assert_eq!(u.to_bits(), v.to_bits());
            }
        }
        assert!(decode(&[0u8; RECORD + 1])
            .unwrap_err()
            .to_string()
            .contains("whole records"));
    }
}
