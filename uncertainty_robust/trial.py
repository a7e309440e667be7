"""One trial end to end: train (resumably), evaluate on rank 0, write ``result.json``.

A trial directory (:class:`~uncertainty_robust.rundir.TrialDir`) holds ``checkpoint.pt`` (latest
epoch), ``model.pt`` (final weights, for transfer attacks), ``tb/`` (per-epoch TensorBoard
scalars), ``config.json`` and, when the trial has finished, ``result.json``. A trial whose
``result.json`` exists is never run again.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import torch

from . import checkpoint as ckpt
from .config import TrialConfig
from .evaluate import evaluate, read_result, result_record
from .rundir import TrialDir
from .train import EpochCallback, fit, make_model, rank_world

log = logging.getLogger("uncertainty_robust")


def run_trial(
    cfg: TrialConfig,
    workdir: os.PathLike,
    resume_from: Optional[os.PathLike] = None,
    on_epoch_end: Optional[EpochCallback] = None,
    keep_examples: int = 8,
) -> Optional[dict]:
    """Returns the result record on rank 0 (None on other ranks or if already finished elsewhere)."""
    trial = TrialDir(workdir)
    done = read_result(trial.root)
    if done is not None:
        log.info("%s already finished (result.json present): not run again", trial.root)
        return done
    rank, _ = rank_world()
    if rank == 0:
        trial.root.mkdir(parents=True, exist_ok=True)
        ckpt.write_json_atomic(cfg.to_dict(), trial.config)
    model, summary = fit(cfg, trial.root, resume_from=resume_from, on_epoch_end=on_epoch_end)
    if rank != 0 or not summary["completed"]:
        return None
    ckpt.save_atomic(
        {"model": model.state_dict(), "config": json.dumps(cfg.to_dict(), default=str)}, trial.model
    )
    ev = evaluate(model, cfg, keep_examples=keep_examples, state=trial)
    if keep_examples and ev.get("_adv_examples"):
        ckpt.save_atomic(
            {
                str(eps): {"x": xa, "y": ya, "pred": pa, "clean": xc, "attack": lab}
                for eps, (xa, ya, pa, lab, xc) in ev["_adv_examples"].items()
            },
            trial.adv_examples,
        )
    record = result_record(cfg, summary, ev, trial.root)
    ckpt.write_json_atomic(record, trial.result)  # last: its presence means "finished"
    return record


def load_trained(trial_dir: os.PathLike, map_location="cpu") -> tuple[torch.nn.Module, TrialConfig]:
    """The final model of a finished trial (eval mode) and its config."""
    trial = TrialDir(trial_dir)
    state = ckpt.load(trial.model, map_location)
    if state is None:
        raise FileNotFoundError(f"no {trial.model.name} in {trial.root}: the trial has not finished")
    cfg = TrialConfig.from_dict(json.loads(state["config"]), check=False)
    model = make_model(cfg)
    model.load_state_dict(state["model"])
    return model.eval(), cfg
