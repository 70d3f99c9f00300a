//! The detection table end to end on a tiny generated COCO tree: every method, `init_student`,
//! the results format, `--resume`, `--teacher`, and the class-count check, through the `kd`
//! binary.

mod common;
use common::*;

/// A tiny table: at most 64×56 generated scenes, narrow detectors, two steps an epoch.
fn tiny_det_experiment(num_classes: usize) -> String {
    let train = r#"epochs = 2
batch_size = 2
max_steps_per_epoch = 2
grad_clip = 35.0
optimizer = { kind = "sgd", momentum = 0.9, weight_decay = 1e-4 }
lr = { lr = 0.01, warmup_epochs = 0.5, warmup_start = 0.001, schedule = { kind = "multistep", milestones = [1], gamma = 0.1 } }"#;
    let net = |width: usize| {
        format!(
            "{{ backbone = \"r18\", width = {width}, fpn_channels = 16, start_level = 3, end_level = 5, stacked_convs = 1, num_classes = {num_classes} }}"
        )
    };
    format!(
        r#"table = "coco"
scale = "quick"
paper_dataset = "COCO val2017"

[data]
synth = {{ train = 8, val = 4, width = [48, 64], height = [40, 56], object_size = [6.0, 36.0], empty_prob = 0.2, crowd_prob = 0.5, seed = 3 }}
augment = {{ img_scale = [64, 64], flip_prob = 0.5 }}
eval_batch = 3

[teacher]
label = "teacher (tiny)"
net = {teacher}

[teacher.train]
{train}

[[students]]
name = "s"
net = {student}

[students.train]
{train}

[[rows]]
label = "S (no KD)"
student = "s"
method = {{ kind = "none" }}

[[rows]]
label = "S + CWD"
student = "s"
method = {{ kind = "cwd", tau = 1.0, weight = 10.0, taps = ["p3", "p4", "p5"] }}

[[rows]]
label = "S + GDD"
student = "s"
init_student = true

[rows.method]
kind = "gdd"
levels = [
    {{ student_tap = "p3", teacher_tap = "p3", alpha = 4.0 }},
    {{ student_tap = "p4", teacher_tap = "p4", alpha = 4.0 }},
    {{ student_tap = "p5", teacher_tap = "p5", alpha = 4.0 }},
]

[[references]]
label = "paper pair: Faster R-CNN R50-FPN 2x"
paper = 38.4

[picture]
file = "detections.png"
images = 2
rows = ["S (no KD)", "S + GDD"]
min_score = 0.0
"#,
        teacher = net(8),
        student = net(8),
    )
}

#[test]
fn the_detection_table_runs_resumes_and_takes_a_given_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("det.toml");
    std::fs::write(&cfg, tiny_det_experiment(6)).unwrap();
    let out_dir = dir.path().join("run");
    let (cfg_s, out_s) = (cfg.to_str().unwrap(), out_dir.to_str().unwrap());
    let args = one_seed("coco", cfg_s, out_s);
    let out = kd(&args, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let results = json(&out_dir.join("results.json"));
    let rows = results["rows"].as_array().unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(
        labels,
        [
            "teacher (tiny)",
            "S (no KD)",
            "S + CWD",
            "S + GDD",
            "paper pair: Faster R-CNN R50-FPN 2x"
        ]
    );
    for r in &rows[..4] {
        assert_eq!(r["metric"], "box AP");
        let m = r["mean"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&m), "{r}");
    }
    for r in &rows[1..4] {
        let stats = &r["extra"]["coco_stats_mean"];
        for k in ["ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"] {
            assert!(stats.get(k).is_some(), "{k} missing in {stats}");
        }
    }
    // The reference row is listed, not measured.
    assert_eq!(rows[4]["per_seed"].as_array().unwrap().len(), 0);
    assert_eq!(rows[4]["paper"].as_f64(), Some(38.4));
    let md = std::fs::read_to_string(out_dir.join("results.md")).unwrap();
    assert!(
        md.contains("| paper pair: Faster R-CNN R50-FPN 2x | box AP | — |"),
        "{md}"
    );
    assert!(results["dataset"].as_str().unwrap().contains("not COCO val2017"));
    for f in ["results.md", "config.toml", "box_ap.png", "detections.png"] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    // The GDD row trained its levels, and the detections are in the COCO results format.
    let gdd_report = json(&out_dir.join("s-gdd/seed0/report.json"));
    assert!(gdd_report["history"][0]["terms"]["gdd"].as_f64().unwrap() > 0.0);
    let dets = json(&out_dir.join("s-gdd/seed0/detections.json"));
    for d in dets.as_array().unwrap() {
        let keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
        for k in ["image_id", "category_id", "bbox", "score"] {
            assert!(keys.contains(&k), "{d}");
        }
    }
    // The stand-in was written once in the official COCO layout.
    let synth: Vec<_> = std::fs::read_dir(dir.path().join("coco-synth"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("annotations/instances_val2017.json").is_file() && p.join("val2017").is_dir())
        .collect();
    assert_eq!(synth.len(), 1);

    // Resume: every row is complete, so nothing trains and the table is the same.
    let mut resume = args.to_vec();
    resume.push("--resume");
    let out = kd(&resume, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out_dir.join("results.json"))["rows"], results["rows"]);

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
    let mut given_args = one_seed("coco", cfg_s, out2.to_str().unwrap());
    given_args.extend(["--teacher", given.to_str().unwrap()]);
    let out = kd(&given_args, dir.path());
    // The tiny run's teacher learnt next to nothing: given, it stops the run unless accepted.
    assert_clean_error(&out, &["given.safetensors", "near chance"]);
    given_args.push("--weak-teacher");
    let out = kd(&given_args, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r2 = json(&out2.join("results.json"));
    assert!(r2["rows"][0]["method"].as_str().unwrap().contains("given"));
    assert_eq!(r2["rows"][0]["mean"], rows[0]["mean"]);
}

#[test]
fn a_class_count_that_does_not_match_the_data_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("det.toml");
    std::fs::write(&cfg, tiny_det_experiment(80)).unwrap();
    let out = kd(
        &[
            "reproduce",
            "coco",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            dir.path().join("run").to_str().unwrap(),
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("predicts 80 classes") && stderr.contains("instances_train2017.json"),
        "{stderr}"
    );
}
