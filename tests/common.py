"""Constants and helpers shared by the library tests (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import torch

from uncertainty_robust.train import fit

SUITE_EPS = [0.0, 0.1, 0.2, 0.3, 0.5]
TOL_MONOTONE = 0.005  # allowed increase of accuracy from one epsilon to the next
# The shared fixture models (conftest: std_model, at_model) select nothing, so they carve no validation
# split (val_points=0): they train on exactly the 3,000 points they trained on before the split
# existed, and the thresholds the attack/audit/Jacobian tests were calibrated on them still hold.
STD = dict(
    dataset="mnist_embedded", model="small_cnn", width=0.5, n_train=3000, epochs=2, seed=0, val_points=0
)
AT_EPS, AT_STEPS = 0.2, 7


def acc(mask: torch.Tensor) -> float:
    return float(mask.float().mean())


def fit_quiet(cfg, workdir, **kw):
    """``fit`` without TensorBoard; the model in eval mode and the summary."""
    model, summary = fit(cfg, workdir, tensorboard=False, **kw)
    return model.eval(), summary
