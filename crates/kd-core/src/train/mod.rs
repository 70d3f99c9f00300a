//! Training: optimisers, schedules, atomic checkpoints, the trainer loop, the evaluator every
//! metric goes through, and the run lifecycle.

mod budget;
mod check;
mod evaluator;
mod fit;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use budget::EarlyStop;
pub use check::Problem;
pub use evaluator::Evaluator;
pub use fit::{fit, fit_into, read_report, read_report_shared, Fitted, InitFn, Job, CHECKPOINT, REPORT};
pub use optim::{Optimizer, OptimizerConfig};
pub use schedule::{linear_ramp, LrSchedule, Schedule};
pub use trainer::{
    batch_to, best_epoch, effective_clip, export_student, top1_counts, BatchLayout, EpochRecord, TrainConfig,
    TrainReport, Trainer, AUX, BEST, EPOCH_LOG, STUDENT, STUDENT_PREFIX,
};
