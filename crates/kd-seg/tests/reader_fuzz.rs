//! Cityscapes images, label maps and saved predictions come from downloads, converters and
//! other people's inference scripts, so the readers see whatever bytes a disk holds. Whatever
//! the bytes, a reader must answer with an error that names the file — never a panic, an
//! endless loop or an allocation far larger than the file. These properties feed the readers
//! random bytes and damaged copies of valid PNGs, with fixed seeds so every run sees the same
//! inputs.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use kd_seg::data::{
    open_cityscapes, read_label_png, read_rgb_png, GrayImage, RgbImage, SegResize, SegSource,
};
use kd_seg::metrics::eval_cityscapes_dirs;
use kd_vision::image_ops::{write_label_png, write_rgb_png};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

#[path = "../../kd-core/tests/common/fuzz.rs"]
mod fuzz;
use fuzz::{apply, base, mutated, names_file, property, scratch, Files};

const STEM: &str = "aachen_000000_000001";

fn label_map() -> GrayImage {
    GrayImage::from_fn(8, 4, |x, y| {
        image::Luma([if y == 3 {
            1
        } else if x < 4 {
            7
        } else {
            26
        }])
    })
}

fn rgb_image() -> RgbImage {
    RgbImage::from_fn(8, 4, |x, y| image::Rgb([(x * 30) as u8, (y * 60) as u8, 5]))
}

/// Valid PNGs of the kinds a Cityscapes tree holds (label ids, RGB), plus a 16-bit grey and an
/// RGBA one that the label reader must turn down.
fn png_files() -> Files {
    static F: OnceLock<Files> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let lp = dir.path().join("l.png");
        write_label_png(&lp, &label_map()).unwrap();
        let ip = dir.path().join("i.png");
        write_rgb_png(&ip, &rgb_image()).unwrap();
        let encode = |img: image::DynamicImage| {
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
            out.into_inner()
        };
        let grey16: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
            image::ImageBuffer::from_fn(8, 4, |x, _| image::Luma([x as u16 * 1000]));
        let rgba = image::RgbaImage::from_pixel(8, 4, image::Rgba([1, 2, 3, 4]));
        Arc::new(vec![
            ("labelIds.png".into(), std::fs::read(&lp).unwrap()),
            ("leftImg8bit.png".into(), std::fs::read(&ip).unwrap()),
            (
                "grey16.png".into(),
                encode(image::DynamicImage::ImageLuma16(grey16)),
            ),
            ("rgba.png".into(), encode(image::DynamicImage::ImageRgba8(rgba))),
        ])
    })
    .clone()
}

fn read_png(bytes: &[u8]) -> Result<(), String> {
    let p = scratch(&format!("{STEM}_gtFine_labelIds.png"));
    std::fs::write(&p, bytes).unwrap();
    names_file(&p, read_label_png(&p))?;
    names_file(&p, read_rgb_png(&p))
}

#[test]
fn png_readers_arbitrary_bytes() {
    let prefixes = vec![
        Vec::new(),
        b"\x89PNG\r\n\x1a\n".to_vec(),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec(),
    ];
    let s = (select(prefixes), vec(any::<u8>(), 0..200)).prop_map(|(mut p, b)| {
        p.extend(b);
        p
    });
    property("png_readers_arbitrary_bytes", 500, 21, s, |b| read_png(b));
}

#[test]
fn png_readers_damaged_files() {
    property(
        "png_readers_damaged_files",
        2500,
        22,
        mutated(png_files(), 3),
        |(name, edits)| read_png(&apply(base(&png_files(), name), edits)),
    );
}

/// A one-image Cityscapes tree (`root/leftImg8bit/val`, `root/gtFine/val`) and a prediction
/// folder, private to the calling thread.
fn tree() -> PathBuf {
    thread_local! {
        static ROOT: PathBuf = {
            let root = scratch("cityscapes");
            let img_dir = root.join("leftImg8bit/val/aachen");
            let gt_dir = root.join("gtFine/val/aachen");
            let pred_dir = root.join("pred");
            for d in [&img_dir, &gt_dir, &pred_dir] {
                std::fs::create_dir_all(d).unwrap();
            }
            write_rgb_png(&img_dir.join(format!("{STEM}_leftImg8bit.png")), &rgb_image()).unwrap();
            write_label_png(&gt_dir.join(format!("{STEM}_gtFine_labelIds.png")), &label_map()).unwrap();
            write_label_png(&pred_dir.join(format!("{STEM}_pred_labelIds.png")), &label_map()).unwrap();
            root
        };
    }
    ROOT.with(PathBuf::clone)
}

/// The three files of the tree, by role.
fn tree_file(role: u8) -> PathBuf {
    let root = tree();
    match role % 3 {
        0 => root.join(format!("leftImg8bit/val/aachen/{STEM}_leftImg8bit.png")),
        1 => root.join(format!("gtFine/val/aachen/{STEM}_gtFine_labelIds.png")),
        _ => root.join(format!("pred/{STEM}_pred_labelIds.png")),
    }
}

/// Writes `bytes` over one file of the tree, opens the split, decodes the sample and
/// evaluates the prediction; then restores the file.
fn damaged_tree(role: u8, bytes: &[u8]) -> Result<(), String> {
    let root = tree();
    let target = tree_file(role);
    let good = std::fs::read(&target).unwrap();
    std::fs::write(&target, bytes).unwrap();
    let result = (|| {
        for resize in [None, Some(SegResize::Factor(0.37))] {
            match open_cityscapes(&root, "val", resize) {
                Ok(ds) => names_file(&target, ds.get(0))?,
                Err(e) => names_file(&target, Err::<(), _>(e))?,
            }
        }
        names_file(
            &target,
            eval_cityscapes_dirs(&root.join("pred"), &root.join("gtFine/val")),
        )
    })();
    std::fs::write(&target, good).unwrap();
    result
}

#[test]
fn cityscapes_tree_with_a_damaged_file() {
    let s = (0..3u8, mutated(png_files(), 3));
    property(
        "cityscapes_tree_with_a_damaged_file",
        800,
        23,
        s,
        |(role, (name, edits))| damaged_tree(*role, &apply(base(&png_files(), name), edits)),
    );
    let arbitrary = (0..3u8, vec(any::<u8>(), 0..100));
    property(
        "cityscapes_tree_with_an_arbitrary_file",
        150,
        24,
        arbitrary,
        |(role, b)| damaged_tree(*role, b),
    );
}
