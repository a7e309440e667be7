"""Every file of a run directory and of a trial directory, named in one place.

``launch.py``, ``cluster/`` and the aggregation all reach files through these maps, so a file name
is written once (after submitit's ``JobPaths``). A run directory on shared storage::

    RUN/grid.yaml            the grid as given (extends resolved)  (launch)
    RUN/plan.json            resolved trial configs, resources     (launch; the driver reads it)
    RUN/git_commit           commit the run was launched from      (launch)
    RUN/slurm_job.json       SLURM job id, options, log paths      (launch, SLURM only)
    RUN/slurm/<jobid>/       submitit's pickles and job logs       (submitit)
    RUN/job_events.jsonl     task starts, requeues, sweep end      (the SLURM job)
    RUN/FAILED               one line: why the last job failed     (the SLURM job)
    RUN/sweep_status.json    trials / errors of the last driver    (the driver)
    RUN/.driver.lock         flock held by the live driver         (the driver)
    RUN/ray_head.<tag>       Ray head address for the job's workers (the SLURM job; tag = jobid.restart)
    RUN/ray_done.<tag>       the head is done: workers stop        (the SLURM job)
    RUN/ray_worker_failed.<tag>  a worker could not join           (the SLURM job)
    RUN/.ray_auth_token.<tag>    Ray's token for the workers, 0600  (the SLURM job)
    RUN/logs/driver.<tag>.log    the driver's log: ours, Ray's, Tune's  (the driver; tag = time or jobid.restart)
    RUN/logs/ray.<tag>/      Ray's session logs, every Ray process  (the driver: linked, copied at the end)
    RUN/tune/                the Tune experiment (restored after a requeue)
    RUN/trials/<trial>/      one trial (:class:`TrialDir`)
    RUN/aggregate/           tables, TensorBoard, audit            (the aggregation)
    RUN/aggregate_best/      the same for the best checkpoints     (ur-aggregate --checkpoint best)

Every JSON file is written atomically (:func:`write_json`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .checkpoint import write_json_atomic


def write_json(obj, path: os.PathLike) -> None:
    """Atomic JSON write (temporary file, fsync, rename): readers never see half a file."""
    write_json_atomic(obj, path)


def read_json(path: os.PathLike) -> Optional[dict]:
    """The JSON object in ``path``; None when missing or not a JSON object (e.g. Ray's JSON lines)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


@dataclass(frozen=True)
class _Dir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> str:
        return self.root.name


@dataclass(frozen=True)
class TrialDir(_Dir):
    """One trial's directory. ``result.json`` is written last: its presence means "finished"."""

    checkpoint = property(lambda self: self.root / "checkpoint.pt")  # latest epoch (model, optimizer, RNG)
    checkpoint_prev = property(
        lambda self: self.root / "checkpoint.prev.pt"
    )  # the checkpoint before the current one (kept when it is replaced), read when checkpoint.pt is damaged
    best = property(lambda self: self.root / "best.pt")  # best epoch by validation robust accuracy
    points = property(
        lambda self: self.root / "points.npz"
    )  # per-test-point outcomes (see trial.save_points)
    model = property(lambda self: self.root / "model.pt")  # final weights, for transfer attacks
    result = property(lambda self: self.root / "result.json")
    config = property(lambda self: self.root / "config.json")
    tb = property(lambda self: self.root / "tb")  # per-epoch TensorBoard scalars
    adv_examples = property(lambda self: self.root / "adv_examples.pt")
    eval_state = property(lambda self: self.root / "eval_state")  # resumable evaluation (per eps, per attack)
    starts = property(lambda self: self.root / "starts.log")  # one line per (re)start of training
    log = property(lambda self: self.root / "trial.log")  # every rank's log lines
    progress = property(lambda self: self.root / "progress.json")  # the evaluation's latest progress line

    def eval_piece(self, name: str) -> Path:
        """One resumable piece of the evaluation state: a JSON file."""
        return self.eval_state / f"{name}.json"

    def finished(self) -> bool:
        return self.result.exists()


@dataclass(frozen=True)
class AggregateDir(_Dir):
    """One aggregate (``RUN/aggregate/``, ``RUN/aggregate_best/`` or ``ur-aggregate --out``): what
    ``uncertainty_robust.report.aggregate`` writes, each name once."""

    tables = property(lambda self: self.root / "tables.md")  # every table, the audit, the correlations
    summary = property(lambda self: self.root / "summary.json")  # counts, flags, every check's outcome
    transfer = property(lambda self: self.root / "transfer.json")  # the audit's transfer attacks (a cache)
    jacobian_correlation = property(lambda self: self.root / "jacobian_correlation.json")
    tb = property(lambda self: self.root / "tb")  # TensorBoard
    figures = property(lambda self: self.root / "figures")
    examples = property(lambda self: self.root / "examples")  # adversarial examples as PNG
    trials_csv = property(lambda self: self.root / "trials.csv")  # one row per trial: the seed-level data
    claims_md = property(lambda self: self.root / "claims.md")  # ur-aggregate --claims: the verdicts
    claims_json = property(lambda self: self.root / "claims.json")

    def table(self, dataset: str, model: str, suffix: str) -> Path:
        """``table_<dataset>_<model>.<suffix>`` (csv, json)."""
        return self.root / f"table_{dataset}_{model}.{suffix}"


@dataclass(frozen=True)
class RunDir(_Dir):
    """A sweep's run directory (see the module docstring for what each file is)."""

    grid = property(lambda self: self.root / "grid.yaml")
    plan = property(lambda self: self.root / "plan.json")
    git_commit = property(lambda self: self.root / "git_commit")
    slurm_job = property(lambda self: self.root / "slurm_job.json")
    slurm_logs = property(lambda self: self.root / "slurm")
    events = property(lambda self: self.root / "job_events.jsonl")
    failed = property(lambda self: self.root / "FAILED")
    status = property(lambda self: self.root / "sweep_status.json")
    lock = property(lambda self: self.root / ".driver.lock")
    logs = property(lambda self: self.root / "logs")
    tune = property(lambda self: self.root / "tune")
    trials = property(lambda self: self.root / "trials")
    aggregate = property(lambda self: self.root / "aggregate")

    def aggregate_for(self, checkpoint: str = "last") -> Path:
        """``aggregate/`` for the last checkpoints (the record's top level), ``aggregate_<ckpt>/`` else."""
        return self.aggregate if checkpoint == "last" else self.root / f"aggregate_{checkpoint}"

    def ray_head(self, tag: str) -> Path:
        return self.root / f"ray_head.{tag}"

    def ray_done(self, tag: str) -> Path:
        return self.root / f"ray_done.{tag}"

    def driver_log(self, tag: str) -> Path:
        return self.logs / f"driver.{tag}.log"

    def ray_logs(self, tag: str) -> Path:
        return self.logs / f"ray.{tag}"

    def ray_worker_failed(self, tag: str) -> Path:
        return self.root / f"ray_worker_failed.{tag}"

    def auth_token(self, tag: str) -> Path:
        return self.root / f".ray_auth_token.{tag}"

    def trial(self, name: str) -> TrialDir:
        return TrialDir(self.trials / name)

    def read_plan(self) -> dict:
        plan = read_json(self.plan)
        if plan is None:
            raise FileNotFoundError(f"no plan.json in {self.root}")
        return plan

    def trial_dirs(self) -> list:
        """The planned trials' directories, in plan order."""
        return [self.trial(d) for d in self.read_plan()["trial_dirs"]]

    def event(self, ev: dict) -> None:
        """Append one line to ``job_events.jsonl`` (with the time)."""
        import time

        ev = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **ev}
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.events, "a") as f:
            f.write(json.dumps(ev) + "\n")
