//! The segmentation table end to end on a tiny generated Cityscapes tree, `--teacher`, `--resume`,
//! and `eval-cityscapes`, through the `kd` binary.

use std::path::Path;

use kd_seg::data::GrayImage;
use kd_vision::image_ops::write_label_png;

mod common;
use common::*;

/// A tiny table: 64×32 generated scenes, narrow nets, two steps an epoch.
fn tiny_seg_experiment() -> String {
    common::tiny_seg_experiment(&format!(
        r#"[[students]]
name = "psp"
net = {{ backbone = "r18", width = 4, head = "psp", head_channels = 8, aux_channels = 4, num_classes = 19 }}

[students.train]
{train}

[[students]]
name = "aspp"
net = {{ backbone = "r18", width = 4, head = "aspp", head_channels = 8, aux_channels = 0, aspp_dilations = [1, 2], num_classes = 19 }}

[students.train]
{train}

[[rows]]
label = "PSP (no KD)"
student = "psp"
method = {{ kind = "none" }}
paper = 69.85

[[rows]]
label = "PSP + CWD"
student = "psp"
method = {{ kind = "cwd", tau = 1.0, weight = 5.0 }}

[[rows]]
label = "ASPP + GDD"
student = "aspp"
method = {{ kind = "gdd", alpha = 175.0 }}

[picture]
file = "predictions.png"
images = 2
rows = ["PSP (no KD)", "ASPP + GDD"]
"#,
        train = common::TINY_SEG_TRAIN
    ))
}

#[test]
fn the_segmentation_table_runs_resumes_and_takes_a_given_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("seg.toml");
    std::fs::write(&cfg, tiny_seg_experiment()).unwrap();
    let out_dir = dir.path().join("run");
    let cfg_s = cfg.to_str().unwrap();
    let out_s = out_dir.to_str().unwrap();
    let args = one_seed("cityscapes", cfg_s, out_s);
    let out = kd(&args, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let results = json(&out_dir.join("results.json"));
    let rows = results["rows"].as_array().unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(
        labels,
        ["teacher (tiny)", "PSP (no KD)", "PSP + CWD", "ASPP + GDD"]
    );
    for r in rows {
        assert_eq!(r["metric"], "mIoU");
        let m = r["mean"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&m), "{r}");
    }
    assert_eq!(rows[1]["paper"].as_f64(), Some(69.85));
    // Every trained row, the teacher's too, has its best epoch; training evaluates whole
    // images while this table's final number slides windows, and the note says so.
    for r in rows {
        assert_eq!(r["best"]["epoch_per_seed"].as_array().unwrap().len(), 1, "{r}");
    }
    assert_eq!(results["best_same_protocol"], false);
    assert!(results["best_note"]
        .as_str()
        .unwrap()
        .contains("whole-image inference (the final number slides 32×32 windows every 16×16 pixels)"));
    let iou = rows[3]["extra"]["per_class_iou"].as_object().unwrap();
    assert_eq!(iou.len(), 19);
    assert!(iou.contains_key("road") && iou.contains_key("bicycle"));
    assert!(results["dataset"]
        .as_str()
        .unwrap()
        .contains("not Cityscapes val"));
    for f in ["results.md", "config.toml", "miou.png", "predictions.png"] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    // The stand-in was written once in the Cityscapes layout.
    let synth: Vec<_> = std::fs::read_dir(dir.path().join("cityscapes-synth"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("gtFine/val").is_dir())
        .collect();
    assert_eq!(synth.len(), 1);

    // Resume: every row is complete, so nothing trains and the table is the same.
    let mut resume = args.to_vec();
    resume.push("--resume");
    let out = kd(&resume, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = json(&out_dir.join("results.json"));
    assert_eq!(again["rows"], results["rows"]);

    // A given teacher replaces the trained one, and its row says so.
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("teachers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("teacher.safetensors"))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(cached.len(), 1);
    let given = dir.path().join("given.safetensors");
    std::fs::copy(&cached[0], &given).unwrap();
    let out2 = dir.path().join("run2");
    let mut given_args = one_seed("cityscapes", cfg_s, out2.to_str().unwrap());
    given_args.extend(["--teacher", given.to_str().unwrap()]);
    let out = kd(&given_args, dir.path());
    // The tiny run's teacher learnt next to nothing: given, it stops the run unless accepted.
    assert_clean_error(&out, &["given.safetensors", "near chance"]);
    given_args.push("--weak-teacher");
    let out = kd(&given_args, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r2 = json(&out2.join("results.json"));
    assert!(r2["rows"][0]["method"].as_str().unwrap().contains("given"));
    // A given teacher has no training history, so no best epoch.
    assert!(r2["rows"][0].get("best").is_none() && r2["rows"][1]["best"].is_object());
    assert_eq!(r2["rows"][0]["mean"], rows[0]["mean"]);

    // A teacher file of another network is one clear error naming the file.
    let wrong = out_dir.join("psp-no-kd/seed0/student.safetensors");
    let run3 = dir.path().join("run3");
    let mut wrong_args = one_seed("cityscapes", cfg_s, run3.to_str().unwrap());
    wrong_args.extend(["--teacher", wrong.to_str().unwrap()]);
    let out = kd(&wrong_args, dir.path());
    assert_clean_error(&out, &["student.safetensors"]);
}

#[test]
fn missing_teacher_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = kd(
        &[
            "reproduce",
            "cityscapes",
            "--teacher",
            "/nonexistent/t.safetensors",
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["--teacher", "/nonexistent/t.safetensors"]);
}

/// Writes one labelIds PNG.
fn label_png(path: &Path, ids: &[u8], w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_label_png(path, &GrayImage::from_raw(w, h, ids.to_vec()).unwrap()).unwrap();
}

#[test]
fn eval_cityscapes_scores_saved_predictions_and_names_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let gt = dir.path().join("gtFine/val");
    let pred = dir.path().join("pred");
    // Road (7) and car (26) halves; the prediction gets one car pixel wrong (as road).
    let truth = [7, 7, 26, 26, 7, 7, 26, 26];
    let guess = [7, 7, 7, 26, 7, 7, 26, 26];
    label_png(
        &gt.join("aachen/aachen_000000_000019_gtFine_labelIds.png"),
        &truth,
        4,
        2,
    );
    label_png(&pred.join("aachen_000000_000019_pred.png"), &guess, 4, 2);
    let json_out = dir.path().join("eval.json");
    let out = kd(
        &[
            "eval-cityscapes",
            "--pred",
            pred.to_str().unwrap(),
            "--gt",
            gt.to_str().unwrap(),
            "--json",
            json_out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // road: tp 4, fp 1 → 0.8; car: tp 3, fn 1 → 0.75; mean 0.775.
    assert!(stdout.contains("Score Average: 0.7750"), "{stdout}");
    let report = json(&json_out);
    assert_eq!(report["images"], 1);

    std::fs::remove_file(pred.join("aachen_000000_000019_pred.png")).unwrap();
    let out = kd(
        &[
            "eval-cityscapes",
            "--pred",
            pred.to_str().unwrap(),
            "--gt",
            gt.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_clean_error(&out, &["aachen_000000_000019"]);
}
