//! The quick recipes on data of another size: budgets in optimiser updates, the teacher's
//! early stop on a held-out split, and what `results.json` says each row got.

use std::path::Path;

mod common;
use common::*;

/// The cifar100 table's quick recipe as shipped (its `min_updates` floors, the teacher's early
/// stop, learning rates and schedules, 16×16 inputs), on the first 1000 training images
/// instead of 10 000, with the no-KD and KD rows. The pair is smaller so that it runs in a test:
/// resnet8x4 → LeNet-5-half (the selfreg table's student). The shipped resnet32x4 overfits 900
/// images without augmentation and lands below its resnet8x4 student there (the table then
/// warns); this test is about the budgets, so it takes a pair with a capacity gap that holds.
fn quick_recipe_on_1000_images() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/cifar100.quick.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let kd_row = text.find("label = \"KD\"").unwrap();
    let end = kd_row + text[kd_row..].find("\n\n").unwrap();
    let text = text[..end].to_string() + "\n";
    for needle in [
        "min_updates = 840",
        "early_stop = {",
        "min_updates = 313",
        "arch = \"resnet32x4\"",
        "arch = \"resnet8x4\"",
        "resize = 16",
    ] {
        assert!(text.contains(needle), "the quick config no longer has {needle:?}");
    }
    let student = text.find("[student]").unwrap();
    let (head, tail) = text.split_at(student);
    head.replace("arch = \"resnet32x4\"", "arch = \"resnet8x4\"")
        .replace("resize = 16", "resize = 16\ntrain_subset = 1000")
        + &tail.replacen("arch = \"resnet8x4\"", "arch = \"lenet5_half\"", 1)
}

#[test]
fn on_1000_images_the_quick_teacher_trains_long_enough_to_teach() {
    let dir = tempfile::tempdir().unwrap();
    let (out, out_dir) = reproduce_text(dir.path(), "cifar100", &quick_recipe_on_1000_images(), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let results = json(&out_dir.join("results.json"));
    let rows = results["rows"].as_array().unwrap();
    let row = |label: &str| {
        rows.iter()
            .find(|r| r["method"].as_str().unwrap().contains(label))
            .unwrap_or_else(|| panic!("no row {label:?} in {rows:?}"))
    };
    let (teacher, none, kd) = (row("teacher"), row("no KD"), row("KD"));
    let mean = |r: &serde_json::Value| r["mean"].as_f64().unwrap();
    let budget = |r: &serde_json::Value, key: &str| -> Vec<u64> {
        r["budget"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };

    // 900 images trained on (100 held out) at batch 32: 29 updates an epoch, so the floor of
    // 840 updates asks for 29 epochs (the written 3 would give 87); the early stop may end it
    // sooner, but only inside the stopping window (from epoch 23 of 29: the last quarter) and
    // once the held-out top-1 has stalled there for 3 epochs.
    let epochs = budget(teacher, "epochs_per_seed")[0] as usize;
    let kept = budget(teacher, "kept_epoch_per_seed")[0] as usize;
    assert!((23..=29).contains(&epochs), "teacher epochs {epochs}");
    assert!((23..=epochs).contains(&kept), "kept epoch {kept} of {epochs}");
    assert!(
        epochs == 29 || epochs == kept + 3,
        "stopped at {epochs}, kept {kept}"
    );
    assert_eq!(budget(teacher, "updates_per_seed")[0], 29 * epochs as u64);
    assert_eq!(budget(teacher, "images_per_seed")[0], 900 * epochs as u64);
    // The students: 1000 images, 32 updates an epoch, 313 updates asked for: 10 epochs.
    for r in [none, kd] {
        assert_eq!(budget(r, "epochs_per_seed"), [10, 10]);
        assert_eq!(budget(r, "updates_per_seed"), [320, 320]);
        assert_eq!(budget(r, "images_per_seed"), [10_000, 10_000]);
    }
    // The printed table states each row's budget.
    let md = std::fs::read_to_string(out_dir.join("results.md")).unwrap();
    assert!(md.contains("budget (updates / images seen)"), "{md}");
    assert!(md.contains("| 320 / 10,000 |"), "{md}");

    // A teacher, and a KD row that is not worse than learning alone beyond the seed spread.
    assert!(teacher["teacher_warning"].is_null(), "{teacher}");
    assert!(results.get("warnings").is_none(), "{results}");
    assert!(
        mean(teacher) > mean(none),
        "teacher {} vs no KD {}",
        mean(teacher),
        mean(none)
    );
    let spread = none["std"].as_f64().unwrap().max(kd["std"].as_f64().unwrap());
    assert!(
        mean(kd) >= mean(none) - spread,
        "KD {} ± {} vs no KD {} ± {}",
        mean(kd),
        kd["std"],
        mean(none),
        none["std"]
    );
}
