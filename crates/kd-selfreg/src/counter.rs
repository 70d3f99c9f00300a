//! Per-sample participation bookkeeping and the data-use accounting built on it.
//!
//! The paper's evaluation axis is not epochs but *participations*: how many sample-level
//! backward contributions a network needed. One counter serves the teacher (whose per-sample
//! counts in the counting epochs become the significance) and the student (whose totals are
//! reported). Counts live in an `i64` tensor on the CPU and are updated with `index_add_`, so
//! repeated indices in a batch and any batch order give the same totals.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use kd_core::{KdError, Result};

/// Participation counts over a dataset of `N` samples.
#[derive(Debug)]
pub struct ParticipationCounter {
    n: usize,
    /// `[N]` i64: participations in counting epochs (the significance numerator).
    counts: Tensor,
    /// `[N]` i64: participations in any epoch.
    all_counts: Tensor,
    /// Participations per epoch (all epochs).
    per_epoch: Vec<i64>,
    /// Samples forwarded per epoch.
    visited_per_epoch: Vec<i64>,
    /// The state every rank agreed on at the last [`ParticipationCounter::merge_ranks`] (or
    /// load), from which each rank's own additions are told apart.
    merged: Option<Merged>,
}

/// A copy of a counter's state (the counts are updated in place, so they are copied).
#[derive(Debug)]
struct Merged {
    counts: Tensor,
    all_counts: Tensor,
    per_epoch: Vec<i64>,
    visited_per_epoch: Vec<i64>,
}

impl Merged {
    fn of(c: &ParticipationCounter) -> Self {
        Merged {
            counts: c.counts.copy(),
            all_counts: c.all_counts.copy(),
            per_epoch: c.per_epoch.clone(),
            visited_per_epoch: c.visited_per_epoch.clone(),
        }
    }
}

/// The data-use summary of a training run, as reported beside results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accounting {
    /// `Σ_epochs Σ_i m_i`: sample-level backward contributions.
    pub participations: i64,
    /// Samples that took part at least once.
    pub distinct_samples: i64,
    /// Samples forwarded (participating or not).
    pub visited: i64,
    /// Training-set size N.
    pub n: usize,
    /// Epochs of the run.
    pub epochs: usize,
    /// The conventional budget `epochs × N`.
    pub budget: i64,
    /// `100 · participations / budget`.
    pub budget_pct: f64,
    /// Participations of each epoch.
    pub per_epoch_participations: Vec<i64>,
}

impl ParticipationCounter {
    /// A zeroed counter for `n` samples.
    pub fn new(n: usize) -> Self {
        let zeros = || Tensor::zeros([n as i64], (Kind::Int64, Device::Cpu));
        Self {
            n,
            counts: zeros(),
            all_counts: zeros(),
            per_epoch: Vec::new(),
            visited_per_epoch: Vec::new(),
            merged: None,
        }
    }

    /// Adds up what each rank of a data-parallel group recorded since the last merge (every
    /// count is a sum over samples, so the group's counts are the sums of the ranks' additions)
    /// and leaves the same counter on every rank; alone, nothing changes.
    pub fn merge_ranks(&mut self) -> Result<()> {
        let Some(g) = kd_core::dist::world() else {
            return Ok(());
        };
        // Per-epoch lists may have grown on some ranks only: agree on the longest first.
        let epochs = kd_core::dist::max_f64(self.per_epoch.len() as f64)? as usize;
        let pad = |v: &[i64]| {
            let mut v = v.to_vec();
            v.resize(epochs, 0);
            Tensor::from_slice(&v)
        };
        let base = self
            .merged
            .take()
            .unwrap_or_else(|| Merged::of(&Self::new(self.n)));
        let (base_epoch, base_visited) = (pad(&base.per_epoch), pad(&base.visited_per_epoch));
        let mut added = [
            &self.counts - &base.counts,
            &self.all_counts - &base.all_counts,
            pad(&self.per_epoch) - &base_epoch,
            pad(&self.visited_per_epoch) - &base_visited,
        ];
        g.all_reduce(&mut added, kd_core::dist::ReduceOp::Sum)?;
        self.counts = &base.counts + &added[0];
        self.all_counts = &base.all_counts + &added[1];
        self.per_epoch = Vec::<i64>::try_from(base_epoch + &added[2])?;
        self.visited_per_epoch = Vec::<i64>::try_from(base_visited + &added[3])?;
        self.merged = Some(Merged::of(self));
        Ok(())
    }

    /// Number of samples N.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True for an empty dataset.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Adds one batch of epoch `epoch` (0-based): `n[index_b] += mask_b` for every b, into the
    /// significance counts too when `counting`. `index`: `[B]` Int64 dataset indices in
    /// `[0, N)`; `mask`: `[B]` Bool or numeric 0/1. Returns the batch's participations.
    pub fn record(&mut self, epoch: usize, index: &Tensor, mask: &Tensor, counting: bool) -> Result<i64> {
        let b = index.size();
        if b.len() != 1 || mask.size() != b {
            return Err(KdError::Shape {
                op: "ParticipationCounter::record".into(),
                left_name: "index [B]".into(),
                left: b,
                right_name: "mask [B]".into(),
                right: mask.size(),
            });
        }
        let index = index.to_device(Device::Cpu).to_kind(Kind::Int64);
        if b[0] > 0 {
            let (lo, hi) = (index.min().int64_value(&[]), index.max().int64_value(&[]));
            if lo < 0 || hi >= self.n as i64 {
                return Err(KdError::invalid(format!(
                    "participation counter: sample index {} out of range for {} samples",
                    if lo < 0 { lo } else { hi },
                    self.n
                )));
            }
        }
        let m = mask.to_device(Device::Cpu).to_kind(Kind::Int64);
        let _ = self.all_counts.index_add_(0, &index, &m);
        if counting {
            let _ = self.counts.index_add_(0, &index, &m);
        }
        let took_part = m.sum(Kind::Int64).int64_value(&[]);
        if self.per_epoch.len() <= epoch {
            self.per_epoch.resize(epoch + 1, 0);
            self.visited_per_epoch.resize(epoch + 1, 0);
        }
        self.per_epoch[epoch] += took_part;
        self.visited_per_epoch[epoch] += b[0];
        Ok(took_part)
    }

    /// `[N]` i64 participations in counting epochs.
    pub fn counts(&self) -> &Tensor {
        &self.counts
    }

    /// `[N]` i64 participations in all epochs.
    pub fn all_counts(&self) -> &Tensor {
        &self.all_counts
    }

    /// The accounting of a run of `epochs` epochs.
    pub fn accounting(&self, epochs: usize) -> Accounting {
        let participations: i64 = self.per_epoch.iter().sum();
        let budget = (epochs * self.n) as i64;
        Accounting {
            participations,
            distinct_samples: self.all_counts.gt(0).sum(Kind::Int64).int64_value(&[]),
            visited: self.visited_per_epoch.iter().sum(),
            n: self.n,
            epochs,
            budget,
            budget_pct: if budget > 0 {
                100.0 * participations as f64 / budget as f64
            } else {
                0.0
            },
            per_epoch_participations: self.per_epoch.clone(),
        }
    }

    /// The counter as named tensors, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("counts".into(), self.counts.shallow_clone()),
            ("all_counts".into(), self.all_counts.shallow_clone()),
            ("per_epoch".into(), Tensor::from_slice(&self.per_epoch)),
            (
                "visited_per_epoch".into(),
                Tensor::from_slice(&self.visited_per_epoch),
            ),
        ]
    }

    /// Restores [`ParticipationCounter::state`]; fails on a missing tensor or another N.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let get = |name: &str| -> Result<Tensor> {
            state
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.to_device(Device::Cpu).to_kind(Kind::Int64))
                .ok_or_else(|| KdError::invalid(format!("participation state lacks {name:?}")))
        };
        let (counts, all) = (get("counts")?, get("all_counts")?);
        for (name, t) in [("counts", &counts), ("all_counts", &all)] {
            if t.size() != [self.n as i64] {
                return Err(KdError::invalid(format!(
                    "participation state {name:?} has shape {:?}, expected [{}] (the training-set size)",
                    t.size(),
                    self.n
                )));
            }
        }
        self.counts = counts;
        self.all_counts = all;
        self.per_epoch = Vec::<i64>::try_from(get("per_epoch")?)?;
        self.visited_per_epoch = Vec::<i64>::try_from(get("visited_per_epoch")?)?;
        // What is loaded (a checkpoint, rank 0's state) is what every rank agrees on.
        self.merged = Some(Merged::of(self));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    use super::*;

    fn ints(v: &[i64]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn counts_increase_by_exactly_the_mask() {
        let mut c = ParticipationCounter::new(5);
        let took = c
            .record(
                0,
                &ints(&[0, 3, 3, 4]),
                &Tensor::from_slice(&[true, true, false, true]),
                true,
            )
            .unwrap();
        assert_eq!(took, 3);
        assert_eq!(Vec::<i64>::try_from(c.counts()).unwrap(), [1, 0, 0, 1, 1]);
        // A non-counting epoch adds to the totals only.
        c.record(1, &ints(&[3, 1]), &Tensor::from_slice(&[true, false]), false)
            .unwrap();
        assert_eq!(Vec::<i64>::try_from(c.counts()).unwrap(), [1, 0, 0, 1, 1]);
        assert_eq!(Vec::<i64>::try_from(c.all_counts()).unwrap(), [1, 0, 0, 2, 1]);
        let a = c.accounting(2);
        assert_eq!(
            (a.participations, a.distinct_samples, a.visited, a.budget),
            (4, 3, 6, 10)
        );
        assert_eq!(a.per_epoch_participations, [3, 1]);
        assert!((a.budget_pct - 40.0).abs() < 1e-12);
    }

    /// For a fixed model, the final counts do not depend on the order of the samples or on
    /// how they are cut into batches: the gate of a frozen linear classifier decides per sample.
    #[test]
    fn counts_are_invariant_to_batch_order() {
        let n = 37usize;
        tch::manual_seed(11);
        let x = Tensor::randn([n as i64, 4], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3], (Kind::Float, Device::Cpu)) * 3.0;
        let y = Tensor::randint(3, [n as i64], (Kind::Int64, Device::Cpu));
        let cfg = crate::gate::GateConfig::default();
        let run = |seed: u64, bs: usize| {
            let mut order: Vec<i64> = (0..n as i64).collect();
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            let mut c = ParticipationCounter::new(n);
            for e in 0..3 {
                for chunk in order.chunks(bs) {
                    let idx = ints(chunk);
                    let logits = x.index_select(0, &idx).matmul(&w);
                    let m = crate::gate::gate(&logits, &y.index_select(0, &idx), &cfg, e).unwrap();
                    c.record(e, &idx, &m, e > 0).unwrap();
                }
            }
            (Vec::<i64>::try_from(c.counts()).unwrap(), c.accounting(3))
        };
        let (a, acc_a) = run(1, 5);
        let (b, acc_b) = run(2, 8);
        assert_eq!(a, b);
        assert_eq!(acc_a, acc_b);
        // Two counting epochs, each adding the sample's (fixed) mask once.
        let m = crate::gate::gate(&x.matmul(&w), &y, &cfg, 0).unwrap();
        let want: Vec<i64> = Vec::<bool>::try_from(&m)
            .unwrap()
            .iter()
            .map(|&m| 2 * i64::from(m))
            .collect();
        assert_eq!(a, want);
        assert!(
            want.contains(&0) && want.contains(&2),
            "the gate must split the samples"
        );
    }

    #[test]
    fn state_round_trips_and_bad_input_is_an_error() {
        let mut c = ParticipationCounter::new(4);
        c.record(0, &ints(&[1, 2]), &Tensor::from_slice(&[true, true]), true)
            .unwrap();
        let mut d = ParticipationCounter::new(4);
        d.load_state(&c.state()).unwrap();
        assert_eq!(c.accounting(1), d.accounting(1));
        assert!(ParticipationCounter::new(5).load_state(&c.state()).is_err());
        let msg = c
            .record(0, &ints(&[4]), &Tensor::from_slice(&[true]), true)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("index 4 out of range for 4"), "{msg}");
        assert!(matches!(
            c.record(0, &ints(&[1, 2]), &Tensor::from_slice(&[true]), true),
            Err(KdError::Shape { .. })
        ));
    }
}
