//! The performance harness: criterion benches of the loss kernels, one whole distillation step
//! and the data pipelines, and the value checks that make their PyTorch comparison fair.
//!
//! A speed comparison means nothing unless both sides compute the same thing. So every row is a
//! [`case::Spec`] that builds a [`case::Case`]: criterion times `Case::run`, and
//! [`check::export`] writes the row's deterministic inputs, weights and outputs (values and
//! gradients) to a safetensors file that `benches/python/reference.py` recomputes with eager
//! PyTorch before timing it. `cargo xtask bench` runs both and prints one table; see
//! `docs/performance.md`.
//!
//! Everything the processes must agree on (threads, device, skipped rows) travels in `KD_BENCH_*`
//! environment variables, read by [`settings::Settings::from_env`].

pub mod case;
pub mod cases;
pub mod check;
pub mod criterion_run;
pub mod settings;

pub use case::{Case, Mode, Spec};
pub use settings::Settings;
