"""Shared fixtures: real MNIST test points, and how to run the trainer's CLI in a subprocess."""
import os
import sys
from pathlib import Path

import pytest

from uncertainty_robust.data import load_tensors

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_test():
    """300 stratified points of the embedded MNIST's held-out split (float32 in [0, 1])."""
    return load_tensors("mnist_embedded", "test", n=300, seed=0)


@pytest.fixture(scope="session")
def train_cli():
    """(argv prefix, env) to run ``python -m uncertainty_robust.train`` from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return [sys.executable, "-m", "uncertainty_robust.train"], env
