"""The job side of a sweep on SLURM: :class:`SweepJob`, the callable submitit runs on every task of
the one job (``cluster/slurm.py`` submits it). Task 0 starts the Ray head in-process and runs the
Tune driver; tasks 1..N-1 join with ``ray start``; on preemption or a time limit submitit calls
:meth:`SweepJob.checkpoint`, which requeues the same job, and the next incarnation restores the
experiment from disk. Ray's processes are started with SIGTERM and the requeue signal blocked
(:func:`shielded_children`), so a step's SIGTERM does not take Ray down before the requeue."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import submitit

from uncertainty_robust.errors import UserError
from uncertainty_robust.rundir import RunDir


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


def _requeue_shielded(env, countdown: int) -> None:
    """``scontrol requeue`` for submitit's requeue handler, run with SIGTERM and the requeue signal
    blocked (submitit's own ``SlurmJobEnvironment._requeue`` runs it bare).

    ``scontrol`` is a process of the step, and a SIGTERM to the step while it runs (the requeue's
    own, or ``_interrupt()``'s ``scancel --signal TERM`` delivered after its USR2) killed it:
    submitit raised ``CalledProcessError`` ("died with SIGTERM") from the handler, and the head
    ended the job FAILED instead of requeued (seen in CI: job 56 after ``_interrupt()``). The job's
    end still kills ``scontrol`` with SIGKILL should it hang; the 60-s timeout is submitit's.
    ``shielded_children`` (the calling thread's mask, which the child inherits) rather than a
    ``preexec_fn``: the head has Ray's threads, and code run between fork and exec can deadlock."""
    jid = env.job_id
    with shielded_children():
        subprocess.run(["scontrol", "requeue", jid], check=True, timeout=60)
    print(f"requeued job {jid} ({countdown} remaining timeouts)", file=sys.stderr, flush=True)


def install_shielded_requeue() -> None:
    """Route submitit's requeue (``SignalHandler.checkpoint_and_try_requeue`` calls
    ``env._requeue``) through :func:`_requeue_shielded`, in the job's process only."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    if not callable(getattr(SlurmJobEnvironment, "_requeue", None)):  # submitit changed: fail loudly
        raise RuntimeError("submitit.slurm.slurm.SlurmJobEnvironment has no _requeue to shield")
    SlurmJobEnvironment._requeue = _requeue_shielded


class SweepJob(submitit.helpers.Checkpointable):
    """The callable submitit runs on every task of the job."""

    def __init__(self, run_dir: str, aggregate: bool = True, verbosity: int = 1):
        self.run_dir = run_dir
        self.aggregate = aggregate
        self.verbosity = verbosity

    def __call__(self) -> Optional[dict]:
        install_shielded_requeue()
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
        with shielded_children():  # this node's Ray must outlive a step's SIGTERM as the head's does
            proc = subprocess.Popen(cmd, env=env)
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
        RunDir(self.run_dir).event(
            {
                "event": "checkpoint_requeue",
                "job": os.environ.get("SLURM_JOB_ID"),
                # the incarnation that got the signal: SLURM and a user (or a test) may both signal one run
                "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            }
        )
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
