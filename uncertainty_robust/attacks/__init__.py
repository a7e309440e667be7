"""Attacks: one registry (:mod:`.registry`) of :class:`Attack` records with their roles, and one
module per family, each registering its attacks when imported here:

- :mod:`.whitebox`: ours, L-inf and L2, in pixel space: FGSM, PGD, PGD-L2, CW (PGD on the margin loss);
- :mod:`.autoattack`: AutoAttack's attacks through ``pyautoattack`` (the authors' code): APGD-CE,
  APGD-DLR, APGD-T, FAB-T, Square, and the ensembles ``autoattack`` and ``autoattack-rand``.

:mod:`.suite` runs every (attack, eps) on every point (tests, benchmarks, the transfer attack); a
trial's evaluation runs them through the evaluation plan (:mod:`uncertainty_robust.evaluation`).
Every module of this package other than ``registry`` and ``suite`` is imported here (ours first,
then the others in name order), so adding an attack is its module here and its test
(``docs/architecture.md``).
"""

import importlib
import pkgutil

from .registry import (
    ATTACKS,
    L2,
    LINF,
    NORMS,
    QUERIES_PER_PASS,
    Attack,
    AttackSpec,
    Cost,
    black_box_attack,
    default_step_size,
    margin_twin,
    n_target_classes,
    predict,
    reference_attack,
    register_attack,
    run_attack,
    same_setting,
    single_step_checks,
)
from .suite import SuiteResult, run_suite
from .whitebox import LOSSES, ce_loss, cw_linf, fgsm, margin_loss, pgd, pgd_l2, pgd_linf

__all__ = [
    "ATTACKS",
    "L2",
    "LINF",
    "LOSSES",
    "NORMS",
    "QUERIES_PER_PASS",
    "Attack",
    "AttackSpec",
    "Cost",
    "SuiteResult",
    "black_box_attack",
    "ce_loss",
    "cw_linf",
    "default_step_size",
    "fgsm",
    "margin_loss",
    "margin_twin",
    "n_target_classes",
    "pgd",
    "pgd_l2",
    "pgd_linf",
    "predict",
    "reference_attack",
    "register_attack",
    "run_attack",
    "run_suite",
    "same_setting",
    "single_step_checks",
]

# ours (whitebox, imported above) first: the registry's order is the order users see
for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _m not in ("registry", "suite", "whitebox"):
        importlib.import_module(f"{__name__}.{_m}")  # registers the module's attacks
