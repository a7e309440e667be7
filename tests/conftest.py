"""Shared fixtures: one torch thread, real MNIST test points, models trained on real digits, and how
to run the trainer's CLI."""

import os
import sys
from pathlib import Path

import pytest
import torch
from common import AT_EPS, AT_STEPS, STD, SUITE_EPS, fit_quiet

from uncertainty_robust.attacks import AttackSpec, run_suite
from uncertainty_robust.config import TrialConfig, validate
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
    """(argv prefix, env) to run ``python -m uncertainty_robust`` (``ur-train``) from this checkout."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return [sys.executable, "-m", "uncertainty_robust"], env


# ----------------------------------------------------------------------------- pytest-xdist groups
# .ci/run runs the suite on 2 xdist workers with --dist loadgroup: the tests of one group run in
# collection order on one worker, every other test goes to whichever worker is free. Without xdist,
# or without loadgroup, the marks do nothing.
#
# "cluster": the real local SLURM cluster is one shared thing (its jobs requeued and preempted, a
# node's slurmd killed and revived, `ray start` on a job's second node binding Ray's fixed agent
# port 52365), and the local-Ray sweeps run 4-6 processes on the 2 cores; all of them run one at a
# time, as in a serial run, with the timings their deadlines were set for.
CLUSTER_FILES = ("test_slurm_local.py", "test_slurm_sweep.py", "test_sweeps.py")
# tests that share an expensive session (or module) fixture stay on one worker, which trains it once
SHARED_FIXTURE_GROUPS = (
    ("trained", "audit-trained"),  # test_audit: 3 trials, ~100 s
    ("sweep", "report-sweep"),  # test_report: 7 trials, 60-80 s
    ("at_model", "at-model"),  # test_accel, test_train: PGD-7 adversarial training
    ("std_suite", "at-model"),  # test_attacks, test_train (whose test takes both)
    ("resume_reference", "train-resume"),  # test_train (module-scoped)
)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks (on its workers)
def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        group = (
            "cluster"
            if item.path.name in CLUSTER_FILES
            else next((g for name, g in SHARED_FIXTURE_GROUPS if name in fixtures), None)
        )
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: on its controller, once per worker
def pytest_xdist_node_collection_finished(node, ids):
    """xdist groups a test by the "@<group>" it appends to the test's node id on the worker. A pytest
    whose node ids it cannot extend (9.2 with pytest-xdist 3.8: pytest-xdist issue 1386) loses the
    groups without a word, and the SLURM tests would run side by side: stop before any test runs."""
    if node.config.getoption("dist") != "loadgroup":
        return
    lost = [i for i in ids if Path(i.split("::")[0]).name in CLUSTER_FILES and i.rfind("@") <= i.rfind("]")]
    if lost:
        pytest.exit(
            f"--dist loadgroup: pytest-xdist did not group {len(lost)} cluster tests (e.g. {lost[0]}) under "
            f"pytest {pytest.__version__} (pytest-xdist issue 1386); run without -n, or with the pytest "
            "that pyproject.toml asks for",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With UR_REQUIRE_SLURM=1 (set by .ci/run, which brings the cluster up) a SLURM test that
    skips is a failure: CI must never report a skipped cluster test as green. The same for the GPU
    tests under UR_REQUIRE_GPU=1."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and os.environ.get("UR_REQUIRE_SLURM") == "1" and item.get_closest_marker("slurm"):
        rep.outcome = "failed"
        rep.longrepr = f"UR_REQUIRE_SLURM=1 but the SLURM test was skipped: {rep.longrepr}"
    # benchmarks/gpu_check.sh sets UR_REQUIRE_GPU=1: there a GPU test skipped for want of CUDA is a
    # failure (a 2-GPU test on a 1-GPU machine may still skip, with its reason)
    if (
        rep.skipped
        and os.environ.get("UR_REQUIRE_GPU") == "1"
        and item.get_closest_marker("gpu")
        and not torch.cuda.is_available()
    ):
        rep.outcome = "failed"
        rep.longrepr = f"UR_REQUIRE_GPU=1 but torch sees no CUDA GPU: {rep.longrepr}"


# ----------------------------------------------------------------------------- trained models (real MNIST digits)
@pytest.fixture(scope="session")
def std_model(tmp_path_factory):
    """small_cnn, width 0.5, standard training, 2 epochs on 3,000 embedded-MNIST train points."""
    cfg = validate(TrialConfig(defense="standard", **STD))
    return fit_quiet(cfg, tmp_path_factory.mktemp("std"))[0]


@pytest.fixture(scope="session")
def std_suite(std_model, mnist_test):
    """FGSM and PGD-20 (random start, best iterate) at every eps of SUITE_EPS, same points."""
    x, y = mnist_test
    torch.manual_seed(0)
    return run_suite(std_model, x, y, [AttackSpec("fgsm"), AttackSpec("pgd", steps=20)], SUITE_EPS)


@pytest.fixture(scope="session")
def at_model(tmp_path_factory):
    """The same, trained with PGD-7 adversarial training at eps 0.2."""
    cfg = validate(TrialConfig(defense="at", eps=AT_EPS, pgd_steps=AT_STEPS, **STD))
    return fit_quiet(cfg, tmp_path_factory.mktemp("at"))[0]


@pytest.fixture(scope="session")
def batch():
    """64 real embedded-MNIST training digits."""
    return load_tensors("mnist_embedded", "train", n=64, seed=0)
