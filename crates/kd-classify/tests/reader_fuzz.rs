//! Datasets arrive as downloads, partial copies and hand-made folders, so the IDX, CIFAR and
//! image readers see whatever bytes a disk holds. Whatever the bytes, a reader must answer with
//! an error that names the file — never a panic, an endless loop or an allocation far larger
//! than the file. These properties feed the readers random bytes and damaged copies of valid
//! files (truncated, bit-flipped, with lying length fields), with fixed seeds so every run sees
//! the same inputs.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use kd_classify::data::{
    decode_idx_images, decode_idx_labels, decode_image_file, decode_resize_center_crop, read_cifar_bin,
    read_idx_images, read_idx_labels, write_idx_images, write_idx_labels, CifarKind, CIFAR_IMAGE_BYTES,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

#[path = "../../kd-core/tests/common/fuzz.rs"]
mod fuzz;
use fuzz::{apply, base, limit_memory, mutated, names_file, property, scratch, Files};

fn with_prefixes(prefixes: Vec<Vec<u8>>, max: usize) -> impl Strategy<Value = Vec<u8>> {
    (select(prefixes), vec(any::<u8>(), 0..max)).prop_map(|(mut p, b)| {
        p.extend(b);
        p
    })
}

// ---------------------------------------------------------------------------------------------
// IDX.

fn idx_files() -> Files {
    static F: OnceLock<Files> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 7) as u8).collect();
        for gz in [false, true] {
            let ip = dir.path().join("images");
            write_idx_images(&ip, 4, 5, &pixels, gz).unwrap();
            out.push((format!("images gz={gz}"), std::fs::read(&ip).unwrap()));
            let lp = dir.path().join("labels");
            write_idx_labels(&lp, &[0, 1, 2, 9, 4], gz).unwrap();
            out.push((format!("labels gz={gz}"), std::fs::read(&lp).unwrap()));
        }
        Arc::new(out)
    })
    .clone()
}

fn decode_idx(bytes: &[u8]) -> Result<(), String> {
    let p = Path::new("mnist/train-images-idx3-ubyte");
    names_file(p, decode_idx_images(bytes, p))?;
    let p = Path::new("mnist/train-labels-idx1-ubyte");
    names_file(p, decode_idx_labels(bytes, p))
}

#[test]
fn idx_arbitrary_bytes() {
    let prefixes = vec![
        Vec::new(),
        vec![0, 0, 8, 3],
        vec![0, 0, 8, 1],
        vec![0x1f, 0x8b],
        vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
    ];
    property(
        "idx_arbitrary_bytes",
        1000,
        11,
        with_prefixes(prefixes, 64),
        |b| decode_idx(b),
    );
}

#[test]
fn idx_damaged_files() {
    property(
        "idx_damaged_files",
        3000,
        12,
        mutated(idx_files(), 3),
        |(name, edits)| {
            let bytes = apply(base(&idx_files(), name), edits);
            decode_idx(&bytes)?;
            // The same bytes from disk.
            let p = scratch("t10k-images-idx3-ubyte.gz");
            std::fs::write(&p, &bytes).unwrap();
            names_file(&p, read_idx_images(&p))?;
            names_file(&p, read_idx_labels(&p))
        },
    );
}

// ---------------------------------------------------------------------------------------------
// CIFAR binary.

fn cifar_files() -> Files {
    static F: OnceLock<Files> = OnceLock::new();
    F.get_or_init(|| {
        let mut out = Vec::new();
        for (kind, name) in [
            (CifarKind::Cifar10, "data_batch_1.bin"),
            (CifarKind::Cifar100, "train.bin"),
        ] {
            let mut b = Vec::new();
            for (i, y) in [3u8, 9].into_iter().enumerate() {
                if kind == CifarKind::Cifar100 {
                    b.push(y / 5);
                }
                b.push(y);
                b.extend((0..CIFAR_IMAGE_BYTES).map(|k| (k + i) as u8));
            }
            out.push((name.to_string(), b));
        }
        Arc::new(out)
    })
    .clone()
}

fn read_cifar(bytes: &[u8]) -> Result<(), String> {
    let p = scratch("data_batch_1.bin");
    std::fs::write(&p, bytes).unwrap();
    for kind in [CifarKind::Cifar10, CifarKind::Cifar100] {
        let r = read_cifar_bin(&p, kind);
        if let Ok((pixels, labels)) = &r {
            if pixels.len() != labels.len() * CIFAR_IMAGE_BYTES || pixels.len() > bytes.len() {
                return Err(format!(
                    "{} pixel bytes for {} labels",
                    pixels.len(),
                    labels.len()
                ));
            }
        }
        names_file(&p, r)?;
    }
    Ok(())
}

#[test]
fn cifar_arbitrary_and_damaged() {
    // Sizes around whole records matter more than content here.
    let sizes = prop_oneof![
        0..64usize,
        (0..4usize, 0..3usize).prop_map(|(n, d)| n * 3073 + d * 3074)
    ];
    let arbitrary = (sizes, any::<u8>()).prop_map(|(n, fill)| vec![fill; n]);
    property("cifar_arbitrary_bytes", 200, 13, arbitrary, |b| read_cifar(b));
    property(
        "cifar_damaged_files",
        300,
        14,
        mutated(cifar_files(), 3),
        |(name, edits)| read_cifar(&apply(base(&cifar_files(), name), edits)),
    );
}

// ---------------------------------------------------------------------------------------------
// Image files (ImageFolder, ImageNet evaluation).

fn encoded(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn image_files() -> Files {
    static F: OnceLock<Files> = OnceLock::new();
    F.get_or_init(|| {
        use image::{DynamicImage as D, ImageFormat as F};
        let rgb = image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 99]));
        let grey = image::GrayImage::from_fn(6, 3, |x, y| image::Luma([(x * y * 9) as u8]));
        let rgba = image::RgbaImage::from_fn(4, 4, |x, y| image::Rgba([x as u8, y as u8, 7, 128]));
        let wide: image::ImageBuffer<image::Rgb<u16>, Vec<u16>> =
            image::ImageBuffer::from_fn(3, 2, |x, _| image::Rgb([x as u16 * 999, 1, 65535]));
        Arc::new(vec![
            ("rgb.png".into(), encoded(D::ImageRgb8(rgb.clone()), F::Png)),
            ("grey.png".into(), encoded(D::ImageLuma8(grey.clone()), F::Png)),
            ("rgba.png".into(), encoded(D::ImageRgba8(rgba), F::Png)),
            ("rgb16.png".into(), encoded(D::ImageRgb16(wide), F::Png)),
            ("rgb.jpg".into(), encoded(D::ImageRgb8(rgb), F::Jpeg)),
            ("grey.jpg".into(), encoded(D::ImageLuma8(grey), F::Jpeg)),
        ])
    })
    .clone()
}

fn decode_image(bytes: &[u8]) -> Result<(), String> {
    let p = scratch("n01440764_10026.JPEG");
    std::fs::write(&p, bytes).unwrap();
    for channels in [1, 3] {
        let r = decode_image_file(&p, (4, 6), channels);
        if let Ok(px) = &r {
            if px.len() != channels * 24 {
                return Err(format!("{} bytes for a {channels}×4×6 image", px.len()));
            }
        }
        names_file(&p, r)?;
    }
    let r = decode_resize_center_crop(&p, 8, 6);
    if let Ok(px) = &r {
        if px.len() != 3 * 36 {
            return Err(format!("{} bytes for a 3×6×6 crop", px.len()));
        }
    }
    names_file(&p, r)
}

#[test]
fn image_decode_arbitrary_bytes() {
    let prefixes = vec![
        Vec::new(),
        b"\x89PNG\r\n\x1a\n".to_vec(),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec(),
        vec![0xff, 0xd8, 0xff],
        vec![0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0],
    ];
    property(
        "image_decode_arbitrary_bytes",
        1000,
        15,
        with_prefixes(prefixes, 200),
        |b| decode_image(b),
    );
}

#[test]
fn image_decode_damaged_files() {
    property(
        "image_decode_damaged_files",
        2500,
        16,
        mutated(image_files(), 3),
        |(name, edits)| decode_image(&apply(base(&image_files(), name), edits)),
    );
}

#[test]
fn extreme_aspect_ratio_is_an_error_not_a_giant_resize() {
    limit_memory();
    // A few hundred bytes of PNG whose evaluation resize (short side to 256) would need a
    // 256 × 15 million RGB buffer.
    for (w, h) in [(1u32, 60_000u32), (60_000, 1)] {
        let img = image::GrayImage::from_pixel(w, h, image::Luma([9]));
        let p = scratch("thin.png");
        std::fs::write(
            &p,
            encoded(image::DynamicImage::ImageLuma8(img), image::ImageFormat::Png),
        )
        .unwrap();
        let e = decode_resize_center_crop(&p, 256, 224).unwrap_err().to_string();
        assert!(e.contains("thin.png") && e.contains("aspect ratio"), "{e}");
        // The training path resizes to a fixed size and stays fine.
        assert_eq!(decode_image_file(&p, (4, 4), 3).unwrap().len(), 48);
    }
}

/// One entry of a class folder: a file name and whether its bytes are a valid image; names
/// ending in `/` are folders.
fn folder_entry() -> impl Strategy<Value = (&'static str, bool)> {
    let names = select(vec![
        "a.png",
        "B.PNG",
        ".hidden.png",
        "x.jpeg",
        "y.JPG",
        "noext",
        "notes.txt",
        "sub.png/",
        "é ü.jpg",
        "  .jpg",
        ".png",
        "a.png.gz",
    ]);
    (names, any::<bool>())
}

#[test]
fn image_folder_trees_of_odd_entries() {
    let tree = vec(
        (
            select(vec!["cat", "dog", ".git", "é", "a b"]),
            vec(folder_entry(), 0..4),
        ),
        0..4,
    );
    property("image_folder_trees_of_odd_entries", 120, 17, tree, |classes| {
        let root = scratch("folder");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let png = &image_files()[0].1;
        for (class, entries) in classes {
            let dir = root.join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, valid) in entries {
                match name.strip_suffix('/') {
                    Some(d) => std::fs::create_dir_all(dir.join(d)).unwrap(),
                    None => {
                        let bytes: &[u8] = if *valid { png } else { b"not an image" };
                        std::fs::write(dir.join(name), bytes).unwrap();
                    }
                }
            }
        }
        let index = kd_classify::data::index_image_folder(&root);
        if let Ok(ix) = &index {
            if ix.files.len() != ix.labels.len() || ix.labels.iter().any(|&l| l as usize >= ix.classes.len())
            {
                return Err(format!("inconsistent index {ix:?}"));
            }
        }
        names_file(&root, index)?;
        match kd_classify::data::load_image_folder(&root, (4, 4), 3) {
            Ok(_) => Ok(()),
            // Either the root (layout) or the file that does not decode is named.
            Err(e) => {
                let msg = e.to_string();
                if msg.contains("folder")
                    || msg.contains(".png")
                    || msg.contains(".jp")
                    || msg.contains(".JP")
                {
                    Ok(())
                } else {
                    Err(format!("the error names no file: {msg}"))
                }
            }
        }
    });
}
