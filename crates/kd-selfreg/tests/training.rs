//! Training-level properties (spec §7.2, 7.8–7.10) and a small end-to-end run of both stages.

mod common;

use common::{fit, snapshot, toy_set, N};
use kd_classify::NoKd;
use kd_core::distill::{Distiller, Teacher};
use kd_selfreg::{
    GateConfig, SelfRegKd, SelfRegTeacher, Significance, SignificanceNorm, StudentConfig, TeacherConfig,
    Threshold, Variant, SIGNIFICANCE_FILE,
};
use tch::Device;

fn teacher_cfg(threshold: Threshold) -> TeacherConfig {
    TeacherConfig {
        gate: GateConfig {
            threshold,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// β = 1: every sample takes part, and training is bit-for-bit ordinary training.
#[test]
fn beta_one_equals_standard_training_exactly() {
    let data = toy_set(N, 1);
    let (vs_plain, _, plain) = fit("lenet5_half", &mut NoKd, None, &data, 3, 7);
    let mut sr = SelfRegTeacher::new(teacher_cfg(Threshold::Fixed { beta: 1.0 }), N).unwrap();
    let (vs_sr, _, gated) = fit("lenet5_half", &mut sr, None, &data, 3, 7);
    for ((n1, a), (n2, b)) in snapshot(&vs_plain).iter().zip(snapshot(&vs_sr).iter()) {
        assert_eq!(n1, n2);
        assert!(a.equal(b), "{n1} differs");
    }
    assert_eq!(plain.final_metric, gated.final_metric);
    // Participations = epochs × N, and every sample took part.
    let acc = sr.counter().accounting(3);
    assert_eq!(
        (acc.participations, acc.distinct_samples),
        (3 * N as i64, N as i64)
    );
    assert_eq!(acc.budget_pct, 100.0);
    // Two counting epochs (E_c = 1): every significance is 1.
    assert!(sr.significance().unwrap().values().iter().all(|&s| s == 1.0));
}

/// A self-regulated teacher learns, skips samples it has mastered, and its significance obeys
/// the spec: `s ∈ [0, 1]`, zero exactly for samples that never took part in a counting epoch.
/// The file written next to the weights reads back the same.
#[test]
fn self_regulated_teacher_learns_with_fewer_participations() {
    let data = toy_set(N, 2);
    let mut sr = SelfRegTeacher::new(teacher_cfg(Threshold::Fixed { beta: 0.6 }), N).unwrap();
    let (_vs, _m, report) = fit("lenet5", &mut sr, None, &data, 8, 3);
    assert!(
        report.final_metric > 80.0,
        "teacher accuracy {}",
        report.final_metric
    );
    let acc = sr.counter().accounting(8);
    assert!(acc.participations < 8 * N as i64, "{acc:?}");
    // The participations are the sum of all masks seen, epoch by epoch.
    assert_eq!(
        acc.per_epoch_participations.iter().sum::<i64>(),
        acc.participations
    );
    let s = sr.significance().unwrap();
    let counts = sr.counter().counts();
    for (i, &v) in s.values().iter().enumerate() {
        assert!((0.0..=1.0).contains(&v));
        assert_eq!(v == 0.0, counts.int64_value(&[i as i64]) == 0);
    }
    let dir = tempfile::tempdir().unwrap();
    sr.save_artifacts(dir.path()).unwrap();
    let back = Significance::load(&dir.path().join(SIGNIFICANCE_FILE)).unwrap();
    assert_eq!(back.values(), s.values());
    assert_eq!(back.counting_epochs(), 7);
    let r = sr.report();
    assert_eq!(r["participations"], acc.participations);
    assert!(r["d_sig"].as_u64().unwrap() as usize == s.subset(0.0).len());
}

/// Significance with holes: SBD and HD only ever see `D_sig`, the teacher stays frozen, and
/// the student learns.
#[test]
fn sbd_and_hd_iterate_only_dsig_and_leave_the_teacher_frozen() {
    let data = toy_set(N, 4);
    // A trained teacher.
    let (t_vs, t_model, _) = fit("lenet5", &mut NoKd, None, &data, 4, 5);
    let teacher = Teacher::from_parts(t_vs, t_model);
    let before = snapshot(teacher.var_store());
    // Every third sample never took part.
    let counts: Vec<i64> = (0..N as i64)
        .map(|i| if i % 3 == 0 { 0 } else { 1 + i % 2 })
        .collect();
    let sig = Significance::from_counts(counts, 2, SignificanceNorm::CountingEpochs).unwrap();
    let dsig = sig.subset(0.0);
    assert_eq!(dsig, (0..N).filter(|i| i % 3 != 0).collect::<Vec<_>>());
    for variant in [Variant::Sbd, Variant::Hd] {
        let mut d = SelfRegKd::new(StudentConfig::new(variant), N, Some(sig.clone())).unwrap();
        let (_vs, _m, report) = fit("lenet5_half", &mut d, Some(teacher.model()), &data, 15, 6);
        let all = Vec::<i64>::try_from(d.counter().all_counts()).unwrap();
        for (i, &c) in all.iter().enumerate() {
            if i % 3 == 0 {
                assert_eq!(c, 0, "{variant:?} used sample {i} outside D_sig");
            }
        }
        let acc = d.accounting();
        assert_eq!(acc.visited, 15 * dsig.len() as i64, "{variant:?}");
        assert!(acc.participations <= acc.visited);
        assert!(
            report.final_metric > 60.0,
            "{variant:?} accuracy {}",
            report.final_metric
        );
    }
    for ((n, a), (_, b)) in before.iter().zip(snapshot(teacher.var_store()).iter()) {
        assert!(a.equal(b), "teacher variable {n} changed");
    }
}

/// RD gates on the student's own confidence: it uses fewer participations than KD, over all
/// of D, and still learns; with β_S = 1 it is exactly KD.
#[test]
fn rd_uses_fewer_participations_and_beta_one_is_kd() {
    let data = toy_set(N, 8);
    let (t_vs, t_model, _) = fit("lenet5", &mut NoKd, None, &data, 4, 9);
    let teacher = Teacher::from_parts(t_vs, t_model);
    let student = |cfg: StudentConfig| {
        let mut d = SelfRegKd::new(cfg, N, None).unwrap();
        let (vs, _m, report) = fit("lenet5_half", &mut d, Some(teacher.model()), &data, 15, 10);
        (vs, report, d.accounting())
    };
    let (kd_vs, kd, kd_acc) = student(StudentConfig::new(Variant::Kd));
    let mut rd_cfg = StudentConfig::new(Variant::Rd);
    rd_cfg.gate.threshold = Threshold::Fixed { beta: 0.4 };
    let (_, rd, rd_acc) = student(rd_cfg.clone());
    assert_eq!(kd_acc.participations, 15 * N as i64);
    assert!(rd_acc.participations < kd_acc.participations, "{rd_acc:?}");
    assert!(rd.final_metric > 60.0, "RD accuracy {}", rd.final_metric);
    rd_cfg.gate.threshold = Threshold::Fixed { beta: 1.0 };
    let (rd1_vs, rd1, rd1_acc) = student(rd_cfg);
    assert_eq!(rd1_acc.participations, kd_acc.participations);
    assert_eq!(rd1.final_metric, kd.final_metric);
    for ((n, a), (_, b)) in snapshot(&kd_vs).iter().zip(snapshot(&rd1_vs).iter()) {
        assert!(a.equal(b), "{n}: RD with β_S = 1 must equal KD");
    }
}

/// Stage 2 from a saved file alone: a teacher trained and saved once is distilled later.
#[test]
fn distillation_runs_from_saved_teacher_and_significance() {
    let data = toy_set(N, 11);
    let mut sr = SelfRegTeacher::new(teacher_cfg(Threshold::EpochSchedule { alpha: 0.3 }), N).unwrap();
    let (vs, model, _) = fit("lenet5", &mut sr, None, &data, 5, 12);
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("teacher.safetensors");
    kd_core::train::export_student(&vs, &weights).unwrap();
    sr.save_artifacts(dir.path()).unwrap();
    drop((vs, model, sr));

    let spec = common::SPEC;
    let teacher = {
        let _guard = common::rng_lock();
        kd_classify::models::load_teacher("lenet5", spec, &weights, Device::Cpu).unwrap()
    };
    let sig = Significance::load(&dir.path().join(SIGNIFICANCE_FILE)).unwrap();
    let mut d = SelfRegKd::new(StudentConfig::new(Variant::Sbd), N, Some(sig.clone())).unwrap();
    let (_vs, _m, report) = fit("lenet5_half", &mut d, Some(teacher.model()), &data, 4, 13);
    assert!(report.final_metric.is_finite());
    assert_eq!(d.subset().unwrap(), sig.subset(0.0).as_slice());
    // A vector of the wrong length is refused, naming the file.
    let msg = SelfRegKd::new(StudentConfig::new(Variant::Hd), N + 1, Some(sig))
        .unwrap_err()
        .to_string();
    assert!(msg.contains(SIGNIFICANCE_FILE), "{msg}");
    // SBD without significance is refused.
    assert!(SelfRegKd::new(StudentConfig::new(Variant::Sbd), N, None).is_err());
}

/// The counter is part of the checkpoint: an interrupted and resumed teacher run ends with the
/// same counts, significance and weights as an uninterrupted one.
#[test]
fn resume_restores_the_participation_counter() {
    let data = toy_set(N, 14);
    let mut cfg = common::recipe(4);
    cfg.lr.schedule = kd_core::train::Schedule::Constant;
    let tcfg = teacher_cfg(Threshold::Fixed { beta: 0.6 });
    let mut full = SelfRegTeacher::new(tcfg.clone(), N).unwrap();
    let (vs_full, _, _) = common::fit_with("lenet5", &mut full, None, &data, &cfg, 15, None, false);

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.safetensors");
    let mut short = cfg.clone();
    short.epochs = 2;
    let mut first = SelfRegTeacher::new(tcfg.clone(), N).unwrap();
    common::fit_with(
        "lenet5",
        &mut first,
        None,
        &data,
        &short,
        15,
        Some(ckpt.clone()),
        false,
    );
    let mut resumed = SelfRegTeacher::new(tcfg, N).unwrap();
    let (vs_res, _, report) =
        common::fit_with("lenet5", &mut resumed, None, &data, &cfg, 15, Some(ckpt), true);
    assert_eq!(report.history.len(), 4);
    assert_eq!(full.counter().accounting(4), resumed.counter().accounting(4));
    assert_eq!(full.significance().unwrap(), resumed.significance().unwrap());
    for ((n, a), (_, b)) in snapshot(&vs_full).iter().zip(snapshot(&vs_res).iter()) {
        assert!(a.equal(b), "{n} differs after resume");
    }
}
