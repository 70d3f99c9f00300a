//! The spec's §7 properties, the configuration, and the distiller's pieces on tiny models.

use std::sync::Mutex;

use kd_classify::models::build;
use kd_core::data::Batch;
use kd_core::distill::{Distiller, Progress, StepCtx, Teacher};
use kd_core::losses::nt_xent;
use kd_core::models::{Model, ModelSpec};
use kd_core::train::{AUX, STUDENT};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::config::{Kd3Config, SelectionMode, TeacherShare};
use crate::memorise::{disagreement_weights, weighted_feature_mse};
use crate::mix::{apply_draw, channel_stats, mix_distribution, sample_beta, MixDraw};
use crate::selection::{class_thresholds, combine, threshold_keep, top_ratio_keep};
use crate::Kd3;

/// libtorch's generator is process-wide: whatever initialises models holds this.
static RNG: Mutex<()> = Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

const SPEC: ModelSpec = ModelSpec {
    in_channels: 1,
    num_classes: 3,
};

struct Setup {
    vs: nn::VarStore,
    student: Box<dyn Model>,
    teacher: Teacher,
    kd3: Kd3,
}

fn setup(cfg: Kd3Config, seed: i64) -> Setup {
    let _g = rng_lock();
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let student = build("resnet8", &(vs.root() / STUDENT), SPEC).unwrap();
    let tvs = nn::VarStore::new(Device::Cpu);
    let t = build("resnet14", &tvs.root(), SPEC).unwrap();
    let teacher = Teacher::from_parts(tvs, t);
    let kd3 = Kd3::new(cfg, &(vs.root() / AUX), student.as_ref(), teacher.model(), 8)
        .unwrap()
        .with_seed(3);
    Setup {
        vs,
        student,
        teacher,
        kd3,
    }
}

fn batch(b: i64, seed: i64) -> Batch {
    let _g = rng_lock();
    tch::manual_seed(seed);
    let x = Tensor::randn([b, 1, 8, 8], (Kind::Float, Device::Cpu));
    let indices: Vec<usize> = (0..b as usize).collect();
    Batch {
        x,
        target: kd_core::data::Target::Labels(Tensor::full([b], -1, (Kind::Int64, Device::Cpu))),
        index: Tensor::arange(b, (Kind::Int64, Device::Cpu)),
        indices,
    }
}

fn progress(step: usize) -> Progress {
    Progress {
        epoch: 0,
        epochs: 1,
        global_step: step,
        steps_per_epoch: 10,
    }
}

/// `ln p` rows, so that `softmax` gives back `p`.
fn log_rows(rows: &[[f64; 3]]) -> Tensor {
    let flat: Vec<f64> = rows.iter().flatten().map(|p| p.ln()).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, 3])
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

// §7.1 Threshold.

#[test]
fn threshold_rule_on_hand_built_logits() {
    let z = log_rows(&[
        [0.96, 0.02, 0.02], // class 0, 0.96 > θ_0 = 0.95: kept
        [0.90, 0.05, 0.05], // class 0, 0.90 ≤ 0.95: dropped
        [0.50, 0.25, 0.25], // class 0: dropped
        [0.10, 0.60, 0.30], // class 1, θ_1 = 0.95·(1/3)/(5/3) = 0.19: kept
        [0.20, 0.30, 0.50], // class 2, θ_2 = 0.19: kept
    ]);
    assert_eq!(
        threshold_keep(&z, 0.95).unwrap(),
        [true, false, false, true, true]
    );
    let theta = class_thresholds(&[0, 0, 0, 1, 2], 3, 0.95);
    assert!((theta[0] - 0.95).abs() < 1e-12, "most frequent class: θ = p_cut");
    assert!((theta[1] - 0.19).abs() < 1e-12 && (theta[2] - 0.19).abs() < 1e-12);
    assert_eq!(class_thresholds(&[1, 1], 3, 0.95), [0.0, 0.95, 0.0]);
}

#[test]
fn threshold_rule_on_the_combined_prediction() {
    // a = 0.5: the mix of the two rows decides, not either network alone.
    let z_t = log_rows(&[[0.98, 0.01, 0.01], [0.2, 0.6, 0.2]]);
    let z_s = log_rows(&[[0.01, 0.98, 0.01], [0.2, 0.6, 0.2]]);
    let z_c = combine(&z_t, &z_s, 0.5).unwrap();
    let manual = (&z_t + &z_s) * 0.5;
    assert!(max_abs(&z_c, &manual) < 1e-12);
    // Row 0 mixes to a 0/1 tie at ≈ 0.495 each (class 0 by argmax), row 1 stays class 1 at 0.6.
    // Each class is predicted once, so both thresholds are p_cut and neither row is kept.
    assert_eq!(threshold_keep(&z_c, 0.95).unwrap(), [false, false]);
    // With p_cut = 0.5 only row 1 clears it.
    assert_eq!(threshold_keep(&z_c, 0.5).unwrap(), [false, true]);
}

#[test]
fn top_ratio_keeps_the_most_confident_half_of_each_chunk() {
    let conf = [0.9, 0.1, 0.8, 0.7, 0.2, 0.3];
    let order = [0, 1, 2, 3, 4, 5];
    assert_eq!(
        top_ratio_keep(&conf, &order, 3, 0.5),
        [true, false, true, true, false, true]
    );
    // ⌈0.5 · 1⌉ = 1: a chunk of one keeps its image.
    assert!(top_ratio_keep(&conf, &[4], 3, 0.5)[4]);
}

// §7.2 Schedule.

#[test]
fn teacher_share_follows_the_released_curve() {
    let s = TeacherShare::default();
    for (e, want) in [(1.0, 0.992), (60.0, 0.853), (119.0, 0.268)] {
        assert!((s.value(e) - want).abs() < 1e-3, "a({e}) = {}", s.value(e));
    }
    for e in [120.0, 121.0, 240.0] {
        assert_eq!(s.value(e), 0.0);
    }
    // On a 240-epoch run `at` is the curve itself (0-based epoch → 1-based e).
    assert_eq!(s.at(0, 240), s.value(1.0));
    assert_eq!(s.at(59, 240), s.value(60.0));
    // A 10-epoch run is rescaled: teacher first, student alone from the middle on.
    let short: Vec<f64> = (0..10).map(|e| s.at(e, 10)).collect();
    assert!(short[0] > 0.9, "{short:?}");
    assert!(short.windows(2).all(|w| w[1] <= w[0]), "{short:?}");
    assert!(short[4..].iter().all(|&a| a == 0.0), "{short:?}");
    // Absolute epochs when asked.
    let abs = TeacherShare {
        reference_epochs: None,
        ..TeacherShare::default()
    };
    assert_eq!(abs.at(9, 10), abs.value(10.0));
}

// §7.3 Limits.

#[test]
fn share_one_is_the_teacher_and_zero_the_student() {
    let z_t = log_rows(&[[0.9, 0.05, 0.05], [0.3, 0.3, 0.4]]);
    let z_s = log_rows(&[[0.1, 0.8, 0.1], [0.97, 0.02, 0.01]]);
    assert_eq!(combine(&z_t, &z_s, 1.0).unwrap(), z_t);
    assert_eq!(combine(&z_t, &z_s, 0.0).unwrap(), z_s);
    assert_eq!(
        threshold_keep(&combine(&z_t, &z_s, 1.0).unwrap(), 0.95).unwrap(),
        threshold_keep(&z_t, 0.95).unwrap()
    );
    let s = setup(
        Kd3Config {
            selection: SelectionMode::TeacherOnly,
            ..Kd3Config::default()
        },
        1,
    );
    assert!((0..240).all(|e| s.kd3.share_at(e, 240) == 1.0));
}

// §7.4 Weights.

#[test]
fn disagreement_weights_lie_in_half_to_one_without_gradient() {
    let _g = rng_lock();
    tch::manual_seed(4);
    let z_s = Tensor::randn([6, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let z_t = Tensor::randn([6, 5], (Kind::Float, Device::Cpu));
    let w = disagreement_weights(&z_s, &z_t).unwrap();
    assert!(!w.requires_grad());
    let v = Vec::<f32>::try_from(&w).unwrap();
    assert!(v.iter().all(|&x| (0.5..1.0).contains(&x) && x > 0.5), "{v:?}");
    let same = disagreement_weights(&z_t, &z_t).unwrap();
    assert!(Vec::<f32>::try_from(&same).unwrap().iter().all(|&x| x == 0.5));
    let huge = disagreement_weights(&(&z_t * 1e3), &z_t).unwrap();
    assert!(Vec::<f32>::try_from(&huge).unwrap().iter().all(|&x| x <= 1.0));
}

// §7.5 Weighted MSE.

#[test]
fn weighted_mse_is_zero_on_equal_maps_and_linear_in_the_weights() {
    let _g = rng_lock();
    tch::manual_seed(5);
    let p = Tensor::randn([4, 3, 2, 2], (Kind::Double, Device::Cpu));
    let f = Tensor::randn([4, 3, 2, 2], (Kind::Double, Device::Cpu));
    let w = Tensor::from_slice(&[0.5, 0.7, 0.9, 0.6]);
    assert_eq!(weighted_feature_mse(&p, &p, &w).unwrap().double_value(&[]), 0.0);
    let l = |w: &Tensor| weighted_feature_mse(&p, &f, w).unwrap().double_value(&[]);
    // Linear in each w_b: the loss is Σ_b w_b · L(e_b).
    let mut sum = 0.0;
    for b in 0..4 {
        let e = Tensor::zeros([4], (Kind::Double, Device::Cpu)).index_fill(0, &Tensor::from_slice(&[b]), 1.0);
        sum += w.double_value(&[b]) * l(&e);
    }
    assert!((l(&w) - sum).abs() < 1e-12);
    assert!((l(&(&w * 3.0)) - 3.0 * l(&w)).abs() < 1e-12);
    // With unit weights it is the plain element-mean MSE.
    let ones = Tensor::ones([4], (Kind::Double, Device::Cpu));
    let mse = (&p - &f).square().mean(Kind::Double).double_value(&[]);
    assert!((l(&ones) - mse).abs() < 1e-12);
}

// §7.6 Shared head.

#[test]
fn shared_head_stays_the_teachers_bit_for_bit_without_grad() {
    let s = setup(Kd3Config::default(), 6);
    let mut kd3 = s.kd3;
    let (w0, b0) = s.teacher.model().linear_head().unwrap();
    let mut opt = nn::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        wd: 5e-4,
        nesterov: false,
    }
    .build(&s.vs, 0.05)
    .unwrap();
    for step in 0..3 {
        let batch = batch(8, 60 + step);
        let s_out = s.student.forward_t(&batch.x, true);
        let t_out = s.teacher.forward(&batch.x);
        let ctx = StepCtx {
            batch: &batch,
            student: s.student.as_ref(),
            teacher: Some(s.teacher.model()),
            s_out: &s_out,
            t_out: Some(&t_out),
            progress: progress(step as usize),
        };
        let loss = kd3.loss(&ctx).unwrap().total().unwrap();
        opt.backward_step(&loss);
    }
    let head = kd3.shared_head();
    assert!(head.weight().equal(&w0) && head.bias().unwrap().equal(&b0.unwrap()));
    assert!(!head.weight().requires_grad() && !head.weight().grad().defined());
    // The student's logits are the teacher's own head applied to the projected map.
    let batch = batch(4, 70);
    let s_out = s.student.forward_t(&batch.x, false);
    let (p, _) = kd3.student_side(&s_out, false).unwrap();
    let via_teacher = s.teacher.model().classify(&p).unwrap();
    assert!(kd3
        .student_logits(s.student.as_ref(), &s_out)
        .unwrap()
        .equal(&via_teacher));
}

// §7.7 MixDistribution.

#[test]
fn mix_with_lambda_one_is_the_identity() {
    let x = batch(5, 7).x * 2.0 + 0.3;
    let lambda = Tensor::ones([5], (Kind::Double, Device::Cpu));
    let perm = Tensor::from_slice(&[4i64, 3, 2, 1, 0]);
    let y = mix_distribution(&x, &lambda, &perm, 1e-6).unwrap();
    assert_eq!(y.size(), x.size());
    assert!(max_abs(&y, &x) < 1e-5);
}

#[test]
fn mixed_images_carry_the_mixed_statistics() {
    let x = batch(4, 8).x * Tensor::from_slice(&[1.0f32, 2.0, 0.5, 3.0]).view([4, 1, 1, 1])
        + Tensor::from_slice(&[0.0f32, 1.0, -2.0, 0.5]).view([4, 1, 1, 1]);
    let draw = MixDraw {
        lambda: vec![0.2, 0.9, 0.5, 0.0],
        perm: vec![1, 2, 3, 0],
    };
    let y = apply_draw(&x, &draw, 1e-6).unwrap();
    assert_eq!(y.size(), x.size());
    let (mu, sig) = channel_stats(&x, 1e-6).unwrap();
    let (mu_y, sig_y) = channel_stats(&y, 0.0).unwrap();
    for b in 0..4 {
        let (l, j) = (draw.lambda[b], draw.perm[b]);
        let want_mu = l * mu.double_value(&[b as i64, 0, 0, 0]) + (1.0 - l) * mu.double_value(&[j, 0, 0, 0]);
        let want_sig =
            l * sig.double_value(&[b as i64, 0, 0, 0]) + (1.0 - l) * sig.double_value(&[j, 0, 0, 0]);
        assert!((mu_y.double_value(&[b as i64, 0, 0, 0]) - want_mu).abs() < 1e-4);
        assert!((sig_y.double_value(&[b as i64, 0, 0, 0]) - want_sig).abs() < 1e-4);
    }
}

#[test]
fn mix_draws_are_seeded() {
    let s = setup(Kd3Config::default(), 9);
    let (a, b) = (s.kd3.mix_draw(17, 32), s.kd3.mix_draw(17, 32));
    assert_eq!(a, b);
    assert_ne!(a, s.kd3.mix_draw(18, 32));
    let mut perm = a.perm.clone();
    perm.sort_unstable();
    assert_eq!(perm, (0..32).collect::<Vec<i64>>());
    assert!(a.lambda.iter().all(|l| (0.0..=1.0).contains(l)));
    // Beta(0.1, 0.1): mean ½, most mass near the ends.
    let mut rng = kd_core::rng::derive(1, 2, 3);
    let v: Vec<f64> = (0..4000).map(|_| sample_beta(&mut rng, 0.1, 0.1)).collect();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let ends = v.iter().filter(|&&x| !(0.1..=0.9).contains(&x)).count() as f64 / v.len() as f64;
    assert!((mean - 0.5).abs() < 0.03, "mean {mean}");
    assert!(ends > 0.75, "fraction near 0 or 1: {ends}");
    // p = 0 leaves the batch alone.
    let mut rng = kd_core::rng::derive(1, 2, 4);
    assert!(MixDraw::draw(&mut rng, 8, 0.1, 0.0)
        .lambda
        .iter()
        .all(|&l| l == 1.0));
}

// §7.8 NT-Xent (kd-core's, as KD³ calls it).

#[test]
fn nt_xent_properties() {
    let _g = rng_lock();
    tch::manual_seed(10);
    let b = 6;
    let z = Tensor::ones([b, 4], (Kind::Double, Device::Cpu));
    let l = nt_xent(&z, &z, 0.3).unwrap().double_value(&[]);
    assert!((l - ((2 * b - 1) as f64).ln()).abs() < 1e-12);
    let u = Tensor::randn([b, 16], (Kind::Double, Device::Cpu));
    let other = Tensor::randn([b, 16], (Kind::Double, Device::Cpu));
    let same = nt_xent(&u, &u, 0.3).unwrap().double_value(&[]);
    let unrelated = nt_xent(&u, &other, 0.3).unwrap().double_value(&[]);
    assert!(
        same >= 0.0 && unrelated >= 0.0 && same < unrelated,
        "{same} {unrelated}"
    );
}

// §7.9 No teacher gradient.

#[test]
fn teacher_backbone_gets_no_grad_but_its_embedding_head_does() {
    let s = setup(Kd3Config::default(), 11);
    let mut kd3 = s.kd3;
    let mut batch = batch(8, 12);
    // Labels are never read: a label tensor of the wrong shape changes nothing.
    batch.target = kd_core::data::Target::Labels(Tensor::zeros([0], (Kind::Int64, Device::Cpu)));
    let s_out = s.student.forward_t(&batch.x, true);
    let t_out = s.teacher.forward(&batch.x);
    let ctx = StepCtx {
        batch: &batch,
        student: s.student.as_ref(),
        teacher: Some(s.teacher.model()),
        s_out: &s_out,
        t_out: Some(&t_out),
        progress: progress(0),
    };
    let terms = kd3.loss(&ctx).unwrap();
    let names: Vec<&str> = terms.terms().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["fa", "ia"]);
    terms.total().unwrap().backward();
    for (name, t) in s.teacher.var_store().variables() {
        assert!(!t.grad().defined(), "teacher variable {name} got a gradient");
    }
    let (es, et) = kd3.embedding_heads().unwrap();
    for w in [&es.ws, &et.ws] {
        assert!(w.grad().defined() && w.grad().abs().sum(Kind::Double).double_value(&[]) > 0.0);
    }
    let proj = &kd3.projector().named_tensors()[0].1;
    assert!(proj.grad().defined());
}

#[test]
fn ablations_change_the_terms() {
    let cfg = Kd3Config {
        shared_head: false,
        mix_distribution: false,
        ..Kd3Config::default()
    };
    let s = setup(cfg, 13);
    let mut kd3 = s.kd3;
    assert!(kd3.embedding_heads().is_none());
    let batch = batch(4, 14);
    let s_out = s.student.forward_t(&batch.x, true);
    let t_out = s.teacher.forward(&batch.x);
    let ctx = StepCtx {
        batch: &batch,
        student: s.student.as_ref(),
        teacher: Some(s.teacher.model()),
        s_out: &s_out,
        t_out: Some(&t_out),
        progress: progress(0),
    };
    let terms = kd3.loss(&ctx).unwrap();
    let names: Vec<&str> = terms.terms().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["fa", "kd"]);
    // Without the shared head the student's own classifier scores.
    assert!(kd3
        .student_logits(s.student.as_ref(), &s_out)
        .unwrap()
        .equal(&s_out.logits));
}

// Configuration.

#[test]
fn config_defaults_round_trip_and_errors_name_the_key() {
    let d = Kd3Config::default();
    assert_eq!(d.selection, SelectionMode::Combined);
    assert_eq!(
        (d.p_cut, d.top_ratio, d.projector_factor, d.embed_dim),
        (0.95, 0.5, 2, 128)
    );
    assert_eq!(
        (d.contrast_tau, d.ia_weight, d.mix_alpha, d.kd_tau),
        (0.3, 0.001, 0.1, 4.0)
    );
    assert!(d.shared_head && d.mix_distribution);
    let s = &d.teacher_share;
    assert_eq!(
        (s.sharpness, s.ramp_epochs, s.cutoff_epoch, s.reference_epochs),
        (5.0, 160.0, 120.0, Some(240.0))
    );
    d.validate().unwrap();
    let text = toml::to_string(&d).unwrap();
    assert_eq!(toml::from_str::<Kd3Config>(&text).unwrap(), d);
    assert_eq!(toml::from_str::<Kd3Config>("").unwrap(), d);
    let parsed: Kd3Config = toml::from_str(
        "selection = \"teacher_only\"\nshared_head = false\n[teacher_share]\ncutoff_epoch = 60\n",
    )
    .unwrap();
    assert_eq!(parsed.selection, SelectionMode::TeacherOnly);
    assert_eq!(parsed.teacher_share.cutoff_epoch, 60.0);
    assert!(!parsed.shared_head);
    let err = toml::from_str::<Kd3Config>("p_cutt = 0.9")
        .unwrap_err()
        .to_string();
    assert!(err.contains("p_cutt"), "{err}");
    let err = toml::from_str::<Kd3Config>("selection = \"topk\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("topk"), "{err}");
    let cases: [(&str, Kd3Config); 6] = [
        (
            "p_cut",
            Kd3Config {
                p_cut: 1.5,
                ..d.clone()
            },
        ),
        (
            "top_ratio",
            Kd3Config {
                top_ratio: 0.0,
                ..d.clone()
            },
        ),
        (
            "contrast_tau",
            Kd3Config {
                contrast_tau: -1.0,
                ..d.clone()
            },
        ),
        (
            "projector_factor",
            Kd3Config {
                projector_factor: 0,
                ..d.clone()
            },
        ),
        (
            "selection_batch",
            Kd3Config {
                selection_batch: 0,
                ..d.clone()
            },
        ),
        (
            "teacher_share.ramp_epochs",
            Kd3Config {
                teacher_share: TeacherShare {
                    ramp_epochs: 0.0,
                    ..TeacherShare::default()
                },
                ..d.clone()
            },
        ),
    ];
    for (key, cfg) in cases {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn new_rejects_mismatched_classes() {
    let _g = rng_lock();
    let vs = nn::VarStore::new(Device::Cpu);
    let student = build("resnet8", &(vs.root() / STUDENT), SPEC).unwrap();
    let t = build(
        "resnet14",
        &nn::VarStore::new(Device::Cpu).root(),
        ModelSpec {
            num_classes: 4,
            ..SPEC
        },
    )
    .unwrap();
    let err = Kd3::new(
        Kd3Config::default(),
        &(vs.root() / AUX),
        student.as_ref(),
        t.as_ref(),
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("classes"), "{err}");
}

#[test]
fn state_round_trips() {
    let s = setup(Kd3Config::default(), 15);
    let mut a = s.kd3;
    use crate::distiller::{pack_bits, unpack_bits};
    assert_eq!(pack_bits(&[0, 2, 5], 8), [0b0010_0101]);
    assert_eq!(unpack_bits(&pack_bits(&[0, 7, 8, 12], 13), 13), [0, 7, 8, 12]);
    let state = vec![
        (
            "kept/000000".to_string(),
            Tensor::from_slice(&pack_bits(&[0, 2, 5], 8)),
        ),
        ("kept/000001".to_string(), Tensor::from_slice(&pack_bits(&[1], 8))),
        ("share/000000".to_string(), Tensor::from_slice(&[0.9f64])),
        ("share/000001".to_string(), Tensor::from_slice(&[0.4f64])),
    ];
    a.load_state(&state).unwrap();
    assert_eq!(a.kept()[&0], [0, 2, 5]);
    let again = a.state();
    assert_eq!(again.len(), 4);
    let mut b = setup(Kd3Config::default(), 16).kd3;
    b.load_state(&again).unwrap();
    assert_eq!(b.kept(), a.kept());
    assert_eq!(b.teacher_shares(), a.teacher_shares());
    // A mask of the wrong length names the entry.
    let short = [("kept/000000".to_string(), Tensor::from_slice(&[0u8, 0]))];
    assert!(b
        .load_state(&short)
        .unwrap_err()
        .to_string()
        .contains("kept/000000"));
    let r = a.report();
    assert_eq!(r["kept_per_epoch"], serde_json::json!([[0, 2, 5], [1]]));
    assert_eq!(
        r["kept_fraction_per_epoch"],
        serde_json::json!([3.0 / 8.0, 1.0 / 8.0])
    );
    assert_eq!(r["teacher_share_per_epoch"], serde_json::json!([0.9, 0.4]));
    assert!(a
        .load_state(&[("bogus".into(), Tensor::from_slice(&[1i64]))])
        .is_err());
    let quiet = setup(
        Kd3Config {
            report_kept: false,
            ..Kd3Config::default()
        },
        17,
    );
    let mut q = quiet.kd3;
    q.load_state(&state).unwrap();
    let r = q.report();
    assert!(r.get("kept_per_epoch").is_none());
    assert_eq!(r["kept_fraction_per_epoch"].as_array().unwrap().len(), 2);
}

// The selection pass through the epoch hook.

fn web_set(n: usize) -> std::sync::Arc<dyn kd_classify::data::Dataset> {
    use rand::Rng as _;
    let mut rng = kd_core::rng::derive(5, 6, 7);
    let px: Vec<u8> = (0..n * 64).map(|_| rng.gen_range(0..=255u8)).collect();
    std::sync::Arc::new(
        kd_classify::data::InMemoryDataset::from_parts("web", [1, 8, 8], px, vec![-1; n], 3).unwrap(),
    )
}

/// Runs `on_epoch_start` of a fresh KD³ with `cfg` over a 40-image set; returns the plan and the
/// teacher's and student's (shared-head) logits over the set in dataset order.
fn select_with(cfg: Kd3Config, epoch: usize) -> (kd_core::distill::EpochPlan, Tensor, Tensor, Kd3) {
    use kd_classify::data::{class_loader, Augment};
    use kd_core::distill::EpochCtx;
    let s = setup(cfg, 20);
    let mut kd3 = s.kd3;
    let set = web_set(40);
    let loader = class_loader(set.clone(), 8, Augment::none(), false, 1).unwrap();
    let eval = |idx: &[usize]| loader.batch_of(idx, epoch, false);
    let aug = |idx: &[usize]| loader.batch_of(idx, epoch, true);
    let ctx = EpochCtx {
        progress: Progress {
            epoch,
            epochs: 10,
            global_step: 0,
            steps_per_epoch: 5,
        },
        train_set: &loader,
        student: s.student.as_ref(),
        teacher: Some(s.teacher.model()),
        device: Device::Cpu,
        eval_batch: &eval,
        aug_batch: &aug,
        teacher_cache: None,
    };
    let plan = kd3.on_epoch_start(&ctx).unwrap();
    let all: Vec<usize> = (0..40).collect();
    let x = loader.batch_of(&all, epoch, false).unwrap().x;
    let (z_t, z_s) = tch::no_grad(|| {
        let t = s.teacher.forward(&x).logits;
        let out = s.student.forward_t(&x, false);
        (t, kd3.student_logits(s.student.as_ref(), &out).unwrap())
    });
    (plan, z_t, z_s, kd3)
}

fn flags_to_indices(flags: &[bool]) -> Vec<usize> {
    flags
        .iter()
        .enumerate()
        .filter_map(|(i, &k)| k.then_some(i))
        .collect()
}

#[test]
fn epoch_hook_applies_the_rule_over_the_whole_set() {
    use kd_core::distill::EpochPlan;
    // Teacher-only: the threshold rule on the teacher's logits. The selection scores in batches
    // of 16, so the logits may differ from the full-batch pass by rounding only.
    // An untrained teacher is nowhere near 0.95 confident, so p_cut is set between its
    // confidences (same seed, same models), so that the rule keeps some images and drops others.
    let probe = Kd3Config {
        selection: SelectionMode::TeacherOnly,
        selection_batch: 16,
        ..Kd3Config::default()
    };
    let (_, z_t, z_s, _) = select_with(probe.clone(), 0);
    let median = |z: &Tensor| {
        let (_, mut conf) = crate::selection::predictions(z).unwrap();
        conf.sort_by(f64::total_cmp);
        conf[conf.len() / 2]
    };
    let cfg = Kd3Config {
        p_cut: median(&z_t),
        ..probe
    };
    let (plan, z_t, _, kd3) = select_with(cfg.clone(), 0);
    let want = flags_to_indices(&threshold_keep(&z_t, cfg.p_cut).unwrap());
    let EpochPlan::Subset(kept) = plan else {
        panic!("teacher-only selection returns a subset")
    };
    assert!(!want.is_empty() && want.len() < 40, "{want:?}");
    assert_eq!(kept, want);
    assert_eq!(kd3.kept()[&0], kept);
    assert_eq!(kd3.teacher_shares()[&0], 1.0);

    // Combined, late in a 10-epoch run (a = 0): the student's shared-head logits alone decide.
    let cfg = Kd3Config {
        p_cut: median(&z_s),
        ..Kd3Config::default()
    };
    let (plan, _, z_s, kd3) = select_with(cfg.clone(), 7);
    assert_eq!(kd3.teacher_shares()[&7], 0.0);
    let want = flags_to_indices(&threshold_keep(&z_s, cfg.p_cut).unwrap());
    let EpochPlan::Subset(kept) = plan else { panic!() };
    assert!(!want.is_empty() && want.len() < 40, "{want:?}");
    assert_eq!(kept, want);

    // Top-ρ in chunks of 16 (16, 16, 8): 8 + 8 + 4 images, whatever the scores.
    let cfg = Kd3Config {
        selection: SelectionMode::TopRatio,
        selection_batch: 16,
        ..Kd3Config::default()
    };
    let (plan, _, _, _) = select_with(cfg, 1);
    let EpochPlan::Subset(kept) = plan else { panic!() };
    assert_eq!(kept.len(), 20);
    assert!(kept.windows(2).all(|w| w[0] < w[1]));

    // No selection: every image, recorded.
    let cfg = Kd3Config {
        selection: SelectionMode::None,
        ..Kd3Config::default()
    };
    let (plan, _, _, kd3) = select_with(cfg, 2);
    assert_eq!(plan, EpochPlan::All);
    assert_eq!(kd3.kept()[&2], (0..40).collect::<Vec<_>>());
}
