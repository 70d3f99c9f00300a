//! One benchmark row: what it computes, at which shape, and how it is checked.
//!
//! The criterion benches, the check exporter and the PyTorch reference must time the *same*
//! work. Describing every row once, as a [`Spec`] that builds a [`Case`], is what keeps them in
//! step: the benches time `Case::run`, the exporter writes `Case::export`, and the reference
//! reads the exported inputs and the spec's shape and parameters.

use std::fmt;

use serde_json::Value;
use tch::Tensor;

use crate::settings::Settings;

/// What one timed iteration does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The loss under `no_grad`, its value read back to the host.
    Forward,
    /// The loss, its backward pass, its value read back.
    ForwardBackward,
    /// One whole training step (forward, loss, backward, optimiser step).
    Step,
    /// One pass over a data set: decode, augment, batch.
    Epoch,
}

impl Mode {
    /// The name in row ids and results.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Forward => "forward",
            Mode::ForwardBackward => "forward_backward",
            Mode::Step => "step",
            Mode::Epoch => "epoch",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A built row, ready to run.
pub trait Case {
    /// Runs one iteration of `mode` and returns a number read back to the host (the loss, or
    /// the images delivered), so the iteration cannot finish before the device has.
    fn run(&mut self, mode: Mode) -> kd_core::Result<f64>;

    /// The check file's tensors: `in.*` inputs, `param.*` weights as they were before any
    /// iteration ran, `out.*` outputs and `grad.*` gradients of one fresh iteration.
    fn export(&mut self) -> kd_core::Result<Vec<(String, Tensor)>>;
}

/// Builds a [`Case`] for the run's settings.
pub type Builder = Box<dyn Fn(&Settings) -> kd_core::Result<Box<dyn Case>>>;

/// A row's description; cheap, so the whole list can be made and filtered before anything big
/// is allocated.
pub struct Spec {
    /// What is computed, e.g. `kd_loss`; the reference dispatches on it.
    pub kind: &'static str,
    /// `small` (per-call overhead dominates) or `real` (the training shape), or a data-set name.
    pub label: &'static str,
    /// The shape in words, e.g. `[64, 100]`.
    pub shape: String,
    /// The modes timed.
    pub modes: Vec<Mode>,
    /// Scalars the reference needs (temperatures, weights, sizes).
    pub params: Value,
    /// Criterion samples (10 for rows whose iteration takes a second or more).
    pub sample_size: usize,
    /// Elements (images) per iteration, for rows reported as a rate.
    pub throughput: Option<u64>,
    /// Least bytes one forward and one forward + backward iteration must move through memory
    /// (for the bandwidth column on a GPU); `None` where the row is compute-bound.
    pub min_bytes: Option<(u64, u64)>,
    /// Builds the case.
    pub build: Builder,
}

impl Spec {
    /// The row id of `mode`, `kind/mode/label` (criterion's `group/function/parameter`).
    pub fn id(&self, mode: Mode) -> String {
        format!("{}/{}/{}", self.kind, mode.name(), self.label)
    }

    /// The spec's part of the check manifest.
    pub fn manifest(&self, file: &str, settings: &Settings) -> Value {
        let modes: Vec<Value> = self
            .modes
            .iter()
            .map(|&m| {
                serde_json::json!({
                    "mode": m.name(),
                    "id": self.id(m),
                    "min_bytes": self.min_bytes.and_then(|(f, fb)| match m {
                        Mode::Forward => Some(f),
                        Mode::ForwardBackward => Some(fb),
                        _ => None,
                    }),
                })
            })
            .collect();
        serde_json::json!({
            "kind": self.kind,
            "label": self.label,
            "shape": self.shape,
            "params": self.params,
            "sample_size": self.sample_size,
            "throughput": self.throughput,
            "modes": modes,
            "file": file,
            "device": settings.device_name(),
        })
    }
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spec")
            .field("kind", &self.kind)
            .field("label", &self.label)
            .field("shape", &self.shape)
            .field("modes", &self.modes)
            .finish()
    }
}

/// Keeps the specs with at least one mode whose id matches `filter` (a regular expression
/// searched anywhere in the id, as criterion does), and only those modes.
pub fn select(specs: Vec<Spec>, filter: Option<&str>) -> kd_core::Result<Vec<Spec>> {
    let re = match filter {
        Some(f) => Some(regex::Regex::new(f).map_err(|e| {
            kd_core::KdError::invalid(format!("--filter {f:?} is not a regular expression: {e}"))
        })?),
        None => None,
    };
    Ok(specs
        .into_iter()
        .filter_map(|mut s| {
            if let Some(re) = &re {
                let kept: Vec<Mode> = s
                    .modes
                    .iter()
                    .copied()
                    .filter(|&m| re.is_match(&s.id(m)))
                    .collect();
                s.modes = kept;
            }
            (!s.modes.is_empty()).then_some(s)
        })
        .collect())
}
