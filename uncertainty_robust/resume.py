"""Resuming a trial from its checkpoint, surviving damage: :class:`TrainState` (what a checkpoint
holds besides the weights), :func:`restore` (one file), :func:`restore_trial` (``checkpoint.pt``,
else ``checkpoint.prev.pt``, else from scratch: a damaged file is moved aside, warned about in one
line and recorded in ``starts.log`` by :func:`record_event`, never read twice)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .accel import rank_world
from .attacks import Cost
from .rundir import TrialDir

log = logging.getLogger("uncertainty_robust")


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights: where the run is and what it has cost."""

    epoch: int = 0
    history: list = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)
    train_seconds: float = 0.0
    best_epoch: int = 0  # epoch of best.pt (0: none yet)
    best_value: float = float("-inf")  # its val/robust_acc


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "history", "cost", "train_seconds")


def record_event(trial_root: os.PathLike, event: str, **fields) -> None:
    """Append one JSON line to the trial's ``starts.log`` (``train_start`` per start, written by
    the ranks' supervisor; ``checkpoint_unreadable`` here)."""
    import socket

    root = Path(trial_root)
    root.mkdir(parents=True, exist_ok=True)
    line = {"event": event, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), **fields}
    with open(TrialDir(root).starts, "a") as f:
        f.write(json.dumps(line) + "\n")


def restore(path: Path, model, opt, sched, device) -> Optional[TrainState]:
    """Load a checkpoint into model/optimizer/scheduler and the global RNGs; None when there is none.
    Raises :class:`~uncertainty_robust.checkpoint.Unreadable` (nothing loaded) for a damaged file."""
    state = ckpt.load(path, map_location=device, required=CHECKPOINT_KEYS)
    if state is None:
        return None
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(state["rng"])
    best = json.loads(state.get("best", "{}"))
    return TrainState(
        int(state["epoch"]),
        json.loads(state["history"]),
        Cost(**json.loads(state["cost"])),
        float(state["train_seconds"]),
        int(best.get("epoch", 0)),
        float(best.get("value", float("-inf"))),
    )


def restore_trial(
    trial: TrialDir, model, opt, sched, device, resume_from: Optional[os.PathLike] = None
) -> Optional[TrainState]:
    """Restore from ``resume_from`` if given, else from ``checkpoint.pt``, else from the one before
    it (``checkpoint.prev.pt``); None: start from scratch. Every rank reads; rank 0 moves a damaged
    file of the trial aside (so no restart reads it again), warns in one line and records a
    ``checkpoint_unreadable`` event; ranks that restored different epochs raise."""
    rank, world = rank_world()
    own = [trial.checkpoint, trial.checkpoint_prev]
    candidates = list(dict.fromkeys(([Path(resume_from)] if resume_from else []) + own))
    st, used, damaged = None, None, []
    for path in candidates:
        try:
            st = restore(path, model, opt, sched, device)
        except ckpt.Unreadable as e:
            damaged.append(e)
            continue
        if st is not None or (resume_from and path == Path(resume_from)):
            used = path if st is not None else None
            break
    if rank == 0:
        for e in damaged:
            _report_unreadable(trial, e, used, st)
    if world > 1:  # every rank must continue from the same epoch
        e = st.epoch if st is not None else 0
        t = torch.tensor([e, -e], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if int(t[0]) != -int(t[1]):
            raise RuntimeError(
                f"ranks restored different epochs ({-int(t[1])} to {int(t[0])}) of {trial.root}"
            )
    return st


def _report_unreadable(trial: TrialDir, e: ckpt.Unreadable, used: Optional[Path], st) -> None:
    """One warning line and one ``starts.log`` event for a damaged checkpoint; the trial's own file
    is moved aside (a file given from elsewhere is left where it is, unused)."""
    moved = None
    if e.path.parent.resolve() == trial.root.resolve():
        try:
            moved = ckpt.move_aside(e.path)
        except FileNotFoundError:  # another process (a peer's restart) moved it first
            pass
    then = f"resuming from {used.name} (epoch {st.epoch})" if st is not None else "starting from scratch"
    where = f"moved to {moved.name}" if moved is not None else "left unused"
    log.warning("%s cannot be read (%s): %s; %s", e.path, e.why, where, then)
    record_event(
        trial.root,
        "checkpoint_unreadable",
        file=e.path.name,
        error=e.why,
        moved_to=moved.name if moved is not None else None,
        resumed_from=used.name if st is not None else None,
        epoch=st.epoch if st is not None else 0,
    )
