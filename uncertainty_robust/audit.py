"""Gradient-masking audit: one result record -> a list of red flags, plus the transfer attack from
other trials of the sweep that one of the checks needs. Every flag is documented in ``docs/audit.md``.

Why: uncertainty-promoting training (LS, EntM) flattens or saturates the softmax, which is the
textbook way to make gradient attacks fail without making a model robust (Athalye, Carlini &
Wagner 2018; Carlini et al. 2019's checklist; Fu et al. 2020 show LS's PGD accuracy collapsing
under transfer attacks). A number in a table is only worth reporting when none of these warning
signs is present. Every check reads measured numbers from the record (the evaluation's
``masking_probe`` and ``autoattack`` sections, see :func:`uncertainty_robust.evaluate.masking_probe`);
nothing here runs an attack except :func:`transfer_attack`.

Each check ends in one of three states (:class:`Check`): ``flagged``, ``passed``, or ``not tested``
with the reason (e.g. the white-box accuracy is below 5 % at every eps, so no stronger attack can
show a gap). A check that could not fire is never reported as passed.

Comparisons of two attacks on the same points are paired: the exact McNemar test (a one-sided
binomial test on the discordant points, ``scipy.stats.binomtest``), with Holm's correction over the
eps values a check looks at; a flag needs both the correction-adjusted significance (``alpha``) and
an effect above the check's absolute tolerance.

Checks (flag: rule; tolerances are :class:`AuditRules` fields):

- ``non_monotone``: an iterative attack's (or the worst case's) accuracy at a larger eps exceeds the
  lowest accuracy at a smaller eps by more than ``abs_tol + z * SE``. FGSM is exempt.
- ``large_eps_not_zero``: at a *large* eps (L-inf >= 0.5, or ``large_eps`` / the record's
  ``config["audit_large_eps"]``; L2 >= 0.5 * sqrt(C*H*W)) accuracy is above ``large_eps_max_acc``
  (0.05): from there every [0,1] input can be moved onto the constant-0.5 image, so at most one
  class's share of points (about 1/K) can be robust, and a working attack finds about 0.
- ``fgsm_beats_pgd``: FGSM breaks significantly more points than the strongest CE-PGD, by more than
  ``fgsm_tol`` (0.01), at some eps (Holm over eps).
- ``fgsm_gap``: FGSM shows a robustness gain over the standard model of the same dataset/model that
  the strongest CE-PGD does not show: (FGSM - PGD accuracy) exceeds the standard model's by more
  than ``fgsm_gap_tol`` (0.10) at the Bonferroni-corrected level, while PGD's gain over the
  standard model is below ``fgsm_gap_tol`` (the LS/EntM signature of the evaluation review; an
  adversarially trained model's large FGSM gap beyond its training eps comes with a real PGD
  gain and is not flagged).
- ``more_steps_help``: at the probe eps (white-box accuracy closest to 50 %), CE-PGD with 4x the
  steps and 4x the restarts breaks significantly more points than the reference, by more than
  ``more_steps_tol`` (0.03): the evaluation attack had not converged.
- ``margin_beats_ce``: the margin loss (CW) with the same steps and restarts as the strongest
  CE-PGD breaks significantly more points, by more than ``margin_tol`` (0.03), at some eps
  (Holm over eps): a saturated or flat softmax hides the CE gradient but not the margin one.
- ``square_beats_pgd``: at the probe eps, Square (gradient-free, 1000 queries) breaks significantly
  more points than the white-box CE-PGD, by more than ``square_tol`` (0.03).
- ``transfer_beats_whitebox``: at the probe eps, PGD crafted on other models (another seed of the
  same defense, the defense's baseline, the standard model; per-example minimum) and transferred
  breaks significantly more points than white-box PGD, by more than ``transfer_tol`` (0.03).
- ``zero_gradients``: more than ``zero_grad_frac`` (10 %) of the evaluation points have an
  exactly zero input gradient of the CE loss.
- ``autoattack_*``: pyautoattack's own sanity checks (``pyautoattack.checks``) raised a warning
  during the AutoAttack evaluation: ``autoattack_randomized``, ``autoattack_softmax_output``,
  ``autoattack_dynamic``, ``autoattack_n_classes``, ``autoattack_zero_gradients``,
  ``autoattack_square``.
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
    "fgsm_gap",
    "more_steps_help",
    "margin_beats_ce",
    "square_beats_pgd",
    "transfer_beats_whitebox",
    "zero_gradients",
    "autoattack_randomized",
    "autoattack_softmax_output",
    "autoattack_dynamic",
    "autoattack_n_classes",
    "autoattack_zero_gradients",
    "autoattack_square",
)
AUTOATTACK_CHECKS = tuple(f for f in FLAG_NAMES if f.startswith("autoattack_"))


@dataclass(frozen=True)
class Flag:
    name: str
    detail: str  # one line, with the numbers and the threshold that fired

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


@dataclass(frozen=True)
class Check:
    """The outcome of one check: ``status`` is "flagged", "passed" or "not tested" (with the reason
    in ``detail``)."""

    name: str
    status: str
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.name}: {self.status}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class AuditRules:
    z: float = 2.0  # binomial standard errors added to the unpaired tolerances (non_monotone)
    abs_tol: float = 0.01  # non_monotone
    alpha: float = 0.05  # family-wise level of every paired test (Holm / Bonferroni over eps)
    large_eps: Optional[float] = None  # L-inf; None -> record's config["audit_large_eps"] or 0.5
    large_eps_max_acc: float = 0.05
    fgsm_tol: float = 0.01
    fgsm_gap_tol: float = 0.10
    more_steps_tol: float = 0.03
    margin_tol: float = 0.03
    square_tol: float = 0.03
    transfer_tol: float = 0.03
    zero_grad_frac: float = 0.10

    def tol(self, p: float, n: int, abs_tol: Optional[float] = None) -> float:
        p = min(max(p, 0.0), 1.0)
        return (self.abs_tol if abs_tol is None else abs_tol) + self.z * math.sqrt(p * (1 - p) / max(n, 1))


# ------------------------------------------------------------------------------ statistics
def mcnemar_greater(only_other: int, only_ref: int) -> float:
    """One-sided exact McNemar p-value that the second attack breaks more points than the first:
    P(X >= only_other), X ~ Binomial(only_other + only_ref, 1/2). 1.0 with no discordant point."""
    n = only_other + only_ref
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(only_other, n, 0.5, alternative="greater").pvalue)


def holm(pvalues: list, alpha: float) -> list:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level ``alpha``."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    reject = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        reject[i] = True
    return reject


def _paired_detail(label: str, ref_label: str, c: dict, eps: float, p: float, tol: float, m: int = 1) -> str:
    corr = f", Holm over {m} eps" if m > 1 else ""
    return (
        f"{label} {c['acc']:.3f} < {ref_label} {c['ref_acc']:.3f} at eps {eps:g} on the same {c['n_points']} "
        f"points (broken only by {label}: {c['only_other']}, only by {ref_label}: {c['only_ref']}; "
        f"McNemar p={p:.2g}{corr}; tolerance {tol:g})"
    )


def _paired_check(name: str, comparisons: list, ref_label: str, tol: float, rules: AuditRules) -> Check:
    """``comparisons``: [(eps, label, paired counts)]: flagged when some eps is rejected by Holm
    and its accuracy drop exceeds ``tol``."""
    if not comparisons:
        return Check(name, "not tested", "no comparison available")
    ps = [mcnemar_greater(c["only_other"], c["only_ref"]) for _, _, c in comparisons]
    rej = holm(ps, rules.alpha)
    hits = [
        (c["ref_acc"] - c["acc"], i)
        for i, (_, _, c) in enumerate(comparisons)
        if rej[i] and c["ref_acc"] - c["acc"] > tol
    ]
    if hits:
        _, i = max(hits)
        eps, label, c = comparisons[i]
        return Check(name, "flagged", _paired_detail(label, ref_label, c, eps, ps[i], tol, len(comparisons)))
    epss = ", ".join(f"{e:g}" for e, _, _ in comparisons)
    return Check(name, "passed", f"no significant gap > {tol:g} at eps {epss}")


# ------------------------------------------------------------------------------ the checks
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
        ours = w.get("ours") or w  # our own worst case: on every point, the same attacks at every eps
        out.setdefault(("worst", "worst", "Linf"), []).append((w["eps"], ours["acc"], ours["n_points"]))
    return {k: sorted(v) for k, v in out.items()}


def _curve_checks(record: dict, rules: AuditRules) -> list:
    mono, large = [], []
    large_skips = []
    for (label, name, norm), pts in curves(record).items():
        if name in ATTACKS and ATTACKS[name].single_step:
            continue
        lo_eps, lo_acc = pts[0][0], pts[0][1]
        for eps, acc, n in pts[1:]:
            t = rules.tol(lo_acc, n)
            if acc > lo_acc + t:
                mono.append(
                    f"{label}: accuracy {acc:.3f} at eps {eps:g} > {lo_acc:.3f} at eps "
                    f"{lo_eps:g} (+{acc - lo_acc:.3f}, tolerance {t:.3f})"
                )
                break
            if acc < lo_acc:
                lo_eps, lo_acc = eps, acc
        big = large_eps(record, norm, rules)
        eps, acc, _ = pts[-1]
        if big is None or eps < big - 1e-12:
            large_skips.append(
                f"{label}: largest eps {eps:g} < large eps {'?' if big is None else f'{big:g}'}"
            )
        elif acc > rules.large_eps_max_acc:
            large.append(
                f"{label}: accuracy {acc:.3f} at eps {eps:g} > {rules.large_eps_max_acc:g} "
                f"(eps >= {big:g} reaches the constant image from any input)"
            )
    out = [Check("non_monotone", "flagged", d) for d in mono] or [Check("non_monotone", "passed")]
    if large:
        out += [Check("large_eps_not_zero", "flagged", d) for d in large]
    elif large_skips and len(large_skips) == len([k for k in curves(record) if not _single(k[1])]):
        out.append(Check("large_eps_not_zero", "not tested", "; ".join(large_skips)))
    else:
        out.append(Check("large_eps_not_zero", "passed", "; ".join(f"not reached: {s}" for s in large_skips)))
    return out


def _single(name: str) -> bool:
    return name in ATTACKS and ATTACKS[name].single_step


def _probe(record: dict) -> dict:
    return record.get("masking_probe") or {}


def _whitebox_label(probe: dict) -> str:
    return (probe.get("whitebox") or {}).get("label", "pgd")


def _fgsm_beats_pgd(record: dict, rules: AuditRules) -> Check:
    probe = _probe(record)
    comps = [(c["eps"], "fgsm", c) for c in probe.get("fgsm_pgd", [])]
    if not probe or "whitebox" not in probe:
        return Check(
            "fgsm_beats_pgd", "not tested", probe.get("not_tested", "no masking_probe in the record")
        )
    if not comps:
        return Check("fgsm_beats_pgd", "not tested", "no FGSM in evaluation.attacks")
    return _paired_check("fgsm_beats_pgd", comps, _whitebox_label(probe), rules.fgsm_tol, rules)


def _gap(c: dict) -> tuple:
    """(FGSM - PGD accuracy, its standard error) from paired counts on n points."""
    n = max(1, c["n_points"])
    d = (c["only_ref"] - c["only_other"]) / n
    var = max(0.0, (c["only_ref"] + c["only_other"]) / n - d * d)
    return d, math.sqrt(var / n)


def _fgsm_gap(record: dict, standard: Optional[dict], rules: AuditRules) -> Check:
    if (record.get("config") or {}).get("defense") == "standard":
        return Check("fgsm_gap", "not tested", "the standard model is the reference of this check")
    if standard is None:
        return Check(
            "fgsm_gap", "not tested", "no finished standard trial of this dataset/model to compare with"
        )
    mine = {round(c["eps"], 9): c for c in _probe(record).get("fgsm_pgd", [])}
    ref = {round(c["eps"], 9): c for c in _probe(standard).get("fgsm_pgd", [])}
    common = sorted(set(mine) & set(ref))
    if not common:
        return Check(
            "fgsm_gap", "not tested", "no eps with FGSM and PGD in both this record and the standard one"
        )
    from scipy.stats import norm

    zc = float(norm.ppf(1 - rules.alpha / len(common)))  # Bonferroni over the eps values
    worst = None
    for e in common:
        (g, se), (gs, ses) = _gap(mine[e]), _gap(ref[e])
        pgd_gain = mine[e]["ref_acc"] - ref[e]["ref_acc"]
        excess, se_d = g - gs, math.sqrt(se * se + ses * ses)
        if excess - rules.fgsm_gap_tol > zc * se_d and pgd_gain < rules.fgsm_gap_tol:
            if worst is None or excess > worst[0]:
                worst = (
                    excess,
                    f"at eps {e:g} FGSM - PGD = {mine[e]['acc']:.3f} - {mine[e]['ref_acc']:.3f} = {g:.3f} vs the "
                    f"standard model's {ref[e]['acc']:.3f} - {ref[e]['ref_acc']:.3f} = {gs:.3f} (excess {excess:.3f} > "
                    f"{rules.fgsm_gap_tol:g} + {zc:.2f} SE, Bonferroni over {len(common)} eps), while PGD gains only "
                    f"{pgd_gain:+.3f} over the standard model",
                )
    if worst:
        return Check("fgsm_gap", "flagged", worst[1])
    return Check(
        "fgsm_gap",
        "passed",
        f"vs {standard.get('name', 'the standard model')} at eps {', '.join(f'{e:g}' for e in common)}",
    )


def _more_steps_help(record: dict, rules: AuditRules) -> Check:
    probe = _probe(record)
    s = probe.get("strong")
    if s is None:
        return Check(
            "more_steps_help", "not tested", probe.get("not_tested", "no masking_probe in the record")
        )
    return _paired_check(
        "more_steps_help",
        [(probe["eps"], s["label"], s)],
        _whitebox_label(probe),
        rules.more_steps_tol,
        rules,
    )


def _margin_beats_ce(record: dict, rules: AuditRules) -> Check:
    probe = _probe(record)
    if "margin" not in probe:
        return Check(
            "margin_beats_ce", "not tested", probe.get("not_tested", "no masking_probe in the record")
        )
    comps = [(c["eps"], c["label"], c) for c in probe["margin"] if "not_tested" not in c]
    skipped = [f"eps {c['eps']:g}: {c['not_tested']}" for c in probe["margin"] if "not_tested" in c]
    if not comps:
        return Check("margin_beats_ce", "not tested", "; ".join(skipped) or "no eps")
    ch = _paired_check("margin_beats_ce", comps, _whitebox_label(probe), rules.margin_tol, rules)
    if ch.status == "passed" and skipped:
        return Check(ch.name, ch.status, ch.detail + "; not tested at " + "; ".join(skipped))
    return ch


def _square_beats_pgd(record: dict, rules: AuditRules) -> Check:
    probe = _probe(record)
    s = probe.get("square")
    if s is None:
        return Check(
            "square_beats_pgd", "not tested", probe.get("not_tested", "no masking_probe in the record")
        )
    return _paired_check(
        "square_beats_pgd", [(probe["eps"], s["label"], s)], _whitebox_label(probe), rules.square_tol, rules
    )


def _transfer(record: dict, rules: AuditRules) -> Check:
    tr = record.get("transfer")
    if not tr:
        probe = _probe(record)
        why = probe.get("not_tested") or (
            "no transfer result (a standard trial itself with no other seed, no finished source model of this "
            "dataset/model, or --no-transfer)"
        )
        return Check("transfer_beats_whitebox", "not tested", why)
    if tr.get("not_tested"):
        return Check("transfer_beats_whitebox", "not tested", tr["not_tested"])
    c = {k: tr[k] for k in ("n_points", "acc", "only_other", "only_ref")} | {"ref_acc": tr["whitebox_acc"]}
    srcs = ", ".join(f"{s['trial']} ({s['role']})" for s in tr["sources"])
    ch = _paired_check(
        "transfer_beats_whitebox",
        [(tr["eps"], f"transfer from {srcs}", c)],
        tr["whitebox_label"],
        rules.transfer_tol,
        rules,
    )
    return ch


def _zero_gradients(record: dict, rules: AuditRules) -> Check:
    probe = _probe(record)
    if "zero_grad_frac" not in probe:
        return Check("zero_gradients", "not tested", "no masking_probe in the record")
    f = probe["zero_grad_frac"]
    if f > rules.zero_grad_frac:
        return Check(
            "zero_gradients",
            "flagged",
            f"{f:.2f} of {probe['n_points']} points have a zero input gradient (> {rules.zero_grad_frac:g})",
        )
    return Check("zero_gradients", "passed", f"{f:.2f} of {probe['n_points']} points")


def _autoattack_checks(record: dict) -> list:
    aa = record.get("autoattack")
    if not aa:
        return [
            Check(
                "autoattack_checks",
                "not tested",
                "AutoAttack did not run (evaluation.autoattack or autoattack_eps empty)",
            )
        ]
    by_flag: dict = {}
    for c in aa.get("checks", []):
        by_flag.setdefault(c["flag"], f"{c['where']}: {c['message']}")
    out = [Check(f, "flagged", d) for f, d in sorted(by_flag.items())]
    return out or [
        Check(
            "autoattack_checks", "passed", f"pyautoattack's checks raised nothing on {aa['n_points']} points"
        )
    ]


def checks(record: dict, rules: Optional[AuditRules] = None, standard: Optional[dict] = None) -> list:
    """Every check's outcome (:class:`Check`) for one record (``result.json`` content, or an
    ``evaluate`` dict with ``dataset`` and ``config`` added). ``standard``: the record of a standard
    trial of the same dataset/model (for ``fgsm_gap``)."""
    rules = rules or AuditRules()
    out = _curve_checks(record, rules)
    out += [
        _fgsm_beats_pgd(record, rules),
        _fgsm_gap(record, standard, rules),
        _more_steps_help(record, rules),
        _margin_beats_ce(record, rules),
        _square_beats_pgd(record, rules),
        _transfer(record, rules),
        _zero_gradients(record, rules),
    ]
    return out + _autoattack_checks(record)


def audit(
    record: dict,
    rules: Optional[AuditRules] = None,
    skipped: Optional[list] = None,
    standard: Optional[dict] = None,
) -> list:
    """Flags for one record (see :func:`checks`). ``skipped`` (a list) receives one line
    ``"<check>: not tested: <reason>"`` per check that could not run."""
    skipped = skipped if skipped is not None else []
    flags = []
    for c in checks(record, rules, standard):
        if c.status == "flagged":
            flags.append(Flag(c.name, c.detail))
        elif c.status == "not tested":
            skipped.append(f"{c.name}: not tested: {c.detail}")
    return flags


# ------------------------------------------------------------------ transfer from other trials
def _row(record: dict) -> dict:
    from .config import TrialConfig

    return TrialConfig.from_dict(record["config"], check=False).row_key()


def find_standard(target: dict, candidates: list) -> Optional[tuple]:
    """The standard-training trial of the same dataset and model: same seed, then same width,
    then the lowest seed. ``candidates``: [(trial_dir, record)]."""
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


find_transfer_source = find_standard  # the standard source (kept under its old name)


def find_transfer_sources(target: dict, candidates: list) -> list:
    """[(trial_dir, record, role)]: another seed of the same configuration ("same defense"), the
    defense's baseline (``Defense.baseline``: AT for AT+X, standard for LS/EntM/AT; same train eps
    preferred), and the standard model; each at most once, none the target itself."""
    from .defenses import DEFENSES

    tc = target.get("config", {})
    same = [
        (d, r)
        for d, r in candidates
        if r.get("trial_id") != target.get("trial_id")
        and r["dataset"] == target.get("dataset")
        and r["model"] == target.get("model")
    ]
    out, seen = [], set()

    def add(dr, role):
        if dr is not None and dr[1].get("trial_id") not in seen:
            seen.add(dr[1].get("trial_id"))
            out.append((dr[0], dr[1], role))

    row = _row(target)
    twins = [(d, r) for d, r in same if _row(r) == row and r["config"]["seed"] != tc.get("seed")]
    add(
        min(twins, key=lambda dr: (dr[1]["config"]["seed"], str(dr[0]))) if twins else None,
        "same defense, another seed",
    )
    base = DEFENSES[tc["defense"]].baseline if tc.get("defense") in DEFENSES else None
    if base is not None and base != "standard":
        pool = [(d, r) for d, r in same if r["config"]["defense"] == base]
        if pool:
            add(
                min(
                    pool,
                    key=lambda dr: (
                        dr[1]["config"].get("eps") != tc.get("eps"),
                        dr[1]["config"]["seed"] != tc.get("seed"),
                        dr[1]["config"].get("width") != tc.get("width"),
                        dr[1]["config"]["seed"],
                        str(dr[0]),
                    ),
                ),
                f"baseline ({base})",
            )
    add(find_standard(target, candidates), "standard")
    return out


def whitebox_reference(record: dict, eps: float) -> Optional[dict]:
    """The record's white-box reference (the probe's strongest CE-PGD, else the first L-inf
    CE-PGD) at ``eps``: what a transfer attack must not beat."""
    label = (_probe(record).get("whitebox") or {}).get("label")
    cands = [
        a
        for a in record.get("attacks", [])
        if a["attack"] == "pgd" and a["norm"] == "Linf" and math.isclose(a["eps"], eps, abs_tol=1e-9)
    ]
    return next((a for a in cands if a["label"] == label), cands[0] if cands else None)


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
    """PGD (CE, L-inf, last iterate, as in Madry et al.'s transfer evaluation; with several restarts
    the restart with the highest source loss per example) crafted on ``source``, evaluated on
    ``target``. A point counts as robust only if ``target`` classifies it correctly both clean and
    adversarial, as in the white-box suite. Returns (robust mask (N,), x_adv); pass ``x_adv`` back
    to reuse one source's examples for many targets."""
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
    return ok, x_adv


def transfer_for_trial(
    target_dir,
    target_record: dict,
    sources: list,
    device=None,
    cache: Optional[dict] = None,
) -> Optional[dict]:
    """Transfer from finished trials (``sources``: [(dir, record, role)], e.g. from
    :func:`find_transfer_sources`) to a finished target trial at the record's probe eps, with the
    white-box reference's steps and restarts, on the record's evaluation points; a point counts
    as robust only if it survives every source (per-example minimum). ``cache`` keeps each
    source's adversarial examples across targets. None when the probe, the white-box reference or
    a model.pt is missing; an entry with ``not_tested`` when the white-box accuracy is too low to
    show a gap."""
    from .data import load_tensors
    from .rundir import TrialDir
    from .trial import load_trained

    probe = _probe(target_record)
    eps = probe.get("eps")
    ref = whitebox_reference(target_record, eps) if eps is not None else None
    if ref is None or "whitebox_robust" not in probe or not TrialDir(target_dir).model.exists():
        return None
    if probe.get("not_tested"):
        return {"eps": eps, "not_tested": probe["not_tested"], "sources": []}
    sources = [s for s in sources if TrialDir(s[0]).model.exists()]
    if not sources:
        return None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    target, tcfg = load_trained(target_dir, device)
    cache = cache if cache is not None else {}
    x, y = load_tensors(tcfg.dataset, "test", tcfg.data_root, n=tcfg.n_eval, seed=0, download=tcfg.download)
    x, y = x.to(device), y.to(device)
    robust = torch.ones(len(y), dtype=torch.bool, device=device)
    per_source = []
    for sdir, srec, role in sources:
        source, _ = load_trained(sdir, device)
        key = (str(sdir), eps, ref["steps"], ref["restarts"], tcfg.dataset, tcfg.n_eval)
        ok, xa = transfer_attack(
            source,
            target,
            x,
            y,
            eps,
            ref["steps"],
            ref["restarts"],
            ref.get("step_size"),
            tcfg.eval_batch_size,
            x_adv=cache.get(key),
        )
        cache[key] = xa
        robust &= ok
        per_source.append((srec, role, float(ok.float().mean())))
    wb = torch.zeros(len(y), dtype=torch.bool, device=device)
    if probe["whitebox_robust"]:
        wb[torch.tensor(probe["whitebox_robust"], device=device)] = True
    return transfer_result(per_source, eps, ref, wb, robust)


def transfer_result(
    per_source: list, eps: float, ref: dict, whitebox: torch.Tensor, robust: torch.Tensor
) -> dict:
    """The ``record["transfer"]`` entry the audit reads (also written to aggregate/transfer.json).
    ``per_source``: [(source record, role, its accuracy)]; ``whitebox`` / ``robust``: bool (N,)
    robust masks of the white-box reference and of the transfer (minimum over sources)."""
    return {
        "eps": eps,
        "steps": ref["steps"],
        "restarts": ref["restarts"],
        "step_size": ref.get("step_size"),
        "n_points": len(robust),
        "sources": [
            {
                "trial": r.get("name"),
                "trial_id": r.get("trial_id"),
                "role": role,
                "defense": r["config"]["defense"],
                "seed": r["config"]["seed"],
                "acc": acc,
            }
            for r, role, acc in per_source
        ],
        "acc": float(robust.float().mean()),
        "whitebox_label": ref["label"],
        "whitebox_acc": float(whitebox.float().mean()),
        "only_other": int((whitebox & ~robust).sum()),
        "only_ref": int((~whitebox & robust).sum()),
    }


def transfers_for_run(trials: list, cache: Optional[dict] = None, device=None) -> tuple:
    """Transfer attacks for every trial of a run that has a source (``trials``: [(dir, record)]),
    from :func:`find_transfer_sources`. ``cache``: the previous result ({trial dir name: entry});
    an entry is reused when sources, eps, steps and the white-box number still match. Returns
    (entries by trial dir name, {trial dir name: [reason the transfer failed]})."""
    cache, out, errors, adv = cache or {}, {}, {}, {}
    for d, rec in trials:
        name = Path(d).name
        srcs = find_transfer_sources(rec, trials)
        eps = _probe(rec).get("eps")
        ref = whitebox_reference(rec, eps) if eps is not None else None
        if not srcs or ref is None:
            continue
        old = cache.get(name) or {}
        if (
            [s.get("trial_id") for s in old.get("sources", [])],
            old.get("eps"),
            old.get("steps"),
            old.get("whitebox_acc"),
        ) == ([s[1].get("trial_id") for s in srcs], eps, ref["steps"], _probe(rec).get("whitebox_acc")):
            out[name] = old
            continue
        try:
            res = transfer_for_trial(d, rec, srcs, device, adv)
        except (
            Exception
        ) as e:  # e.g. the dataset is not on this machine: the audit reports the check as not tested
            errors[name] = [
                f"transfer_beats_whitebox: not tested: transfer attack failed: {type(e).__name__}: {e}"
            ]
            continue
        if res is not None:
            out[name] = res
    return out, errors
