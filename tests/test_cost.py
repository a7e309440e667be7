"""The dry run's cost estimate (``sweeps/cost.py``) against hand counts."""

from __future__ import annotations

from sweeps.cost import breakdown
from uncertainty_robust.attacks import AttackSpec
from uncertainty_robust.config import TrialConfig, validate


def test_breakdown_counts_training_and_autoattack_by_hand():
    cfg = validate(
        TrialConfig(
            defense="at",
            eps=0.3,
            pgd_steps=5,
            epochs=2,
            n_train=1000,
            val_points=100,
            val_pgd_steps=3,
            n_eval=50,
            test_eps=[0.0, 0.1],
            attacks=[AttackSpec("pgd", 10)],
            jacobian_points=0,
            autoattack=[AttackSpec.parse("autoattack")],
            autoattack_points=20,
        )
    )
    b = breakdown(cfg)
    assert b["train"] == 2 * 1000 * (1 + 5)
    assert b["validation"] == 2 * (100 * (1 + 3) + 100 * 2 * 1)
    # AutoAttack at eps 0.3 (training eps = MNIST's conventional eps): APGD-CE 100 + APGD-T 100 x 9
    # targets + FAB-T 100 x 9 + Square 5000 queries / 3, on 20 points
    assert cfg.aa_eps() == [0.3]
    assert b["autoattack"] == 20 * (100 + 900 + 900 + 5000 / 3)
    # our attacks also run at the AutoAttack eps (AutoAttack starts from their survivors)
    # our attack at eps 0.1 and 0.3; the probe: PGD-10 x 4 steps x 4 restarts on the 50 points and
    # Square-1000 (a third of a pass per query) on the 20 AutoAttack points
    assert b["evaluation"] == 50 * 10 * 2 + 50 * 10 * 16 + 20 * 1000 / 3
    none = validate(TrialConfig(**{**cfg.to_dict(), "autoattack": []}))
    assert breakdown(none)["autoattack"] == 0
