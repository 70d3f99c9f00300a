//! Every benchmark row, grouped by what it exercises.
//!
//! Inputs come from libtorch's generator seeded per row, so a row is the same in every process
//! (the exporter's copy and the bench's copy of a row hold the same numbers).

use tch::{nn, Device, Kind, Tensor};

use crate::case::{Case, Mode, Spec};
use crate::settings::Settings;

mod data;
mod kd3;
mod losses;
mod modules;
mod selfreg;
mod step;

/// Every row, in the order of the results table.
pub fn all(s: &Settings) -> Vec<Spec> {
    let mut v = for_target("kernels", s);
    v.extend(step::specs());
    v.extend(data::specs());
    v
}

/// The rows of one criterion bench target: `kernels`, `step` or `pipeline`.
pub fn for_target(target: &str, s: &Settings) -> Vec<Spec> {
    match target {
        "step" => step::specs(),
        "pipeline" => data::specs(),
        _ => {
            let mut v = losses::specs(s);
            v.extend(modules::specs(s));
            v.extend(kd3::specs());
            v.extend(selfreg::specs());
            v
        }
    }
}

/// Standard-normal fp32 tensor on `dev`, times `scale`.
pub(crate) fn randn(shape: &[i64], scale: f64, dev: Device) -> Tensor {
    Tensor::randn(shape, (Kind::Float, dev)) * scale
}

/// `[d0, d1, ...]`.
pub(crate) fn shape_str(shape: &[i64]) -> String {
    let parts: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// The loss closure of a [`LossCase`]: the inputs in, a 0-dim loss out.
pub(crate) type LossFn = Box<dyn Fn(&[Tensor]) -> kd_core::Result<Tensor>>;

/// A loss (or a module plus a loss) over named inputs, timed forward and forward + backward.
pub(crate) struct LossCase {
    /// Named inputs; those that require grad get their gradient exported.
    pub inputs: Vec<(String, Tensor)>,
    /// The store of the module's weights, if any.
    pub vs: Option<nn::VarStore>,
    /// Computes the loss.
    pub loss: LossFn,
    /// Seeds libtorch's generator right before the exported iteration (for losses that draw
    /// noise), so the reference can draw the same numbers.
    pub seed: Option<i64>,
    /// Extra named tensors for the check file (e.g. constants the loss closed over).
    pub extra: Vec<(String, Tensor)>,
}

impl LossCase {
    fn tensors(&self) -> Vec<Tensor> {
        self.inputs.iter().map(|(_, t)| t.shallow_clone()).collect()
    }
}

impl Case for LossCase {
    fn run(&mut self, mode: Mode) -> kd_core::Result<f64> {
        let xs = self.tensors();
        match mode {
            Mode::Forward => tch::no_grad(|| Ok((self.loss)(&xs)?.double_value(&[]))),
            _ => {
                let l = (self.loss)(&xs)?;
                l.backward();
                Ok(l.double_value(&[]))
            }
        }
    }

    fn export(&mut self) -> kd_core::Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> = Vec::new();
        for (n, t) in &self.inputs {
            out.push((format!("in.{n}"), t.detach().copy()));
        }
        out.extend(self.extra.iter().map(|(n, t)| (n.clone(), t.detach().copy())));
        let mut params: Vec<(String, Tensor)> = self
            .vs
            .as_ref()
            .map(|vs| vs.variables().into_iter().collect())
            .unwrap_or_default();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        for (n, p) in &params {
            out.push((format!("param.{n}"), p.detach().copy()));
        }
        for (_, t) in self.inputs.iter_mut().chain(params.iter_mut()) {
            t.zero_grad();
        }
        if let Some(s) = self.seed {
            tch::manual_seed(s);
        }
        let l = (self.loss)(&self.tensors())?;
        l.backward();
        out.push(("out.loss".into(), l.detach().copy()));
        for (n, t) in &self.inputs {
            if t.requires_grad() {
                out.push((format!("grad.{n}"), t.grad().copy()));
            }
        }
        for (n, p) in &params {
            if p.requires_grad() && p.grad().defined() {
                out.push((format!("grad.param.{n}"), p.grad().copy()));
            }
        }
        Ok(out)
    }
}

/// A row timed forward only (selection, augmentation): the closure returns a number read back
/// to the host and the outputs for the check file.
pub(crate) struct ForwardCase {
    /// Named inputs.
    pub inputs: Vec<(String, Tensor)>,
    /// Computes the outputs.
    pub f: ForwardFn,
}

/// The closure of a [`ForwardCase`].
pub(crate) type ForwardFn = Box<dyn Fn(&[Tensor]) -> kd_core::Result<(f64, Vec<(String, Tensor)>)>>;

impl Case for ForwardCase {
    fn run(&mut self, _mode: Mode) -> kd_core::Result<f64> {
        let xs: Vec<Tensor> = self.inputs.iter().map(|(_, t)| t.shallow_clone()).collect();
        tch::no_grad(|| Ok((self.f)(&xs)?.0))
    }

    fn export(&mut self) -> kd_core::Result<Vec<(String, Tensor)>> {
        let xs: Vec<Tensor> = self.inputs.iter().map(|(_, t)| t.shallow_clone()).collect();
        let mut out: Vec<(String, Tensor)> = self
            .inputs
            .iter()
            .map(|(n, t)| (format!("in.{n}"), t.copy()))
            .collect();
        let (_, outs) = tch::no_grad(|| (self.f)(&xs))?;
        out.extend(outs.into_iter().map(|(n, t)| (format!("out.{n}"), t)));
        Ok(out)
    }
}

/// Forward and forward + backward, the modes of every loss row.
pub(crate) fn loss_modes() -> Vec<Mode> {
    vec![Mode::Forward, Mode::ForwardBackward]
}

/// The settings' device (a helper for builders).
pub(crate) fn dev(s: &Settings) -> Device {
    s.device
}
