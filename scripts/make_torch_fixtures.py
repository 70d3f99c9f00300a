"""Writes the torch.save fixtures the weight-import tests read.

Every file here is made by PyTorch itself (and torchvision's and the benchmarks' own module
definitions), so the tests check our reader against what users actually hold. Run it with a
Python that imports torch and torchvision, from the repository root:

    python3 scripts/make_torch_fixtures.py [--repdistiller DIR]

`--repdistiller` points at a checkout of HobbitLong/RepDistiller (its `models/` package is
imported for the CIFAR ResNet/WRN fixtures). Weights are drawn with a fixed seed and rounded
to multiples of 1/64 so that fp16 copies are exact and the committed files compress well.
Expected outputs are written next to the checkpoints as JSON.
"""

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "crates", "kd-core", "tests", "fixtures", "torch")


class RunsCode:
    """An object whose unpickling would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/kd-rs-pickle-ran-code",))


def quantise_(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.randint(0, 64, t.shape, generator=g).float() / 64)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randint(-16, 17, t.shape, generator=g).float() / 64)
            elif name.endswith("bn1.weight") or ".bn" in name or name.endswith("gn.weight"):
                t.copy_(0.5 + torch.randint(0, 64, t.shape, generator=g).float() / 64)
            else:
                t.copy_(torch.round(t * 64) / 64)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def core_fixtures():
    """Format fixtures: dtypes, views into shared storages, nesting, prefixes, refused globals."""
    os.makedirs(CORE, exist_ok=True)
    base = torch.arange(24, dtype=torch.float32).view(4, 6) / 8
    sd = {
        "f32": base,
        "f32_view": base[1:3, 2:5],  # a strided view into f32's storage
        "f32_t": base.t(),  # non-contiguous, same storage
        "f16": (torch.arange(6, dtype=torch.float32) / 4).half(),
        "bf16": (torch.arange(6, dtype=torch.float32) / 4 - 1).bfloat16(),
        "f64": torch.tensor([[1.5, -2.25]], dtype=torch.float64),
        "i64": torch.tensor([3, -7, 11], dtype=torch.int64),
        "scalar": torch.tensor(42, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
    }
    expected = {k: {"shape": list(v.shape), "values": v.double().flatten().tolist()} for k, v in sd.items()}
    write_json(os.path.join(CORE, "dtypes.json"), expected)
    torch.save(sd, os.path.join(CORE, "dtypes_zip.pt"))
    torch.save(sd, os.path.join(CORE, "dtypes_legacy.pt"), _use_new_zipfile_serialization=False)
    # A training checkpoint: weights nested under "model", DataParallel-prefixed, next to an
    # optimiser state and metadata.
    w = {"module.fc.weight": base[:2].clone(), "module.fc.bias": torch.tensor([0.5, -0.5])}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    ckpt = {"epoch": 240, "model": w, "accuracy": torch.tensor(75.25), "optimizer": opt.state_dict()}
    torch.save(ckpt, os.path.join(CORE, "nested_legacy.pt"), _use_new_zipfile_serialization=False)
    torch.save(ckpt, os.path.join(CORE, "nested_zip.pt"))
    # Two state dicts side by side: ambiguous without --weights-key.
    torch.save({"student": w, "teacher": {"x": torch.ones(1)}}, os.path.join(CORE, "two_dicts.pt"))
    # Weights under an unexpected key name, beside metadata.
    torch.save({"meta": {"note": "x"}, "ema_weights_v2": w}, os.path.join(CORE, "odd_key.pt"))
    # Files that would run code when unpickled by Python.
    torch.save(RunsCode(), os.path.join(CORE, "runs_code.pt"))
    torch.save({"fc.weight": RunsCode(), "fc.bias": torch.ones(2)}, os.path.join(CORE, "runs_code_inside.pt"))
    # A pickle with no tensors at all, and a plain pickle that is not a torch file.
    import pickle

    with open(os.path.join(CORE, "plain.pkl"), "wb") as f:
        pickle.dump({"a": 1}, f, protocol=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repdistiller", help="a checkout of HobbitLong/RepDistiller")
    args = ap.parse_args()
    torch.manual_seed(0)
    core_fixtures()
    print("torch", torch.__version__, "fixtures written")


if __name__ == "__main__":
    sys.exit(main())
