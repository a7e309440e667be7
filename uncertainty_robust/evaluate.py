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

from . import accel
from .attacks import AttackSpec, Cost, run_attack, run_suite
from .autoattack import reference as aa_reference
from .config import TrialConfig
from .data import load_tensors, stratified_indices, subset_indices
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


def zero_grad_fraction(model, x, y, tol: float = 1e-12, batch_size: int = 500) -> float:
    """Fraction of points whose input gradient of the CE loss is (numerically) zero: a flat,
    saturated softmax gives no signal to gradient attacks (AutoAttack's zero-gradient flag)."""
    was = model.training
    model.eval()
    try:
        zero = 0
        for i in range(0, len(x), batch_size):
            xr = x[i : i + batch_size].detach().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y[i : i + batch_size], reduction="sum"), xr)
            zero += int((g.flatten(1).abs().max(1).values <= tol).sum())
        return zero / max(1, len(x))
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
        "pyautoattack": _dist_version("pyautoattack"),
        "uncertainty_robust": _pkg_version(),
    }


def _pkg_version() -> str:
    return _dist_version("uncertainty-robust")


def _dist_version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "unknown"


def autoattack_points(y: torch.Tensor, cfg: TrialConfig, k: Optional[int] = -1) -> torch.Tensor:
    """Indices (into the n_eval evaluation points) AutoAttack and the probe's Square run on: all of
    them, or a class-balanced subset of ``autoattack_points`` (fixed seed, the same for every trial).
    ``k``: another subset size (the probe's ``probe_points``; None: all)."""
    n = len(y)
    k = cfg.autoattack_points if k == -1 else k
    if k is None or k >= n:
        return torch.arange(n, device=y.device)
    return torch.from_numpy(stratified_indices(y.cpu().numpy(), k, seed=0)).to(y.device)


def evaluate(model, cfg: TrialConfig, device=None, keep_examples: int = 0, state=None) -> dict:
    """Attack grid, worst case, AutoAttack, masking probe, Jacobian statistics, entropy and
    calibration on ``cfg.n_eval`` stratified test points (the same points for every trial with the
    same dataset).

    Our attacks (``cfg.attacks``) run at ``cfg.eval_eps()`` (the test eps plus the AutoAttack eps);
    AutoAttack (``cfg.autoattack``) runs at ``cfg.aa_eps()`` on the ``autoattack_points`` points our
    attacks left robust there, and the ``worst_case`` entry of such an eps is the per-example worst
    case over both (on those points), with our own worst case beside it (``ours``).
    ``state``: a :class:`~uncertainty_robust.rundir.TrialDir` (or its path) whose ``eval_state``
    keeps the AutoAttack pieces, so a requeued evaluation resumes them; None: nothing is saved.

    The returned dict has the private keys ``_masks`` ({name: bool (N,)}: ``clean``,
    ``attack/<label>/<eps>``, ``worst/<eps>`` (our own attacks, every point),
    ``autoattack/<eps>`` (ours + AutoAttack; meaningful on ``autoattack/points`` only),
    ``autoattack/<label>/<eps>``, ``autoattack/points``) and, with
    ``keep_examples``, ``_adv_examples``; and ``_indices`` (the points' indices in the test split,
    int64 (N,)) and ``_labels``; they never go to JSON (``run_trial`` saves the masks, indices and
    labels to ``TrialDir.points``). A smaller n_eval's points are a subset of a larger one's.
    """
    device = device or next(model.parameters()).device
    accel.configure(device, training=False)  # CUDA: IEEE fp32, no cuDNN autotuning of shrinking batches
    model = accel.eval_model(model, cfg)  # eval_precision bf16: every forward under bf16 autocast
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
    suite = run_suite(
        model,
        x,
        y,
        cfg.attacks,
        cfg.eval_eps(),
        cfg.eval_batch_size,
        per_attack=True,
        keep_examples=keep_examples,
    )
    total = Cost()
    attacks = attack_rows(cfg, suite, len(y), total)
    masks = {"clean": suite.clean_correct}
    for (label, eps), m in suite.correct.items():
        masks[f"attack/{label}/{eps:g}"] = m
    for eps, m in suite.worst.items():
        masks[f"worst/{eps:g}"] = m  # our own attacks' worst case, every point (the worst@eps column)
    pts = autoattack_points(y, cfg)
    aa = run_autoattack(model, x, y, cfg, suite, pts, state, masks, total)
    probe = masking_probe(model, x, y, cfg, suite, pts)
    total.add(Cost(**probe["cost"]))
    jp = cfg.jacobian_points
    jac_steps = next((a.steps for a in cfg.attacks if a.name == "pgd"), 20)
    jac = jacobian_report(model, x[:jp], y[:jp], cfg.jac_eps, jac_steps) if jp else {}
    record = {
        "clean_acc": float(suite.clean_correct.float().mean()),
        "n_points": len(y),
        "attacks": attacks,
        "worst_case": worst_rows(cfg, suite, attacks, aa, masks, pts),
        "autoattack": aa,
        "jacobian": jac,
        "entropy_mean": float(entropy(logits).mean()),
        "ece": expected_calibration_error(logits.softmax(1), y),
        "masking_probe": probe,
        "precision": accel.record(cfg, device),
        "eval_seconds": time.perf_counter() - t0,
        "eval_cost": total.as_dict(),
        "_masks": {k: v.detach().cpu() for k, v in masks.items()},
        "_indices": indices,
        "_labels": y.detach().cpu(),
    }
    if keep_examples:
        record["_adv_examples"] = suite.adv_examples  # tensors; dropped before JSON
    return record


def attack_rows(cfg: TrialConfig, suite, n: int, total: Cost) -> list:
    """One result row per (our attack, eps): its settings, accuracy and cost (added to ``total``)."""
    rows = []
    for spec in cfg.attacks:
        a = spec.attack
        for eps in spec.eps_list(cfg.eval_eps()):
            c: Cost = suite.cost[(spec.label(), eps)]
            total.add(c)
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
                    "acc": float(suite.correct[(spec.label(), eps)].float().mean()),
                    "n_points": n,
                    **c.as_dict(),
                }
            )
    return rows


def run_autoattack(
    model, x, y, cfg: TrialConfig, suite, pts, state, masks: dict, total: Cost
) -> Optional[dict]:
    """AutoAttack at ``cfg.aa_eps()`` on the points ``pts`` our attacks left robust (resumable through
    ``state``, a TrialDir or its path); adds its masks to ``masks`` (``autoattack/points``,
    ``autoattack/<eps>`` = ours + AutoAttack, ``autoattack/<label>/<eps>``) and its cost to ``total``.
    Returns the record's ``autoattack`` entry, None when it does not run."""
    from .rundir import TrialDir

    aa_eps = [e for e in cfg.aa_eps() if e in suite.worst]
    if not aa_eps:
        return None
    td = None if state is None else state if isinstance(state, TrialDir) else TrialDir(state)
    aa = aa_reference(
        model,
        x,
        y,
        cfg.autoattack,
        aa_eps,
        suite.worst,
        pts,
        seed=cfg.seed,
        batch_size=cfg.eval_batch_size,
        state=td.eval_piece if td is not None else None,
    )
    total.add(aa["cost"])
    in_pts = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    in_pts[pts] = True
    masks["autoattack/points"] = in_pts
    for eps in aa_eps:
        masks[f"autoattack/{eps:g}"] = aa["_robust"][eps] & in_pts & suite.worst[eps]
    for (eps, label), m in aa["_robust_after"].items():
        masks[f"autoattack/{label}/{eps:g}"] = m & in_pts
    rec = {k: v for k, v in aa.items() if not k.startswith("_")}
    rec["cost"] = aa["cost"].as_dict()
    rec["eps_list"] = aa_eps
    rec["points"] = (
        "all n_eval points" if len(pts) == len(y) else "stratified subset of the n_eval points (seed 0)"
    )
    return rec


def worst_rows(cfg: TrialConfig, suite, attacks: list, aa: Optional[dict], masks: dict, pts) -> list:
    """The record's ``worst_case``: per eps our L-inf attacks' per-example worst case on every point;
    where AutoAttack ran, ours + AutoAttack on its points with ours (``ours``, ``ours_on_points``) beside it."""
    n = len(suite.clean_correct)
    aa_eps = aa["eps_list"] if aa else []
    rows = []
    for eps in sorted(suite.worst):
        labels = sorted({a["label"] for a in attacks if a["norm"] == "Linf" and a["eps"] == eps})
        ours = {"acc": float(suite.worst[eps].float().mean()), "n_points": n, "attacks": labels}
        if eps not in aa_eps:
            rows.append({"eps": eps, **ours})
            continue
        rows.append(
            {
                "eps": eps,
                "acc": float(masks[f"autoattack/{eps:g}"][pts].float().mean()),
                "n_points": len(pts),
                "attacks": labels + [s.label() for s in cfg.autoattack],
                "ours": ours,
                "ours_on_points": float(suite.worst[eps][pts].float().mean()),  # ours alone, same points
            }
        )
    return rows


# ----------------------------------------------------------------------------- the masking probe
PROBE_STEPS_FACTOR = 4  # the strong CE-PGD: 4x the steps ...
PROBE_RESTARTS_FACTOR = 4  # ... and 4x the restarts of the strongest CE-PGD of the evaluation
PROBE_SQUARE_QUERIES = 1000  # the gradient-free check: Square (pyautoattack) with this many queries
INFORMATIVE_MIN_ACC = 0.05  # below this white-box accuracy a stronger attack cannot show a gap


def strongest_ce_pgd(specs: list) -> Optional[AttackSpec]:
    """The CE-loss L-inf PGD with the most steps x restarts (the white-box reference of the audit)."""
    cands = [s for s in specs if s.name == "pgd"]
    return max(cands, key=lambda s: (s.steps * s.restarts, s.steps)) if cands else None


def paired(ref: torch.Tensor, other: torch.Tensor) -> dict:
    """Two attacks on the same points (bool robust masks): accuracies and the discordant counts a
    McNemar test needs (``only_other``: broken by ``other`` only; ``only_ref``: by ``ref`` only)."""
    return {
        "n_points": len(ref),
        "ref_acc": float(ref.float().mean()),
        "acc": float(other.float().mean()),
        "only_other": int((ref & ~other).sum()),
        "only_ref": int((~ref & other).sum()),
    }


def _attack_mask(model, x, y, spec: AttackSpec, eps: float, on: torch.Tensor, batch_size: int, cost: Cost):
    """Robust mask of one attack run on the points ``on`` (others: False)."""
    out = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    idx = on.nonzero().squeeze(1)
    for i in range(0, len(idx), batch_size):
        b = idx[i : i + batch_size]
        xa = run_attack(model, x[b], y[b], spec, eps, cost)
        with torch.no_grad():
            out[b] = model(xa).argmax(1) == y[b]
        cost.forward += len(b)
    return out


def masking_probe(model, x, y, cfg: TrialConfig, suite, pts: torch.Tensor) -> dict:
    """What the gradient-masking audit (:mod:`uncertainty_robust.audit`) needs beyond the attack grid.

    White-box reference: the strongest CE-PGD of ``cfg.attacks`` (most steps x restarts). Probe eps:
    the eps where its accuracy is closest to 50 % (a stronger, transferred or gradient-free attack
    can show a gap only where there is something left to break). At that eps, on every evaluation
    point: CE-PGD with 4x the steps and 4x the restarts (``strong``), and Square with 1000 queries on
    the AutoAttack points (``square``). At every eps: the CW margin loss at the reference's steps
    and restarts (``margin``; reused from ``cfg.attacks`` when it has one), FGSM vs the reference
    (``fgsm_pgd``), as paired counts. Where the reference's accuracy is below 5 % a comparison is
    not run and says why (``not_tested``). Also the fraction of points with an exactly zero CE input
    gradient and the indices of the points the reference leaves robust at the probe eps (what
    the transfer attack is paired with)."""
    t0 = time.perf_counter()
    cost = Cost()
    n = len(y)
    out: dict = {
        "rule": "eps where the strongest CE-PGD's accuracy is closest to 0.5",
        "min_informative_acc": INFORMATIVE_MIN_ACC,
        "n_points": n,
        "zero_grad_frac": zero_grad_fraction(model, x, y, batch_size=cfg.eval_batch_size),
    }
    ref = strongest_ce_pgd(cfg.attacks)
    if ref is None:
        out["not_tested"] = "no CE-PGD (pgd) in evaluation.attacks: no white-box reference"
        out["cost"] = {**cost.as_dict(), "seconds": round(time.perf_counter() - t0, 4)}
        return out
    label = ref.label()
    eps_list = [e for e in ref.eps_list(cfg.eval_eps()) if e > 0 and (label, e) in suite.correct]
    accs = {e: float(suite.correct[(label, e)].float().mean()) for e in eps_list}
    out["whitebox"] = {
        "label": label,
        "steps": ref.steps,
        "restarts": ref.restarts,
        "acc": {f"{e:g}": a for e, a in accs.items()},
    }
    if not eps_list:
        out["not_tested"] = f"{label} ran at no eps > 0"
        out["cost"] = {**cost.as_dict(), "seconds": round(time.perf_counter() - t0, 4)}
        return out
    eps = min(eps_list, key=lambda e: (abs(accs[e] - 0.5), e))
    wb = suite.correct[(label, eps)]
    out.update(eps=eps, whitebox_acc=accs[eps], whitebox_robust=wb.nonzero().squeeze(1).tolist())
    # FGSM vs the reference, at every eps (free: both ran on every clean-correct point)
    out["fgsm_pgd"] = [
        {"eps": e, "label": "fgsm", **paired(suite.correct[(label, e)], suite.correct[("fgsm", e)])}
        for e in eps_list
        if ("fgsm", e) in suite.correct
    ]
    out["margin"] = _margin_checks(model, x, y, cfg, suite, ref, eps_list, accs, cost)
    if accs[eps] < INFORMATIVE_MIN_ACC:
        out["not_tested"] = (
            f"{label} accuracy is below {INFORMATIVE_MIN_ACC:g} at every eps (closest to 0.5: {accs[eps]:.3f} "
            f"at eps {eps:g}): a stronger, transferred or gradient-free attack has nothing left to break"
        )
    else:
        out.update(_stronger_attacks(model, x, y, cfg, suite, ref, eps, pts, cost))
    cost.seconds = time.perf_counter() - t0
    out["cost"] = cost.as_dict()
    return out


def _margin_checks(model, x, y, cfg: TrialConfig, suite, ref: AttackSpec, eps_list, accs, cost: Cost) -> list:
    """The CW margin loss at the reference's steps, restarts and step size, at every eps, paired with
    the reference (reused from ``cfg.attacks`` when it has that twin); not run where the reference is
    below 5 %."""
    label = ref.label()
    twin = next(
        (
            s
            for s in cfg.attacks
            if s.name == "cw"
            and (s.steps, s.restarts, s.step_size) == (ref.steps, ref.restarts, ref.step_size)
        ),
        None,
    )
    cw = twin or AttackSpec("cw", ref.steps, ref.step_size, ref.restarts, ref.random_start)
    margin = []
    for e in eps_list:
        if accs[e] < INFORMATIVE_MIN_ACC:
            why = f"{label} accuracy {accs[e]:.3f} < {INFORMATIVE_MIN_ACC:g}"
            margin.append({"eps": e, "label": cw.label(), "not_tested": why})
            continue
        m = suite.correct.get((cw.label(), e)) if twin is not None else None
        reused = m is not None
        if m is None:
            m = _attack_mask(model, x, y, cw, e, suite.clean_correct, cfg.eval_batch_size, cost)
        margin.append(
            {"eps": e, "label": cw.label(), "reused": reused, **paired(suite.correct[(label, e)], m)}
        )
    return margin


def _stronger_attacks(
    model, x, y, cfg: TrialConfig, suite, ref: AttackSpec, eps: float, pts, cost: Cost
) -> dict:
    """At the probe eps: CE-PGD with 4x the steps and 4x the restarts (on every point, or on
    ``probe_points`` of them) and Square on the AutoAttack points (those of them within
    ``probe_points``), each paired with the reference."""
    n, clean = len(y), suite.clean_correct
    wb = suite.correct[(ref.label(), eps)]
    strong = AttackSpec(
        "pgd",
        ref.steps * PROBE_STEPS_FACTOR,
        ref.step_size,
        ref.restarts * PROBE_RESTARTS_FACTOR,
        ref.random_start,
    )
    sub = torch.zeros(n, dtype=torch.bool, device=y.device)
    sub[autoattack_points(y, cfg, cfg.probe_points)] = True  # every point unless probe_points
    sm = _attack_mask(model, x, y, strong, eps, clean & sub, cfg.eval_batch_size, cost)
    on = torch.zeros(n, dtype=torch.bool, device=y.device)
    on[pts] = True
    on &= sub  # Square on the AutoAttack points, within probe_points (nested stratified subsets)
    square = AttackSpec("square", PROBE_SQUARE_QUERIES)
    sq = _attack_mask(model, x, y, square, eps, clean & on, cfg.eval_batch_size, cost)
    return {
        "strong": {
            "label": strong.label(),
            "steps": strong.steps,
            "restarts": strong.restarts,
            **paired(wb[sub], sm[sub]),
        },
        "square": {
            "label": f"square{PROBE_SQUARE_QUERIES}",
            "queries": PROBE_SQUARE_QUERIES,
            **paired(wb[on], sq[on]),
        },
    }


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
                "forward": evaluation.get("eval_cost", {}).get("forward", 0),
                "backward": evaluation.get("eval_cost", {}).get("backward", 0),
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
