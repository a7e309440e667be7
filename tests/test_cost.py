"""The dry run's cost estimate (``sweeps/cost.py``): it sums the trial's evaluation plan, the same
object the evaluation runs, against hand counts."""

from __future__ import annotations

import pytest

from sweeps.cost import breakdown, prior
from uncertainty_robust.attacks import AttackSpec
from uncertainty_robust.config import TrialConfig, validate
from uncertainty_robust.evaluation import AUTOATTACK, OURS, EvalPlan

CFG = dict(
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
    autoattack_eps=[0.3],
)


def test_breakdown_counts_training_and_the_plan_by_hand():
    cfg = validate(TrialConfig(**CFG))
    b = breakdown(cfg, robust=lambda eps, stage: 1.0)  # nothing ever broken: every attack runs in full
    assert b["train"] == 2 * 1000 * (1 + 5)
    assert b["validation"] == 2 * (100 * (1 + 3) + 100 * 2 * 1)
    # AutoAttack at eps 0.3 only (listed): APGD-CE 100 + APGD-T 100 x 9 targets + FAB-T 100 x 9 with
    # one extra forward (a third of a pass) per iteration + Square 5000 queries / 3, on the 20 points;
    # each APGD restart adds its final forward (a third)
    per_point = (100 + 1 / 3) + (900 + 1 / 3) + (900 * 4 / 3 + 1 / 3) + 5000 / 3
    assert b["autoattack"] == pytest.approx(20 * per_point)
    # ours at 0.1 and 0.3 (PGD-10 and its final forward) on the 50 points, the clean pass with its
    # gradient (1 + 1/3), the probe at the eps closest to 50 % robust (all robust here: 0.1): the
    # reference with 4x steps and 4x restarts (and each restart's final forward) on the 50 points and
    # Square-1000 on its survivors among the 20 AutoAttack points (where the probe runs it)
    ours = 2 * 50 * (10 + 1 / 3)
    probe = 50 * (10 * 16 + 4 / 3) + 20 * 1000 / 3
    assert b["evaluation"] == pytest.approx(ours + 50 * (1 + 1 / 3) + probe)
    none = validate(TrialConfig(**{**CFG, "autoattack": []}))
    assert breakdown(none, robust=lambda eps, stage: 1.0)["autoattack"] == 0


def test_survivors_and_reuse_shrink_the_estimate_and_the_default_rule_prices_informative_eps():
    cfg = validate(TrialConfig(**{**CFG, "autoattack_eps": None, "test_eps": [0.0, 0.1, 0.2, 0.3, 0.5]}))
    plan = EvalPlan.of(cfg)

    def shares(eps, stage):  # a model robust at small eps only
        return {0.0: 0.95, 0.1: 0.6, 0.2: 0.3, 0.3: 0.005, 0.5: 0.0}[eps] * (
            0.9 if stage == AUTOATTACK else 1
        )

    got = plan.expected_passes(shares)
    # AutoAttack is priced at 0.1 and 0.2 (informative) and not at 0.3 (0.5 % robust) nor 0.5
    alone = EvalPlan.of(validate(TrialConfig(**{**CFG, "test_eps": [0.0, 0.1, 0.2], "autoattack_eps": None})))
    assert got[AUTOATTACK] == pytest.approx(alone.expected_passes(shares)[AUTOATTACK])
    no_reuse = EvalPlan.of(validate(TrialConfig(**{**cfg.to_dict(), "reuse_eps": False}))).expected_passes(
        shares
    )
    assert got[OURS] < no_reuse[OURS]
    robust = prior(cfg)
    assert robust(0.0, OURS) > robust(0.3, OURS) > robust(0.5, OURS) and robust(0.3, AUTOATTACK) < robust(
        0.3, OURS
    )
    assert breakdown(cfg)["autoattack"] > 0


PILOT_CSV = """trial,defense,lam,eps,seed,clean,worst@0.1,AA@0.1,AA_ran@0.1,worst@0.3,AA@0.3,AA_ran@0.3
at_eps0.3_s0,at,0.0,0.3,0,0.50,0.40,0.30,True,0.10,,False
at_eps0.3_s1,at,0.0,0.3,1,0.70,0.60,0.50,True,0.30,,False
standard_s0,standard,0.0,0.3,0,0.99,0.0,,False,0.0,,False
"""


def test_a_pilot_prices_its_rows_with_the_shares_it_measured(tmp_path):
    """``--dry-run --pilot``: a row the pilot ran is priced with the shares its trials left (mean over
    seeds, interpolated between its eps, ours where AutoAttack did not run), the prior outside them
    and for rows the pilot lacks."""
    from sweeps.cost import estimate, pilot_key, pilot_shares

    (tmp_path / "trials.csv").write_text(PILOT_CSV)
    shares = pilot_shares(tmp_path)
    assert set(shares) == {("at", "-", "0.3"), ("standard", "-", "-")}
    at = validate(TrialConfig(**{**CFG, "autoattack_eps": None, "test_eps": [0.0, 0.1, 0.2, 0.3, 0.5]}))
    robust = shares[pilot_key(at.defense, at.lam, at.eps)](at)
    assert robust(0.0, OURS) == pytest.approx(0.60)  # clean, mean of the 2 seeds
    assert robust(0.1, AUTOATTACK) == pytest.approx(0.40) and robust(0.1, OURS) == pytest.approx(0.50)
    assert robust(0.2, OURS) == pytest.approx((0.50 + 0.20) / 2)  # halfway between 0.1 and 0.3
    assert robust(0.3, AUTOATTACK) == pytest.approx(0.20)  # AutoAttack did not run there: ours
    assert robust(0.5, OURS) == pytest.approx(prior(at)(0.5, OURS))  # beyond the pilot's eps
    # a standard model the pilot saw broken at every eps: no AutoAttack to price (the rule skips 0 %)
    std = validate(TrialConfig(**{**CFG, "defense": "standard", "autoattack_eps": None}))
    assert breakdown(std, shares[("standard", "-", "-")](std))["autoattack"] == 0
    assert breakdown(std)["autoattack"] > 0  # the prior's guess would have priced it
    entm = validate(TrialConfig(**{**CFG, "defense": "entm", "lam": 0.5}))
    est = estimate([std, entm], pilot=shares)
    assert est["priced_by_pilot"] == 1
    assert est["parts"]["autoattack"] == breakdown(entm)["autoattack"]  # entm: the prior's, std: 0
    # an aggregate older than trials.csv: refused in one line (launch.py: exit 2)
    from sweeps.power import PilotError

    with pytest.raises(PilotError, match=r"^--pilot \S+: no trials.csv there"):
        pilot_shares(tmp_path / "old")
