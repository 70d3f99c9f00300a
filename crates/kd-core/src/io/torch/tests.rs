//! Reads the files `scripts/make_torch_fixtures.py` wrote with PyTorch.

use std::path::PathBuf;

use super::*;
use crate::io::weights::{self, Format, ReadOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(name)
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn check_dtypes(file: &str, format: Format) {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("dtypes.json")).unwrap()).unwrap();
    let w = weights::read(&fixture(file), &ReadOptions::default()).unwrap();
    assert_eq!(w.format, format);
    assert_eq!(w.key, None);
    let names: Vec<&str> = w.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["f32", "f32_view", "f32_t", "f16", "bf16", "f64", "i64", "scalar", "empty"]
    );
    for (name, t) in &w.tensors {
        let e = &expected[name];
        let shape: Vec<i64> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(t.size(), shape, "{file}: {name}");
        let want: Vec<f64> = e["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(values(t), want, "{file}: {name}");
    }
    assert_eq!(w.get("f16").unwrap().kind(), Kind::Half);
    assert_eq!(w.get("bf16").unwrap().kind(), Kind::BFloat16);
    assert_eq!(w.get("f64").unwrap().kind(), Kind::Double);
    assert_eq!(w.get("i64").unwrap().kind(), Kind::Int64);
}

#[test]
fn zip_container_dtypes_and_views() {
    check_dtypes("dtypes_zip.pt", Format::TorchZip);
}

#[test]
fn legacy_container_dtypes_and_views() {
    check_dtypes("dtypes_legacy.pt", Format::TorchLegacy);
}

#[test]
fn nested_checkpoints_find_the_weights_and_strip_dataparallel() {
    for f in ["nested_legacy.pt", "nested_zip.pt"] {
        let w = weights::read(&fixture(f), &ReadOptions::default()).unwrap();
        assert_eq!(w.key.as_deref(), Some("model"), "{f}");
        let names: Vec<&str> = w.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["fc.weight", "fc.bias"], "{f}");
        assert_eq!(values(w.get("fc.bias").unwrap()), [0.5, -0.5]);
    }
}

#[test]
fn weights_key_chooses_and_names_what_is_there() {
    let err = weights::read(&fixture("two_dicts.pt"), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("two_dicts.pt") && err.contains("student, teacher") && err.contains("--weights-key"),
        "{err}"
    );
    let opts = ReadOptions {
        weights_key: Some("teacher".into()),
    };
    let w = weights::read(&fixture("two_dicts.pt"), &opts).unwrap();
    assert_eq!(w.tensors.len(), 1);
    // The only dict of tensors is found under any name; a wrong key lists the real ones.
    let w = weights::read(&fixture("odd_key.pt"), &ReadOptions::default()).unwrap();
    assert_eq!(w.key.as_deref(), Some("ema_weights_v2"));
    let opts = ReadOptions {
        weights_key: Some("state_dict".into()),
    };
    let err = weights::read(&fixture("odd_key.pt"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("odd_key.pt")
            && err.contains("\"state_dict\"")
            && err.contains("meta")
            && err.contains("ema_weights_v2"),
        "{err}"
    );
}

#[test]
fn code_in_a_pickle_is_refused_and_never_runs() {
    let marker = std::path::Path::new("/tmp/kd-rs-pickle-ran-code");
    let _ = std::fs::remove_file(marker);
    let err = weights::read(&fixture("runs_code.pt"), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("runs_code.pt") && err.contains("posix.system") && err.contains("refused"),
        "{err}"
    );
    let err = weights::read(&fixture("runs_code_inside.pt"), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"fc.weight\"") && err.contains("posix.system"),
        "{err}"
    );
    assert!(!marker.exists());
}

#[test]
fn truncated_and_foreign_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for src in ["dtypes_zip.pt", "dtypes_legacy.pt"] {
        let bytes = std::fs::read(fixture(src)).unwrap();
        for cut in [bytes.len() / 3, bytes.len() - 5] {
            let p = dir.path().join(format!("cut-{cut}-{src}"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let err = weights::read(&p, &ReadOptions::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("cut-{cut}-{src}")), "{err}");
        }
    }
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "hello, not weights").unwrap();
    let err = weights::read(&p, &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("notes.txt") && err.contains("not a torch.save file"),
        "{err}"
    );
    let err = weights::read(&fixture("plain.pkl"), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("plain.pkl") && err.contains("magic number"), "{err}");
    let p = dir.path().join("empty.pt");
    std::fs::write(&p, b"").unwrap();
    assert!(weights::read(&p, &ReadOptions::default())
        .unwrap_err()
        .to_string()
        .contains("empty"));
}

#[test]
fn safetensors_files_read_through_the_same_door() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    let t = Tensor::from_slice(&[1.0f32, 2.0]);
    crate::io::checkpoint::save(
        &p,
        &[("module.a".into(), t.shallow_clone())],
        &serde_json::json!({}),
    )
    .unwrap();
    let w = weights::read(&p, &ReadOptions::default()).unwrap();
    assert_eq!(w.format, Format::Safetensors);
    assert_eq!(w.tensors[0].0, "a");
    assert_eq!(values(&w.tensors[0].1), [1.0, 2.0]);
}
