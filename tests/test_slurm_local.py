"""Checks of the local Slurm cluster started by ``slurm/local-cluster/slurm-local.sh up``, and of
the script's lock (an ``up``/``down`` while another run uses the cluster is refused).

These tests talk to a real Slurm controller (while they do, they hold the cluster's lock shared,
as ``.ci/run`` does around the whole suite). They skip (with the reason) when the Slurm client
tools are not installed or no controller answers, so the suite passes on machines without the
cluster; in CI the cluster is started before pytest runs. The lock test needs no cluster.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "slurm" / "local-cluster" / "slurm-local.sh"

EXPECTED_PARTITIONS = {"debug", "gpu", "urgent"}
EXPECTED_NODES = {"n1", "n2"}
USABLE_STATES = {"idle", "mixed", "allocated", "completing"}


def _run(*cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _cluster_skip_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return "Slurm client tools not on PATH (start it: slurm/local-cluster/slurm-local.sh up)"
    try:
        ping = _run("scontrol", "ping", timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"'scontrol ping' failed: {e!r}"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return (
            "no Slurm controller answers 'scontrol ping' "
            f"({(ping.stdout + ping.stderr).strip().splitlines()[:1]}); "
            "start it: slurm/local-cluster/slurm-local.sh up"
        )
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = _cluster_skip_reason()
    if reason:
        pytest.skip(reason)
    lock = Path(os.environ.get("SLURM_LOCAL_DIR", "/var/tmp/slurm-local")) / "cluster.lock"
    if not lock.parent.is_dir():  # a cluster this script did not start: nothing to hold
        yield
        return
    with open(lock, "a") as f:  # shared: an up/down elsewhere is refused while these tests run
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{lock}: an up/down of the cluster held it for 2 minutes")
                time.sleep(1)
        yield


def test_up_down_reset_are_refused_while_another_run_uses_the_cluster(tmp_path):
    """A run holding the cluster's lock shared (as .ci/run does around the tests): 'up', 'down' and
    'reset' from elsewhere exit 2 with one line naming the holder, and touch nothing; once it is
    released, 'down' goes on. The state dir is a fresh one (nothing of a real cluster in it), and
    SLURM_LOCAL_NODES is invalid so that an 'up' that got past the lock would stop at once."""
    env = {**os.environ, "SLURM_LOCAL_DIR": str(tmp_path), "SLURM_LOCAL_NODES": "not-a-number"}
    lock = tmp_path / "cluster.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        for cmd in ("up", "down", "reset"):
            r = subprocess.run(
                ["bash", str(SCRIPT), cmd], env=env, capture_output=True, text=True, timeout=60
            )
            err = r.stderr.strip()
            assert r.returncode == 2 and len(err.splitlines()) == 1, (cmd, r.returncode, err)
            assert err.startswith(
                f"error: the local SLURM cluster ({tmp_path}) is in use by pid {os.getpid()}"
            )
            assert f"'{cmd}' refused" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.lock"]
    r = subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip().endswith("[slurm-local] down"), r.stderr


def _node_states() -> dict[str, str]:
    out = _run("sinfo", "-h", "-N", "-o", "%N %T")
    assert out.returncode == 0, out.stderr
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        name, state = line.split()
        states[name] = state.rstrip("*~#!%$@^-").lower()  # drop flags such as '*' (not responding)
    return states


@pytest.mark.slurm
def test_partitions_exist(slurm_cluster):
    out = _run("sinfo", "-h", "-o", "%P")
    assert out.returncode == 0, out.stderr
    partitions = {p.strip() for p in out.stdout.split()}
    # the default partition carries a '*'
    assert "debug*" in partitions, partitions
    assert {p.rstrip("*") for p in partitions} >= EXPECTED_PARTITIONS, partitions


@pytest.mark.slurm
def test_urgent_partition_preempts(slurm_cluster):
    out = _run("scontrol", "show", "partition", "urgent", "-o")
    assert out.returncode == 0, out.stderr
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
    debug = dict(
        f.split("=", 1)
        for f in _run("scontrol", "show", "partition", "debug", "-o").stdout.split()
        if "=" in f
    )
    assert int(fields["PriorityTier"]) > int(debug["PriorityTier"]), (fields, debug)
    config = _run("scontrol", "show", "config").stdout
    assert "preempt/partition_prio" in config
    assert "preempt_send_user_signal" in config


@pytest.mark.slurm
def test_two_nodes_usable(slurm_cluster):
    deadline = time.monotonic() + 10
    while True:  # a job that just ended can leave a node 'completing' for a moment
        states = _node_states()
        if set(states) >= EXPECTED_NODES and all(states[n] in USABLE_STATES for n in EXPECTED_NODES):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"nodes n1/n2 not usable: {states}")
        time.sleep(0.5)


@pytest.mark.slurm
def test_srun_one_task_per_node(slurm_cluster):
    out = _run("srun", "-N2", "-n2", "-t", "1", "-l", "printenv", "SLURMD_NODENAME", timeout=60)
    assert out.returncode == 0, out.stderr
    by_rank = dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())
    assert sorted(by_rank) == ["0", "1"], out.stdout
    assert sorted(v.strip() for v in by_rank.values()) == sorted(EXPECTED_NODES), out.stdout


@pytest.mark.slurm
def test_sacct_sees_jobs(slurm_cluster):
    """submitit polls sacct for job states; without accounting it can hang on dead jobs."""
    sub = _run("sbatch", "--parsable", "-p", "debug", "-t", "1", "-o", "/dev/null", "--wrap", "true")
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 20
    while True:  # jobs appear in sacct 1-3 s after they start
        out = _run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,Partition,State")
        assert out.returncode == 0, f"sacct failed (is slurmdbd running?): {out.stderr}"
        rows = [line.split("|") for line in out.stdout.strip().splitlines()]
        # the record fills in over a few seconds (State can arrive before Partition)
        if rows and rows[0] == [job_id, "debug", "COMPLETED"]:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} not COMPLETED in sacct after 20 s: {rows}")
        time.sleep(0.5)
