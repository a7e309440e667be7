"""The whole sweep as ONE submitit job on SLURM, requeued on preemption and time limits.

Task 0 starts the Ray head in-process (Ray picks free ports, so two users on one node do not
collide; the address goes to ``RUN/ray_head.<jobid>``) and runs the Tune driver; tasks 1..N-1 start
``ray start --address ... --block`` workers that join it and exit when the driver is done.
Ray gets exactly the CPUs/GPUs SLURM gave (SLURM_CPUS_ON_NODE, SLURM_GPUS_ON_NODE).

On preemption or time limit submitit calls :meth:`SweepJob.checkpoint`, which requeues the same
job; a requeue from outside (``scontrol requeue``) restarts it without that call. Either way the
restarted driver restores the Tune experiment from disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
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


def _requeue_signals() -> set:
    """The signals a SLURM step gets on the way to a requeue: SIGTERM (``scancel``, preemption,
    ``scontrol requeue``) and submitit's requeue signal (USR2 unless SUBMITIT_PREEMPT_SIGNAL says)."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    return {signal.SIGTERM, getattr(signal, "SIG" + SlurmJobEnvironment.USR_SIG, signal.SIGUSR2)}


@contextlib.contextmanager
def shielded_children():
    """Processes started inside this block (Ray's GCS, raylet, workers, and through them every actor
    and rank) inherit SIGTERM and the requeue signal *blocked*.

    SLURM signals every process of a step: ``scancel --signal TERM`` (submitit's ``_interrupt()``,
    and preemption with a grace time) reaches Ray's own processes, whose default handling is to shut
    down. The head then lost its Ray before USR2 arrived, the driver died on "Failed to connect to GCS
    within 60 seconds", and the job ended FAILED instead of requeued. A blocked signal stays pending
    and is never delivered; the head process itself is unaffected (submitit's handlers run there),
    and the job's end still kills everything with SIGKILL. Ray itself blocks SIGINT in its children
    the same way (``ray._private.services.start_ray_process``)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _requeue_signals())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _block_requeue_signals() -> None:  # preexec_fn of `ray start` on the other nodes
    signal.pthread_sigmask(signal.SIG_BLOCK, _requeue_signals())


class SweepJob(submitit.helpers.Checkpointable):
    """The callable submitit runs on every task of the job."""

    def __init__(self, run_dir: str, aggregate: bool = True, verbosity: int = 1):
        self.run_dir = run_dir
        self.aggregate = aggregate
        self.verbosity = verbosity

    def __call__(self) -> Optional[dict]:
        env = submitit.JobEnvironment()
        run_dir = RunDir(self.run_dir)
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        tag = f"{env.job_id}.{restart}"
        cpus = int(
            os.environ.get("SLURM_CPUS_ON_NODE") or os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count()
        )
        gpus = _gpus_on_node()
        run_dir.event(
            {
                "event": "task_start",
                "rank": env.global_rank,
                "job": env.job_id,
                "restart": restart,
                "node": env.hostname,
                "slurm_node": os.environ.get("SLURMD_NODENAME"),
                "cpus": cpus,
                "gpus": gpus,
            }
        )
        if env.global_rank == 0:
            return self._head(run_dir, tag, cpus, gpus, env.num_nodes)
        return self._worker(run_dir, tag, cpus, gpus)

    def _head(self, run_dir: RunDir, tag: str, cpus: int, gpus: int, nodes: int) -> Optional[dict]:
        import ray

        from . import console
        from .driver import DriverLock, init_ray, run_sweep

        v = getattr(self, "verbosity", 1)  # jobs pickled before verbosity existed
        console.setup_logging(run_dir, tag, v)
        done = run_dir.ray_done(tag)
        logs = None
        try:
            with DriverLock(run_dir.root, wait_s=120):
                if v >= 1:
                    for line in console.header(run_dir, tag):
                        console.out(line)
                term = signal.getsignal(signal.SIGTERM)  # submitit's: ignore SIGTERM, requeue on USR2
                with shielded_children():
                    init_ray(num_cpus=cpus, num_gpus=gpus, verbosity=v)
                if term is not None:  # ray.init installs sys.exit on SIGTERM: the head would die before USR2
                    signal.signal(signal.SIGTERM, term)
                logs = console.link_ray_logs(run_dir, tag)
                addr = ray.get_runtime_context().gcs_address
                _share_auth_token(run_dir, tag)
                run_dir.ray_head(tag).write_text(addr)
                _wait_for_nodes(run_dir, tag, nodes, timeout=300)
                summary = _in_thread(lambda: run_sweep(run_dir.root, verbosity=v))
            for line in summary.get("lines", []):
                console.out(line)
            run_dir.event({"event": "sweep_end", **{k: v for k, v in summary.items() if k != "lines"}})
            run_dir.failed.unlink(missing_ok=True)  # left by an incarnation that a requeue killed
            if getattr(self, "aggregate", True) and not os.environ.get("UR_NO_AGGREGATE"):
                _aggregate(run_dir)
            return {k: v for k, v in summary.items() if k != "lines"}
        except Exception as e:
            run_dir.failed.write_text(
                f"{time.strftime('%Y-%m-%dT%H:%M:%S')} job {tag}: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
            )
            traceback.print_exc()
            raise
        except BaseException:  # SystemExit from submitit's requeue handler: the job is requeued already
            done.write_text("done")
            raise
        finally:
            if not done.exists():
                done.write_text("done")
                ray.shutdown()
                console.keep_ray_logs(run_dir, tag, logs)

    def _worker(self, run_dir: RunDir, tag: str, cpus: int, gpus: int) -> None:
        head_file, done = run_dir.ray_head(tag), run_dir.ray_done(tag)
        deadline = time.time() + 600
        while not head_file.exists():
            if done.exists() or time.time() > deadline:
                return None
            time.sleep(1)
        addr = head_file.read_text().strip()
        ray_bin = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray_bin,
            "start",
            "--address",
            addr,
            "--num-cpus",
            str(cpus),
            "--num-gpus",
            str(gpus),
            "--block",
        ]
        env = dict(os.environ)
        token = run_dir.auth_token(tag)
        if token.exists():
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
        # this node's Ray must outlive a step's SIGTERM as the head's does (shielded_children)
        proc = subprocess.Popen(cmd, env=env, preexec_fn=_block_requeue_signals)
        try:
            while not done.exists() and proc.poll() is None:
                time.sleep(2)
            if not done.exists():  # ray start died: tell the head now rather than after its timeout
                run_dir.ray_worker_failed(tag).write_text(
                    f"{os.uname().nodename}: ray start exited {proc.returncode}"
                )
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # SIGTERM is blocked in it; SIGINT stops it cleanly
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        return None

    def checkpoint(self, *args, **kwargs):
        RunDir(self.run_dir).event({"event": "checkpoint_requeue", "job": os.environ.get("SLURM_JOB_ID")})
        return super().checkpoint(*args, **kwargs)  # DelayedSubmission(self): same job, requeued


def _in_thread(fn):
    """``fn()`` in a thread while the main thread waits in Python, so submitit's signal handlers
    (which Python runs only in the main thread, between bytecodes) run within half a second even
    when Ray blocks in native code; returns ``fn``'s result or raises its exception."""
    import threading

    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            box["error"] = e

    t = threading.Thread(target=run, name="ur-tune-driver", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.5)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _gpus_on_node() -> int:
    v = os.environ.get("SLURM_GPUS_ON_NODE")
    if v:
        return int(v)
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    return len([d for d in vis.split(",") if d]) if vis else 0


def _share_auth_token(run_dir: RunDir, tag: str) -> None:
    """Ray's token authentication: hand the head's token to the workers through the run dir
    (mode 0600) rather than rely on a shared home directory."""
    src = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    if src.exists():
        dst = run_dir.auth_token(tag)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(src.read_text())


def _wait_for_nodes(run_dir: RunDir, tag: str, n: int, timeout: float) -> None:
    import ray

    t0 = time.time()
    while len([x for x in ray.nodes() if x["Alive"]]) < n:
        failed = run_dir.ray_worker_failed(tag)
        if failed.exists():
            raise RuntimeError(
                f"a Ray worker could not join: {failed.read_text().strip()} (see the task logs)"
            )
        if time.time() - t0 > timeout:
            raise RuntimeError(
                f"only {len([x for x in ray.nodes() if x['Alive']])} of {n} Ray nodes joined in {timeout:.0f} s"
            )
        time.sleep(1)


def _aggregate(run_dir: RunDir) -> None:
    """The aggregation step at the end of the job, in-process; a failure is logged, not fatal (the
    trials are done; ``ur-aggregate RUN`` reruns it)."""
    from uncertainty_robust.checkpoint import is_disk_full
    from uncertainty_robust.report import aggregate

    from .driver import aggregate_lock

    try:
        with aggregate_lock(run_dir.aggregate):  # not while an ur-aggregate writes it
            s = aggregate(run_dir.root)
        print(f"aggregated {s.n_trials} trial(s) into {s.out}", flush=True)
    except Exception as e:
        if isinstance(e, UserError) or is_disk_full(e):  # a busy aggregate, a full disk: one line
            print(f"aggregation failed: {type(e).__name__}: {e}", flush=True)
        else:
            traceback.print_exc()
        print(f"aggregation failed; rerun: ur-aggregate {run_dir.root}", flush=True)
