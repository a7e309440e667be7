"""Attacks (``uncertainty_robust.attacks``) on a small CNN trained here on real MNIST digits:
accuracy falls with eps to zero, PGD beats FGSM, eps 0 is clean accuracy, attacks stay in the ball
and the image range, PGD's early exit gives the full-batch result, the worst case is over the
L-inf attacks only. ``pytest -s`` prints the numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from common import SUITE_EPS, TOL_MONOTONE, acc

from uncertainty_robust.attacks import AttackSpec, Cost, cw_linf, fgsm, pgd, pgd_l2, predict, run_suite


def test_pgd_accuracy_falls_monotonically_with_eps_to_zero(std_suite, mnist_test):
    clean = acc(std_suite.clean_correct)
    pgd_acc = [acc(std_suite.correct[("pgd20", e)]) for e in SUITE_EPS]
    worst = [acc(std_suite.worst[e]) for e in SUITE_EPS]
    print(
        f"\nstandard small_cnn, {len(mnist_test[1])} MNIST test points: clean {clean:.3f}; "
        + ", ".join(f"PGD-20 eps={e:g}: {a:.3f}" for e, a in zip(SUITE_EPS, pgd_acc))
    )
    assert clean > 0.9  # a real classifier, so the fall below means something
    for accs in (pgd_acc, worst):
        for e0, e1, a0, a1 in zip(SUITE_EPS, SUITE_EPS[1:], accs, accs[1:]):
            assert a1 <= a0 + TOL_MONOTONE, f"accuracy rose from {a0:.3f} at eps={e0} to {a1:.3f} at eps={e1}"
    assert pgd_acc[SUITE_EPS.index(0.1)] < clean - 0.05  # eps=0.1 already hurts an undefended model
    assert pgd_acc[SUITE_EPS.index(0.5)] <= 0.02
    assert worst[SUITE_EPS.index(0.5)] <= 0.02


def test_pgd20_is_at_least_as_strong_as_fgsm(std_suite):
    for eps in SUITE_EPS:
        a_fgsm, a_pgd = acc(std_suite.correct[("fgsm", eps)]), acc(std_suite.correct[("pgd20", eps)])
        if eps > 0:
            assert a_pgd <= a_fgsm, f"eps={eps}: PGD-20 {a_pgd:.3f} > FGSM {a_fgsm:.3f}"
        # the worst case is the per-example AND of the attacks
        assert torch.equal(
            std_suite.worst[eps], std_suite.correct[("fgsm", eps)] & std_suite.correct[("pgd20", eps)]
        )
    eps = 0.2  # and strictly stronger where FGSM leaves something to break
    assert acc(std_suite.correct[("pgd20", eps)]) < acc(std_suite.correct[("fgsm", eps)])


def test_eps_zero_is_clean_accuracy(std_model, std_suite, mnist_test):
    x, y = mnist_test
    clean = predict(std_model, x) == y
    assert torch.equal(std_suite.clean_correct, clean)
    for label in ("fgsm", "pgd20"):
        assert torch.equal(std_suite.correct[(label, 0.0)], clean)
    assert torch.equal(std_suite.worst[0.0], clean)
    specs = [AttackSpec("fgsm", 1), AttackSpec("pgd", 20), AttackSpec("pgd_l2", 20), AttackSpec("cw", 30)]
    res = run_suite(std_model, x, y, specs, [0.0])
    assert all(torch.equal(res.correct[(s.label(), 0.0)], clean) for s in specs)
    assert all(res.cost[(s.label(), 0.0)].backward == 0 for s in specs)  # nothing was attacked
    # the attack functions themselves: eps=0 leaves the input, hence every prediction, unchanged
    xs, ys = x[:100], y[:100]
    pred = predict(std_model, xs)
    for attack in (fgsm, pgd, cw_linf, pgd_l2):
        xa = attack(std_model, xs, ys, 0.0)
        assert torch.equal(xa, xs), attack.__name__
        assert torch.equal(predict(std_model, xa), pred), attack.__name__


def test_attacks_stay_in_the_ball_and_the_image_range(std_model, mnist_test):
    x, y = mnist_test[0][:64], mnist_test[1][:64]
    eps = 0.1
    for attack in (fgsm, pgd, cw_linf):
        xa = attack(std_model, x, y, eps)
        assert float((xa - x).abs().max()) <= eps + 1e-6 and float(xa.min()) >= 0 and float(xa.max()) <= 1
    xa = pgd_l2(std_model, x, y, 2.0, steps=10)
    assert float((xa - x).flatten(1).norm(dim=1).max()) <= 2.0 + 1e-4


class _AlwaysTrain(torch.nn.Module):
    """``.eval()`` leaves the wrapped model in train mode: for small_cnn (no BatchNorm, no dropout)
    the outputs are the same, but PGD then keeps the whole batch through every step."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)

    def train(self, mode: bool = True):
        return super().train(True)


@pytest.mark.parametrize("name,loss,restarts", [("pgd", "ce", 1), ("cw", "margin", 2)])
def test_pgd_early_exit_gives_the_full_batch_result_for_fewer_passes(
    std_model, mnist_test, name, loss, restarts
):
    """In eval mode PGD drops broken points from the batch; the adversarial inputs it returns must
    be exactly those of the full-batch loop (same random starts), at a lower cost."""
    x, y = mnist_test[0][:200], mnist_test[1][:200]
    std_model.eval()
    out, cost = {}, {}
    for key, m in (("early_exit", std_model), ("full_batch", _AlwaysTrain(std_model))):
        torch.manual_seed(7)
        c = Cost()
        out[key] = pgd(m, x, y, 0.1, steps=10, restarts=restarts, loss=loss, cost=c)
        cost[key] = c
    assert torch.equal(out["early_exit"], out["full_batch"])
    assert cost["early_exit"].backward < cost["full_batch"].backward


def test_worst_case_is_over_linf_attacks_only(std_model, mnist_test, monkeypatch):
    """An L2 attack's eps is another threat model: it is reported on its own and never enters
    the L-inf worst case (which ``evaluate`` labels with the L-inf attacks only). The L2 attack is
    replaced by one that breaks every point, so any leak into the worst case would show."""
    from uncertainty_robust import attacks

    x, y = mnist_test[0][:100], mnist_test[1][:100]
    breaks_all = dataclasses.replace(attacks.ATTACKS["pgd_l2"], fn=lambda model, x, y, eps, **kw: 1 - x)
    monkeypatch.setitem(attacks.ATTACKS, "pgd_l2", breaks_all)
    specs = [AttackSpec("fgsm", 1), AttackSpec("pgd", 5), AttackSpec("pgd_l2", 5)]
    for per_attack in (True, False):
        torch.manual_seed(0)
        r = run_suite(std_model, x, y, specs, [0.05], per_attack=per_attack)
        l2 = r.correct[("pgd_l25", 0.05)]
        assert acc(l2) < 0.5 < acc(r.worst[0.05])  # the stand-in L2 attack breaks (nearly) all
        if per_attack:
            assert torch.equal(r.worst[0.05], r.correct[("fgsm", 0.05)] & r.correct[("pgd5", 0.05)])
