//! The distiller: §7.3, §7.6–§7.9, gradients, every mode and variant on pairs of different
//! widths, and state round trips.

use kd_core::data::Batch;
use kd_core::distill::{Distiller, LossTerms, Progress, StepCtx};
use kd_core::models::ModelOutput;
use kd_core::Result;
use tch::{Device, Kind, Tensor};

use super::{all_finite, max_abs, randn, Pair};
use crate::config::{PrefitConfig, TargetMode, UnikdConfig, Variant};
use crate::distiller::Unikd;
use crate::moments::teacher_moments;

const B: i64 = 6;

fn batch(seed: i64, b: i64) -> Batch {
    tch::manual_seed(seed);
    let indices: Vec<usize> = (0..b as usize).collect();
    Batch {
        x: randn(&[b, 3, 16, 16]),
        target: kd_core::data::Target::Labels(Tensor::from_slice(
            &(0..b).map(|i| i % 10).collect::<Vec<i64>>(),
        )),
        index: Tensor::from_slice(&(0..b).collect::<Vec<i64>>()),
        indices,
    }
}

fn progress(epoch: usize, step: usize) -> Progress {
    Progress {
        epoch,
        epochs: 10,
        global_step: epoch * 4 + step,
        steps_per_epoch: 4,
    }
}

fn quick_prefit() -> PrefitConfig {
    PrefitConfig {
        epochs: 1,
        batch_size: 4,
        ..PrefitConfig::default()
    }
}

fn config(mode: TargetMode, variant: Variant) -> UnikdConfig {
    UnikdConfig {
        mode,
        variant,
        warmup_epochs: 2.0,
        prefit: quick_prefit(),
        ..UnikdConfig::default()
    }
}

/// Builds the distiller and, in mode B, pre-fits its teacher heads on a few random batches.
fn build(p: &Pair, cfg: UnikdConfig) -> Unikd {
    let mut u = Unikd::new(cfg, &p.aux(), p.student.as_ref(), p.teacher.model()).unwrap();
    fit_heads(&mut u, p);
    u
}

fn fit_heads(u: &mut Unikd, p: &Pair) {
    if let Some(th) = u.teacher_heads_mut() {
        let data = batch(99, 8);
        let batch_of = |idx: &[usize]| -> Result<Batch> {
            let sel = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
            Ok(Batch {
                x: data.x.index_select(0, &sel),
                target: kd_core::data::Target::Labels(data.target.tensor().index_select(0, &sel)),
                index: sel.shallow_clone(),
                indices: idx.to_vec(),
            })
        };
        th.prefit(&|b| Ok(p.teacher.forward(&b.x)), 8, &batch_of).unwrap();
    }
}

fn terms(u: &mut Unikd, p: &Pair, b: &Batch, prog: Progress) -> (LossTerms, ModelOutput, ModelOutput) {
    let s_out = p.student.forward_t(&b.x, true);
    let t_out = p.teacher.forward(&b.x);
    let t = {
        let ctx = StepCtx {
            batch: b,
            student: p.student.as_ref(),
            teacher: Some(p.teacher.model()),
            s_out: &s_out,
            t_out: Some(&t_out),
            progress: prog,
        };
        u.loss(&ctx).unwrap()
    };
    (t, s_out, t_out)
}

fn term<'a>(t: &'a LossTerms, name: &str) -> &'a Tensor {
    &t.terms()
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no term {name}"))
        .1
}

const ALL: [(TargetMode, Variant); 5] = [
    (TargetMode::TeacherMoments, Variant::Full),
    (TargetMode::ClassSpaceHeads, Variant::Full),
    (TargetMode::TeacherMoments, Variant::NoAff),
    (TargetMode::ClassSpaceHeads, Variant::NoAff),
    (TargetMode::TeacherMoments, Variant::NoFdp),
];

#[test]
fn every_mode_and_variant_runs_on_pairs_of_different_widths() {
    for (student, teacher) in [
        ("resnet8", "resnet32x4"),
        ("resnet8x4", "resnet32x4"),
        ("wrn_16_2", "wrn_40_2"),
    ] {
        for (mode, variant) in ALL {
            let p = Pair::new(student, teacher);
            let mut u = build(&p, config(mode, variant));
            let (t, _, _) = terms(&mut u, &p, &batch(1, B), progress(5, 0));
            let names: Vec<&str> = t.terms().iter().map(|(n, _)| n.as_str()).collect();
            let prefix = if variant == Variant::NoFdp { "mse" } else { "kl" };
            let taps: Vec<String> = p.student.taps()[1..]
                .iter()
                .map(|t| format!("{prefix}_{}", t.name))
                .collect();
            let mut want = vec!["ce", "kd"];
            want.extend(taps.iter().map(String::as_str));
            assert_eq!(names, want, "{student}→{teacher} {mode:?} {variant:?}");
            for (n, v) in t.terms() {
                assert!(v.dim() == 0 && all_finite(v), "{n}");
                assert!(v.double_value(&[]) >= 0.0, "{n}");
            }
            assert!(
                t.terms()[2].1.double_value(&[]) > 0.0,
                "{student} {mode:?} {variant:?}"
            );
        }
    }
}

/// The `"kd"` term is `α·τ²·(1/B)·Σ_b KL(softmax(z_T,b/τ) ‖ softmax(z_S,b/τ))`, checked on
/// literal logits against closed-form softmaxes.
#[test]
fn the_logit_term_is_alpha_tau_squared_batch_mean_kl_by_hand() {
    let p = Pair::new("resnet8", "resnet32x4");
    let mut cfg = config(TargetMode::TeacherMoments, Variant::Full);
    cfg.tau = 2.0;
    cfg.alpha = 0.25;
    let mut u = build(&p, cfg);
    let b = batch(2, 2);
    let l2 = 2f32.ln();
    // τ = 2, B = 2, K = 3.
    // Row 0: teacher [2 ln 2, 0, 0] → p_T = [2, 1, 1]/4 = [1/2, 1/4, 1/4]; student [0, 0, 0] →
    //   p_S = [1/3, 1/3, 1/3]; KL₀ = 1/2·ln(3/2) + 2·1/4·ln(3/4) = 1/2·ln(9/8) ≈ 0.0588915.
    // Row 1: teacher [0, 0, 0] → p_T uniform; student [2 ln 2, 2 ln 2, 0] → p_S = [2, 2, 1]/5;
    //   KL₁ = 1/3·(2·ln(5/6) + ln(5/3)) = 1/3·ln(125/108) ≈ 0.0487275.
    // kd = α·τ²/B·(KL₀ + KL₁) = 0.25·4/2·(KL₀ + KL₁) ≈ 0.0538095
    // (without τ²: 0.0134524; summed over the batch: 0.1076190; without α: 0.2152380).
    let s_logits = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 2.0 * l2, 2.0 * l2, 0.0]).view([2, 3]);
    let t_logits = Tensor::from_slice(&[2.0 * l2, 0.0, 0.0, 0.0, 0.0, 0.0]).view([2, 3]);
    let s_out = ModelOutput {
        logits: s_logits,
        ..p.student.forward_t(&b.x, true)
    };
    let t_out = ModelOutput {
        logits: t_logits,
        ..p.teacher.forward(&b.x)
    };
    let ctx = StepCtx {
        batch: &b,
        student: p.student.as_ref(),
        teacher: Some(p.teacher.model()),
        s_out: &s_out,
        t_out: Some(&t_out),
        progress: progress(3, 0),
    };
    let t = u.loss(&ctx).unwrap();
    let kl0 = 0.5 * (9.0f64 / 8.0).ln();
    let kl1 = (125.0f64 / 108.0).ln() / 3.0;
    let want = 0.25 * 4.0 / 2.0 * (kl0 + kl1);
    assert!((want - 0.053_809_5).abs() < 1e-6, "{want}");
    let got = term(&t, "kd").double_value(&[]);
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}

#[test]
fn teacher_moments_of_a_constant_map_are_the_constant_and_eps() {
    let f = Tensor::full([2, 3, 4, 5], 1.75, (Kind::Float, Device::Cpu));
    let (mu, var) = teacher_moments(&f, 1e-4).unwrap();
    assert_eq!(mu.size(), vec![2, 3]);
    assert!(max_abs(&(mu - 1.75)) < 1e-6);
    assert!(max_abs(&(var - 1e-4)) < 1e-9);
    // And the population moments of a random map.
    tch::manual_seed(4);
    let f = randn(&[1, 1, 2, 2]);
    let v: Vec<f32> = Vec::try_from(f.view([4])).unwrap();
    let m = v.iter().sum::<f32>() / 4.0;
    let s2 = v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / 4.0;
    let (mu, var) = teacher_moments(&f, 0.5).unwrap();
    assert!((mu.double_value(&[0, 0]) - m as f64).abs() < 1e-6);
    assert!((var.double_value(&[0, 0]) - (s2 as f64 + 0.5)).abs() < 1e-6);
    assert!(teacher_moments(&randn(&[2, 3]), 1e-4).is_err());
}

#[test]
fn warm_up_starts_at_zero_and_reaches_full_weight() {
    let p = Pair::new("resnet8", "resnet32x4");
    let mut cfg = config(TargetMode::TeacherMoments, Variant::Full);
    cfg.beta = 2.0;
    let mut u = build(&p, cfg);
    let b = batch(3, B);
    let (t0, _, _) = terms(&mut u, &p, &b, progress(0, 0));
    for (n, v) in &t0.terms()[2..] {
        assert_eq!(v.double_value(&[]), 0.0, "{n} at step 0");
    }
    assert_eq!(u.stage_weight(&progress(0, 0)), 0.0);
    assert!(
        (u.stage_weight(&progress(1, 0)) - 1.0).abs() < 1e-12,
        "half-way through 2 epochs"
    );
    assert_eq!(u.stage_weight(&progress(2, 0)), 2.0);
    assert_eq!(u.stage_weight(&progress(7, 3)), 2.0);
    // After the warm-up each term is β times the unweighted stage loss.
    let (t, s_out, t_out) = terms(&mut u, &p, &b, progress(3, 0));
    let raw = u.stage_losses(&s_out, &t_out, true).unwrap();
    for (k, l) in raw.iter().enumerate() {
        let name = u.stage_term_name(k);
        let got = term(&t, &name).double_value(&[]);
        assert!(
            (got - 2.0 * l.double_value(&[])).abs() < 1e-5 * got.abs().max(1.0),
            "{name}"
        );
    }
}

/// Trainable variables of `vs` whose name starts with `prefix`.
fn grads_under(vs: &tch::nn::VarStore, prefix: &str) -> (usize, usize) {
    let vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(n, t)| n.starts_with(prefix) && t.requires_grad())
        .collect();
    let with = vars
        .iter()
        .filter(|(_, t)| t.grad().defined() && t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0)
        .count();
    (with, vars.len())
}

#[test]
fn gradients_reach_the_student_and_its_modules_but_never_the_teacher() {
    for (mode, variant) in ALL {
        let p = Pair::new("resnet8", "resnet32x4");
        let mut u = build(&p, config(mode, variant));
        let (t, _, _) = terms(&mut u, &p, &batch(5, B), progress(4, 0));
        // Only the stage terms, so the gradient reaching the student is theirs.
        let stage: Tensor = t.terms()[2..]
            .iter()
            .map(|(_, v)| v.shallow_clone())
            .reduce(|a, b| a + b)
            .unwrap();
        stage.backward();
        let (with, all) = grads_under(&p.vs, "student.layer1");
        assert!(
            with > 0,
            "{mode:?} {variant:?}: no gradient in the student's first stage ({all} vars)"
        );
        let (with, all) = grads_under(&p.vs, "aux.unikd");
        assert!(
            all > 0 && with > 0,
            "{mode:?} {variant:?}: {with}/{all} aux vars with gradient"
        );
        for (n, v) in p.teacher.var_store().variables() {
            assert!(
                !v.requires_grad() && !v.grad().defined(),
                "teacher {n} got a gradient"
            );
        }
        if let Some(th) = u.teacher_heads() {
            for (n, v) in th.var_store().variables() {
                let g = v.grad();
                let none = !g.defined() || max_abs(&g) == 0.0;
                assert!(
                    !v.requires_grad() && none,
                    "frozen teacher head {n} got a gradient"
                );
            }
        }
    }
}

#[test]
fn mode_b_teacher_heads_learn_only_in_the_pre_phase() {
    let p = Pair::new("resnet8", "resnet32x4");
    let mut u = Unikd::new(
        config(TargetMode::ClassSpaceHeads, Variant::Full),
        &p.aux(),
        p.student.as_ref(),
        p.teacher.model(),
    )
    .unwrap();
    // Before the pre-fit the step refuses to run on untrained targets.
    let b = batch(6, B);
    let s_out = p.student.forward_t(&b.x, true);
    let t_out = p.teacher.forward(&b.x);
    assert!(u.stage_losses(&s_out, &t_out, true).is_err());
    // Pre-phase: the pre-fit loss reaches every head variable.
    let th = u.teacher_heads().unwrap();
    let (loss, hits) = th.prefit_loss(&t_out, b.target.tensor()).unwrap();
    assert_eq!(hits.len(), 3);
    loss.backward();
    let (with, all) = grads_under(th.var_store(), "");
    assert!(
        all > 0 && with == all,
        "{with}/{all} head variables got a pre-fit gradient"
    );
    let snapshot = |th: &crate::teacher_heads::TeacherHeads| -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = th
            .var_store()
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let before = snapshot(th);
    fit_heads(&mut u, &p);
    let th = u.teacher_heads().unwrap();
    assert!(th.is_fitted());
    let report = th.report().unwrap();
    assert_eq!(report.steps, 2);
    assert!(report.final_loss.is_finite());
    // The pre-fit moved the heads, then froze them.
    let after = snapshot(th);
    assert!(th.var_store().variables().values().all(|v| !v.requires_grad()));
    let moved = before
        .iter()
        .zip(&after)
        .any(|((_, a), (_, b))| max_abs(&(a - b)) > 0.0);
    assert!(moved, "the pre-fit did not change the heads");
}

#[test]
fn state_round_trip_restores_fitted_heads() {
    let p = Pair::new("resnet8", "resnet32x4");
    let u = build(&p, config(TargetMode::ClassSpaceHeads, Variant::Full));
    let state = u.state();
    assert!(state.iter().any(|(n, _)| n == "teacher_heads.fitted"));
    let mut fresh = Unikd::new(
        config(TargetMode::ClassSpaceHeads, Variant::Full),
        &(p.vs.root() / "other"),
        p.student.as_ref(),
        p.teacher.model(),
    )
    .unwrap();
    // An empty state (a checkpoint taken before the pre-fit) changes nothing.
    fresh.load_state(&[]).unwrap();
    assert!(!fresh.teacher_heads().unwrap().is_fitted());
    fresh.load_state(&state).unwrap();
    let th = fresh.teacher_heads().unwrap();
    assert!(th.is_fitted());
    assert_eq!(th.report(), u.teacher_heads().unwrap().report());
    let t_out = p.teacher.forward(&batch(7, B).x);
    let a = u.teacher_heads().unwrap().targets(&t_out).unwrap();
    let b = th.targets(&t_out).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(max_abs(&(&x.mu - &y.mu)), 0.0);
        assert_eq!(max_abs(&(&x.logvar - &y.logvar)), 0.0);
    }
    let broken: Vec<(String, Tensor)> = state
        .iter()
        .filter(|(n, _)| !n.ends_with("fdp0.mu.weight"))
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let mut again = Unikd::new(
        config(TargetMode::ClassSpaceHeads, Variant::Full),
        &(p.vs.root() / "again"),
        p.student.as_ref(),
        p.teacher.model(),
    )
    .unwrap();
    let err = again.load_state(&broken).unwrap_err().to_string();
    assert!(err.contains("fdp0.mu.weight"), "{err}");
    // Mode A has no state.
    let a = build(&p, config(TargetMode::TeacherMoments, Variant::Full));
    assert!(a.state().is_empty());
}

#[test]
fn saturated_log_variances_and_zero_teacher_maps_stay_finite() {
    for mode in [TargetMode::TeacherMoments, TargetMode::ClassSpaceHeads] {
        let p = Pair::new("resnet8", "resnet32x4");
        let u = build(&p, config(mode, Variant::Full));
        for (name, mut v) in p.vs.variables() {
            if name.contains("fdp") && name.ends_with("logvar.bias") {
                tch::no_grad(|| {
                    let _ = v.fill_(1.0e6);
                });
            }
        }
        let b = batch(8, B);
        let s_out = p.student.forward_t(&b.x, true);
        let t_real = p.teacher.forward(&b.x);
        // A teacher whose every stage map is all zeros.
        let t_out = ModelOutput {
            logits: t_real.logits.shallow_clone(),
            aux_logits: None,
            features: t_real
                .features
                .iter()
                .map(|(n, f)| (n.clone(), f.zeros_like()))
                .collect(),
            pooled: None,
            heads: Vec::new(),
        };
        let losses = u.stage_losses(&s_out, &t_out, true).unwrap();
        let total = losses.into_iter().reduce(|a, b| a + b).unwrap();
        assert!(all_finite(&total), "{mode:?}");
        total.backward();
        for (n, v) in p.vs.trainable_variables().iter().enumerate() {
            assert!(!v.grad().defined() || all_finite(&v.grad()), "{mode:?} var {n}");
        }
    }
}

#[test]
fn configuration_errors_name_the_key() {
    let p = Pair::new("resnet8", "wrn_40_2");
    let err = |cfg: UnikdConfig| -> String {
        Unikd::new(cfg, &p.aux(), p.student.as_ref(), p.teacher.model())
            .unwrap_err()
            .to_string()
    };
    let mut c = UnikdConfig::default();
    c.student_taps = Some(vec!["stage9".into()]);
    let e = err(c);
    assert!(
        e.contains("student_taps") && e.contains("stage9") && e.contains("stage1"),
        "{e}"
    );
    let mut c = UnikdConfig::default();
    c.student_taps = Some(vec!["stage2".into(), "stage3".into()]);
    let e = err(c);
    assert!(
        e.contains("2 student stages") && e.contains("3 teacher stages"),
        "{e}"
    );
    let mut c = UnikdConfig::default();
    c.teacher_taps = Some(vec!["block2".into(), "block1".into(), "block3".into()]);
    assert!(err(c).contains("network order"));
    let mut c = UnikdConfig::default();
    c.stage_weights = Some(vec![1.0]);
    assert!(err(c).contains("stage_weights"));
    let mut c = UnikdConfig::default();
    c.fused_channels = Some(vec![8, 8, 8]);
    c.variant = Variant::NoFdp;
    assert!(err(c).contains("fused_channels"));
    let mut c = UnikdConfig::default();
    c.logvar_clamp = 20.0;
    assert!(err(c).contains("logvar_clamp"));
    let mut c = UnikdConfig::default();
    c.tau = 0.0;
    assert!(err(c).contains("tau"));
    // Explicit taps and fused widths are honoured, and include_last = false drops the deepest
    // stage's loss.
    let mut c = UnikdConfig::default();
    c.student_taps = Some(vec!["stage1".into(), "stage3".into()]);
    c.teacher_taps = Some(vec!["block1".into(), "block3".into()]);
    c.fused_channels = Some(vec![16, 24]);
    c.include_last = false;
    c.mode = TargetMode::TeacherMoments;
    let u = Unikd::new(c, &p.aux(), p.student.as_ref(), p.teacher.model()).unwrap();
    assert_eq!(u.plan().loss_stages, vec![0]);
    assert_eq!(u.student_aff().unwrap().widths(), vec![16, 24]);
    assert_eq!(u.stage_term_name(0), "kl_stage1");
}
