"""The PyTorch side of `cargo xtask bench`: checks, then times, every row of a check folder.

    python reference.py --check DIR --out results.json [--threads N] [--device cpu|cuda]
                        [--warm-up S] [--measure S] [--filter REGEX] [--serve]

For each row of DIR/manifest.json it loads the Rust side's inputs and weights, recomputes the
outputs and gradients in eager PyTorch and compares them tensor by tensor: the max-norm
relative error (largest absolute difference over the largest magnitude of the Rust tensor)
must be at most 1e-5. A tensor whose Rust values all lie below 1e-6 is rounding noise of a
quantity that is zero in exact arithmetic (e.g. the gradient of a bias the loss is invariant
to); it must match to 1e-6 absolute instead. Integer outputs must match exactly. A row that
fails is reported and not timed. Passing rows are timed
with criterion's protocol (see timing.py).

With --serve, the rows are only checked at first; then each line `time ID` on stdin times that
row and answers `median ID NS` on stdout, until end of input. `cargo xtask bench` uses this to
time each row right next to its Rust twin, so both see the same load on a shared machine.
Progress goes to stderr.
"""

import argparse
import json
import platform
import re
import sys
import time

import torch

import kernels
import nets
import pipelines
import st_io
import timing

TOLERANCE = 1e-5
NOISE_FLOOR = 1e-6

ROWS = {
    "kd_loss": kernels.KdLoss,
    "dkd": kernels.Dkd,
    "fitnets": kernels.FitNets,
    "cwd": kernels.Cwd,
    "gdd_loss": kernels.Cwd,
    "gaussian_kl": kernels.GaussianKl,
    "gdd": nets.Gdd,
    "mgd": nets.Mgd,
    "aff_fdp": nets.AffFdpRow,
    "kd3_select": kernels.Kd3Select,
    "kd3_mix": kernels.Kd3Mix,
    "nt_xent": kernels.NtXent,
    "info_nce": kernels.InfoNce,
    "selfreg": kernels.SelfReg,
    "kd_step": nets.KdStep,
}
PIPELINES = {"cifar_pipeline": pipelines.CifarRow, "seg_pipeline": pipelines.SegRow}


def rel_error(got, want):
    """Max-norm relative error of `got` against the Rust tensor `want`; exact for integers."""
    got = got.detach().to("cpu")
    if got.shape != want.shape:
        return float("inf"), f"shape {list(got.shape)} vs {list(want.shape)}"
    if not want.is_floating_point():
        bad = int((got.to(want.dtype) != want).sum())
        return (0.0 if bad == 0 else float("inf")), f"{bad} entries differ"
    want64, got64 = want.double(), got.double()
    scale = want64.abs().max().item() if want64.numel() else 0.0
    diff = (got64 - want64).abs().max().item() if want64.numel() else 0.0
    note = f"max |diff| {diff:.3e}, max |rust| {scale:.3e}"
    if scale < NOISE_FLOOR:
        return diff / NOISE_FLOOR * TOLERANCE, note + " (below the noise floor: absolute)"
    return diff / scale, note


def check_row(row):
    worst, worst_name, notes = 0.0, "", []
    for name, got, want in row.check():
        if got is None:
            return False, float("inf"), f"{name}: no value (no gradient?)"
        err, note = rel_error(got, want)
        if err > worst:
            worst, worst_name = err, f"{name}: {note}"
        if err > TOLERANCE:
            notes.append(f"{name}: {note}")
    ok = not notes
    return ok, worst, "; ".join(notes) if notes else worst_name


def machine():
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return cpu


def peak_copy_bandwidth(dev):
    """Bytes per second of a large device-to-device copy: the practical bandwidth ceiling."""
    n = 256 * 1024 * 1024 // 4
    a = torch.empty(n, device=dev)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * a.numel() * 4 * reps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warm-up", type=float, default=3.0)
    ap.add_argument("--measure", type=float, default=5.0)
    ap.add_argument("--filter", default=None)
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--serve", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no GPU (torch.cuda.is_available() is False)")
    dev = torch.device(args.device)
    manifest = json.load(open(f"{args.check}/manifest.json"))
    pattern = re.compile(args.filter) if args.filter else None
    out = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "cpu": machine(),
        "tolerance": TOLERANCE,
        "rows": [],
    }
    if args.device == "cuda":
        out["peak_copy_bandwidth"] = peak_copy_bandwidth(dev)
    live = {}
    for spec in manifest["rows"]:
        modes = [m for m in spec["modes"] if pattern is None or pattern.search(m["id"])]
        if not modes:
            continue
        tensors = st_io.load(f"{args.check}/{spec['file']}")
        kind = spec["kind"]
        torch.manual_seed(0)
        if kind in PIPELINES:
            row = PIPELINES[kind](tensors, spec["params"], args.threads)
        else:
            row = ROWS[kind](tensors, spec["params"], dev)
        ok, err, note = check_row(row)
        status = "ok" if ok else "MISMATCH"
        log(f"  check {kind}/{spec['label']}: {status} (max rel. error {err:.2e}; {note})")
        for m in modes:
            entry = {"id": m["id"], "check_ok": ok, "check_error": err, "check_note": note, "median_ns": None}
            out["rows"].append(entry)
            if not ok or args.check_only:
                continue
            timed = (row.fn(m["mode"]), spec["sample_size"], entry)
            if args.serve:
                live[m["id"]] = timed
            else:
                time_row(m["id"], timed, args)
        if not args.serve:
            del row
    if args.serve:
        save(out, args.out)
        print("ready", flush=True)
        for line in sys.stdin:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "time" and parts[1] in live:
                ns = time_row(parts[1], live[parts[1]], args)
                print(f"median {parts[1]} {ns}", flush=True)
            else:
                print(f"unknown {line.strip()}", flush=True)
    save(out, args.out)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def time_row(row_id, timed, args):
    fn, samples, entry = timed
    entry["median_ns"] = timing.measure(fn, args.warm_up, args.measure, samples)
    log(f"  time  {row_id}: {entry['median_ns'] / 1e6:.3f} ms (PyTorch)")
    return entry["median_ns"]


def save(out, path):
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
