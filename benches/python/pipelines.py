"""The data pipelines as a PyTorch DataLoader runs them, with the same worker count as the Rust
side's rayon pool.

torchvision is not available, so the transforms are written out: for CIFAR-100 with tensor ops
(the torchvision.transforms.v2 way: pad 4, random crop, flip, normalise), for Cityscapes with
numpy on Pillow-decoded PNGs, step for step as MMSeg's recipe and kd-core's `augment_sample`
(rescale, cat_max_ratio crop, flip, photometric distortion, normalise, pad). Every float
operation is done in float32 in the Rust order, so replaying the Rust side's random draws gives
the same bytes; the value check relies on that.
"""

import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import st_io

F32 = np.float32


# ---------------------------------------------------------------- CIFAR-100 binary


class CifarBin(torch.utils.data.Dataset):
    """CIFAR-100 binary records (coarse label, fine label, 3072 pixel bytes), held in memory as
    torchvision's CIFAR100 holds its arrays; decoded and augmented per item."""

    def __init__(self, path, mean, std, pad=4):
        rec = np.fromfile(path, dtype=np.uint8).reshape(-1, 2 + 3072)
        self.labels = rec[:, 1].astype(np.int64)
        self.images = np.ascontiguousarray(rec[:, 2:]).reshape(-1, 3, 32, 32)
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.inv_std = (1.0 / torch.tensor(std)).view(-1, 1, 1)
        self.pad = pad

    def __len__(self):
        return len(self.labels)

    def item(self, i, dy, dx, flip):
        img = torch.from_numpy(self.images[i]).float() / 255.0
        img = F.pad(img, (self.pad,) * 4)[:, dy : dy + 32, dx : dx + 32]
        if flip:
            img = img.flip(-1)
        return (img - self.mean) * self.inv_std, int(self.labels[i])

    def __getitem__(self, i):
        p = self.pad
        return self.item(i, random.randint(0, 2 * p), random.randint(0, 2 * p), random.random() < 0.5)


class CifarRow:
    def __init__(self, t, p, threads):
        self.t, self.p = t, p
        mean, std = t["in.mean"].tolist(), t["in.std"].tolist()
        self.ds = CifarBin(st_io.text(t["in.file"]), mean, std, p["pad"])
        self.loader = torch.utils.data.DataLoader(
            self.ds, batch_size=p["batch"], shuffle=True, num_workers=threads, persistent_workers=threads > 0
        )

    def check(self):
        draws = self.t["in.draws"].tolist()
        items = [self.ds.item(i, dy, dx, bool(f)) for i, (dy, dx, f) in enumerate(draws)]
        x = torch.stack([a for a, _ in items])
        y = torch.tensor([b for _, b in items])
        return [("x", x, self.t["out.x"]), ("y", y, self.t["out.y"])]

    def fn(self, mode):
        def run():
            n = 0
            for xb, _ in self.loader:
                n += xb.shape[0]
            return n

        return run


# ---------------------------------------------------------------- Cityscapes PNG


def round_half_away(v):
    t = np.trunc(v)
    return t + (v - t >= F32(0.5)).astype(F32)


def resize_rgb_bilinear(img, w, h):
    sh, sw = img.shape[:2]
    if (sw, sh) == (w, h):
        return img

    def taps(src, dst):
        scale = F32(src) / F32(dst)
        s = np.clip((np.arange(dst, dtype=F32) + F32(0.5)) * scale - F32(0.5), F32(0), F32(src - 1))
        i0 = np.floor(s).astype(np.int64)
        i1 = np.minimum(i0 + 1, src - 1)
        return i0, i1, (s - i0.astype(F32)).astype(F32)

    x0, x1, fx = taps(sw, w)
    y0, y1, fy = taps(sh, h)
    a = img.astype(F32)
    fx = fx[None, :, None]
    gx = F32(1) - fx
    r0, r1 = a[y0], a[y1]
    top = r0[:, x0] * gx + r0[:, x1] * fx
    bot = r1[:, x0] * gx + r1[:, x1] * fx
    fy = fy[:, None, None]
    v = top * (F32(1) - fy) + bot * fy
    return np.clip(round_half_away(v), 0, 255).astype(np.uint8)


def resize_label_nearest(lab, w, h):
    sh, sw = lab.shape
    if (sw, sh) == (w, h):
        return lab
    ix = np.minimum(((np.arange(w) + 0.5) * sw / w).astype(np.int64), sw - 1)
    iy = np.minimum(((np.arange(h) + 0.5) * sh / h).astype(np.int64), sh - 1)
    return lab[iy][:, ix]


def crop_is_varied(lab, x0, y0, w, h, cat_max_ratio):
    counts = np.bincount(lab[y0 : y0 + h, x0 : x0 + w].ravel(), minlength=256)
    counts[255] = 0
    total = counts.sum()
    return (counts > 0).sum() > 1 and counts.max() < cat_max_ratio * total


def rem_euclid(x, m):
    r = np.fmod(x, F32(m))
    return np.where(r < 0, r + F32(abs(m)), r).astype(F32)


def rgb_to_hsv(img):
    a = img.astype(F32) / F32(255)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    d = mx - mn
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.select(
            [d == 0, mx == r, mx == g],
            [F32(0), F32(60) * rem_euclid((g - b) / d, 6.0), F32(60) * ((b - r) / d + F32(2))],
            F32(60) * ((r - g) / d + F32(4)),
        ).astype(F32)
        s = np.where(mx == 0, F32(0), d / mx).astype(F32)
    return h, s, mx


def hsv_to_rgb(h, s, v):
    c = v * s
    hp = rem_euclid(h, 360.0) / F32(60)
    x = c * (F32(1) - np.abs(np.fmod(hp, F32(2)) - F32(1)))
    sector = np.minimum(hp.astype(np.uint32), 5)
    z = np.zeros_like(c)
    r = np.choose(sector, [c, x, z, z, x, c])
    g = np.choose(sector, [x, c, c, x, z, z])
    b = np.choose(sector, [z, z, x, c, c, x])
    m = v - c
    out = np.stack([r, g, b], axis=-1)
    return np.clip(round_half_away((out + m[..., None]) * F32(255)), 0, 255).astype(np.uint8)


def photometric(img, op, value):
    """One part of the distortion: 0 brightness, 1 contrast, 2 saturation, 3 hue."""
    if op in (0, 1):
        alpha, beta = (F32(1), F32(value)) if op == 0 else (F32(value), F32(0))
        return np.clip(img.astype(F32) * alpha + beta, 0, 255).astype(np.uint8)
    h, s, v = rgb_to_hsv(img)
    if op == 2:
        s = np.clip(s * F32(value), F32(0), F32(1))
    else:
        h = h + F32(value)
    return hsv_to_rgb(h, s, v)


MEAN = np.array([123.675, 116.28, 103.53], dtype=F32)
INV_STD = (F32(1) / np.array([58.395, 57.12, 57.375], dtype=F32)).astype(F32)


class SegDraws:
    """Random draws in MMSeg's order (rescale ratio, crop, flip, photometric parts)."""

    def __init__(self, rng, ratio=(0.5, 2.0), tries=10, cat_max_ratio=0.75):
        self.rng, self.ratio, self.tries, self.cat = rng, ratio, tries, cat_max_ratio

    def size(self, w0, h0):
        r = self.rng.uniform(*self.ratio)
        tw, th = int(w0 * r), int(h0 * r)
        f = min(max(tw, th) / max(w0, h0), min(tw, th) / min(w0, h0))
        return max(int(w0 * f + 0.5), 1), max(int(h0 * f + 0.5), 1)

    def crop(self, lab, cw, ch):
        h, w = lab.shape
        draw = lambda: (self.rng.randint(0, w - cw), self.rng.randint(0, h - ch))
        x0, y0 = draw()
        for _ in range(self.tries):
            if crop_is_varied(lab, x0, y0, cw, ch, self.cat):
                break
            x0, y0 = draw()
        return x0, y0

    def flip(self):
        return self.rng.random() < 0.5

    def photometric(self):
        r, ops = self.rng, []
        contrast = lambda: ops.append((1, r.uniform(0.5, 1.5))) if r.random() < 0.5 else None
        if r.random() < 0.5:
            ops.append((0, r.uniform(-32, 32)))
        first = r.random() < 0.5
        if first:
            contrast()
        if r.random() < 0.5:
            ops.append((2, r.uniform(0.5, 1.5)))
        if r.random() < 0.5:
            ops.append((3, r.randint(-18, 18) * 2.0))
        if not first:
            contrast()
        return ops


def seg_sample(img, lab, crop, draws=None, trace=None):
    """The pipeline on one decoded sample: random `draws`, or a replayed Rust `trace`
    (geometry [w, h, x0, y0, cw, ch, flip], photometric [[op, value], ...])."""
    h0, w0 = lab.shape
    if trace is not None:
        geo, ops = trace
        w, h, x0, y0, cw, ch, flip = geo
    else:
        w, h = draws.size(w0, h0)
    img, lab = resize_rgb_bilinear(img, w, h), resize_label_nearest(lab, w, h)
    if trace is None:
        cw, ch = min(crop, w), min(crop, h)
        x0, y0 = draws.crop(lab, cw, ch)
        flip = draws.flip()
    img, lab = img[y0 : y0 + ch, x0 : x0 + cw], lab[y0 : y0 + ch, x0 : x0 + cw]
    if flip:
        img, lab = img[:, ::-1], lab[:, ::-1]
    for op, value in ops if trace is not None else draws.photometric():
        img = photometric(img, int(op), value)
    x = ((img.astype(F32) - MEAN) * INV_STD).transpose(2, 0, 1)
    xp = np.zeros((3, crop, crop), dtype=F32)
    yp = np.full((crop, crop), 255, dtype=np.uint8)
    xp[:, :ch, :cw] = x
    yp[:ch, :cw] = lab
    return xp, yp


class CityscapesPng(torch.utils.data.Dataset):
    def __init__(self, files, lut, crop):
        self.files, self.lut, self.crop = files, lut, crop

    def __len__(self):
        return len(self.files)

    def decode(self, i):
        img_path, lab_path = self.files[i]
        img = np.asarray(Image.open(img_path).convert("RGB"))
        lab = self.lut[np.asarray(Image.open(lab_path))]
        return img, lab

    def __getitem__(self, i):
        img, lab = self.decode(i)
        x, y = seg_sample(img, lab, self.crop, draws=SegDraws(random.Random()))
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


class SegRow:
    def __init__(self, t, p, threads):
        self.t, self.p = t, p
        files = [line.split("\t") for line in st_io.text(t["in.files"]).split("\n")]
        lut = t["in.lut"].numpy()
        self.ds = CityscapesPng(files, lut, p["crop"])
        self.loader = torch.utils.data.DataLoader(
            self.ds, batch_size=p["batch"], shuffle=True, num_workers=threads, persistent_workers=threads > 0
        )

    def check(self):
        xs, ys = [], []
        i = 0
        while f"in.geometry{i}" in self.t:
            img, lab = self.ds.decode(i)
            trace = (self.t[f"in.geometry{i}"].tolist(), self.t[f"in.photometric{i}"].tolist())
            x, y = seg_sample(img, lab, self.p["crop"], trace=trace)
            xs.append(torch.from_numpy(x))
            ys.append(torch.from_numpy(np.ascontiguousarray(y)))
            i += 1
        return [("x", torch.stack(xs), self.t["out.x"]), ("y", torch.stack(ys), self.t["out.y"])]

    def fn(self, mode):
        def run():
            n = 0
            for xb, _ in self.loader:
                n += xb.shape[0]
            return n

        return run
