"""The gradient-masking checks, one function per check (after AutoAttack's ``checks.py``), each
ending in a :class:`Check`: ``flagged``, ``passed`` or ``not tested`` with the reason. The list of
checks and their rules is in :mod:`uncertainty_robust.audit` and ``docs/audit.md``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from ..attacks import ATTACKS, LINF
from ..defenses import DEFENSES, undefended
from ..stats import holm, mcnemar_greater


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


REUSE_WHY = (
    "the evaluation reuses broken points across eps (evaluation.reuse_eps: true), so every curve is "
    "monotone by construction; set reuse_eps: false to test"
)


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
    rej = [p <= rules.alpha for p in holm(ps)]
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
    if norm == LINF:
        cfg_val = (record.get("config") or {}).get("audit_large_eps")
        return rules.large_eps if rules.large_eps is not None else (cfg_val if cfg_val is not None else 0.5)
    try:
        from ..data import dataset_info

        info = dataset_info(record["dataset"])
        return 0.5 * math.sqrt(info.channels * info.size * info.size)
    except (KeyError, ValueError):
        return None


def record_curves(record: dict) -> dict:
    """{(label, name, norm): [(eps, acc, n), ...] sorted by eps}; the worst case is ("worst", "worst", LINF)."""
    out: dict = {}
    for a in record.get("attacks", []):
        out.setdefault((a["label"], a["attack"], a["norm"]), []).append((a["eps"], a["acc"], a["n_points"]))
    for w in record.get("worst_case", []):
        ours = w.get("ours") or w  # our own worst case: on every point, the same attacks at every eps
        out.setdefault(("worst", "worst", LINF), []).append((w["eps"], ours["acc"], ours["n_points"]))
    return {k: sorted(v) for k, v in out.items()}


def curve_checks(record: dict, rules: AuditRules) -> list:
    mono, large = [], []
    large_skips = []
    for (label, name, norm), pts in record_curves(record).items():
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
    if (record.get("config") or {}).get("reuse_eps"):
        # every curve is monotone by construction: a point broken at a smaller eps counts as broken
        out = [Check("non_monotone", "not tested", REUSE_WHY)]
    else:
        out = [Check("non_monotone", "flagged", d) for d in mono] or [Check("non_monotone", "passed")]
    if large:
        out += [Check("large_eps_not_zero", "flagged", d) for d in large]
    elif large_skips and len(large_skips) == len([k for k in record_curves(record) if not _single(k[1])]):
        out.append(Check("large_eps_not_zero", "not tested", "; ".join(large_skips)))
    else:
        out.append(Check("large_eps_not_zero", "passed", "; ".join(f"not reached: {s}" for s in large_skips)))
    return out


def _single(name: str) -> bool:
    return name in ATTACKS and ATTACKS[name].single_step


def _probe(record: dict) -> dict:
    return record.get("masking_probe") or {}


def _whitebox_label(probe: dict) -> str:
    return (probe.get("whitebox") or {}).get("label", "the white-box reference")


def fgsm_beats_pgd(record: dict, rules: AuditRules) -> Check:
    probe = _probe(record)
    comps = [(c["eps"], c["label"], c) for c in probe.get("fgsm_pgd", [])]
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


def fgsm_gap(record: dict, standard: Optional[dict], rules: AuditRules) -> Check:
    cfg = record.get("config") or {}
    if cfg.get("defense") == undefended():
        return Check("fgsm_gap", "not tested", "the standard model is the reference of this check")
    if standard is None:
        return Check(
            "fgsm_gap", "not tested", "no finished standard trial of this dataset/model to compare with"
        )
    mine = {round(c["eps"], 9): c for c in _probe(record).get("fgsm_pgd", [])}
    ref = {round(c["eps"], 9): c for c in _probe(standard).get("fgsm_pgd", [])}
    common = sorted(set(mine) & set(ref))
    beyond = ""
    d = DEFENSES.get(cfg.get("defense"))
    if d is not None and d.adversarial and cfg.get("eps"):
        # beyond its training eps an adversarially trained model's FGSM accuracy overstates it while
        # PGD's falls to the standard model's: the expected linear-region effect, not masking
        # (seen on every AT model of the Fashion-MNIST reproduction at 3x its training eps)
        train_eps = float(cfg["eps"])
        over = [e for e in common if e > train_eps + 1e-9]
        common = [e for e in common if e <= train_eps + 1e-9]
        if over:
            beyond = (
                f"; not tested above the training eps {train_eps:g} ({', '.join(f'{e:g}' for e in over)})"
            )
    if not common:
        return Check(
            "fgsm_gap",
            "not tested",
            "no eps with FGSM and PGD in both this record and the standard one" + beyond,
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
        return Check("fgsm_gap", "flagged", worst[1] + beyond)
    return Check(
        "fgsm_gap",
        "passed",
        f"vs {standard.get('name', 'the standard model')} at eps {', '.join(f'{e:g}' for e in common)}"
        + beyond,
    )


def _probe_attack_check(name: str, key: str, tol: float, record: dict, rules: AuditRules) -> Check:
    """The probe's attack ``key`` against the white-box reference, paired per point, at the probe's
    eps and at every ``probe_eps`` where it ran (``extra``)."""
    probe = _probe(record)
    s = probe.get(key)
    if s is None:
        return Check(name, "not tested", probe.get("not_tested", "no masking_probe in the record"))
    comps = [(probe["eps"], s["label"], s)] + [
        (x["eps"], x[key]["label"], x[key]) for x in probe.get("extra", [])
    ]
    return _paired_check(name, comps, _whitebox_label(probe), tol, rules)


def more_steps_help(record: dict, rules: AuditRules) -> Check:
    return _probe_attack_check("more_steps_help", "strong", rules.more_steps_tol, record, rules)


def margin_beats_ce(record: dict, rules: AuditRules) -> Check:
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


def square_beats_pgd(record: dict, rules: AuditRules) -> Check:
    return _probe_attack_check("square_beats_pgd", "square", rules.square_tol, record, rules)


def transfer_beats_whitebox(record: dict, rules: AuditRules) -> Check:
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


def zero_gradients(record: dict, rules: AuditRules) -> Check:
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


def autoattack_checks(record: dict) -> list:
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
