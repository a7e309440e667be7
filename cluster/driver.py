"""The Tune driver of one sweep: connect to (or start) Ray, create or restore the experiment, run.

Runs in-process for ``--cluster local`` and inside task 0 of the SLURM job for ``--cluster slurm``.
Restoring is decided from disk alone (``Tuner.can_restore``), so a driver restarted after SIGKILL,
a preemption, a time limit or ``scontrol requeue`` continues the same experiment: finished trials
keep their results, unfinished and errored ones resume from their last checkpoint.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import Optional

from uncertainty_robust.errors import UserError, exit_on_user_error
from uncertainty_robust.rundir import RunDir, write_json

log = logging.getLogger("uncertainty_robust.cluster")


class SweepLocked(UserError, RuntimeError):
    """Another live driver holds the run's lock."""


class AggregateLocked(UserError, RuntimeError):
    """Another process is writing the same aggregate directory."""


class FileLock:
    """An exclusive flock on ``path`` held while the ``with`` block runs; ``busy(holder)`` is the
    error raised when another process holds it (``holder``: "pid N on HOST", what that process
    wrote into the file). The kernel drops the lock when the process dies, even on SIGKILL."""

    def __init__(self, path: Path, busy, wait_s: float = 0.0):
        self.path = Path(path)
        self.busy = busy
        self.wait_s = wait_s  # a requeued job may start while the old one's processes are still exiting
        self.fd: Optional[int] = None

    def __enter__(self):
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(1)
                    continue
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise self.busy(holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class DriverLock(FileLock):
    """RUN/.driver.lock, held for the driver's lifetime: a second driver of the same run refuses to start."""

    def __init__(self, run_dir: Path, wait_s: float = 0.0):
        path = RunDir(run_dir).lock
        super().__init__(
            path,
            lambda holder: SweepLocked(
                f"run {path.parent} is already being driven by {holder}; wait for it or stop it first"
            ),
            wait_s,
        )


def aggregate_lock(out: Path) -> FileLock:
    """The lock of one aggregate directory (``.<name>.lock`` beside it, e.g. RUN/.aggregate.lock):
    one writer at a time, ``ur-aggregate``, the end of a local sweep or of a SLURM job."""
    out = Path(out)
    return FileLock(
        out.parent / f".{out.name}.lock",
        lambda holder: AggregateLocked(
            f"{out} is being written by {holder} (another aggregation of this run); wait for it to finish"
        ),
    )


def init_ray(
    address: Optional[str] = None,
    num_cpus: Optional[int] = None,
    num_gpus: Optional[int] = None,
    object_store_mb: int = 512,
    verbosity: int = 1,
) -> None:
    """Connect to Ray at ``address`` or start a private local instance (never someone else's).

    The actors' output goes to Ray's log files (``RUN/logs/ray.<tag>/``), not to this console,
    unless ``verbosity`` >= 2; then the ranks echo their logs too (through the job's runtime env)."""
    import ray

    from .trainables import VERBOSE_ENV

    if ray.is_initialized():
        return
    kw = {"log_to_driver": verbosity >= 2}
    if verbosity >= 2:
        kw["runtime_env"] = {"env_vars": {VERBOSE_ENV: "1"}}
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,  # nothing here polls the State API; saves ~10 processes at start
            object_store_memory=object_store_mb * 1024 * 1024,
            **kw,
        )


def _max_concurrent(resources: dict, search: dict) -> int:
    import ray

    if search.get("max_concurrent"):
        return int(search["max_concurrent"])
    total = ray.cluster_resources()
    per = resources["workers"] * resources["cpus_per_worker"]
    n = int(total.get("CPU", 1) // max(per, 1e-9))
    if resources.get("gpus_per_worker"):
        n = min(n, int(total.get("GPU", 0) // (resources["workers"] * resources["gpus_per_worker"])))
    return max(1, n)


def _last_line(err: BaseException) -> str:
    """The exception itself ("DatasetNotFound: ..."), not Ray's coloured task header."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(err).splitlines()]
    return ([ln for ln in lines if ln] or [type(err).__name__])[-1][:300]


def _trial_name(trial) -> str:
    from uncertainty_robust.config import TrialConfig

    return f"{TrialConfig(**trial.config['trial']).short_name()}_{trial.trial_id[-5:]}"


# lam and eps from config["shown"] (resolved per trial by Tune from its config["trial"]): "-" where the
# defense does not use them, not the config's default (standard training's eps 0.3)
PARAMETER_COLUMNS = {"trial/defense": "defense", "shown/lam": "lam", "shown/eps": "eps", "trial/seed": "seed"}


def shown(spec) -> dict:
    """``config["shown"]`` of a trial (a ``tune.sample_from`` of its resolved ``config["trial"]``):
    what the status table shows of lam and eps (:meth:`TrialConfig.shown`)."""
    from uncertainty_robust.config import TrialConfig

    return TrialConfig.from_dict(dict(spec.config["trial"]), check=False).shown()


def parameter_columns(trials: list) -> dict:
    """Tune's status table columns: defense, lambda, eps and seed, and before the seed every other
    field that tells the plan's rows apart (``epochs`` in a budget ladder), so no two rows look alike."""
    import json

    from uncertainty_robust.config import row_fields

    varying = {
        f"trial/{k}": k
        for k in row_fields()
        if k not in PARAMETER_COLUMNS.values()
        and len({json.dumps(t.get(k), sort_keys=True) for t in trials}) > 1
    }
    cols = {k: v for k, v in PARAMETER_COLUMNS.items() if k != "trial/seed"}
    return {**cols, **varying, "trial/seed": "seed"}


METRIC_COLUMNS = {
    "epoch": "epoch",  # not Tune's iteration: the final evaluation is one more report
    "val_clean_acc": "val clean",
    "val_robust_acc": "val robust",
    "clean_acc": "clean",
    "worst_mean": "worst(mean eps)",
}


def run_sweep(run_dir: os.PathLike, verbosity: int = 1) -> dict:
    """Drive the sweep whose resolved plan is in ``RUN/plan.json``. Returns a summary dict (what
    ``RUN/sweep_status.json`` holds) with the summary's printable ``lines``.

    Expects Ray to be initialized (:func:`init_ray`). Prints per :mod:`cluster.console`.
    """
    import time

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic table, with our columns
    # Tune's own TensorBoard logger would put a second, Ray-flavoured HParams setup under RUN/tune
    # and blank out the aggregate's HParams table in `tensorboard --logdir RUN`; keep JSON + CSV.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # every epoch reports a checkpoint, and Tune snapshots its state each time: expected, not a warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from . import console, trainables

    console.set_verbosity(verbosity)
    rd = RunDir(Path(run_dir).resolve())
    run_dir = rd.root
    plan = rd.read_plan()
    resources, search = plan["resources"], plan["search"]
    trainables.register_all()
    trainable = trainables.with_resources(trainables.TRAINABLES[trainables.GENERIC])
    exp_path = rd.tune
    t0 = time.time()
    param_space = {
        "trial": tune.grid_search(plan["trials"]),
        "shown": tune.sample_from(shown),
        "run_dir": str(run_dir),
        "resources": resources,
        "worker_retries": int(search.get("worker_retries", 2)),
    }
    if Tuner.can_restore(str(exp_path)):
        log.info("restoring experiment %s (finished trials are kept)", exp_path)
        console.out(f"restoring experiment {exp_path} (finished trials are kept)")
        # param_space again: Tune saves a sample_from's function as a placeholder, and without it every
        # trial first created after the restore gets config["shown"] == ("__fn_ph", hash), which made
        # the status table (every 120 s) raise ValueError and end the driver
        tuner = Tuner.restore(
            str(exp_path),
            trainable=trainable,
            param_space=param_space,
            resume_unfinished=True,
            resume_errored=True,
        )
    else:
        scheduler = None
        if search.get("scheduler") == "asha":
            from ray.tune.schedulers import ASHAScheduler

            # search.metric is a validation accuracy (sweeps/grid.py refuses anything else)
            metric = search.get("metric", "val/robust_acc").replace("/", "_")
            scheduler = ASHAScheduler(
                time_attr="training_iteration", metric=metric, mode="max", grace_period=1
            )
        tuner = Tuner(
            trainable,
            param_space=param_space,
            tune_config=TuneConfig(
                max_concurrent_trials=_max_concurrent(resources, search),
                scheduler=scheduler,
                reuse_actors=True,  # the actor keeps its warm forkserver for the next trial
                trial_dirname_creator=lambda t: t.trial_id,
                trial_name_creator=_trial_name,
            ),
            run_config=RunConfig(
                name=rd.tune.name,
                storage_path=str(run_dir),
                verbose=3 if verbosity >= 2 else verbosity,
                progress_reporter=console.table_reporter(parameter_columns(plan["trials"]), METRIC_COLUMNS),
                callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), console.EpochLines()],
                failure_config=FailureConfig(max_failures=int(search.get("trial_retries", 2))),
                checkpoint_config=CheckpointConfig(num_to_keep=1),  # the trial dir has the real one
            ),
        )
    results = tuner.fit()
    errors = [_last_line(r.error) for r in results if r.error]
    seconds = time.time() - t0
    summary = {
        "trials": len(results),
        "done": sum(console.trial_state(r) == "done" for r in results),
        "errors": len(errors),
        "seconds": round(seconds, 1),
        "error_messages": errors[:10],
        "lines": console.summary_lines(results, seconds),
    }
    write_json(summary, rd.status)
    return summary


@exit_on_user_error
def main(argv=None) -> int:
    """``python -m cluster.driver RUN_DIR [--address ADDR] [--num-cpus N] [--num-gpus G]``"""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--address")
    p.add_argument("--num-cpus", type=int)
    p.add_argument("--num-gpus", type=int)
    p.add_argument("-v", "--verbose", action="count", default=1)
    a = p.parse_args(argv)
    from . import console

    rd = RunDir(Path(a.run_dir).resolve())
    tag = console.new_tag()
    console.setup_logging(rd, tag, a.verbose)
    with DriverLock(rd.root):
        init_ray(a.address, a.num_cpus, a.num_gpus, verbosity=a.verbose)
        s = run_sweep(rd.root, verbosity=a.verbose)
    for line in s["lines"]:
        console.out(line)
    return 1 if s["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
