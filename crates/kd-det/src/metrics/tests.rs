//! Hand-computed cases. Notation: with `n` counted ground-truth boxes and detections ranked by
//! score, the precision envelope is sampled at the 101 recall points 0, 0.01, …, 1; a curve
//! that reaches recall 1/2 at precision 1 and no further gives 51 of 101 points at 1, i.e.
//! AP = 51/101.

use std::path::Path;

use super::*;

const BIG: [f64; 4] = [0.0, 0.0, 100.0, 100.0];

/// Ground truth with `area = w·h` unless given.
struct Ann {
    id: i64,
    img: i64,
    cat: i64,
    bbox: [f64; 4],
    area: Option<f64>,
    crowd: bool,
}

fn ann(id: i64, img: i64, cat: i64, bbox: [f64; 4]) -> Ann {
    Ann {
        id,
        img,
        cat,
        bbox,
        area: None,
        crowd: false,
    }
}

fn coco(images: &[i64], cats: &[i64], anns: Vec<Ann>) -> CocoGt {
    let anns = anns
        .into_iter()
        .map(|a| GtAnnotation {
            id: a.id,
            image_id: a.img,
            category_id: a.cat,
            bbox: a.bbox,
            area: a.area.unwrap_or(a.bbox[2] * a.bbox[3]),
            iscrowd: a.crowd,
        })
        .collect();
    CocoGt::from_parts(images.to_vec(), cats.to_vec(), anns).unwrap()
}

fn det(img: i64, cat: i64, bbox: [f64; 4], score: f64) -> CocoDetection {
    CocoDetection {
        image_id: img,
        category_id: cat,
        bbox,
        score,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// A box far from everything above (no overlap with `BIG` or small boxes near the origin).
fn far(i: usize) -> [f64; 4] {
    [1000.0 + 20.0 * i as f64, 1000.0, 10.0, 10.0]
}

#[test]
fn perfect_detection() {
    let gt = coco(&[1], &[1], vec![ann(1, 1, 1, BIG)]);
    let s = evaluate_bbox(&gt, &[det(1, 1, BIG, 0.9)]).unwrap();
    // Precision is tp / (tp + fp + ε) as in pycocotools, hence "close".
    let want = [1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0];
    assert!(s.as_array().iter().zip(want).all(|(&a, b)| close(a, b)), "{s:?}");
    assert_eq!((s.images, s.categories, s.detections), (1, 1, 1));
    let summary = s.summary();
    let lines: Vec<&str> = summary.lines().collect();
    assert_eq!(lines.len(), 12);
    assert_eq!(
        lines[0],
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000"
    );
    assert_eq!(
        lines[1],
        " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 1.000"
    );
    assert_eq!(
        lines[3],
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = -1.000"
    );
    assert_eq!(
        lines[6],
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = 1.000"
    );
    assert_eq!(
        lines[10],
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ] = -1.000"
    );
}

#[test]
fn duplicate_is_a_false_positive_under_the_envelope() {
    // Two boxes; ranked: hit on A (0.9), duplicate of A (0.8), hit on B (0.7).
    // recall [.5, .5, 1], precision [1, .5, 2/3] → envelope [1, 2/3, 2/3]:
    // recall points 0..=0.50 (51) at 1, 0.51..=1 (50) at 2/3.
    let b = [300.0, 0.0, 100.0, 100.0];
    let gt = coco(&[1], &[1], vec![ann(1, 1, 1, BIG), ann(2, 1, 1, b)]);
    let dets = [det(1, 1, BIG, 0.9), det(1, 1, BIG, 0.8), det(1, 1, b, 0.7)];
    let s = evaluate_bbox(&gt, &dets).unwrap();
    let want = (51.0 + 50.0 * 2.0 / 3.0) / 101.0;
    assert!(
        close(s.ap, want) && close(s.ap50, want) && close(s.ap75, want),
        "{s:?}"
    );
    assert!(close(s.ar100, 1.0));
    // Only the best detection per image counts for AR@1: one of two boxes.
    assert!(close(s.ar1, 0.5));
}

#[test]
fn a_miss_caps_recall() {
    let b = [300.0, 0.0, 100.0, 100.0];
    let gt = coco(&[1], &[1], vec![ann(1, 1, 1, BIG), ann(2, 1, 1, b)]);
    let s = evaluate_bbox(&gt, &[det(1, 1, BIG, 0.9)]).unwrap();
    assert!(close(s.ap, 51.0 / 101.0), "{s:?}");
    assert!(close(s.ar100, 0.5) && close(s.ar_large, 0.5));
}

#[test]
fn iou_thresholds_count_one_by_one() {
    let gt = coco(&[1], &[1], vec![ann(1, 1, 1, BIG)]);
    // IoU 0.62: a hit at 0.50, 0.55, 0.60 only.
    let s = evaluate_bbox(&gt, &[det(1, 1, [0.0, 0.0, 100.0, 62.0], 0.9)]).unwrap();
    assert!(
        close(s.ap, 0.3) && close(s.ap50, 1.0) && close(s.ap75, 0.0),
        "{s:?}"
    );
    assert!(close(s.ar100, 0.3));
    // IoU 0.97: a hit at every threshold.
    let s = evaluate_bbox(&gt, &[det(1, 1, [0.0, 0.0, 100.0, 97.0], 0.9)]).unwrap();
    assert!(close(s.ap, 1.0) && close(s.ap75, 1.0), "{s:?}");
    // IoU 0.45: a false positive everywhere.
    let s = evaluate_bbox(&gt, &[det(1, 1, [0.0, 0.0, 100.0, 45.0], 0.9)]).unwrap();
    assert!(
        close(s.ap, 0.0) && close(s.ap50, 0.0) && close(s.ar100, 0.0),
        "{s:?}"
    );
}

#[test]
fn detections_on_a_crowd_region_are_ignored() {
    // A: 50×50 box; C: a crowd region. Two detections inside C rank first; without the crowd
    // rule they would be false positives and AP would be 1/3.
    let mut crowd = ann(2, 1, 1, [100.0, 0.0, 100.0, 100.0]);
    crowd.crowd = true;
    let a = [0.0, 0.0, 50.0, 50.0];
    let gt = coco(&[1], &[1], vec![ann(1, 1, 1, a), crowd]);
    let dets = [
        det(1, 1, [110.0, 10.0, 30.0, 30.0], 0.95),
        det(1, 1, [150.0, 50.0, 20.0, 20.0], 0.94),
        det(1, 1, a, 0.9),
    ];
    let s = evaluate_bbox(&gt, &dets).unwrap();
    assert!(close(s.ap, 1.0) && close(s.ar100, 1.0), "{s:?}");
    // The crowd region is not a miss either: only A counts.
    assert_eq!(s.per_category[0].gt_boxes, 1);
}

#[test]
fn a_counted_box_is_preferred_to_a_better_overlapping_crowd_region() {
    // The detection overlaps A with IoU 0.62 and lies inside the crowd region (crowd IoU 1).
    // At 0.50–0.60 it matches A (counted boxes come first and the search stops at the ignored
    // ones); from 0.65 on only the crowd region qualifies, so it is ignored and A is missed.
    let mut crowd = ann(2, 1, 1, BIG);
    crowd.crowd = true;
    let gt = coco(&[1], &[1], vec![crowd, ann(1, 1, 1, BIG)]);
    let s = evaluate_bbox(&gt, &[det(1, 1, [0.0, 0.0, 100.0, 62.0], 0.9)]).unwrap();
    assert!(
        close(s.ap50, 1.0) && close(s.ap, 0.3) && close(s.ap75, 0.0),
        "{s:?}"
    );
}

#[test]
fn small_objects_count_only_in_the_small_range() {
    // Small box found, large box missed.
    let small = [0.0, 0.0, 20.0, 20.0];
    let large = [100.0, 100.0, 120.0, 120.0];
    let gt = coco(&[1], &[1], vec![ann(1, 1, 1, small), ann(2, 1, 1, large)]);
    let s = evaluate_bbox(&gt, &[det(1, 1, small, 0.9)]).unwrap();
    assert!(close(s.ap_small, 1.0) && close(s.ar_small, 1.0), "{s:?}");
    assert!(close(s.ap_large, 0.0) && close(s.ar_large, 0.0), "{s:?}");
    assert_eq!((s.ap_medium, s.ar_medium), (-1.0, -1.0));
    assert!(close(s.ap, 51.0 / 101.0));
}

#[test]
fn size_ranges_read_the_area_field_and_the_detection_box() {
    // A 40×40 box (1600 px², medium by its box) whose `area` field says 500 (small).
    let b = [0.0, 0.0, 40.0, 40.0];
    let mut a = ann(1, 1, 1, b);
    a.area = Some(500.0);
    let gt = coco(&[1], &[1], vec![a]);
    // A higher-ranked unmatched 50×50 detection (medium) is a false positive in "all" but is
    // ignored in "small".
    let dets = [det(1, 1, [500.0, 500.0, 50.0, 50.0], 0.95), det(1, 1, b, 0.9)];
    let s = evaluate_bbox(&gt, &dets).unwrap();
    assert!(close(s.ap_small, 1.0), "{s:?}");
    assert_eq!(s.ap_medium, -1.0);
    assert!((s.ap - 0.5).abs() < 1e-9, "{s:?}");
}

#[test]
fn an_image_without_detections_holds_misses() {
    let gt = coco(&[1, 2], &[1], vec![ann(1, 1, 1, BIG), ann(2, 2, 1, BIG)]);
    let s = evaluate_bbox(&gt, &[det(1, 1, BIG, 0.9)]).unwrap();
    assert!(close(s.ap, 51.0 / 101.0) && close(s.ar100, 0.5), "{s:?}");
    // No detection at all: zero wherever there is ground truth.
    let s = evaluate_bbox(&gt, &[]).unwrap();
    assert_eq!(s.ap, 0.0);
    assert_eq!(s.ar100, 0.0);
    assert_eq!(s.ap_small, -1.0);
}

#[test]
fn detections_on_an_image_without_ground_truth_are_false_positives() {
    // ranked: false positive on image 2 (0.9), hit on image 1 (0.8): precision [0, 1/2],
    // recall [0, 1] → every recall point at 1/2.
    let gt = coco(&[1, 2], &[1], vec![ann(1, 1, 1, BIG)]);
    let s = evaluate_bbox(&gt, &[det(2, 1, BIG, 0.9), det(1, 1, BIG, 0.8)]).unwrap();
    assert!((s.ap - 0.5).abs() < 1e-9, "{s:?}");
    assert!(close(s.ar100, 1.0));
}

#[test]
fn categories_without_ground_truth_leave_the_mean() {
    let gt = coco(&[1], &[3, 7], vec![ann(1, 1, 3, BIG)]);
    let dets = [
        det(1, 3, BIG, 0.9),
        det(1, 7, BIG, 0.8),
        // A category the ground truth does not list is skipped.
        det(1, 99, BIG, 0.99),
    ];
    let s = evaluate_bbox(&gt, &dets).unwrap();
    assert!(close(s.ap, 1.0) && close(s.ar100, 1.0), "{s:?}");
    assert_eq!(s.categories, 2);
    assert_eq!(s.per_category[0].category_id, 3);
    assert!(close(s.per_category[0].ap, 1.0));
    assert_eq!((s.per_category[1].category_id, s.per_category[1].ap), (7, -1.0));
    assert_eq!(s.per_category[1].gt_boxes, 0);
}

#[test]
fn max_dets_truncates_per_image_and_category() {
    let gt = coco(&[1], &[1, 2], vec![ann(1, 1, 1, BIG)]);
    // A false positive ranked above the hit: AR@1 sees only the false positive.
    let s = evaluate_bbox(&gt, &[det(1, 1, far(0), 0.9), det(1, 1, BIG, 0.8)]).unwrap();
    assert!(
        close(s.ar1, 0.0) && close(s.ar10, 1.0) && close(s.ar100, 1.0),
        "{s:?}"
    );
    // 100 higher-ranked false positives push the hit out of the 100 kept.
    let mut dets: Vec<CocoDetection> = (0..100).map(|i| det(1, 1, far(i), 0.5)).collect();
    dets.push(det(1, 1, BIG, 0.4));
    let s = evaluate_bbox(&gt, &dets).unwrap();
    assert!(close(s.ap, 0.0) && close(s.ar100, 0.0), "{s:?}");
    // The limit is per category: 100 boxes of category 2 do not push out category 1's hit.
    let mut dets: Vec<CocoDetection> = (0..100).map(|i| det(1, 2, far(i), 0.5)).collect();
    dets.push(det(1, 1, BIG, 0.4));
    let s = evaluate_bbox(&gt, &dets).unwrap();
    assert!(close(s.ap, 1.0) && close(s.ar100, 1.0), "{s:?}");
}

#[test]
fn score_ties_keep_file_order_within_an_image_and_image_order_across() {
    let gt = coco(&[1, 2], &[1], vec![ann(1, 1, 1, BIG)]);
    let miss = det(1, 1, far(0), 0.9);
    let hit = det(1, 1, BIG, 0.9);
    let s = evaluate_bbox(&gt, &[miss, hit]).unwrap();
    assert!((s.ap - 0.5).abs() < 1e-9, "{s:?}");
    let s = evaluate_bbox(&gt, &[hit, miss]).unwrap();
    assert!(close(s.ap, 1.0), "{s:?}");
    // Across images the tie goes to the smaller image id, whatever the file order: the false
    // positive on image 2 ranks after the hit on image 1.
    let s = evaluate_bbox(&gt, &[det(2, 1, BIG, 0.9), hit]).unwrap();
    assert!(close(s.ap, 1.0), "{s:?}");
    let gt = coco(&[1, 2], &[1], vec![ann(1, 2, 1, BIG)]);
    let s = evaluate_bbox(&gt, &[det(2, 1, BIG, 0.9), det(1, 1, BIG, 0.9)]).unwrap();
    assert!((s.ap - 0.5).abs() < 1e-9, "{s:?}");
}

#[test]
fn annotation_id_zero_never_matches_as_in_pycocotools() {
    let gt = coco(&[1], &[1], vec![ann(0, 1, 1, BIG)]);
    let s = evaluate_bbox(&gt, &[det(1, 1, BIG, 0.9)]).unwrap();
    assert_eq!((s.ap, s.ar100), (0.0, 0.0));
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn files_round_trip_and_unknown_keys_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let gt_path = write(
        tmp.path(),
        "gt.json",
        r#"{"info": {"year": 2017}, "licenses": [],
            "images": [{"id": 5, "file_name": "a.png", "width": 640, "height": 480}, {"id": 2}],
            "categories": [{"id": 18, "name": "dog", "supercategory": "animal"}],
            "annotations": [
              {"id": 1, "image_id": 5, "category_id": 18, "bbox": [0, 0, 100, 100], "area": 10000,
               "iscrowd": 0, "segmentation": [[0, 0, 100, 0, 100, 100]], "ignore": 1},
              {"id": 2, "image_id": 2, "category_id": 18, "bbox": [10.5, 0, 30, 30], "area": 900.0,
               "iscrowd": 1, "segmentation": {"counts": "abc", "size": [480, 640]}}]}"#,
    );
    let gt = CocoGt::from_file(&gt_path).unwrap();
    assert_eq!(gt.image_ids(), &[2, 5]);
    assert_eq!(gt.category_ids(), &[18]);
    assert!(gt.annotations()[1].iscrowd && !gt.annotations()[0].iscrowd);
    let dets = vec![det(5, 18, BIG, 0.75), det(2, 18, [10.5, 1.25, 3.0, 4.0], 0.125)];
    let dt_path = tmp.path().join("sub/dt.json");
    write_detections(&dt_path, &dets).unwrap();
    assert_eq!(read_detections(&dt_path).unwrap(), dets);
    // The `ignore` key does not count (pycocotools overwrites it with `iscrowd`).
    let s = evaluate_bbox(&gt, &dets).unwrap();
    assert!(close(s.ap, 1.0), "{s:?}");
    // Extra keys in a results file are skipped too.
    let p = write(
        tmp.path(),
        "dt2.json",
        r#"[{"image_id": 5, "category_id": 18, "bbox": [0, 0, 1, 1], "score": 1, "segmentation": []}]"#,
    );
    assert_eq!(read_detections(&p).unwrap().len(), 1);
}

fn err_of<T: std::fmt::Debug>(r: kd_core::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn bad_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let gt_with = |ann: &str| {
        format!(r#"{{"images": [{{"id": 1}}], "categories": [{{"id": 1}}], "annotations": [{ann}]}}"#)
    };
    let cases = [
        (
            r#"{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5], "area": 1, "iscrowd": 0}"#,
            "annotation id 7: bbox must be [x, y, w, h]",
        ),
        (
            r#"{"id": 8, "image_id": 1, "category_id": 1, "bbox": [0, 0, -5, 5], "area": 1}"#,
            "annotation id 8: bbox [0.0, 0.0, -5.0, 5.0] has a negative",
        ),
        (
            r#"{"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, "x"], "area": 1}"#,
            "annotation id 9: bbox must be four numbers",
        ),
        (
            r#"{"id": 10, "image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 1}"#,
            "annotation id 10: image_id 3 is not among the images",
        ),
        (
            r#"{"id": 11, "image_id": 1, "category_id": 4, "bbox": [0, 0, 5, 5], "area": 1}"#,
            "annotation id 11: category_id 4 is not among the categories",
        ),
        (
            r#"{"id": 12, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}"#,
            "annotation id 12: area is missing",
        ),
        (
            r#"{"id": 13, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 1, "iscrowd": 2}"#,
            "annotation id 13: iscrowd must be 0 or 1",
        ),
        (
            r#"{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 1}"#,
            "annotations[0]: id is missing",
        ),
    ];
    for (i, (ann, want)) in cases.iter().enumerate() {
        let p = write(tmp.path(), &format!("gt{i}.json"), &gt_with(ann));
        let msg = err_of(CocoGt::from_file(&p));
        assert!(
            msg.contains(&format!("gt{i}.json")) && msg.contains(want),
            "{msg}"
        );
    }
    let dup = gt_with(
        r#"{"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 1},
           {"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 1}"#,
    );
    let p = write(tmp.path(), "dup.json", &dup);
    assert!(err_of(CocoGt::from_file(&p)).contains("annotation id 4: the id is used twice"));
    let p = write(tmp.path(), "noimg.json", r#"{"categories": []}"#);
    assert!(err_of(CocoGt::from_file(&p)).contains("no \"images\" list"));
    let missing = tmp.path().join("missing.json");
    let msg = err_of(CocoGt::from_file(&missing));
    assert!(
        msg.contains("missing.json") && msg.contains("cannot read"),
        "{msg}"
    );
    let msg = err_of(read_detections(&missing));
    assert!(
        msg.contains("missing.json") && msg.contains("cannot read"),
        "{msg}"
    );

    // Results files.
    let p = write(
        tmp.path(),
        "short.json",
        r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5], "score": 0.5}]"#,
    );
    let msg = err_of(read_detections(&p));
    assert!(msg.contains("short.json") && msg.contains("length 3"), "{msg}");
    let p = write(
        tmp.path(),
        "neg.json",
        r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5},
            {"image_id": 4, "category_id": 1, "bbox": [0, 0, 5, -1], "score": 0.5}]"#,
    );
    let msg = err_of(read_detections(&p));
    assert!(
        msg.contains("neg.json") && msg.contains("detection #1 (image_id 4)") && msg.contains("negative"),
        "{msg}"
    );
    let p = write(tmp.path(), "obj.json", r#"{"image_id": 1}"#);
    assert!(err_of(read_detections(&p)).contains("obj.json"));

    // A detection on an image the ground truth does not have.
    let gt = coco(&[1, 2], &[1], vec![ann(1, 1, 1, BIG)]);
    let msg = err_of(evaluate_bbox(&gt, &[det(1, 1, BIG, 0.5), det(42, 1, BIG, 0.5)]));
    assert!(
        msg.contains("detection #1") && msg.contains("image_id 42"),
        "{msg}"
    );
    let msg = err_of(evaluate_bbox(&gt, &[det(1, 1, BIG, f64::NAN)]));
    assert!(msg.contains("detection #0") && msg.contains("score"), "{msg}");
    let msg = err_of(write_detections(
        &tmp.path().join("nan.json"),
        &[det(1, 1, BIG, f64::NAN)],
    ));
    assert!(msg.contains("nan.json"), "{msg}");
}
