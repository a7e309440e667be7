"""Deterministic, class-balanced subsets: the evaluation points (the same for every trial of a
dataset), the training subset and the validation split carved from the training split. Orders come
from a splitmix64 hash of (seed, index), fixed across numpy versions."""

from __future__ import annotations

import numpy as np

from ..errors import UserError


def _hash_keys(seed: int, n: int) -> np.ndarray:
    """n pseudo-random uint64 keys (splitmix64 of seed and index): a permutation source that,
    unlike numpy's Generator streams, is fixed across numpy versions."""
    with np.errstate(over="ignore"):
        base = (int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % (1 << 64)
        z = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(base)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def permutation(seed: int, n: int) -> np.ndarray:
    """A deterministic permutation of range(n) for ``seed``."""
    return np.argsort(_hash_keys(seed, n), kind="stable")


def balanced_counts(class_sizes: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Split ``n`` over classes as evenly as possible (n//C or n//C + 1 each, the +1s going to
    classes picked by ``seed``), never above a class's size; any shortfall of small classes
    is spread over the others."""
    sizes = np.asarray(class_sizes, dtype=np.int64)
    n = min(int(n), int(sizes.sum()))
    counts = np.zeros_like(sizes)
    rank = permutation(seed + 1, len(sizes))  # who gets the remainder first
    while counts.sum() < n:
        open_ = rank[counts[rank] < sizes[rank]]
        left = n - int(counts.sum())
        share, extra = divmod(left, len(open_))
        add = np.full(len(open_), share)
        add[:extra] += 1
        counts[open_] = np.minimum(counts[open_] + add, sizes[open_])
    return counts


def stratified_indices(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a deterministic, class-balanced subset of ``n`` of the labels ``y``."""
    y = np.asarray(y)
    classes, inverse = np.unique(y, return_inverse=True)
    counts = balanced_counts(np.bincount(inverse, minlength=len(classes)), n, seed)
    order = permutation(seed, len(y))
    picked = [order[inverse[order] == c][:k] for c, k in enumerate(counts)]
    return np.sort(np.concatenate(picked))


# ----------------------------------------------------------------------------- train / validation split
_VAL_SALT = 0x5EED_0A11  # keeps the validation draw apart from the training subset's (seed 0) order


def train_val_indices(y: np.ndarray, n_train: int | None, n_val: int, val_seed: int = 0):
    """``(train_idx, val_idx)``, disjoint sorted indices into the training split ``y``.

    The validation part is a stratified (class-balanced) subset of ``n_val`` points drawn with
    ``val_seed`` from the whole training split; the training part is the stratified subset of
    ``n_train`` points (seed 0, as before there was a validation split) of what remains, or all of
    it when ``n_train`` is None or larger. ``n_val`` 0: no validation part."""
    y = np.asarray(y)
    if n_val <= 0:
        val = np.zeros(0, dtype=np.int64)
    else:
        if n_val >= len(y):
            raise UserError(f"val_points: {n_val} is not below the training split's {len(y)} points")
        val = stratified_indices(y, n_val, _VAL_SALT + int(val_seed)).astype(np.int64)
    rest = np.setdiff1d(np.arange(len(y), dtype=np.int64), val, assume_unique=True)
    if n_train is not None and n_train < len(rest):
        rest = rest[stratified_indices(y[rest], n_train, 0)]
    return rest, val
