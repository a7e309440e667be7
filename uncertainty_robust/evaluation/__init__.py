"""Evaluation of one trained model -> the evaluation part of one result record (``result.json``).

:func:`evaluate` builds the trial's plan (:mod:`.plan`), runs it on every rank of the trial, each on
its chunks of the points (:mod:`.engine`, :mod:`.shards`), runs the masking probe (:mod:`.probe`) and
the Jacobians the same way, merges the ranks' outcomes and builds the record (:mod:`.record`).
Everything a reported figure needs travels with it: dataset, model, epsilons, attack steps and
restarts, number of test points, seed, cost, library versions and git commit. See
``docs/evaluation.md``.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from .. import accel
from ..attacks import Cost, n_target_classes
from ..attacks.autoattack import Counted, check_flag, session
from ..data import load_tensors, subset_indices
from ..defenses import entropy
from . import probe as masking
from .engine import Runner, merge
from .plan import AUTOATTACK, OTHER_NORM, OURS, EvalPlan, Step
from .progress import Progress
from .record import (
    SCHEMA,
    attack_rows,
    autoattack_and_worst,
    expected_calibration_error,
    jacobian_record,
    read_result,
    result_record,
)
from .shards import ChunkStore, Shard, model_fingerprint

__all__ = [
    "model_checks",
    "AUTOATTACK",
    "OTHER_NORM",
    "OURS",
    "SCHEMA",
    "EvalPlan",
    "Step",
    "evaluate",
    "expected_calibration_error",
    "model_fingerprint",
    "read_result",
    "result_record",
]


def evaluate(
    model,
    cfg,
    device=None,
    keep_examples: int = 0,
    state=None,
    progress: Optional[Callable[[dict], None]] = None,
) -> dict:
    """The trial's evaluation on ``cfg.n_eval`` stratified test points (the same points for every
    trial with the same dataset), as its plan says (:class:`EvalPlan`); call it on every rank of
    the trial (each evaluates its chunks; all get the same record).

    ``state``: a :class:`~uncertainty_robust.rundir.TrialDir` (or its path) whose ``eval_state``
    keeps every chunk's finished steps, so a requeued evaluation resumes; None: nothing is saved.
    ``progress``: called on rank 0 with a progress dict (``line``, step, points left, ETA) at most
    every 10 s.

    The returned dict has the private keys ``_masks`` ({name: bool (N,)}: ``clean``,
    ``attack/<label>/<eps>``, ``worst/<eps>`` (our L-inf attacks), ``autoattack/<eps>`` (ours and
    AutoAttack: the worst case; meaningful on ``autoattack/points``), ``autoattack/<label>/<eps>``
    (robust after that component), ``autoattack/points``), ``_indices`` (the points' indices in the
    test split) and ``_labels``, and with ``keep_examples`` ``_adv_examples``; they never go to JSON
    (``run_trial`` saves them to ``TrialDir.points``). A smaller n_eval's points are a subset of a
    larger one's."""
    from ..rundir import TrialDir

    device = device or next(model.parameters()).device
    accel.configure(device, training=False)  # CUDA: IEEE fp32, no cuDNN autotuning of shrinking batches
    net = accel.eval_model(model, cfg)  # eval_precision bf16: every forward under bf16 autocast
    t0 = time.perf_counter()
    plan = EvalPlan.of(cfg)
    x, y = load_tensors(cfg.dataset, "test", cfg.data_root, n=cfg.n_eval, seed=0, download=cfg.download)
    indices = subset_indices(cfg.dataset, "test", cfg.data_root, n=cfg.n_eval, seed=0)
    x, y = x.to(device), y.to(device)
    shard = Shard(plan.n_chunks)
    root = None if state is None else (state if isinstance(state, TrialDir) else TrialDir(state)).eval_state
    store = ChunkStore(root, model_fingerprint(model), plan.key())
    prog = Progress(progress if shard.rank == 0 else None, world=shard.world)
    was = model.training
    model.eval()
    try:
        run = Runner(
            plan, net, x, y, shard, store, prog, cfg.eval_batch_size, cfg.autoattack_points, keep_examples
        )
        run.clean()
        run.linf()
        run.other_norms()
        meta = masking.run(run, cfg)
        steps = plan.reference.steps if plan.reference is not None else 20
        jac = run.jacobians(cfg.jac_eps, steps) if plan.jacobian_points else {}
        checks = model_checks(net, x, y, run.aa_pts, cfg) if shard.rank == 0 and plan.has_autoattack else []
        parts = shard.gather({**run.payload(), "jac": jac, "checks": checks})
    finally:
        model.train(was)
    merged = merge(parts, plan.n_points)
    merged["masks"] = {k: v.to(y.device) for k, v in merged["masks"].items()}
    pts = run.aa_pts
    aa, worst = autoattack_and_worst(cfg, plan, merged, run.decisions, parts[0]["checks"], pts)
    jac_all = _merge_jacobians([p["jac"] for p in parts])
    by_stage = {s: Cost() for s in (OURS, AUTOATTACK, OTHER_NORM, masking.PROBE)}
    for key, c in merged["cost"].items():
        by_stage[key.split("|")[0]].add(c)
    total = Cost()
    for c in by_stage.values():
        total.add(c)
    masks = {k: v.cpu() for k, v in merged["masks"].items() if not k.startswith("probe/")}
    if aa is not None:
        masks["autoattack/points"] = pts.cpu()
    logits = merged["logits"]
    record = {
        "clean_acc": float(masks["clean"].float().mean()),
        "n_points": plan.n_points,
        "attacks": attack_rows(cfg, merged),
        "worst_case": worst,
        "autoattack": aa,
        "jacobian": jacobian_record(jac_all, cfg.jac_eps, steps) if jac_all else {},
        "entropy_mean": float(entropy(logits).mean()),
        "ece": expected_calibration_error(logits.softmax(1), y.cpu()),
        "masking_probe": masking.record(
            meta, merged["masks"], merged["zero_grad"], cfg, by_stage[masking.PROBE].as_dict()
        ),
        "evaluation": {
            "plan": plan.describe(),
            "chunk_points": plan.chunk_points,
            "chunks": plan.n_chunks,
            "world_size": shard.world,
            "reuse_eps": plan.reuse_eps,
            "cost_by_stage": {k: {**v.as_dict(), "passes": round(v.passes, 1)} for k, v in by_stage.items()},
        },
        "precision": accel.record(cfg, device),
        "eval_seconds": time.perf_counter() - t0,
        "eval_cost": total.as_dict(),
        "_masks": masks,
        "_indices": indices,
        "_labels": y.detach().cpu(),
    }
    if keep_examples:
        record["_adv_examples"] = merged["examples"]
    return record


def _merge_jacobians(parts: list) -> dict:
    """The ranks' per-point Jacobian values, in point order."""
    parts = [p for p in parts if p.get("idx")]
    if not parts:
        return {}
    idx = [i for p in parts for i in p["idx"]]
    order = sorted(range(len(idx)), key=idx.__getitem__)
    out: dict = {"idx": sorted(idx), "clean": {}, "adversarial": {}}
    for part in ("clean", "adversarial"):
        for k in parts[0][part]:
            vals = [v for p in parts for v in p[part][k]]
            out[part][k] = [vals[i] for i in order]
    return out


def model_checks(model, x, y, pts: torch.Tensor, cfg) -> list:
    """pyautoattack's model checks, once, on (up to a batch of) the clean AutoAttack points: they do
    not depend on eps."""
    from pyautoattack import checks as aa_checks

    from ..attacks.autoattack import device_of

    idx = pts.nonzero().squeeze(1)[: cfg.eval_batch_size]
    xs, ys = x[idx], y[idx]
    with session(model, device_of(model, x)) as log:
        import logging

        from ..attacks.autoattack import LOGGER

        counted, lg = Counted(model, Cost()), logging.getLogger(LOGGER)
        if all(a.attack.version != "rand" for a in cfg.autoattack):
            aa_checks.check_randomized(counted, xs, ys, bs=len(xs), logger=lg)
        n_cls = aa_checks.check_range_output(counted, xs, logger=lg)
        aa_checks.check_dynamic(counted, xs, False, logger=lg)
        targets = n_target_classes(n_cls)
        names = [c for s in cfg.autoattack for c in (s.attack.components or (s.name,))]
        aa_checks.check_n_classes(n_cls, names, targets, targets, logger=lg)
        msgs = list(log)
    return [{"flag": check_flag(m), "message": m, "where": "model checks"} for m in msgs]
