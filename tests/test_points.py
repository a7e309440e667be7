"""Per-point outcomes and the decision-level Jacobians: every trial of a dataset is evaluated on the
same test points and saves their indices with its correctness masks (what the paired statistics
need); the margin-gradient norm and the boundary distance equal their definitions by autograd, and
the boundary distance is scale-free where the logit Jacobian is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uncertainty_robust import trial
from uncertainty_robust.attacks import AttackSpec
from uncertainty_robust.config import TrialConfig, validate
from uncertainty_robust.data import load_arrays, stratified_indices, subset_indices
from uncertainty_robust.jacobian import jacobian_norms, jacobian_report


def test_every_trial_is_evaluated_on_the_same_points_and_saves_them(tmp_path):
    common = dict(
        width=0.25,
        n_train=200,
        epochs=1,
        val_points=50,
        n_eval=40,
        jacobian_points=0,
        test_eps=[0.0, 0.1],
        attacks=[AttackSpec("fgsm", 1), AttackSpec("pgd", 3)],
    )
    recs, pts = [], []
    for kw in (dict(defense="standard", seed=0), dict(defense="at", eps=0.1, pgd_steps=2, seed=1)):
        d = tmp_path / kw["defense"]
        recs.append(trial.run_trial(validate(TrialConfig(**common, **kw)), d))
        pts.append(trial.read_points(d))
    _, y_test = load_arrays("mnist_embedded", "test")
    want = stratified_indices(y_test, 40, 0)
    for rec, (idx, masks) in zip(recs, pts):
        assert np.array_equal(idx, want)  # the same stratified subset for every trial
        with np.load(tmp_path / rec["config"]["defense"] / "points.npz") as z:
            assert np.array_equal(z["labels"], y_test[idx])
        assert masks["clean"].dtype == bool and masks["clean"].shape == (40,)
        assert masks["clean"].mean() == pytest.approx(rec["clean_acc"])
        for a in rec["attacks"]:
            assert masks[f"attack/{a['label']}/{a['eps']:g}"].mean() == pytest.approx(a["acc"])
        for w in rec["worst_case"]:
            m = masks[f"worst/{w['eps']:g}"]  # our own attacks' worst case, every point
            assert m.mean() == pytest.approx((w.get("ours") or w)["acc"])
            if "ours" in w:  # AutoAttack ran here: ours + AutoAttack on its points
                on = masks["autoattack/points"]
                aa = masks[f"autoattack/{w['eps']:g}"]
                assert aa[on].mean() == pytest.approx(w["acc"]) and not (aa & ~m).any()
            for a in rec["attacks"]:  # the worst case is the per-point AND
                if a["eps"] == w["eps"]:
                    assert not (m & ~masks[f"attack/{a['label']}/{a['eps']:g}"]).any()
    assert not np.array_equal(pts[0][1]["worst/0.1"], pts[1][1]["worst/0.1"])  # two models, two outcomes
    # a smaller evaluation's points are a subset of a larger one's (pairs stay possible across n_eval)
    small, large = (subset_indices("mnist_embedded", "test", n=n) for n in (40, 400))
    assert set(small) <= set(large)


def _brute(model, x, y):
    """Margin-gradient norm and L-inf boundary distance, per example, straight from autograd."""
    margins, dists = [], []
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        z = model(xi)[0]
        zd = z.detach()
        k = len(z)
        grads = [torch.autograd.grad(z[j], xi, retain_graph=True)[0].flatten() for j in range(k)]
        yi = int(y[i])
        others = [j for j in range(k) if j != yi]
        j_star = max(others, key=lambda j: float(zd[j]))
        margins.append(float((grads[j_star] - grads[yi]).norm()))
        dists.append(min(float((zd[yi] - zd[j]) / (grads[yi] - grads[j]).abs().sum()) for j in others))
    return torch.tensor(margins), torch.tensor(dists)


def test_margin_gradient_and_boundary_distance_match_their_definitions(std_model, mnist_test):
    x, y = mnist_test[0][:12], mnist_test[1][:12]
    out = jacobian_norms(std_model.eval(), x, y=y)
    margin, dist = _brute(std_model, x, y)
    assert torch.allclose(out["margin"], margin, rtol=1e-4)
    assert torch.allclose(out["boundary_linf"], dist, rtol=1e-4, atol=1e-7)
    pred = std_model(x).argmax(1)
    assert bool(((out["boundary_linf"] > 0) == (pred == y)).all())  # signed: negative when misclassified


def test_boundary_distance_is_scale_free_and_report_has_adversarial_points(std_model, mnist_test):
    x, y = mnist_test[0][:20], mnist_test[1][:20]

    class Scaled(torch.nn.Module):  # the same classifier with logits divided by 10 (a flatter softmax)
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, t):
            return self.m(t) / 10

    a, b = jacobian_norms(std_model, x, y=y), jacobian_norms(Scaled(std_model), x, y=y)
    assert torch.allclose(b["logits"], a["logits"] / 10, rtol=1e-4)  # the logit Jacobian shrinks ...
    assert torch.allclose(b["margin"], a["margin"] / 10, rtol=1e-4)
    assert torch.allclose(b["boundary_linf"], a["boundary_linf"], rtol=1e-4)  # ... the boundary does not move
    torch.manual_seed(0)
    rep = jacobian_report(std_model, x, y, eps=0.1, steps=5)
    assert rep["method"] == "exact" and rep["adversarial"]["eps"] == 0.1 and rep["adversarial"]["steps"] == 5
    for part in (rep, rep["adversarial"]):
        assert {"logits", "softmax", "margin", "boundary_linf"} <= set(part) and part["margin"]["n"] == 20
    # PGD moves points towards the boundary: the median distance shrinks
    assert rep["adversarial"]["boundary_linf"]["median"] < rep["boundary_linf"]["median"]


def test_probe_points_restrict_the_strong_probe_and_square_to_the_autoattack_points(std_model):
    """``evaluation.probe_points``: the probe's strong CE-PGD runs on a stratified subset, and its
    paired counts are over exactly those points (the default runs it on every evaluation point);
    Square runs on the AutoAttack points within them (nested stratified subsets); the probe eps is
    never 0 (its test_eps include 0)."""
    from common import STD

    from uncertainty_robust.evaluation import evaluate

    base = dict(STD, n_eval=60, test_eps=[0.0, 0.05, 0.1], jacobian_points=0)
    base.update(attacks=[AttackSpec("fgsm"), AttackSpec("pgd", 5)], autoattack=[AttackSpec("apgd-ce", 3)])
    sizes = {}
    for k in (None, 20):
        rec = evaluate(std_model, validate(TrialConfig(**base, probe_points=k, autoattack_points=15)))
        probe = rec["masking_probe"]
        assert probe["eps"] > 0
        strong, square = probe["strong"], probe["square"]
        sizes[k] = (strong["n_points"], square["n_points"])
        assert strong["only_other"] + strong["only_ref"] <= strong["n_points"]
    assert sizes == {None: (60, 15), 20: (20, 15)}
