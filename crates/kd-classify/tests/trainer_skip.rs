//! `LossTerms::skip_update`: a skipped batch moves no weight (no momentum or weight-decay step),
//! while the learning-rate schedule and the global step advance as if it had not been skipped.

use std::sync::Arc;

use kd_classify::data::{class_loader, Augment, Dataset, InMemoryDataset};
use kd_core::distill::{Distiller, LossTerms, StepCtx};
use kd_core::losses::cross_entropy;
use kd_core::models::ModelSpec;
use kd_core::train::{TrainConfig, Trainer, STUDENT};
use kd_core::Result;
use tch::{nn, Device};

/// Cross-entropy that skips the batches for which `skip(global_step)` holds, and records the
/// global steps it saw.
struct Skipping {
    skip: fn(usize) -> bool,
    seen: Vec<usize>,
}

impl Distiller for Skipping {
    fn name(&self) -> String {
        "skipping".into()
    }
    fn needs_teacher(&self) -> bool {
        false
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let step = ctx.progress.global_step;
        self.seen.push(step);
        let terms = LossTerms::new().with(
            "ce",
            cross_entropy(&ctx.s_out.logits, ctx.batch.target.labels()?)?,
        );
        Ok(if (self.skip)(step) {
            terms.skip_update()
        } else {
            terms
        })
    }
}

fn data() -> Arc<dyn Dataset> {
    let n = 40;
    let pixels: Vec<u8> = (0..n * 16 * 16).map(|i| (i * 37 % 251) as u8).collect();
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 2).collect();
    Arc::new(InMemoryDataset::from_parts("toy", [1, 16, 16], pixels, labels, 2).unwrap())
}

/// What a run leaves behind.
struct Outcome {
    before: Vec<(String, tch::Tensor)>,
    after: Vec<(String, tch::Tensor)>,
    distiller: Skipping,
    skipped: Vec<usize>,
    last_lr: f64,
}

fn run(skip: fn(usize) -> bool) -> Outcome {
    let cfg = TrainConfig::sgd_cosine(3, 8, 0.1);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let spec = ModelSpec {
        in_channels: 1,
        num_classes: 2,
    };
    let model = kd_classify::models::build("lenet5_half", &(vs.root() / STUDENT), spec).unwrap();
    let before: Vec<_> = sorted(&vs);
    let loader = class_loader(data(), 8, Augment::none(), false, 0).unwrap();
    let mut d = Skipping {
        skip,
        seen: Vec::new(),
    };
    let report = Trainer {
        cfg: &cfg,
        seed: 0,
        device: Device::Cpu,
        vs: &vs,
        student: model.as_ref(),
        teacher: None,
        teacher_cache: None,
        distiller: &mut d,
        train: &loader,
        test: &loader,
        checkpoint: None,
        label: "skip".into(),
        evaluator: &kd_classify::Top1,
    }
    .fit(false)
    .unwrap();
    Outcome {
        before,
        after: sorted(&vs),
        distiller: d,
        skipped: report.history.iter().map(|r| r.skipped).collect(),
        last_lr: report.history.last().unwrap().lr,
    }
}

fn sorted(vs: &nn::VarStore) -> Vec<(String, tch::Tensor)> {
    let mut v: Vec<_> = vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn skipped_batches_move_nothing_but_the_schedule_advances() {
    let all = run(|_| true);
    for ((n, a), (_, b)) in all.before.iter().zip(&all.after) {
        assert!(a.equal(b), "{n} moved although every batch was skipped");
    }
    assert_eq!(all.skipped, [5, 5, 5]);
    assert_eq!(all.distiller.seen, (0..15).collect::<Vec<_>>());
    let some = run(|s| s % 2 == 0);
    assert_eq!(some.skipped, [3, 2, 3]);
    // The global step counts batches, skipped or not, and the schedule ends where it would.
    assert_eq!(some.distiller.seen, (0..15).collect::<Vec<_>>());
    assert_eq!(some.last_lr, all.last_lr);
    assert!(some
        .before
        .iter()
        .zip(&some.after)
        .any(|((_, a), (_, b))| !a.equal(b)));
}
