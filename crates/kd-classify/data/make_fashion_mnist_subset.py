#!/usr/bin/env python3
"""Builds the class-balanced Fashion-MNIST subset embedded in kd-core.

Usage:
    python3 make_fashion_mnist_subset.py SRC_DIR [OUT_DIR]

SRC_DIR holds the four official files (train-images-idx3-ubyte.gz,
train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz),
e.g. /usr/share/datasets/fashion-mnist from the Debian package
dataset-fashion-mnist. OUT_DIR defaults to fashion-mnist-subset/ next to this script.

Selection is deterministic: for every class, the first 1000 images of the
official training split and the first 200 images of the official test split,
in file order. The selected images keep their relative file order (they are not
grouped by class). Output is gzip-compressed IDX with a zero timestamp and no
file name in the gzip header, so re-running the script reproduces the committed
files byte for byte (with the same zlib; the decompressed IDX content is
identical with any zlib).
"""

import gzip
import os
import struct
import sys

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
NUM_CLASSES = 10


def read_idx(path, expected_magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        sys.exit(f"{path}: magic {magic:#x}, expected {expected_magic:#x}")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return dims, data[4 + 4 * ndim :]


def select(src, split, per_class):
    (n, h, w), pixels = read_idx(os.path.join(src, f"{split}-images-idx3-ubyte.gz"), 0x803)
    (nl,), labels = read_idx(os.path.join(src, f"{split}-labels-idx1-ubyte.gz"), 0x801)
    assert n == nl and len(pixels) == n * h * w and len(labels) == n
    counts = [0] * NUM_CLASSES
    keep = []
    for i, y in enumerate(labels):
        if counts[y] < per_class:
            counts[y] += 1
            keep.append(i)
    assert counts == [per_class] * NUM_CLASSES, counts
    size = h * w
    out_pixels = b"".join(pixels[i * size : (i + 1) * size] for i in keep)
    out_labels = bytes(labels[i] for i in keep)
    return len(keep), h, w, out_pixels, out_labels


def write_gz(path, payload):
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
            f.write(payload)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    src = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[2] if len(sys.argv) == 3 else os.path.join(here, "fashion-mnist-subset")
    os.makedirs(out, exist_ok=True)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("t10k", TEST_PER_CLASS)):
        n, h, w, pixels, labels = select(src, split, per_class)
        write_gz(
            os.path.join(out, f"{split}-images-idx3-ubyte.gz"),
            struct.pack(">IIII", 0x803, n, h, w) + pixels,
        )
        write_gz(
            os.path.join(out, f"{split}-labels-idx1-ubyte.gz"),
            struct.pack(">II", 0x801, n) + labels,
        )
        print(f"{split}: {n} images of {h}x{w}")


if __name__ == "__main__":
    main()
