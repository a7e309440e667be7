"""PGD-DLR (``uncertainty_robust/attacks/dlr.py``): the loss against its formula by hand, its
invariance to the logits' scale and shift (what makes it see through LS/EntM's flat softmax), and
the attack through the registry and the evaluation (the registry-parametrized tests in
``test_attacks.py`` cover its strength with no edit)."""

from __future__ import annotations

import pytest
import torch

from uncertainty_robust.attacks import ATTACKS, AttackSpec
from uncertainty_robust.attacks.dlr import dlr_loss
from uncertainty_robust.config import TrialConfig, validate


def test_dlr_loss_equals_its_formula_and_ignores_scale_and_shift():
    z = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.2, 2.0, 1.0, 0.0]])
    y = torch.tensor([0, 0])
    # row 0: y is the top: -(3 - 1) / (3 - 0.5); row 1: -(0.2 - 2) / (2 - 0.2)
    assert dlr_loss(z, y).tolist() == pytest.approx([-2 / 2.5, 1.8 / 1.8])
    assert torch.allclose(dlr_loss(7.0 * z - 3.0, y), dlr_loss(z, y))
    assert (dlr_loss(z, y) > 0).tolist() == (z.argmax(1) != y).tolist()  # positive <=> misclassified


def test_pgd_dlr_is_a_registered_linf_attack_the_evaluation_runs(std_model):
    a = ATTACKS["pgd_dlr"]
    assert (a.norm, a.loss, a.reference, a.margin_twin_of, a.single_step) == (
        "Linf",
        "dlr",
        False,
        None,
        False,
    )
    spec = AttackSpec.parse("pgd_dlr:5")
    assert spec.label() == "pgd_dlr5" and a.step_size(0.1, 5) == pytest.approx(0.05)
    from uncertainty_robust.evaluation import evaluate

    cfg = validate(
        TrialConfig(
            width=0.5,
            n_eval=30,
            jacobian_points=0,
            test_eps=[0.0, 0.1],
            autoattack=[],
            attacks=[AttackSpec("pgd", 5), spec],
        )  # fmt: skip
    )
    rec = evaluate(std_model, cfg)
    row = next(r for r in rec["attacks"] if r["label"] == "pgd_dlr5" and r["eps"] == 0.1)
    assert row["loss"] == "dlr" and row["acc"] < rec["clean_acc"] and row["backward"] > 0
    assert "pgd_dlr5" in next(w for w in rec["worst_case"] if w["eps"] == 0.1)["attacks"]
