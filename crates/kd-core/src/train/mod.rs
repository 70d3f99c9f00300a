//! Training: optimisers, schedules, atomic checkpoints and the trainer loop.

pub mod checkpoint;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use optim::{Optimizer, OptimizerConfig};
pub use schedule::{linear_ramp, LrSchedule, Schedule};
pub use trainer::{
    batch_to, evaluate, export_student, EpochRecord, Evaluator, TrainConfig, TrainReport, Trainer, AUX,
    STUDENT, STUDENT_PREFIX,
};
