//! Evaluation metrics (placeholder interface, replaced by the full segmentation metrics).

use tch::{Kind, Tensor};

use crate::{KdError, Result};

/// A K×K confusion matrix (rows = ground truth, columns = prediction).
#[derive(Clone, Debug)]
pub struct ConfusionMatrix {
    k: usize,
    ignore: i64,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix over `k` classes; labels equal to `ignore` (or outside `0..k`) are skipped.
    pub fn new(k: usize, ignore: i64) -> Self {
        Self {
            k,
            ignore,
            counts: vec![0; k * k],
        }
    }

    /// Adds predictions `[B, H, W]` against labels `[B, H, W]`.
    pub fn update(&mut self, pred: &Tensor, label: &Tensor) -> Result<()> {
        if pred.size() != label.size() {
            return Err(KdError::invalid(format!(
                "prediction {:?} vs label {:?}",
                pred.size(),
                label.size()
            )));
        }
        let k = self.k as i64;
        let label = label.to_kind(Kind::Int64);
        let mask = label
            .ge(0)
            .logical_and(&label.lt(k))
            .logical_and(&label.ne(self.ignore));
        let idx = label.masked_select(&mask) * k + pred.to_kind(Kind::Int64).masked_select(&mask);
        let counts = Vec::<i64>::try_from(
            idx.bincount::<Tensor>(None, k * k)
                .to_kind(Kind::Int64)
                .to_device(tch::Device::Cpu),
        )
        .map_err(|e| KdError::invalid(e.to_string()))?;
        for (c, n) in self.counts.iter_mut().zip(counts) {
            *c += n as u64;
        }
        Ok(())
    }

    /// Mean IoU in % over classes present in ground truth or prediction.
    pub fn miou(&self) -> Option<f64> {
        let k = self.k;
        let ious: Vec<f64> = (0..k)
            .filter_map(|c| {
                let tp = self.counts[c * k + c];
                let row: u64 = (0..k).map(|j| self.counts[c * k + j]).sum();
                let col: u64 = (0..k).map(|i| self.counts[i * k + c]).sum();
                let denom = row + col - tp;
                (denom > 0).then(|| tp as f64 / denom as f64)
            })
            .collect();
        (!ious.is_empty()).then(|| 100.0 * ious.iter().sum::<f64>() / ious.len() as f64)
    }
}
