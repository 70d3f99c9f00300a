//! Synthetic detection scenes in the COCO layout and file format.
//!
//! The generator stands in for COCO where the real data is not available. It writes
//!
//! ```text
//! ROOT/annotations/instances_train2017.json
//! ROOT/annotations/instances_val2017.json
//! ROOT/train2017/<image id:012>.png
//! ROOT/val2017/<image id:012>.png
//! ```
//!
//! so it is read through [`super::open_coco_root`] exactly like the real set, and the evaluator
//! is given the same JSON as ground truth.
//!
//! Each scene holds objects of up to six classes — disc, square, triangle, ring, cross, bar —
//! that differ by shape only: every object draws its colours and texture (flat, stripes,
//! checker, gradient, speckle) independently of its class, so colour alone says nothing.
//! Sizes are log-uniform between `object_size[0]` and `object_size[1]` px (longest side,
//! default 6–112), except that a share `large_prob` of objects is drawn at 70–100 % of 90 % of
//! the image's shorter side. The default set has about 60 % COCO-"small" (< 32² px), 38 %
//! "medium" and 2 % "large" (≥ 96²) boxes (COCO: 41 / 34 / 24 %): at these image sizes only
//! a near-image-filling object is large, so AP-large is a noisy number here. Image sizes vary in both directions
//! (default 128–176 × 96–144) so resizing keeping the ratio is exercised.
//!
//! Backgrounds are colour gradients with soft blotches and per-pixel noise; thin curved
//! strokes that are not objects cross them (some in front of objects). Objects may overlap: a
//! new object may hide at most 40 % of an earlier one, and each annotation is the tight box of
//! the object's *visible* pixels, as COCO's boxes are derived from visible masks. Some images
//! are empty, and some hold a crowd: a tight cluster of tiny objects of one class annotated as
//! one box with `iscrowd = 1`. `area` is the box area (`w · h`) for every annotation. Category
//! ids have gaps (1, 2, 4, 5, 7, 9), as COCO's do, so the id map is exercised end to end.
//!
//! Everything is drawn from generators derived from `(seed, split, index)`, images are
//! rendered in parallel and the PNG encoder and JSON writer are deterministic, so one seed
//! always gives the same bytes. The tree is written to a temporary sibling folder, marked
//! complete with a file recording the generator version and configuration, and renamed into
//! place; a later call with the same configuration finds the marker and does nothing.

use std::f32::consts::PI;
use std::fs;
use std::io::Write as _;
use std::path::Path;

use image::RgbImage;
use rand::Rng as _;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use kd_core::rng::{self, Rng};
use kd_core::{KdError, Result};
use kd_vision::generated::write_tree_once;
use kd_vision::image_ops::write_rgb_png;

/// Version of the scene generator; part of the completion marker, so a changed generator
/// regenerates cached trees.
pub const DET_SYNTH_VERSION: u32 = 1;

/// Category names, in class order.
pub const SHAPE_NAMES: [&str; 6] = ["disc", "square", "triangle", "ring", "cross", "bar"];

/// COCO category ids of the classes (with gaps, as in COCO).
const CATEGORY_IDS: [i64; 6] = [1, 2, 4, 5, 7, 9];

/// Image ids of the validation split start after this offset (train ids start at 1).
const VAL_ID_OFFSET: i64 = 1_000_000;

/// Largest share of an object's pixels later objects may hide.
const MAX_HIDDEN: f64 = 0.4;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetSynthConfig {
    /// Number of training images (default 1200).
    pub train: usize,
    /// Number of validation images (default 200).
    pub val: usize,
    /// Inclusive range of image widths in pixels (default `[128, 176]`).
    pub width: [usize; 2],
    /// Inclusive range of image heights in pixels (default `[96, 144]`).
    pub height: [usize; 2],
    /// Number of classes, 1 to 6, taken in the order of [`SHAPE_NAMES`] (default 6).
    pub classes: usize,
    /// Largest number of objects in a non-empty image, drawn uniformly from `1..=max_objects`
    /// (default 6).
    pub max_objects: usize,
    /// Range of an object's longest side in pixels, sampled log-uniformly (default `[6, 112]`;
    /// capped at 90 % of the image's shorter side).
    pub object_size: [f64; 2],
    /// Probability that an object is drawn large instead: its longest side uniform between 70 %
    /// and 100 % of the cap (default 0.08) \[R\] — log-uniform sizes alone make COCO-"large"
    /// boxes (≥ 96² px) rare at these image sizes.
    pub large_prob: f64,
    /// Probability of an image without objects (default 0.06).
    pub empty_prob: f64,
    /// Probability of a crowd region in a non-empty image (default 0.1).
    pub crowd_prob: f64,
    /// Seed of every random draw (default 0).
    pub seed: u64,
}

impl Default for DetSynthConfig {
    fn default() -> Self {
        Self {
            train: 1200,
            val: 200,
            width: [128, 176],
            height: [96, 144],
            classes: 6,
            max_objects: 6,
            object_size: [6.0, 112.0],
            large_prob: 0.08,
            empty_prob: 0.06,
            crowd_prob: 0.1,
            seed: 0,
        }
    }
}

impl DetSynthConfig {
    /// A very small set for tests: 8 training and 4 validation images of at most 64×56, with
    /// frequent empty images and crowds.
    pub fn tiny() -> Self {
        Self {
            train: 8,
            val: 4,
            width: [48, 64],
            height: [40, 56],
            object_size: [6.0, 36.0],
            empty_prob: 0.2,
            crowd_prob: 0.5,
            seed: 3,
            ..Self::default()
        }
    }

    /// Checks the ranges (useful after deserialising).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(KdError::invalid(format!("synthetic detection set: {m}")));
        if self.train + self.val == 0 {
            return bad("no images requested".into());
        }
        for (name, [lo, hi]) in [("width", self.width), ("height", self.height)] {
            if lo < 16 || lo > hi {
                return bad(format!("{name} range [{lo}, {hi}] must satisfy 16 <= lo <= hi"));
            }
        }
        if !(1..=SHAPE_NAMES.len()).contains(&self.classes) {
            return bad(format!(
                "classes {} must be 1 to {}",
                self.classes,
                SHAPE_NAMES.len()
            ));
        }
        if self.max_objects == 0 {
            return bad("max_objects must be at least 1".into());
        }
        let [lo, hi] = self.object_size;
        if !(lo.is_finite() && hi.is_finite() && lo >= 2.0 && lo <= hi) {
            return bad(format!("object_size [{lo}, {hi}] must satisfy 2 <= lo <= hi"));
        }
        for (name, p) in [
            ("large_prob", self.large_prob),
            ("empty_prob", self.empty_prob),
            ("crowd_prob", self.crowd_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} {p} is not a probability"));
            }
        }
        Ok(())
    }

    fn marker_text(&self) -> String {
        serde_json::json!({
            "generator": "kd-core synthetic detection scenes",
            "version": DET_SYNTH_VERSION,
            "config": self
        })
        .to_string()
    }
}

/// One annotated object of a rendered scene.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SynthObject {
    /// Class index `0..classes`.
    pub class: usize,
    /// `[x, y, w, h]` of the visible pixels.
    pub bbox: [f64; 4],
    /// A crowd region.
    pub iscrowd: bool,
}

/// One rendered scene.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Scene {
    pub image: RgbImage,
    pub objects: Vec<SynthObject>,
}

// ---------------------------------------------------------------------------------------------
// Colours and textures.

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let c = v * s;
    let hp = (h / 60.0).rem_euclid(6.0);
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
}

fn random_colour(rng: &mut Rng) -> [f32; 3] {
    let s = if rng.gen_bool(0.15) {
        rng.gen_range(0.0..0.15)
    } else {
        rng.gen_range(0.2..1.0)
    };
    hsv(rng.gen_range(0.0..360.0), s, rng.gen_range(0.2..1.0))
}

fn lerp3(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [0, 1, 2].map(|c| a[c] + (b[c] - a[c]) * t)
}

fn dist3(a: [f32; 3], b: [f32; 3]) -> f32 {
    (0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f32>().sqrt()
}

/// A uniform value in `[0, 1)` for `(x, y)` of stream `seed`.
fn hash01(seed: u64, x: i64, y: i64) -> f32 {
    let mut z = seed
        ^ (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (y as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

/// Smooth value noise in `[-1, 1]` with lattice spacing `cell` pixels.
fn value_noise(seed: u64, x: f32, y: f32, cell: f32) -> f32 {
    let (fx, fy) = (x / cell, y / cell);
    let (ix, iy) = (fx.floor(), fy.floor());
    let (tx, ty) = (fx - ix, fy - iy);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let (ix, iy) = (ix as i64, iy as i64);
    let top = hash01(seed, ix, iy) * (1.0 - sx) + hash01(seed, ix + 1, iy) * sx;
    let bot = hash01(seed, ix, iy + 1) * (1.0 - sx) + hash01(seed, ix + 1, iy + 1) * sx;
    2.0 * (top * (1.0 - sy) + bot * sy) - 1.0
}

#[derive(Clone, Copy, Debug)]
enum Tex {
    Flat,
    /// Stripes of `period` px across direction `(nx, ny)`.
    Stripes {
        nx: f32,
        ny: f32,
        period: f32,
    },
    Checker {
        period: f32,
    },
    /// `c1` → `c2` along `(nx, ny)` over the object.
    Gradient {
        nx: f32,
        ny: f32,
    },
    Speckle {
        seed: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Paint {
    c1: [f32; 3],
    c2: [f32; 3],
    tex: Tex,
}

impl Paint {
    fn random(rng: &mut Rng) -> Self {
        let c1 = random_colour(rng);
        let c2 = lerp3(random_colour(rng), c1, rng.gen_range(0.0..0.5));
        let angle = rng.gen_range(0.0..PI);
        let tex = match rng.gen_range(0..5) {
            0 => Tex::Flat,
            1 => Tex::Stripes {
                nx: angle.cos(),
                ny: angle.sin(),
                period: rng.gen_range(2.5..7.0),
            },
            2 => Tex::Checker {
                period: rng.gen_range(2.0..6.0),
            },
            3 => Tex::Gradient {
                nx: angle.cos(),
                ny: angle.sin(),
            },
            _ => Tex::Speckle { seed: rng.gen() },
        };
        Self { c1, c2, tex }
    }

    /// The mean colour, for the contrast check.
    fn mean(&self) -> [f32; 3] {
        match self.tex {
            Tex::Flat => self.c1,
            Tex::Speckle { .. } => lerp3(self.c1, self.c2, 0.25),
            _ => lerp3(self.c1, self.c2, 0.5),
        }
    }

    /// The colour at offset `(dx, dy)` from the object centre; `r` is the object's radius.
    fn at(&self, dx: f32, dy: f32, r: f32) -> [f32; 3] {
        match self.tex {
            Tex::Flat => self.c1,
            Tex::Stripes { nx, ny, period } => {
                if ((dx * nx + dy * ny) / period).rem_euclid(1.0) < 0.5 {
                    self.c1
                } else {
                    self.c2
                }
            }
            Tex::Checker { period } => {
                if ((dx / period).floor() as i64 + (dy / period).floor() as i64) & 1 == 0 {
                    self.c1
                } else {
                    self.c2
                }
            }
            Tex::Gradient { nx, ny } => lerp3(
                self.c1,
                self.c2,
                (0.5 + (dx * nx + dy * ny) / (2.0 * r)).clamp(0.0, 1.0),
            ),
            Tex::Speckle { seed } => {
                let t = hash01(seed, dx.floor() as i64, dy.floor() as i64);
                lerp3(self.c1, self.c2, if t < 0.25 { 1.0 } else { 0.0 })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shapes.

const DISC: usize = 0;
const SQUARE: usize = 1;
const TRIANGLE: usize = 2;
const RING: usize = 3;
const CROSS: usize = 4;
const BAR: usize = 5;

/// A shape with half-axes `a ≥ b` rotated by `theta` about `(cx, cy)`; `p` is the ring's inner
/// radius ratio or the cross's arm half-width ratio.
#[derive(Clone, Copy, Debug)]
struct Shape {
    kind: usize,
    cx: f32,
    cy: f32,
    a: f32,
    b: f32,
    cos: f32,
    sin: f32,
    p: f32,
}

impl Shape {
    /// A shape of class `kind` whose longest side is about `size` px, centred at the origin.
    fn random(kind: usize, size: f32, rng: &mut Rng) -> Self {
        let a = size / 2.0;
        let (b, theta, p) = match kind {
            DISC => (a * rng.gen_range(0.75..1.0), rng.gen_range(0.0..PI), 0.0),
            SQUARE => (a * rng.gen_range(0.75..1.0), rng.gen_range(-0.35..0.35), 0.0),
            TRIANGLE => (a * rng.gen_range(0.8..1.0), rng.gen_range(-0.5..0.5), 0.0),
            RING => (
                a * rng.gen_range(0.8..1.0),
                rng.gen_range(0.0..PI),
                rng.gen_range(0.45..0.65),
            ),
            CROSS => (
                a * rng.gen_range(0.85..1.0),
                rng.gen_range(-0.35..0.35),
                rng.gen_range(0.28..0.4),
            ),
            _ => (a / rng.gen_range(3.0..5.0), rng.gen_range(0.0..PI), 0.0),
        };
        Self {
            kind,
            cx: 0.0,
            cy: 0.0,
            a,
            b: b.max(0.5),
            cos: theta.cos(),
            sin: theta.sin(),
            p,
        }
    }

    fn scaled(mut self, f: f32) -> Self {
        self.a *= f;
        self.b = (self.b * f).max(0.5);
        self
    }

    /// Half-extents of the axis-aligned box around the shape.
    fn half_extent(&self) -> (f32, f32) {
        let (c, s) = (self.cos.abs(), self.sin.abs());
        (self.a * c + self.b * s, self.a * s + self.b * c)
    }

    fn inside(&self, x: f32, y: f32) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.cos + dy * self.sin) / self.a;
        let v = (-dx * self.sin + dy * self.cos) / self.b;
        match self.kind {
            DISC => u * u + v * v <= 1.0,
            SQUARE | BAR => u.abs() <= 1.0 && v.abs() <= 1.0,
            TRIANGLE => (-1.0..=1.0).contains(&v) && u.abs() <= (v + 1.0) / 2.0,
            RING => (self.p * self.p..=1.0).contains(&(u * u + v * v)),
            _ => (u.abs() <= 1.0 && v.abs() <= self.p) || (u.abs() <= self.p && v.abs() <= 1.0),
        }
    }

    /// Pixels the shape touches in a `w × h` image, with their coverage in quarters (1–4,
    /// from 2×2 samples per pixel).
    fn coverage(&self, w: usize, h: usize) -> Vec<(usize, u8)> {
        let (ex, ey) = self.half_extent();
        let x0 = ((self.cx - ex).floor().max(0.0)) as usize;
        let y0 = ((self.cy - ey).floor().max(0.0)) as usize;
        let x1 = ((self.cx + ex).ceil() as usize).min(w);
        let y1 = ((self.cy + ey).ceil() as usize).min(h);
        let mut out = Vec::new();
        for y in y0..y1 {
            for x in x0..x1 {
                let n = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]
                    .iter()
                    .filter(|(ox, oy)| self.inside(x as f32 + ox, y as f32 + oy))
                    .count() as u8;
                if n > 0 {
                    out.push((y * w + x, n));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The canvas.

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<[f32; 3]>,
    /// Owner per pixel: 0 = background, `k + 1` = object `k`.
    owner: Vec<u16>,
    /// Pixels each owner covers now (index 0 unused).
    visible: Vec<usize>,
    /// Pixels each owner covered when drawn.
    drawn: Vec<usize>,
}

impl Canvas {
    /// Mean colour of the pixels `s` would cover, for the contrast check.
    fn mean_under(&self, s: &Shape) -> [f32; 3] {
        let cov = s.coverage(self.w, self.h);
        let n = cov.len().max(1) as f32;
        let mut m = [0.0; 3];
        for &(i, _) in &cov {
            for (mc, pc) in m.iter_mut().zip(self.px[i]) {
                *mc += pc / n;
            }
        }
        m
    }

    /// Whether owning the pixels `cov` (coverage ≥ 2 quarters) would leave every earlier
    /// object with at least `1 − MAX_HIDDEN` of the pixels it had when drawn.
    fn may_cover(&self, cov: &[(usize, u8)]) -> bool {
        let mut lost = vec![0usize; self.visible.len()];
        for &(i, q) in cov {
            if q >= 2 {
                lost[self.owner[i] as usize] += 1;
            }
        }
        (1..self.visible.len()).all(|k| {
            lost[k] == 0 || (self.visible[k] - lost[k]) as f64 >= (1.0 - MAX_HIDDEN) * self.drawn[k] as f64
        })
    }

    /// Registers a new owner; returns its id.
    fn new_owner(&mut self) -> u16 {
        self.visible.push(0);
        self.drawn.push(0);
        (self.visible.len() - 1) as u16
    }

    /// Paints `shape` with `paint`; pixels covered by at least half go to `owner` (0 = none).
    fn paint(&mut self, shape: &Shape, paint: &Paint, owner: u16) {
        let r = shape.a.max(1.0);
        for (i, q) in shape.coverage(self.w, self.h) {
            let (x, y) = ((i % self.w) as f32 + 0.5, (i / self.w) as f32 + 0.5);
            let c = paint.at(x - shape.cx, y - shape.cy, r);
            let t = q as f32 / 4.0;
            self.px[i] = lerp3(self.px[i], c, t);
            if owner > 0 && q >= 2 {
                let old = self.owner[i] as usize;
                if old != owner as usize {
                    self.visible[old] = self.visible[old].saturating_sub(1);
                    self.owner[i] = owner;
                    self.visible[owner as usize] += 1;
                    self.drawn[owner as usize] += 1;
                }
            }
        }
    }

    /// Draws a quadratic Bézier stroke `p0 → p2` bending towards `p1`, `width` px wide.
    fn stroke(&mut self, p: [(f32, f32); 3], width: f32, colour: [f32; 3]) {
        let len = (p[1].0 - p[0].0).hypot(p[1].1 - p[0].1) + (p[2].0 - p[1].0).hypot(p[2].1 - p[1].1);
        let steps = (len * 2.0).ceil().max(2.0) as usize;
        let r = width / 2.0;
        for k in 0..=steps {
            let t = k as f32 / steps as f32;
            let (a, b, c) = ((1.0 - t) * (1.0 - t), 2.0 * t * (1.0 - t), t * t);
            let x = a * p[0].0 + b * p[1].0 + c * p[2].0;
            let y = a * p[0].1 + b * p[1].1 + c * p[2].1;
            for yy in (y - r - 1.0).floor() as i64..=(y + r).ceil() as i64 {
                for xx in (x - r - 1.0).floor() as i64..=(x + r).ceil() as i64 {
                    if xx < 0 || yy < 0 || xx as usize >= self.w || yy as usize >= self.h {
                        continue;
                    }
                    if (xx as f32 + 0.5 - x).hypot(yy as f32 + 0.5 - y) <= r.max(0.5) {
                        self.px[yy as usize * self.w + xx as usize] = colour;
                    }
                }
            }
        }
    }

    /// The tight `[x, y, w, h]` box of each owner's pixels (`None` when fully hidden).
    fn boxes(&self) -> Vec<Option<[f64; 4]>> {
        let mut b: Vec<Option<[usize; 4]>> = vec![None; self.visible.len()];
        for (i, &o) in self.owner.iter().enumerate() {
            if o == 0 {
                continue;
            }
            let (x, y) = (i % self.w, i / self.w);
            let e = b[o as usize].get_or_insert([x, y, x, y]);
            *e = [e[0].min(x), e[1].min(y), e[2].max(x), e[3].max(y)];
        }
        b.into_iter()
            .skip(1)
            .map(|e| {
                e.map(|[x0, y0, x1, y1]| [x0 as f64, y0 as f64, (x1 + 1 - x0) as f64, (y1 + 1 - y0) as f64])
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Scenes.

fn background(w: usize, h: usize, rng: &mut Rng) -> Vec<[f32; 3]> {
    let g0 = random_colour(rng);
    let g1 = lerp3(random_colour(rng), g0, rng.gen_range(0.2..0.7));
    let phi = rng.gen_range(0.0..2.0 * PI);
    let (nx, ny) = (phi.cos(), phi.sin());
    let blotch = [0; 3].map(|_| rng.gen_range(-35.0f32..35.0));
    let cell = rng.gen_range(10.0..30.0);
    let fine = rng.gen_range(0.0f32..12.0);
    let seed: u64 = rng.gen();
    let span = (w + h) as f32 / 2.0;
    let mut px = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let (xf, yf) = (x as f32 + 0.5, y as f32 + 0.5);
            let t = (0.5 + ((xf - w as f32 / 2.0) * nx + (yf - h as f32 / 2.0) * ny) / span).clamp(0.0, 1.0);
            let n = value_noise(seed, xf, yf, cell);
            let f = (hash01(seed ^ 0x5A5A, x as i64, y as i64) - 0.5) * 2.0 * fine;
            let g = lerp3(g0, g1, t);
            px.push([0, 1, 2].map(|c| g[c] + blotch[c] * n + f));
        }
    }
    px
}

fn random_stroke(cv: &mut Canvas, rng: &mut Rng) {
    let (w, h) = (cv.w as f32, cv.h as f32);
    let mut pt = || (rng.gen_range(-0.1 * w..1.1 * w), rng.gen_range(-0.1 * h..1.1 * h));
    let p = [pt(), pt(), pt()];
    let width = rng.gen_range(1.0..2.4);
    let colour = random_colour(rng);
    cv.stroke(p, width, colour);
}

/// Places `shape` at a random position fully inside the image (shrinking it if it cannot fit).
fn place(shape: Shape, w: usize, h: usize, rng: &mut Rng) -> Shape {
    let (ex, ey) = shape.half_extent();
    let f = 1f32
        .min((w as f32 / 2.0 - 0.5) / ex)
        .min((h as f32 / 2.0 - 0.5) / ey);
    let mut s = shape.scaled(f);
    let (ex, ey) = s.half_extent();
    s.cx = rng.gen_range(ex..=(w as f32 - ex).max(ex));
    s.cy = rng.gen_range(ey..=(h as f32 - ey).max(ey));
    s
}

/// A paint that stands out from the background under `shape` (a few draws at most).
fn contrasting_paint(cv: &Canvas, shape: &Shape, rng: &mut Rng) -> Paint {
    let under = cv.mean_under(shape);
    let mut paint = Paint::random(rng);
    for _ in 0..10 {
        if dist3(paint.mean(), under) >= 70.0 {
            break;
        }
        paint = Paint::random(rng);
    }
    paint
}

fn render(cfg: &DetSynthConfig, rng: &mut Rng) -> Scene {
    let w = rng.gen_range(cfg.width[0]..=cfg.width[1]);
    let h = rng.gen_range(cfg.height[0]..=cfg.height[1]);
    let mut cv = Canvas {
        w,
        h,
        px: background(w, h, rng),
        owner: vec![0; w * h],
        visible: vec![0],
        drawn: vec![0],
    };
    for _ in 0..rng.gen_range(1..=4) {
        random_stroke(&mut cv, rng);
    }
    let mut classes: Vec<(usize, bool)> = Vec::new();
    if !rng.gen_bool(cfg.empty_prob) {
        if rng.gen_bool(cfg.crowd_prob) {
            let class = rng.gen_range(0..cfg.classes);
            let rw = rng.gen_range(14.0..40.0f32).min(0.6 * w as f32);
            let rh = rng.gen_range(14.0..40.0f32).min(0.6 * h as f32);
            let (x0, y0) = (
                rng.gen_range(0.0..w as f32 - rw),
                rng.gen_range(0.0..h as f32 - rh),
            );
            let paint = Paint::random(rng);
            let owner = cv.new_owner();
            for _ in 0..rng.gen_range(6..=14) {
                let mut s = Shape::random(class, rng.gen_range(3.0..6.0), rng);
                s.cx = x0 + rng.gen_range(0.0..rw);
                s.cy = y0 + rng.gen_range(0.0..rh);
                cv.paint(&s, &paint, owner);
            }
            classes.push((class, true));
        }
        let [lo, hi] = cfg.object_size;
        let cap = 0.9 * w.min(h) as f64;
        let (lo, hi) = (lo.min(cap), hi.min(cap));
        for _ in 0..rng.gen_range(1..=cfg.max_objects) {
            let class = rng.gen_range(0..cfg.classes);
            let size = if rng.gen_bool(cfg.large_prob) {
                rng.gen_range(0.7 * cap..=cap) as f32
            } else {
                rng.gen_range(lo.ln()..=hi.ln()).exp() as f32
            };
            let shape = Shape::random(class, size, rng);
            for _ in 0..12 {
                let s = place(shape, w, h, rng);
                let cov = s.coverage(w, h);
                if cov.iter().filter(|c| c.1 >= 2).count() == 0 || !cv.may_cover(&cov) {
                    continue;
                }
                let paint = contrasting_paint(&cv, &s, rng);
                let owner = cv.new_owner();
                cv.paint(&s, &paint, owner);
                classes.push((class, false));
                break;
            }
        }
    }
    for _ in 0..rng.gen_range(0..=2) {
        random_stroke(&mut cv, rng);
    }
    let sigma = rng.gen_range(2.0f32..8.0);
    let objects = cv
        .boxes()
        .into_iter()
        .zip(classes)
        .filter_map(|(b, (class, iscrowd))| b.map(|bbox| SynthObject { class, bbox, iscrowd }))
        .collect();
    let mut raw = Vec::with_capacity(w * h * 3);
    for p in &cv.px {
        for v in p {
            let n = (rng.gen::<f32>() + rng.gen::<f32>() + rng.gen::<f32>() - 1.5) * 2.0 * sigma;
            raw.push((v + n).round().clamp(0.0, 255.0) as u8);
        }
    }
    Scene {
        image: RgbImage::from_raw(w as u32, h as u32, raw).expect("buffer size matches"),
        objects,
    }
}

/// Renders scene `index` of `split` (0 = train, 1 = val) for `cfg`.
pub(crate) fn render_scene(cfg: &DetSynthConfig, split: u64, index: usize) -> Scene {
    let mut rng = rng::derive(cfg.seed, 0xDE7_0000 + split, index as u64);
    render(cfg, &mut rng)
}

// ---------------------------------------------------------------------------------------------
// Writing the tree.

#[derive(Serialize)]
struct OutImage {
    id: i64,
    file_name: String,
    width: usize,
    height: usize,
}

#[derive(Serialize)]
struct OutAnn {
    id: i64,
    image_id: i64,
    category_id: i64,
    bbox: [f64; 4],
    area: f64,
    iscrowd: u8,
}

#[derive(Serialize)]
struct OutCategory {
    id: i64,
    name: &'static str,
    supercategory: &'static str,
}

#[derive(Serialize)]
struct OutFile {
    info: serde_json::Value,
    licenses: Vec<serde_json::Value>,
    images: Vec<OutImage>,
    annotations: Vec<OutAnn>,
    categories: Vec<OutCategory>,
}

fn write_split(tmp: &Path, cfg: &DetSynthConfig, split: &str, stream: u64, count: usize) -> Result<()> {
    let dir = tmp.join(split);
    fs::create_dir_all(&dir).map_err(|e| KdError::file(&dir, format!("cannot create folder: {e}")))?;
    let offset = if stream == 0 { 0 } else { VAL_ID_OFFSET };
    let rendered = (0..count)
        .into_par_iter()
        .map(|i| {
            let id = offset + i as i64 + 1;
            let file_name = format!("{id:012}.png");
            let scene = render_scene(cfg, stream, i);
            write_rgb_png(&dir.join(&file_name), &scene.image)?;
            let image = OutImage {
                id,
                file_name,
                width: scene.image.width() as usize,
                height: scene.image.height() as usize,
            };
            Ok((image, scene.objects))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut images = Vec::with_capacity(count);
    let mut annotations = Vec::new();
    for (image, objects) in rendered {
        for o in objects {
            annotations.push(OutAnn {
                id: annotations.len() as i64 + 1,
                image_id: image.id,
                category_id: CATEGORY_IDS[o.class],
                bbox: o.bbox,
                area: o.bbox[2] * o.bbox[3],
                iscrowd: o.iscrowd as u8,
            });
        }
        images.push(image);
    }
    let file = OutFile {
        info: serde_json::json!({
            "description": "kd-core synthetic detection scenes",
            "version": DET_SYNTH_VERSION.to_string(),
            "seed": cfg.seed,
        }),
        licenses: Vec::new(),
        images,
        annotations,
        categories: (0..cfg.classes)
            .map(|k| OutCategory {
                id: CATEGORY_IDS[k],
                name: SHAPE_NAMES[k],
                supercategory: "shape",
            })
            .collect(),
    };
    let ann_dir = tmp.join("annotations");
    fs::create_dir_all(&ann_dir)
        .map_err(|e| KdError::file(&ann_dir, format!("cannot create folder: {e}")))?;
    let path = ann_dir.join(format!("instances_{split}.json"));
    let f = fs::File::create(&path).map_err(|e| KdError::file(&path, format!("cannot create: {e}")))?;
    let mut out = std::io::BufWriter::new(f);
    serde_json::to_writer(&mut out, &file).map_err(|e| KdError::file(&path, format!("cannot write: {e}")))?;
    out.flush()
        .map_err(|e| KdError::file(&path, format!("cannot write: {e}")))
}

/// Writes the synthetic set described by `cfg` to `root` (see the module docs) and returns
/// whether it generated anything: `false` when `root` already holds a complete tree made with
/// the same generator version and configuration. A tree made with another configuration is
/// replaced; a non-empty folder that is not a generated tree is an error and is left alone.
/// Open the result with [`super::open_coco_root`]`(root, "train2017")` / `"val2017"`.
pub fn generate_synthetic_coco(root: &Path, cfg: &DetSynthConfig) -> Result<bool> {
    cfg.validate()?;
    write_tree_once(root, &cfg.marker_text(), "generated synthetic COCO tree", |tmp| {
        write_split(tmp, cfg, "train2017", 0, cfg.train)?;
        write_split(tmp, cfg, "val2017", 1, cfg.val)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{open_coco_root, DetSource};
    use kd_vision::generated::MARKER;
    use std::path::PathBuf;

    fn all_bytes(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((p.strip_prefix(root).unwrap().to_path_buf(), fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn round_trip_through_the_reader() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("coco");
        let cfg = DetSynthConfig {
            train: 24,
            ..DetSynthConfig::tiny()
        };
        assert!(generate_synthetic_coco(&root, &cfg).unwrap());
        let train = open_coco_root(&root, "train2017").unwrap();
        let val = open_coco_root(&root, "val2017").unwrap();
        assert_eq!((train.len(), val.len()), (24, 4));
        assert_eq!(train.category_ids(), &CATEGORY_IDS);
        assert_eq!(train.category_names(), &SHAPE_NAMES.map(String::from));
        assert_eq!(val.images()[0].id, VAL_ID_OFFSET + 1);
        let (mut crowds, mut empties, mut objects) = (0, 0, 0);
        for (i, info) in train.images().iter().enumerate() {
            // Same ids, sizes, boxes and classes as the renderer produced.
            let scene = render_scene(&cfg, 0, i);
            assert_eq!(info.id, i as i64 + 1);
            assert_eq!(info.file_name, format!("{:012}.png", i + 1));
            assert_eq!((info.width as u32, info.height as u32), scene.image.dimensions());
            assert!((48..=64).contains(&info.width) && (40..=56).contains(&info.height));
            assert_eq!(train.image(i).unwrap(), scene.image);
            assert_eq!(info.annotations.len(), scene.objects.len());
            for (a, o) in info.annotations.iter().zip(&scene.objects) {
                assert_eq!((a.class, a.bbox, a.iscrowd), (o.class, o.bbox, o.iscrowd));
                assert_eq!(a.category_id, CATEGORY_IDS[o.class]);
                assert_eq!(a.area, a.bbox[2] * a.bbox[3]);
                let [x, y, w, h] = a.bbox;
                assert!(w >= 1.0 && h >= 1.0 && x + w <= info.width as f64 && y + h <= info.height as f64);
                crowds += a.iscrowd as usize;
                objects += !a.iscrowd as usize;
            }
            empties += info.annotations.is_empty() as usize;
        }
        assert!(
            crowds > 0 && empties > 0 && objects > 2 * 24,
            "{crowds} {empties} {objects}"
        );
        // Annotation ids are unique and sequential.
        let ids: Vec<i64> = train
            .images()
            .iter()
            .flat_map(|i| i.annotations.iter().map(|a| a.id))
            .collect();
        assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
    }

    #[test]
    fn same_seed_same_bytes_and_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let cfg = DetSynthConfig::tiny();
        assert!(generate_synthetic_coco(&a, &cfg).unwrap());
        assert!(generate_synthetic_coco(&b, &cfg).unwrap());
        let (fa, fb) = (all_bytes(&a), all_bytes(&b));
        assert_eq!(fa.len(), 8 + 4 + 2 + 1);
        assert!(fa == fb, "same seed must give byte-identical trees");
        let before = fs::metadata(a.join(MARKER)).unwrap().modified().unwrap();
        assert!(!generate_synthetic_coco(&a, &cfg).unwrap());
        assert_eq!(fs::metadata(a.join(MARKER)).unwrap().modified().unwrap(), before);
        let other = DetSynthConfig {
            seed: 4,
            ..cfg.clone()
        };
        assert!(generate_synthetic_coco(&a, &other).unwrap());
        assert!(all_bytes(&a) != fb);
        let names: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporaries left: {names:?}");
        let foreign = tmp.path().join("foreign");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("keep.txt"), "mine").unwrap();
        let msg = generate_synthetic_coco(&foreign, &cfg).unwrap_err().to_string();
        assert!(msg.contains("refusing"), "{msg}");
        assert!(foreign.join("keep.txt").exists());
        let bad = DetSynthConfig { classes: 7, ..cfg };
        assert!(generate_synthetic_coco(&tmp.path().join("c"), &bad).is_err());
        let e = serde_json::from_str::<DetSynthConfig>(r#"{"trains": 3}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn shapes_are_distinct_and_scenes_vary() {
        // Each class's mask differs from every other class's at the same size and pose.
        let masks: Vec<Vec<(usize, u8)>> = (0..6)
            .map(|k| {
                let mut s = Shape::random(k, 24.0, &mut rng::derive(1, 2, 3));
                (s.cos, s.sin, s.cx, s.cy) = (1.0, 0.0, 16.0, 16.0);
                s.coverage(32, 32)
            })
            .collect();
        for i in 0..6 {
            assert!(!masks[i].is_empty());
            for j in 0..i {
                assert_ne!(masks[i], masks[j], "{} vs {}", SHAPE_NAMES[i], SHAPE_NAMES[j]);
            }
        }
        // A ring has a hole, a disc does not.
        let mut ring = Shape::random(RING, 20.0, &mut rng::derive(0, 0, 0));
        (ring.cx, ring.cy) = (10.0, 10.0);
        assert!(
            !ring.inside(10.0, 10.0)
                && ring.inside(10.0 + 0.9 * ring.a * ring.cos, 10.0 + 0.9 * ring.a * ring.sin)
        );
        let cfg = DetSynthConfig::tiny();
        assert_eq!(render_scene(&cfg, 0, 3), render_scene(&cfg, 0, 3));
        assert_ne!(render_scene(&cfg, 0, 3).image, render_scene(&cfg, 0, 4).image);
        assert_ne!(render_scene(&cfg, 0, 3).image, render_scene(&cfg, 1, 3).image);
    }

    /// Generation time of the default set; run with
    /// `cargo test --release -p kd-core default_synthetic_set -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn default_synthetic_set() {
        let tmp = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        generate_synthetic_coco(&tmp.path().join("coco"), &DetSynthConfig::default()).unwrap();
        let gen = t.elapsed().as_secs_f64();
        let ds = open_coco_root(&tmp.path().join("coco"), "train2017").unwrap();
        let mut by_area = [0usize; 3];
        let mut crowd = 0;
        for a in ds.images().iter().flat_map(|i| &i.annotations) {
            crowd += a.iscrowd as usize;
            by_area[if a.area < 1024.0 {
                0
            } else if a.area < 9216.0 {
                1
            } else {
                2
            }] += 1;
        }
        let empty = ds.images().iter().filter(|i| i.annotations.is_empty()).count();
        println!(
            "default set: {gen:.2} s; train {} images, {} annotations (small/medium/large {by_area:?}, crowd {crowd}), {empty} empty",
            ds.len(),
            ds.num_annotations()
        );
    }
}
