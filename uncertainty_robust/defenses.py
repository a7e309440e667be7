"""Training losses, one registry: ``DEFENSES[name](model, x, y, cfg, num_classes) -> (loss, stats)``.

Standard forms (none could be confirmed from the paper's body; see shared/paper.md §3):

- standard : CE(f(x), y)
- ls       : CE against (1-a)*onehot(y) + a/K    (Szegedy et al. 2016; ``ls_form="others"`` puts
             a/(K-1) on the wrong classes instead), a = ``cfg.lam``
- entm     : CE(f(x), y) - lam * H(softmax f(x)), H(p) = -sum_k p_k log p_k
             (confidence penalty, Pereyra et al. 2017)
- at       : CE(f(x_adv), y), x_adv = PGD-Linf(eps, step, steps, random start) (Madry et al. 2018)
- at_ls    : LS loss on x_adv
- at_entm  : CE(f(x_adv), y) - lam * H(softmax f(x_?)), ``entropy_on`` in {"adv", "clean"}

Open choices, all config fields: ``inner_loss`` (PGD maximises plain CE, or the regularized
training loss), ``adv_fraction`` (1.0 = all-adversarial batch; 0.5 = the first half of the batch
replaced by adversarial points, a clean/adversarial mix), ``attack_bn_mode`` (BatchNorm in eval
or train mode while the adversary is generated).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

from .attacks import Cost, pgd


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-example entropy (nats) of softmax(logits)."""
    logp = F.log_softmax(logits, 1)
    return -(logp.exp() * logp).sum(1)


def smooth_targets(y: torch.Tensor, k: int, alpha: float, form: str = "uniform") -> torch.Tensor:
    if form == "uniform":
        t = torch.full((len(y), k), alpha / k, device=y.device)
        t.scatter_(1, y[:, None], 1 - alpha + alpha / k)
    else:
        t = torch.full((len(y), k), alpha / (k - 1), device=y.device)
        t.scatter_(1, y[:, None], 1 - alpha)
    return t


def ls_loss(logits, y, alpha: float, form: str = "uniform") -> torch.Tensor:
    """Per-example CE against smoothed targets."""
    t = smooth_targets(y, logits.shape[1], alpha, form)
    return -(t * F.log_softmax(logits, 1)).sum(1)


def _clean_loss(defense: str, cfg) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The per-example regularized loss on one set of logits (what standard/ls/entm minimise)."""
    if defense in ("ls", "at_ls"):
        return lambda z, y: ls_loss(z, y, cfg.lam, cfg.ls_form)
    if defense in ("entm", "at_entm"):
        return lambda z, y: F.cross_entropy(z, y, reduction="none") - cfg.lam * entropy(z)
    return lambda z, y: F.cross_entropy(z, y, reduction="none")


def make_adversary(model, x, y, cfg, loss_fn, cost: Cost) -> torch.Tensor:
    """PGD-Linf training adversary, with BatchNorm in ``cfg.attack_bn_mode`` during generation."""
    was = model.training
    model.train(cfg.attack_bn_mode == "train")
    try:
        inner = loss_fn if cfg.inner_loss == "regularized" else "ce"
        return pgd(model, x, y, cfg.eps, steps=cfg.pgd_steps, step_size=cfg.train_step,
                   random_start=cfg.random_start, loss=inner, track_best=False, cost=cost)
    finally:
        model.train(was)


def defense_loss(d: str, model, x, y, cfg, cost: Cost, attack_model=None) -> tuple[torch.Tensor, dict]:
    """Mean training loss of defense ``d`` on the batch, plus per-batch statistics:
    loss, acc (on what the loss saw: adversarial for AT), entropy (mean, nats).

    ``attack_model``: the module the training adversary is generated on (the unwrapped module
    under DDP, so the attack's forward passes never arm DDP's gradient reducer); default ``model``.
    One forward pass of ``model`` per call, as DDP requires.
    """
    loss_fn = _clean_loss(d, cfg)
    if d not in ("at", "at_ls", "at_entm"):
        z = model(x)
        cost.forward += len(x)
        loss = loss_fn(z, y).mean()
        acc = (z.argmax(1) == y).float().mean().item()
        return loss, {"loss": loss.item(), "acc": acc, "clean_acc": acc, "entropy": entropy(z.detach()).mean().item()}

    n_adv = len(x) if cfg.adv_fraction >= 1 else int(round(cfg.adv_fraction * len(x)))
    x_in = x
    if n_adv > 0:
        x_adv = make_adversary(attack_model or model, x[:n_adv], y[:n_adv], cfg, loss_fn, cost)
        x_in = torch.cat([x_adv, x[n_adv:]]) if n_adv < len(x) else x_adv
    clean_too = d == "at_entm" and cfg.entropy_on == "clean" and n_adv > 0
    z_all = model(torch.cat([x_in, x[:n_adv]]) if clean_too else x_in)
    cost.forward += len(z_all)
    z = z_all[:len(x_in)]
    if d == "at_entm":
        ce = F.cross_entropy(z, y, reduction="none")
        h = entropy(z_all[len(x_in):]) if clean_too else entropy(z)
        if clean_too and n_adv < len(x):  # mixed batch: clean half's entropy is its own
            h = torch.cat([h, entropy(z[n_adv:])])
        per_ex = ce - cfg.lam * h
    else:
        per_ex = loss_fn(z, y)
    loss = per_ex.mean()
    stats = {"loss": loss.item(), "acc": (z[:n_adv].argmax(1) == y[:n_adv]).float().mean().item() if n_adv else float("nan"),
             "clean_acc": _clean_acc(attack_model or model, x, y, z_all, n_adv, clean_too, cost),
             "entropy": entropy(z.detach()).mean().item()}
    return loss, stats


def _clean_acc(model, x, y, z_all, n_adv: int, clean_too: bool, cost: Cost, probe: int = 32) -> float:
    """Clean training accuracy of an AT batch, for monitoring: from logits already computed when
    the batch has clean points, else one no-grad eval-mode forward of ``probe`` examples (a few %
    of an AT step; eval mode so BatchNorm statistics are not touched)."""
    if clean_too:
        zc, yc = z_all[len(x):], y[:n_adv]
    elif n_adv < len(x):
        zc, yc = z_all[n_adv:len(x)], y[n_adv:]
    else:
        was = model.training
        model.eval()
        with torch.no_grad():
            zc, yc = model(x[:probe]), y[:probe]
        model.train(was)
        cost.forward += len(yc)
    return (zc.argmax(1) == yc).float().mean().item()


# name -> loss(model, x, y, cfg, cost) -> (loss, stats)
DEFENSES = {name: functools.partial(defense_loss, name)
            for name in ("standard", "ls", "entm", "at", "at_ls", "at_entm")}
