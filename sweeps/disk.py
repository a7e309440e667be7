"""The disk a run needs, estimated before it starts: ``--dry-run`` states it and ``launch.py``
refuses to start (one line, exit 2) when ``--storage`` has less free space than what is left to write.

Bytes per trial, from the model's size (its ``state_dict``, built once per dataset, model and width)
and the config, for the files that stay (``docs/architecture.md``, "The run directory"):

- ``checkpoint.pt`` and ``checkpoint.prev.pt``: the weights, the optimizer's state (SGD with
  momentum: one more copy of the weights; Adam: two), RNG states and the history;
- Tune's copy of the last checkpoint (``RUN/tune/<trial>/checkpoint_*``; while it replaces it, a
  second copy for every trial running at once: ``concurrent``);
- ``best.pt`` (with a validation split) and ``model.pt``: the weights;
- ``adv_examples.pt``: at each eps > 0 a few examples (``KEEP_EXAMPLES``) with their clean images;
- ``points.npz``, ``result.json``, ``eval_state/``, ``tb/``, logs and Tune's result files: small,
  counted from ``n_eval`` and the epochs.

Per run: the aggregate (written beside the old one, then swapped in: twice its size), Ray's logs,
Tune's experiment state, the plan. Measured on the quickstart (4 trials, small_cnn at width 0.5,
Adam, 2 epochs, 200 points at 4 eps > 0): 166 MB at the end, estimated 178 MB (the estimate counts
the transient copies a run makes on the way).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

from uncertainty_robust.config import TrialConfig
from uncertainty_robust.data import dataset_info
from uncertainty_robust.errors import DiskFull, UserError

RNG_AND_HEADER = 32_000  # RNG states (torch, numpy, python), config, zip records
PER_EPOCH_HISTORY = 1_500  # one epoch's metrics in the checkpoint's history
PER_EPOCH_FILES = 6_000  # TensorBoard scalars, Tune's result.json / progress.csv, the trial's log lines
PER_TRIAL_FIXED = 120_000  # config.json, result.json, trial.log, starts.log, Tune's params, experiment state
PER_POINT = 200  # per test point: result.json's point lists, points.npz, eval_state pieces
KEEP_EXAMPLES = 8  # run_trial's keep_examples
AGGREGATE_PER_TRIAL = 300_000  # tables, figures, TensorBoard, examples (quickstart: 1.2 MB for 4 trials)
RUN_FIXED = 2_000_000  # Ray's logs, plan.json, grid.yaml, sweep_status.json


human = DiskFull.human  # 121.0 MB


class NotEnoughDisk(UserError):
    """``--storage`` has less free space than the run still needs (one line)."""


@lru_cache(maxsize=64)
def _model_bytes(dataset: str, model: str, width: float) -> int:
    from uncertainty_robust.train import make_model

    cfg = TrialConfig(dataset=dataset, model=model, width=width)
    return sum(t.numel() * t.element_size() for t in make_model(cfg).state_dict().values())


def _optimizer_copies(c: TrialConfig) -> int:
    if c.optimizer == "adam":
        return 2
    return 1 if c.momentum else 0


def trial_bytes(c: TrialConfig) -> dict:
    """Bytes of each file (group) of one trial's directory and of Tune's copy, when it has finished."""
    info = dataset_info(c.dataset)
    weights = _model_bytes(c.dataset, c.model, float(c.width))
    ckpt = weights * (1 + _optimizer_copies(c)) + RNG_AND_HEADER + c.epochs * PER_EPOCH_HISTORY
    image = info.channels * info.size * info.size * 4
    eps_pos = sum(1 for e in c.eval_eps() if e > 0)
    return {
        "checkpoint": ckpt,  # checkpoint.pt
        "checkpoint_prev": ckpt,
        "tune_copy": ckpt,
        "best_and_model": weights * (2 if c.val_points else 1) + 2 * RNG_AND_HEADER,
        "adv_examples": eps_pos * 2 * KEEP_EXAMPLES * image + RNG_AND_HEADER,
        "small": PER_TRIAL_FIXED + c.epochs * PER_EPOCH_FILES + c.n_eval * PER_POINT * len(c.checkpoints),
    }


def estimate(trials: list, concurrent: Optional[int] = None) -> dict:
    """``{"total", "per_trial": [bytes], "checkpoint": bytes of the largest checkpoint.pt, "by_file":
    {group: bytes over all trials}}``. ``concurrent``: trials running at once (each holds one more
    checkpoint while Tune replaces its copy); default all of them."""
    per = [trial_bytes(c) for c in trials]
    by_file = {k: sum(p[k] for p in per) for k in (per[0] if per else {})}
    n = len(trials) if concurrent is None else max(0, min(concurrent, len(trials)))
    biggest = max((p["checkpoint"] for p in per), default=0)
    total = sum(by_file.values()) + n * biggest + 2 * AGGREGATE_PER_TRIAL * len(trials) + RUN_FIXED
    return {
        "total": total,
        "per_trial": [sum(p.values()) for p in per],
        "checkpoint": biggest,
        "by_file": by_file,
    }


def concurrency(grid, cluster: str, cpus: Optional[int] = None) -> int:
    """Trials running at once: ``search.max_concurrent``, else as many as the CPUs allow (locally
    ``cpus`` or this machine's, on SLURM ``slurm.nodes`` x ``slurm.cpus_per_node``)."""
    res, search, slurm = grid.resources, grid.search, grid.slurm
    per = max(float(res["workers"]) * float(res["cpus_per_worker"]), 1e-9)
    if cluster == "slurm":
        have = int(slurm.get("nodes") or 1) * float(slurm.get("cpus_per_node") or per)
    else:
        have = cpus or os.cpu_count() or 1
    n = max(1, int(have // per))
    if search.get("max_concurrent"):
        n = min(n, int(search["max_concurrent"]))
    return min(n, len(grid.trials))


def summary_line(trials: list, concurrent: Optional[int] = None) -> str:
    """The dry run's line: what the run needs and of what."""
    est = estimate(trials, concurrent)
    h, f, n = DiskFull.human, est["by_file"], max(1, len(trials))
    return (
        f"disk: ~{h(est['total'])} on --storage ({h(est['total'] / n)} per trial: checkpoint.pt, "
        f"checkpoint.prev.pt and Tune's copy {h(f.get('checkpoint', 0) / n)} each, best.pt and model.pt "
        f"{h(f.get('best_and_model', 0) / n)}, adversarial examples {h(f.get('adv_examples', 0) / n)})"
    )


def used_bytes(root: os.PathLike) -> int:
    """Bytes already used under ``root`` (hard links counted once; 0 when it does not exist)."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total


def check_free(
    storage: os.PathLike, run_dir: os.PathLike, trials: list, concurrent: Optional[int] = None
) -> None:
    """Raise :class:`NotEnoughDisk` when ``storage`` has less free space than the run still needs
    (its estimate less what ``run_dir`` already holds, for a relaunch)."""
    import shutil

    need = estimate(trials, concurrent)["total"] - used_bytes(run_dir)
    try:
        free = shutil.disk_usage(storage).free
    except OSError:
        return  # not measurable here (checked by the storage check before this one)
    if need > free:
        h = DiskFull.human
        raise NotEnoughDisk(
            f"--storage {storage}: {h(free)} free, the run needs ~{h(need)} more "
            f"({len(trials)} trial(s); see --dry-run); free space, use another --storage, or "
            "--no-disk-check to start anyway"
        )


def storage_problem(storage: Path) -> Optional[str]:
    """Why ``storage`` cannot hold run directories (created here if missing), or None."""
    import tempfile

    if storage.exists() and not storage.is_dir():
        return f"{storage} is a file, not a directory"
    try:
        storage.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"{storage} cannot be created ({e.strerror or e}{f': {e.filename}' if e.filename else ''})"
    try:
        fd, probe = tempfile.mkstemp(prefix=".ur-write-check-", dir=storage)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{storage} is not writable ({e.strerror or e})"
    return None
