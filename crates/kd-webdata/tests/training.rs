//! KD³ end to end on a toy web setting: a teacher trained on labelled "original" images, a web
//! pool of unlabelled shifted images plus junk, and a student evaluated on original test images.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use kd_classify::data::{class_loader, Augment, Dataset, InMemoryDataset, Normalize};
use kd_classify::models::build;
use kd_classify::NoKd;
use kd_core::distill::{Distiller, Teacher};
use kd_core::models::{Model, ModelSpec};
use kd_core::train::{export_student, LrSchedule, Schedule, TrainConfig, TrainReport, Trainer, AUX, STUDENT};

use kd_core::train::Evaluator;
use kd_webdata::{Kd3, Kd3Config, Kd3Student, HEAD_FILE};
use rand::{Rng, SeedableRng};
use tch::{nn, Device, Tensor};

const K: usize = 3;
const SIDE: usize = 12;
const SPEC: ModelSpec = ModelSpec {
    in_channels: 1,
    num_classes: K as i64,
};
/// Web pool: this many shifted in-distribution images first, then junk.
const WEB_IN: usize = 72;
const WEB_JUNK: usize = 36;

static RNG: Mutex<()> = Mutex::new(());

/// libtorch's generator is process-wide: building and training hold this.
fn rng_lock() -> MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Class `c` is a bright horizontal band at rows `4c..4c + 4`. `contrast` scales the band's
/// excess brightness (the covariate shift of the web images); `label` is stored as given.
fn band_image(rng: &mut rand_chacha::ChaCha8Rng, c: usize, base: f64, contrast: f64) -> Vec<u8> {
    let mut px = Vec::with_capacity(SIDE * SIDE);
    for r in 0..SIDE {
        for _ in 0..SIDE {
            let v = if r / 4 == c { base + contrast } else { base } + rng.gen_range(-50.0..50.0);
            px.push(v.clamp(0.0, 255.0) as u8);
        }
    }
    px
}

fn original(n: usize, seed: u64) -> Arc<dyn Dataset> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut px, mut y) = (Vec::new(), Vec::new());
    for i in 0..n {
        px.extend(band_image(&mut rng, i % K, 60.0, 120.0));
        y.push((i % K) as i64);
    }
    Arc::new(InMemoryDataset::from_parts("toy", [1, SIDE, SIDE], px, y, K).unwrap())
}

/// Unlabelled: darker, lower-contrast band images, then junk (vertical stripes and noise).
fn web_pool(seed: u64) -> Arc<dyn Dataset> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut px = Vec::new();
    for i in 0..WEB_IN {
        let base = rng.gen_range(30.0..90.0);
        let contrast = rng.gen_range(70.0..130.0);
        px.extend(band_image(&mut rng, i % K, base, contrast));
    }
    for j in 0..WEB_JUNK {
        for _ in 0..SIDE {
            for col in 0..SIDE {
                let v = if j % 2 == 0 {
                    if (col / 3) % 2 == 0 {
                        200.0
                    } else {
                        40.0
                    }
                } else {
                    rng.gen_range(0.0..255.0)
                };
                px.push(v as u8);
            }
        }
    }
    let y = vec![-1i64; WEB_IN + WEB_JUNK];
    Arc::new(InMemoryDataset::from_parts("web", [1, SIDE, SIDE], px, y, K).unwrap())
}

fn augment() -> Augment {
    Augment {
        hflip: true,
        normalize: Some(Normalize::new(vec![0.35], vec![0.25]).unwrap()),
        ..Augment::default()
    }
}

fn recipe(epochs: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        grad_clip: Some(5.0),
        ..TrainConfig::sgd_cosine(epochs, 16, lr)
    }
}

/// The teacher (resnet14, trained on the labelled original set), trained once per process.
/// Building a model draws from libtorch's generator, so the caller holds [`rng_lock`].
fn teacher(_lock: &MutexGuard<'static, ()>) -> Teacher {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build("resnet14", &(vs.root() / STUDENT), SPEC).unwrap();
        let train = original(96, 11);
        let loader = class_loader(train.clone(), 16, augment(), false, 1).unwrap();
        let test = class_loader(original(60, 12), 64, augment(), false, 1).unwrap();
        let report = Trainer {
            cfg: &recipe(6, 0.05),
            seed: 1,
            device: Device::Cpu,
            vs: &vs,
            student: model.as_ref(),
            teacher: None,
            teacher_cache: None,
            distiller: &mut NoKd,
            train: &loader,
            test: &test,
            checkpoint: None,
            label: "teacher".into(),
            evaluator: &kd_classify::Top1,
        }
        .fit(false)
        .unwrap();
        assert!(
            report.final_metric > 90.0,
            "the toy teacher should learn: {}",
            report.final_metric
        );
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kd3_teacher_{}.safetensors", std::process::id()));
        export_student(&vs, &path).unwrap();
        path
    });
    kd_classify::models::load_teacher("resnet14", SPEC, path, Device::Cpu).unwrap()
}

struct Run {
    vs: nn::VarStore,
    student: Box<dyn Model>,
    kd3: Kd3,
    report: TrainReport,
    start_acc: f64,
}

fn distil(cfg: Kd3Config, train_cfg: &TrainConfig, seed: u64, ckpt: Option<PathBuf>, resume: bool) -> Run {
    let g = rng_lock();
    let teacher = teacher(&g);
    let web = web_pool(21);
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let student = build("resnet8", &(vs.root() / STUDENT), SPEC).unwrap();
    let mut kd3 = Kd3::new(
        cfg,
        &(vs.root() / AUX),
        student.as_ref(),
        teacher.model(),
        web.len(),
    )
    .unwrap()
    .with_seed(seed);
    let loader = class_loader(web, 16, augment(), false, seed).unwrap();
    let test = class_loader(original(60, 12), 64, augment(), false, seed).unwrap();
    let start_acc = kd_classify::Top1
        .evaluate(student.as_ref(), &kd3, &test, Device::Cpu)
        .unwrap();
    let report = Trainer {
        cfg: train_cfg,
        seed,
        device: Device::Cpu,
        vs: &vs,
        student: student.as_ref(),
        teacher: Some(teacher.model()),
        teacher_cache: None,
        distiller: &mut kd3,
        train: &loader,
        test: &test,
        checkpoint: ckpt,
        label: "kd3".into(),
        evaluator: &kd_classify::Top1,
    }
    .fit(resume)
    .unwrap();
    Run {
        vs,
        student,
        kd3,
        report,
        start_acc,
    }
}

fn kept_fractions(report: &serde_json::Value) -> Vec<(f64, f64)> {
    report["kept_per_epoch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let idx: Vec<u64> = k
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let inside = idx.iter().filter(|&&i| (i as usize) < WEB_IN).count();
            (
                inside as f64 / WEB_IN as f64,
                (idx.len() - inside) as f64 / WEB_JUNK as f64,
            )
        })
        .collect()
}

#[test]
fn kd3_teaches_the_student_from_the_web_pool_and_exports_it() {
    let run = distil(Kd3Config::default(), &recipe(16, 0.05), 5, None, false);
    let final_metric = run.report.final_metric;
    let fractions = kept_fractions(&run.report.distiller);
    eprintln!(
        "kd3 toy: start {:.1}% → final {final_metric:.1}%; kept (in-dist, junk) per epoch {fractions:?}",
        run.start_acc
    );
    assert!(
        final_metric > run.start_acc + 20.0 && final_metric > 70.0,
        "{} → {final_metric}",
        run.start_acc
    );
    assert_eq!(fractions.len(), 16);
    // Once the student has a say, selection keeps clearly less junk than in-distribution images.
    for &(inside, junk) in &fractions[8..] {
        assert!(junk < inside, "{fractions:?}");
    }
    let early_junk = fractions[0].1;
    let late_junk = fractions[15].1;
    assert!(late_junk < early_junk, "{fractions:?}");
    let r = &run.report.distiller;
    assert_eq!(r["kept_fraction_per_epoch"].as_array().unwrap().len(), 16);
    // Every epoch's kept list is sorted and within the pool.
    for k in r["kept_per_epoch"].as_array().unwrap() {
        let idx: Vec<u64> = k
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert!(idx.windows(2).all(|w| w[0] < w[1]) && idx.iter().all(|&i| (i as usize) < WEB_IN + WEB_JUNK));
    }
    let g = rng_lock();
    // The shared head is still the teacher's, bit for bit.
    let (w, b) = teacher(&g).model().linear_head().unwrap();
    assert!(
        run.kd3.shared_head().weight().equal(&w) && run.kd3.shared_head().bias().unwrap().equal(&b.unwrap())
    );

    // Export: backbone (trainer) + projector and head (artifact) give back the same logits.
    let dir = tempfile::tempdir().unwrap();
    let backbone = dir.path().join("student.safetensors");
    export_student(&run.vs, &backbone).unwrap();
    run.kd3.save_artifacts(dir.path()).unwrap();
    assert!(dir.path().join(HEAD_FILE).exists());
    let frozen = kd_classify::models::load_teacher("resnet8", SPEC, &backbone, Device::Cpu).unwrap();
    let exported = Kd3Student::load(frozen, &dir.path().join(HEAD_FILE), Device::Cpu).unwrap();
    let x = Tensor::randn([6, 1, SIDE as i64, SIDE as i64], (tch::Kind::Float, Device::Cpu));
    let (want, got) = tch::no_grad(|| {
        let out = run.student.forward_t(&x, false);
        (
            run.kd3.student_logits(run.student.as_ref(), &out).unwrap(),
            exported.forward_t(&x, false).logits,
        )
    });
    assert!(
        want.equal(&got),
        "exported logits differ by {}",
        (want - got).abs().max()
    );
    assert_eq!(exported.num_classes(), K as i64);
}

#[test]
fn resumed_run_matches_an_uninterrupted_one() {
    let cfg = Kd3Config {
        teacher_share: kd_webdata::TeacherShare {
            reference_epochs: None,
            ramp_epochs: 4.0,
            cutoff_epoch: 3.0,
            ..Default::default()
        },
        ..Kd3Config::default()
    };
    let constant = |epochs| TrainConfig {
        lr: LrSchedule {
            schedule: Schedule::Constant,
            ..recipe(epochs, 0.02).lr
        },
        ..recipe(epochs, 0.02)
    };
    let full = distil(cfg.clone(), &constant(3), 9, None, false);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.safetensors");
    drop(distil(cfg.clone(), &constant(2), 9, Some(ckpt.clone()), false));
    let resumed = distil(cfg, &constant(3), 9, Some(ckpt), true);
    assert_eq!(full.report.distiller, resumed.report.distiller);
    let (a, b) = (full.vs.variables(), resumed.vs.variables());
    assert_eq!(a.len(), b.len());
    for (name, t) in a {
        assert!(t.equal(&b[&name]), "{name} differs after resume");
    }
}
