//! The value-check path: rows are selected by filter, exported, and their files read back to
//! the same numbers the kernels give.

use std::collections::HashMap;

use kd_benches::{case, cases, check, Mode, Settings};
use kd_core::losses::kd_loss;
use tch::{Device, Kind, Tensor};

fn settings(dir: &std::path::Path) -> Settings {
    Settings {
        device: Device::Cpu,
        threads: 1,
        real_batch: 1,
        data_dir: dir.join("data"),
        skip: vec![],
    }
}

#[test]
fn the_filter_selects_rows_and_modes_by_id() {
    let s = settings(&std::env::temp_dir());
    let all = cases::all(&s);
    let ids: Vec<String> = all
        .iter()
        .flat_map(|sp| sp.modes.iter().map(|&m| sp.id(m)))
        .collect();
    assert!(ids.contains(&"kd_loss/forward/small".to_string()));
    assert!(ids.contains(&"kd_step/step/real".to_string()));
    assert!(ids.contains(&"seg_pipeline/epoch/quick".to_string()));

    let picked = case::select(cases::all(&s), Some("kd_loss/forward/")).unwrap();
    assert_eq!(picked.len(), 2, "small and real");
    assert!(picked
        .iter()
        .all(|sp| sp.kind == "kd_loss" && sp.modes == vec![Mode::Forward]));

    let small = case::select(cases::all(&s), Some("small$")).unwrap();
    assert!(!small.is_empty() && small.iter().all(|sp| sp.label == "small"));
    assert!(case::select(cases::all(&s), Some("no-such-row"))
        .unwrap()
        .is_empty());
    assert!(
        case::select(cases::all(&s), Some("(")).is_err(),
        "a bad regex is an error"
    );
}

#[test]
fn the_quick_cpu_filter_of_xtask_leaves_out_only_the_gdd_and_mgd_levels_at_training_shapes() {
    // xtask's QUICK_CPU_FILTER (xtask has no regex engine to test it with).
    const QUICK_CPU_FILTER: &str = "^([^gm]|g[^d]|gd[^d]|gdd_|m[^g]|mg[^d])|/small$";
    let s = settings(&std::env::temp_dir());
    let ids = |specs: Vec<kd_benches::Spec>| -> Vec<String> {
        specs
            .iter()
            .flat_map(|sp| sp.modes.iter().map(|&m| sp.id(m)))
            .collect()
    };
    let all = ids(cases::all(&s));
    let quick = ids(case::select(cases::all(&s), Some(QUICK_CPU_FILTER)).unwrap());
    let left_out: Vec<&String> = all.iter().filter(|id| !quick.contains(id)).collect();
    assert_eq!(
        left_out,
        [
            "gdd/forward/real",
            "gdd/forward_backward/real",
            "mgd/forward/real",
            "mgd/forward_backward/real",
            "mgd/forward/det",
            "mgd/forward_backward/det",
        ]
    );
}

#[test]
fn exported_files_round_trip_to_the_kernels_values() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let specs = case::select(cases::all(&s), Some("^(kd_loss|kd3_select)/forward/small$")).unwrap();
    let manifest = check::export(&specs, &s, dir.path()).unwrap();
    let rows = manifest["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["modes"][0]["id"], "kd_loss/forward/small");
    assert!(dir.path().join("manifest.json").is_file());

    let read = |file: &str| -> HashMap<String, Tensor> {
        Tensor::read_safetensors(dir.path().join(file))
            .unwrap()
            .into_iter()
            .collect()
    };
    let kd = read(rows[0]["file"].as_str().unwrap());
    assert_eq!(kd["in.s"].size(), vec![64, 100]);
    let s_in = kd["in.s"].set_requires_grad(true);
    let loss = kd_loss(&s_in, &kd["in.t"], 4.0).unwrap();
    loss.backward();
    assert_eq!(loss.double_value(&[]), kd["out.loss"].double_value(&[]));
    let diff = (s_in.grad() - &kd["grad.s"]).abs().max().double_value(&[]);
    assert_eq!(diff, 0.0);

    let sel = read(rows[1]["file"].as_str().unwrap());
    assert_eq!(sel["out.keep"].kind(), Kind::Uint8);
    assert_eq!(sel["out.keep"].size(), vec![16]);
}
