//! From a configured method to a distiller: the one place where the runner knows every method.
//!
//! Every table's rows name their method with the same `kind`s, and each method is built here
//! once, for whatever task the table runs. The task supplies what differs: its supervised loss
//! (the "no KD" row, and the task terms that feature methods such as CWD and GDD add to), the
//! training-set size and the frozen teacher.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kd_classify::{Dkd, DkdConfig, FitNets, FitNetsConfig, HintonKd, KdConfig, LabelFreeKd};
use kd_core::distill::{Distiller, TaskLoss, Teacher};
use kd_core::losses::CwdConfig;
use kd_core::models::Model;
use kd_feature_agg::{Unikd, UnikdConfig};
use kd_gdd::{Gdd, GddConfig, Mgd, MgdConfig};
use kd_selfreg::{SelfRegKd, SelfRegTeacher, Significance, SIGNIFICANCE_FILE};
use kd_vision::{FeatureCwd, FeatureCwdLevel};
use serde::{Deserialize, Serialize};
use tch::nn;

/// How a teacher is trained, by `kind`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TeacherMethod {
    /// The task's supervised loss alone.
    #[default]
    None,
    /// Self-regulated training; its significance vector is saved next to the weights.
    Selfreg(kd_selfreg::TeacherConfig),
}

impl TeacherMethod {
    /// True for plain supervised training.
    pub fn is_plain(&self) -> bool {
        matches!(self, TeacherMethod::None)
    }

    /// The method for a run `factor` times as many epochs as its recipe was written for
    /// ([`kd_core::train::TrainConfig::epoch_factor`]): what it counts in epochs keeps its
    /// share of training. `factor == 1` returns it unchanged.
    pub fn with_epochs_scaled(&self, factor: f64) -> TeacherMethod {
        match self {
            TeacherMethod::Selfreg(c) if factor != 1.0 => {
                let mut c = c.clone();
                c.gate = scaled_gate(&c.gate, factor);
                c.counting_start = scaled_epochs(c.counting_start, factor);
                TeacherMethod::Selfreg(c)
            }
            other => other.clone(),
        }
    }
}

/// Whole epochs `n` stretched by `factor`, rounded.
fn scaled_epochs(n: usize, factor: f64) -> usize {
    (n as f64 * factor).round() as usize
}

/// A participation gate over `factor` times the epochs: its warm-up as long a share, its
/// per-epoch threshold schedule as slow.
fn scaled_gate(gate: &kd_selfreg::GateConfig, factor: f64) -> kd_selfreg::GateConfig {
    let mut g = gate.clone();
    g.warmup_epochs = scaled_epochs(g.warmup_epochs, factor);
    if let kd_selfreg::Threshold::EpochSchedule { alpha } = &mut g.threshold {
        *alpha /= factor;
    }
    g
}

/// Every method the runner knows, by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Method {
    /// The task's supervised loss alone (the no-KD student).
    None,
    /// Hinton KD on class logits.
    Kd(KdConfig),
    /// Decoupled KD: target and non-target KL weighted apart (Zhao et al., 2022).
    Dkd(DkdConfig),
    /// FitNets hint learning.
    Fitnets(FitNetsConfig),
    /// UniKD: adaptive feature fusion, distribution heads and Gaussian KL (`kd-feature-agg`).
    Unikd(Box<UnikdConfig>),
    /// Self-regulated KD student (KD, SBD, RD or HD) with data-use accounting (`kd-selfreg`).
    Selfreg(Box<kd_selfreg::StudentConfig>),
    /// KD³: instance selection, shared teacher head, MixDistribution (`kd-webdata`). Reads no
    /// labels, so it trains on the web pool.
    Kd3(Box<kd_webdata::Kd3Config>),
    /// Channel-wise distillation (Shu et al., 2021) on top of the task loss: on the dense
    /// logits, or on the named feature taps (one term per tap, an adapter where channels
    /// differ).
    Cwd(CwdMethod),
    /// Generative denoise distillation on one or more taps, on top of the task loss (`kd-gdd`).
    Gdd(GddConfig),
    /// Masked generative distillation (Yang et al., 2022), GDD's ancestor, on one or more
    /// taps, on top of the task loss (`kd-gdd`).
    Mgd(MgdConfig),
}

/// CWD's settings: temperature, weight and where it applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CwdMethod {
    /// Temperature τ of the spatial softmax.
    pub tau: f64,
    /// Loss weight λ.
    pub weight: f64,
    /// Feature taps (the same name on both networks); empty = the logits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taps: Vec<String>,
}

impl Method {
    /// The method for a run `factor` times as many epochs as its recipe was written for
    /// ([`kd_core::train::TrainConfig::epoch_factor`]): the lengths it counts in epochs (DKD's
    /// and UniKD's warm-ups, the self-regulated gate's warm-up and threshold schedule) keep
    /// their share of training. `factor == 1` returns it unchanged.
    pub fn with_epochs_scaled(&self, factor: f64) -> Method {
        if factor == 1.0 {
            return self.clone();
        }
        let mut m = self.clone();
        match &mut m {
            Method::Dkd(c) => c.warmup_epochs *= factor,
            Method::Unikd(c) => c.warmup_epochs *= factor,
            Method::Selfreg(c) => c.gate = scaled_gate(&c.gate, factor),
            _ => {}
        }
        m
    }

    /// The `kind` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Kd(_) => "kd",
            Method::Dkd(_) => "dkd",
            Method::Fitnets(_) => "fitnets",
            Method::Unikd(_) => "unikd",
            Method::Selfreg(_) => "selfreg",
            Method::Kd3(_) => "kd3",
            Method::Cwd(_) => "cwd",
            Method::Gdd(_) => "gdd",
            Method::Mgd(_) => "mgd",
        }
    }

    /// Whether the row needs a trained teacher (its outputs or its significance).
    pub fn needs_teacher(&self) -> bool {
        match self {
            Method::None => false,
            Method::Selfreg(c) => c.needs_teacher_logits() || c.variant.uses_significance(),
            _ => true,
        }
    }

    /// Whether training reads the labels of the training set (then it cannot train on an
    /// unlabelled pool). Hinton KD with `ce_weight = 0` reads none.
    pub fn reads_labels(&self) -> bool {
        match self {
            Method::Kd(c) => c.ce_weight != 0.0,
            Method::Kd3(_) => false,
            _ => true,
        }
    }
}

/// A teacher as a method sees it: the frozen network and, when it was trained here, the folder
/// holding what its training produced besides the weights.
pub struct TeacherRef<'a> {
    /// Its name in the table.
    pub name: &'a str,
    /// The frozen network.
    pub teacher: &'a Teacher,
    /// Its cache folder, when it was trained here.
    pub dir: Option<&'a PathBuf>,
}

/// What building a row's distiller needs from the table.
pub struct MethodCtx<'a> {
    /// Where auxiliary modules are built.
    pub aux: &'a nn::Path<'a>,
    /// The student.
    pub student: &'a dyn Model,
    /// The teacher the row distils from, when it has one.
    pub teacher: Option<TeacherRef<'a>>,
    /// The task's supervised distiller (the no-KD row).
    pub supervised: &'a dyn Fn() -> Result<Box<dyn Distiller>>,
    /// The task's supervised loss, for methods that add their terms to it.
    pub task_loss: &'a dyn Fn() -> Result<Box<dyn TaskLoss>>,
    /// Training-set size (for per-sample state).
    pub n_train: usize,
    /// The run's seed (for a method's own draws).
    pub seed: u64,
}

/// The distiller of a student row.
pub fn build(method: &Method, ctx: &MethodCtx<'_>) -> Result<Box<dyn Distiller>> {
    let need = |what: &str| -> Result<&TeacherRef<'_>> {
        match &ctx.teacher {
            Some(t) => Ok(t),
            None => bail!("{what} needs a teacher"),
        }
    };
    let teacher = |what: &str| -> Result<&dyn Model> { Ok(need(what)?.teacher.model()) };
    if let Method::Kd(c) = method {
        c.validate()?;
    }
    Ok(match method {
        Method::None => (ctx.supervised)()?,
        // Without a cross-entropy term the labels are never read: unlabelled data works.
        Method::Kd(c) if c.ce_weight == 0.0 => Box::new(LabelFreeKd(c.clone())),
        Method::Kd(c) => Box::new(HintonKd::new(c.clone())),
        Method::Dkd(c) => Box::new(Dkd::new(c.clone())?),
        Method::Fitnets(c) => Box::new(FitNets::new(
            c.clone(),
            ctx.aux,
            ctx.student,
            teacher("fitnets")?,
        )?),
        Method::Unikd(c) => Box::new(Unikd::new(
            (**c).clone(),
            ctx.aux,
            ctx.student,
            teacher("unikd")?,
        )?),
        Method::Kd3(c) => Box::new(
            kd_webdata::Kd3::new((**c).clone(), ctx.aux, ctx.student, teacher("kd3")?, ctx.n_train)?
                .with_seed(ctx.seed),
        ),
        Method::Selfreg(c) => {
            let significance = if c.variant.uses_significance() {
                let t = need(&format!("selfreg {}", c.variant.as_str()))?;
                let path = t.dir.map(|d| d.join(SIGNIFICANCE_FILE));
                let found = match path {
                    Some(p) if kd_core::dist::is_file_shared(&p)? => Some(p),
                    _ => None,
                };
                match found {
                    Some(p) => Some(Significance::load(&p).with_context(|| format!("teacher {:?}", t.name))?),
                    None => bail!(
                        "selfreg {} needs the significance vector of a self-regulated teacher, but \
                         teacher {:?} has none{} (give it method = {{ kind = \"selfreg\" }})",
                        c.variant.as_str(),
                        t.name,
                        t.dir
                            .map(|d| format!(" at {}", d.join(SIGNIFICANCE_FILE).display()))
                            .unwrap_or_default()
                    ),
                }
            } else {
                None
            };
            Box::new(SelfRegKd::new((**c).clone(), ctx.n_train, significance)?)
        }
        Method::Cwd(c) if c.taps.is_empty() => Box::new(kd_seg::Cwd::new(
            CwdConfig {
                tau: c.tau,
                weight: c.weight,
            },
            (ctx.task_loss)()?,
        )?),
        Method::Cwd(c) => {
            let t = teacher("cwd")?;
            let levels = c
                .taps
                .iter()
                .map(|tap| FeatureCwdLevel {
                    student_tap: tap.clone(),
                    teacher_tap: tap.clone(),
                })
                .collect();
            Box::new(FeatureCwd::new(
                ctx.aux,
                levels,
                c.tau,
                c.weight,
                ctx.student.taps(),
                t.taps(),
                (ctx.task_loss)()?,
            )?)
        }
        Method::Gdd(c) => Box::new(Gdd::for_models(
            ctx.aux,
            c.clone(),
            ctx.student,
            teacher("gdd")?,
            (ctx.task_loss)()?,
        )?),
        Method::Mgd(c) => Box::new(Mgd::for_models(
            ctx.aux,
            c.clone(),
            ctx.student,
            teacher("mgd")?,
            (ctx.task_loss)()?,
        )?),
    })
}

/// The distiller that trains a teacher: the task's supervised one, or self-regulated training.
pub fn teacher_distiller(
    method: &TeacherMethod,
    supervised: &dyn Fn() -> Result<Box<dyn Distiller>>,
    n_train: usize,
) -> Result<Box<dyn Distiller>> {
    Ok(match method {
        TeacherMethod::None => supervised()?,
        TeacherMethod::Selfreg(c) => Box::new(SelfRegTeacher::new(c.clone(), n_train)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: for<'de> Deserialize<'de>>(text: &str) -> T {
        #[derive(Deserialize)]
        struct W<T> {
            method: T,
        }
        toml::from_str::<W<T>>(&format!("method = {text}"))
            .unwrap()
            .method
    }

    /// Three times the epochs: warm-ups three times as long, the per-epoch threshold schedule
    /// three times as slow; a method with no epoch count and a factor of 1 unchanged.
    #[test]
    fn lengths_counted_in_epochs_keep_their_share_of_a_longer_run() {
        let dkd: Method = parse(r#"{ kind = "dkd", warmup_epochs = 0.5, warmup = "step" }"#);
        let Method::Dkd(c) = dkd.with_epochs_scaled(3.0) else {
            panic!()
        };
        assert_eq!(c.warmup_epochs, 1.5);
        let unikd: Method = parse(r#"{ kind = "unikd", mode = "teacher_moments", warmup_epochs = 0.1 }"#);
        let Method::Unikd(c) = unikd.with_epochs_scaled(3.0) else {
            panic!()
        };
        assert!((c.warmup_epochs - 0.3).abs() < 1e-12);
        let sr: Method = parse(
            r#"{ kind = "selfreg", variant = "rd", gate = { warmup_epochs = 2, threshold = { kind = "epoch_schedule", alpha = 0.15 } } }"#,
        );
        let Method::Selfreg(c) = sr.with_epochs_scaled(3.0) else {
            panic!()
        };
        assert_eq!(c.gate.warmup_epochs, 6);
        let kd_selfreg::Threshold::EpochSchedule { alpha } = c.gate.threshold else {
            panic!()
        };
        assert!((alpha - 0.05).abs() < 1e-12, "{alpha}");
        let kd: Method = parse(r#"{ kind = "kd", tau = 4.0, ce_weight = 0.1, kd_weight = 0.9 }"#);
        assert_eq!(kd.with_epochs_scaled(3.0), kd);
        assert_eq!(dkd.with_epochs_scaled(1.0), dkd);
        let t: TeacherMethod =
            parse(r#"{ kind = "selfreg", counting_start = 1, gate = { warmup_epochs = 1 } }"#);
        let TeacherMethod::Selfreg(c) = t.with_epochs_scaled(2.0) else {
            panic!()
        };
        assert_eq!((c.counting_start, c.gate.warmup_epochs), (2, 2));
    }
}
