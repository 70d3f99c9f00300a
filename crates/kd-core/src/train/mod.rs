//! Training: optimisers, schedules, checkpoints and the trainer loop.
