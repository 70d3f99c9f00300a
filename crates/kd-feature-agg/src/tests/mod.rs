//! Unit tests: the spec's §7 properties, closed forms, shapes, gradients, configuration errors
//! and a short end-to-end training run.

use tch::{nn, Device, Kind, Tensor};

use kd_core::distill::Teacher;
use kd_core::models::{Model, ModelSpec};
use kd_core::train::{AUX, STUDENT};

mod aff;
mod config;
mod distiller;
mod kl;
mod train;

pub(crate) const RGB10: ModelSpec = ModelSpec {
    in_channels: 3,
    num_classes: 10,
};

/// A student store with `arch` under `student`, and a frozen teacher `teacher_arch`.
pub(crate) struct Pair {
    pub vs: nn::VarStore,
    pub student: Box<dyn Model>,
    pub teacher: Teacher,
}

impl Pair {
    pub fn new(student: &str, teacher: &str) -> Self {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let s = kd_classify::models::build(student, &(vs.root() / STUDENT), RGB10).unwrap();
        let tvs = nn::VarStore::new(Device::Cpu);
        let t = kd_classify::models::build(teacher, &tvs.root(), RGB10).unwrap();
        Self {
            vs,
            student: s,
            teacher: Teacher::from_parts(tvs, t),
        }
    }

    pub fn aux(&self) -> nn::Path<'_> {
        self.vs.root() / AUX
    }
}

pub(crate) fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

pub(crate) fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

pub(crate) fn all_finite(t: &Tensor) -> bool {
    t.isfinite().all().int64_value(&[]) == 1
}
