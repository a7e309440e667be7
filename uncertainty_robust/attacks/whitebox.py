"""White-box attacks in pixel space ([0,1] inputs), batched, gradients w.r.t. the input only.

One interface, after torchattacks: ``attack(model, x, y, eps, ...) -> x_adv``. The caller chooses
the model's mode (the evaluation puts it in eval mode). Each attack registers its
:class:`~uncertainty_robust.attacks.registry.Attack` record, with its roles, at the bottom.

- FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps.
- PGD-Linf / PGD-L2 (Madry et al. 2018): random start in the ball, ``steps`` steps, projection,
  ``restarts`` restarts keeping the per-example worst case.
- CW-Linf: PGD on the margin loss max_{j!=y} z_j - z_y (Carlini & Wagner 2017's loss inside a
  PGD loop, as in mnist_challenge's ``loss_func: cw``); it does not rely on softmax
  probabilities, so it sees through the flat softmax that LS/EntM can produce.

During evaluation every iterate is checked: an example that is misclassified at any step counts
as broken and keeps that adversarial input (the usual "best iterate" of AutoAttack).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .registry import L2, LINF, Attack, Cost, default_step_size, register_attack

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> per-example loss


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y per example (positive <=> misclassified)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.max(1).values - z_y


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


LOSSES = {"ce": ce_loss, "margin": margin_loss}


def _input_grad(model, x, y, loss_fn: LossFn, cost: Optional[Cost]):
    x = x.detach().requires_grad_(True)
    logits = model(x)
    loss = loss_fn(logits, y)
    (g,) = torch.autograd.grad(loss.sum(), x)
    if cost is not None:
        cost.forward += len(x)
        cost.backward += len(x)
    return g, logits.detach()


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == LINF:
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (delta.dim() - 1))
    return delta * torch.clamp(eps / n, max=1.0)


def _random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == LINF:
        return torch.empty_like(x).uniform_(-eps, eps)
    d = torch.randn_like(x)
    n = d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
    r = torch.rand(len(x), device=x.device).pow(1.0 / x[0].numel()).view_as(n)  # uniform in the ball
    return d / n.clamp_min(1e-12) * r * eps


def _step(g: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    if norm == LINF:
        return step_size * g.sign()
    n = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))
    return step_size * g / n


def pgd(
    model,
    x,
    y,
    eps: float,
    steps: int = 20,
    step_size: Optional[float] = None,
    norm: str = LINF,
    restarts: int = 1,
    random_start: bool = True,
    loss: str | LossFn = "ce",
    track_best: bool = True,
    cost: Optional[Cost] = None,
) -> torch.Tensor:
    """Projected gradient ascent on ``loss`` within the eps-ball around x, clipped to [0,1].

    step_size None -> :func:`default_step_size` (2.5 * eps / steps). With ``track_best`` (evaluation) every iterate is checked
    and the first misclassifying one is kept per example; without it (training, transfer sources)
    the last iterate of a restart is returned, as in Madry et al.'s training loop, and with several
    restarts the restart whose last iterate has the highest ``loss`` is kept per example (one extra
    forward pass per restart; a single restart costs nothing extra).

    With ``track_best`` and the model in eval mode, an example leaves the batch as soon as it is
    broken (its result, the first misclassifying iterate, is final): later steps only attack the
    points still standing, so an attack that breaks most points early costs a fraction of
    ``steps`` gradient evaluations (``cost`` counts the passes actually made). In eval mode every
    example's logits and gradient are independent of the rest of the batch, so the survivors'
    iterates are those of the full-batch loop. In train mode (BatchNorm batch statistics) the batch
    is kept whole, as before.
    """
    if eps <= 0:
        return x.detach().clone()
    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    step_size = step_size if step_size is not None else default_step_size(eps, steps)
    x = x.detach()
    best = x.clone()
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    best_loss = torch.full((len(x),), float("-inf"), device=x.device)  # without track_best, restarts > 1
    shrink = track_best and not model.training  # drop broken examples from the batch as they fall
    for _ in range(restarts):
        idx = (~broken).nonzero().squeeze(1) if track_best else torch.arange(len(x), device=x.device)
        if len(idx) == 0:
            break
        xs, ys = x[idx], y[idx]
        delta = _random_start(xs, eps, norm) if random_start else torch.zeros_like(xs)
        delta = (xs + delta).clamp(0, 1) - xs
        for _ in range(steps):
            g, logits = _input_grad(model, xs + delta, ys, loss_fn, cost)
            if track_best:
                hit = (logits.argmax(1) != ys) & ~broken[idx]
                best[idx[hit]] = (xs + delta)[hit].detach()
                broken[idx[hit]] = True
                if shrink and bool(hit.any()):
                    keep = ~hit
                    idx, xs, ys, delta, g = idx[keep], xs[keep], ys[keep], delta[keep], g[keep]
                    if len(idx) == 0:
                        break
            delta = _project(delta + _step(g, step_size, norm), eps, norm)
            delta = (xs + delta).clamp(0, 1) - xs
        if len(idx) == 0:
            continue
        x_last = (xs + delta).detach()
        if track_best:
            with torch.no_grad():
                logits = model(x_last)
            if cost is not None:
                cost.forward += len(xs)
            hit = (logits.argmax(1) != ys) & ~broken[idx]
            best[idx[hit]] = x_last[hit]
            broken[idx[hit]] = True
            still = ~broken[idx]
            best[idx[still]] = x_last[still]  # not broken: keep the last iterate as the attempt
        elif restarts == 1:
            best[idx] = x_last
        else:  # keep, per example, the restart whose last iterate has the highest loss
            with torch.no_grad():
                l_last = loss_fn(model(x_last), ys)
            if cost is not None:
                cost.forward += len(xs)
            better = l_last > best_loss[idx]
            best[idx[better]] = x_last[better]
            best_loss[idx[better]] = l_last[better]
    return best


def fgsm(
    model, x, y, eps: float, loss: str | LossFn = "ce", cost: Optional[Cost] = None, **_
) -> torch.Tensor:
    """FGSM, the fast gradient sign method.

    Paper: Goodfellow, Shlens & Szegedy 2015, Explaining and Harnessing Adversarial Examples.
    Norm: L-inf. One step: x + eps * sign(grad_x loss), clipped to [0, 1].
    Arguments: ``eps`` (radius), ``loss`` ("ce"), ``cost`` (None: passes are not counted).
    """
    if eps <= 0:
        return x.detach().clone()
    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    g, _ = _input_grad(model, x, y, loss_fn, cost)
    return (x.detach() + eps * g.sign()).clamp(0, 1)


def pgd_linf(model, x, y, eps, **kw):
    """PGD-Linf, projected gradient descent in the L-inf ball.

    Paper: Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks.
    Norm: L-inf. Loss: cross-entropy.
    Arguments: ``eps``, ``steps`` (20), ``step_size`` (None: 2.5 * eps / steps), ``restarts`` (1),
    ``random_start`` (True), ``track_best`` (True), ``cost``. See :func:`pgd`.
    """
    return pgd(model, x, y, eps, norm=LINF, **kw)


def pgd_l2(model, x, y, eps, **kw):
    """PGD-L2, projected gradient descent in the L2 ball (eps is an L2 radius in pixel units).

    Paper: Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks.
    Norm: L2. Loss: cross-entropy. Step: the gradient normalised to unit L2 norm times ``step_size``.
    Arguments: ``eps``, ``steps`` (20), ``step_size`` (None: 2.5 * eps / steps), ``restarts`` (1),
    ``random_start`` (True: uniform in the ball), ``track_best`` (True), ``cost``. See :func:`pgd`.
    """
    return pgd(model, x, y, eps, norm=L2, **kw)


def cw_linf(model, x, y, eps, **kw):
    """CW-Linf: PGD on the Carlini-Wagner margin loss max_{j != y} z_j - z_y in the L-inf ball.

    Paper: Carlini & Wagner 2017, Towards Evaluating the Robustness of Neural Networks (the loss),
    inside Madry et al. 2018's PGD loop, as in mnist_challenge's ``loss_func: cw``.
    Norm: L-inf. Loss: margin (no softmax, so a flat softmax does not hide its gradient).
    Arguments: ``eps``, ``steps`` (20), ``step_size`` (None: 2.5 * eps / steps), ``restarts`` (1),
    ``random_start`` (True), ``track_best`` (True), ``cost``. See :func:`pgd`.
    """
    kw.setdefault("loss", "margin")
    return pgd(model, x, y, eps, norm=LINF, **kw)


# ------------------------------------------------------------------------------ registration
register_attack(
    Attack(
        name="fgsm",
        fn=fgsm,
        norm=LINF,
        loss="ce",
        paper="Goodfellow et al. 2015",
        default_steps=1,
        single_step=True,
    )
)
register_attack(
    Attack(
        name="pgd",
        fn=pgd_linf,
        norm=LINF,
        loss="ce",
        paper="Madry et al. 2018",
        default_steps=20,
        reference=True,
    )
)
register_attack(
    Attack(name="pgd_l2", fn=pgd_l2, norm=L2, loss="ce", paper="Madry et al. 2018", default_steps=20)
)
register_attack(
    Attack(
        name="cw",
        fn=cw_linf,
        norm=LINF,
        loss="margin",
        paper="Carlini & Wagner 2017 loss in PGD",
        default_steps=20,
        margin_twin_of="pgd",
    )
)
