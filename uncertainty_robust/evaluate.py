"""Evaluation of one trained model -> one result record (``result.json``).

Everything a reported figure needs travels with it: dataset, model, epsilons, attack steps and
restarts, number of test points, seed, cost, library versions and git commit.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .attacks import Cost, pgd, run_suite
from .config import TrialConfig
from .data import load_tensors, subset_indices
from .defenses import entropy
from .jacobian import jacobian_report

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


def zero_grad_fraction(model, x, y, tol: float = 1e-12) -> float:
    """Fraction of points whose input gradient of the CE loss is (numerically) zero: a flat,
    saturated softmax gives no signal to gradient attacks (AutoAttack's zero-gradient flag)."""
    was = model.training
    model.eval()
    try:
        xr = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
        return float((g.flatten(1).abs().max(1).values <= tol).float().mean())
    finally:
        model.train(was)


def git_commit() -> Optional[str]:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        # a repository without commits prints "HEAD" and fails: no commit to record
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "uncertainty_robust": _pkg_version(),
    }


def _pkg_version() -> str:
    try:
        from importlib.metadata import version

        return version("uncertainty-robust")
    except Exception:
        return "unknown"


def evaluate(model, cfg: TrialConfig, device=None, keep_examples: int = 0) -> dict:
    """Attack grid, worst case, Jacobian statistics, entropy and calibration on ``cfg.n_eval``
    stratified test points (the same points for every trial with the same dataset and n_eval; a
    smaller n_eval's points are a subset of a larger one's).

    Per-point outcomes travel under private keys (dropped from ``result.json``; ``run_trial`` saves
    them to ``TrialDir.points``): ``"_indices"`` (the points' indices in the test split, int64 (N,)),
    ``"_labels"`` and ``"_masks"``, {name: bool tensor (N,), True = correctly classified}, with names ``clean``,
    ``attack/<label>/<eps:g>`` and ``worst/<eps:g>``."""
    device = device or next(model.parameters()).device
    t0 = time.perf_counter()
    x, y = load_tensors(cfg.dataset, "test", cfg.data_root, n=cfg.n_eval, seed=0, download=cfg.download)
    indices = subset_indices(cfg.dataset, "test", cfg.data_root, n=cfg.n_eval, seed=0)
    x, y = x.to(device), y.to(device)
    torch.manual_seed(cfg.seed + 12345)  # attack random starts: reproducible per trial
    model.eval()
    with torch.no_grad():
        logits = torch.cat(
            [model(x[i : i + cfg.eval_batch_size]) for i in range(0, len(x), cfg.eval_batch_size)]
        )
    probs = logits.softmax(1)
    suite = run_suite(
        model,
        x,
        y,
        cfg.attacks,
        cfg.test_eps,
        cfg.eval_batch_size,
        per_attack=True,
        keep_examples=keep_examples,
    )
    n = len(y)
    attacks = []
    for spec in cfg.attacks:
        for eps in cfg.test_eps:
            c: Cost = suite.cost[(spec.label(), eps)]
            attacks.append(
                {
                    "attack": spec.name,
                    "label": spec.label(),
                    "norm": spec.attack.norm,
                    "loss": spec.attack.loss,
                    "eps": eps,
                    "steps": spec.steps,
                    "restarts": spec.restarts,
                    "step_size": spec.attack.step_size(eps, spec.steps, spec.step_size),
                    "acc": float(suite.correct[(spec.label(), eps)].float().mean()),
                    "n_points": n,
                    **c.as_dict(),
                }
            )
    worst = [
        {
            "eps": eps,
            "acc": float(suite.worst[eps].float().mean()),
            "n_points": n,
            "attacks": sorted({a["label"] for a in attacks if a["norm"] == "Linf"}),
        }
        for eps in cfg.test_eps
    ]
    jp = cfg.jacobian_points
    jac_steps = next((a.steps for a in cfg.attacks if a.name == "pgd"), 20)
    jac = jacobian_report(model, x[:jp], y[:jp], cfg.jac_eps, jac_steps) if jp else {}
    probe = _masking_probe(model, x[: min(n, 100)], y[: min(n, 100)], cfg)
    record = {
        "clean_acc": float(suite.clean_correct.float().mean()),
        "n_points": n,
        "attacks": attacks,
        "worst_case": worst,
        "jacobian": jac,
        "entropy_mean": float(entropy(logits).mean()),
        "ece": expected_calibration_error(probs, y),
        "masking_probe": probe,
        "eval_seconds": time.perf_counter() - t0,
    }
    if keep_examples:
        record["_adv_examples"] = suite.adv_examples  # tensors; dropped before JSON
    masks = {"clean": suite.clean_correct}
    for (label, eps), m in suite.correct.items():
        masks[f"attack/{label}/{eps:g}"] = m
    for eps, m in suite.worst.items():
        masks[f"worst/{eps:g}"] = m
    record["_masks"] = {k: v.detach().cpu() for k, v in masks.items()}
    record["_indices"] = indices
    record["_labels"] = y.detach().cpu()
    return record


def _masking_probe(model, x, y, cfg: TrialConfig) -> dict:
    """Inputs for the gradient-masking audit: PGD at a mid epsilon with the configured steps vs
    4x the steps and 4 restarts, and the fraction of zero input gradients."""
    pos = sorted(e for e in cfg.test_eps if e > 0)
    eps = pos[len(pos) // 2] if pos else cfg.eps
    steps = next((a.steps for a in cfg.attacks if a.name == "pgd"), 20)
    model.eval()
    out = {"eps": eps, "n_points": len(y), "steps": steps, "strong_steps": 4 * steps, "strong_restarts": 4}
    for key, st, rs in (("pgd", steps, 1), ("pgd_strong", 4 * steps, 4)):
        xa = pgd(model, x, y, eps, steps=st, restarts=rs)
        with torch.no_grad():
            out[key] = float((model(xa).argmax(1) == y).float().mean())
    out["zero_grad_frac"] = zero_grad_fraction(model, x, y)
    return out


def result_record(cfg: TrialConfig, train_summary: dict, evaluation: dict, trial_dir: os.PathLike) -> dict:
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
                "forward": sum(a["forward"] for a in evaluation["attacks"]),
                "backward": sum(a["backward"] for a in evaluation["attacks"]),
            },
        },
        "versions": versions(),
        "git_commit": git_commit(),
        "host": platform.node(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "trial_dir": str(Path(trial_dir).name),
    }


def read_result(trial_dir: os.PathLike) -> Optional[dict]:
    """The trial's result record, None while it has not finished."""
    from .rundir import TrialDir

    p = TrialDir(trial_dir).result
    return json.loads(p.read_text()) if p.exists() else None
