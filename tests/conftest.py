"""Shared fixtures: one torch thread, real MNIST test points, and how to run the trainer's CLI."""
import os
import sys
from pathlib import Path

import pytest
import torch

from uncertainty_robust.data import load_tensors

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The test models are tiny: a second intra-op thread gains little, and on a shared 2-core
    machine its spin-waiting multiplies CPU time several-fold. Subprocesses get the same
    (OMP_NUM_THREADS in ``train_cli``), so in-process and CLI runs compute alike."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist_test():
    """300 stratified points of the embedded MNIST's held-out split (float32 in [0, 1])."""
    return load_tensors("mnist_embedded", "test", n=300, seed=0)


@pytest.fixture(scope="session")
def train_cli():
    """(argv prefix, env) to run ``python -m uncertainty_robust.train`` from this checkout."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return [sys.executable, "-m", "uncertainty_robust.train"], env


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With UR_REQUIRE_SLURM=1 (set by .ci/run, which brings the cluster up) a SLURM test that
    skips is a failure: CI must never report a skipped cluster test as green."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and os.environ.get("UR_REQUIRE_SLURM") == "1" and item.get_closest_marker("slurm"):
        rep.outcome = "failed"
        rep.longrepr = f"UR_REQUIRE_SLURM=1 but the SLURM test was skipped: {rep.longrepr}"
