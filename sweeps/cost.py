"""Cost of a sweep before it runs: forward+backward passes counted from each trial's evaluation plan
(:class:`uncertainty_robust.evaluation.EvalPlan`: the same object the evaluation runs) and from the
training config, and CPU-hours from a step time measured here (a few forward+backward passes of the
trial's model). This module names no attack: the plan and the attack records know their costs.

The evaluation's cost depends on how many points each attack leaves standing, which only the
models can say. The dry run uses a prior (:func:`prior`): a clean accuracy and a logistic fall of
robust accuracy with eps, whose midpoint is a multiple of the training eps (adversarial defenses)
or of the dataset's conventional eps (the others), fitted by eye to the reproduction's measured
curves (results/, MNIST and Fashion-MNIST, small CNN); AutoAttack's curve is the same, a little to
the left. :func:`measured` gives the shares a finished trial measured instead (the benchmark uses it
to separate the prior's error from the pass model's).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from uncertainty_robust.config import TrialConfig
from uncertainty_robust.data import dataset_info
from uncertainty_robust.evaluation import AUTOATTACK, OURS, EvalPlan
from uncertainty_robust.train import make_model

CLEAN_ACC = 0.95  # the prior's clean accuracy
MIDPOINT_ADV = 1.25  # an adversarially trained model's robust accuracy halves at 1.25 x its training eps
MIDPOINT_STD = 0.43  # any other model's at 0.43 x the dataset's conventional eps
WIDTH = 1 / 6  # the logistic's scale, a share of its midpoint (the fall from 90 % to 10 %: 0.73 x midpoint)
AA_SHIFT = 0.9  # AutoAttack's midpoint, a share of ours


def prior(c: TrialConfig) -> Callable[[float, str], float]:
    """The dry run's guess at the share of the n_eval points robust at ``eps`` after our attacks
    (``stage`` "ours") or after AutoAttack too ("autoattack")."""
    mid = (
        MIDPOINT_ADV * c.eps if c.is_adversarial else MIDPOINT_STD * dataset_info(c.dataset).conventional_eps
    )
    mid = max(mid, 1e-6)

    def robust(eps: float, stage: str) -> float:
        m = mid * (AA_SHIFT if stage == AUTOATTACK else 1.0)
        if eps <= 0:
            return CLEAN_ACC
        z = (eps - m) / (WIDTH * m)
        return CLEAN_ACC / (1 + math.exp(min(50.0, z)))

    return robust


def measured(record: dict) -> Callable[[float, str], float]:
    """The shares a finished trial measured (its ``worst_case`` rows: ours, and ours + AutoAttack)."""
    shares = {}
    for w in record.get("worst_case", []):
        shares[(round(w["eps"], 9), OURS)] = (w.get("ours") or w)["acc"]
        shares[(round(w["eps"], 9), AUTOATTACK)] = w["acc"]

    def robust(eps: float, stage: str) -> float:
        return shares.get((round(eps, 9), stage), 0.0)

    return robust


def pilot_key(defense: str, lam: float, eps: float) -> tuple:
    """The row a pilot's trial prices: defense, and lam and eps where the defense uses them."""
    shown = TrialConfig(defense=defense, lam=float(lam), eps=float(eps)).shown()
    return (defense, shown["lam"], shown["eps"])


def pilot_shares(path: Path) -> dict:
    """{:func:`pilot_key`: robust(eps, stage)} from a pilot's ``trials.csv`` (an aggregate: RUN/aggregate
    or results/<part>): per row, the mean over its trials (seeds, checkpoints) of the share of points
    left robust by our attacks (``worst@eps``) and by ours + AutoAttack (``AA@eps``, ours where
    AutoAttack did not run), clean at eps 0. Between two of the pilot's eps the shares are interpolated
    linearly; outside them, and for a row the pilot lacks, the dry run keeps the prior."""
    import csv
    from collections import defaultdict

    from sweeps.power import PilotError

    f = Path(path) / "trials.csv"
    if not f.is_file():
        raise PilotError(
            f"--pilot {path}: no trials.csv there (an aggregate written before per-trial values)"
        )
    rows = defaultdict(list)
    with open(f, newline="") as fh:
        for r in csv.DictReader(fh):
            try:
                key = pilot_key(r["defense"], float(r["lam"] or 0), float(r["eps"] or 0))
            except (KeyError, ValueError, TypeError):
                raise PilotError(
                    f"--pilot {f}: a row without defense, lam and eps (not a trials.csv)"
                ) from None
            rows[key].append(r)

    def curve(trials: list, stage: str) -> list:
        pts = {0.0: [float(t["clean"]) for t in trials if t.get("clean")]}
        for col in trials[0]:
            if col.startswith("worst@"):
                e = float(col.split("@", 1)[1])
                for t in trials:
                    v = t.get(f"AA@{col[6:]}") if stage == AUTOATTACK else None
                    v = v or t.get(col)
                    if v:
                        pts.setdefault(e, []).append(float(v))
        return sorted((e, sum(v) / len(v)) for e, v in pts.items() if v)

    def priced(curves: dict, fallback) -> Callable[[float, str], float]:
        def robust(eps: float, stage: str) -> float:
            pts = curves.get(stage) or curves[OURS]
            for (e0, v0), (e1, v1) in zip(pts, pts[1:]):
                if e0 <= eps <= e1:
                    return v0 + (v1 - v0) * (eps - e0) / (e1 - e0) if e1 > e0 else v1
            if pts and eps == pts[0][0]:
                return pts[0][1]
            return fallback(eps, stage)

        return robust

    out = {}
    for key, trials in rows.items():  # each row's curves read once; the prior is the trial's own
        curves = {stage: curve(trials, stage) for stage in (OURS, AUTOATTACK)}
        out[key] = lambda c, curves=curves: priced(curves, prior(c))
    return out


def breakdown(c: TrialConfig, robust: Optional[Callable[[float, str], float]] = None) -> dict:
    """Forward+backward passes, counted per example, of each part of one trial:

    - ``train``: epochs x training points x (1 + PGD steps x adv_fraction for AT defenses); the
      training points are what is left of the training split after the validation split;
    - ``validation``: per epoch, a clean pass, PGD-``val_pgd_steps`` and the projection Jacobian
      estimate (2 x projections passes on 128 points) on ``val_points``;
    - ``evaluation``: the plan's clean pass, our attacks, the masking probe and the Jacobians;
    - ``autoattack``: the plan's AutoAttack steps;

    the last two from :meth:`EvalPlan.expected_passes` with ``robust`` (default: :func:`prior`),
    once per evaluated checkpoint (an upper bound: the best checkpoint is often the last)."""
    size = dataset_info(c.dataset).train_size or 50000
    n_train = min(c.n_train or size, max(0, size - c.val_points))
    per_example = 1 + (c.train_attack_steps * c.adv_fraction if c.is_adversarial else 0)
    train = c.epochs * n_train * per_example
    validation = c.epochs * (
        c.val_points * (1 + c.val_pgd_steps) + min(c.val_points, 128) * 2 * c.jacobian_projections
    )
    ev = EvalPlan.of(c).expected_passes(robust or prior(c))
    k = len(c.checkpoints)
    return {
        "train": float(train),
        "validation": float(validation),
        "evaluation": float(k * sum(v for s, v in ev.items() if s != AUTOATTACK)),
        "autoattack": float(k * ev[AUTOATTACK]),
    }


def grad_evals(c: TrialConfig) -> float:
    """Forward+backward passes, counted per example, of training, validation and evaluation."""
    return float(sum(breakdown(c).values()))


def seconds_per_example(c: TrialConfig, batch: int = 64, reps: int = 7) -> float:
    """Measured: one forward+backward of the model per example, one thread (timing only, so the
    input batch is noise; no result is claimed from it). Timed in this thread's CPU time, not wall
    time, and the fastest of ``reps`` batches: a busy machine (a sweep already running) then changes
    the reading little. Wall time did not: a mean of 3 batches read 0.751 ms with 4 trials on 2 cores
    against 0.402 idle; with 5 busy threads on 2 cores, wall time read 0.5-4.5 ms per example and
    thread CPU time 0.43-0.50, against 0.36-0.43 with 2."""
    info = dataset_info(c.dataset)
    model = make_model(c)
    x = torch.rand(batch, info.channels, info.size, info.size)
    y = torch.randint(0, info.num_classes, (batch,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.nn.functional.cross_entropy(model(x), y).backward()  # warm-up
        best = float("inf")
        for _ in range(reps):
            t0 = time.thread_time()  # one intra-op thread: the work runs on this one
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            best = min(best, time.thread_time() - t0)
        return best / batch
    finally:
        torch.set_num_threads(threads)


def iteration_seconds(c: TrialConfig, names: set) -> dict:
    """Measured: the fixed cost of one loop iteration of each attack in ``names`` (its per-batch
    overhead, which dominates on the small batches an evaluation's survivors make), and of one
    iteration of the clean pass / Jacobians (""), in this thread's CPU time. Each attack runs a few
    iterations on 2 points it cannot break (eps 1e-4, labels = the model's own predictions, noise
    inputs: a timing, no result is claimed from it)."""
    from uncertainty_robust.attacks import ATTACKS, AttackSpec, Cost, run_attack
    from uncertainty_robust.attacks.autoattack import run_plan

    info = dataset_info(c.dataset)
    model = make_model(c).eval()
    x = torch.rand(2, info.channels, info.size, info.size)
    with torch.no_grad():
        y = model(x).argmax(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {"": seconds_per_example(c, batch=1)}
    try:
        for name in sorted(n for n in names if n):
            a = ATTACKS[name]
            steps = 1 if not a.takes_steps else (200 if a.black_box else 20)
            spec = AttackSpec(name, steps if a.takes_steps else None)
            loop = spec.steps * spec.restarts * a.n_target_classes(info.num_classes)
            t0 = time.thread_time()
            if a.pyautoattack:
                run_plan(model, x, y, 1e-4, "standard", [(name, spec.steps, spec.restarts)], 0, Cost())
            else:
                run_attack(model, x, y, spec, 1e-4, Cost())
            out[name] = (time.thread_time() - t0) / max(1, loop)
    finally:
        torch.set_num_threads(threads)
    return out


def evaluation_seconds(c: TrialConfig, robust=None, calibration: Optional[dict] = None) -> float:
    """The evaluation's CPU seconds on this machine: every step's expected passes at the measured
    per-example cost plus its iterations at the attack's measured per-iteration cost."""
    work = EvalPlan.of(c).expected_work(robust or prior(c))
    cal = calibration or {
        "example": seconds_per_example(c),
        "iteration": iteration_seconds(c, {w.attack for w in work}),
    }
    per_it = cal["iteration"]
    return len(c.checkpoints) * sum(
        w.passes * cal["example"] + w.iterations * per_it.get(w.attack, per_it[""]) for w in work
    )


def estimate(trials: list, robust: Optional[Callable] = None, pilot: Optional[dict] = None) -> dict:
    """Per trial and in total: passes by part, and CPU-hours: training and validation at the measured
    per-example cost, the evaluation by :func:`evaluation_seconds` (passes and iterations). The shares
    of points each attack leaves: ``robust`` for every trial, else a ``pilot``'s (:func:`pilot_shares`)
    for the rows it has, else the prior; ``priced_by_pilot`` counts the trials a pilot priced."""
    cache: dict = {}
    done: dict = {}
    per = []
    by_pilot = 0
    for c in trials:
        if robust is None and pilot is not None:
            row = pilot.get(pilot_key(c.defense, c.lam, c.eps))
            by_pilot += row is not None
            trial_robust = row(c) if row is not None else None
        else:
            trial_robust = robust
        key = (c.dataset, c.model, c.width)
        if key not in cache:
            names = {w.attack for w in EvalPlan.of(c).expected_work(prior(c))}
            cache[key] = {"example": seconds_per_example(c), "iteration": iteration_seconds(c, names)}
        same = json.dumps({k: v for k, v in c.to_dict().items() if k != "seed"}, sort_keys=True, default=str)
        if same not in done:  # trials that differ only in their seed cost the same
            done[same] = (breakdown(c, trial_robust), evaluation_seconds(c, trial_robust, cache[key]))
        parts, eval_s = done[same]
        g = sum(parts.values())
        train_s = (parts["train"] + parts["validation"]) * cache[key]["example"]
        per.append(
            {
                "grad_evals": g,
                "cpu_hours": (train_s + eval_s) / 3600,
                "eval_cpu_hours": eval_s / 3600,
                **{f"{k}_grad_evals": v for k, v in parts.items()},
            }
        )
    sec = next(iter(cache.values()))["example"] if cache else 0.0
    return {
        "per_trial": per,
        "grad_evals": sum(p["grad_evals"] for p in per),
        "parts": {
            k: sum(p[f"{k}_grad_evals"] for p in per)
            for k in ("train", "validation", "evaluation", "autoattack")
        },
        "cpu_hours": sum(p["cpu_hours"] for p in per),
        "sec_per_grad_eval": sec,
        "threads": 1,
        "priced_by_pilot": by_pilot,
    }
