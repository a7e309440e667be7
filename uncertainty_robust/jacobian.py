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
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def _eval(model):
    was = model.training
    model.eval()
    return was


def jacobian_norms(model, x: torch.Tensor, batch_size: int = 100) -> dict:
    """Exact per-example Frobenius norms; returns {"logits": (N,), "softmax": (N,)} tensors.

    One forward pass per batch and K backward passes of the batch, one per logit: in eval mode
    every example's output depends on its own input only, so d(sum_b z_bk)/dx_b is row k of
    example b's Jacobian. (The previous ``vmap(jacrev(...))`` of (logits, softmax) computed the
    same rows, 2K of them, through vmap's batching rules: about 4x slower on the CPU, see
    benchmarks/bench.md item 3.)"""
    was = _eval(model)
    out = {"logits": [], "softmax": []}
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
    finally:
        model.train(was)
    return {k: torch.cat(v) for k, v in out.items()}


def jacobian_norms_estimate(
    model,
    x: torch.Tensor,
    projections: int = 1,
    batch_size: int = 500,
    generator: Optional[torch.Generator] = None,
) -> dict:
    """Random-projection estimate of the per-example Frobenius norms (2 x ``projections`` backward
    passes per batch, one per output, whatever the number of classes)."""
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
                out[name].append((sq[name] / projections).sqrt().detach())
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
