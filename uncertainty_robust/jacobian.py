"""Input-Jacobian statistics: per-example ||d f(x) / d x||_F for f = logits and f = softmax.

The paper reports that EntM shrinks the input Jacobian norm but which norm, of which output,
could not be read (shared/paper.md §6), so both outputs are measured, in the Frobenius norm.

- :func:`jacobian_norms` is exact: the full K x D Jacobian per example with ``torch.func.jacrev``,
  vmapped over the batch (K backward passes' worth of work, batched).
- :func:`jacobian_norms_estimate` is the random-projection estimator (Hoffman, Roberts & Yaida
  2019): for v ~ N(0, I_K), E ||v^T J||^2 = ||J||_F^2, so P projections cost P backward passes
  instead of K. Unbiased for the squared norm; its square root is slightly biased low.
Both need the model in eval mode (BatchNorm statistics fixed); they set it and restore it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.func import functional_call, jacrev, vmap


def _eval(model):
    was = model.training
    model.eval()
    return was


def jacobian_norms(model, x: torch.Tensor, batch_size: int = 100) -> dict:
    """Exact per-example Frobenius norms; returns {"logits": (N,), "softmax": (N,)} tensors."""
    was = _eval(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def f(xi):
        z = functional_call(model, (params, buffers), (xi[None],))[0]
        return z, torch.softmax(z, 0)

    jac = vmap(jacrev(f))
    out = {"logits": [], "softmax": []}
    try:
        for i in range(0, len(x), batch_size):
            jz, jp = jac(x[i:i + batch_size].detach())
            out["logits"].append(jz.flatten(2).norm(dim=(1, 2)))
            out["softmax"].append(jp.flatten(2).norm(dim=(1, 2)))
    finally:
        model.train(was)
    return {k: torch.cat(v) for k, v in out.items()}


def jacobian_norms_estimate(model, x: torch.Tensor, projections: int = 1, batch_size: int = 500,
                            generator: Optional[torch.Generator] = None) -> dict:
    """Random-projection estimate of the per-example Frobenius norms (``projections`` backward
    passes per batch, whatever the number of classes)."""
    was = _eval(model)
    out = {"logits": [], "softmax": []}
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].detach().requires_grad_(True)
            z = model(xb)
            p = torch.softmax(z, 1)
            sq = {"logits": torch.zeros(len(xb), device=x.device), "softmax": torch.zeros(len(xb), device=x.device)}
            for j in range(projections):
                v = torch.randn(z.shape, generator=generator, device=z.device) if generator is not None else torch.randn_like(z)
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
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "rms": float(np.sqrt((a ** 2).mean())), "n": int(a.size)}


def jacobian_stats(model, x: torch.Tensor, exact: bool = True, projections: int = 8) -> dict:
    """{"method", "logits": {mean, median, p95, rms, n}, "softmax": {...}} over the points x."""
    norms = jacobian_norms(model, x) if exact else jacobian_norms_estimate(model, x, projections)
    stats = {k: summarize(v) for k, v in norms.items()}
    stats["method"] = "exact" if exact else f"projection-{projections}"
    return stats
