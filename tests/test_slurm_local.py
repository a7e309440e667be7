"""Checks of the local Slurm cluster started by ``slurm/local-cluster/slurm-local.sh up``.

These tests talk to a real Slurm controller. They skip (with the reason) when the Slurm
client tools are not installed or no controller answers, so the suite passes on machines
without the cluster; in CI the cluster is started before pytest runs.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

pytestmark = pytest.mark.slurm

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
def slurm_cluster() -> None:
    reason = _cluster_skip_reason()
    if reason:
        pytest.skip(reason)


def _node_states() -> dict[str, str]:
    out = _run("sinfo", "-h", "-N", "-o", "%N %T")
    assert out.returncode == 0, out.stderr
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        name, state = line.split()
        states[name] = state.rstrip("*~#!%$@^-").lower()  # drop flags such as '*' (not responding)
    return states


def test_partitions_exist(slurm_cluster):
    out = _run("sinfo", "-h", "-o", "%P")
    assert out.returncode == 0, out.stderr
    partitions = {p.strip() for p in out.stdout.split()}
    # the default partition carries a '*'
    assert "debug*" in partitions, partitions
    assert {p.rstrip("*") for p in partitions} >= EXPECTED_PARTITIONS, partitions


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


def test_two_nodes_usable(slurm_cluster):
    deadline = time.monotonic() + 10
    while True:  # a job that just ended can leave a node 'completing' for a moment
        states = _node_states()
        if set(states) >= EXPECTED_NODES and all(states[n] in USABLE_STATES for n in EXPECTED_NODES):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"nodes n1/n2 not usable: {states}")
        time.sleep(0.5)


def test_srun_one_task_per_node(slurm_cluster):
    out = _run("srun", "-N2", "-n2", "-t", "1", "-l", "printenv", "SLURMD_NODENAME", timeout=60)
    assert out.returncode == 0, out.stderr
    by_rank = dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())
    assert sorted(by_rank) == ["0", "1"], out.stdout
    assert sorted(v.strip() for v in by_rank.values()) == sorted(EXPECTED_NODES), out.stdout


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
