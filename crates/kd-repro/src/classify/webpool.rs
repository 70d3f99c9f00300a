//! The web pool: the unlabelled images that webly-supervised rows train their student on.
//!
//! With `--web DIR` the pool is a folder of images of any size, decoded and resized on load by
//! [`kd_classify::data::load_unlabelled_folder`]. Without it, a stand-in pool is generated
//! deterministically from the original training images and written once, as PNG files plus an
//! [`ORIGINS_FILE`] sidecar, into the per-user cache; it is then read back through the very same
//! loader, so the generated and the user-supplied pool take one code path.
//!
//! The generated pool mixes two kinds of images, in proportions set by [`WebConfig`]:
//! - **covariate-shifted** images of the original classes ([`ShiftKind`]): contrast and
//!   brightness changes, inversion, blur, sketch-like edges, elastic warps, scale and position
//!   changes;
//! - **out-of-distribution junk** ([`JunkKind`]): noise textures, random shapes and strokes,
//!   which belong to no class and which instance selection should learn to drop.
//!
//! Every image's origin is recorded in the sidecar (never its class: the pool's labels are −1,
//! and the student never reads one). A user folder may carry the same sidecar; without it the
//! origin of each image is unknown and no in-distribution/junk plot is drawn.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kd_classify::data::{Dataset, Image};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::cache;

/// The sidecar that lists every image of a pool, in load order, with its origin.
pub const ORIGINS_FILE: &str = "origins.csv";

/// Bump when a change to the generator changes the images of a given configuration.
const GENERATOR_VERSION: &str = "webpool-v1";

/// Random streams of the generator (see [`kd_core::rng::derive`]).
const STREAM_ORDER: u64 = 0x3eb0;
const STREAM_IMAGE: u64 = 0x3eb1;

/// How the stand-in web pool is generated (the `[web]` section of an experiment).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Number of images in the generated pool.
    pub size: usize,
    /// Fraction of the pool that is out-of-distribution junk; the rest are covariate-shifted
    /// images of the original classes.
    pub junk_fraction: f64,
    /// Seed of the generator. It is not the run seed: every seed of a table sees the same pool.
    #[serde(default)]
    pub seed: u64,
    /// The shifts applied to in-distribution images, used in turn (default: all).
    #[serde(default = "ShiftKind::all")]
    pub shifts: Vec<ShiftKind>,
    /// The kinds of junk, used in turn (default: all).
    #[serde(default = "JunkKind::all")]
    pub junk: Vec<JunkKind>,
}

impl WebConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<()> {
        if self.size == 0 {
            bail!("[web] size must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.junk_fraction) {
            bail!("[web] junk_fraction {} is outside [0, 1]", self.junk_fraction);
        }
        let n_junk = self.junk_count();
        if n_junk < self.size && self.shifts.is_empty() {
            bail!("[web] shifts is empty but the pool has in-distribution images");
        }
        if n_junk > 0 && self.junk.is_empty() {
            bail!("[web] junk is empty but junk_fraction is above 0");
        }
        Ok(())
    }

    /// Number of junk images in the generated pool.
    pub fn junk_count(&self) -> usize {
        ((self.size as f64 * self.junk_fraction).round() as usize).min(self.size)
    }
}

/// A covariate shift applied to an original image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShiftKind {
    /// Contrast and brightness change.
    Contrast,
    /// Inverted intensities (with a mild brightness change).
    Invert,
    /// Blur (repeated box filter).
    Blur,
    /// Sketch-like edges (Sobel magnitude, sometimes dark on light).
    Edges,
    /// Elastic warp (smoothed random displacement field).
    Elastic,
    /// Scale and position change.
    Rescale,
}

impl ShiftKind {
    /// Every shift.
    pub fn all() -> Vec<ShiftKind> {
        use ShiftKind::*;
        vec![Contrast, Invert, Blur, Edges, Elastic, Rescale]
    }
    fn name(self) -> &'static str {
        match self {
            ShiftKind::Contrast => "contrast",
            ShiftKind::Invert => "invert",
            ShiftKind::Blur => "blur",
            ShiftKind::Edges => "edges",
            ShiftKind::Elastic => "elastic",
            ShiftKind::Rescale => "rescale",
        }
    }
}

/// An out-of-distribution image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JunkKind {
    /// Smooth and fine noise texture.
    Noise,
    /// Random filled rectangles and ellipses.
    Shapes,
    /// Random thick line strokes.
    Strokes,
}

impl JunkKind {
    /// Every kind of junk.
    pub fn all() -> Vec<JunkKind> {
        vec![JunkKind::Noise, JunkKind::Shapes, JunkKind::Strokes]
    }
    fn name(self) -> &'static str {
        match self {
            JunkKind::Noise => "noise",
            JunkKind::Shapes => "shapes",
            JunkKind::Strokes => "strokes",
        }
    }
}

/// Where an image of the pool comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A shifted copy of original training image `source`.
    Shifted {
        /// The shift.
        kind: ShiftKind,
        /// Index of the original training image.
        source: usize,
    },
    /// Junk that belongs to no class.
    Junk(JunkKind),
}

impl Origin {
    /// True for junk.
    pub fn is_junk(&self) -> bool {
        matches!(self, Origin::Junk(_))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Shifted { kind, source } => write!(f, "shifted,{},{source}", kind.name()),
            Origin::Junk(k) => write!(f, "junk,{},", k.name()),
        }
    }
}

/// An opened web pool.
pub struct WebPool {
    /// The images (labels −1), resized to the original data's shape.
    pub dataset: Arc<dyn Dataset>,
    /// Each image's origin, when known (generated pools, or a folder with an [`ORIGINS_FILE`]).
    pub origins: Option<Vec<Origin>>,
    /// Where the images were read from.
    pub dir: PathBuf,
    /// What it is, for table headers.
    pub label: String,
}

impl WebPool {
    /// The pool's make-up for the results: size, and when the origins are known the share of
    /// shifted and junk images and the count of each kind.
    pub fn summary(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "source": self.label,
            "dir": self.dir.display().to_string(),
            "size": self.dataset.len(),
        });
        if let Some(o) = &self.origins {
            let junk = o.iter().filter(|o| o.is_junk()).count();
            let n = o.len().max(1) as f64;
            let mut kinds = serde_json::Map::new();
            for origin in o {
                let k = match origin {
                    Origin::Shifted { kind, .. } => kind.name(),
                    Origin::Junk(kind) => kind.name(),
                };
                let e = kinds.entry(k.to_string()).or_insert(serde_json::json!(0));
                *e = serde_json::json!(e.as_u64().unwrap_or(0) + 1);
            }
            v["shifted"] = serde_json::json!(o.len() - junk);
            v["junk"] = serde_json::json!(junk);
            v["shifted_pct"] = serde_json::json!(100.0 * (o.len() - junk) as f64 / n);
            v["junk_pct"] = serde_json::json!(100.0 * junk as f64 / n);
            v["kinds"] = serde_json::Value::Object(kinds);
        } else {
            v["origins"] = serde_json::json!("unknown (no origins.csv in the folder)");
        }
        v
    }
}

/// The share (in %) of in-distribution and of junk images among `kept` (pool indices).
pub fn kept_fractions(origins: &[Origin], kept: &[usize]) -> (f64, f64) {
    let junk_total = origins.iter().filter(|o| o.is_junk()).count();
    let id_total = origins.len() - junk_total;
    let (mut id, mut junk) = (0usize, 0usize);
    let mut seen = vec![false; origins.len()];
    for &i in kept {
        if i < origins.len() && !seen[i] {
            seen[i] = true;
            if origins[i].is_junk() {
                junk += 1;
            } else {
                id += 1;
            }
        }
    }
    let pct = |k: usize, n: usize| if n == 0 { 0.0 } else { 100.0 * k as f64 / n as f64 };
    (pct(id, id_total), pct(junk, junk_total))
}

/// Opens the web pool: the folder `web` (searched recursively), or the stand-in pool generated
/// from `source` (the original training set; unused with a folder) by `cfg`. Images are
/// resized to `shape`.
pub fn open(web: Option<&Path>, cfg: &WebConfig, source: &dyn Dataset, shape: [usize; 3]) -> Result<WebPool> {
    let [c, h, w] = shape;
    match web {
        Some(dir) => {
            let ds = kd_classify::data::load_unlabelled_folder(dir, (h, w), c, true)
                .with_context(|| format!("--web {}", dir.display()))?
                .with_name(format!("web pool {}", dir.display()));
            let origins = if dir.join(ORIGINS_FILE).is_file() {
                Some(read_origins(&dir.join(ORIGINS_FILE), ds.len())?)
            } else {
                None
            };
            Ok(WebPool {
                label: format!("{} images from {}", ds.len(), dir.display()),
                dataset: Arc::new(ds),
                origins,
                dir: dir.to_path_buf(),
            })
        }
        None => {
            cfg.validate()?;
            let dir = ensure_generated(cfg, source)?;
            let ds = kd_classify::data::load_unlabelled_folder(&dir, (h, w), c, false)?
                .with_name(format!("web pool generated from {}", source.name()));
            let origins = read_origins(&dir.join(ORIGINS_FILE), ds.len())?;
            let junk = origins.iter().filter(|o| o.is_junk()).count();
            Ok(WebPool {
                label: format!(
                    "generated from {}: {} shifted + {} junk images",
                    source.name(),
                    origins.len() - junk,
                    junk
                ),
                dataset: Arc::new(ds),
                origins: Some(origins),
                dir,
            })
        }
    }
}

/// The cached folder of the pool `cfg` generates from `source`, generated first if missing.
pub fn ensure_generated(cfg: &WebConfig, source: &dyn Dataset) -> Result<PathBuf> {
    let fp = super::datasets::fingerprint(source)?;
    let key = cache::key(&[GENERATOR_VERSION, &toml::to_string(cfg)?, &fp]);
    let dir = cache::user_cache().join("webpool").join(key);
    // Locked: the ranks of a data-parallel run (or two runs) generate it once.
    let _lock = cache::lock_entry(&dir)?;
    if dir.join(ORIGINS_FILE).is_file() {
        return Ok(dir);
    }
    let parent = dir.parent().expect("cache path has a parent");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    write_pool(cfg, source, &tmp)?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Another process finished the same pool first: theirs is identical.
        Err(_) if dir.join(ORIGINS_FILE).is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => bail!("moving {} to {}: {e}", tmp.display(), dir.display()),
    }
    Ok(dir)
}

/// Generates the pool into `dir` (created): `000000.png`, ... and the sidecar, written last.
pub fn write_pool(cfg: &WebConfig, source: &dyn Dataset, dir: &Path) -> Result<()> {
    cfg.validate()?;
    if source.is_empty() {
        bail!(
            "cannot generate a web pool from the empty dataset {}",
            source.name()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let origins = plan(cfg, source.len());
    let mut csv = String::from("file,origin,kind,source\n");
    for (i, origin) in origins.iter().enumerate() {
        let img = generate(cfg.seed, i, *origin, source)?;
        let name = format!("{i:06}.png");
        save_png(&img, &dir.join(&name))?;
        csv.push_str(&format!("{name},{origin}\n"));
    }
    kd_core::io::write_atomic(&dir.join(ORIGINS_FILE), csv.as_bytes())?;
    Ok(())
}

/// The origin of every image of the pool: exactly [`WebConfig::junk_count`] junk images at
/// seeded positions, shifts and junk kinds used in turn, sources drawn from the seed.
pub fn plan(cfg: &WebConfig, n_source: usize) -> Vec<Origin> {
    let n_junk = cfg.junk_count();
    let mut is_junk: Vec<bool> = (0..cfg.size).map(|i| i < n_junk).collect();
    is_junk.shuffle(&mut kd_core::rng::derive(cfg.seed, STREAM_ORDER, 0));
    let (mut s, mut j) = (0usize, 0usize);
    is_junk
        .iter()
        .enumerate()
        .map(|(i, &junk)| {
            if junk {
                j += 1;
                Origin::Junk(cfg.junk[(j - 1) % cfg.junk.len()])
            } else {
                s += 1;
                let mut rng = kd_core::rng::derive(cfg.seed, STREAM_ORDER, 1 + i as u64);
                Origin::Shifted {
                    kind: cfg.shifts[(s - 1) % cfg.shifts.len()],
                    source: rng.gen_range(0..n_source),
                }
            }
        })
        .collect()
}

/// Reads a sidecar that must list `n` images in load order.
pub fn read_origins(path: &Path, n: usize) -> Result<Vec<Origin>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (line_no, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || anyhow::anyhow!("{}:{}: cannot read {line:?}", path.display(), line_no + 1);
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 4 {
            return Err(bad());
        }
        let origin = match f[1] {
            "shifted" => Origin::Shifted {
                kind: *ShiftKind::all()
                    .iter()
                    .find(|k| k.name() == f[2])
                    .ok_or_else(bad)?,
                source: f[3].parse().map_err(|_| bad())?,
            },
            "junk" => Origin::Junk(
                *JunkKind::all()
                    .iter()
                    .find(|k| k.name() == f[2])
                    .ok_or_else(bad)?,
            ),
            _ => return Err(bad()),
        };
        out.push(origin);
    }
    if out.len() != n {
        bail!(
            "{} lists {} images, but the folder holds {n}",
            path.display(),
            out.len()
        );
    }
    Ok(out)
}

fn save_png(img: &Image, path: &Path) -> Result<()> {
    let bytes: Vec<u8> = (0..img.h * img.w)
        .flat_map(|p| (0..img.c).map(move |ch| ch * img.h * img.w + p))
        .map(|i| (img.data[i].clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let (w, h) = (img.w as u32, img.h as u32);
    let r = if img.c == 1 {
        image::GrayImage::from_raw(w, h, bytes).map(|i| i.save(path))
    } else {
        image::RgbImage::from_raw(w, h, bytes).map(|i| i.save(path))
    };
    match r {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => bail!("writing {}: {e}", path.display()),
        None => bail!(
            "writing {}: {} channels cannot be saved as PNG",
            path.display(),
            img.c
        ),
    }
}

/// Image `i` of the pool, at the source's shape, values in `[0, 1]`.
pub fn generate(seed: u64, i: usize, origin: Origin, source: &dyn Dataset) -> Result<Image> {
    let mut rng = kd_core::rng::derive(seed, STREAM_IMAGE, i as u64);
    let [c, h, w] = source.shape();
    let planes: Vec<Vec<f32>> = match origin {
        Origin::Shifted { kind, source: s } => {
            let img = source.get(s)?.image;
            let planes: Vec<Vec<f32>> = img.data.chunks(h * w).map(<[f32]>::to_vec).collect();
            shift(kind, planes, h, w, &mut rng)
        }
        Origin::Junk(kind) => junk(kind, c, h, w, &mut rng),
    };
    Ok(Image {
        c,
        h,
        w,
        data: planes.concat(),
    })
}

type Rand = kd_core::rng::Rng;

fn shift(kind: ShiftKind, mut p: Vec<Vec<f32>>, h: usize, w: usize, rng: &mut Rand) -> Vec<Vec<f32>> {
    match kind {
        ShiftKind::Contrast => {
            let c = if rng.gen_bool(0.5) {
                rng.gen_range(0.3..0.6)
            } else {
                rng.gen_range(1.6..2.6)
            };
            let b = rng.gen_range(-0.3..0.3);
            for v in p.iter_mut().flatten() {
                *v = ((*v - 0.5) * c + 0.5 + b).clamp(0.0, 1.0);
            }
        }
        ShiftKind::Invert => {
            let b = rng.gen_range(-0.15..0.15);
            for v in p.iter_mut().flatten() {
                *v = (1.0 - *v + b).clamp(0.0, 1.0);
            }
        }
        ShiftKind::Blur => {
            let r = rng.gen_range(1..=2);
            for plane in &mut p {
                for _ in 0..2 {
                    *plane = box_blur(plane, h, w, r);
                }
            }
        }
        ShiftKind::Edges => {
            let dark_on_light = rng.gen_bool(0.5);
            for plane in &mut p {
                let e = sobel(plane, h, w);
                let max = e.iter().copied().fold(1e-6f32, f32::max);
                *plane = e
                    .iter()
                    .map(|v| {
                        let v = (v / max).sqrt();
                        if dark_on_light {
                            1.0 - v
                        } else {
                            v
                        }
                    })
                    .collect();
            }
        }
        ShiftKind::Elastic => {
            let alpha = rng.gen_range(1.5..3.0) * (h.min(w) as f32 / 28.0);
            let field = |rng: &mut Rand| {
                let raw: Vec<f32> = (0..h * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let mut s = raw;
                for _ in 0..3 {
                    s = box_blur(&s, h, w, 3);
                }
                let max = s.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                s.iter().map(|v| v / max * alpha).collect::<Vec<f32>>()
            };
            let (dx, dy) = (field(rng), field(rng));
            for plane in &mut p {
                *plane = warp(plane, h, w, |y, x| {
                    let k = y * w + x;
                    (y as f32 + dy[k], x as f32 + dx[k])
                });
            }
        }
        ShiftKind::Rescale => {
            let s = if rng.gen_bool(0.5) {
                rng.gen_range(0.55..0.85)
            } else {
                rng.gen_range(1.15..1.35)
            };
            let ty = rng.gen_range(-0.2..0.2) * h as f32;
            let tx = rng.gen_range(-0.2..0.2) * w as f32;
            let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
            for plane in &mut p {
                *plane = warp(plane, h, w, |y, x| {
                    ((y as f32 - cy - ty) / s + cy, (x as f32 - cx - tx) / s + cx)
                });
            }
        }
    }
    p
}

fn junk(kind: JunkKind, c: usize, h: usize, w: usize, rng: &mut Rand) -> Vec<Vec<f32>> {
    match kind {
        JunkKind::Noise => (0..c)
            .map(|_| {
                let cells = rng.gen_range(2..=8usize);
                let grid: Vec<f32> = (0..cells * cells).map(|_| rng.gen_range(0.0..1.0)).collect();
                let fine = rng.gen_range(0.0..0.4f32);
                (0..h * w)
                    .map(|k| {
                        let (y, x) = (k / w, k % w);
                        let gy = y as f32 / h as f32 * (cells - 1) as f32;
                        let gx = x as f32 / w as f32 * (cells - 1) as f32;
                        let v = bilinear(&grid, cells, cells, gy, gx);
                        (v * (1.0 - fine) + rng.gen_range(0.0..1.0) * fine).clamp(0.0, 1.0)
                    })
                    .collect()
            })
            .collect(),
        JunkKind::Shapes => {
            let bg: Vec<f32> = (0..c).map(|_| rng.gen_range(0.0..0.5)).collect();
            let mut p: Vec<Vec<f32>> = bg.iter().map(|&b| vec![b; h * w]).collect();
            for _ in 0..rng.gen_range(1..=4) {
                let col: Vec<f32> = (0..c).map(|_| rng.gen_range(0.3..1.0)).collect();
                let (y0, x0) = (rng.gen_range(0.0..h as f32), rng.gen_range(0.0..w as f32));
                let (ry, rx) = (
                    rng.gen_range(0.1..0.4) * h as f32,
                    rng.gen_range(0.1..0.4) * w as f32,
                );
                let ellipse = rng.gen_bool(0.5);
                for y in 0..h {
                    for x in 0..w {
                        let (dy, dx) = ((y as f32 - y0) / ry, (x as f32 - x0) / rx);
                        let inside = if ellipse {
                            dy * dy + dx * dx <= 1.0
                        } else {
                            dy.abs() <= 1.0 && dx.abs() <= 1.0
                        };
                        if inside {
                            for (plane, &v) in p.iter_mut().zip(&col) {
                                plane[y * w + x] = v;
                            }
                        }
                    }
                }
            }
            p
        }
        JunkKind::Strokes => {
            let mut p: Vec<Vec<f32>> = (0..c).map(|_| vec![0.0; h * w]).collect();
            for _ in 0..rng.gen_range(2..=6) {
                let col: Vec<f32> = (0..c).map(|_| rng.gen_range(0.5..1.0)).collect();
                let a = (rng.gen_range(0.0..h as f32), rng.gen_range(0.0..w as f32));
                let b = (rng.gen_range(0.0..h as f32), rng.gen_range(0.0..w as f32));
                let thick = rng.gen_range(0.6..2.0) * (h.min(w) as f32 / 28.0);
                for y in 0..h {
                    for x in 0..w {
                        if seg_dist((y as f32, x as f32), a, b) <= thick {
                            for (plane, &v) in p.iter_mut().zip(&col) {
                                plane[y * w + x] = v;
                            }
                        }
                    }
                }
            }
            p
        }
    }
}

fn seg_dist(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (vy, vx) = (b.0 - a.0, b.1 - a.1);
    let len2 = vy * vy + vx * vx;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((p.0 - a.0) * vy + (p.1 - a.1) * vx) / len2).clamp(0.0, 1.0)
    };
    let (dy, dx) = (p.0 - a.0 - t * vy, p.1 - a.1 - t * vx);
    (dy * dy + dx * dx).sqrt()
}

fn box_blur(p: &[f32], h: usize, w: usize, r: usize) -> Vec<f32> {
    let r = r as isize;
    let at = |y: isize, x: isize| {
        p[(y.clamp(0, h as isize - 1) as usize) * w + x.clamp(0, w as isize - 1) as usize]
    };
    let mut tmp = vec![0f32; h * w];
    for y in 0..h as isize {
        for x in 0..w as isize {
            tmp[y as usize * w + x as usize] =
                (-r..=r).map(|d| at(y, x + d)).sum::<f32>() / (2 * r + 1) as f32;
        }
    }
    let at = |y: isize, x: isize| {
        tmp[(y.clamp(0, h as isize - 1) as usize) * w + x.clamp(0, w as isize - 1) as usize]
    };
    let mut out = vec![0f32; h * w];
    for y in 0..h as isize {
        for x in 0..w as isize {
            out[y as usize * w + x as usize] =
                (-r..=r).map(|d| at(y + d, x)).sum::<f32>() / (2 * r + 1) as f32;
        }
    }
    out
}

fn sobel(p: &[f32], h: usize, w: usize) -> Vec<f32> {
    let at = |y: isize, x: isize| {
        p[(y.clamp(0, h as isize - 1) as usize) * w + x.clamp(0, w as isize - 1) as usize]
    };
    let mut out = vec![0f32; h * w];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let gx = at(y - 1, x + 1) + 2.0 * at(y, x + 1) + at(y + 1, x + 1)
                - at(y - 1, x - 1)
                - 2.0 * at(y, x - 1)
                - at(y + 1, x - 1);
            let gy = at(y + 1, x - 1) + 2.0 * at(y + 1, x) + at(y + 1, x + 1)
                - at(y - 1, x - 1)
                - 2.0 * at(y - 1, x)
                - at(y - 1, x + 1);
            out[y as usize * w + x as usize] = (gx * gx + gy * gy).sqrt();
        }
    }
    out
}

/// Bilinear sample of `p` at `(y, x)`; 0 outside the image.
fn bilinear(p: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let px = |yy: f32, xx: f32| -> f32 {
        if yy < 0.0 || xx < 0.0 || yy >= h as f32 || xx >= w as f32 {
            0.0
        } else {
            p[yy as usize * w + xx as usize]
        }
    };
    px(y0, x0) * (1.0 - fy) * (1.0 - fx)
        + px(y0, x0 + 1.0) * (1.0 - fy) * fx
        + px(y0 + 1.0, x0) * fy * (1.0 - fx)
        + px(y0 + 1.0, x0 + 1.0) * fy * fx
}

/// The image whose pixel `(y, x)` is `p` sampled at `src(y, x)`.
fn warp(p: &[f32], h: usize, w: usize, src: impl Fn(usize, usize) -> (f32, f32)) -> Vec<f32> {
    (0..h * w)
        .map(|k| {
            let (sy, sx) = src(k / w, k % w);
            bilinear(p, h, w, sy, sx)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kd_classify::data::InMemoryDataset;

    fn source() -> InMemoryDataset {
        // Twelve 12×10 grey images of a bright bar at different heights.
        let (h, w) = (12, 10);
        let mut px = Vec::new();
        for i in 0..12 {
            for y in 0..h {
                for _x in 0..w {
                    px.push(if y == i { 230u8 } else { 10 });
                }
            }
        }
        InMemoryDataset::from_parts("bars", [1, h, w], px, (0..12).map(|i| i % 3).collect(), 3).unwrap()
    }

    fn cfg(size: usize, junk: f64, seed: u64) -> WebConfig {
        WebConfig {
            size,
            junk_fraction: junk,
            seed,
            shifts: ShiftKind::all(),
            junk: JunkKind::all(),
        }
    }

    #[test]
    fn generation_is_deterministic_for_a_seed_and_differs_across_seeds() {
        let src = source();
        let images = |c: &WebConfig| -> Vec<Image> {
            plan(c, src.len())
                .into_iter()
                .enumerate()
                .map(|(i, o)| generate(c.seed, i, o, &src).unwrap())
                .collect()
        };
        let a = cfg(30, 0.3, 7);
        assert_eq!(plan(&a, 12), plan(&a, 12));
        assert_eq!(images(&a), images(&a));
        assert_ne!(images(&a), images(&cfg(30, 0.3, 8)));
        for img in images(&a) {
            assert_eq!((img.c, img.h, img.w), (1, 12, 10));
            assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn proportions_are_exact_and_every_kind_is_used() {
        for (size, junk) in [(100, 0.3), (37, 0.0), (10, 1.0), (9, 0.5)] {
            let o = plan(&cfg(size, junk, 1), 12);
            let n_junk = o.iter().filter(|o| o.is_junk()).count();
            assert_eq!(o.len(), size);
            assert_eq!(n_junk, (size as f64 * junk).round() as usize, "{size} {junk}");
        }
        let o = plan(&cfg(100, 0.3, 1), 12);
        for k in ShiftKind::all() {
            assert!(o
                .iter()
                .any(|o| matches!(o, Origin::Shifted { kind, .. } if *kind == k)));
        }
        for k in JunkKind::all() {
            assert!(o.contains(&Origin::Junk(k)));
        }
        // Junk is spread through the pool, not one block at the end.
        assert!(o[..50].iter().any(Origin::is_junk) && o[50..].iter().any(Origin::is_junk));
    }

    #[test]
    fn written_pool_reads_back_through_the_folder_loader_unlabelled() {
        let src = source();
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(20, 0.25, 3);
        write_pool(&c, &src, tmp.path()).unwrap();
        let pool = open(Some(tmp.path()), &c, &src, [1, 8, 8]).unwrap();
        assert_eq!(pool.dataset.len(), 20);
        assert_eq!(pool.dataset.shape(), [1, 8, 8]);
        assert_eq!(pool.dataset.num_classes(), 0);
        for i in 0..20 {
            assert_eq!(pool.dataset.get(i).unwrap().label, -1);
        }
        assert_eq!(pool.origins.as_deref(), Some(plan(&c, src.len()).as_slice()));
        // At the generated size, the PNGs hold exactly the generated bytes.
        let same = open(Some(tmp.path()), &c, &src, [1, 12, 10]).unwrap();
        for (i, o) in plan(&c, src.len()).into_iter().enumerate() {
            let want = generate(c.seed, i, o, &src).unwrap();
            let got = same.dataset.get(i).unwrap().image;
            let err = want
                .data
                .iter()
                .zip(&got.data)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 0.5 / 255.0 + 1e-6, "image {i}: {err}");
        }
        let s = pool.summary();
        assert_eq!((s["shifted"].as_u64(), s["junk"].as_u64()), (Some(15), Some(5)));
        assert_eq!(s["junk_pct"].as_f64(), Some(25.0));
        // Without the sidecar the origins are unknown.
        std::fs::remove_file(tmp.path().join(ORIGINS_FILE)).unwrap();
        let bare = open(Some(tmp.path()), &c, &src, [1, 8, 8]).unwrap();
        assert!(bare.origins.is_none());
        assert!(bare.summary()["origins"].is_string());
    }

    #[test]
    fn a_sidecar_that_does_not_match_the_folder_is_an_error() {
        let src = source();
        let tmp = tempfile::tempdir().unwrap();
        write_pool(&cfg(6, 0.5, 0), &src, tmp.path()).unwrap();
        std::fs::remove_file(tmp.path().join("000005.png")).unwrap();
        let err = open(Some(tmp.path()), &cfg(6, 0.5, 0), &src, [1, 8, 8])
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("lists 6 images"), "{err:#}");
    }

    #[test]
    fn kept_fractions_count_each_origin() {
        let o = [
            Origin::Junk(JunkKind::Noise),
            Origin::Shifted {
                kind: ShiftKind::Blur,
                source: 0,
            },
            Origin::Shifted {
                kind: ShiftKind::Edges,
                source: 1,
            },
            Origin::Junk(JunkKind::Strokes),
        ];
        assert_eq!(kept_fractions(&o, &[1, 2, 3]), (100.0, 50.0));
        assert_eq!(kept_fractions(&o, &[]), (0.0, 0.0));
        assert_eq!(kept_fractions(&o, &[1, 1, 9]), (50.0, 0.0));
    }

    #[test]
    fn bad_settings_are_named() {
        assert!(cfg(0, 0.3, 0).validate().is_err());
        assert!(cfg(10, 1.5, 0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("junk_fraction"));
        let mut c = cfg(10, 0.5, 0);
        c.junk.clear();
        assert!(c.validate().is_err());
    }
}
