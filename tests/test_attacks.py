"""Attacks (``uncertainty_robust.attacks``) on a small CNN trained here on real MNIST digits:
accuracy falls with eps to zero, PGD beats FGSM, eps 0 is clean accuracy, attacks stay in the ball
and the image range, PGD's early exit gives the full-batch result, the worst case is over the
L-inf attacks only. ``pytest -s`` prints the numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from common import SUITE_EPS, TOL_MONOTONE, acc

from uncertainty_robust.attacks import (
    ATTACKS,
    L2,
    LINF,
    AttackSpec,
    Cost,
    cw_linf,
    fgsm,
    pgd,
    pgd_l2,
    predict,
    run_suite,
)


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


# ------------------------------------------------------------------------------ tests that can fail
# Settings that keep every registered attack CI-sized; the parameter list is the registry itself, so a
# newly registered attack is covered with no edit: at most 20 steps (300 queries for a black-box
# attack), its norm's large eps; a few attacks get fewer steps here to save CI time.
LARGE_EPS = {LINF: 0.3, L2: 2.5}  # MNIST: a standard model keeps ~0 % (L-inf) / ~25 % (L2) under PGD
FEWER_STEPS = {"pgd": 10, "cw": 10, "apgd-t": 10, "fab-t": 10}


def ci_spec(name: str) -> AttackSpec:
    a = ATTACKS[name]
    eps = None if a.norm == LINF else [LARGE_EPS[a.norm]]
    if not a.takes_steps:
        return AttackSpec(name, eps=eps)
    return AttackSpec(name, FEWER_STEPS.get(name, min(a.default_steps, 300 if a.black_box else 20)), eps=eps)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_lowers_accuracy_well_below_clean_at_a_large_eps(name, std_model, mnist_test):
    """Ours and each AutoAttack component through the project's own path (``run_suite``): on a trained
    model, at a large eps, accuracy must fall far below clean. A PGD-L2 stepping down the gradient
    (accuracy stays ~clean) or an attack that silently returns its input fails here."""
    spec = ci_spec(name)
    eps = LARGE_EPS[spec.attack.norm]
    n = {"autoattack": 60, "autoattack-rand": 12}.get(name, 100)  # rand: 20 EOT samples per gradient
    x, y = mnist_test[0][:n], mnist_test[1][:n]
    torch.manual_seed(0)
    r = run_suite(std_model, x, y, [spec], [eps])
    clean, adv = acc(r.clean_correct), acc(r.correct[(spec.label(), eps)])
    cost = r.cost[(spec.label(), eps)]
    print(
        f"\n{spec.label()} at eps {eps:g} on {n} MNIST points: clean {clean:.3f} -> {adv:.3f}; {cost.as_dict()}"
    )
    assert clean > 0.8
    assert adv < clean - 0.45, f"{spec.label()}: {adv:.3f} at eps {eps:g} (clean {clean:.3f})"
    assert cost.forward > 0 and (cost.backward == 0) == spec.attack.black_box


def _band_model():
    """Two classes, logits (0, 1 - 1000 (m - 0.5)^2) with m the image mean: class 1 (wrong for y=0)
    only in the band |m - 0.5| < 0.032. From m = 0.31 with steps of 0.1 and no random start, PGD on
    y=0 goes 0.41 -> 0.51 (inside the band: misclassified) -> 0.41 (outside): the best iterate
    and the last one differ."""

    class Band(torch.nn.Module):
        def forward(self, x):
            m = x.flatten(1).mean(1)
            return torch.stack([torch.zeros_like(m), 1 - 1000 * (m - 0.5) ** 2], 1)

    x = torch.full((4, 1, 4, 4), 0.31)
    return Band().eval(), x, torch.zeros(4, dtype=torch.long)


def test_best_iterate_is_kept_not_the_last():
    model, x, y = _band_model()
    kw = dict(steps=3, step_size=0.1, random_start=False)
    best = pgd(model, x, y, 0.25, track_best=True, **kw)
    last = pgd(model, x, y, 0.25, track_best=False, **kw)
    assert (predict(model, best) != y).all() and float(best.mean()) == pytest.approx(0.51, abs=1e-5)
    assert (predict(model, last) == y).all() and float(last.mean()) == pytest.approx(0.41, abs=1e-5)
    spec = AttackSpec("pgd", 3, step_size=0.1, random_start=False)  # and through the evaluation's path
    r = run_suite(model, x, y, [spec], [0.25])
    assert acc(r.correct[("pgd3", 0.25)]) == 0.0 and acc(r.worst[0.25]) == 0.0


def test_restarts_without_track_best_keep_the_highest_loss_restart(std_model, mnist_test):
    """The transfer attack's source runs PGD without labels to check success: with several restarts,
    each example must get the restart of highest loss (not simply the last one)."""
    x, y = mnist_test[0][:64], mnist_test[1][:64]
    torch.manual_seed(3)
    got = pgd(std_model, x, y, 0.1, steps=3, restarts=3, track_best=False)
    torch.manual_seed(3)  # the same random starts, one restart at a time
    runs = [pgd(std_model, x, y, 0.1, steps=3, restarts=1, track_best=False) for _ in range(3)]
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(std_model(r), y, reduction="none") for r in runs])
    want = torch.stack(runs)[losses.argmax(0), torch.arange(len(y))]
    assert torch.equal(got, want)
    assert not torch.equal(got, runs[-1])  # the case where "last restart wins" would differ


class _BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 5, padding=2),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(4),
            torch.nn.Flatten(),
            torch.nn.Linear(8 * 7 * 7, 10),
        )

    def forward(self, x):
        return self.body(x)


def test_run_suite_on_a_batchnorm_model_uses_eval_mode_and_leaves_the_statistics(mnist_test):
    """A model handed over in train mode: the suite must attack it in eval mode (running statistics,
    not batch statistics), leave its BatchNorm running statistics untouched and restore train mode."""
    from uncertainty_robust.data import load_tensors

    torch.manual_seed(0)
    net = _BNNet()
    xt, yt = load_tensors("mnist_embedded", "train", n=2000, seed=0)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for i in range(0, 2000, 100):  # a real classifier, with real running statistics
        opt.zero_grad()
        F.cross_entropy(net(xt[i : i + 100]), yt[i : i + 100]).backward()
        opt.step()
    x, y = mnist_test[0][:100], mnist_test[1][:100]
    specs = [AttackSpec("fgsm"), AttackSpec("pgd", 5)]
    net.eval()
    torch.manual_seed(1)
    ref = run_suite(net, x, y, specs, [0.1])
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(1)
    r = run_suite(net, x, y, specs, [0.1])
    assert net.training  # mode restored
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "running statistics changed"
    assert acc(r.clean_correct) > 0.6
    assert torch.equal(r.clean_correct, ref.clean_correct)
    assert all(torch.equal(r.correct[k], ref.correct[k]) for k in ref.correct)


def test_expected_calibration_error_by_hand():
    from uncertainty_robust.evaluation import expected_calibration_error

    probs = torch.tensor([[0.9, 0.1], [0.22, 0.78], [0.55, 0.45], [0.3, 0.7]])
    y = torch.tensor([0, 0, 0, 1])  # correct, wrong (pred 1), correct, correct
    # 5 bins: (0.8, 1]: {0.9 right} -> 1/4 * |0.9 - 1|; (0.6, 0.8]: {0.78 wrong, 0.7 right} ->
    # 2/4 * |0.74 - 0.5|; (0.4, 0.6]: {0.55 right} -> 1/4 * |0.55 - 1|
    want = 0.25 * 0.1 + 0.5 * 0.24 + 0.25 * 0.45
    assert expected_calibration_error(probs, y, bins=5) == pytest.approx(want, abs=1e-6)
    assert expected_calibration_error(torch.eye(2)[[0, 1]], torch.tensor([0, 1])) == pytest.approx(0.0)
