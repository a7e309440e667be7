"""PGD-DLR: our PGD loop on Croce & Hein's difference-of-logits-ratio loss.

Paper: Croce & Hein 2020, Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks (the DLR loss), inside Madry et al. 2018's fixed-step PGD (as ``cw`` puts the
margin loss inside it). Norm: L-inf. Loss: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), with z
sorted in decreasing order: invariant to shifting and to rescaling the logits, so a flat or
saturated softmax (LS, EntM) hides neither its value nor its gradient. Needs at least 3 classes.

A cheap, fixed-step relative of AutoAttack's APGD-DLR (``apgd-dlr``, adaptive steps, pyautoattack):
``evaluation.attacks: [fgsm, "pgd:20", "pgd_dlr:20"]`` draws its curve beside ours.
Arguments: ``eps``, ``steps`` (20), ``step_size`` (None: 2.5 * eps / steps), ``restarts`` (1),
``random_start`` (True), ``track_best`` (True), ``cost``.
"""

from __future__ import annotations

import torch

from .registry import LINF, Attack, register_attack
from .whitebox import pgd


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12) per example (positive <=> misclassified)."""
    z, _ = logits.sort(1, descending=True)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return -(z_y - other.max(1).values) / (z[:, 0] - z[:, 2] + 1e-12)


def pgd_dlr(model, x, y, eps, **kw):
    """PGD on the DLR loss in the L-inf ball (see the module docstring)."""
    return pgd(model, x, y, eps, norm=LINF, loss=dlr_loss, **kw)


register_attack(
    Attack(
        name="pgd_dlr",
        fn=pgd_dlr,
        norm=LINF,
        loss="dlr",
        paper="Croce & Hein 2020 DLR loss in Madry et al. 2018's PGD",
        default_steps=20,
    )
)
