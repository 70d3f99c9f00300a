//! A tiny learnable image set and a one-call trainer for the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use kd_classify::data::{class_loader, Augment, Dataset, InMemoryDataset, Normalize};
use kd_core::distill::Distiller;
use kd_core::models::{Model, ModelSpec};
use kd_core::train::{TrainConfig, TrainReport, Trainer, STUDENT};
use rand::{Rng, SeedableRng};
use tch::{nn, Device};

/// Samples in the toy set.
pub const N: usize = 96;
/// Classes of the toy set.
pub const K: usize = 3;
/// Grey 16×16 images, 3 classes.
pub const SPEC: ModelSpec = ModelSpec {
    in_channels: 1,
    num_classes: K as i64,
};

/// Grey 16×16 images: class `c` has a bright band at rows `5c..5c + 5`, plus noise, so a
/// LeNet learns it in a few epochs but not at once.
pub fn toy_set(n: usize, seed: u64) -> Arc<dyn Dataset> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let c = i % K;
        for r in 0..16 {
            for _ in 0..16 {
                let base: f64 = if r / 5 == c { 170.0 } else { 60.0 };
                let v = base + rng.gen_range(-80.0..80.0);
                pixels.push(v.clamp(0.0, 255.0) as u8);
            }
        }
        labels.push(c as i64);
    }
    Arc::new(InMemoryDataset::from_parts("toy", [1, 16, 16], pixels, labels, K).unwrap())
}

/// SGD recipe of the tests.
pub fn recipe(epochs: usize) -> TrainConfig {
    TrainConfig {
        grad_clip: Some(5.0),
        ..TrainConfig::sgd_cosine(epochs, 16, 0.02)
    }
}

/// Trains `arch` (built from `seed`) on `train` with `distiller` for `epochs` epochs with
/// [`recipe`]; the test set is `train` itself.
pub fn fit(
    arch: &str,
    distiller: &mut dyn Distiller,
    teacher: Option<&dyn Model>,
    train: &Arc<dyn Dataset>,
    epochs: usize,
    seed: u64,
) -> (nn::VarStore, Box<dyn Model>, TrainReport) {
    fit_with(
        arch,
        distiller,
        teacher,
        train,
        &recipe(epochs),
        seed,
        None,
        false,
    )
}

static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by whatever draws from libtorch's generator (model initialisation, training).
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    INIT.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`fit`] with an explicit recipe and an optional checkpoint to write (and resume from).
#[allow(clippy::too_many_arguments)]
pub fn fit_with(
    arch: &str,
    distiller: &mut dyn Distiller,
    teacher: Option<&dyn Model>,
    train: &Arc<dyn Dataset>,
    cfg: &TrainConfig,
    seed: u64,
    checkpoint: Option<PathBuf>,
    resume: bool,
) -> (nn::VarStore, Box<dyn Model>, TrainReport) {
    // libtorch's generator is process-wide, the trainer re-seeds it every epoch, and tests run
    // in parallel threads: building and training under one lock makes a run depend on `seed`
    // alone.
    let _guard = rng_lock();
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = kd_classify::models::build(arch, &(vs.root() / STUDENT), SPEC).unwrap();
    let aug = Augment {
        normalize: Some(Normalize::new(vec![0.3], vec![0.25]).unwrap()),
        ..Augment::default()
    };
    let loader = class_loader(train.clone(), 16, aug.clone(), false, seed).unwrap();
    let test = class_loader(train.clone(), 64, aug, false, seed).unwrap();
    let report = Trainer {
        cfg,
        seed,
        device: Device::Cpu,
        vs: &vs,
        student: model.as_ref(),
        teacher,
        teacher_cache: None,
        distiller,
        train: &loader,
        test: &test,
        checkpoint,
        label: "test".into(),
        evaluator: &kd_classify::Top1,
    }
    .fit(resume)
    .unwrap();
    (vs, model, report)
}

/// Every variable of `vs`, sorted by name.
pub fn snapshot(vs: &nn::VarStore) -> Vec<(String, tch::Tensor)> {
    let mut v: Vec<_> = vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
