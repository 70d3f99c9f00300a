//! End-to-end checks of the trainer on a tiny synthetic task: training improves, a resumed run
//! equals an uninterrupted one, a NaN stops the run and keeps the last good checkpoint, the
//! teacher stays frozen, and auxiliary modules are not exported.

use std::sync::Arc;

use kd_classify::data::{class_loader, Augment, ClassLoader, Dataset, InMemoryDataset};
use kd_classify::models::build;
use kd_classify::Top1;
use kd_classify::{FitNets, FitNetsConfig, HintonKd, KdConfig, NoKd};
use kd_core::distill::{Distiller, EpochCtx, EpochPlan, LossTerms, StepCtx, Teacher, TeacherCache};
use kd_core::io::checkpoint;
use kd_core::models::{Model, ModelSpec};
use kd_core::train::Evaluator;
use kd_core::train::{export_student, OptimizerConfig, TrainConfig, TrainReport, Trainer, AUX, STUDENT};
use kd_core::{KdError, Result};
use tch::{nn, Device, Tensor};

const SPEC: ModelSpec = ModelSpec {
    in_channels: 1,
    num_classes: 4,
};

/// 4 classes of 8×8 grey images: a bright quadrant per class plus seeded noise.
fn toy(n: usize, seed: u64) -> Arc<dyn Dataset> {
    use rand::Rng;
    let mut rng = kd_core::rng::derive(seed, 1, 0);
    let mut px = Vec::with_capacity(n * 64);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % 4;
        let (qy, qx) = (c / 2, c % 2);
        for y in 0..8 {
            for x in 0..8 {
                let on = y / 4 == qy && x / 4 == qx;
                let base = if on { 150.0 } else { 60.0 };
                let v: f64 = base + rng.gen_range(-60.0..60.0);
                px.push(v.clamp(0.0, 255.0) as u8);
            }
        }
        labels.push(c as i64);
    }
    Arc::new(InMemoryDataset::from_parts("toy", [1, 8, 8], px, labels, 4).unwrap())
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerConfig::Sgd {
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
        },
        ..TrainConfig::sgd_cosine(epochs, 16, 0.05)
    }
}

fn loaders() -> (ClassLoader, ClassLoader) {
    let aug = Augment {
        pad_crop: Some(1),
        hflip: false,
        normalize: None,
    };
    (
        class_loader(toy(96, 1), 16, aug.clone(), false, 7).unwrap(),
        class_loader(toy(48, 2), 32, Augment::none(), false, 7).unwrap(),
    )
}

struct Run {
    vs: nn::VarStore,
    model: Box<dyn Model>,
}

/// libtorch's generator is process-wide and tests run in parallel threads: seeding and
/// initialising must happen under one lock for the initial weights to depend on `seed` alone.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`INIT`]: every test that builds a model (randomly initialised, even if weights are
/// loaded next) or trains takes it, or it could draw from or re-seed the generator between
/// another test's seeding and initialisation.
fn init_lock() -> std::sync::MutexGuard<'static, ()> {
    INIT.lock().unwrap_or_else(|e| e.into_inner())
}

fn student(arch: &str, seed: u64) -> Run {
    let _guard = init_lock();
    kd_core::rng::seed_torch(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = build(arch, &(vs.root() / STUDENT), SPEC).unwrap();
    Run { vs, model }
}

fn fit(
    run: &Run,
    d: &mut dyn Distiller,
    teacher: Option<&dyn Model>,
    c: &TrainConfig,
    ckpt: Option<std::path::PathBuf>,
    resume: bool,
) -> Result<TrainReport> {
    let (train, test) = loaders();
    // The trainer re-seeds libtorch's process-wide generator every epoch.
    let _guard = init_lock();
    Trainer {
        cfg: c,
        seed: 3,
        device: Device::Cpu,
        vs: &run.vs,
        student: run.model.as_ref(),
        teacher,
        teacher_cache: None,
        distiller: d,
        train: &train,
        test: &test,
        checkpoint: ckpt,
        label: "test".into(),
        evaluator: &Top1,
    }
    .fit(resume)
}

fn weights(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    kd_core::distill::sorted_vars(vs)
}

#[test]
fn tiny_training_run_improves() {
    let run = student("resnet8", 0);
    let (_, test) = loaders();
    let before = Top1
        .evaluate(run.model.as_ref(), &NoKd, &test, Device::Cpu)
        .unwrap();
    let report = fit(&run, &mut NoKd, None, &cfg(4), None, false).unwrap();
    let first = report.history[0].loss;
    let last = report.history.last().unwrap().loss;
    assert!(last < first, "training loss did not fall: {first} -> {last}");
    assert!(
        report.final_metric > before + 20.0 && report.final_metric > 60.0,
        "accuracy {before} -> {}",
        report.final_metric
    );
}

/// Fails once, at the start of epoch `at`, like a killed process.
struct Interrupt<D> {
    inner: D,
    at: usize,
}

impl<D: Distiller> Distiller for Interrupt<D> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn needs_teacher(&self) -> bool {
        self.inner.needs_teacher()
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        self.inner.loss(ctx)
    }
    fn on_epoch_start(&mut self, ctx: &EpochCtx<'_>) -> Result<EpochPlan> {
        if ctx.progress.epoch == self.at {
            return Err(KdError::invalid("interrupted"));
        }
        self.inner.on_epoch_start(ctx)
    }
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let straight = student("resnet8", 11);
    fit(
        &straight,
        &mut NoKd,
        None,
        &cfg(3),
        Some(dir.path().join("a.safetensors")),
        false,
    )
    .unwrap();

    let ckpt = dir.path().join("b.safetensors");
    let first = student("resnet8", 11);
    let err = fit(
        &first,
        &mut Interrupt { inner: NoKd, at: 2 },
        None,
        &cfg(3),
        Some(ckpt.clone()),
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("interrupted"));
    // A fresh process: different initial weights, everything must come from the checkpoint.
    let second = student("resnet8", 999);
    let report = fit(&second, &mut NoKd, None, &cfg(3), Some(ckpt), true).unwrap();
    assert_eq!(report.history.len(), 3);
    for ((na, a), (nb, b)) in weights(&straight.vs).iter().zip(weights(&second.vs).iter()) {
        assert_eq!(na, nb);
        assert!(a.equal(b), "{na} differs after resume");
    }
}

/// Returns a NaN loss from step `at` on.
struct Poison {
    at: usize,
}

impl Distiller for Poison {
    fn name(&self) -> String {
        "poison".into()
    }
    fn needs_teacher(&self) -> bool {
        false
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        let ce = kd_core::losses::cross_entropy(&ctx.s_out.logits, ctx.batch.target.labels()?)?;
        let ce = if ctx.progress.global_step >= self.at {
            ce * f64::NAN
        } else {
            ce
        };
        Ok(LossTerms::new().with("ce", ce))
    }
}

#[test]
fn nan_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("c.safetensors");
    let run = student("resnet8", 5);
    // 6 steps per epoch: the NaN arrives in the middle of the second epoch.
    let err = fit(
        &run,
        &mut Poison { at: 8 },
        None,
        &cfg(3),
        Some(ckpt.clone()),
        false,
    )
    .unwrap_err();
    match &err {
        KdError::NonFinite {
            epoch, step, what, ..
        } => {
            assert_eq!((*epoch, *step), (1, 8));
            assert!(what.contains("ce"), "{what}");
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    assert!(err.to_string().contains("c.safetensors"));
    let saved = checkpoint::load(&ckpt).unwrap();
    assert_eq!(saved.meta["epochs_done"], 1);
    for (name, t) in &saved.tensors {
        if name.starts_with("vars/") && t.kind() == tch::Kind::Float {
            assert!(t.isfinite().all().int64_value(&[]) == 1, "{name} is not finite");
        }
    }
}

fn trained_teacher() -> Teacher {
    let run = student("resnet14", 21);
    fit(&run, &mut NoKd, None, &cfg(2), None, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    export_student(&run.vs, &path).unwrap();
    let _guard = init_lock();
    kd_classify::models::load_teacher("resnet14", SPEC, &path, Device::Cpu).unwrap()
}

#[test]
fn teacher_stays_frozen_and_aux_modules_are_not_exported() {
    let teacher = trained_teacher();
    let before: Vec<Tensor> = weights(teacher.var_store())
        .into_iter()
        .map(|(_, t)| t.copy())
        .collect();
    let run = student("resnet8", 4);
    let fcfg = FitNetsConfig {
        beta: 10.0,
        ce_weight: 1.0,
        student_tap: "stage2".into(),
        teacher_tap: "stage2".into(),
        force_adapter: true,
        relu: true,
    };
    let mut fitnets =
        FitNets::new(fcfg, &(run.vs.root() / AUX), run.model.as_ref(), teacher.model()).unwrap();
    fit(&run, &mut fitnets, Some(teacher.model()), &cfg(1), None, false).unwrap();
    for ((name, now), was) in weights(teacher.var_store()).iter().zip(&before) {
        assert!(now.equal(was), "teacher variable {name} changed");
        assert!(
            !now.grad().defined(),
            "teacher variable {name} received a gradient"
        );
    }
    let names: Vec<String> = weights(&run.vs).into_iter().map(|(n, _)| n).collect();
    assert!(
        names.iter().any(|n| n.starts_with("aux.")),
        "the regressor should live under aux"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    export_student(&run.vs, &path).unwrap();
    let exported = checkpoint::load(&path).unwrap();
    assert!(exported
        .tensors
        .iter()
        .all(|(n, _)| !n.starts_with("aux") && !n.starts_with("student.")));
    // The export loads back as a plain model of the zoo.
    let _guard = init_lock();
    kd_classify::models::load_teacher("resnet8", SPEC, &path, Device::Cpu).unwrap();
}

#[test]
fn kd_with_mismatched_teacher_is_a_shape_error() {
    let guard = init_lock();
    kd_core::rng::seed_torch(1);
    let tvs = nn::VarStore::new(Device::Cpu);
    let wrong = build(
        "resnet8",
        &tvs.root(),
        ModelSpec {
            in_channels: 1,
            num_classes: 7,
        },
    )
    .unwrap();
    let teacher = Teacher::from_parts(tvs, wrong);
    drop(guard);
    let run = student("resnet8", 2);
    let mut kd = HintonKd::new(KdConfig {
        tau: 4.0,
        ce_weight: 0.1,
        kd_weight: 0.9,
    });
    let err = fit(&run, &mut kd, Some(teacher.model()), &cfg(1), None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[16, 4]") && err.contains("[16, 7]"), "{err}");
}

#[test]
fn corrupt_checkpoint_on_resume_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("broken.safetensors");
    std::fs::write(&ckpt, b"this is not a checkpoint").unwrap();
    let run = student("resnet8", 2);
    let err = fit(&run, &mut NoKd, None, &cfg(1), Some(ckpt), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken.safetensors"), "{err}");
}

#[test]
fn teacher_load_reports_missing_and_misshaped_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let run = student("resnet8", 2);
    export_student(&run.vs, &path).unwrap();
    let _guard = init_lock();
    let err = kd_classify::models::load_teacher("resnet14", SPEC, &path, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("w.safetensors") && err.contains("layer1.1"), "{err}");
    let err = kd_classify::models::load_teacher(
        "resnet8",
        ModelSpec {
            in_channels: 1,
            num_classes: 9,
        },
        &path,
        Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("fc.bias") && err.contains("[4]") && err.contains("[9]"),
        "{err}"
    );
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn teacher_cache_stands_in_for_the_teacher() {
    let teacher = trained_teacher();
    let plain = class_loader(toy(96, 1), 16, Augment::none(), false, 7).unwrap();
    let test = class_loader(toy(48, 2), 32, Augment::none(), false, 7).unwrap();
    let (augmenting, _) = loaders();
    let build =
        |l: &ClassLoader, budget: usize| TeacherCache::build(teacher.model(), l, Device::Cpu, 32, budget);
    // A random crop changes the teacher's input every epoch, and a budget is a budget.
    assert!(build(&augmenting, usize::MAX).unwrap().is_none());
    assert!(build(&plain, 1000).unwrap().is_none());
    let cache = build(&plain, usize::MAX).unwrap().unwrap();
    assert_eq!(cache.len(), 96);
    assert!(cache.serves(&plain) && !cache.serves(&augmenting));
    // Any batch, in any order, gets what the live teacher computes.
    let b = plain.batch_of(&[5, 0, 95, 17], 3, true).unwrap();
    let (live, cached) = (teacher.forward(&b.x), cache.get(&b.index).unwrap());
    assert!(max_diff(&live.logits, &cached.logits) < 1e-5);
    assert_eq!(live.features.len(), cached.features.len());
    for ((n, a), (m, c)) in live.features.iter().zip(&cached.features) {
        assert_eq!(n, m);
        assert!(max_diff(a, c) < 1e-5, "{n}");
    }
    assert!(max_diff(live.pooled.as_ref().unwrap(), cached.pooled.as_ref().unwrap()) < 1e-5);
    let e = cache
        .get(&Tensor::from_slice(&[3i64, 96]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("0..96") && e.contains("96"), "{e}");
    // Distilling with the cache trains the same student as with the live teacher.
    let trained: Vec<Vec<(String, Tensor)>> = [None, Some(&cache)]
        .into_iter()
        .map(|c| {
            let run = student("resnet8", 4);
            let _guard = init_lock();
            let mut kd = HintonKd::new(KdConfig {
                tau: 4.0,
                ce_weight: 0.1,
                kd_weight: 0.9,
            });
            Trainer {
                cfg: &cfg(1),
                seed: 3,
                device: Device::Cpu,
                vs: &run.vs,
                student: run.model.as_ref(),
                teacher: Some(teacher.model()),
                teacher_cache: c,
                distiller: &mut kd,
                train: &plain,
                test: &test,
                checkpoint: None,
                label: "cache".into(),
                evaluator: &Top1,
            }
            .fit(false)
            .unwrap();
            weights(&run.vs)
        })
        .collect();
    for ((n, a), (_, b)) in trained[0].iter().zip(&trained[1]) {
        assert!(max_diff(a, b) < 1e-4, "{n} differs by {}", max_diff(a, b));
    }
}

/// Records, at each epoch start, the two batches the hook offers for the first samples.
struct ViewRecorder {
    seen: Vec<(usize, Tensor, Tensor)>,
}

impl Distiller for ViewRecorder {
    fn name(&self) -> String {
        "views".into()
    }
    fn needs_teacher(&self) -> bool {
        false
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        NoKd.loss(ctx)
    }
    fn on_epoch_start(&mut self, ctx: &EpochCtx<'_>) -> Result<EpochPlan> {
        let idx: Vec<usize> = (0..16).collect();
        let aug = (ctx.aug_batch)(&idx)?;
        let clean = (ctx.eval_batch)(&idx)?;
        self.seen.push((ctx.progress.epoch, aug.x, clean.x));
        Ok(EpochPlan::All)
    }
}

#[test]
fn epoch_hook_offers_the_epochs_augmented_views() {
    let run = student("resnet8", 12);
    let mut rec = ViewRecorder { seen: Vec::new() };
    fit(&run, &mut rec, None, &cfg(2), None, false).unwrap();
    let (train, _) = loaders();
    let idx: Vec<usize> = (0..16).collect();
    assert_eq!(rec.seen.len(), 2);
    for (epoch, aug, clean) in &rec.seen {
        // The same draw as the epoch's own training batches, and not the clean images.
        assert!(aug.equal(&train.batch_of(&idx, *epoch, true).unwrap().x));
        assert!(clean.equal(&train.batch_of(&idx, *epoch, false).unwrap().x));
        assert!(!aug.equal(clean), "pad-crop should move some of 16 images");
    }
    assert!(!rec.seen[0].1.equal(&rec.seen[1].1), "each epoch draws new views");
}

/// Records every training sample a run visits.
struct Visits<D> {
    inner: D,
    seen: std::collections::BTreeSet<usize>,
}

impl<D: Distiller> Distiller for Visits<D> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn needs_teacher(&self) -> bool {
        self.inner.needs_teacher()
    }
    fn loss(&mut self, ctx: &StepCtx<'_>) -> Result<LossTerms> {
        self.seen.extend(ctx.batch.indices.iter().copied());
        self.inner.loss(ctx)
    }
}

#[test]
fn early_stopping_keeps_the_best_held_out_epoch_and_a_resumed_run_stops_too() {
    use kd_core::train::{EarlyStop, BEST};
    let dir = tempfile::tempdir().unwrap();
    let stop = EarlyStop {
        held_out: 0.25,
        patience: 2,
        min_delta: 0.0,
        min_share: 0.0,
    };
    let c = TrainConfig {
        early_stop: Some(stop.clone()),
        lr: kd_core::train::LrSchedule {
            schedule: kd_core::train::Schedule::Constant,
            ..cfg(1).lr
        },
        ..cfg(30)
    };
    let run = student("resnet8", 5);
    let mut visits = Visits {
        inner: NoKd,
        seen: Default::default(),
    };
    let a = dir.path().join("a/checkpoint.safetensors");
    std::fs::create_dir_all(a.parent().unwrap()).unwrap();
    let report = fit(&run, &mut visits, None, &c, Some(a.clone()), false).unwrap();
    let n = report.history.len();
    assert!(
        n < 30,
        "the held-out accuracy of the toy task saturates long before 30 epochs"
    );
    let held = stop.held_indices(96, 3);
    assert_eq!(held.len(), 24);
    assert!(
        visits.seen.iter().all(|i| held.binary_search(i).is_err()),
        "a held-out sample was trained on"
    );
    assert_eq!(visits.seen.len(), 72);
    assert!(report
        .history
        .iter()
        .all(|r| r.held_metric.is_some() && r.updates == 72 / 16 + 1));
    let (best, best_held) = stop.best(&report.history, 30).unwrap();
    assert_eq!(report.kept_epoch, Some(best + 1));
    assert_eq!(n, best + 1 + 2, "stops two evaluations after the best");
    assert!(report.history[best + 1..]
        .iter()
        .all(|r| r.held_metric.unwrap() <= best_held));
    assert_eq!(Some(report.final_metric), report.history[best].test_metric);
    // The store holds the kept epoch's weights, as saved beside the checkpoint.
    let kept = checkpoint::load(&a.with_file_name(BEST)).unwrap();
    assert_eq!(kept.meta["epoch"], best);
    for (name, t) in weights(&run.vs) {
        assert!(
            kept.tensors.iter().any(|(k, v)| *k == name && v.equal(&t)),
            "{name}"
        );
    }

    // Killed in its last epoch, then resumed in a fresh process: the same stop, the same kept
    // weights.
    let b = dir.path().join("b/checkpoint.safetensors");
    std::fs::create_dir_all(b.parent().unwrap()).unwrap();
    let first = student("resnet8", 5);
    let mut killed = Interrupt {
        inner: NoKd,
        at: n - 1,
    };
    assert!(fit(&first, &mut killed, None, &c, Some(b.clone()), false).is_err());
    let second = student("resnet8", 77);
    let resumed = fit(&second, &mut NoKd, None, &c, Some(b), true).unwrap();
    assert_eq!(resumed.history.len(), n);
    assert_eq!(resumed.kept_epoch, report.kept_epoch);
    assert_eq!(resumed.final_metric, report.final_metric);
    for ((na, x), (_, y)) in weights(&run.vs).iter().zip(weights(&second.vs).iter()) {
        assert!(x.equal(y), "{na} differs after resume");
    }
}
