"""Tests of uncertainty_robust.data on real data (embedded MNIST, Debian Fashion-MNIST,
torchvision's MNIST loader fed with the embedded digits)."""

import os
import struct

import numpy as np
import pytest
import torch

from uncertainty_robust.data import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    DatasetInfo,
    DatasetNotFound,
    dataset_info,
    load_arrays,
    load_tensors,
)


def test_registry():
    assert set(DATASETS) == {"mnist_embedded", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"}
    for name, info in DATASETS.items():
        assert isinstance(info, DatasetInfo) and info.name == name
        assert len(info.mean) == len(info.std) == info.channels
        assert dataset_info(name) is info
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("cifar10").size == 32 and dataset_info("cifar10").channels == 3


def test_unknown_name_lists_known():
    with pytest.raises(ValueError) as exc:
        dataset_info("imagenet")
    for name in DATASETS:
        assert name in str(exc.value)
    with pytest.raises(ValueError):
        load_arrays("imagenet", "train")
    with pytest.raises(ValueError):
        load_arrays("mnist_embedded", "val")


def test_embedded_mnist_arrays():
    sizes = {"train": 8000, "test": 2000}
    for split, n in sizes.items():
        x, y = load_arrays("mnist_embedded", split)
        assert x.shape == (n, 1, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        counts = np.bincount(y, minlength=10)
        assert len(counts) == 10 and counts.min() > 0.08 * n  # all classes, stratified
        assert x.max() == 255 and x.min() == 0
        assert not x.flags.writeable  # cached arrays are protected
        assert load_arrays("mnist_embedded", split)[0] is x  # in-process cache


def test_embedded_split_disjoint_and_stratified():
    xtr, ytr = load_arrays("mnist_embedded", "train")
    xte, yte = load_arrays("mnist_embedded", "test")
    tr = {row.tobytes() for row in xtr.reshape(len(xtr), -1)}
    te = {row.tobytes() for row in xte.reshape(len(xte), -1)}
    assert len(tr) == 8000 and len(te) == 2000 and not tr & te
    ratio = np.bincount(yte, minlength=10) / (np.bincount(ytr, minlength=10) + np.bincount(yte, minlength=10))
    assert np.all(np.abs(ratio - 0.2) < 0.005)
    assert len(set(ytr[:50].tolist())) >= 8  # shuffled, not digit-major


def test_load_tensors_range_and_subset():
    x, y = load_tensors("mnist_embedded", "test")
    assert x.shape == (2000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    xa, ya = load_arrays("mnist_embedded", "test")
    assert torch.equal(x, torch.from_numpy(xa.astype(np.float32)) / 255)

    xs, ys = load_tensors("mnist_embedded", "test", n=205, seed=1)
    assert xs.shape == (205, 1, 28, 28) and set(ys.tolist()) == set(range(10))
    counts = torch.bincount(ys, minlength=10)
    assert int(counts.min()) == 20 and int(counts.max()) == 21  # balanced
    xs2, ys2 = load_tensors("mnist_embedded", "test", n=205, seed=1)
    assert torch.equal(xs, xs2) and torch.equal(ys, ys2)  # deterministic
    xs3, _ = load_tensors("mnist_embedded", "test", n=205, seed=2)
    assert not torch.equal(xs, xs3)
    xs.zero_()  # fresh tensors: the cache is untouched
    assert torch.equal(load_tensors("mnist_embedded", "test", n=205, seed=1)[0], xs2)
    assert load_tensors("mnist_embedded", "test", n=5000)[0].shape[0] == 2000


def test_fashion_mnist_debian():
    if not os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST, "t10k-labels-idx1-ubyte.gz")):
        pytest.skip(
            f"Debian Fashion-MNIST not in {DEBIAN_FASHION_MNIST} (apt-get install dataset-fashion-mnist)"
        )
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = load_arrays("fashion_mnist", split)
        assert x.shape == (n, 1, 28, 28) and x.dtype == np.uint8
        assert np.array_equal(np.bincount(y), np.full(10, n // 10))
    x, y = load_tensors("fashion_mnist", "test", n=100, seed=0)
    assert x.shape == (100, 1, 28, 28) and torch.equal(torch.bincount(y), torch.full((10,), 10))


def test_missing_cifar10_root(tmp_path):
    root = tmp_path / "no-cifar-here"
    with pytest.raises(DatasetNotFound) as exc:
        load_arrays("cifar10", "train", root=str(root))
    msg = str(exc.value)
    assert "\n" not in msg and str(root) in msg and "cifar10" in msg and "download" in msg
    assert isinstance(exc.value, FileNotFoundError)
    with pytest.raises(DatasetNotFound) as exc:
        load_arrays("cifar10", "test", root=None)
    assert "\n" not in str(exc.value) and "--data-root" in str(exc.value)


def _write_idx(path, arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, arr.ndim))
        f.write(struct.pack(f">{arr.ndim}I", *arr.shape))
        f.write(arr.tobytes())


def test_torchvision_mnist_loader_on_real_digits(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    expected = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = load_arrays("mnist_embedded", split)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        expected[split] = (x, y)
    for split, (x, y) in expected.items():
        xm, ym = load_arrays("mnist", split, root=tmp_path)
        assert xm.shape == x.shape and xm.dtype == np.uint8 and ym.dtype == np.int64
        assert np.array_equal(xm, x) and np.array_equal(ym, y)
    xt, yt = load_tensors("mnist", "train", root=str(tmp_path), n=100)
    assert xt.shape == (100, 1, 28, 28) and float(xt.max()) <= 1.0
