"""One trial end to end: train (resumably), evaluate on every rank, write ``result.json`` (rank 0).

A trial directory (:class:`~uncertainty_robust.rundir.TrialDir`) holds ``checkpoint.pt`` (latest
epoch), ``best.pt`` (the epoch with the best validation robust accuracy), ``model.pt`` (final
weights, for transfer attacks), ``tb/`` (per-epoch TensorBoard scalars), ``config.json`` and, when
the trial has finished, ``points.npz`` (per-test-point outcomes) and ``result.json``. A trial whose
``result.json`` exists is never run again.

``result.json``: the top level is the evaluation of the last epoch's weights (``"checkpoint":
"last"``, ``"epoch"``), as before; ``"validation"`` says how the validation split was carved and
validated; ``"best"`` is the best epoch by ``val/robust_acc`` ({epoch, metric, value, evaluated}) and,
when the config's ``checkpoints`` include ``best``, that epoch's evaluation with the same keys as
the top level (``same_as_last`` when the best epoch is the last one: the numbers are then copied,
not recomputed). ``None`` without a validation split.

``points.npz`` (:func:`save_points`, :func:`read_points`): ``indices`` (int64, the points' indices
in the dataset's test split, the same for every trial of a dataset and n_eval), ``labels``, and one
bool array per outcome name (``clean``, ``attack/<label>/<eps:g>``, ``worst/<eps:g>``, ...) for the
last checkpoint, the same names prefixed ``best/`` for the best one.
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Callable, Optional

import numpy as np
import torch

from . import checkpoint as ckpt
from .accel import rank_world
from .config import TrialConfig
from .evaluation import evaluate, read_result, result_record
from .provenance import git_state
from .rundir import TrialDir
from .train import EpochCallback, fit, make_model

log = logging.getLogger("uncertainty_robust")


def run_trial(
    cfg: TrialConfig,
    workdir: os.PathLike,
    resume_from: Optional[os.PathLike] = None,
    on_epoch_end: Optional[EpochCallback] = None,
    keep_examples: int = 8,
    progress: Optional[Callable[[dict], None]] = None,
) -> Optional[dict]:
    """Returns the result record on rank 0 (None on other ranks or if already finished elsewhere).

    Every rank of the trial evaluates its chunks of the test points (the evaluation is sharded);
    rank 0 writes the files. ``progress``: where rank 0's evaluation progress goes (default: one
    line in the trial's log and ``TrialDir.progress``, which a sweep's console prints)."""
    git_state()  # the code this process started from, named in the record (not a later HEAD)
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
    if not summary["completed"]:
        return None
    if rank == 0:
        ckpt.save_atomic(
            {"model": model.state_dict(), "config": json.dumps(cfg.to_dict(), default=str)}, trial.model
        )
    emit = progress if progress is not None else progress_writer(trial)
    ev = evaluate(model, cfg, keep_examples=keep_examples, state=trial, progress=emit)
    best_ev = _evaluate_best(cfg, trial, summary, ev, model, emit)
    if rank != 0:
        return None
    if keep_examples and ev.get("_adv_examples"):
        ckpt.save_atomic(
            {
                str(eps): {"x": xa, "y": ya, "pred": pa, "clean": xc, "attack": lab}
                for eps, (xa, ya, pa, lab, xc) in ev["_adv_examples"].items()
            },
            trial.adv_examples,
        )
    record = result_record(cfg, summary, ev, trial.root)
    record["checkpoint"], record["epoch"] = "last", summary["epochs"]
    record["validation"] = summary["validation"]
    record["best"] = None
    if summary["best"] is not None:
        record["best"] = {**summary["best"], "evaluated": best_ev is not None}
        if best_ev is not None:
            record["best"]["same_as_last"] = best_ev is ev
            record["best"].update({k: v for k, v in best_ev.items() if not k.startswith("_")})
    masks = {"": ev["_masks"]}
    if best_ev is not None:
        masks["best/"] = best_ev["_masks"]
    save_points(trial.points, ev["_indices"], ev.get("_labels"), masks)
    ckpt.write_json_atomic(record, trial.result)  # last: its presence means "finished"
    trial.progress.unlink(missing_ok=True)  # a live indicator only
    return record


def progress_writer(trial: TrialDir) -> Callable[[dict], None]:
    """Rank 0's evaluation progress: one line in the trial's log and ``TrialDir.progress`` (JSON,
    replaced atomically), which a sweep's console reads."""

    def emit(p: dict) -> None:
        log.info("%s", p["line"])
        try:
            ckpt.write_json_atomic(p, trial.progress)
        except OSError as e:  # progress is a convenience: never fail an evaluation over it
            log.warning("could not write %s: %s", trial.progress, e)

    return emit


def _evaluate_best(cfg: TrialConfig, trial: TrialDir, summary: dict, last_ev: dict, model, progress=None):
    """The best checkpoint's evaluation when the config asks for it (``last_ev`` itself when the
    best epoch is the last one), else None."""
    best = summary.get("best")
    if "best" not in cfg.checkpoints or best is None:
        return None
    if best["epoch"] == summary["epochs"]:
        return last_ev
    state = _best_state(trial, best["epoch"])
    if state is None:
        return None
    best_model = make_model(cfg).to(next(model.parameters()).device)
    best_model.load_state_dict(state["model"])
    return evaluate(
        best_model.eval(), cfg, state=trial, progress=progress
    )  # saved chunks are keyed by the weights


def _best_state(trial: TrialDir, epoch: int) -> Optional[dict]:
    """``best.pt`` (of ``epoch``). When it cannot be read (damage from outside): rank 0 moves it
    aside, warns in one line and records a ``checkpoint_unreadable`` event; the weights are taken
    from ``checkpoint.prev.pt`` when that holds the same epoch, else None (the best checkpoint is
    reported not evaluated). Every rank that reads decides the same way."""
    from .train import record_event

    rank, _ = rank_world()
    try:
        state = ckpt.load(trial.best)
    except ckpt.Unreadable as e:
        why, moved = e.why, None
        if rank == 0:
            moved = ckpt.move_aside(trial.best)
    else:
        moved = None
        if state is None and any(trial.root.glob(f"{trial.best.name}.unreadable-*")):
            why = "moved aside before"  # rank 0 of this start, or of an earlier one, moved it
        elif state is None or int(state["epoch"]) != epoch:
            found = None if state is None else state["epoch"]
            raise RuntimeError(f"{trial.best}: expected epoch {epoch}, found {found}")
        else:
            return state
    try:
        prev = ckpt.load(trial.checkpoint_prev)
    except ckpt.Unreadable:
        prev = None
    same = prev is not None and int(prev["epoch"]) == epoch
    if rank == 0:
        then = (
            f"the best epoch's weights taken from {trial.checkpoint_prev.name}"
            if same
            else "best epoch not evaluated"
        )
        log.warning(
            "%s cannot be read (%s)%s; %s", trial.best, why, f": moved to {moved.name}" if moved else "", then
        )
        record_event(
            trial.root,
            "checkpoint_unreadable",
            file=trial.best.name,
            error=why,
            moved_to=moved.name if moved else None,
            resumed_from=trial.checkpoint_prev.name if same else None,
            epoch=epoch,
        )
    return {"model": prev["model"], "epoch": epoch} if same else None


def save_points(path, indices, labels, masks: dict) -> None:
    """Write ``points.npz`` atomically: ``indices``, ``labels`` (optional) and, for each
    {prefix: {name: bool (N,)}} of ``masks``, the arrays ``prefix + name``."""
    arrays = {"indices": np.asarray(indices, dtype=np.int64)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    for prefix, ms in masks.items():
        for name, m in ms.items():
            m = m.numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
            if m.shape != arrays["indices"].shape:
                raise ValueError(f"mask {prefix}{name} has shape {m.shape}, points {arrays['indices'].shape}")
            arrays[prefix + name] = m.astype(bool)

    def write(f):
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        f.write(buf.getvalue())

    ckpt.atomic_write(path, write)


def read_points(trial_dir: os.PathLike, checkpoint: str = "last") -> Optional[tuple]:
    """``(indices, {name: bool ndarray})`` of a finished trial's ``points.npz`` for ``checkpoint``
    ("last" or "best"); None when the file or that checkpoint's masks are missing."""
    p = TrialDir(trial_dir).points
    if not p.exists():
        return None
    with np.load(p) as z:
        prefix = "" if checkpoint == "last" else f"{checkpoint}/"
        names = [k for k in z.files if k not in ("indices", "labels") and not k.startswith("best/")]
        if checkpoint != "last":
            names = [k[len(prefix) :] for k in z.files if k.startswith(prefix)]
        if not names:
            return None
        return z["indices"], {n: z[prefix + n] for n in names}


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
