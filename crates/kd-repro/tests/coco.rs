//! `kd eval-coco` through the binary: the summary lines, `--json`, and errors that name the file.

mod common;
use common::*;

const GT: &str = r#"{
  "images": [{"id": 1, "width": 640, "height": 480}, {"id": 2, "width": 640, "height": 480}],
  "categories": [{"id": 3, "name": "a"}, {"id": 9, "name": "b"}],
  "annotations": [
    {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 0},
    {"id": 2, "image_id": 1, "category_id": 3, "bbox": [300, 0, 100, 100], "area": 10000, "iscrowd": 0}
  ]
}"#;

#[test]
fn eval_coco_prints_the_pycocotools_summary_and_names_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let gt = dir.path().join("instances_val.json");
    std::fs::write(&gt, GT).unwrap();
    // Ranked: hit (0.9), duplicate (0.8), hit (0.7): AP = (51 + 50 · 2/3) / 101 = 0.83498.
    let dt = dir.path().join("detections.json");
    std::fs::write(
        &dt,
        r#"[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 100], "score": 0.9},
            {"image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 100], "score": 0.8},
            {"image_id": 1, "category_id": 3, "bbox": [300, 0, 100, 100], "score": 0.7}]"#,
    )
    .unwrap();
    let (gt_s, dt_s) = (gt.to_str().unwrap(), dt.to_str().unwrap());
    let out = kd(&["eval-coco", "--gt", gt_s, "--dt", dt_s], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.835\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = -1.000\n"),
        "{stdout}"
    );
    assert_eq!(stdout.matches(" @[ IoU=").count(), 12, "{stdout}");

    let out = kd(&["eval-coco", "--gt", gt_s, "--dt", dt_s, "--json"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ap = v["ap"].as_f64().unwrap();
    assert!((ap - (51.0 + 50.0 * 2.0 / 3.0) / 101.0).abs() < 1e-9, "{v}");
    assert_eq!(v["ar1"].as_f64().map(|x| (x * 1e6).round()), Some(0.5e6));
    assert_eq!(v["per_category"][1]["category_id"], 9);
    assert_eq!(v["per_category"][1]["ap"], -1.0);

    // A detection on an image the ground truth does not have.
    let bad = dir.path().join("bad_image.json");
    std::fs::write(
        &bad,
        r#"[{"image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]"#,
    )
    .unwrap();
    let out = kd(
        &["eval-coco", "--gt", gt_s, "--dt", bad.to_str().unwrap()],
        dir.path(),
    );
    assert_clean_error(&out, &["bad_image.json", "image_id 7"]);
    // A malformed box.
    std::fs::write(
        &bad,
        r#"[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1], "score": 0.5}]"#,
    )
    .unwrap();
    let out = kd(
        &["eval-coco", "--gt", gt_s, "--dt", bad.to_str().unwrap()],
        dir.path(),
    );
    assert_clean_error(&out, &["bad_image.json", "length 3"]);
    // Missing files.
    let out = kd(&["eval-coco", "--gt", "nope_gt.json", "--dt", dt_s], dir.path());
    assert_clean_error(&out, &["nope_gt.json"]);
    let out = kd(&["eval-coco", "--gt", gt_s, "--dt", "nope_dt.json"], dir.path());
    assert_clean_error(&out, &["nope_dt.json"]);
}
