//! Data-parallel training's contract with a collective engine, and the process's group.
//!
//! The trainer, the evaluators and the methods must not depend on how processes talk (c10d's
//! Gloo or NCCL live in `kd-dist`, which depends on this crate, not the other way round), so
//! they see one object-safe trait, [`Collective`], and one process-wide default group set by
//! whoever starts the process ([`set_world`]) — PyTorch's `torch.distributed` default group.
//! Without a group every helper here is the single-process identity, so code written once runs
//! the same in both.
//!
//! Every rank must issue the same collectives in the same order with tensors of the same
//! shapes and kinds; the helpers here keep that rule by construction (lengths travel before
//! payloads, undefined gradients are sent as zeros).

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use tch::{Kind, Tensor};

use crate::data::{Batch, BatchSource};
use crate::{KdError, Result};

/// How [`Collective::all_reduce`] combines the ranks' tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise sum divided by the world size.
    Mean,
    /// Element-wise maximum.
    Max,
    /// Element-wise minimum.
    Min,
}

/// The parameters of one BatchNorm layer for [`Collective::sync_batch_norm`].
pub struct BatchNormArgs<'a> {
    /// Affine scale `[C]`, when the layer has one.
    pub weight: Option<&'a Tensor>,
    /// Affine shift `[C]`, when the layer has one.
    pub bias: Option<&'a Tensor>,
    /// Running mean `[C]`, updated in place with the global batch's mean.
    pub running_mean: &'a Tensor,
    /// Running variance `[C]`, updated in place with the global batch's unbiased variance.
    pub running_var: &'a Tensor,
    /// Weight of the new statistics in the running update (PyTorch's `momentum`, 0.1 default).
    pub momentum: f64,
    /// Added to the variance before the square root.
    pub eps: f64,
}

/// A group of processes that train one model together.
///
/// Errors of a collective (a lost peer, a timeout) are [`KdError`]s naming the operation and,
/// where it can be told, the rank that went away; no call waits longer than the group's
/// timeout.
pub trait Collective {
    /// This process's rank in `0..world()`.
    fn rank(&self) -> usize;
    /// Number of processes in the group.
    fn world(&self) -> usize;
    /// Combines each tensor of `ts` across the ranks, in place.
    fn all_reduce(&self, ts: &mut [Tensor], op: ReduceOp) -> Result<()>;
    /// Copies `root`'s tensors into every rank's `ts`, in place.
    fn broadcast(&self, ts: &mut [Tensor], root: usize) -> Result<()>;
    /// Every rank's `input` in rank order (the same shape and kind on every rank).
    fn all_gather(&self, input: &Tensor) -> Result<Vec<Tensor>>;
    /// Waits until every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// BatchNorm in training mode over the union of every rank's batch: `x` `[N, C, ...]` is
    /// normalised with the global mean and biased variance, the running statistics move as
    /// a single process with the whole batch would move them, and the backward pass reduces
    /// its two per-channel sums across the ranks (PyTorch's `SyncBatchNorm`).
    fn sync_batch_norm(&self, x: &Tensor, bn: &BatchNormArgs<'_>) -> Result<Tensor>;
}

thread_local! {
    static WORLD: RefCell<Option<Rc<dyn Collective>>> = const { RefCell::new(None) };
    static ALONE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` as if this process were alone: work that one rank does for the group (rank 0
/// scoring a finished network with the final protocol, drawing pictures) must not wait in a
/// collective the other ranks never join.
pub fn alone<R>(f: impl FnOnce() -> R) -> R {
    ALONE.with(|a| a.set(a.get() + 1));
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            ALONE.with(|a| a.set(a.get() - 1));
        }
    }
    let _leave = Leave;
    f()
}

/// Makes `group` this thread's default group (`None`: back to a single process). The
/// runner sets it once, before anything is built.
pub fn set_world(group: Option<Rc<dyn Collective>>) {
    WORLD.with(|w| *w.borrow_mut() = group);
}

/// The default group, when the process is one of several.
pub fn world() -> Option<Rc<dyn Collective>> {
    if ALONE.with(|a| a.get()) > 0 {
        return None;
    }
    WORLD.with(|w| w.borrow().clone()).filter(|g| g.world() > 1)
}

/// This process's rank in the group, even inside [`alone`] (0 without a group): who writes.
fn group_rank() -> usize {
    WORLD.with(|w| w.borrow().as_ref().map_or(0, |g| g.rank()))
}

/// This process's rank (0 alone).
pub fn rank() -> usize {
    world().map_or(0, |g| g.rank())
}

/// Number of processes (1 alone).
pub fn world_size() -> usize {
    world().map_or(1, |g| g.world())
}

/// Whether this process writes files (rank 0, or alone): checkpoints, results and plots are
/// written once.
pub fn is_writer() -> bool {
    group_rank() == 0
}

/// The contiguous part of a global batch of `n` samples that `rank` of `world` takes, as a
/// range: the first `n % world` ranks take one more. Concatenated in rank order the parts
/// are the whole batch in its order, so the global sample order is the single process's.
pub fn shard(n: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Copies rank 0's values of `vars` (parameters and buffers) to every rank.
pub fn broadcast_vars(vars: &[(String, Tensor)]) -> Result<()> {
    let Some(g) = world() else { return Ok(()) };
    let mut ts: Vec<Tensor> = vars.iter().map(|(_, t)| t.detach()).collect();
    tch::no_grad(|| g.broadcast(&mut ts, 0))
}

/// Averages the gradients of the named parameters `params` over the ranks (each rank scaled
/// its loss by its share of the global batch first, so the average is the global batch's
/// gradient). A parameter with a gradient on some ranks only counts as a zero gradient on the
/// others; one without a gradient anywhere is left without, as a single process would leave it.
pub fn average_gradients(params: &[(String, Tensor)]) -> Result<()> {
    let Some(g) = world() else { return Ok(()) };
    let defined: Vec<f64> = params
        .iter()
        .map(|(_, p)| f64::from(u8::from(p.grad().defined())))
        .collect();
    let mut any = [Tensor::from_slice(&defined)];
    g.all_reduce(&mut any, ReduceOp::Max)?;
    let any = Vec::<f64>::try_from(&any[0])?;
    let missing: Vec<&Tensor> = params
        .iter()
        .zip(&any)
        .filter(|((_, p), &a)| a > 0.0 && !p.grad().defined())
        .map(|((_, p), _)| p)
        .collect();
    if let Some(first) = missing.first() {
        // tch cannot assign a gradient; a zero-valued backward creates one.
        let zero = missing
            .iter()
            .map(|p| p.sum(Kind::Float) * 0.0)
            .fold(Tensor::zeros([], (Kind::Float, first.device())), |a, b| a + b);
        zero.f_backward()?;
    }
    tch::no_grad(|| {
        let mut grads: Vec<Tensor> = params
            .iter()
            .zip(&any)
            .filter(|(_, &a)| a > 0.0)
            .map(|((_, p), _)| p.grad())
            .collect();
        g.all_reduce(&mut grads, ReduceOp::Mean)
    })
}

/// Sums `values` over the ranks (the identity alone): counts, loss sums, metric numerators.
pub fn sum_f64(values: &[f64]) -> Result<Vec<f64>> {
    let Some(g) = world() else {
        return Ok(values.to_vec());
    };
    let mut t = [Tensor::from_slice(values).to_kind(Kind::Double)];
    g.all_reduce(&mut t, ReduceOp::Sum)?;
    Ok(Vec::<f64>::try_from(&t[0])?)
}

/// The largest of `value` over the ranks.
pub fn max_f64(value: f64) -> Result<f64> {
    let Some(g) = world() else { return Ok(value) };
    let mut t = [Tensor::from_slice(&[value])];
    g.all_reduce(&mut t, ReduceOp::Max)?;
    Ok(t[0].double_value(&[0]))
}

/// Rank 0's `bytes` on every rank (others pass anything; their value is replaced). The
/// length travels first, so ranks need not know it.
pub fn share_bytes(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let Some(g) = world() else { return Ok(bytes) };
    let mut len = [Tensor::from_slice(&[bytes.len() as i64])];
    g.broadcast(&mut len, 0)?;
    let n = len[0].int64_value(&[0]);
    let mut data = [if g.rank() == 0 {
        Tensor::from_slice(&bytes)
    } else {
        Tensor::zeros([n], (Kind::Uint8, tch::Device::Cpu))
    }];
    if n > 0 {
        g.broadcast(&mut data, 0)?;
    }
    Ok(Vec::<u8>::try_from(&data[0])?)
}

/// Rank 0's decision on every rank.
pub fn share_flag(flag: bool) -> Result<bool> {
    Ok(share_bytes(vec![u8::from(flag)])?.first() == Some(&1))
}

/// The contents of `path` as rank 0 reads them, on every rank: the ranks of a job spanning
/// machines need not share a filesystem for what rank 0 wrote (checkpoints, reports, cached
/// teachers). A read error on rank 0 is every rank's error.
pub fn read_shared(path: &Path) -> Result<Vec<u8>> {
    if world().is_none() {
        return std::fs::read(path).map_err(|e| KdError::file(path, e));
    }
    let mine = if is_writer() {
        std::fs::read(path).map_err(|e| e.to_string())
    } else {
        Ok(Vec::new())
    };
    // One flag first, so a failed read on rank 0 fails every rank with its message.
    let ok = share_flag(mine.is_ok())?;
    let payload = match mine {
        Ok(b) => b,
        Err(e) => e.into_bytes(),
    };
    let shared = share_bytes(payload)?;
    if ok {
        Ok(shared)
    } else {
        Err(KdError::file(path, String::from_utf8_lossy(&shared).into_owned()))
    }
}

/// Whether `path` is a file, as rank 0 sees it, on every rank.
pub fn is_file_shared(path: &Path) -> Result<bool> {
    if world().is_none() {
        return Ok(path.is_file());
    }
    share_flag(is_writer() && path.is_file())
}

/// Every rank's `bytes`, in rank order (lengths may differ).
pub fn gather_bytes(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let Some(g) = world() else {
        return Ok(vec![bytes.to_vec()]);
    };
    let lens = g.all_gather(&Tensor::from_slice(&[bytes.len() as i64]))?;
    let lens: Vec<usize> = lens.iter().map(|t| t.int64_value(&[0]) as usize).collect();
    let max = lens.iter().copied().max().unwrap_or(0).max(1);
    let mut padded = bytes.to_vec();
    padded.resize(max, 0);
    let parts = g.all_gather(&Tensor::from_slice(&padded))?;
    parts
        .iter()
        .zip(&lens)
        .map(|(t, &n)| Ok(Vec::<u8>::try_from(t)?[..n].to_vec()))
        .collect()
}

/// This rank's part of an evaluation pass over `data` (dataset order, not augmented): the
/// pass's samples are cut into one contiguous range per rank, batched at the pass's batch
/// size, so across the ranks every sample is visited once, even when batches hold one image.
/// Alone, `data`'s own batches. Metrics built from sums (top-1 counts, confusion matrices)
/// then need one [`sum_f64`] or all-reduce; lists (detections) one [`gather_bytes`].
pub fn eval_batches<'a>(data: &'a dyn BatchSource) -> Box<dyn Iterator<Item = Result<Batch>> + 'a> {
    let Some(g) = world() else {
        return data.batches(0, None, false);
    };
    let (rank, world) = (g.rank(), g.world());
    match data.epoch_plan(0, None, false) {
        Err(e) => Box::new(std::iter::once(Err(e))),
        Ok(plan) => {
            let size = plan.first().map_or(1, |b| b.len().max(1));
            let all: Vec<usize> = plan.concat();
            let mine = all[shard(all.len(), rank, world)].to_vec();
            let batches: Vec<Vec<usize>> = mine.chunks(size).map(<[usize]>::to_vec).collect();
            Box::new(batches.into_iter().map(move |b| data.batch_of(&b, 0, false)))
        }
    }
}

/// Waits for every rank (a no-op alone).
pub fn barrier() -> Result<()> {
    world().map_or(Ok(()), |g| g.barrier())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() {
        for n in 0..20 {
            for world in 1..5 {
                let mut all = Vec::new();
                for r in 0..world {
                    all.extend(shard(n, r, world));
                }
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} world {world}");
                let sizes: Vec<usize> = (0..world).map(|r| shard(n, r, world).len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn alone_every_helper_is_the_identity() {
        assert_eq!((rank(), world_size(), is_writer()), (0, 1, true));
        assert_eq!(sum_f64(&[1.5, 2.0]).unwrap(), vec![1.5, 2.0]);
        assert_eq!(max_f64(3.0).unwrap(), 3.0);
        assert_eq!(share_bytes(vec![1, 2, 3]).unwrap(), vec![1, 2, 3]);
        let p = Tensor::ones([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        average_gradients(&[("p".into(), p.shallow_clone())]).unwrap();
        assert!(!p.grad().defined(), "alone, gradients are left as they are");
        let dir = std::env::temp_dir().join(format!("kd-dist-{}", std::process::id()));
        std::fs::write(&dir, b"abc").unwrap();
        assert_eq!(read_shared(&dir).unwrap(), b"abc");
        assert!(is_file_shared(&dir).unwrap());
        std::fs::remove_file(&dir).unwrap();
        assert!(read_shared(&dir).is_err());
        barrier().unwrap();
    }
}
