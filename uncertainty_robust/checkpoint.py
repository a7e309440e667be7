"""Atomic checkpoints that load with ``weights_only=True``, and what to do when one cannot be read.

A checkpoint is written to a temporary file in the same directory, fsynced, then renamed over the
old one, so a crash at any moment leaves either the previous or the new checkpoint, never half of
one. RNG states are stored as uint8 tensors so that ``torch.load(weights_only=True)`` accepts them.

Damage from outside (a bad disk, a copy cut short, another tool filling the filesystem) can still
leave a file that exists but cannot be loaded: :func:`load` raises :class:`Unreadable` for it (never
a raw PyTorch error), :func:`keep_previous` keeps the last good checkpoint beside the current one,
and :func:`move_aside` renames a damaged file to ``<name>.unreadable-<time>`` so that nothing reads
it again and nothing is deleted. A write that fails because the disk is full (``ENOSPC``, or
PyTorch's ``inline_container.cc ... unexpected pos`` with that error underneath) raises
:class:`DiskFull`, a user error naming the file and the free space.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import IO, Callable, Optional

import numpy as np
import torch

from .errors import DiskFull

CKPT_NAME = "checkpoint.pt"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class Unreadable(RuntimeError):
    """A checkpoint file that exists but cannot be loaded (truncated, empty, not a zip, not ours)."""

    def __init__(self, path: os.PathLike, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{path}: {why}")


def free_bytes(path: os.PathLike) -> Optional[int]:
    """Free bytes for an unprivileged user on the filesystem of ``path`` (or of its nearest
    existing parent); None when it cannot be told."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def is_disk_full(e: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, also when PyTorch's writer turned it into ``unexpected pos``
    (the OSError is then the RuntimeError's context)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFull) or (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS):
            return True
        e = e.__cause__ or e.__context__
    return False


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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if is_disk_full(e) and not isinstance(e, DiskFull):
            raise DiskFull(path, free_bytes(path.parent)) from e
        raise


def save_atomic(obj: dict, path: os.PathLike) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def write_json_atomic(obj, path: os.PathLike, indent: int = 1) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent, default=float).encode()))


def load(path: os.PathLike, map_location="cpu", required: tuple = ()) -> Optional[dict]:
    """The checkpoint in ``path``; None when there is none. Raises :class:`Unreadable` when the file
    exists but cannot be loaded, or lacks one of the ``required`` keys."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        return None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated: RuntimeError, empty: EOFError, not a zip: ...
        if path.is_dir():
            raise
        size = path.stat().st_size if path.exists() else 0
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:120]  # PyTorch's first sentence
        raise Unreadable(path, f"{size} bytes, {type(e).__name__}" + (f": {first}" if first else "")) from e
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise Unreadable(path, f"not a checkpoint of this kind (no {', '.join(missing)})")
    return state


def looks_whole(path: os.PathLike) -> bool:
    """A cheap check that ``path`` is a complete checkpoint (a zip whose end record is there):
    false for a truncated, empty or overwritten file. Reads only the file's end."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def move_aside(path: os.PathLike) -> Path:
    """Rename a damaged file to ``<name>.unreadable-<time>`` beside it (never deleted); returns the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    new = path.with_name(f"{path.name}.unreadable-{stamp}")
    n = 1
    while new.exists():
        n += 1
        new = path.with_name(f"{path.name}.unreadable-{stamp}-{n}")
    os.replace(path, new)
    return new


def keep_previous(path: os.PathLike, previous: os.PathLike) -> Optional[Path]:
    """Before ``path`` is replaced: make ``previous`` the current ``path`` (a hard link, or a copy
    where the filesystem has none), so a damaged ``path`` later still leaves the epoch before it.
    A ``path`` that is already damaged is not kept: it is moved aside, and its path returned."""
    path, previous = Path(path), Path(previous)
    if not path.exists():
        return None
    if not looks_whole(path):
        return move_aside(path)
    tmp = previous.with_name(f"{previous.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(path, tmp)
        except OSError as e:
            if is_disk_full(e):
                raise
            shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e) and not isinstance(e, DiskFull):
            raise DiskFull(previous, free_bytes(previous.parent)) from e
        raise
    return None
