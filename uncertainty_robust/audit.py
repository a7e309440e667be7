"""Gradient-masking audit: one result record -> a list of red flags, plus the transfer attack
from the sweep's standard-training model that one of the checks needs.

Why: uncertainty-promoting training (LS, EntM) flattens or saturates the softmax, which is the
textbook way to make gradient attacks fail without making a model robust (Athalye, Carlini &
Wagner 2018; Fu et al. 2020 show LS's PGD accuracy collapsing under transfer attacks). A number in
a table is only worth reporting when none of these warning signs is present (see
shared/notes/peers.md §C2). Every check reads measured numbers from the record; nothing here runs
an attack except :func:`transfer_attack`.

Checks (flag name: rule). ``tol(p, n) = abs_tol + z * sqrt(p (1 - p) / n)``: a fixed margin plus
``z`` binomial standard errors of an accuracy ``p`` measured on ``n`` points.

- ``non_monotone``: for every iterative attack and the worst case, accuracy at a larger eps exceeds
  the lowest accuracy at any smaller eps by more than tol. FGSM is exempt: a single linear step is
  known to weaken at large eps on robust models without any masking (its check is the next one).
- ``large_eps_not_zero``: the curve reaches a *large* eps and accuracy there is above
  ``large_eps_max_acc`` (0.05). Rule for "large": L-inf eps >= 0.5 (or ``AuditRules.large_eps``,
  or the record's ``config["audit_large_eps"]``); L2 eps >= 0.5 * sqrt(C*H*W). At that size every
  [0,1] input can be moved onto the constant-0.5 image, so no classifier is robust on more than the
  share of one class (about 1/K); an attack that works drives accuracy to about 0. Below that size
  the check is skipped and the skip is reported.
- ``fgsm_beats_pgd``: FGSM accuracy below PGD accuracy - tol at some eps (single step beats
  iterative: the loss surface is not what the gradient says).
- ``more_steps_help``: ``masking_probe``: PGD with 5x the steps and 5 restarts lowers accuracy by
  more than tol (abs_tol 0.03): the evaluation attack had not converged.
- ``transfer_beats_whitebox``: PGD crafted on the standard model of the same dataset/model (same
  seed when available) and transferred is stronger than white-box PGD by more than tol.
- ``zero_gradients``: more than 10 % of the probe points have an exactly zero input gradient of the
  CE loss (AutoAttack's zero-gradient check).
- ``margin_beats_ce``: the margin-loss attack (CW) beats CE-loss PGD by more than tol (abs_tol
  0.05): a saturated softmax hides the CE gradient but not the margin one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from .attacks import ATTACKS

FLAG_NAMES = (
    "non_monotone",
    "large_eps_not_zero",
    "fgsm_beats_pgd",
    "more_steps_help",
    "transfer_beats_whitebox",
    "zero_gradients",
    "margin_beats_ce",
)


@dataclass(frozen=True)
class Flag:
    name: str
    detail: str  # one line, with the numbers and the threshold that fired

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


@dataclass
class AuditRules:
    z: float = 2.0  # binomial standard errors added to every tolerance
    abs_tol: float = 0.01  # non_monotone, fgsm_beats_pgd, transfer_beats_whitebox
    large_eps: Optional[float] = None  # L-inf; None -> record's config["audit_large_eps"] or 0.5
    large_eps_max_acc: float = 0.05
    more_steps_tol: float = 0.03
    zero_grad_frac: float = 0.10
    margin_tol: float = 0.05

    def tol(self, p: float, n: int, abs_tol: Optional[float] = None) -> float:
        p = min(max(p, 0.0), 1.0)
        return (self.abs_tol if abs_tol is None else abs_tol) + self.z * math.sqrt(p * (1 - p) / max(n, 1))


def large_eps(record: dict, norm: str, rules: AuditRules) -> Optional[float]:
    """The eps from which an attack must drive accuracy to about 0 (see the module docstring)."""
    if norm == "Linf":
        cfg_val = (record.get("config") or {}).get("audit_large_eps")
        return rules.large_eps if rules.large_eps is not None else (cfg_val if cfg_val is not None else 0.5)
    try:
        from .data import dataset_info

        info = dataset_info(record["dataset"])
        return 0.5 * math.sqrt(info.channels * info.size * info.size)
    except (KeyError, ValueError):
        return None


def curves(record: dict) -> dict:
    """{(label, name, norm): [(eps, acc, n), ...] sorted by eps}; the worst case is ("worst", "worst", "Linf")."""
    out: dict = {}
    for a in record.get("attacks", []):
        out.setdefault((a["label"], a["attack"], a["norm"]), []).append((a["eps"], a["acc"], a["n_points"]))
    for w in record.get("worst_case", []):
        out.setdefault(("worst", "worst", "Linf"), []).append((w["eps"], w["acc"], w["n_points"]))
    return {k: sorted(v) for k, v in out.items()}


def _acc_at(cv: dict, name: str, eps: float) -> Optional[tuple]:
    for (label, nm, norm), pts in cv.items():
        if nm == name and norm == "Linf":
            for e, acc, n in pts:
                if math.isclose(e, eps, abs_tol=1e-9):
                    return label, acc, n
    return None


def audit(record: dict, rules: Optional[AuditRules] = None, skipped: Optional[list] = None) -> list:
    """Flags for one record (``result.json`` content, or an ``evaluate`` dict with ``dataset`` and
    ``config`` added). ``skipped`` (a list) receives one line per check that could not run."""
    rules = rules or AuditRules()
    skipped = skipped if skipped is not None else []
    flags: list = []
    cv = curves(record)
    for (label, name, norm), pts in cv.items():
        if name in ATTACKS and ATTACKS[name].single_step:
            continue
        lo_eps, lo_acc = pts[0][0], pts[0][1]
        for eps, acc, n in pts[1:]:
            t = rules.tol(lo_acc, n)
            if acc > lo_acc + t:
                flags.append(
                    Flag(
                        "non_monotone",
                        f"{label}: accuracy {acc:.3f} at eps {eps:g} > {lo_acc:.3f} at eps "
                        f"{lo_eps:g} (+{acc - lo_acc:.3f}, tolerance {t:.3f})",
                    )
                )
                break
            if acc < lo_acc:
                lo_eps, lo_acc = eps, acc
        big = large_eps(record, norm, rules)
        eps, acc, _ = pts[-1]
        if big is None or eps < big - 1e-12:
            skipped.append(
                f"large_eps_not_zero({label}): largest eps {eps:g} < large eps {big if big is None else f'{big:g}'}"
            )
        elif acc > rules.large_eps_max_acc:
            flags.append(
                Flag(
                    "large_eps_not_zero",
                    f"{label}: accuracy {acc:.3f} at eps {eps:g} > {rules.large_eps_max_acc:g} "
                    f"(eps >= {big:g} reaches the constant image from any input)",
                )
            )
    for name, other, flag, abs_tol in (
        ("fgsm", "pgd", "fgsm_beats_pgd", rules.abs_tol),
        ("cw", "pgd", "margin_beats_ce", rules.margin_tol),
    ):
        worst = None
        for (label, nm, norm), pts in cv.items():
            if nm != name or norm != "Linf":
                continue
            for eps, acc, n in pts:
                ref = _acc_at(cv, other, eps) if eps > 0 else None
                if ref is None:
                    continue
                gap, t = ref[1] - acc, rules.tol(ref[1], n, abs_tol)
                if gap > t and (worst is None or gap - t > worst[0]):
                    worst = (
                        gap - t,
                        f"{label} {acc:.3f} < {ref[0]} {ref[1]:.3f} at eps {eps:g} (gap {gap:.3f}, tolerance {t:.3f})",
                    )
        if worst:
            flags.append(Flag(flag, worst[1]))
    probe = record.get("masking_probe")
    if probe:
        drop, t = (
            probe["pgd"] - probe["pgd_strong"],
            rules.tol(probe["pgd"], probe["n_points"], rules.more_steps_tol),
        )
        if drop > t:
            flags.append(
                Flag(
                    "more_steps_help",
                    f"PGD-{probe['steps']} {probe['pgd']:.3f} -> PGD-{probe['strong_steps']}"
                    f"x{probe['strong_restarts']} {probe['pgd_strong']:.3f} at eps {probe['eps']:g} "
                    f"(drop {drop:.3f} > {t:.3f})",
                )
            )
        if probe.get("zero_grad_frac", 0.0) > rules.zero_grad_frac:
            flags.append(
                Flag(
                    "zero_gradients",
                    f"{probe['zero_grad_frac']:.2f} of {probe['n_points']} points have a zero "
                    f"input gradient (> {rules.zero_grad_frac:g})",
                )
            )
    else:
        skipped.append("more_steps_help/zero_gradients: no masking_probe in the record")
    tr = record.get("transfer")
    if tr and tr.get("whitebox_acc") is not None:
        t = rules.tol(tr["whitebox_acc"], tr["n_points"])
        if tr["acc"] < tr["whitebox_acc"] - t:
            flags.append(
                Flag(
                    "transfer_beats_whitebox",
                    f"PGD-{tr['steps']} from {tr['source_trial']} {tr['acc']:.3f} < "
                    f"white-box {tr['whitebox_label']} {tr['whitebox_acc']:.3f} at eps "
                    f"{tr['eps']:g} (tolerance {t:.3f})",
                )
            )
    else:
        skipped.append(
            "transfer_beats_whitebox: no transfer result (a standard trial itself, no finished standard model of "
            "this dataset/model, or --no-transfer)"
        )
    return flags


# ------------------------------------------------------------------ transfer from the standard model
def find_transfer_source(target: dict, candidates: list) -> Optional[tuple]:
    """The standard-training trial to transfer from: same dataset and model, preferring the same
    seed, then the same width, then the lowest seed. ``candidates``: [(trial_dir, record)]."""
    tc = target.get("config", {})
    pool = [
        (d, r)
        for d, r in candidates
        if r["config"]["defense"] == "standard"
        and r["dataset"] == target.get("dataset")
        and r["model"] == target.get("model")
        and r.get("trial_id") != target.get("trial_id")
    ]
    if not pool:
        return None
    return min(
        pool,
        key=lambda dr: (
            dr[1]["config"]["seed"] != tc.get("seed"),
            dr[1]["config"].get("width") != tc.get("width"),
            dr[1]["config"]["seed"],
            str(dr[0]),
        ),
    )


def whitebox_reference(record: dict, eps: float) -> Optional[dict]:
    """The record's white-box CE-PGD (L-inf) at ``eps``: what a transfer attack must not beat."""
    for a in record.get("attacks", []):
        if a["attack"] == "pgd" and a["norm"] == "Linf" and math.isclose(a["eps"], eps, abs_tol=1e-9):
            return a
    return None


@torch.no_grad()
def _accuracy(model, x, y, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [
            model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]
            for i in range(0, len(x), batch_size)
        ]
    )


def transfer_attack(
    source,
    target,
    x,
    y,
    eps: float,
    steps: int,
    restarts: int = 1,
    step_size: Optional[float] = None,
    batch_size: int = 500,
    x_adv: Optional[torch.Tensor] = None,
    seed: int = 0,
) -> tuple:
    """PGD (CE, L-inf, last iterate, as in Madry et al.'s transfer evaluation) crafted on
    ``source``, evaluated on ``target``. A point counts as robust only if ``target`` classifies it
    correctly both clean and adversarial, as in the white-box suite. Returns (accuracy, x_adv);
    pass ``x_adv`` back to reuse one source's examples for many targets."""
    from .attacks import pgd

    source.eval()
    target.eval()
    if x_adv is None:
        torch.manual_seed(seed)
        with torch.enable_grad():
            x_adv = torch.cat(
                [
                    pgd(
                        source,
                        x[i : i + batch_size],
                        y[i : i + batch_size],
                        eps,
                        steps=steps,
                        step_size=step_size,
                        restarts=restarts,
                        track_best=False,
                    )
                    for i in range(0, len(x), batch_size)
                ]
            )
    ok = _accuracy(target, x, y, batch_size) & _accuracy(target, x_adv, y, batch_size)
    return float(ok.float().mean()), x_adv


def transfer_for_trial(
    target_dir,
    target_record: dict,
    source_dir,
    source_record: dict,
    device=None,
    cache: Optional[dict] = None,
) -> Optional[dict]:
    """Transfer from a finished standard trial to a finished target trial at the record's probe eps,
    with the record's PGD steps, on the record's evaluation points. ``cache`` keeps the source's
    adversarial examples across targets. None when either model.pt or the white-box PGD is missing."""
    from .data import load_tensors
    from .rundir import TrialDir
    from .trial import load_trained

    probe = target_record.get("masking_probe") or {}
    eps = probe.get("eps")
    ref = whitebox_reference(target_record, eps) if eps is not None else None
    if ref is None or not TrialDir(target_dir).model.exists() or not TrialDir(source_dir).model.exists():
        return None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    target, tcfg = load_trained(target_dir, device)
    source, _ = load_trained(source_dir, device)
    key = (str(source_dir), eps, ref["steps"], ref["restarts"], tcfg.dataset, tcfg.n_eval)
    cache = cache if cache is not None else {}
    x, y = load_tensors(tcfg.dataset, "test", tcfg.data_root, n=tcfg.n_eval, seed=0, download=tcfg.download)
    x, y = x.to(device), y.to(device)
    step = ref.get("step_size")
    acc, xa = transfer_attack(
        source,
        target,
        x,
        y,
        eps,
        ref["steps"],
        ref["restarts"],
        step,
        tcfg.eval_batch_size,
        x_adv=cache.get(key),
    )
    cache[key] = xa
    return transfer_result(source_record, eps, ref, acc, len(y))


def transfer_result(source_record: dict, eps: float, ref: dict, acc: float, n: int) -> dict:
    """The ``record["transfer"]`` entry the audit reads (also written to aggregate/transfer.json)."""
    return {
        "source_trial": source_record.get("name"),
        "source_trial_id": source_record.get("trial_id"),
        "source_seed": source_record["config"]["seed"],
        "eps": eps,
        "steps": ref["steps"],
        "restarts": ref["restarts"],
        "step_size": ref.get("step_size"),
        "n_points": n,
        "acc": acc,
        "whitebox_label": ref["label"],
        "whitebox_acc": ref["acc"],
    }


def transfers_for_run(trials: list, cache: Optional[dict] = None, device=None) -> tuple:
    """Transfer attacks for every non-standard trial of a run (``trials``: [(dir, record)]), from
    :func:`find_transfer_source`. ``cache``: the previous result ({trial dir name: entry}); an entry
    is reused when source, eps, steps and the white-box number still match. Returns (entries by
    trial dir name, {trial dir name: [reason the transfer failed]})."""
    cache, out, errors, adv = cache or {}, {}, {}, {}
    for d, rec in trials:
        name = Path(d).name
        src = find_transfer_source(rec, trials) if rec["config"]["defense"] != "standard" else None
        eps = (rec.get("masking_probe") or {}).get("eps")
        ref = whitebox_reference(rec, eps) if eps is not None else None
        if src is None or ref is None:
            continue
        old = cache.get(name) or {}
        if (old.get("source_trial_id"), old.get("eps"), old.get("steps"), old.get("whitebox_acc")) == (
            src[1].get("trial_id"),
            eps,
            ref["steps"],
            ref["acc"],
        ):
            out[name] = old
            continue
        try:
            res = transfer_for_trial(d, rec, src[0], src[1], device, adv)
        except (
            Exception
        ) as e:  # e.g. the dataset is not on this machine: the audit reports the check as skipped
            errors[name] = [f"transfer_beats_whitebox: transfer attack failed: {type(e).__name__}: {e}"]
            continue
        if res is not None:
            out[name] = res
    return out, errors
