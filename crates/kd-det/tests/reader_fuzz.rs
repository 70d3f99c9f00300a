//! COCO annotation files, results files and images come from downloads, converters and other
//! people's inference scripts, so the readers see whatever bytes a disk holds. Whatever the
//! bytes, a reader must answer with an error that names the file — never a panic, an endless
//! loop or an allocation far larger than the file. These properties feed the readers random
//! bytes, damaged copies of valid files and valid JSON with one value replaced by a hostile
//! one, with fixed seeds so every run sees the same inputs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use kd_det::data::{open_coco, DetSource};
use kd_det::metrics::{read_detections, CocoGt};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Value};

#[path = "../../kd-core/tests/common/fuzz.rs"]
mod fuzz;
use fuzz::{apply, base, mutated, names_file, property, scratch, Files};

fn instances() -> Value {
    json!({
        "info": {"description": "fuzz"}, "licenses": [],
        "images": [
            {"id": 7, "file_name": "a.png", "width": 10, "height": 8},
            {"id": 3, "file_name": "b.jpg", "width": 6, "height": 5}
        ],
        "annotations": [
            {"id": 100, "image_id": 7, "category_id": 90, "bbox": [1, 2, 3.5, 4], "area": 11.0,
             "iscrowd": 0, "segmentation": [[1, 2, 3, 4]]},
            {"id": 101, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 20, "iscrowd": 1},
            {"id": 102, "image_id": 3, "category_id": 3, "bbox": [4, 4, 0.5, 3], "area": 1.5}
        ],
        "categories": [
            {"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}
        ]
    })
}

fn results() -> Value {
    json!([
        {"image_id": 7, "category_id": 1, "bbox": [0.5, 0.25, 4, 5], "score": 0.9},
        {"image_id": 3, "category_id": 3, "bbox": [4, 4, 1, 3], "score": 0.125, "segmentation": []}
    ])
}

fn json_files() -> Files {
    static F: OnceLock<Files> = OnceLock::new();
    F.get_or_init(|| {
        Arc::new(vec![
            (
                "instances.json".into(),
                serde_json::to_vec_pretty(&instances()).unwrap(),
            ),
            ("results.json".into(), serde_json::to_vec(&results()).unwrap()),
        ])
    })
    .clone()
}

/// The image folder the annotation file names, private to the calling thread.
fn image_dir() -> PathBuf {
    thread_local! {
        static DIR: PathBuf = {
            let d = scratch("images");
            std::fs::create_dir_all(&d).unwrap();
            image::RgbImage::from_pixel(10, 8, image::Rgb([1, 2, 3])).save(d.join("a.png")).unwrap();
            image::RgbImage::from_pixel(6, 5, image::Rgb([200, 100, 50])).save(d.join("b.jpg")).unwrap();
            d
        };
    }
    DIR.with(PathBuf::clone)
}

/// Every reader of COCO JSON on the same bytes: the evaluator's ground truth, the results
/// reader and the training dataset (with each image decoded).
fn read_json(bytes: &[u8]) -> Result<(), String> {
    let p = scratch("instances_val2017.json");
    std::fs::write(&p, bytes).unwrap();
    names_file(&p, CocoGt::from_file(&p))?;
    names_file(&p, read_detections(&p))?;
    match open_coco(&p, &image_dir()) {
        Ok(ds) => {
            for (i, info) in ds.images().iter().enumerate() {
                if let Ok(img) = ds.image(i) {
                    let got = (img.width() as usize, img.height() as usize);
                    if got != (info.width, info.height) {
                        return Err(format!(
                            "image id {} declared {}×{} was accepted at {}×{}",
                            info.id, info.width, info.height, got.0, got.1
                        ));
                    }
                }
                let _ = info.targets();
            }
            let _ = ds.indices_with_objects();
            Ok(())
        }
        Err(e) => names_file(&p, Err::<(), _>(e)),
    }
}

#[test]
fn coco_json_arbitrary_bytes() {
    let token = select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\"images\"",
        "\"annotations\"",
        "\"categories\"",
        "\"id\"",
        "\"bbox\"",
        "\"width\"",
        "1",
        "-1",
        "0.5",
        "1e999",
        "-0",
        "null",
        "true",
        "\"a.png\"",
        " ",
        "18446744073709551616",
        "\\u0000",
        "\\ud800",
    ]);
    let s = prop_oneof![
        vec(token, 0..60).prop_map(|t| t.concat().into_bytes()),
        vec(any::<u8>(), 0..120),
    ];
    property("coco_json_arbitrary_bytes", 800, 31, s, |b| read_json(b));
}

#[test]
fn coco_json_damaged_files() {
    property(
        "coco_json_damaged_files",
        1500,
        32,
        mutated(json_files(), 3),
        |(name, edits)| read_json(&apply(base(&json_files(), name), edits)),
    );
}

/// Values a broken converter or a hostile file puts where a number, id or list belongs.
fn hostile_value() -> impl Strategy<Value = Value> {
    select(vec![
        Value::Null,
        json!(-1),
        json!(0),
        json!(1),
        json!(-1.5),
        json!(1e308),
        json!(-1e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(4294967306u64),
        json!(1u64 << 53),
        json!("7"),
        json!(""),
        json!(true),
        json!([]),
        json!([1, 2, 3]),
        json!([0, 0, 1e308, 1e308]),
        json!([-1e308, -1e308, 1e308, 1e308]),
        json!({}),
        json!([[[[[[[[1]]]]]]]]),
        json!("../../../../etc/passwd"),
        json!("a.png"),
    ])
}

/// Every node of `v`, depth first, as a path of keys and indices.
fn node_paths(v: &Value, here: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                here.push(json!(k));
                node_paths(x, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                here.push(json!(i));
                node_paths(x, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn replace_node(mut doc: Value, which: Index, with: Value) -> Value {
    let mut paths = Vec::new();
    node_paths(&doc, &mut Vec::new(), &mut paths);
    let path = &paths[which.index(paths.len())];
    let mut at = &mut doc;
    for step in path {
        at = match step {
            Value::String(k) => &mut at[k.as_str()],
            _ => &mut at[step.as_u64().unwrap() as usize],
        };
    }
    *at = with;
    doc
}

#[test]
fn coco_json_with_hostile_values() {
    let s = (
        select(vec![0u8, 1]),
        vec((any::<Index>(), hostile_value()), 1..=3),
    );
    property("coco_json_with_hostile_values", 2000, 33, s, |(which, edits)| {
        let mut doc = if *which == 0 { instances() } else { results() };
        for (at, v) in edits {
            doc = replace_node(doc, *at, v.clone());
        }
        read_json(&serde_json::to_vec(&doc).unwrap())
    });
}

#[test]
fn coco_images_damaged() {
    // The images a valid annotation file names, damaged: decoding must fail naming the image.
    let encode = |img: image::DynamicImage, f| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, f).unwrap();
        out.into_inner()
    };
    let a = encode(
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(10, 8, image::Rgb([1, 2, 3]))),
        image::ImageFormat::Png,
    );
    let b = encode(
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(6, 5, image::Rgb([200, 100, 50]))),
        image::ImageFormat::Jpeg,
    );
    static IMAGES: OnceLock<Files> = OnceLock::new();
    IMAGES.get_or_init(|| Arc::new(vec![("a.png".into(), a), ("b.jpg".into(), b)]));
    let files = IMAGES.get().unwrap().clone();
    property(
        "coco_images_damaged",
        1000,
        34,
        mutated(files, 3),
        |(name, edits)| {
            let dir = scratch("damaged");
            std::fs::create_dir_all(&dir).unwrap();
            let images = IMAGES.get().unwrap();
            for (n, good) in images.iter() {
                let bytes = if n == name {
                    apply(good, edits)
                } else {
                    good.clone()
                };
                std::fs::write(dir.join(n), bytes).unwrap();
            }
            let ann = dir.join("instances_val2017.json");
            std::fs::write(&ann, serde_json::to_vec(&instances()).unwrap()).unwrap();
            let ds = open_coco(&ann, &dir).map_err(|e| e.to_string())?;
            let k = usize::from(name == "b.jpg");
            names_file(Path::new(name), ds.image(k))
        },
    );
}

#[test]
fn declared_sizes_are_compared_in_full() {
    // 2^32 + 10 wide: equal to the file's 10 px only after truncation to 32 bits.
    let mut doc = instances();
    doc["images"][0]["width"] = json!(4294967306u64);
    let p = scratch("instances_val2017.json");
    std::fs::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
    let e = match open_coco(&p, &image_dir()) {
        Ok(ds) => ds.image(0).unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("4294967306"), "{e}");
}
