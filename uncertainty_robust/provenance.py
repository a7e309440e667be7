"""Where a result comes from: the git commit of the code and the versions of what it ran on."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Optional

_STATE: dict = {}  # this process's git state, read once (see git_state)


def _git(*args: str) -> Optional[str]:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> Optional[str]:
    """HEAD of the code's checkout now (None outside git, or in a repository without commits, where
    ``rev-parse`` prints "HEAD" and fails). A record names :func:`git_state`'s instead."""
    out = _git("rev-parse", "HEAD")
    return (out.strip() or None) if out is not None else None


def git_state() -> dict:
    """``{"git_commit", "git_dirty"}`` of the code this process runs, read the first time it is
    asked (a trial asks when it starts: :func:`uncertainty_robust.trial.run_trial`), so a record
    written hours later names the commit its process started from, not a later HEAD; ``git_dirty``:
    tracked files differed from that commit (the record's code is the commit plus edits; None when
    unknown)."""
    if not _STATE:
        # --no-optional-locks: status would otherwise take .git/index.lock to refresh the index, and
        # a trial starting during the user's own `git commit` would make it fail
        status = _git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
        _STATE.update(git_commit=git_commit(), git_dirty=None if status is None else bool(status.strip()))
    return dict(_STATE)


def versions() -> dict:
    import numpy as np
    import torch
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pyautoattack": dist_version("pyautoattack"),
        "uncertainty_robust": dist_version("uncertainty-robust"),
    }


def dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
