//! The epoch plan: which samples, in which order, in how many batches.
//!
//! Tasks decode and augment differently, but their determinism contract is one: the order comes
//! from a generator derived from `(seed, epoch)` alone, and batches are cut from it in sequence.
//! Keeping that in one place keeps every task's epochs identical for the same seed and dataset
//! size.

use rand::seq::SliceRandom;

use crate::data::Batch;
use crate::rng;
use crate::{KdError, Result};

/// The `index` argument of [`rng::derive`] used for the epoch shuffle; never a dataset index.
const SHUFFLE_INDEX: u64 = u64::MAX;

/// Batches in an epoch over `n` samples: the final partial batch is dropped when training with
/// `drop_last`.
pub(super) fn num_batches(n: usize, batch_size: usize, drop_last: bool, train: bool) -> usize {
    if train && drop_last {
        n / batch_size
    } else {
        n.div_ceil(batch_size)
    }
}

/// The dataset indices an epoch visits: `subset` (or `0..n`) shuffled by a generator derived from
/// `(seed, epoch)` when `train`, as given otherwise. Entries may repeat; one out of range is an
/// error naming the dataset `name`.
pub(super) fn order(
    n: usize,
    name: &str,
    seed: u64,
    epoch: usize,
    subset: Option<&[usize]>,
    train: bool,
) -> Result<Vec<usize>> {
    let mut order = match subset {
        Some(s) => {
            if let Some(&bad) = s.iter().find(|&&i| i >= n) {
                return Err(KdError::invalid(format!(
                    "epoch subset of {name}: index {bad} out of range for {n} samples"
                )));
            }
            s.to_vec()
        }
        None => (0..n).collect(),
    };
    if train {
        order.shuffle(&mut rng::derive(seed, epoch as u64, SHUFFLE_INDEX));
    }
    Ok(order)
}

/// The lazily built batches of an epoch: `order` (or its error, yielded once) cut into
/// `batches` consecutive chunks of `batch_size`, each built by `make`.
pub(super) fn lazy_batches(
    order: Result<Vec<usize>>,
    batch_size: usize,
    drop_last: bool,
    train: bool,
    make: impl Fn(&[usize]) -> Result<Batch> + Send + 'static,
) -> impl Iterator<Item = Result<Batch>> + Send + 'static {
    let (order, err) = match order {
        Ok(o) => (o, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let batches = num_batches(order.len(), batch_size, drop_last, train);
    err.into_iter().map(Err).chain((0..batches).map(move |b| {
        let end = ((b + 1) * batch_size).min(order.len());
        make(&order[b * batch_size..end])
    }))
}
