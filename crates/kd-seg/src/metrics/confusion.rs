//! The confusion matrix behind mean IoU.
//!
//! Rows are ground-truth classes, columns predictions. Pixels whose label equals the ignore
//! value are not counted. For class `c`, `tp = C[c,c]`, `fp` = the rest of column `c`,
//! `fn` = the rest of row `c`, and `IoU = tp / (tp + fp + fn)`; a class with
//! `tp + fp + fn = 0` (absent from both labels and predictions) has no IoU and is left out of the
//! mean, like NumPy's `nanmean` in the usual evaluation scripts.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use kd_core::{KdError, Result};

/// A `k × k` confusion matrix over class ids `0..k`; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    k: usize,
    ignore: i64,
    /// Row-major `k × k` counts, `[ground truth][prediction]`.
    counts: Vec<u64>,
}

/// One class in a [`SegReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassIou {
    /// Class name.
    pub name: String,
    /// IoU in percent; `None` when the class is absent from labels and predictions.
    pub iou: Option<f64>,
    /// Pixels labelled with the class.
    pub gt_pixels: u64,
    /// Pixels predicted as the class (among non-ignored pixels).
    pub pred_pixels: u64,
}

/// A serialisable summary of a [`ConfusionMatrix`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegReport {
    /// Mean IoU in percent over classes that have one (NaN when none has).
    pub miou: f64,
    /// Pixel accuracy in percent (NaN when no pixel was counted).
    pub pixel_acc: f64,
    /// Counted (non-ignored) pixels.
    pub pixels: u64,
    /// Per-class results, by class id.
    pub classes: Vec<ClassIou>,
}

impl ConfusionMatrix {
    /// An empty matrix over `k` classes; labels equal to `ignore` are skipped.
    pub fn new(k: usize, ignore: i64) -> Self {
        Self {
            k,
            ignore,
            counts: vec![0; k * k],
        }
    }

    /// Number of classes.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The ignored label value.
    pub fn ignore(&self) -> i64 {
        self.ignore
    }

    /// Row-major counts, `[ground truth][prediction]`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Pixels of class `gt` predicted as `pred`.
    pub fn get(&self, gt: usize, pred: usize) -> u64 {
        self.counts[gt * self.k + pred]
    }

    /// Replaces the counts by their sum over the ranks of the data-parallel group (each
    /// counted its part of the evaluation set); alone, nothing changes.
    pub fn sum_over_ranks(&mut self) -> Result<()> {
        let Some(g) = kd_core::dist::world() else {
            return Ok(());
        };
        let counts: Vec<i64> = self.counts.iter().map(|&c| c as i64).collect();
        let mut t = [tch::Tensor::from_slice(&counts)];
        g.all_reduce(&mut t, kd_core::dist::ReduceOp::Sum)?;
        self.counts = Vec::<i64>::try_from(&t[0])?
            .into_iter()
            .map(|c| c as u64)
            .collect();
        Ok(())
    }

    /// Counted pixels.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds predictions `pred` against labels `label` (same shape, e.g. `[B, H, W]`, integer
    /// kinds, any device; `label` is moved to `pred`'s device). The counting runs on the device
    /// with one `bincount`; a single copy brings `k² + 2` numbers to the host. A non-ignored label
    /// or a prediction outside `0..k` is an error and leaves the matrix unchanged.
    pub fn update(&mut self, pred: &Tensor, label: &Tensor) -> Result<()> {
        kd_core::shape::same("ConfusionMatrix::update", "pred", pred, "label", label)?;
        for (name, t) in [("pred", pred), ("label", label)] {
            if t.is_floating_point() {
                return Err(KdError::invalid(format!(
                    "ConfusionMatrix::update: {name} has kind {:?}; class ids must be integers",
                    t.kind()
                )));
            }
        }
        let k = self.k as i64;
        let pred = pred.to_kind(Kind::Int64).reshape([-1]);
        let label = label.to_device(pred.device()).to_kind(Kind::Int64).reshape([-1]);
        let counted = label.ne(self.ignore);
        let in_range = label
            .ge(0)
            .logical_and(&label.lt(k))
            .logical_and(&pred.ge(0))
            .logical_and(&pred.lt(k));
        // Bins 0..k²: pairs; k²: out of range; k² + 1: ignored.
        let code = (&label * k + &pred)
            .where_scalarother(&in_range, k * k)
            .where_scalarother(&counted, k * k + 1);
        let bins = code.bincount(None::<Tensor>, k * k + 2);
        let host = Vec::<i64>::try_from(bins.to_device(Device::Cpu))?;
        let bad = host[(k * k) as usize];
        if bad > 0 {
            return Err(KdError::invalid(format!(
                "ConfusionMatrix::update: {bad} pixels have a prediction or a non-ignored label outside 0..{k}"
            )));
        }
        for (c, &n) in self.counts.iter_mut().zip(&host) {
            *c += n as u64;
        }
        Ok(())
    }

    /// Adds host arrays of class ids (same length); see [`ConfusionMatrix::update`].
    pub fn update_u8(&mut self, pred: &[u8], label: &[u8]) -> Result<()> {
        if pred.len() != label.len() {
            return Err(KdError::invalid(format!(
                "ConfusionMatrix::update_u8: {} predictions for {} labels",
                pred.len(),
                label.len()
            )));
        }
        let k = self.k;
        let mut add = vec![0u64; k * k];
        for (&p, &l) in pred.iter().zip(label) {
            if l as i64 == self.ignore {
                continue;
            }
            let (p, l) = (p as usize, l as usize);
            if p >= k || l >= k {
                return Err(KdError::invalid(format!(
                    "ConfusionMatrix::update_u8: prediction {p} or label {l} outside 0..{k}"
                )));
            }
            add[l * k + p] += 1;
        }
        for (c, n) in self.counts.iter_mut().zip(add) {
            *c += n;
        }
        Ok(())
    }

    /// Adds another matrix over the same classes and ignore value.
    pub fn merge(&mut self, other: &ConfusionMatrix) -> Result<()> {
        if (self.k, self.ignore) != (other.k, other.ignore) {
            return Err(KdError::invalid(format!(
                "cannot merge confusion matrices over {} classes (ignore {}) and {} classes (ignore {})",
                self.k, self.ignore, other.k, other.ignore
            )));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    /// IoU per class as a fraction in `[0, 1]`; `None` where `tp + fp + fn = 0`.
    pub fn iou(&self) -> Vec<Option<f64>> {
        let k = self.k;
        (0..k)
            .map(|c| {
                let tp = self.get(c, c);
                let row: u64 = (0..k).map(|j| self.get(c, j)).sum();
                let col: u64 = (0..k).map(|i| self.get(i, c)).sum();
                let denom = row + col - tp;
                (denom > 0).then(|| tp as f64 / denom as f64)
            })
            .collect()
    }

    /// Mean IoU in percent over the classes that have one; NaN when none has.
    pub fn miou(&self) -> f64 {
        let v: Vec<f64> = self.iou().into_iter().flatten().collect();
        if v.is_empty() {
            f64::NAN
        } else {
            100.0 * v.iter().sum::<f64>() / v.len() as f64
        }
    }

    /// Share of counted pixels predicted correctly, in percent; NaN when nothing was counted.
    pub fn pixel_acc(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return f64::NAN;
        }
        let correct: u64 = (0..self.k).map(|c| self.get(c, c)).sum();
        100.0 * correct as f64 / total as f64
    }

    /// The summary with class names (missing names become the class id).
    pub fn report(&self, names: &[&str]) -> SegReport {
        let k = self.k;
        let classes = self
            .iou()
            .into_iter()
            .enumerate()
            .map(|(c, iou)| ClassIou {
                name: names.get(c).map_or_else(|| c.to_string(), |n| n.to_string()),
                iou: iou.map(|v| 100.0 * v),
                gt_pixels: (0..k).map(|j| self.get(c, j)).sum(),
                pred_pixels: (0..k).map(|i| self.get(i, c)).sum(),
            })
            .collect();
        SegReport {
            miou: self.miou(),
            pixel_acc: self.pixel_acc(),
            pixels: self.total(),
            classes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[i64], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    #[test]
    fn perfect_prediction_is_100() {
        let mut m = ConfusionMatrix::new(3, 255);
        let y = t(&[0, 1, 2, 2, 1, 0], &[1, 2, 3]);
        m.update(&y, &y).unwrap();
        assert_eq!(m.iou(), vec![Some(1.0); 3]);
        assert_eq!(m.miou(), 100.0);
        assert_eq!(m.pixel_acc(), 100.0);
    }

    #[test]
    fn one_class_always_wrong() {
        // Class 2 is always predicted as 0: IoU(2) = 0, IoU(0) = 2 / (2 + 2) = 0.5, IoU(1) = 1.
        let mut m = ConfusionMatrix::new(3, 255);
        m.update(&t(&[0, 0, 1, 1, 0, 0], &[6]), &t(&[0, 0, 1, 1, 2, 2], &[6]))
            .unwrap();
        assert_eq!(m.iou(), vec![Some(0.5), Some(1.0), Some(0.0)]);
        assert!((m.miou() - 50.0).abs() < 1e-12);
        assert!((m.pixel_acc() - 400.0 / 6.0).abs() < 1e-12);
        assert_eq!(m.get(2, 0), 2);
    }

    #[test]
    fn absent_classes_and_ignored_pixels_are_excluded() {
        // Class 3 never appears: no IoU, not in the mean. The ignored pixels' predictions (3)
        // do not count, or class 3 would get an IoU of 0.
        let mut m = ConfusionMatrix::new(4, 255);
        m.update(&t(&[0, 1, 3, 3], &[2, 2]), &t(&[0, 1, 255, 255], &[2, 2]))
            .unwrap();
        assert_eq!(m.iou(), vec![Some(1.0), Some(1.0), None, None]);
        assert_eq!(m.miou(), 100.0);
        assert_eq!(m.total(), 2);
        let r = m.report(&["a", "b", "c"]);
        assert_eq!(r.classes[3].name, "3");
        assert_eq!(r.classes[2].iou, None);
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains("\"name\":\"a\"") && json.contains("\"iou\":null"),
            "{json}"
        );
        assert!(ConfusionMatrix::new(2, 255).miou().is_nan());
    }

    #[test]
    fn host_and_device_paths_agree_and_merge_adds() {
        let pred: Vec<u8> = (0..200).map(|i| ((i * 7) % 5) as u8).collect();
        let label: Vec<u8> = (0..200)
            .map(|i| if i % 11 == 0 { 255 } else { ((i * 3) % 5) as u8 })
            .collect();
        let mut host = ConfusionMatrix::new(5, 255);
        host.update_u8(&pred, &label).unwrap();
        for d in kd_core::device::test_devices() {
            let mut dev = ConfusionMatrix::new(5, 255);
            let p = Tensor::from_slice(&pred)
                .to_kind(Kind::Int64)
                .view([2, 10, 10])
                .to_device(d);
            let l = Tensor::from_slice(&label).to_kind(Kind::Int64).view([2, 10, 10]);
            dev.update(&p, &l).unwrap();
            assert_eq!(dev, host);
        }
        let mut twice = host.clone();
        twice.merge(&host).unwrap();
        assert_eq!(twice.total(), 2 * host.total());
        assert_eq!(twice.iou(), host.iou());
        assert!(twice.merge(&ConfusionMatrix::new(4, 255)).is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut m = ConfusionMatrix::new(3, 255);
        assert!(m.update(&t(&[0, 1], &[2]), &t(&[0, 1, 2], &[3])).is_err());
        let msg = m
            .update(&t(&[0, 7], &[2]), &t(&[0, 1], &[2]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("outside 0..3"), "{msg}");
        assert!(m.update(&t(&[0, 1], &[2]), &t(&[0, 5], &[2])).is_err());
        assert_eq!(m.total(), 0, "a failed update leaves the matrix unchanged");
        assert!(m.update(&Tensor::from_slice(&[0.5f32]), &t(&[0], &[1])).is_err());
        assert!(m.update_u8(&[0, 4], &[0, 1]).is_err());
        assert!(m.update_u8(&[0], &[0, 1]).is_err());
    }
}
