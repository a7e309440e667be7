"""Every (attack, eps) on every clean-correct point, and the per-example worst case: the simple
reference loop that tests, benchmarks and the transfer attack use. The trial's evaluation runs the
same attacks through the evaluation plan (:mod:`uncertainty_robust.evaluation`), which adds
sharding, survivor filtering and reuse across epsilons."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .registry import LINF, Cost, predict, run_attack


@dataclass
class SuiteResult:
    clean_correct: torch.Tensor  # bool (N,)
    correct: dict = field(default_factory=dict)  # (attack label, eps) -> bool (N,)
    worst: dict = field(default_factory=dict)  # eps -> bool (N,), over the L-inf attacks run at eps
    cost: dict = field(default_factory=dict)  # (attack label, eps) -> Cost
    adv_examples: dict = field(default_factory=dict)  # eps -> a few (x_adv, y, pred, attack, x) for reports


def run_suite(
    model, x, y, specs, eps_list, batch_size: int = 500, per_attack: bool = True, keep_examples: int = 0
) -> SuiteResult:
    """Evaluate every (attack, eps) and the per-example worst case over the L-inf attacks at each eps.

    Each attack runs at its own ``spec.eps`` if it has one, else at every eps of ``eps_list``; the
    worst case is kept at every L-inf eps any attack ran at. Only points still correctly classified
    are attacked. With ``per_attack`` each attack runs on every clean-correct point (so per-attack
    accuracies are exact and comparable, e.g. FGSM vs PGD) and the worst case is their AND; without
    it attacks run in order on the points that survived the previous ones (AutoAttack's early exit)
    and only the worst case is exact. An attack of another norm (``pgd_l2``) has an eps of another
    threat model: it always runs on every clean-correct point, is reported on its own and never
    enters the L-inf worst case. The model is put in eval mode and restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        clean = predict(model, x, batch_size) == y
        res = SuiteResult(clean_correct=clean)
        runs = [(spec, [float(e) for e in spec.eps_list(eps_list)]) for spec in specs]
        linf_eps = sorted({e for spec, es in runs if spec.attack.norm == LINF for e in es})
        other_eps = sorted({e for spec, es in runs if spec.attack.norm != LINF for e in es} - set(linf_eps))
        for eps in linf_eps + other_eps:
            worst = clean.clone()
            for spec, es in runs:
                if eps not in es:
                    continue
                label = spec.label()
                linf = spec.attack.norm == LINF
                mask = clean.clone() if per_attack or not linf else worst.clone()
                cost = Cost()
                if eps > 0:
                    t0 = time.perf_counter()
                    idx = mask.nonzero().squeeze(1)
                    for i in range(0, len(idx), batch_size):
                        b = idx[i : i + batch_size]
                        xa = run_attack(model, x[b], y[b], spec, eps, cost)
                        with torch.no_grad():
                            pred = model(xa).argmax(1)
                        cost.forward += len(b)
                        mask[b] = pred == y[b]
                        if keep_examples and linf and i == 0:  # the last L-inf attack's first batch wins
                            k = min(keep_examples, len(b))
                            res.adv_examples[eps] = (
                                xa[:k].cpu(),
                                y[b][:k].cpu(),
                                pred[:k].cpu(),
                                label,
                                x[b][:k].cpu(),
                            )
                    cost.seconds = time.perf_counter() - t0
                res.cost[(label, eps)] = cost
                if per_attack or not linf:
                    res.correct[(label, eps)] = mask
                if linf:
                    worst &= mask
            if eps in linf_eps:
                res.worst[eps] = worst
        return res
    finally:
        model.train(was_training)
