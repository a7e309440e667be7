"""Gradient-masking audit: one result record -> a list of red flags, plus the transfer attack from
other trials of the sweep that one of the checks needs. Every flag is documented in ``docs/audit.md``.

Why: uncertainty-promoting training (LS, EntM) flattens or saturates the softmax, which is the
textbook way to make gradient attacks fail without making a model robust (Athalye, Carlini &
Wagner 2018; Carlini et al. 2019's checklist; Fu et al. 2020 show LS's PGD accuracy collapsing
under transfer attacks). A number in a table is only worth reporting when none of these warning
signs is present. Every check reads measured numbers from the record (the evaluation's
``masking_probe`` and ``autoattack`` sections, see :mod:`uncertainty_robust.evaluation.probe`);
nothing here runs an attack except :func:`transfer_attack` (:mod:`.transfer`). The checks are
one function each in :mod:`.rules`.

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
  standard model is below ``fgsm_gap_tol`` (the LS/EntM signature of the evaluation review). For an
  adversarially trained model only the eps up to its training eps are tested: beyond it FGSM
  overstates any AT model while PGD falls to the standard model's level (the linear-region effect,
  not masking; it flagged every genuine AT model of the Fashion-MNIST reproduction at 3x its
  training eps); the detail names the eps left out.
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

from typing import Optional

from ..stats import holm, mcnemar_greater
from .rules import (
    AuditRules,
    Check,
    Flag,
    autoattack_checks,
    curve_checks,
    fgsm_beats_pgd,
    fgsm_gap,
    large_eps,
    margin_beats_ce,
    more_steps_help,
    record_curves,
    square_beats_pgd,
    transfer_beats_whitebox,
    zero_gradients,
)
from .transfer import (
    find_standard,
    find_transfer_sources,
    transfer_attack,
    transfer_for_trial,
    transfer_result,
    transfers_for_run,
    whitebox_reference,
)

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


def checks(record: dict, rules: Optional[AuditRules] = None, standard: Optional[dict] = None) -> list:
    """Every check's outcome (:class:`Check`) for one record (``result.json`` content, or an
    ``evaluate`` dict with ``dataset`` and ``config`` added). ``standard``: the record of a standard
    trial of the same dataset/model (for ``fgsm_gap``)."""
    rules = rules or AuditRules()
    out = curve_checks(record, rules)
    out += [
        fgsm_beats_pgd(record, rules),
        fgsm_gap(record, standard, rules),
        more_steps_help(record, rules),
        margin_beats_ce(record, rules),
        square_beats_pgd(record, rules),
        transfer_beats_whitebox(record, rules),
        zero_gradients(record, rules),
    ]
    return out + autoattack_checks(record)


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


__all__ = [
    "AUTOATTACK_CHECKS",
    "FLAG_NAMES",
    "AuditRules",
    "Check",
    "Flag",
    "audit",
    "checks",
    "find_standard",
    "find_transfer_sources",
    "holm",
    "large_eps",
    "mcnemar_greater",
    "record_curves",
    "transfer_attack",
    "transfer_for_trial",
    "transfer_result",
    "transfers_for_run",
    "whitebox_reference",
]
