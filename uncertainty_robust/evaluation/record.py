"""The evaluation's part of ``result.json``, built from the merged per-point outcomes: one row per
(our attack, eps), the worst case per eps (ours, and ours + AutoAttack where it ran, with why it did
or did not), AutoAttack's per-component rows and pyautoattack's checks, and what the evaluation cost
by stage. Also the whole record (:func:`result_record`) and its reader."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Optional

import torch

from ..attacks import LINF, Cost, black_box_attack
from ..attacks.autoattack import captured_warnings, check_flag
from ..jacobian import summarize
from ..provenance import git_state, versions
from .plan import AUTOATTACK, OTHER_NORM, OURS, EvalPlan, Step

SCHEMA = "uncertainty-robust/result/v1"


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    conf, pred = probs.max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    ece = torch.zeros((), device=probs.device)
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.float().mean() * (conf[m].mean() - correct[m].mean()).abs()
    return float(ece)


def attack_rows(cfg, merged: dict) -> list:
    """One row per (our attack, eps): its settings, accuracy, the points it attacked and its cost."""
    rows, n = [], len(merged["masks"]["clean"])
    for spec in cfg.attacks:
        a = spec.attack
        stage = OURS if a.norm == LINF else OTHER_NORM
        for eps in sorted(set(spec.eps_list(cfg.eval_eps()))):
            key = Step(eps, spec, stage).key
            c = merged["cost"].get(key, Cost())
            rows.append(
                {
                    "attack": spec.name,
                    "label": spec.label(),
                    "norm": a.norm,
                    "loss": a.loss,
                    "source": a.source,
                    "eps": eps,
                    "steps": spec.steps,
                    "restarts": spec.restarts,
                    "unit": a.unit,
                    "step_size": a.step_size(eps, spec.steps, spec.step_size),
                    "acc": float(merged["masks"][f"attack/{spec.label()}/{eps:g}"].float().mean()),
                    "n_points": n,
                    "n_attacked": merged["attacked"].get(key, 0),
                    **c.as_dict(),
                }
            )
    return rows


def autoattack_and_worst(
    cfg, plan: EvalPlan, merged: dict, decisions: list, model_checks: list, pts
) -> tuple:
    """(the record's ``autoattack`` entry or None, its ``worst_case`` rows)."""
    masks, n = merged["masks"], plan.n_points
    by_eps = {d["eps"]: d for d in decisions}
    results, per_eps, checks, rows = [], [], list(model_checks), []
    prev = masks["clean"]
    used_aa = []
    for eps in plan.linf_eps:
        labels = sorted(s.label for s in plan.steps_at(eps, OURS)) if eps > 0 else []
        worst = masks[f"worst/{eps:g}"]
        ours = {"acc": float(worst.float().mean()), "n_points": n, "attacks": labels}
        if eps == 0 or not plan.has_autoattack:
            rows.append({"eps": eps, **ours})
            continue
        base = worst & prev if plan.reuse_eps else worst
        d = by_eps[eps]
        robust = base & pts
        accs = {"ours": float(robust[pts].float().mean())}
        if d["ran"]:
            for s in plan.steps_at(eps, AUTOATTACK):
                after = masks[f"autoattack/{s.label}/{eps:g}"] & pts
                c = merged["cost"].get(s.key, Cost())
                results.append(
                    {
                        "eps": eps,
                        "attack": s.spec.name,
                        "label": s.label,
                        "part_of": s.part_of,
                        "version": s.version,
                        "steps": s.spec.steps,
                        "restarts": s.spec.restarts,
                        "unit": s.spec.attack.unit,
                        "n_points": int(pts.sum()),
                        "n_attacked": merged["attacked"].get(s.key, 0),
                        "n_broken": int((robust & ~after).sum()),
                        "acc": float(after[pts].float().mean()),
                        **c.as_dict(),
                    }
                )
                checks += [
                    {"flag": check_flag(m), "message": m, "where": f"{s.label} at eps {eps:g}"}
                    for m in merged["messages"].get(s.key, [])
                ]
                robust = after
                accs[s.spec.name] = results[-1]["acc"]
            checks += square_checks(accs, eps)
            used_aa = [s.label for s in plan.steps_at(eps, AUTOATTACK)]
        final = masks[f"autoattack/{eps:g}"]
        per_eps.append(
            {
                "eps": eps,
                "ran": d["ran"],
                "why": d["why"],
                "n_points": int(pts.sum()),
                "ours_acc": accs["ours"],
                "acc": float(final[pts].float().mean()),
                "n_attacked": int(base[pts].sum()) if d["ran"] else 0,
            }
        )
        rows.append(
            {
                "eps": eps,
                "acc": float(final[pts].float().mean()),
                "n_points": int(pts.sum()),
                "attacks": labels + used_aa,  # AutoAttack's breaks at a smaller eps carry over
                "ours": ours,
                "ours_on_points": float(worst[pts].float().mean()),
                "autoattack": {"ran": d["ran"], "why": d["why"], "n_points": int(pts.sum())},
            }
        )
        prev = final
    if not plan.has_autoattack:
        return None, rows
    total = Cost()
    for r in results:
        total.add(Cost(r["forward"], r["backward"], r["seconds"]))
    rec = {
        "attacks": [s.label() for s in cfg.autoattack],
        "components": list(dict.fromkeys(s.label for s in plan.steps if s.stage == AUTOATTACK)),
        "n_points": int(pts.sum()),
        "points": "all n_eval points"
        if bool(pts.all())
        else "stratified subset of the n_eval points (seed 0)",
        "rule": "listed in autoattack_eps"
        if plan.aa_eps is not None
        else f"every eps where our attacks leave {plan.aa_band[0]:g}-{plan.aa_band[1]:g} of the points robust",
        "eps": per_eps,
        "eps_list": [e["eps"] for e in per_eps if e["ran"]],
        "results": results,
        "checks": checks,
        "cost": total.as_dict(),
    }
    return rec, rows


def square_checks(accs: dict, eps: float) -> list:
    """pyautoattack's ``check_square_sr`` when Square ran after other attacks (cumulative robust
    accuracy after each attack, as in ``run_standard_evaluation``)."""
    if black_box_attack().name not in accs or len(accs) <= 2:  # pyautoattack's check reads "square"
        return []
    from pyautoattack import checks as aa_checks

    with captured_warnings() as (lg, messages):
        aa_checks.check_square_sr(dict(accs), logger=lg)
    return [{"flag": check_flag(m), "message": m, "where": f"eps {eps:g}"} for m in messages]


def jacobian_record(jac: dict, eps: float, steps: int) -> dict:
    """Exact Jacobian statistics over the Jacobian points (see :func:`uncertainty_robust.jacobian.jacobian_report`)."""
    if not jac.get("idx"):
        return {}
    stat = {k: summarize(torch.tensor(v)) for k, v in jac["clean"].items()}
    adv = {k: summarize(torch.tensor(v)) for k, v in jac["adversarial"].items()}
    return {
        "method": "exact",
        **stat,
        "adversarial": {"eps": float(eps), "attack": f"pgd{steps}", "steps": steps, "method": "exact", **adv},
    }


def result_record(cfg, train_summary: dict, evaluation: dict, trial_dir: os.PathLike) -> dict:
    ev = {k: v for k, v in evaluation.items() if not k.startswith("_")}
    return {
        "schema": SCHEMA,
        "trial_id": cfg.trial_id(),
        "name": cfg.short_name(),
        "config": cfg.to_dict(),
        "dataset": cfg.dataset,
        "model": cfg.model,
        **ev,
        "train": {k: train_summary[k] for k in ("epochs", "train_seconds", "world_size", "history")},
        "cost": {
            "train": train_summary["cost"],
            "eval": {
                "seconds": evaluation["eval_seconds"],
                "forward": evaluation.get("eval_cost", {}).get("forward", 0),
                "backward": evaluation.get("eval_cost", {}).get("backward", 0),
            },
        },
        "versions": versions(),
        **git_state(),
        "host": platform.node(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "trial_dir": str(Path(trial_dir).name),
    }


def read_result(trial_dir: os.PathLike) -> Optional[dict]:
    """The trial's result record, None while it has not finished."""
    from ..rundir import TrialDir

    p = TrialDir(trial_dir).result
    return json.loads(p.read_text()) if p.exists() else None
