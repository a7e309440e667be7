"""Input-Jacobian statistics: per-example ||d f(x) / d x||_F for f = logits and f = softmax.

The paper reports that EntM shrinks the input Jacobian norm but which norm, of which output,
could not be read (docs/paper.md §6), so both outputs are measured, in the Frobenius norm.

- :func:`jacobian_norms` is exact: the full K x D logit Jacobian J_z of every example, from K
  backward passes of the batch (one per logit); the softmax Jacobian follows from it without
  further passes, J_p = (diag(p) - p p^T) J_z.
- :func:`jacobian_norms_estimate` is the random-projection estimator (Hoffman, Roberts & Yaida
  2019): for v ~ N(0, I_K), E ||v^T J||^2 = ||J||_F^2, so P projections cost 2P backward passes
  (one per output: logits and softmax) instead of K. Unbiased for the squared norm; its square root is slightly biased low.
Both need the model in eval mode (BatchNorm statistics fixed); they set it and restore it.

Scale. ``||J_z||`` shrinks when the logits are scaled down, which is exactly what LS and EntM do
(a flatter softmax), without moving the decision boundary; so a smaller logit Jacobian alone says
little about robustness. With the labels (:func:`jacobian_norms` with ``y``) two decision-level
quantities come from the same K backward passes, at no extra cost:

- ``margin``: ``||grad_x (z_j* - z_y)||_2`` with j* = argmax_{j != y} z_j, the strongest wrong
  class. This is the gradient the margin (CW) attack follows and the part of the Jacobian that can
  change the decision: it ignores the common-mode gradient of all logits (to which softmax and the
  argmax are blind), unlike ``||J_z||``. The strongest wrong class rather than the Frobenius norm
  over all j != y, because robustness is decided by the nearest boundary, not by the average one,
  and the Frobenius sum grows with K for reasons unrelated to it. It still scales with the logits.
- ``boundary_linf``: the first-order L-inf distance to the decision boundary,
  ``min_{j != y} (z_y - z_j) / ||grad_x (z_y - z_j)||_1`` (DeepFool's linearisation, the L1 norm
  being the dual of L-inf), signed: negative for a misclassified point. It is scale-free: scaling
  the logits scales numerator and denominator alike, so it compares models trained with and
  without LS/EntM on the geometry that matters for an L-inf attack.

The softmax Jacobian ``J_p`` is shift-invariant too but saturates for confident points; it is kept
beside them. :func:`jacobian_report` measures all of them at clean points and at PGD points.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def _eval(model):
    was = model.training
    model.eval()
    return was


def jacobian_norms(model, x: torch.Tensor, batch_size: int = 100, y: Optional[torch.Tensor] = None) -> dict:
    """Exact per-example Frobenius norms; returns {"logits": (N,), "softmax": (N,)} tensors, and with
    labels ``y`` also {"margin": (N,), "boundary_linf": (N,)} (see the module docstring).

    One forward pass per batch and K backward passes of the batch, one per logit: in eval mode
    every example's output depends on its own input only, so d(sum_b z_bk)/dx_b is row k of
    example b's Jacobian. (The previous ``vmap(jacrev(...))`` of (logits, softmax) computed the
    same rows, 2K of them, through vmap's batching rules: about 4x slower on the CPU, see
    benchmarks/bench.md item 3.)"""
    was = _eval(model)
    out = {"logits": [], "softmax": []}
    if y is not None:
        out.update(margin=[], boundary_linf=[])
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].detach().requires_grad_(True)
            with torch.enable_grad():
                z = model(xb)
                k = z.shape[1]
                rows = [
                    torch.autograd.grad(z[:, j].sum(), xb, retain_graph=j < k - 1)[0].flatten(1)
                    for j in range(k)
                ]
            jz = torch.stack(rows, 1)  # (B, K, D)
            # d p_i / d x = sum_j p_j (delta_ij - p_i) d z_j / d x: the coefficients softmax's backward
            # applies, so the softmax Jacobian needs no second set of K backward passes
            p = torch.softmax(z.detach(), 1)
            a = (torch.eye(k, dtype=p.dtype, device=p.device) - p[:, :, None]) * p[:, None, :]
            out["logits"].append(jz.norm(dim=(1, 2)))
            out["softmax"].append(torch.bmm(a, jz).norm(dim=(1, 2)))
            if y is not None:
                m, b = _decision(z.detach(), jz, y[i : i + batch_size])
                out["margin"].append(m)
                out["boundary_linf"].append(b)
    finally:
        model.train(was)
    return {k: torch.cat(v) for k, v in out.items()}


def _decision(z: torch.Tensor, jz: torch.Tensor, y: torch.Tensor) -> tuple:
    """From logits (B, K) and the logit Jacobian (B, K, D): ``||grad (z_j* - z_y)||_2`` for the
    strongest wrong class j*, and the signed first-order L-inf boundary distance
    ``min_{j != y} (z_y - z_j) / ||grad (z_y - z_j)||_1``."""
    y = y.to(z.device)
    rows = torch.arange(len(y), device=z.device)
    diff = jz[rows, y][:, None, :] - jz  # (B, K, D): grad (z_y - z_j)
    gap = z[rows, y][:, None] - z  # (B, K): z_y - z_j
    wrong = torch.ones_like(z, dtype=torch.bool)
    wrong[rows, y] = False
    j_star = z.masked_fill(~wrong, float("-inf")).argmax(1)
    margin = diff[rows, j_star].norm(dim=1)
    dist = (gap / diff.abs().sum(2).clamp_min(1e-12)).masked_fill(~wrong, float("inf")).min(1).values
    return margin, dist


def jacobian_norms_estimate(
    model,
    x: torch.Tensor,
    projections: int = 1,
    batch_size: int = 500,
    generator: Optional[torch.Generator] = None,
    squared: bool = False,
) -> dict:
    """Random-projection estimate of the per-example Frobenius norms (2 x ``projections`` backward
    passes per batch, one per output, whatever the number of classes). ``squared``: the estimates
    of the squared norms, which are unbiased (average them, then take the root: an RMS); the
    default, their square roots, is biased low (Jensen)."""
    was = _eval(model)
    out = {"logits": [], "softmax": []}
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].detach().requires_grad_(True)
            z = model(xb)
            p = torch.softmax(z, 1)
            sq = {
                "logits": torch.zeros(len(xb), device=x.device),
                "softmax": torch.zeros(len(xb), device=x.device),
            }
            for _ in range(projections):
                v = (
                    torch.randn(z.shape, generator=generator, device=z.device)
                    if generator is not None
                    else torch.randn_like(z)
                )
                for name, o in (("logits", z), ("softmax", p)):
                    (g,) = torch.autograd.grad((o * v).sum(), xb, retain_graph=True)
                    sq[name] += g.flatten(1).pow(2).sum(1)
            for name in out:
                est = (sq[name] / projections).detach()
                out[name].append(est if squared else est.sqrt())
    finally:
        model.train(was)
    return {k: torch.cat(v) for k, v in out.items()}


def summarize(norms: torch.Tensor) -> dict:
    a = norms.detach().cpu().double().numpy()
    return {
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "rms": float(np.sqrt((a**2).mean())),
        "n": int(a.size),
    }


def jacobian_stats(model, x: torch.Tensor, exact: bool = True, projections: int = 8) -> dict:
    """{"method", "logits": {mean, median, p95, rms, n}, "softmax": {...}} over the points x."""
    norms = jacobian_norms(model, x) if exact else jacobian_norms_estimate(model, x, projections)
    stats = {k: summarize(v) for k, v in norms.items()}
    stats["method"] = "exact" if exact else f"projection-{projections}"
    return stats


def jacobian_report(model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20) -> dict:
    """Exact Jacobian statistics at the clean points ``x`` (top level: "logits", "softmax",
    "margin", "boundary_linf", each {mean, median, p95, rms, n}) and at PGD points
    (``"adversarial"``: the same at PGD-``steps`` examples of radius ``eps``, CE loss, random start,
    the best iterate; points where PGD fails keep its last iterate). Cost: K backward passes per
    point set plus the attack's ``steps``. The attack draws from the global RNG (the caller seeds it)."""
    from .attacks import pgd

    was = _eval(model)
    try:
        clean = {k: summarize(v) for k, v in jacobian_norms(model, x, y=y).items()}
        x_adv = pgd(model, x, y, eps, steps=steps)
        adv = {k: summarize(v) for k, v in jacobian_norms(model, x_adv, y=y).items()}
    finally:
        model.train(was)
    return {
        "method": "exact",
        **clean,
        "adversarial": {"eps": float(eps), "attack": f"pgd{steps}", "steps": steps, "method": "exact", **adv},
    }
