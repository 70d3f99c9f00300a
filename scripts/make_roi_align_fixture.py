"""Writes the RoIAlign fixture kd-det's tests compare against: torchvision's `roi_align`
(`aligned=True`, the variant Faster R-CNN FPN configs use, and `aligned=False`), values and the
gradient of a weighted sum with respect to the features.

Run from the repository root with a Python that imports torch and torchvision:

    python3 scripts/make_roi_align_fixture.py

The RoIs cover what the extractor meets: tiny (below one map pixel, and of zero size), large,
long and thin, partly and wholly outside the map, on the border, on two images, at two spatial
scales, with adaptive (0) and fixed (2) sampling ratios.
"""

import json
import os

import torch
import torchvision
from torchvision.ops import roi_align

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "kd-det", "src", "two_stage", "fixtures", "roi_align.json")


def short(t):
    """Values to 10 significant digits (far below the tests' 1e-5 tolerance)."""
    return [float(f"{v:.10g}") for v in t.reshape(-1).tolist()]


def main():
    g = torch.Generator().manual_seed(7)
    feat = torch.randn(2, 3, 12, 14, generator=g, dtype=torch.float64)
    feat = (feat * 64).round() / 64  # short decimal values
    rois = [
        [0, 4.0, 4.0, 40.0, 36.0],
        [0, 0.0, 0.0, 56.0, 48.0],
        [1, 10.3, 7.7, 11.1, 8.2],
        [1, 20.0, 20.0, 20.0, 20.0],
        [0, -12.0, -8.0, 20.0, 16.0],
        [1, 50.0, 40.0, 90.0, 70.0],
        [0, 70.0, 60.0, 99.0, 80.0],
        [1, 2.5, 30.0, 55.5, 34.0],
        [0, 5.0, 1.0, 9.0, 47.0],
        [1, 0.0, 0.0, 3.9, 3.9],
        [0, 13.2, 21.9, 33.3, 29.4],
    ]
    rois_t = torch.tensor(rois, dtype=torch.float64)
    cases = []
    settings = [(0.25, 0, True), (0.25, 0, False), (0.25, 2, True), (0.125, 0, True), (0.125, 2, False)]
    for scale, ratio, aligned in settings:
        f = feat.clone().requires_grad_(True)
        out = roi_align(f, rois_t, (7, 7), scale, ratio, aligned)
        w = torch.arange(out.numel(), dtype=torch.float64).view_as(out).remainder(13) - 6
        (out * w).sum().backward()
        cases.append(
            {
                "spatial_scale": scale,
                "sampling_ratio": ratio,
                "aligned": aligned,
                "out": short(out.detach()),
                "grad": short(f.grad),
            }
        )
    doc = {
        "made_by": f"torchvision {torchvision.__version__} ops.roi_align, torch {torch.__version__}",
        "feat_shape": list(feat.shape),
        "feat": feat.reshape(-1).tolist(),
        "rois": rois,
        "output_size": 7,
        "grad_weight": "w[i] = (i mod 13) - 6 over the flattened output",
        "cases": cases,
    }
    with open(OUT, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
