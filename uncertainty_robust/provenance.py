"""Where a result comes from: the git commit of the code and the versions of what it ran on."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Optional


def git_commit() -> Optional[str]:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        # a repository without commits prints "HEAD" and fails: no commit to record
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


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
