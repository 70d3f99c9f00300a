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
    /// At most this many samples in an evaluation batch (see [`SubsetSource::with_eval_batch`]).
    eval_batch: Option<usize>,
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
            eval_batch: None,
        })
    }

    /// Evaluation batches (`train = false`) of at most `size` samples: each of the inner
    /// source's batches is cut into pieces that long, never merged with the next, so a size at
    /// or above the inner batch size changes nothing. The held-out split of a training source
    /// is scored in the test set's evaluation batches this way: segmentation evaluates whole
    /// images one at a time (they may differ in size, and a whole image costs more memory than
    /// a training crop), where the training loader would stack eight.
    pub fn with_eval_batch(mut self, size: usize) -> Self {
        self.eval_batch = Some(size.max(1));
        self
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
        let plan = self.inner.epoch_plan(epoch, Some(&outer), train)?;
        let plan = match (self.eval_batch, train) {
            (Some(size), false) => plan
                .iter()
                .flat_map(|b| b.chunks(size).map(<[usize]>::to_vec))
                .collect(),
            _ => plan,
        };
        plan.iter().map(|b| self.own(b)).collect()
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

#[cfg(test)]
mod tests {
    use tch::Tensor;

    use super::*;
    use crate::data::{Collate, Loader, SampleSource, Target};
    use crate::rng::Rng;

    /// 12 samples; sample `i` is `i`.
    struct Count;

    impl SampleSource for Count {
        type Sample = f32;
        fn len(&self) -> usize {
            12
        }
        fn name(&self) -> String {
            "count".into()
        }
        fn sample(&self, index: usize, _: Option<&mut Rng>) -> Result<f32> {
            Ok(index as f32)
        }
        fn augments_at_random(&self) -> bool {
            false
        }
    }

    /// `x [B, 1, 1, 1]` = the samples.
    struct Stack;

    impl Collate<f32> for Stack {
        fn collate(&self, _: &str, indices: &[usize], samples: Vec<f32>) -> Result<(Tensor, Target)> {
            let y: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
            Ok((
                Tensor::from_slice(&samples).view([samples.len() as i64, 1, 1, 1]),
                Target::Labels(Tensor::from_slice(&y)),
            ))
        }
    }

    #[test]
    fn a_subset_is_renumbered_and_reads_the_inner_samples() {
        let inner = Loader::new(Count, Stack, 4, false, 0).unwrap();
        let sub = SubsetSource::new(&inner, vec![9, 2, 5], "held out").unwrap();
        assert_eq!(sub.len(), 3);
        let b = sub.batch_of(&[0, 2], 0, false).unwrap();
        assert_eq!(b.indices, [0, 2]);
        assert_eq!(Vec::<f32>::try_from(b.x.reshape([-1])).unwrap(), [9.0, 5.0]);
        // Evaluation visits the samples in the inner source's order, renumbered.
        let plan = sub.epoch_plan(0, None, false).unwrap();
        assert_eq!(plan, [vec![0, 1, 2]]);
        let err = SubsetSource::new(&inner, vec![12], "held out").err().unwrap();
        assert!(err.to_string().contains("sample 12"), "{err}");
    }

    #[test]
    fn eval_batches_are_cut_to_the_given_size_never_merged() {
        let inner = Loader::new(Count, Stack, 4, false, 0).unwrap();
        let all: Vec<usize> = (0..10).collect();
        let sub = SubsetSource::new(&inner, all.clone(), "held out").unwrap();
        let sizes = |s: &SubsetSource<'_>, train: bool| -> Vec<usize> {
            s.epoch_plan(0, None, train)
                .unwrap()
                .iter()
                .map(Vec::len)
                .collect()
        };
        assert_eq!(sizes(&sub, false), [4, 4, 2]);
        let one = SubsetSource::new(&inner, all.clone(), "held out")
            .unwrap()
            .with_eval_batch(1);
        assert_eq!(sizes(&one, false), [1; 10]);
        let seen: Vec<usize> = one
            .batches(0, None, false)
            .flat_map(|b| b.unwrap().indices)
            .collect();
        assert_eq!(seen, all);
        // Training batches keep the inner size; a larger evaluation size merges nothing.
        assert_eq!(sizes(&one, true), [4, 4, 2]);
        let big = SubsetSource::new(&inner, all, "held out")
            .unwrap()
            .with_eval_batch(64);
        assert_eq!(sizes(&big, false), [4, 4, 2]);
    }
}
