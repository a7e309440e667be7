"""Cost of a sweep before it runs: gradient evaluations counted from the configs, and CPU-hours
from a step time measured here (a few forward+backward passes of the trial's model)."""

from __future__ import annotations

import time

import torch

from uncertainty_robust.config import TrialConfig
from uncertainty_robust.data import dataset_info
from uncertainty_robust.evaluate import PROBE_RESTARTS_FACTOR, PROBE_SQUARE_QUERIES, PROBE_STEPS_FACTOR
from uncertainty_robust.train import make_model

QUERIES_PER_PASS = 3  # a gradient-free query (Square) costs a forward pass: about a third of forward+backward


def breakdown(c: TrialConfig) -> dict:
    """Forward+backward passes, counted per example, of each part of one trial (upper bounds: the
    attacks' early exit for broken points only lowers them):

    - ``train``: epochs x training points x (1 + PGD steps x adv_fraction for AT defenses); the
      training points are what is left of the training split after the validation split;
    - ``validation``: per epoch, the probe on ``val_points``: a clean pass, PGD-``val_pgd_steps`` and
      the projection Jacobian estimate (2 x projections passes on 128 points);
    - ``evaluation``: every attack at every positive test eps on ``n_eval`` points, the masking probe
      (the strongest CE-PGD with 4x the steps and 4x the restarts on ``probe_points``, Square-1000 at
      a third of a pass per query on the AutoAttack points among them), the exact Jacobians at clean points (K passes) and at PGD
      points (the first PGD's steps + K passes) on ``jacobian_points``; twice when the best
      checkpoint is evaluated too (less when the best epoch is the last one);
    - ``autoattack``: every AutoAttack component at every AutoAttack eps on ``autoattack_points``
      points, as if every point survived our attacks (it runs only on the survivors, so this is an
      upper bound; for undefended models the real cost is a small fraction): APGD steps x restarts,
      APGD-T and FAB-T steps x target classes (min(9, K-1)), Square's queries at a third of a pass
      (forward only)."""
    size = _train_size(c.dataset)
    n_train = min(c.n_train or size, max(0, size - c.val_points))
    per_example = 1 + (c.pgd_steps * c.adv_fraction if c.is_adversarial else 0)
    train = c.epochs * n_train * per_example
    validation = c.epochs * (
        c.val_points * (1 + c.val_pgd_steps) + min(c.val_points, 128) * 2 * c.jacobian_projections
    )
    attacks = sum(a.steps * a.restarts for a in c.attacks)  # single-step attacks: 1 x 1
    probe_steps = next((a.steps for a in c.attacks if a.name == "pgd"), 20)
    k = dataset_info(c.dataset).num_classes
    jacobian = c.jacobian_points * (2 * k + probe_steps)
    eps_pos = sum(1 for e in c.eval_eps() if e > 0)
    probe_n = min(c.probe_points or c.n_eval, c.n_eval)
    square_n = min(probe_n, c.autoattack_points or c.n_eval)
    ref = max((a for a in c.attacks if a.name == "pgd"), key=lambda a: a.steps * a.restarts, default=None)
    strong = PROBE_STEPS_FACTOR * PROBE_RESTARTS_FACTOR
    probe = (
        probe_n * ref.steps * ref.restarts * strong + square_n * PROBE_SQUARE_QUERIES / QUERIES_PER_PASS
        if ref
        else 0
    )
    evaluation = c.n_eval * attacks * eps_pos + probe + jacobian
    autoattack = autoattack_passes(c, k) * len(c.aa_eps()) * (c.autoattack_points or c.n_eval)
    evaluation *= len(c.checkpoints)
    autoattack *= len(c.checkpoints)
    return {
        "train": float(train),
        "validation": float(validation),
        "evaluation": float(evaluation),
        "autoattack": float(autoattack),
    }


def autoattack_passes(c: TrialConfig, k: int) -> float:
    """Forward+backward passes per point and eps of the config's AutoAttack list (see ``breakdown``)."""
    from uncertainty_robust.autoattack import COMPONENTS, plan_of

    targets = max(1, min(9, k - 1))
    total = 0.0
    for spec in c.autoattack:
        for name, steps, restarts in plan_of(spec)[1]:
            comp = COMPONENTS[name]
            per = steps * restarts
            if comp.gradient_free:
                per /= QUERIES_PER_PASS
            elif name in ("apgd-t", "fab-t"):
                per *= targets
            total += per
    return total


def grad_evals(c: TrialConfig) -> float:
    """Forward+backward passes, counted per example, of training, validation and evaluation."""
    return float(sum(breakdown(c).values()))


def _train_size(name: str) -> int:
    return {
        "mnist_embedded": 8000,
        "mnist": 60000,
        "fashion_mnist": 60000,
        "cifar10": 50000,
        "cifar100": 50000,
        "svhn": 73257,
    }.get(name, 50000)


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


def estimate(trials: list) -> dict:
    cache: dict = {}
    per = []
    for c in trials:
        key = (c.dataset, c.model, c.width)
        if key not in cache:
            cache[key] = seconds_per_example(c)
        parts = breakdown(c)
        g = sum(parts.values())
        per.append(
            {
                "grad_evals": g,
                "cpu_hours": g * cache[key] / 3600,
                **{f"{k}_grad_evals": v for k, v in parts.items()},
            }
        )
    sec = next(iter(cache.values())) if cache else 0.0
    return {
        "per_trial": per,
        "grad_evals": sum(p["grad_evals"] for p in per),
        "parts": {k: sum(p[f"{k}_grad_evals"] for p in per) for k in ("train", "validation", "evaluation")},
        "cpu_hours": sum(p["cpu_hours"] for p in per),
        "sec_per_grad_eval": sec,
        "threads": 1,
    }
