"""Ray Tune trainables, one per defense plus a generic one, registered by name.

A trial is a Tune *function trainable* that holds the whole trial's resources (``workers x
cpus_per_worker`` CPUs and ``workers x gpus_per_worker`` GPUs, one placement-group bundle, so one
node) and runs the trial's N DDP ranks itself, as forks of a warm forkserver (:mod:`cluster.ranks`).
Tune reuses the actor for the next trial (``reuse_actors=True``), so torch is imported once per
actor, not once per rank per trial. Tune's schedulers (ASHA) see one result per epoch and a
checkpoint with it; ``Tuner.restore`` works as for any registered trainable.

Layout of a run directory (shared storage on a real cluster)::

    RUN/trials/<trial>/   the library's trial dir: checkpoint.pt, model.pt, tb/, result.json,
                          starts.log (one line per (re)start), trial.log (every rank's output)
    RUN/tune/             the Tune experiment (restored by a relaunch); <trial>/checkpoint_* is
                          Tune's copy of the last epoch's checkpoint

A trial's identity is its config (``TrialConfig.trial_id``), not Tune's trial name, so a
relaunched or requeued sweep finds the same directories, and a trial whose ``result.json``
exists is reported from disk instead of being trained again.

Outside a sweep, a Tune script of your own can run any of them by name (``docs/architecture.md``)::

    from cluster.trainables import register_all
    register_all()
    tune.Tuner("ur_entm", param_space={"trial": {"lam": tune.grid_search([0.1, 0.5]), "epochs": 2},
                                       "resources": {"workers": 2}}).fit()

Without ``run_dir`` in the config a trial's files go to ``<Tune trial dir>/trial/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from uncertainty_robust.config import TrialConfig
from uncertainty_robust.defenses import DEFENSES
from uncertainty_robust.evaluation import read_result
from uncertainty_robust.rundir import RunDir, TrialDir

from . import settings
from .ranks import log_start, tune_metrics  # noqa: F401  (re-exported: tests and tools use them)

TRAINABLE_PREFIX = "ur_"
GENERIC = "ur_trial"  # dispatches on config["trial"]["defense"]; what mixed-defense sweeps use
RESOURCES = settings.defaults("resources")
VERBOSE_ENV = "UR_VERBOSE"  # set (through Ray's runtime env) by `launch.py -v`: ranks echo their log


def final_metrics(record: dict) -> dict:
    """Flat metrics for Tune's progress table and search: clean and worst-case accuracy per eps."""
    m = {"clean_acc": record["clean_acc"], "done": True}
    for w in record["worst_case"]:
        m[f"worst_eps_{w['eps']:g}"] = w["acc"]
    m["worst_mean"] = sum(w["acc"] for w in record["worst_case"]) / max(1, len(record["worst_case"]))
    hist = (record.get("train") or {}).get("history") or [{}]
    # the last epoch's validation metrics again: Tune checks every report for the scheduler's metric
    m.update({k.replace("/", "_"): v for k, v in hist[-1].items() if k.startswith("val/")})
    jac = record.get("jacobian") or {}
    if "logits" in jac:
        m["jac_logits_mean"] = jac["logits"]["mean"]
    return m


def trial_resources(config: dict):
    """Tune's resource request for a trial: one bundle with all its ranks' CPUs/GPUs (one node)."""
    from ray.tune import PlacementGroupFactory

    res = {**RESOURCES, **(config.get("resources") or {})}
    bundle = {"CPU": float(res["workers"]) * float(res["cpus_per_worker"])}
    if float(res["gpus_per_worker"]) > 0:
        bundle["GPU"] = float(res["workers"]) * float(res["gpus_per_worker"])
    return PlacementGroupFactory([bundle])


def _trial_dir(config: dict, cfg: TrialConfig) -> TrialDir:
    if config.get("run_dir"):
        return RunDir(config["run_dir"]).trial(cfg.dirname())
    import ray.tune as tune

    return TrialDir(Path(tune.get_context().get_trial_dir()) / "trial")  # a user's own Tune script


def run_one(config: dict) -> None:
    """The Tune function trainable: one trial, its ranks started by :func:`cluster.ranks.run_ranks`."""
    import ray.tune as tune

    from .ranks import run_ranks, warm_up

    cfg = TrialConfig.from_dict(config["trial"])
    trial = _trial_dir(config, cfg)
    record = read_result(trial.root)
    last: dict = {}  # the last epoch's metrics, repeated in the final result (see below)
    restarts = [0]  # rank restarts so far, reported with every epoch after the first one
    if record is None:
        warm_up()
        res = {**RESOURCES, **(config.get("resources") or {})}
        ck = tune.get_checkpoint()  # Tune's copy, for storage where the trial dir was lost
        if ck is not None and not trial.checkpoint.exists():
            with ck.as_directory() as d:
                if (Path(d) / trial.checkpoint.name).exists():
                    trial.root.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(Path(d) / trial.checkpoint.name, trial.checkpoint)

        def on_epoch(epoch: int, metrics: dict, ckpt: Path, ack) -> None:
            if restarts[0]:
                metrics = {**metrics, "ranks_restarted": restarts[0]}
            last.clear()
            last.update(metrics)
            tmp = tempfile.mkdtemp(prefix="ur-ckpt-")
            try:
                shutil.copy2(ckpt, Path(tmp) / trial.checkpoint.name)
            finally:
                ack()  # rank 0 goes on with the next epoch while Tune takes the copy
            try:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

        cpus = float(res["cpus_per_worker"])
        run_ranks(
            cfg.to_dict(),
            trial.root,
            workers=int(res["workers"]),
            threads=0 if cfg.num_threads else max(1, int(cpus)),  # share the CPUs the trial holds
            use_gpu=float(res["gpus_per_worker"]) > 0,
            retries=int(config.get("worker_retries", 2)),
            on_epoch=on_epoch,
            verbose=os.environ.get(VERBOSE_ENV) == "1",
            on_restart=lambda what, n: restarts.__setitem__(0, n),
        )
        record = read_result(trial.root)
        if record is None:
            raise RuntimeError(f"trial {trial.name} ended without writing {trial.result}")
    if not last and record["train"].get("history"):  # finished before: its last epoch from disk
        last = tune_metrics(record["train"]["history"][-1])
    # Tune checks every result for the scheduler's metric (a per-epoch one, e.g. ASHA on a validation
    # accuracy): the final result carries the last epoch's metrics along with the final evaluation
    tune.report({**last, **final_metrics(record)})


def _bound(defense: str):
    def trainable(config: dict) -> None:
        if config["trial"].get("defense", defense) != defense:
            raise ValueError(
                f"trainable {TRAINABLE_PREFIX}{defense} got defense {config['trial']['defense']!r}"
            )
        run_one({**config, "trial": {**config["trial"], "defense": defense}})

    trainable.__name__ = f"{TRAINABLE_PREFIX}{defense}"
    return trainable


TRAINABLES = {f"{TRAINABLE_PREFIX}{d}": _bound(d) for d in DEFENSES}
TRAINABLES[GENERIC] = run_one


def with_resources(fn):
    """``fn`` with its resource request read from each trial's ``config["resources"]``."""
    from ray import tune

    return tune.with_resources(fn, trial_resources)


def register_all() -> list[str]:
    """Register ``ur_standard`` ... ``ur_trades`` and ``ur_trial`` with Tune; returns the names."""
    from ray import tune

    for name, fn in TRAINABLES.items():
        tune.register_trainable(name, with_resources(fn))
    return sorted(TRAINABLES)
