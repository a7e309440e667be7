"""AutoAttack through the project (``uncertainty_robust.attacks.autoattack``, pyautoattack underneath)
on a small CNN trained here on real MNIST digits: a component runs only on the points still robust,
counts its passes, leaves the model and the global RNG as they were; pyautoattack's own sanity
checks become audit flags; the evaluation records AutoAttack on the points our attacks left robust,
within an explicit budget of points and eps."""

from __future__ import annotations

import json

import pytest
import torch

from uncertainty_robust.attacks import AttackSpec, Cost
from uncertainty_robust.attacks.autoattack import run_plan
from uncertainty_robust.audit import audit
from uncertainty_robust.config import TrialConfig, validate
from uncertainty_robust.data import load_tensors
from uncertainty_robust.evaluation import evaluate, model_checks, result_record


def test_run_plan_attacks_robust_points_only_and_leaves_model_and_rng_alone(std_model, mnist_test):
    x, y = mnist_test[0][:40], mnist_test[1][:40]
    std_model.train()  # handed over in train mode: attacked in eval mode, mode restored
    rng = torch.get_rng_state()
    grads = [None if p.grad is None else p.grad.clone() for p in std_model.parameters()]
    cost = Cost()
    plan = [("apgd-ce", 10, 1), ("square", 200, 1)]
    _, after = run_plan(std_model, x, y, 0.1, "standard", plan, seed=0, cost=cost)
    assert std_model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(p.requires_grad for p in std_model.parameters())
    assert all(  # no parameter gradient was computed or accumulated
        (g is None and p.grad is None) or torch.equal(g, p.grad)
        for g, p in zip(grads, std_model.parameters())
    )
    std_model.eval()
    with torch.no_grad():
        clean = std_model(x).argmax(1) == y
    assert after[0].le(clean).all() and after[1].le(after[0]).all()  # robust only goes down
    assert 0 < int(after[1].sum()) < int(clean.sum())  # informative: something broken, something left
    assert cost.backward > 0 and cost.forward >= cost.backward
    again = run_plan(std_model, x, y, 0.1, "standard", plan, seed=0)[1]
    assert all(torch.equal(a, b) for a, b in zip(after, again))  # seeded: the same points broken


class _Softmax(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x).softmax(1)


class _Noisy(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x + 0.05 * torch.randn_like(x))


@pytest.mark.parametrize(
    "wrap, flag", [(_Softmax, "autoattack_softmax_output"), (_Noisy, "autoattack_randomized")]
)
def test_pyautoattack_checks_become_audit_flags(std_model, mnist_test, wrap, flag):
    x, y = mnist_test[0][:20], mnist_test[1][:20]
    cfg = validate(TrialConfig(autoattack=[AttackSpec("apgd-ce", 5)]))
    pts = torch.ones(20, dtype=torch.bool)
    checks = model_checks(wrap(std_model).eval(), x, y, pts, cfg)
    assert flag in {c["flag"] for c in checks}, checks
    rec = {"autoattack": {"checks": checks, "n_points": 20}, "attacks": [], "worst_case": []}
    assert flag in {f.name for f in audit(rec)}
    assert model_checks(std_model, x, y, pts, cfg) == []


def test_evaluate_records_autoattack_within_a_budget_of_points_and_eps(std_model, tmp_path):
    """``autoattack_eps`` and ``autoattack_points`` are budgets: AutoAttack runs only at the listed
    eps, on a class-balanced subset, and only on the points every attack so far left robust there
    (ours at that eps and everything at the smaller eps); the worst case is per point the minimum
    over both; an eps it did not run at says why."""
    cfg = validate(
        TrialConfig(
            width=0.5,
            n_eval=60,
            jacobian_points=10,
            test_eps=[0.0, 0.1, 0.3],
            attacks=[AttackSpec("fgsm"), AttackSpec("pgd", 5), AttackSpec("cw", 5)],
            autoattack=[AttackSpec("apgd-ce", 10), AttackSpec("apgd-t", 3)],
            autoattack_eps=[0.1, 0.2],
            autoattack_points=30,
        )
    )
    rec = evaluate(std_model, cfg, state=tmp_path / "trial")
    masks = rec["_masks"]
    pts = masks["autoattack/points"]
    _, y = load_tensors(cfg.dataset, "test", n=60, seed=0)
    assert int(pts.sum()) == 30 and torch.bincount(y[pts], minlength=10).tolist() == [3] * 10  # balanced
    by_eps = {w["eps"]: w for w in rec["worst_case"]}
    assert sorted(by_eps) == [0.0, 0.1, 0.2, 0.3]  # our attacks also ran at the AutoAttack eps 0.2
    results = rec["autoattack"]["results"]
    prev = masks["clean"]
    for eps in (0.1, 0.2):
        w = by_eps[eps]
        assert w["n_points"] == 30 and w["ours"]["n_points"] == 60 and "apgd-ce10" in w["attacks"]
        assert w["autoattack"]["ran"] and "listed" in w["autoattack"]["why"]
        ours = masks[f"attack/fgsm/{eps:g}"] & masks[f"attack/pgd5/{eps:g}"] & masks[f"attack/cw5/{eps:g}"]
        assert w["ours_on_points"] == pytest.approx(float(ours[pts].float().mean()))
        assert w["ours"]["acc"] == pytest.approx(float(masks[f"worst/{eps:g}"].float().mean()))
        assert w["ours"]["acc"] == pytest.approx(float(ours.float().mean()))
        final = masks[f"autoattack/{eps:g}"]
        assert w["acc"] == pytest.approx(float(final[pts].float().mean()))
        assert final.le(ours & prev).all()  # never above ours, nor above the smaller eps' worst case
        first = next(r for r in results if r["eps"] == eps)
        assert first["n_attacked"] == int((ours & prev & pts).sum())  # AutoAttack's points only
        assert torch.equal(masks[f"autoattack/apgd-t3/{eps:g}"] & pts, final & pts)
        prev = final
    assert not by_eps[0.3]["autoattack"]["ran"] and "not listed" in by_eps[0.3]["autoattack"]["why"]
    assert by_eps[0.3]["acc"] <= by_eps[0.3]["ours_on_points"]  # AutoAttack's breaks at 0.2 carry over
    assert [r["label"] for r in results] == ["apgd-ce10", "apgd-t3"] * 2
    assert rec["eval_cost"]["backward"] > sum(a["backward"] for a in rec["attacks"])
    out = result_record(
        cfg, {"epochs": 1, "train_seconds": 0, "world_size": 1, "history": [], "cost": {}}, rec, tmp_path
    )
    back = json.loads(json.dumps(out))
    assert back["versions"]["pyautoattack"] != "unknown" and "_masks" not in back
    assert (
        back["autoattack"]["n_points"] == 30
        and back["cost"]["eval"]["forward"] == rec["eval_cost"]["forward"]
    )
