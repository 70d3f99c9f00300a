//! The distiller on a narrow PSPNet-R18 student and a wider teacher: terms, §7.6 (frozen
//! teacher) and §7.10 (multi-level sum) end to end, and a few SGD steps that lower the loss.

use kd_core::data::Batch;
use kd_core::distill::{Distiller, LossTerms, Progress, StepCtx, Teacher};
use kd_core::losses::CwdConfig;
use kd_core::models::{Model, ModelOutput};
use kd_seg::models::{build, SegNetConfig};
use kd_seg::SegSupervised;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::{scalar, seed_lock};
use crate::{Gdd, GddConfig, GddLevelSpec, NoiseKind};

pub(super) const K: i64 = 4;
pub(super) const PROGRESS: Progress = Progress {
    epoch: 0,
    epochs: 1,
    global_step: 0,
    steps_per_epoch: 1,
};

fn seg_cfg(width: i64) -> SegNetConfig {
    let mut c = SegNetConfig::pspnet_r18(K).with_width(width);
    c.head_channels = 8;
    c.aux_channels = 4;
    c
}

/// Student (width 8, stage4 64 channels) in a training store with `student` and `aux` roots,
/// and a frozen teacher (width 16, stage4 128 channels).
pub(super) struct Pair {
    pub(super) vs: nn::VarStore,
    pub(super) student: Box<dyn Model>,
    pub(super) teacher: Teacher,
}

impl Pair {
    pub(super) fn new() -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let student = Box::new(build(&(vs.root() / "student"), &seg_cfg(8)).unwrap());
        let tvs = nn::VarStore::new(Device::Cpu);
        let t = build(&tvs.root(), &seg_cfg(16)).unwrap();
        let teacher = Teacher::from_parts(tvs, Box::new(t));
        Self { vs, student, teacher }
    }

    fn gdd(&self, cfg: GddConfig) -> Gdd {
        Gdd::for_models(
            &(self.vs.root() / "aux"),
            cfg,
            self.student.as_ref(),
            self.teacher.model(),
            Box::new(SegSupervised::default()),
        )
        .unwrap()
    }
}

pub(super) fn batch() -> Batch {
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(K, [2, 32, 32], (Kind::Int64, Device::Cpu));
    let _ = y.narrow(2, 0, 3).fill_(255);
    Batch {
        x,
        target: kd_core::data::Target::LabelMap(y),
        index: Tensor::from_slice(&[0i64, 1]),
        indices: vec![0, 1],
    }
}

pub(super) fn loss(
    d: &mut dyn Distiller,
    p: &Pair,
    b: &Batch,
    s_out: &ModelOutput,
    t_out: &ModelOutput,
) -> LossTerms {
    let ctx = StepCtx {
        batch: b,
        student: p.student.as_ref(),
        teacher: Some(p.teacher.model()),
        s_out,
        t_out: Some(t_out),
        progress: PROGRESS,
    };
    d.loss(&ctx).unwrap()
}

pub(super) fn names(t: &LossTerms) -> Vec<&str> {
    t.terms().iter().map(|(n, _)| n.as_str()).collect()
}

pub(super) fn term(t: &LossTerms, name: &str) -> Tensor {
    t.terms()
        .iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
        .shallow_clone()
}

#[test]
fn terms_are_the_task_loss_plus_gdd_and_optional_cwd() {
    let _g = seed_lock();
    tch::manual_seed(200);
    let p = Pair::new();
    let mut d = p.gdd(GddConfig::default());
    assert_eq!(d.name(), "gdd");
    assert!(d.needs_teacher());
    assert_eq!(d.levels().len(), 1);
    let level = &d.levels()[0].1;
    assert!(level.has_adapter());
    assert_eq!((level.in_channels(), level.out_channels()), (64, 128));
    let b = batch();
    let s_out = p.student.forward_t(&b.x, true);
    let t_out = p.teacher.forward(&b.x);
    let terms = loss(&mut d, &p, &b, &s_out, &t_out);
    assert_eq!(names(&terms), ["ce", "aux_ce", "gdd"]);
    assert!(scalar(&term(&terms, "gdd")) > 0.0);

    let cfg = GddConfig {
        logit_cwd: Some(CwdConfig::mmrazor()),
        ..GddConfig::default()
    };
    let p2 = Pair::new();
    let mut d = p2.gdd(cfg);
    let s_out = p2.student.forward_t(&b.x, true);
    let t_out = p2.teacher.forward(&b.x);
    let terms = loss(&mut d, &p2, &b, &s_out, &t_out);
    assert_eq!(names(&terms), ["ce", "aux_ce", "gdd", "cwd"]);
    // The logit term reads the decode head's own 1/8-resolution output (4×4 for a 32×32
    // input), not the logits resized to the input.
    let (s_native, t_native) = (s_out.dense_logits(), t_out.dense_logits());
    assert_eq!(s_native.size(), [2, K, 4, 4]);
    assert_eq!(s_out.logits.size(), [2, K, 32, 32]);
    let cwd = kd_core::losses::cwd_loss(s_native, t_native, 1.0).unwrap() * 5.0;
    assert!((scalar(&term(&terms, "cwd")) - scalar(&cwd)).abs() < 1e-5 * scalar(&cwd));
    let resized = kd_core::losses::cwd_loss(&s_out.logits, &t_out.logits, 1.0).unwrap() * 5.0;
    assert!((scalar(&resized) - scalar(&cwd)).abs() > 1e-3 * scalar(&cwd));

    // Without a teacher output the distiller refuses.
    let ctx = StepCtx {
        batch: &b,
        student: p2.student.as_ref(),
        teacher: None,
        s_out: &s_out,
        t_out: None,
        progress: PROGRESS,
    };
    assert!(d.loss(&ctx).unwrap_err().to_string().contains("teacher"));
}

/// §7.6 end to end: the teacher store is frozen and gets no gradient; its maps do not
/// require grad; student, adapter and generator all get non-zero gradients. The auxiliary
/// modules live under `aux.`, outside what `export_student` writes.
#[test]
fn teacher_is_frozen_and_gradients_reach_student_and_aux_modules() {
    let _g = seed_lock();
    tch::manual_seed(201);
    let p = Pair::new();
    let mut d = p.gdd(GddConfig::default());
    let b = batch();
    let s_out = p.student.forward_t(&b.x, true);
    let t_out = p.teacher.forward(&b.x);
    assert!(!t_out.feature("stage4").unwrap().requires_grad());
    let terms = loss(&mut d, &p, &b, &s_out, &t_out);
    term(&terms, "gdd").backward();
    for (name, v) in p.teacher.var_store().variables() {
        assert!(!v.requires_grad(), "teacher {name} is trainable");
        let g = v.grad();
        assert!(
            !g.defined() || scalar(&g.abs().sum(Kind::Float)) == 0.0,
            "teacher {name} got a gradient"
        );
    }
    let vars = p.vs.variables();
    let grad_of = |name: &str| {
        let g = vars[name].grad();
        if g.defined() {
            scalar(&g.abs().sum(Kind::Float))
        } else {
            0.0
        }
    };
    for name in [
        "aux.gdd.0.align.weight",
        "aux.gdd.0.align.bias",
        "aux.gdd.0.generation.0.weight",
        "aux.gdd.0.generation.2.weight",
        "student.backbone.stem.0.weight",
        "student.backbone.layer4.1.conv2.weight",
    ] {
        assert!(grad_of(name) > 0.0, "{name} got no gradient");
    }
    // The GDD term alone does not reach the decode head.
    assert_eq!(grad_of("student.decode_head.conv_seg.weight"), 0.0);
    assert!(vars
        .keys()
        .filter(|k| k.contains("gdd"))
        .all(|k| k.starts_with("aux.gdd.")));
}

/// §7.10: with several levels the `gdd` term is the sum of the per-level losses, each with its
/// own α and its own noise draw.
#[test]
fn several_levels_add_up() {
    let _g = seed_lock();
    tch::manual_seed(202);
    let p = Pair::new();
    let spec = |tap: &str, alpha: f64| GddLevelSpec {
        student_tap: tap.into(),
        teacher_tap: tap.into(),
        alpha,
    };
    let cfg = GddConfig {
        levels: vec![spec("stage3", 3.0), spec("stage4", 7.0), spec("stage2", 0.5)],
        ..GddConfig::default()
    };
    let mut d = p.gdd(cfg);
    assert_eq!(d.levels().len(), 3);
    let b = batch();
    let s_out = tch::no_grad(|| p.student.forward_t(&b.x, false));
    let t_out = p.teacher.forward(&b.x);
    tch::manual_seed(9);
    let total = scalar(&term(&loss(&mut d, &p, &b, &s_out, &t_out), "gdd"));
    tch::manual_seed(9);
    let mut sum = 0.0;
    let mut singles = Vec::new();
    for (spec, level) in d.levels() {
        let s = s_out.feature(&spec.student_tap).unwrap();
        let t = t_out.feature(&spec.teacher_tap).unwrap();
        let l = scalar(&level.forward(s, t).unwrap());
        singles.push(l / spec.alpha);
        sum += l;
    }
    assert!((total - sum).abs() <= 1e-5 * sum, "{total} vs {sum}");
    assert!(singles.iter().all(|&l| l > 0.0));
    // Each level keeps its own α: level 1 (α = 7) over level 0 (α = 3) as the weights say.
    tch::manual_seed(9);
    let per = d.level_losses(&s_out, &t_out).unwrap();
    let ratios: Vec<f64> = per.iter().zip(&singles).map(|(l, s)| scalar(l) / s).collect();
    for (r, a) in ratios.iter().zip([3.0, 7.0, 0.5]) {
        assert!((r - a).abs() <= 1e-4 * a, "{ratios:?}");
    }
}

#[test]
fn construction_errors_name_the_tap() {
    // Builds modules, so it draws from libtorch's process-wide generator: under the lock, so
    // it cannot move another test's seeded draws.
    let _g = seed_lock();
    let p = Pair::new();
    let build = |cfg: GddConfig| {
        Gdd::for_models(
            &(p.vs.root() / "aux"),
            cfg,
            p.student.as_ref(),
            p.teacher.model(),
            Box::new(SegSupervised::default()),
        )
        .unwrap_err()
        .to_string()
    };
    let err = build(GddConfig {
        student_tap: "neck".into(),
        ..GddConfig::default()
    });
    assert!(
        err.contains("student_tap") && err.contains("neck") && err.contains("stage4"),
        "{err}"
    );
    let err = build(GddConfig {
        teacher_tap: "stage5".into(),
        ..GddConfig::default()
    });
    assert!(err.contains("teacher_tap") && err.contains("stage5"), "{err}");
    // stage1 is at stride 4, stage4 at stride 8.
    let err = build(GddConfig {
        student_tap: "stage1".into(),
        ..GddConfig::default()
    });
    assert!(err.contains("stride"), "{err}");
}

/// A few SGD steps on one fixed batch lower the total loss (noise and dropout are re-seeded
/// before every evaluation, so the steps see the same draws).
#[test]
fn sgd_steps_lower_the_loss() {
    let _g = seed_lock();
    tch::manual_seed(203);
    let p = Pair::new();
    let mut d = p.gdd(GddConfig {
        noise: NoiseKind::default(),
        ..GddConfig::default()
    });
    let mut opt = nn::Sgd {
        momentum: 0.9,
        ..Default::default()
    }
    .build(&p.vs, 1e-3)
    .unwrap();
    let b = batch();
    let t_out = p.teacher.forward(&b.x);
    let mut history = Vec::new();
    for _ in 0..8 {
        tch::manual_seed(10);
        let s_out = p.student.forward_t(&b.x, true);
        let terms = loss(&mut d, &p, &b, &s_out, &t_out);
        let total = terms.total().unwrap();
        history.push(scalar(&total));
        opt.zero_grad();
        total.backward();
        opt.step();
    }
    assert!(history.iter().all(|l| l.is_finite()), "{history:?}");
    assert!(history[7] < 0.9 * history[0], "{history:?}");
}
