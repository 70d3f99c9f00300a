#!/usr/bin/env bash
# Developer check: compares kd-core's Cityscapes pixel-level evaluation with the official
# `cityscapesscripts` one on synthetic scenes and perturbed predictions.
#
# Needs python3 with venv and access to PyPI. Writes everything to a temporary folder.
# Usage: scripts/check_cityscapes_eval.sh [number of validation images, default 40]
set -euo pipefail
cd "$(dirname "$0")/.."
n_val="${1:-40}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== installing cityscapesscripts into $work/venv"
python3 -m venv "$work/venv"
# numpy 2.4 removed np.in1d, which the script still calls.
"$work/venv/bin/pip" install --quiet --disable-pip-version-check cityscapesscripts "numpy<2"
"$work/venv/bin/pip" show cityscapesscripts | grep -E '^(Name|Version)'; "$work/venv/bin/python" -c 'import numpy; print("numpy", numpy.__version__)'

echo "== synthetic tree, predictions and kd-core's evaluation"
OMP_NUM_THREADS=1 cargo run --release --quiet -p kd-core --example synth_cityscapes -- \
    "$work/cityscapes" --train 0 --val "$n_val" \
    --predictions "$work/results" --report "$work/ours.json"

echo "== official evaluation"
mkdir -p "$work/export"
CITYSCAPES_DATASET="$work/cityscapes" CITYSCAPES_RESULTS="$work/results" \
    CITYSCAPES_EXPORT_DIR="$work/export" \
    "$work/venv/bin/csEvalPixelLevelSemanticLabeling" > "$work/official.txt"
tail -n 32 "$work/official.txt"

echo "== comparison"
"$work/venv/bin/python" - "$work/ours.json" "$work/export/resultPixelLevelSemanticLabeling.json" <<'PY'
import json, math, sys
ours = json.load(open(sys.argv[1]))
theirs = json.load(open(sys.argv[2]))
worst = 0.0
print(f"{'class':<14} {'kd-core':>10} {'official':>10}")
for c in ours["classes"]:
    a = c["iou"] if c["iou"] is not None else float("nan")
    b = theirs["classScores"][c["name"]]
    print(f"{c['name']:<14} {a:>10.6f} {b:>10.6f}")
    if math.isnan(a) != math.isnan(b):
        sys.exit(f"{c['name']}: NaN in one evaluation only")
    if not math.isnan(a):
        worst = max(worst, abs(a - b))
a, b = ours["mean_iou"], theirs["averageScoreClasses"]
print(f"{'mean':<14} {a:>10.6f} {b:>10.6f}")
worst = max(worst, abs(a - b))
conf = theirs["confMatrix"]
if conf != ours["confusion"]:
    sys.exit("confusion matrices differ")
print(f"identical confusion matrices; largest IoU difference {worst:.3g}")
sys.exit(0 if worst < 1e-9 else 1)
PY
