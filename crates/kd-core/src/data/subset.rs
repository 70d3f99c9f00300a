//! A fixed part of another source, seen as a dataset of its own.
//!
//! Early stopping scores a run on samples held out of its training set: they must go through
//! the same reader, decoding and evaluation protocol as the rest, so the held-out split is a
//! view of the training source, not a copy of its files.

use crate::data::{Batch, BatchSource};
use crate::{KdError, Result};

/// The samples `indices` of `inner`, renumbered `0..indices.len()`: this source's sample `i`
/// is `inner`'s sample `indices[i]`, and its batches carry the renumbered indices.
pub struct SubsetSource<'a> {
    inner: &'a dyn BatchSource,
    indices: Vec<usize>,
    /// `(inner index, own index)` sorted by the inner index, to renumber the inner source's
    /// epoch plans.
    lookup: Vec<(usize, usize)>,
    what: String,
}

impl<'a> SubsetSource<'a> {
    /// The view of `indices` (each below `inner.len()`) of `inner`, named `what` in logs and
    /// errors (e.g. `"held out"`).
    pub fn new(inner: &'a dyn BatchSource, indices: Vec<usize>, what: &str) -> Result<Self> {
        if let Some(bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(KdError::invalid(format!(
                "{}: sample {bad} of a {what} subset is out of range (the source has {})",
                inner.name(),
                inner.len()
            )));
        }
        let mut lookup: Vec<(usize, usize)> = indices.iter().enumerate().map(|(p, &o)| (o, p)).collect();
        lookup.sort_unstable();
        Ok(SubsetSource {
            inner,
            indices,
            lookup,
            what: what.into(),
        })
    }

    /// The underlying source's indices of the samples, in this source's order.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    fn outer(&self, own: &[usize]) -> Result<Vec<usize>> {
        own.iter()
            .map(|&i| {
                self.indices.get(i).copied().ok_or_else(|| {
                    KdError::invalid(format!(
                        "{}: sample {i} is out of range ({} samples)",
                        self.name(),
                        self.len()
                    ))
                })
            })
            .collect()
    }

    fn own(&self, outer: &[usize]) -> Result<Vec<usize>> {
        outer
            .iter()
            .map(|o| {
                self.lookup
                    .binary_search_by_key(o, |&(k, _)| k)
                    .map(|at| self.lookup[at].1)
                    .map_err(|_| {
                        KdError::invalid(format!("{}: sample {o} is not in the subset", self.name()))
                    })
            })
            .collect()
    }
}

impl BatchSource for SubsetSource<'_> {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn name(&self) -> String {
        format!(
            "{} ({}: {} samples)",
            self.inner.name(),
            self.what,
            self.indices.len()
        )
    }

    fn steps_per_epoch(&self, n: usize) -> usize {
        self.inner.steps_per_epoch(n)
    }

    fn batches<'b>(
        &'b self,
        epoch: usize,
        subset: Option<&'b [usize]>,
        train: bool,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + 'b> {
        match self.epoch_plan(epoch, subset, train) {
            Err(e) => Box::new(std::iter::once(Err(e))),
            Ok(plan) => Box::new(plan.into_iter().map(move |b| self.batch_of(&b, epoch, train))),
        }
    }

    fn epoch_plan(&self, epoch: usize, subset: Option<&[usize]>, train: bool) -> Result<Vec<Vec<usize>>> {
        let outer = match subset {
            Some(s) => self.outer(s)?,
            None => self.indices.clone(),
        };
        self.inner
            .epoch_plan(epoch, Some(&outer), train)?
            .iter()
            .map(|b| self.own(b))
            .collect()
    }

    fn batch_of(&self, indices: &[usize], epoch: usize, augment: bool) -> Result<Batch> {
        let outer = self.outer(indices)?;
        let batch = self.inner.batch_of(&outer, epoch, augment)?;
        let own: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        Ok(Batch {
            index: tch::Tensor::from_slice(&own),
            indices: indices.to_vec(),
            ..batch
        })
    }

    fn augments_at_random(&self) -> bool {
        self.inner.augments_at_random()
    }
}
