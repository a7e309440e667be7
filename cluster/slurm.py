"""The whole sweep as ONE submitit job on SLURM, requeued on preemption and time limits.

Task 0 starts the Ray head in-process (Ray picks free ports, so two users on one node do not
collide; the address goes to ``RUN/ray_head.<jobid>``) and runs the Tune driver; tasks 1..N-1 start
``ray start --address ... --block`` workers that join it and exit when the driver is done.
Ray gets exactly the CPUs/GPUs SLURM gave (SLURM_CPUS_ON_NODE, SLURM_GPUS_ON_NODE).

On preemption or time limit submitit calls :meth:`~cluster.slurm_job.SweepJob.checkpoint`, which
requeues the same job; a requeue from outside (``scontrol requeue``) restarts it without that call.
Either way the restarted driver restores the Tune experiment from disk. This module is the
submitting side (options, checks, submission, job state); ``cluster/slurm_job.py`` the job's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import submitit

from uncertainty_robust.errors import UserError
from uncertainty_robust.rundir import RunDir, read_json, write_json

REPO = Path(__file__).resolve().parent.parent


class SlurmError(UserError, ValueError):
    """One-line, user-facing problem with the SLURM set-up or options (launch.py exits 2)."""


def slurm_options(grid, args) -> dict:
    s = grid.slurm
    res = grid.resources
    cpus_needed = int(-(-res["workers"] * res["cpus_per_worker"] // 1))
    opts = {
        "partition": args.partition,
        "nodes": args.nodes or s["nodes"],
        "time_min": args.time_min or s["time_min"],
        "cpus_per_node": args.cpus_per_node or s["cpus_per_node"] or cpus_needed,
        "gpus_per_node": args.gpus_per_node if args.gpus_per_node is not None else s["gpus_per_node"],
        "mem_gb": args.mem_gb or s["mem_gb"],
        "account": args.account or s["account"],
        "qos": args.qos or s["qos"],
        "constraint": args.constraint or s["constraint"],
        "extra": list(s["extra"]) + list(args.sbatch_opt),
        "aggregate": not getattr(args, "no_aggregate", False),  # --no-aggregate reaches the job
        "max_requeues": s.get("max_requeues", 100)
        if getattr(args, "max_requeues", None) is None
        else args.max_requeues,
        "verbosity": 0 if getattr(args, "quiet", False) else 2 if getattr(args, "verbose", False) else 1,
    }
    for k in ("nodes", "time_min", "cpus_per_node"):
        if not isinstance(opts[k], int) or opts[k] <= 0:
            raise SlurmError(f"--{k.replace('_', '-')}: expected a positive integer, got {opts[k]!r}")
    if not isinstance(opts["max_requeues"], int) or opts["max_requeues"] < 0:
        raise SlurmError(f"--max-requeues: expected an integer >= 0, got {opts['max_requeues']!r}")
    return opts


def signal_delay_s(time_min: int) -> int:
    """Seconds before the time limit at which SLURM sends the requeue signal (``--signal=USR2@N``).

    submitit's 90 s, but at most a quarter of the limit: SLURM checks limits every 30 s and may
    signal up to 60 s early, so with 90 s a 1- or 2-minute job would get it right at its start and
    never progress. Our checkpoint is instant (Tune's state and every trial's are already on disk)."""
    return int(min(90, max(10, time_min * 60 // 4)))


def _run(cmd: list, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check_slurm(opts: dict, resources: dict) -> None:
    """Before anything is submitted: sbatch present, controller answering, partition known,
    resources a node can give. Raises SlurmError (one line)."""
    if not shutil.which("sbatch"):
        raise SlurmError("--cluster slurm: no sbatch on PATH (is SLURM installed here? use --cluster local)")
    try:
        r = _run(["sinfo", "-h", "-o", "%P|%c|%D|%a"])
    except subprocess.TimeoutExpired:
        raise SlurmError(
            "SLURM controller does not answer (sinfo timed out); is slurmctld running?"
        ) from None
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise SlurmError(f"SLURM controller unreachable (sinfo: {msg}); is slurmctld running?")
    parts = {}
    for line in r.stdout.split():
        name, cpus, nodes, avail = line.split("|")
        parts[name.rstrip("*")] = {
            "default": name.endswith("*"),
            "cpus": int(cpus.rstrip("+")),
            "nodes": int(nodes),
            "up": avail == "up",
        }
    if opts["partition"] is None:
        opts["partition"] = next((p for p, v in parts.items() if v["default"]), None)
        if opts["partition"] is None:
            raise SlurmError(f"--partition: none given and no default; partitions: {', '.join(parts)}")
    if opts["partition"] not in parts:
        raise SlurmError(
            f"--partition: unknown partition {opts['partition']!r}; partitions: {', '.join(sorted(parts))}"
        )
    p = parts[opts["partition"]]
    if not p["up"]:
        raise SlurmError(f"--partition: partition {opts['partition']!r} is not up")
    if opts["nodes"] > p["nodes"]:
        raise SlurmError(
            f"--nodes: {opts['nodes']} requested, partition {opts['partition']!r} has {p['nodes']}"
        )
    if opts["cpus_per_node"] > p["cpus"]:
        raise SlurmError(
            f"--cpus-per-node: {opts['cpus_per_node']} requested, nodes of {opts['partition']!r} have {p['cpus']}"
        )
    need = resources["workers"] * resources["cpus_per_worker"]
    if need > opts["cpus_per_node"] * opts["nodes"]:
        raise SlurmError(
            f"resources: one trial needs {need:g} CPUs, the job has {opts['nodes']} x "
            f"{opts['cpus_per_node']} (raise --cpus-per-node/--nodes or lower resources.workers)"
        )
    if resources["gpus_per_worker"] > 0 and not opts["gpus_per_node"]:
        raise SlurmError("resources.gpus_per_worker > 0 but the job asks for no GPUs: set --gpus-per-node")


def _extra_params(extra: list) -> dict:
    out = {}
    for opt in extra:
        key, _, val = opt.lstrip("-").partition("=")
        out[key.replace("-", "_")] = val if val else True
    return out


def executor_for(run_dir: Path, opts: dict) -> submitit.AutoExecutor:
    # submitit stops requeuing after slurm_max_num_timeout time-outs (3 by default); a long sweep on
    # a partition with a short limit must keep going (slurm.max_requeues, --max-requeues)
    ex = submitit.AutoExecutor(
        folder=str(RunDir(run_dir).slurm_logs / "%j"),
        cluster="slurm",
        slurm_max_num_timeout=int(opts.get("max_requeues", 100)),
    )
    params = dict(
        slurm_partition=opts["partition"],
        nodes=opts["nodes"],
        tasks_per_node=1,
        cpus_per_task=opts["cpus_per_node"],
        timeout_min=opts["time_min"],
        slurm_signal_delay_s=signal_delay_s(opts["time_min"]),
        name=f"ur-{run_dir.name}",
        slurm_setup=[f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}"],
        slurm_additional_parameters=_extra_params(opts["extra"]),
    )
    if opts["gpus_per_node"]:
        params["gpus_per_node"] = opts["gpus_per_node"]
    if opts["mem_gb"]:
        params["mem_gb"] = opts["mem_gb"]
    for k in ("account", "qos", "constraint"):
        if opts[k]:
            params[f"slurm_{k}"] = opts[k]
    ex.update_parameters(**params)
    return ex


def _queue_state(job_id) -> Optional[str]:
    """The job's state in squeue (PENDING, RUNNING, ...), or None once the controller no longer
    lists it. Raises SlurmError when squeue fails or times out (busy or dead controller)."""
    try:
        r = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"])
    except subprocess.TimeoutExpired:
        raise SlurmError(f"squeue timed out asking for job {job_id}") from None
    if r.returncode != 0:
        if "Invalid job id" in r.stderr:  # purged from the controller (MinJobAge): it ended
            return None
        raise SlurmError(
            f"squeue failed for job {job_id}: {(r.stderr.strip().splitlines() or ['no output'])[-1]}"
        )
    return r.stdout.strip() or None


def active_job(run_dir: Path) -> Optional[str]:
    """The id of this run's SLURM job if it is still queued or running."""
    info = read_json(RunDir(run_dir).slurm_job)
    if info is None:
        return None
    job_id = info["job_id"]
    try:
        state = _queue_state(job_id)
    except SlurmError as e:
        raise SlurmError(
            f"cannot tell whether job {job_id} of this run is still queued ({e}); try again"
        ) from None
    return job_id if state and state not in ("COMPLETED", "FAILED", "CANCELLED") else None


def _in_queue(job_id) -> bool:
    """True while squeue lists the job (pending, running, requeued). A failing squeue (busy
    controller, timeout) counts as still queued, so ``--wait`` does not stop on a transient error."""
    try:
        return _queue_state(job_id) is not None
    except SlurmError:
        return True


def job_state(run_dir: Path) -> str:
    info = read_json(RunDir(run_dir).slurm_job) or {}
    r = _run(["sacct", "-n", "-X", "-P", "-j", str(info["job_id"]), "-o", "State,ExitCode,Elapsed,NodeList"])
    return f"job {info['job_id']}: " + (r.stdout.strip().splitlines() or ["unknown"])[-1].replace("|", " ")


def submit(run_dir: Path, opts: dict, wait: bool = False) -> int:
    """Submit the sweep job (raises SlurmError when the run already has a live job)."""
    rd = RunDir(run_dir)
    job_id = active_job(run_dir)
    if job_id:
        raise SlurmError(
            f"run {run_dir.name} already has SLURM job {job_id} queued or running; "
            f"wait for it, or scancel {job_id}"
        )
    from .slurm_job import SweepJob

    rd.failed.unlink(missing_ok=True)
    ex = executor_for(run_dir, opts)
    job = ex.submit(
        SweepJob(str(run_dir), aggregate=opts.get("aggregate", True), verbosity=opts.get("verbosity", 1))
    )
    info = {
        "job_id": job.job_id,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **opts,
        "stdout": str(job.paths.stdout).replace("%t", "0"),
        "stderr": str(job.paths.stderr).replace("%t", "0"),
    }
    write_json(info, rd.slurm_job)
    print(
        f"submitted SLURM job {job.job_id} (partition {opts['partition']}, {opts['nodes']} node(s) x "
        f"{opts['cpus_per_node']} CPUs, {opts['time_min']} min, requeued up to {opts.get('max_requeues', 100)} "
        "times on time-outs)"
    )
    print(f"logs:        {info['stdout']}\n             {info['stderr']}")
    print(f"TensorBoard: tensorboard --logdir {run_dir} --host 127.0.0.1")
    print(f"status:      python sweeps/launch.py --status {run_dir.name} --storage {run_dir.parent}")
    if not wait:
        return 0
    while _in_queue(job.job_id):
        time.sleep(2)
    final = job_state(run_dir)
    status = read_json(rd.status)
    for line in (status or {}).get("lines", []):  # the driver's summary, as a local run prints it
        print(line)
    print(final)
    if status is not None and not rd.failed.exists() and status.get("errors", 1) == 0:
        return 0
    if rd.failed.exists():
        print(f"failed: {rd.failed.read_text().strip()}", file=sys.stderr)
    return 1
