//! Checks made once the data are open and before anything trains.
//!
//! Each failure here used to cost a teacher's training first, or to publish a row that never
//! trained: an empty split gave box AP −100 or a cached teacher trained on nothing, a batch
//! larger than the training set gave zero steps, and a crop too large for the machine was
//! killed by the kernel with no message. Every error names the config file and the section.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use kd_core::distill::Teacher;
use kd_core::models::Model;
use kd_core::train::{AUX, STUDENT};
use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use super::{Plan, RunArgs, Task, TrainOn};
use crate::methods::{self, Method, MethodCtx, TeacherRef};

/// Runs every check; `needed[t]` says whether teacher `t` is trained or given for this table.
pub fn check<T: Task>(
    task: &T,
    plan: &Plan<T::Net>,
    args: &RunArgs,
    file: &Path,
    needed: &[bool],
    device: Device,
) -> Result<()> {
    let data = match &args.data {
        Some(d) => format!("--data {}", d.display()),
        None => format!("the embedded data of {}", file.display()),
    };
    let trains_teachers = args.teacher.is_none() && needed.iter().any(|n| *n);
    let mut used: Vec<TrainOn> = plan.rows.iter().map(|r| r.train_on).collect();
    if trains_teachers {
        used.push(TrainOn::Original);
    }
    used.sort();
    used.dedup();
    for &on in &used {
        if task.train_len(on) == 0 {
            let (what, source) = match on {
                TrainOn::Original => ("training set", data.clone()),
                TrainOn::Web => (
                    "web pool",
                    match &args.web {
                        Some(w) => format!("--web {}", w.display()),
                        None => format!("the [web] section of {}", file.display()),
                    },
                ),
            };
            bail!(
                "{source}: the {what} {} is empty (0 samples){}",
                task.split_name(Some(on)),
                if on.is_original() {
                    format!("; check its folder and any train_subset in {}", file.display())
                } else {
                    String::new()
                }
            );
        }
    }
    if task.test_len() == 0 {
        bail!(
            "{data}: the evaluation set {} is empty (0 samples); check its folder",
            task.split_name(None)
        );
    }
    let mut recipes = Vec::new();
    if args.teacher.is_none() {
        for (t, _) in plan.teachers.iter().zip(needed).filter(|(_, n)| **n) {
            recipes.push((&t.at, &t.train, &t.net, TrainOn::Original, None, t.label.as_str()));
        }
    }
    for row in &plan.rows {
        let s = &plan.students[row.student];
        let teacher = row
            .method
            .needs_teacher()
            .then(|| &plan.teachers[row.teacher].net);
        recipes.push((&s.at, &s.train, &s.net, row.train_on, teacher, row.label.as_str()));
    }
    for (at, train, _, on, _, label) in &recipes {
        let all = task.train_len(*on);
        // With early stopping the held-out share is never trained on.
        let held = train.held_out_of(all);
        let n = all - held;
        if train.batch_size > n {
            let of = if held > 0 {
                format!("{n} samples, {held} of {all} held out by train.early_stop")
            } else {
                format!("{n} samples")
            };
            bail!(
                "{}: {at} train.batch_size = {} is larger than the training set of {label:?} ({of}): no full batch, so no step",
                file.display(),
                train.batch_size
            );
        }
    }
    dry_build(task, plan).with_context(|| file.display().to_string())?;
    if device != Device::Cpu {
        return Ok(());
    }
    let Some((limit, source)) = memory_limit()? else {
        return Ok(());
    };
    let mut probes = Probes::default();
    for (at, train, net, on, teacher, label) in recipes {
        let input = task.train_input(on);
        let student = probes.get(task, net, input)?;
        let teacher = match teacher {
            Some(t) => Some(probes.get(task, t, input)?),
            None => None,
        };
        let need = step_bytes(
            train.batch_size,
            input,
            student,
            teacher,
            train.optimizer.buffers_per_parameter(),
        );
        if need > limit {
            bail!(
                "row {label:?}: one training step needs at least {:.1} GiB (batch {} × input {input:?}: the student's outputs with the gradients of its loss inputs{}, and the parameters), more than {:.1} GiB ({source}); lower {at} train.batch_size or the input size in {}",
                gib(need),
                train.batch_size,
                if teacher.is_some() { ", the teacher's outputs" } else { "" },
                gib(limit),
                file.display()
            );
        }
    }
    Ok(())
}

/// Builds every row's distiller once on freshly built networks, so a method option out of its
/// range or a tap one network lacks fails now, naming the row, instead of after the teacher
/// has trained. Self-regulated students that read the teacher's significance vector need the
/// trained teacher's files and are built when their row runs.
fn dry_build<T: Task>(task: &T, plan: &Plan<T::Net>) -> Result<()> {
    let supervised = || task.supervised();
    let task_loss = || task.task_loss();
    for t in &plan.teachers {
        methods::teacher_distiller(&t.method, &supervised, task.train_len(TrainOn::Original))
            .with_context(|| format!("teacher {:?}", t.label))?;
    }
    // Each teacher is built once and shared by its rows (a distiller only reads it); each row
    // gets a fresh student, since its distiller adds modules to the student's store.
    let mut teachers: Vec<Option<Teacher>> = plan.teachers.iter().map(|_| None).collect();
    for row in &plan.rows {
        if let Method::Selfreg(c) = &row.method {
            if c.variant.uses_significance() {
                continue;
            }
        }
        let s_vs = nn::VarStore::new(Device::Cpu);
        let student = task.build_net(&plan.students[row.student].net, &(s_vs.root() / STUDENT))?;
        if row.method.needs_teacher() && teachers[row.teacher].is_none() {
            let t_vs = nn::VarStore::new(Device::Cpu);
            let model = task.build_net(&plan.teachers[row.teacher].net, &t_vs.root())?;
            teachers[row.teacher] = Some(Teacher::from_parts(t_vs, model));
        }
        let teacher = teachers[row.teacher]
            .as_ref()
            .filter(|_| row.method.needs_teacher());
        let name = &plan.teachers[row.teacher].name;
        let ctx = MethodCtx {
            aux: &(s_vs.root() / AUX),
            student: student.as_ref(),
            teacher: teacher.map(|teacher| TeacherRef {
                name,
                teacher,
                dir: None,
            }),
            supervised: &supervised,
            task_loss: &task_loss,
            n_train: task.train_len(row.train_on),
            seed: 0,
        };
        methods::build(&row.method, &ctx).with_context(|| format!("row {:?}", row.label))?;
    }
    Ok(())
}

/// What one forward pass of a network holds per sample, and its parameters.
#[derive(Clone, Copy, Debug)]
struct Probe {
    /// Elements per sample of what the loss reads with a softmax (logits, auxiliary logits).
    logits: f64,
    /// Elements per sample of the other loss inputs (head outputs such as box regressions).
    heads: f64,
    /// Elements per sample of the features (taps, pooled embedding).
    features: f64,
    /// Trainable parameter elements.
    params: f64,
}

/// Probes by network and input, so a table of many rows builds each network once.
#[derive(Default)]
struct Probes {
    seen: HashMap<String, Probe>,
}

impl Probes {
    fn get<T: Task>(&mut self, task: &T, net: &T::Net, input: [i64; 3]) -> Result<Probe> {
        let key = format!("{}{input:?}", toml::to_string(&Wrapped { net })?);
        if let Some(p) = self.seen.get(&key) {
            return Ok(*p);
        }
        let p = probe(|p| task.build_net(net, p), input)?;
        self.seen.insert(key, p);
        Ok(p)
    }
}

/// A network description as a TOML document (a bare string needs a key).
#[derive(Serialize)]
struct Wrapped<'a, N> {
    net: &'a N,
}

/// Largest probe input in pixels: the outputs of a larger input are extrapolated from it.
const PROBE_PIXELS: i64 = 256 * 256;

/// Runs `build`'s network once without gradients on one input of about [`PROBE_PIXELS`]
/// with the aspect of `input`, and scales the spatial outputs to `input`'s size.
fn probe(
    build: impl FnOnce(&nn::Path<'_>) -> kd_core::Result<Box<dyn Model>>,
    input: [i64; 3],
) -> Result<Probe> {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = build(&vs.root()).context("building a network for the memory estimate")?;
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(Tensor::numel)
        .map(|n| n as i64)
        .sum();
    let [c, h, w] = input;
    let mut k = 1;
    while (h / k) * (w / k) > PROBE_PIXELS {
        k += 1;
    }
    // A reduced probe keeps multiples of 32, so every stride of a detector's pyramid is whole.
    let side = |v: i64| {
        let v = (v + k - 1) / k;
        if k == 1 {
            v
        } else {
            (v.max(32) + 31) / 32 * 32
        }
    };
    let (ph, pw) = (side(h), side(w));
    let x = Tensor::zeros([1, c, ph, pw], (Kind::Float, Device::Cpu));
    model.check_input(&x)?;
    let out = tch::no_grad(|| model.forward_t(&x, false));
    let ratio = (h * w) as f64 / (ph * pw) as f64;
    let logits: Vec<&Tensor> = std::iter::once(&out.logits)
        .chain(out.aux_logits.iter())
        .collect();
    let heads: Vec<&Tensor> = out.heads.iter().map(|(_, t)| t).collect();
    let features: Vec<&Tensor> = out
        .features
        .iter()
        .map(|(_, t)| t)
        .chain(out.pooled.iter())
        .collect();
    Ok(Probe {
        logits: elements(&logits, ratio),
        heads: elements(&heads, ratio),
        features: elements(&features, ratio),
        params: params as f64,
    })
}

/// Elements of one-sample outputs, spatial ones (rank ≥ 3) scaled by `ratio`.
fn elements(all: &[&Tensor], ratio: f64) -> f64 {
    all.iter()
        .map(|t| {
            let n = t.numel() as f64;
            if t.dim() >= 3 {
                n * ratio
            } else {
                n
            }
        })
        .sum()
}

/// A lower bound of what one float32 training step holds when its backward pass starts: per
/// sample the input; the student's logits three times (values, their gradients, the loss's
/// log-softmax), its other loss inputs twice (values, gradients) and its features once; the
/// teacher's outputs once; the student's parameters with their gradients and `slots`
/// optimiser buffers, and the teacher's parameters. The networks' inner activations come on
/// top, so a row refused here cannot fit; one accepted may still not.
fn step_bytes(batch: usize, input: [i64; 3], student: Probe, teacher: Option<Probe>, slots: usize) -> u64 {
    let per_sample = input.iter().product::<i64>() as f64
        + 3.0 * student.logits
        + 2.0 * student.heads
        + student.features
        + teacher.map_or(0.0, |t| t.logits + t.heads + t.features);
    let params = (2 + slots) as f64 * student.params + teacher.map_or(0.0, |t| t.params);
    (4.0 * (batch as f64 * per_sample + params)) as u64
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The memory a run may use and where that number comes from: `KD_RS_MEMORY_MB` when set,
/// else the smaller of the machine's memory and its control group's limit (Linux); `None`
/// where neither can be read.
pub fn memory_limit() -> Result<Option<(u64, String)>> {
    if let Some(v) = std::env::var_os("KD_RS_MEMORY_MB").filter(|v| !v.is_empty()) {
        let s = v.to_string_lossy();
        let mb: u64 = s
            .trim()
            .parse()
            .ok()
            .filter(|m| *m > 0)
            .with_context(|| format!("KD_RS_MEMORY_MB={s}: expected a whole number of MiB > 0"))?;
        let bytes = mb
            .checked_mul(1 << 20)
            .with_context(|| format!("KD_RS_MEMORY_MB={mb}: too large"))?;
        return Ok(Some((bytes, format!("KD_RS_MEMORY_MB={mb}"))));
    }
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb << 10)
    });
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f).ok()?.trim().parse::<u64>().ok())
    .filter(|b| *b < (1u64 << 60));
    Ok(match (total, cgroup) {
        (Some(t), Some(c)) if c < t => Some((c, "this control group's memory limit".into())),
        (Some(t), _) => Some((t, "this machine's memory".into())),
        (None, Some(c)) => Some((c, "this control group's memory limit".into())),
        (None, None) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_bound_adds_what_one_step_must_hold() {
        let s = Probe {
            logits: 100.0,
            heads: 10.0,
            features: 40.0,
            params: 1000.0,
        };
        let t = Probe {
            logits: 50.0,
            heads: 5.0,
            features: 20.0,
            params: 2000.0,
        };
        // 4 bytes × (batch 2 × (input 12 + 3·100 + 2·10 + 40 + (50 + 5 + 20)) + (2 + 1)·1000 + 2000).
        assert_eq!(step_bytes(2, [3, 2, 2], s, Some(t), 1), 4 * (2 * 447 + 5000));
        assert_eq!(step_bytes(2, [3, 2, 2], s, None, 1), 4 * (2 * 372 + 3000));
    }

    #[test]
    fn probe_outputs_scale_with_the_input_area() {
        use kd_core::models::{ModelOutput, Tap};
        struct Dense;
        impl Model for Dense {
            fn name(&self) -> &str {
                "dense"
            }
            fn forward_t(&self, x: &Tensor, _train: bool) -> ModelOutput {
                let (h, w) = (x.size()[2], x.size()[3]);
                ModelOutput {
                    logits: Tensor::zeros([1, 19, h, w], (Kind::Float, Device::Cpu)),
                    aux_logits: None,
                    features: Vec::new(),
                    pooled: Some(Tensor::zeros([1, 7], (Kind::Float, Device::Cpu))),
                    heads: Vec::new(),
                }
            }
            fn taps(&self) -> &[Tap] {
                &[]
            }
            fn num_classes(&self) -> i64 {
                19
            }
            fn in_channels(&self) -> i64 {
                3
            }
        }
        let p = probe(|_| Ok(Box::new(Dense)), [3, 4096, 4096]).unwrap();
        // The 4096² logits are extrapolated exactly from a 256² probe; the pooled vector is not.
        assert_eq!((p.logits, p.features), (19.0 * 4096.0 * 4096.0, 7.0));
        let p = probe(|_| Ok(Box::new(Dense)), [3, 100, 60]).unwrap();
        assert_eq!((p.logits, p.features), (19.0 * 6000.0, 7.0));
    }
}
