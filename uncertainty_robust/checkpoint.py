"""Atomic checkpoints that load with ``weights_only=True``.

A checkpoint is written to a temporary file in the same directory, fsynced, then renamed over the
old one, so a crash at any moment leaves either the previous or the new checkpoint, never half of
one. RNG states are stored as uint8 tensors so that ``torch.load(weights_only=True)`` accepts them.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import IO, Callable, Optional

import numpy as np
import torch

CKPT_NAME = "checkpoint.pt"


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.stack(torch.cuda.get_rng_state_all())
        if torch.cuda.is_available()
        else torch.empty(0, dtype=torch.uint8),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
        "python_pos": int(random.getstate()[1][-1]),
    }


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if torch.cuda.is_available() and len(s["cuda"]):
        torch.cuda.set_rng_state_all(list(s["cuda"]))
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in s["python"].tolist()), None))


def atomic_write(path: os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write(file)`` to a temporary file beside ``path``, fsync, rename over it:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_atomic(obj: dict, path: os.PathLike) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def write_json_atomic(obj, path: os.PathLike, indent: int = 1) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent, default=float).encode()))


def load(path: os.PathLike, map_location="cpu") -> Optional[dict]:
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location=map_location, weights_only=True)
