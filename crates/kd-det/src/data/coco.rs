//! The COCO `instances_*.json` reader.
//!
//! Layout (the official one, `split` e.g. `train2017`):
//!
//! ```text
//! ROOT/annotations/instances_<split>.json
//! ROOT/<split>/<file_name>          PNG or JPEG, as named in the JSON
//! ```
//!
//! The JSON is parsed once and checked item by item, so a bad annotation is reported with the
//! file and its annotation id rather than as a panic later in training. Keys this reader does not
//! use (`info`, `licenses`, `segmentation`, `supercategory`, ...) are ignored. Images keep the
//! order of the file's `images` list (what MMDet and pycocotools iterate), so a dataset index
//! is a position in that list. Pixels are decoded lazily, one image per
//! [`DetSource::image`]: the real training set (118k images) does not fit in memory decoded.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use super::{DetSource, DetTarget};
use kd_core::{KdError, Result};

/// One category of the annotation file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CocoCategory {
    /// COCO `category_id`.
    pub id: i64,
    /// Name, e.g. `"person"`.
    pub name: String,
}

/// One annotation, as read (nothing is dropped at read time; see [`CocoImage::targets`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CocoAnnotation {
    /// Annotation id.
    pub id: i64,
    /// COCO `category_id`.
    pub category_id: i64,
    /// Contiguous class index `0..K` of `category_id`.
    pub class: usize,
    /// `[x, y, w, h]` in original pixels, `w, h ≥ 0`.
    pub bbox: [f64; 4],
    /// The `area` field (mask area in real COCO; the evaluator's small/medium/large key), or
    /// `w · h` when the file has none.
    pub area: f64,
    /// The `iscrowd` flag (absent = 0).
    pub iscrowd: bool,
}

impl CocoAnnotation {
    /// The box as `(x1, y1, x2, y2)` in original pixels.
    pub fn xyxy(&self) -> [f64; 4] {
        let [x, y, w, h] = self.bbox;
        [x, y, x + w, y + h]
    }

    /// Whether the box becomes a training target of an image of `width × height`. As in
    /// MMDet's COCO dataset, boxes narrower or lower than 1 px, with a non-positive `area`, or
    /// not overlapping the image are dropped from the targets (they stay in the file and in
    /// evaluation).
    pub fn is_trainable(&self, width: usize, height: usize) -> bool {
        let [x, y, w, h] = self.bbox;
        let inter_w = (x + w).min(width as f64) - x.max(0.0);
        let inter_h = (y + h).min(height as f64) - y.max(0.0);
        w >= 1.0 && h >= 1.0 && self.area > 0.0 && inter_w > 0.0 && inter_h > 0.0
    }
}

/// One image record with its annotations (in file order).
#[derive(Clone, Debug, PartialEq)]
pub struct CocoImage {
    /// COCO image id.
    pub id: i64,
    /// File name relative to the image folder.
    pub file_name: String,
    /// Width in pixels, as declared.
    pub width: usize,
    /// Height in pixels, as declared.
    pub height: usize,
    /// Its annotations; may be empty.
    pub annotations: Vec<CocoAnnotation>,
}

impl CocoImage {
    /// The training targets: every annotation passing [`CocoAnnotation::is_trainable`], crowd
    /// regions included and flagged, as `(x1, y1, x2, y2)` original pixels.
    pub fn targets(&self) -> Vec<DetTarget> {
        self.annotations
            .iter()
            .filter(|a| a.is_trainable(self.width, self.height))
            .map(|a| DetTarget {
                bbox: a.xyxy(),
                class: a.class,
                iscrowd: a.iscrowd,
            })
            .collect()
    }
}

/// A COCO detection split: annotations from one JSON file, pixels from one folder.
#[derive(Clone, Debug)]
pub struct CocoDataset {
    ann_file: PathBuf,
    image_dir: PathBuf,
    images: Vec<CocoImage>,
    categories: Vec<CocoCategory>,
    category_ids: Vec<i64>,
    category_names: Vec<String>,
}

#[derive(Deserialize)]
struct RawFile {
    images: Option<Vec<RawImage>>,
    annotations: Option<Vec<RawAnn>>,
    categories: Option<Vec<RawCategory>>,
}

#[derive(Deserialize)]
struct RawImage {
    id: Option<i64>,
    file_name: Option<String>,
    width: Option<u64>,
    height: Option<u64>,
}

#[derive(Deserialize)]
struct RawAnn {
    id: Option<i64>,
    image_id: Option<i64>,
    category_id: Option<i64>,
    bbox: Option<Value>,
    area: Option<Value>,
    iscrowd: Option<Value>,
}

#[derive(Deserialize)]
struct RawCategory {
    id: Option<i64>,
    name: Option<String>,
}

/// Opens the annotation file `ann` with images under `images`; see [`CocoDataset::open`].
pub fn open_coco(ann: &Path, images: &Path) -> Result<CocoDataset> {
    CocoDataset::open(ann, images)
}

/// Opens split `split` (e.g. `"train2017"`, `"val2017"`) of the official layout:
/// `root/annotations/instances_<split>.json` with images in `root/<split>/`.
pub fn open_coco_root(root: &Path, split: &str) -> Result<CocoDataset> {
    let ann = root.join("annotations").join(format!("instances_{split}.json"));
    if !ann.is_file() {
        return Err(KdError::file(
            &ann,
            format!(
                "annotation file missing; expected the COCO layout {r}/annotations/instances_{split}.json \
                 with images in {r}/{split}/",
                r = root.display()
            ),
        ));
    }
    CocoDataset::open(&ann, &root.join(split))
}

/// The number behind a JSON value, if it is one and finite.
fn finite(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

impl CocoDataset {
    /// Reads and checks `ann` and checks that every listed image file exists under `images`.
    ///
    /// Errors name the file and, for annotations, the annotation id: a missing `images` or
    /// `categories` list, a missing field (`id`, `file_name`, `width`, `height`; `id`,
    /// `image_id`, `category_id`, `bbox`; `id`, `name`), a bbox that is not 4 finite numbers with
    /// `w, h ≥ 0`, a bad `area` or `iscrowd`, an unknown image or category id, a duplicate
    /// image or category id, or a missing image file. A missing `annotations` list means no
    /// annotations.
    pub fn open(ann: &Path, images: &Path) -> Result<Self> {
        let ds = Self::parse(ann, images)?;
        if !images.is_dir() {
            return Err(KdError::file(images, "image folder missing"));
        }
        if let Some(missing) = ds
            .images
            .par_iter()
            .map(|im| images.join(&im.file_name))
            .find_first(|p| !p.is_file())
        {
            return Err(KdError::file(
                missing,
                format!("image file missing (listed in {})", ann.display()),
            ));
        }
        Ok(ds)
    }

    /// Parses the annotation file without touching the image folder.
    fn parse(ann: &Path, image_dir: &Path) -> Result<Self> {
        let bytes = fs::read(ann).map_err(|e| KdError::file(ann, format!("cannot read: {e}")))?;
        let raw: RawFile = serde_json::from_slice(&bytes)
            .map_err(|e| KdError::file(ann, format!("not a COCO annotation file: {e}")))?;
        drop(bytes);
        let err = |m: String| KdError::file(ann, m);

        let raw_cats = raw
            .categories
            .ok_or_else(|| err("missing the top-level key \"categories\"".into()))?;
        let mut categories = Vec::with_capacity(raw_cats.len());
        for (k, c) in raw_cats.into_iter().enumerate() {
            let id =
                c.id.ok_or_else(|| err(format!("categories[{k}]: missing field \"id\"")))?;
            let name = c
                .name
                .ok_or_else(|| err(format!("category id {id}: missing field \"name\"")))?;
            categories.push(CocoCategory { id, name });
        }
        categories.sort_by_key(|c| c.id);
        if let Some(w) = categories.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(err(format!("duplicate category id {}", w[0].id)));
        }
        let class_of: HashMap<i64, usize> = categories.iter().enumerate().map(|(k, c)| (c.id, k)).collect();

        let raw_images = raw
            .images
            .ok_or_else(|| err("missing the top-level key \"images\"".into()))?;
        let mut images = Vec::with_capacity(raw_images.len());
        let mut position = HashMap::with_capacity(raw_images.len());
        for (k, im) in raw_images.into_iter().enumerate() {
            let id = im
                .id
                .ok_or_else(|| err(format!("images[{k}]: missing field \"id\"")))?;
            let field = |f: &str| err(format!("image id {id}: missing field \"{f}\""));
            let file_name = im.file_name.ok_or_else(|| field("file_name"))?;
            let width = im.width.ok_or_else(|| field("width"))? as usize;
            let height = im.height.ok_or_else(|| field("height"))? as usize;
            if width == 0 || height == 0 {
                return Err(err(format!(
                    "image id {id}: size {width}×{height} has a zero side"
                )));
            }
            if position.insert(id, images.len()).is_some() {
                return Err(err(format!("duplicate image id {id}")));
            }
            images.push(CocoImage {
                id,
                file_name,
                width,
                height,
                annotations: Vec::new(),
            });
        }

        for (k, a) in raw.annotations.unwrap_or_default().into_iter().enumerate() {
            let id =
                a.id.ok_or_else(|| err(format!("annotations[{k}]: missing field \"id\"")))?;
            let field = |f: &str| err(format!("annotation id {id}: missing field \"{f}\""));
            let image_id = a.image_id.ok_or_else(|| field("image_id"))?;
            let category_id = a.category_id.ok_or_else(|| field("category_id"))?;
            let bbox_v = a.bbox.ok_or_else(|| field("bbox"))?;
            let bbox = match bbox_v
                .as_array()
                .map(|v| v.iter().map(finite).collect::<Option<Vec<f64>>>())
            {
                Some(Some(v)) if v.len() == 4 && v[2] >= 0.0 && v[3] >= 0.0 => [v[0], v[1], v[2], v[3]],
                _ => {
                    return Err(err(format!(
                        "annotation id {id}: malformed bbox {bbox_v}; expected 4 finite numbers \
                         [x, y, w, h] with w, h >= 0"
                    )))
                }
            };
            let area = match &a.area {
                None => bbox[2] * bbox[3],
                Some(v) => finite(v).filter(|x| *x >= 0.0).ok_or_else(|| {
                    err(format!(
                        "annotation id {id}: malformed area {v}; expected a finite number >= 0"
                    ))
                })?,
            };
            let iscrowd = match &a.iscrowd {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => match v.as_i64() {
                    Some(0) => false,
                    Some(1) => true,
                    _ => {
                        return Err(err(format!(
                            "annotation id {id}: malformed iscrowd {v}; expected 0 or 1"
                        )))
                    }
                },
            };
            let &class = class_of.get(&category_id).ok_or_else(|| {
                err(format!(
                    "annotation id {id}: unknown category_id {category_id} (not in \"categories\")"
                ))
            })?;
            let &pos = position.get(&image_id).ok_or_else(|| {
                err(format!(
                    "annotation id {id}: unknown image_id {image_id} (not in \"images\")"
                ))
            })?;
            images[pos].annotations.push(CocoAnnotation {
                id,
                category_id,
                class,
                bbox,
                area,
                iscrowd,
            });
        }
        Ok(Self {
            ann_file: ann.to_path_buf(),
            image_dir: image_dir.to_path_buf(),
            category_ids: categories.iter().map(|c| c.id).collect(),
            category_names: categories.iter().map(|c| c.name.clone()).collect(),
            categories,
            images,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// True when the file lists no image.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// A short name for logs, e.g. `"coco/instances_val2017"`.
    pub fn name(&self) -> String {
        let stem = self
            .ann_file
            .file_stem()
            .map_or_else(|| "annotations".into(), |s| s.to_string_lossy().into_owned());
        format!("coco/{stem}")
    }

    /// The annotation file (the ground truth the evaluator reads).
    pub fn ann_file(&self) -> &Path {
        &self.ann_file
    }

    /// The image folder.
    pub fn image_dir(&self) -> &Path {
        &self.image_dir
    }

    /// Every image record, in file order (dataset index = position).
    pub fn images(&self) -> &[CocoImage] {
        &self.images
    }

    /// Image record `index`; an out-of-range index is an error.
    pub fn image_info(&self, index: usize) -> Result<&CocoImage> {
        self.images.get(index).ok_or_else(|| {
            KdError::invalid(format!(
                "image {index} out of range for {} ({} images)",
                self.name(),
                self.images.len()
            ))
        })
    }

    /// The categories sorted by id; position = contiguous class.
    pub fn categories(&self) -> &[CocoCategory] {
        &self.categories
    }

    /// Number of classes K.
    pub fn num_classes(&self) -> usize {
        self.categories.len()
    }

    /// Contiguous class `k` → COCO `category_id`.
    pub fn category_ids(&self) -> &[i64] {
        &self.category_ids
    }

    /// Contiguous class `k` → category name.
    pub fn category_names(&self) -> &[String] {
        &self.category_names
    }

    /// COCO `category_id` → contiguous class, if the category exists.
    pub fn class_of(&self, category_id: i64) -> Option<usize> {
        self.category_ids.binary_search(&category_id).ok()
    }

    /// Total number of annotations.
    pub fn num_annotations(&self) -> usize {
        self.images.iter().map(|i| i.annotations.len()).sum()
    }

    /// Indices of the images with at least one non-crowd training target: MMDet trains on
    /// these only (`filter_empty_gt`); pass them as the epoch subset to do the same.
    pub fn indices_with_objects(&self) -> Vec<usize> {
        (0..self.images.len())
            .filter(|&i| self.images[i].targets().iter().any(|t| !t.iscrowd))
            .collect()
    }

    /// The file of image `index`.
    pub fn image_path(&self, index: usize) -> Result<PathBuf> {
        Ok(self.image_dir.join(&self.image_info(index)?.file_name))
    }

    /// Decodes image `index` as RGB; the file must exist, decode (PNG or JPEG) and have the
    /// size the annotation file declares.
    pub fn decode(&self, index: usize) -> Result<RgbImage> {
        let info = self.image_info(index)?;
        let path = self.image_dir.join(&info.file_name);
        let img = image::ImageReader::open(&path)
            .map_err(|e| KdError::file(&path, format!("cannot open image: {e}")))?
            .with_guessed_format()
            .map_err(|e| KdError::file(&path, format!("cannot read image: {e}")))?
            .decode()
            .map_err(|e| KdError::file(&path, format!("cannot decode image: {e}")))?
            .to_rgb8();
        if (img.width() as usize, img.height() as usize) != (info.width, info.height) {
            return Err(KdError::file(
                &path,
                format!(
                    "image is {}×{} but {} declares {}×{} for image id {}",
                    img.width(),
                    img.height(),
                    self.ann_file.display(),
                    info.width,
                    info.height,
                    info.id
                ),
            ));
        }
        Ok(img)
    }
}

impl DetSource for CocoDataset {
    fn coco(&self) -> &CocoDataset {
        self
    }

    fn image(&self, index: usize) -> Result<RgbImage> {
        self.decode(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, v: &Value) -> PathBuf {
        let p = dir.join("instances_test.json");
        fs::write(&p, v.to_string()).unwrap();
        p
    }

    fn base() -> Value {
        json!({
            "info": {"description": "x"}, "licenses": [],
            "images": [
                {"id": 7, "file_name": "a.png", "width": 10, "height": 8, "license": 1},
                {"id": 3, "file_name": "b.jpg", "width": 6, "height": 5}
            ],
            "annotations": [
                {"id": 100, "image_id": 7, "category_id": 90, "bbox": [1, 2, 3.5, 4], "area": 11.0,
                 "iscrowd": 0, "segmentation": [[1, 2, 3, 4]]},
                {"id": 101, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 20,
                 "iscrowd": 1, "segmentation": {"counts": [1], "size": [8, 10]}},
                {"id": 102, "image_id": 7, "category_id": 3, "bbox": [4, 4, 0.5, 3], "area": 1.5, "iscrowd": 0}
            ],
            "categories": [
                {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
                {"id": 1, "name": "person"},
                {"id": 3, "name": "car"}
            ]
        })
    }

    fn with_images(dir: &Path) {
        RgbImage::from_pixel(10, 8, image::Rgb([1, 2, 3]))
            .save(dir.join("a.png"))
            .unwrap();
        RgbImage::from_pixel(6, 5, image::Rgb([200, 100, 50]))
            .save(dir.join("b.jpg"))
            .unwrap();
    }

    #[test]
    fn reads_categories_crowd_and_empty_images() {
        let tmp = tempfile::tempdir().unwrap();
        with_images(tmp.path());
        let ann = write(tmp.path(), &base());
        let ds = open_coco(&ann, tmp.path()).unwrap();
        assert_eq!(ds.category_ids(), &[1, 3, 90]);
        assert_eq!(ds.category_names(), &["person", "car", "toothbrush"]);
        assert_eq!((ds.class_of(90), ds.class_of(2)), (Some(2), None));
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.num_annotations(), 3);
        let a = &ds.images()[0];
        assert_eq!(
            (a.id, a.width, a.height, a.file_name.as_str()),
            (7, 10, 8, "a.png")
        );
        let anns = &a.annotations;
        assert_eq!(anns[0].class, 2);
        assert_eq!(anns[0].xyxy(), [1.0, 2.0, 4.5, 6.0]);
        assert!(!anns[0].iscrowd && anns[1].iscrowd);
        assert_eq!(anns[1].area, 20.0);
        // The 0.5-px-wide box is kept in the record but is not a training target.
        let t = a.targets();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[1],
            DetTarget {
                bbox: [0.0, 0.0, 5.0, 5.0],
                class: 0,
                iscrowd: true
            }
        );
        assert!(ds.images()[1].annotations.is_empty());
        assert_eq!(ds.indices_with_objects(), vec![0]);
        assert_eq!(ds.image(0).unwrap().get_pixel(3, 3).0, [1, 2, 3]);
        assert_eq!(ds.image(1).unwrap().dimensions(), (6, 5));
        assert_eq!(ds.name(), "coco/instances_test");
        assert!(ds.image(2).is_err());
    }

    fn err_of(v: Value) -> String {
        let tmp = tempfile::tempdir().unwrap();
        with_images(tmp.path());
        let ann = write(tmp.path(), &v);
        let e = open_coco(&ann, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("instances_test.json"), "{e}");
        e
    }

    #[test]
    fn errors_name_the_file_and_the_annotation() {
        let mut v = base();
        v["annotations"][1]["bbox"] = json!([0, 0, 5]);
        let e = err_of(v);
        assert!(
            e.contains("annotation id 101") && e.contains("malformed bbox"),
            "{e}"
        );
        let mut v = base();
        v["annotations"][0]["bbox"] = json!([0, 0, -1, 2]);
        assert!(err_of(v).contains("annotation id 100: malformed bbox"));
        let mut v = base();
        v["annotations"][2]["bbox"] = json!([0, "a", 1, 2]);
        assert!(err_of(v).contains("annotation id 102: malformed bbox"));
        let mut v = base();
        v["annotations"][2]["category_id"] = json!(2);
        let e = err_of(v);
        assert!(e.contains("annotation id 102: unknown category_id 2"), "{e}");
        let mut v = base();
        v["annotations"][0]["image_id"] = json!(8);
        assert!(err_of(v).contains("annotation id 100: unknown image_id 8"));
        let mut v = base();
        v["annotations"][0].as_object_mut().unwrap().remove("bbox");
        assert!(err_of(v).contains("annotation id 100: missing field \"bbox\""));
        let mut v = base();
        v["annotations"][0].as_object_mut().unwrap().remove("id");
        assert!(err_of(v).contains("annotations[0]: missing field \"id\""));
        let mut v = base();
        v["annotations"][0]["iscrowd"] = json!(2);
        assert!(err_of(v).contains("annotation id 100: malformed iscrowd"));
        let mut v = base();
        v["images"][1]["id"] = json!(7);
        assert!(err_of(v).contains("duplicate image id 7"));
        let mut v = base();
        v["images"][0].as_object_mut().unwrap().remove("width");
        assert!(err_of(v).contains("image id 7: missing field \"width\""));
        let mut v = base();
        v["categories"][2]["id"] = json!(1);
        assert!(err_of(v).contains("duplicate category id 1"));
        let mut v = base();
        v.as_object_mut().unwrap().remove("categories");
        assert!(err_of(v).contains("\"categories\""));
        assert!(err_of(json!([1, 2])).contains("not a COCO annotation file"));
        // Missing and corrupt image files name the file.
        let mut v = base();
        v["images"][1]["file_name"] = json!("gone.png");
        let e = err_of(v);
        assert!(e.contains("gone.png") && e.contains("image file missing"), "{e}");
        let tmp = tempfile::tempdir().unwrap();
        with_images(tmp.path());
        fs::write(tmp.path().join("b.jpg"), b"not a jpeg").unwrap();
        let ds = open_coco(&write(tmp.path(), &base()), tmp.path()).unwrap();
        let e = ds.image(1).unwrap_err().to_string();
        assert!(e.contains("b.jpg") && e.contains("cannot decode"), "{e}");
        RgbImage::new(4, 4).save(tmp.path().join("a.png")).unwrap();
        let e = ds.image(0).unwrap_err().to_string();
        assert!(e.contains("a.png") && e.contains("declares 10×8"), "{e}");
    }

    #[test]
    fn official_layout_and_no_annotations_key() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let e = open_coco_root(root, "val2017").unwrap_err().to_string();
        assert!(
            e.contains("instances_val2017.json") && e.contains("COCO layout"),
            "{e}"
        );
        fs::create_dir_all(root.join("annotations")).unwrap();
        fs::create_dir_all(root.join("val2017")).unwrap();
        with_images(&root.join("val2017"));
        let mut v = base();
        v.as_object_mut().unwrap().remove("annotations");
        fs::write(root.join("annotations/instances_val2017.json"), v.to_string()).unwrap();
        let ds = open_coco_root(root, "val2017").unwrap();
        assert_eq!((ds.len(), ds.num_annotations(), ds.num_classes()), (2, 0, 3));
        assert!(ds.image_path(1).unwrap().ends_with("val2017/b.jpg"));
    }
}
