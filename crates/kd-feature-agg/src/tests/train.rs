//! A short end-to-end run through kd-core's trainer: a teacher learns a toy task, then UniKD
//! students (both modes) learn it from the teacher, the mode-B heads pre-fitted by the
//! epoch-start hook.

use std::sync::Arc;

use kd_classify::data::{class_loader, Augment, Dataset, InMemoryDataset};
use kd_classify::NoKd;
use kd_core::distill::{Distiller, Teacher};
use kd_core::models::{self, ModelSpec};
use kd_core::rng;
use kd_core::train::{OptimizerConfig, TrainConfig, TrainReport, Trainer, AUX, STUDENT};
use rand::Rng as _;
use tch::{nn, Device};

use crate::config::{PrefitConfig, TargetMode, UnikdConfig};
use crate::distiller::Unikd;

const SPEC: ModelSpec = ModelSpec {
    in_channels: 3,
    num_classes: 4,
};

/// Class `c` is a bright 6×6 square in quadrant `c` of a noisy 12×12 RGB image.
fn toy(n: usize, seed: u64) -> Arc<dyn Dataset> {
    let mut r = rng::derive(seed, 1, 0);
    let (c, h, w) = (3, 12, 12);
    let mut pixels = Vec::with_capacity(n * c * h * w);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let y = (i % 4) as i64;
        let (oy, ox) = ((y as usize / 2) * 6, (y as usize % 2) * 6);
        for _ in 0..c {
            for yy in 0..h {
                for xx in 0..w {
                    let inside = (oy..oy + 6).contains(&yy) && (ox..ox + 6).contains(&xx);
                    let base = if inside { 150 } else { 40 };
                    pixels.push(base + r.gen_range(0u8..100));
                }
            }
        }
        labels.push(y);
    }
    Arc::new(InMemoryDataset::from_parts("toy", [c, h, w], pixels, labels, 4).unwrap())
}

fn recipe(epochs: usize) -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerConfig::Sgd {
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
        },
        ..TrainConfig::sgd_cosine(epochs, 16, 0.05)
    }
}

fn loaders() -> (kd_classify::data::ClassLoader, kd_classify::data::ClassLoader) {
    (
        class_loader(toy(128, 1), 16, Augment::none(), false, 0).unwrap(),
        class_loader(toy(64, 2), 64, Augment::none(), false, 0).unwrap(),
    )
}

fn train(
    arch: &str,
    teacher: Option<&Teacher>,
    make: impl FnOnce(&nn::Path<'_>, &dyn models::Model) -> Box<dyn Distiller>,
) -> (nn::VarStore, Box<dyn models::Model>, TrainReport) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let student = kd_classify::models::build(arch, &(vs.root() / STUDENT), SPEC).unwrap();
    let mut d = make(&(vs.root() / AUX), student.as_ref());
    let (tr, te) = loaders();
    let cfg = recipe(4);
    let report = Trainer {
        cfg: &cfg,
        seed: 0,
        device: Device::Cpu,
        vs: &vs,
        student: student.as_ref(),
        teacher: teacher.map(|t| t.model()),
        teacher_cache: None,
        distiller: d.as_mut(),
        train: &tr,
        test: &te,
        checkpoint: None,
        label: arch.into(),
        evaluator: &kd_classify::Top1,
    }
    .fit(false)
    .unwrap();
    (vs, student, report)
}

#[test]
fn unikd_students_learn_the_task_in_both_modes() {
    let (tvs, tmodel, treport) = train("resnet8", None, |_, _| Box::new(NoKd));
    assert!(
        treport.final_metric > 60.0,
        "teacher reached only {:.1}%",
        treport.final_metric
    );
    let teacher = Teacher::from_parts(tvs, tmodel);
    for mode in [TargetMode::TeacherMoments, TargetMode::ClassSpaceHeads] {
        let cfg = UnikdConfig {
            mode,
            warmup_epochs: 1.0,
            prefit: PrefitConfig {
                epochs: 2,
                batch_size: 32,
                ..PrefitConfig::default()
            },
            ..UnikdConfig::default()
        };
        let (_vs, _s, report) = train("resnet8", Some(&teacher), |aux, s| {
            Box::new(Unikd::new(cfg, aux, s, teacher.model()).unwrap())
        });
        let first = &report.history[0];
        let last = report.history.last().unwrap();
        assert!(
            report.final_metric > 60.0,
            "{mode:?}: {:.1}%",
            report.final_metric
        );
        assert!(last.terms["ce"] < first.terms["ce"], "{mode:?}: CE did not fall");
        assert!(last.terms.keys().any(|k| k.starts_with("kl_")));
        let prefit = &report.distiller["prefit"];
        match mode {
            TargetMode::ClassSpaceHeads => {
                assert_eq!(prefit["steps"], 8, "{prefit}");
                let acc = prefit["stage_train_acc"].as_array().unwrap();
                assert_eq!(acc.len(), 3);
                // The deepest teacher stage reads the classes off the trained teacher.
                assert!(acc[2].as_f64().unwrap() > 50.0, "{prefit}");
            }
            TargetMode::TeacherMoments => assert!(prefit.is_null()),
        }
    }
}
