//! One whole distillation step of the CIFAR-100 KD row: resnet32x4 → resnet8x4, batch 64 of
//! 32×32 images, as kd-core's trainer runs it — student forward (train mode), frozen teacher
//! forward (eval mode, no autograd), CE + KD through the `Distiller` trait, one host read of the
//! loss, backward, SGD with momentum and weight decay.

use kd_classify::models::build;
use kd_classify::{HintonKd, KdConfig};
use kd_core::data::{Batch, Target};
use kd_core::distill::{Distiller, Progress, StepCtx, Teacher};
use kd_core::models::{Model, ModelSpec};
use kd_core::train::{Optimizer, OptimizerConfig};
use kd_core::KdError;
use serde_json::json;
use tch::{nn, Kind, Tensor};

use super::{dev, randn};
use crate::case::{Case, Mode, Spec};
use crate::settings::Settings;

const BATCH: i64 = 64;
const CLASSES: i64 = 100;
const LR: f64 = 0.05;
const MOMENTUM: f64 = 0.9;
const WEIGHT_DECAY: f64 = 5e-4;
const KD: KdConfig = KdConfig {
    tau: 4.0,
    ce_weight: 0.1,
    kd_weight: 0.9,
};

pub(super) fn specs() -> Vec<Spec> {
    vec![Spec {
        kind: "kd_step",
        label: "real",
        shape: "resnet32x4 → resnet8x4, [64, 3, 32, 32]".into(),
        modes: vec![Mode::Step],
        params: json!({
            "teacher": "resnet32x4", "student": "resnet8x4", "classes": CLASSES,
            "tau": KD.tau, "ce_weight": KD.ce_weight, "kd_weight": KD.kd_weight,
            "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
        }),
        sample_size: 10,
        throughput: Some(BATCH as u64),
        min_bytes: None,
        build: Box::new(|s| Ok(Box::new(StepCase::new(s)?) as Box<dyn Case>)),
    }]
}

/// Student, teacher, optimiser and one fixed batch.
struct StepCase {
    _vs: nn::VarStore,
    student: Box<dyn Model>,
    teacher: Teacher,
    distiller: HintonKd,
    opt: Optimizer,
    batch: Batch,
}

fn sorted_vars(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl StepCase {
    fn new(s: &Settings) -> kd_core::Result<Self> {
        tch::manual_seed(51);
        let d = dev(s);
        let spec = ModelSpec {
            in_channels: 3,
            num_classes: CLASSES,
        };
        let tvs = nn::VarStore::new(d);
        let t_model = build("resnet32x4", &tvs.root(), spec)?;
        let teacher = Teacher::from_parts(tvs, t_model);
        let vs = nn::VarStore::new(d);
        let student = build("resnet8x4", &vs.root(), spec)?;
        let params: Vec<(String, Tensor)> = sorted_vars(&vs)
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let opt = Optimizer::new(
            OptimizerConfig::Sgd {
                momentum: MOMENTUM,
                weight_decay: WEIGHT_DECAY,
                nesterov: false,
            },
            params,
        );
        let x = randn(&[BATCH, 3, 32, 32], 1.0, d);
        let y = Tensor::randint(CLASSES, [BATCH], (Kind::Int64, d));
        let indices: Vec<usize> = (0..BATCH as usize).collect();
        let batch = Batch {
            x,
            target: Target::Labels(y),
            index: Tensor::arange(BATCH, (Kind::Int64, d)),
            indices,
        };
        Ok(Self {
            _vs: vs,
            student,
            teacher,
            distiller: HintonKd::new(KD),
            opt,
            batch,
        })
    }

    /// One step; returns the loss and the student's logits.
    fn step(&mut self) -> kd_core::Result<(f64, Tensor)> {
        let s_out = self.student.forward_t(&self.batch.x, true);
        let t_out = self.teacher.forward(&self.batch.x);
        let ctx = StepCtx {
            batch: &self.batch,
            student: self.student.as_ref(),
            teacher: Some(self.teacher.model()),
            s_out: &s_out,
            t_out: Some(&t_out),
            progress: Progress {
                epoch: 0,
                epochs: 1,
                global_step: 0,
                steps_per_epoch: 1,
            },
        };
        let total = self
            .distiller
            .loss(&ctx)?
            .total()
            .ok_or_else(|| KdError::invalid("kd returned no loss terms"))?;
        let value = total.double_value(&[]);
        self.opt.zero_grad();
        total.backward();
        self.opt.step(LR);
        Ok((value, s_out.logits))
    }
}

impl Case for StepCase {
    fn run(&mut self, _mode: Mode) -> kd_core::Result<f64> {
        Ok(self.step()?.0)
    }

    fn export(&mut self) -> kd_core::Result<Vec<(String, Tensor)>> {
        let mut out = vec![
            ("in.x".to_string(), self.batch.x.copy()),
            ("in.y".to_string(), self.batch.target.tensor().copy()),
        ];
        for (n, t) in sorted_vars(self.teacher.var_store()) {
            out.push((format!("param.teacher.{n}"), t.detach().copy()));
        }
        let student: Vec<(String, Tensor)> = self
            .opt
            .params()
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        let buffers = sorted_vars(&self._vs);
        for (n, t) in &buffers {
            out.push((format!("param.student.{n}"), t.detach().copy()));
        }
        let (loss, logits) = self.step()?;
        out.push(("out.loss".into(), Tensor::from(loss as f32)));
        out.push(("out.logits".into(), logits.detach().copy()));
        for (n, t) in &student {
            out.push((format!("grad.param.student.{n}"), t.grad().copy()));
            out.push((format!("out.after.{n}"), t.detach().copy()));
        }
        Ok(out)
    }
}
