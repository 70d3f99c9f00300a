//! Recipes whose length follows the data, and runs that stop when a held-out split says so.
//!
//! A recipe written in epochs is tuned to one dataset size: on a tenth of the data it gives a
//! tenth of the optimiser updates, and a teacher that reached 87 % on the embedded set stays
//! near its random start on a user's 1.5k images. `min_updates` puts a floor under a recipe in
//! updates; the epoch count is then derived from the data's steps per epoch, and every length
//! a recipe measures in epochs (the learning-rate warm-up, multistep milestones) stretches with
//! it, so it keeps its share of training. `early_stop` ends a run once the metric on a split
//! held out of the training set stops improving, and keeps the weights of its best epoch: the
//! budget is then a ceiling, not a length.

use serde::{Deserialize, Serialize};

use super::schedule::Schedule;
use super::trainer::{EpochRecord, TrainConfig};

/// Stop training when the metric on a split held out of the training set stops improving.
///
/// The held-out samples are drawn once from the run's seed and never trained on; they are
/// scored with the run's evaluator (its metric, higher is better) after every evaluated epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStop {
    /// Share of the training set held out, in (0, 1); at least one sample is held out and at
    /// least one is trained on.
    #[serde(default = "default_held_out")]
    pub held_out: f64,
    /// Evaluations in a row without an improvement before the run stops.
    #[serde(default = "default_patience")]
    pub patience: usize,
    /// The smallest rise of the held-out metric (in its unit, e.g. points of top-1 %) that
    /// counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
    /// The share of the run's epochs that always runs, in [0, 1]: the learning rate decays
    /// over the whole budget, and neither a plateau nor a peak while it is still high decides
    /// anything (a held-out split of a small dataset is noisy). The epochs after it are the
    /// stopping window: the kept epoch is the best of them, and the run stops once `patience`
    /// of their evaluations have passed without a gain.
    #[serde(default = "default_min_share")]
    pub min_share: f64,
}

fn default_min_share() -> f64 {
    0.75
}

fn default_held_out() -> f64 {
    0.1
}

fn default_patience() -> usize {
    2
}

impl Default for EarlyStop {
    fn default() -> Self {
        EarlyStop {
            held_out: default_held_out(),
            patience: default_patience(),
            min_delta: 0.0,
            min_share: default_min_share(),
        }
    }
}

impl EarlyStop {
    /// How many of `n` training samples are held out: `held_out · n` rounded, within `1..n`.
    pub fn held_count(&self, n: usize) -> usize {
        let k = (self.held_out * n as f64).round() as usize;
        k.clamp(1, n.saturating_sub(1).max(1))
    }

    /// The held-out sample indices among `0..n` for `seed`, ascending: the same for every
    /// epoch, every resumed run and every process.
    pub fn held_indices(&self, n: usize, seed: u64) -> Vec<usize> {
        use rand::seq::SliceRandom;
        let mut all: Vec<usize> = (0..n).collect();
        all.shuffle(&mut crate::rng::derive(seed, 0x401d, 0));
        let mut held = all[..self.held_count(n).min(n)].to_vec();
        held.sort_unstable();
        held
    }

    /// The first epoch (0-based) of the stopping window of a run of `epochs` epochs: the
    /// epochs before `min_share` of them are neither kept nor a reason to stop.
    pub fn window_start(&self, epochs: usize) -> usize {
        ((self.min_share * epochs as f64).ceil() as usize).min(epochs.saturating_sub(1))
    }

    /// The best held-out epoch so far of a run of `epochs` epochs as `(epoch, metric)`, the
    /// epoch 0-based: within the stopping window, the first epoch whose metric rose more than
    /// `min_delta` above every earlier one in it.
    pub fn best(&self, history: &[EpochRecord], epochs: usize) -> Option<(usize, f64)> {
        let from = self.window_start(epochs);
        history
            .iter()
            .filter(|r| r.epoch >= from)
            .filter_map(|r| r.held_metric.map(|m| (r.epoch, m)))
            .filter(|(_, m)| m.is_finite())
            .fold(None, |best, (e, m)| match best {
                Some((_, b)) if m <= b + self.min_delta => best,
                _ => Some((e, m)),
            })
    }

    /// Whether a run of `epochs` epochs should stop after `history`: `patience` held-out
    /// evaluations inside the stopping window have passed since its best one.
    pub fn should_stop(&self, history: &[EpochRecord], epochs: usize) -> bool {
        let Some((best, _)) = self.best(history, epochs) else {
            return false;
        };
        let since = history
            .iter()
            .filter(|r| r.epoch > best && r.held_metric.is_some())
            .count();
        since >= self.patience.max(1)
    }
}

impl TrainConfig {
    /// Optimiser updates an epoch of this recipe takes on `train`: its batches over the
    /// samples trained on (all but the held-out ones with `early_stop`), at most
    /// `max_steps_per_epoch`. What [`TrainConfig::resolved`] is given by the trainer.
    pub fn steps_per_epoch_on(&self, train: &dyn crate::data::BatchSource) -> usize {
        let n = train.len();
        train
            .steps_per_epoch(n - self.held_out_of(n))
            .min(self.max_steps_per_epoch.unwrap_or(usize::MAX))
    }

    /// How many of `n` training samples this recipe holds out and never trains on: its
    /// `early_stop`'s share, none without one (or with fewer than 2 samples, which the trainer
    /// refuses to split).
    pub fn held_out_of(&self, n: usize) -> usize {
        match &self.early_stop {
            Some(stop) if n >= 2 => stop.held_count(n),
            _ => 0,
        }
    }

    /// Epochs of this recipe on data of `steps_per_epoch` updates an epoch: `epochs`, or more
    /// when that gives fewer than `min_updates` updates.
    pub fn epochs_for(&self, steps_per_epoch: usize) -> usize {
        match self.min_updates {
            Some(min) => self.epochs.max(min.div_ceil(steps_per_epoch.max(1))),
            None => self.epochs,
        }
    }

    /// How much longer (in epochs) the recipe runs on data of `steps_per_epoch` updates an
    /// epoch than as written: 1 when `min_updates` is already met. Lengths a method measures
    /// in epochs (a loss-weight warm-up) scale by it to keep their share of training.
    pub fn epoch_factor(&self, steps_per_epoch: usize) -> f64 {
        self.epochs_for(steps_per_epoch) as f64 / self.epochs.max(1) as f64
    }

    /// The recipe as it runs on data of `steps_per_epoch` updates an epoch: `epochs` from
    /// [`TrainConfig::epochs_for`], the warm-up and the multistep milestones stretched by the
    /// same factor, `min_updates` spent. Unchanged (bit for bit) when `min_updates` is met.
    pub fn resolved(&self, steps_per_epoch: usize) -> TrainConfig {
        let epochs = self.epochs_for(steps_per_epoch);
        if epochs == self.epochs {
            return TrainConfig {
                min_updates: None,
                ..self.clone()
            };
        }
        let f = self.epoch_factor(steps_per_epoch);
        let mut out = TrainConfig {
            epochs,
            min_updates: None,
            ..self.clone()
        };
        out.lr.warmup_epochs *= f;
        if let Schedule::Multistep { milestones, .. } = &mut out.lr.schedule {
            for m in milestones.iter_mut() {
                *m = ((*m as f64 * f).round() as usize).clamp(1, epochs);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rec(epoch: usize, held: Option<f64>) -> EpochRecord {
        EpochRecord {
            epoch,
            lr: 0.0,
            loss: 0.0,
            terms: BTreeMap::new(),
            train_acc: 0.0,
            test_metric: None,
            held_metric: held,
            samples: 0,
            updates: 0,
            skipped: 0,
            seconds: 0.0,
        }
    }

    #[test]
    fn epochs_follow_the_data_when_the_floor_is_not_met() {
        let mut c = TrainConfig::sgd_cosine(3, 32, 0.05);
        c.lr.warmup_epochs = 0.3;
        assert_eq!(c.epochs_for(10), 3);
        assert_eq!(c.resolved(10), c);
        c.min_updates = Some(938);
        // 313 steps an epoch (10k images at batch 32): the floor is met, nothing changes.
        assert_eq!(c.epochs_for(313), 3);
        let same = c.resolved(313);
        assert_eq!(
            (same.epochs, same.lr.warmup_epochs, same.min_updates),
            (3, 0.3, None)
        );
        // 47 steps an epoch (1.5k images): ⌈938 / 47⌉ = 20 epochs, the warm-up stretched × 20/3.
        let long = c.resolved(47);
        assert_eq!(long.epochs, 20);
        assert!((long.lr.warmup_epochs - 2.0).abs() < 1e-12);
        assert!((c.epoch_factor(47) - 20.0 / 3.0).abs() < 1e-12);
        assert!(long.epochs * 47 >= 938);
    }

    #[test]
    fn milestones_keep_their_share_of_training() {
        let mut c = TrainConfig::sgd_cosine(240, 64, 0.05);
        c.lr.schedule = Schedule::Multistep {
            milestones: vec![150, 180, 210],
            gamma: 0.1,
        };
        c.min_updates = Some(480 * 10);
        let r = c.resolved(10);
        assert_eq!(r.epochs, 480);
        assert_eq!(
            r.lr.schedule,
            Schedule::Multistep {
                milestones: vec![300, 360, 420],
                gamma: 0.1
            }
        );
        assert!(r.problems().is_empty(), "{:?}", r.problems());
    }

    #[test]
    fn the_held_out_split_is_seeded_and_never_everything() {
        let e = EarlyStop::default();
        assert_eq!(e.held_count(1000), 100);
        assert_eq!(e.held_count(3), 1);
        assert_eq!(e.held_count(1), 1);
        let a = e.held_indices(1000, 7);
        assert_eq!(a, e.held_indices(1000, 7));
        assert_ne!(a, e.held_indices(1000, 8));
        assert_eq!(a.len(), 100);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|&i| i < 1000));
    }

    #[test]
    fn the_run_stops_after_patience_evaluations_without_a_gain() {
        let e = EarlyStop {
            held_out: 0.1,
            patience: 2,
            min_delta: 0.5,
            min_share: 0.0,
        };
        let mut h = vec![rec(0, Some(50.0)), rec(1, Some(60.0)), rec(2, None)];
        assert!(!e.should_stop(&h, 20));
        h.push(rec(3, Some(60.4))); // within min_delta: no gain
        assert!(!e.should_stop(&h, 20));
        assert_eq!(e.best(&h, 20), Some((1, 60.0)));
        h.push(rec(4, Some(f64::NAN)));
        assert!(e.should_stop(&h, 20), "two evaluations since epoch 1");
        let mut g = h[..4].to_vec();
        g.push(rec(4, Some(61.0)));
        assert_eq!(e.best(&g, 20), Some((4, 61.0)));
        assert!(!e.should_stop(&g, 20));
        assert!(!e.should_stop(&[], 20));
    }

    #[test]
    fn nothing_before_the_window_is_kept_or_stops_the_run() {
        let e = EarlyStop {
            min_share: 0.5,
            patience: 2,
            ..EarlyStop::default()
        };
        assert_eq!(
            (e.window_start(10), e.window_start(3), e.window_start(1)),
            (5, 2, 0)
        );
        // A noisy early peak at epoch 1 of 10: not kept, and no reason to stop.
        let h: Vec<EpochRecord> = [40.0, 90.0, 60.0, 61.0, 62.0, 63.0, 70.0, 69.0]
            .iter()
            .enumerate()
            .map(|(i, &m)| rec(i, Some(m)))
            .collect();
        assert_eq!(e.best(&h[..5], 10), None);
        assert!(!e.should_stop(&h[..5], 10));
        assert_eq!(e.best(&h, 10), Some((6, 70.0)));
        assert!(!e.should_stop(&h[..7], 10));
        assert!(!e.should_stop(&h, 10));
        let mut more = h.clone();
        more.push(rec(8, Some(68.0)));
        assert!(e.should_stop(&more, 10));
        // A three-epoch run with the default share keeps its last epoch.
        let d = EarlyStop::default();
        let three: Vec<EpochRecord> = (0..3).map(|i| rec(i, Some(90.0 - i as f64))).collect();
        assert_eq!(d.best(&three, 3), Some((2, 88.0)));
    }
}
