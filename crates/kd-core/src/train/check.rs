//! Recipe values checked before anything trains.
//!
//! serde only checks types, so `epochs = 0`, `lr = -0.05` or `batch_size = 0` used to parse and
//! then publish an untrained row, train to chance, or fail after the teacher had trained with a
//! message naming no key. Every value is checked here against its allowed range, and each
//! problem names its key (relative to the recipe's table, e.g. `lr.lr`) so the caller can add
//! the file and section.

use super::optim::OptimizerConfig;
use super::schedule::Schedule;
use super::trainer::TrainConfig;

/// One value outside its allowed range.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// Dotted key inside the recipe, e.g. `optimizer.momentum`.
    pub key: String,
    /// The value as written.
    pub value: String,
    /// What is allowed.
    pub allowed: &'static str,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}: {}", self.key, self.value, self.allowed)
    }
}

impl TrainConfig {
    /// Every value of the recipe outside its allowed range (empty when the recipe is sound).
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |ok: bool, key: &str, value: String, allowed: &'static str| {
            if !ok {
                p.push(Problem {
                    key: key.into(),
                    value,
                    allowed,
                });
            }
        };
        let pos = |x: f64| x.is_finite() && x > 0.0;
        let non_neg = |x: f64| x.is_finite() && x >= 0.0;
        let unit = |x: f64| x.is_finite() && (0.0..1.0).contains(&x);
        bad(self.epochs >= 1, "epochs", self.epochs.to_string(), "at least 1");
        bad(
            self.batch_size >= 1,
            "batch_size",
            self.batch_size.to_string(),
            "at least 1",
        );
        bad(
            self.eval_every >= 1,
            "eval_every",
            self.eval_every.to_string(),
            "at least 1",
        );
        if let Some(c) = self.grad_clip {
            bad(pos(c), "grad_clip", c.to_string(), "a finite number > 0");
        }
        if let Some(l) = &self.layout {
            bad(
                l.gpus >= 1 && l.per_gpu >= 1 && l.gpus * l.per_gpu == self.batch_size,
                "layout",
                format!("{} × {}", l.gpus, l.per_gpu),
                "gpus × per_gpu, both at least 1, equal to batch_size",
            );
        }
        if let Some(m) = self.min_updates {
            bad(m >= 1, "min_updates", m.to_string(), "at least 1");
        }
        if let Some(e) = &self.early_stop {
            bad(
                e.held_out.is_finite() && e.held_out > 0.0 && e.held_out < 1.0,
                "early_stop.held_out",
                e.held_out.to_string(),
                "a share of the training set in (0, 1)",
            );
            bad(
                e.patience >= 1,
                "early_stop.patience",
                e.patience.to_string(),
                "at least 1",
            );
            bad(
                non_neg(e.min_delta),
                "early_stop.min_delta",
                e.min_delta.to_string(),
                "a finite number ≥ 0",
            );
            bad(
                e.min_share.is_finite() && (0.0..=1.0).contains(&e.min_share),
                "early_stop.min_share",
                e.min_share.to_string(),
                "a share of the epochs in [0, 1]",
            );
        }
        if let Some(m) = self.max_steps_per_epoch {
            bad(m >= 1, "max_steps_per_epoch", m.to_string(), "at least 1");
        }
        let lr = &self.lr;
        bad(pos(lr.lr), "lr.lr", lr.lr.to_string(), "a finite number > 0");
        bad(
            non_neg(lr.warmup_epochs) && lr.warmup_epochs <= self.epochs as f64,
            "lr.warmup_epochs",
            lr.warmup_epochs.to_string(),
            "a finite number in [0, epochs]",
        );
        if lr.warmup_epochs > 0.0 {
            bad(
                lr.warmup_start.is_finite() && (0.0..=1.0).contains(&lr.warmup_start),
                "lr.warmup_start",
                lr.warmup_start.to_string(),
                "in [0, 1]",
            );
        }
        match &lr.schedule {
            Schedule::Constant => {}
            Schedule::Multistep { milestones, gamma } => {
                bad(
                    pos(*gamma),
                    "lr.schedule.gamma",
                    gamma.to_string(),
                    "a finite number > 0",
                );
                // A repeated milestone applies γ twice, as in PyTorch's MultiStepLR.
                let sorted = milestones.windows(2).all(|w| w[0] <= w[1]);
                let inside = milestones.iter().all(|&m| m >= 1 && m <= self.epochs);
                bad(
                    sorted && inside,
                    "lr.schedule.milestones",
                    format!("{milestones:?}"),
                    "non-decreasing epochs in [1, epochs]",
                );
            }
            Schedule::Cosine { min_lr } => {
                bad(
                    non_neg(*min_lr) && *min_lr <= lr.lr,
                    "lr.schedule.min_lr",
                    min_lr.to_string(),
                    "a finite number in [0, lr]",
                );
            }
            Schedule::Poly { power, min_lr } => {
                bad(
                    pos(*power),
                    "lr.schedule.power",
                    power.to_string(),
                    "a finite number > 0",
                );
                bad(
                    non_neg(*min_lr) && *min_lr <= lr.lr,
                    "lr.schedule.min_lr",
                    min_lr.to_string(),
                    "a finite number in [0, lr]",
                );
            }
        }
        match &self.optimizer {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
                nesterov,
            } => {
                bad(
                    unit(*momentum),
                    "optimizer.momentum",
                    momentum.to_string(),
                    "in [0, 1)",
                );
                bad(
                    non_neg(*weight_decay),
                    "optimizer.weight_decay",
                    weight_decay.to_string(),
                    "a finite number ≥ 0",
                );
                bad(
                    !*nesterov || *momentum > 0.0,
                    "optimizer.nesterov",
                    nesterov.to_string(),
                    "Nesterov momentum needs momentum > 0",
                );
            }
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                bad(unit(*beta1), "optimizer.beta1", beta1.to_string(), "in [0, 1)");
                bad(unit(*beta2), "optimizer.beta2", beta2.to_string(), "in [0, 1)");
                bad(pos(*eps), "optimizer.eps", eps.to_string(), "a finite number > 0");
                bad(
                    non_neg(*weight_decay),
                    "optimizer.weight_decay",
                    weight_decay.to_string(),
                    "a finite number ≥ 0",
                );
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(c: &TrainConfig) -> Vec<String> {
        c.problems().into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn a_sound_recipe_has_no_problems() {
        assert!(TrainConfig::sgd_cosine(10, 64, 0.05).problems().is_empty());
    }

    #[test]
    fn each_value_outside_its_range_is_named() {
        let base = TrainConfig::sgd_cosine(10, 64, 0.05);
        let mut c = base.clone();
        c.epochs = 0;
        // Zero epochs also puts any warm-up outside [0, epochs]; only the epochs are wrong here.
        assert_eq!(keys(&c), ["epochs"]);
        let mut c = base.clone();
        c.batch_size = 0;
        assert_eq!(keys(&c), ["batch_size"]);
        for lr in [-0.05, 0.0, f64::NAN, f64::INFINITY] {
            let mut c = base.clone();
            c.lr.lr = lr;
            assert!(keys(&c).contains(&"lr.lr".to_string()), "lr {lr}");
        }
        let mut c = base.clone();
        c.optimizer = OptimizerConfig::Sgd {
            momentum: 1.0,
            weight_decay: -1.0,
            nesterov: false,
        };
        assert_eq!(keys(&c), ["optimizer.momentum", "optimizer.weight_decay"]);
        let mut c = base.clone();
        c.optimizer = OptimizerConfig::Sgd {
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: true,
        };
        assert_eq!(keys(&c), ["optimizer.nesterov"]);
        let mut c = base.clone();
        c.lr.schedule = Schedule::Multistep {
            milestones: vec![5, 3, 11],
            gamma: 0.1,
        };
        assert_eq!(keys(&c), ["lr.schedule.milestones"]);
        let mut c = base.clone();
        c.lr.warmup_epochs = 11.0;
        c.grad_clip = Some(0.0);
        c.eval_every = 0;
        assert_eq!(keys(&c), ["eval_every", "grad_clip", "lr.warmup_epochs"]);
        let p = &c.problems()[1];
        assert_eq!(p.to_string(), "grad_clip = 0: a finite number > 0");
    }
}
