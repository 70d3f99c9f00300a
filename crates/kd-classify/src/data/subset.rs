//! A view of part of a dataset. Subsets are how a quick-scale run uses fewer samples and how a
//! sampler hook restricts training, without copying images. Indices are re-numbered `0..n`
//! inside the view; [`Subset::parent_index`] maps back.

use std::sync::Arc;

use super::{Dataset, Sample};
use kd_core::{KdError, Result};

/// The samples `indices` of `inner`, in that order.
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// A view of `indices` of `inner`; every index must be in range.
    pub fn new(inner: Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(KdError::invalid(format!(
                "subset index {bad} out of range for {} ({} samples)",
                inner.name(),
                inner.len()
            )));
        }
        Ok(Self { inner, indices })
    }

    /// A class-balanced subset of `n` samples: the first `n / K` of each class in dataset order
    /// (the remainder goes to the lowest classes), returned in dataset order.
    pub fn balanced(inner: Arc<dyn Dataset>, n: usize) -> Result<Self> {
        let k = inner.num_classes().max(1);
        let mut quota: Vec<usize> = (0..k).map(|c| n / k + usize::from(c < n % k)).collect();
        let mut indices = Vec::with_capacity(n);
        for i in 0..inner.len() {
            let label = inner.get(i)?.label;
            if label >= 0 && (label as usize) < k && quota[label as usize] > 0 {
                quota[label as usize] -= 1;
                indices.push(i);
            }
            if indices.len() == n {
                break;
            }
        }
        Self::new(inner, indices)
    }

    /// The index in the parent dataset of sample `i` of this view.
    pub fn parent_index(&self, i: usize) -> usize {
        self.indices[i]
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        let parent = *self.indices.get(index).ok_or_else(|| {
            KdError::invalid(format!(
                "index {index} out of range for a subset of {} samples",
                self.indices.len()
            ))
        })?;
        let mut s = self.inner.get(parent)?;
        s.index = index;
        Ok(s)
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn shape(&self) -> [usize; 3] {
        self.inner.shape()
    }
    fn name(&self) -> String {
        format!("{}[{} samples]", self.inner.name(), self.indices.len())
    }
}
