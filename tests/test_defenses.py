"""The defense registry and its losses: LS targets, the EntM and LS losses against their formulas,
AT+EntM's entropy on clean or adversarial inputs, a half-adversarial batch, every registered
defense takes an optimizer step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from uncertainty_robust.attacks import Cost
from uncertainty_robust.config import TrialConfig, validate
from uncertainty_robust.defenses import DEFENSES, entropy, ls_loss, make_adversary, smooth_targets
from uncertainty_robust.train import make_model


@pytest.mark.parametrize("form", ["uniform", "others"])
def test_label_smoothing_targets(form):
    y = torch.arange(10).repeat(3)
    k = 10
    for a in (0.0, 0.1, 0.5):
        t = smooth_targets(y, k, a, form)
        assert torch.allclose(t.sum(1), torch.ones(len(y)))
        on_true = t.gather(1, y[:, None]).squeeze(1)
        off = t.masked_select(~F.one_hot(y, k).bool())
        if form == "uniform":
            assert torch.allclose(on_true, torch.full_like(on_true, 1 - a + a / k))
            assert torch.allclose(off, torch.full_like(off, a / k))
        else:
            assert torch.allclose(on_true, torch.full_like(on_true, 1 - a))
            assert torch.allclose(off, torch.full_like(off, a / (k - 1)))


def test_ls_and_entm_losses_equal_their_formulas(std_model, batch):
    x, y = batch
    with torch.no_grad():
        z = std_model(x)
        logp = F.log_softmax(z, 1)
        h = -(logp.exp() * logp).sum(1)
        ce = F.cross_entropy(z, y)
        assert torch.allclose(entropy(z), h)
        for lam in (0.3, 2.0):
            loss, stats = DEFENSES["entm"].loss(std_model, x, y, TrialConfig(defense="entm", lam=lam), Cost())
            assert torch.allclose(loss, ce - lam * h.mean(), atol=1e-6)
            assert stats["entropy"] == pytest.approx(float(h.mean()), rel=1e-5)
        a = 0.2
        t = torch.full((len(y), 10), a / 10)
        t[torch.arange(len(y)), y] += 1 - a
        loss, _ = DEFENSES["ls"].loss(std_model, x, y, TrialConfig(defense="ls", lam=a), Cost())
        assert torch.allclose(loss, -(t * logp).sum(1).mean(), atol=1e-6)
        assert torch.allclose(ls_loss(z, y, 0.0).mean(), ce)
        loss, _ = DEFENSES["standard"].loss(std_model, x, y, TrialConfig(), Cost())
        assert torch.allclose(loss, ce)


def _adversary(model, x, y, cfg, seed):
    torch.manual_seed(seed)
    return make_adversary(model, x, y, cfg, "ce", Cost())


def test_at_entm_entropy_on_clean_or_adversarial(std_model, batch):
    x, y = batch
    lam, seed = 0.5, 3
    losses = {}
    for on in ("adv", "clean"):
        cfg = TrialConfig(defense="at_entm", lam=lam, eps=0.2, pgd_steps=5, entropy_on=on)
        torch.manual_seed(seed)
        losses[on], _ = DEFENSES["at_entm"].loss(std_model, x, y, cfg, Cost())
        x_adv = _adversary(std_model, x, y, cfg, seed)
        with torch.no_grad():
            z_adv = std_model(x_adv)
            h = entropy(z_adv if on == "adv" else std_model(x))
            assert torch.allclose(
                losses[on], (F.cross_entropy(z_adv, y, reduction="none") - lam * h).mean(), atol=1e-5
            )
    assert abs((losses["adv"] - losses["clean"]).item()) > 1e-3


def test_adv_fraction_half_mixes_adversarial_and_clean(std_model, batch):
    x, y = batch
    seed, half = 4, len(x) // 2
    cfg = TrialConfig(defense="at", eps=0.3, pgd_steps=5, adv_fraction=0.5)
    torch.manual_seed(seed)
    loss, stats = DEFENSES["at"].loss(std_model, x, y, cfg, Cost())
    x_adv = _adversary(std_model, x[:half], y[:half], cfg, seed)
    x_all_adv = _adversary(std_model, x, y, TrialConfig(defense="at", eps=0.3, pgd_steps=5), seed)
    with torch.no_grad():
        z_adv, z_clean = std_model(x_adv), std_model(x[half:])
        expected = F.cross_entropy(torch.cat([z_adv, z_clean]), y)
        all_clean = F.cross_entropy(std_model(x), y)
        all_adv = F.cross_entropy(std_model(x_all_adv), y)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert all_clean.item() + 0.1 < loss.item() < all_adv.item() - 0.1  # really a mix of the two
    assert stats["acc"] == pytest.approx(float((z_adv.argmax(1) == y[:half]).float().mean()))


@pytest.mark.parametrize("name", list(DEFENSES))
def test_every_defense_takes_a_step(name, batch):
    """Parametrized over the registry: a newly registered defense is tested here with no edit."""
    x, y = batch
    lam = min(0.5, DEFENSES[name].lam.hi) if DEFENSES[name].takes_lam else 0.0
    cfg = validate(TrialConfig(defense=name, lam=lam, width=0.25, eps=0.3, pgd_steps=2))
    torch.manual_seed(0)
    model = make_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cost = Cost()
    loss, stats = DEFENSES[name].loss(model, x, y, cfg, cost)
    assert loss.dim() == 0 and math.isfinite(loss.item()) and math.isfinite(stats["loss"])
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), pname
    assert any(float(p.grad.abs().max()) > 0 for p in model.parameters())
    opt.step()
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert cost.forward >= len(x)
    if cfg.is_adversarial:
        assert cost.backward == cfg.train_attack_steps * len(x)  # the training adversary's input gradients
        assert 0 <= stats["acc"] <= 1 and 0 <= stats["clean_acc"] <= 1


def test_trades_loss_equals_its_formula(std_model, batch):
    """TRADES: CE on clean inputs + beta * KL(p(x) || p(x_adv)) (batch mean), x_adv by PGD on that KL;
    the adversary is recomputed from the same seed and the loss compared with the formula."""
    x, y = batch
    beta, seed = 6.0, 5
    cfg = validate(TrialConfig(defense="trades", lam=beta, eps=0.2, pgd_steps=5))
    torch.manual_seed(seed)
    loss, stats = DEFENSES["trades"].loss(std_model, x, y, cfg, Cost())
    with torch.no_grad():
        p_nat = F.softmax(std_model(x), 1)

    def kl(z, _y):
        return F.kl_div(F.log_softmax(z, 1), p_nat, reduction="none").sum(1)

    torch.manual_seed(seed)
    x_adv = make_adversary(std_model, x, y, cfg, kl, Cost())
    assert float((x_adv - x).abs().max()) <= 0.2 + 1e-6
    with torch.no_grad():
        z_nat, z_adv = std_model(x), std_model(x_adv)
        kl_mean = (p_nat * (F.log_softmax(z_nat, 1) - F.log_softmax(z_adv, 1))).sum(1).mean()
        expected = F.cross_entropy(z_nat, y) + beta * kl_mean
    assert kl_mean > 1e-3  # the adversary moved the prediction, so the KL term is really there
    assert torch.allclose(loss, expected, atol=1e-5)
    assert stats["clean_acc"] == pytest.approx(float((z_nat.argmax(1) == y).float().mean()))
    assert stats["acc"] == pytest.approx(float((z_adv.argmax(1) == y).float().mean()))
    assert DEFENSES["trades"].adversarial and DEFENSES["trades"].lam.symbol == "β"


@pytest.mark.parametrize("form", ["uniform", "others"])
def test_at_ls_loss_equals_its_formula(std_model, batch, form):
    """AT+LS: the label-smoothed cross-entropy (targets (1-a) onehot + a/K, or 1-a and a/(K-1))
    on the PGD adversary of the same random start."""
    x, y = batch
    a, seed = 0.2, 5
    cfg = TrialConfig(defense="at_ls", lam=a, eps=0.2, pgd_steps=5, ls_form=form)
    torch.manual_seed(seed)
    loss, stats = DEFENSES["at_ls"].loss(std_model, x, y, cfg, Cost())
    x_adv = _adversary(std_model, x, y, cfg, seed)
    with torch.no_grad():
        logp = F.log_softmax(std_model(x_adv), 1)
    k = logp.shape[1]
    t = torch.full((len(y), k), a / k if form == "uniform" else a / (k - 1))
    t[torch.arange(len(y)), y] = 1 - a + a / k if form == "uniform" else 1 - a
    assert torch.allclose(loss, -(t * logp).sum(1).mean(), atol=1e-5)
    assert stats["acc"] == pytest.approx(float((logp.argmax(1) == y).float().mean()))


def test_fast_at_is_one_fgsm_step_from_a_uniform_start(std_model, batch):
    """Fast-AT (Wong et al. 2020): x_adv = clip_[0,1](x + clip_eps(d0 + fast_step * eps * sign(grad CE at
    x + d0))), d0 uniform in the eps-ball (clipped to [0,1]), recomputed from the same seed; one input
    gradient per example whatever pgd_steps / eps_step / random_start say, and the loss is CE on it."""
    x, y = batch
    eps, seed = 0.2, 3
    cfg = validate(
        TrialConfig(
            defense="fast_at", eps=eps, pgd_steps=7, eps_step=0.01, random_start=False, fast_step=1.25
        )
    )
    assert cfg.train_attack_steps == 1
    torch.manual_seed(seed)
    cost = Cost()
    loss, stats = DEFENSES["fast_at"].loss(std_model, x, y, cfg, cost)
    assert cost.backward == len(x)

    torch.manual_seed(seed)
    d0 = torch.empty_like(x).uniform_(-eps, eps)
    d0 = (x + d0).clamp(0, 1) - x
    xs = (x + d0).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(std_model(xs), y, reduction="none").sum(), xs)
    d = (d0 + 1.25 * eps * g.sign()).clamp(-eps, eps)
    x_ref = (x + d).clamp(0, 1)
    with torch.no_grad():
        z = std_model(x_ref)
    assert torch.allclose(loss, F.cross_entropy(z, y), atol=1e-5)
    assert stats["acc"] == pytest.approx(float((z.argmax(1) == y).float().mean()))
    # the step is really 1.25 eps: most coordinates end on the ball's surface, not inside it
    on_surface = ((x_ref - x).abs() >= eps - 1e-6) | (x_ref == 0) | (x_ref == 1)
    assert float(on_surface.float().mean()) > 0.9
    # and it is not PGD: AT with the same seed and pgd_steps 7 gives another adversary and loss
    torch.manual_seed(seed)
    loss_at, _ = DEFENSES["at"].loss(
        std_model, x, y, validate(TrialConfig(defense="at", eps=eps, pgd_steps=7)), Cost()
    )
    assert not torch.allclose(loss, loss_at, atol=1e-4)
