"""Ray Tune trainables, one per defense, each running ``uncertainty_robust``'s trial on N DDP
workers through a Ray Train ``TorchTrainer`` (gloo on CPU, nccl on GPU).

Layout of a run directory (shared storage on a real cluster)::

    RUN/trials/<trial>/   the library's trial dir: checkpoint.pt, model.pt, tb/, result.json
    RUN/train/<trial>/    Ray Train's run (its checkpoints, reported every epoch)
    RUN/tune/             the Tune experiment (restored by a relaunch)

A trial's identity is its config (``TrialConfig.trial_id``), not Tune's trial name, so a
relaunched or requeued sweep finds the same directories, and a trial whose ``result.json``
exists is reported from disk instead of being trained again.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from uncertainty_robust.config import TrialConfig
from uncertainty_robust.defenses import DEFENSES
from uncertainty_robust.evaluate import read_result
from uncertainty_robust.rundir import RunDir, TrialDir

TRAINABLE_PREFIX = "ur_"
GENERIC = "ur_trial"  # dispatches on config["trial"]["defense"]; what mixed-defense sweeps use


def trial_dirname(cfg: TrialConfig) -> str:
    return f"{cfg.short_name()}_{cfg.trial_id()}"


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


def _log_start(trial_dir: Path, what: str) -> None:
    """Append one line per start: tests and humans count (re)starts from it."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    with open(TrialDir(trial_dir).starts, "a") as f:
        f.write(
            json.dumps({"event": what, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid()})
            + "\n"
        )


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker (DDP process group already initialized by TorchTrainer)."""
    import ray.train as rt

    from uncertainty_robust.trial import run_trial

    cfg = TrialConfig.from_dict(loop_config["trial"])
    trial = TrialDir(loop_config["trial_dir"])
    trial_dir = trial.root
    ctx = rt.get_context()
    rank = ctx.get_world_rank()
    if cfg.num_threads == 0:  # share the CPUs Ray gave this worker, not the whole node
        import torch

        torch.set_num_threads(max(1, int(loop_config.get("cpus_per_worker", 1))))
    resume_from = None
    ray_ckpt = rt.get_checkpoint()
    if ray_ckpt is not None and not trial.checkpoint.exists():
        resume_from = Path(ray_ckpt.path) / trial.checkpoint.name  # storage without our trial dir on it
    if rank == 0:
        _log_start(trial_dir, "train_start")

    def on_epoch_end(epoch: int, metrics: dict, ckpt_path: Path) -> None:
        metrics = {k.replace("/", "_"): v for k, v in metrics.items()}
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy2(ckpt_path, Path(tmp) / trial.checkpoint.name)
                rt.report(metrics, checkpoint=rt.Checkpoint.from_directory(tmp))
        else:
            rt.report(metrics)

    run_trial(cfg, trial_dir, resume_from=resume_from, on_epoch_end=on_epoch_end)


def run_one(config: dict) -> None:
    """The Tune function trainable: one trial = one Ray Train run."""
    import ray.tune as tune
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = TrialConfig.from_dict(config["trial"])
    run_dir = RunDir(config["run_dir"])
    name = trial_dirname(cfg)
    trial_dir = run_dir.trial(name).root
    record = read_result(trial_dir)
    if record is None:
        res = config.get("resources", {})
        workers = int(res.get("workers", 1))
        use_gpu = float(res.get("gpus_per_worker", 0)) > 0
        cpus = float(res.get("cpus_per_worker", 1))
        per_worker = {"CPU": cpus}
        if use_gpu:
            per_worker["GPU"] = float(res["gpus_per_worker"])
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"trial": cfg.to_dict(), "trial_dir": str(trial_dir), "cpus_per_worker": cpus},
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=use_gpu, resources_per_worker=per_worker
            ),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(
                name=name,
                storage_path=str(run_dir.root / "train"),
                callbacks=[TuneReportCallback()],
                failure_config=FailureConfig(max_failures=int(config.get("worker_retries", 2))),
            ),
        )
        trainer.fit()  # raises (and Tune retries the trial) if the workers failed for good
        record = read_result(trial_dir)
        if record is None:
            raise RuntimeError(f"trial {name} ended without writing {run_dir.trial(name).result}")
    tune.report(final_metrics(record))


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


def register_all() -> list[str]:
    """Register ``ur_standard`` ... ``ur_at_entm`` and ``ur_trial`` with Tune; returns the names."""
    from ray import tune

    for name, fn in TRAINABLES.items():
        tune.register_trainable(name, fn)
    return sorted(TRAINABLES)
