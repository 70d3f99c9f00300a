"""Reads safetensors files without the safetensors package.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name to
its dtype, shape and byte range, then the raw bytes. Parsing it here keeps the reference's only
dependency torch (plus numpy and Pillow for the data pipelines).
"""

import json
import struct

import torch

_DTYPES = {
    "F32": torch.float32,
    "F64": torch.float64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def load(path):
    """Returns {name: CPU tensor} for every tensor in the file at `path`."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        shape = info["shape"]
        if end == start:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        buf = bytearray(data[base + start : base + end])
        out[name] = torch.frombuffer(buf, dtype=dtype).reshape(shape)
    return out


def text(t):
    """A byte tensor written by the Rust side (a path, a list) back as a string."""
    return bytes(t.tolist()).decode("utf-8")
