#!/usr/bin/env bash
# Developer check: compares `kd eval-coco` (kd-core's COCO box evaluation) with pycocotools'
# COCOeval on randomized ground truth and detections: boxes of every size (some exactly on the
# 32² / 96² boundaries), crowd regions, images without ground truth or detections, non-contiguous
# category ids, detections of unknown categories, score ties, more than 100 detections per image
# and category, annotation id 0. Fails if any of the twelve stats (or a per-category AP) differs
# by more than 1e-3.
#
# Needs python3.11 (or $PYTHON) and access to PyPI; pycocotools and numpy are installed with
# `pip --target` into the kd-rs cache and reused. Not part of `cargo xtask test`.
# Usage: scripts/check_coco_eval.sh [number of cases, default 12]
set -euo pipefail
cd "$(dirname "$0")/.."
n_cases="${1:-12}"
python="${PYTHON:-python3.11}"
cache="${KD_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kd-rs}"
pydeps="$cache/pycocotools-$("$python" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! PYTHONPATH="$pydeps" "$python" -c 'import pycocotools, numpy' 2>/dev/null; then
    echo "== installing pycocotools and numpy into $pydeps"
    "$python" -m pip install --quiet --disable-pip-version-check --target "$pydeps" pycocotools numpy
fi
PYTHONPATH="$pydeps" "$python" -c \
    'import importlib.metadata as m; print("pycocotools", m.version("pycocotools"), "numpy", m.version("numpy"))'

echo "== building kd"
cargo build --quiet -p kd-repro --bin kd

worst=0
for seed in $(seq 0 $((n_cases - 1))); do
    d="$work/case$seed"
    mkdir -p "$d"
    "$python" scripts/check_coco_eval.py gen "$d" "$seed"
    OMP_NUM_THREADS=1 cargo run --quiet -p kd-repro --bin kd -- eval-coco --gt "$d/gt.json" --dt "$d/dt.json" --json \
        > "$d/ours.json"
    PYTHONPATH="$pydeps" "$python" scripts/check_coco_eval.py compare "$d" "$d/ours.json" || {
        kept="${TMPDIR:-/tmp}/coco-eval-case$seed"
        rm -rf "$kept" && cp -r "$d" "$kept"
        echo "case $seed differs from pycocotools (files kept in $kept)"
        exit 1
    }
    worst=$("$python" -c "print(max($worst, $(cat "$d/worst.txt")))")
done
echo "all $n_cases cases agree with pycocotools; largest difference over the stats and per-category APs: $worst"
