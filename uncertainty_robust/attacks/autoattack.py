"""AutoAttack (Croce & Hein 2020) through ``pyautoattack``, the authors' own code (MIT license).

What this module adds around it, and nothing more:

- Entries in the one attack registry: the single attacks ``apgd-ce``, ``apgd-dlr``, ``apgd-t``,
  ``fab-t`` (``NAME:STEPSxRESTARTS``: STEPS = iterations, RESTARTS = restarts, per target class for
  the targeted ones) and ``square`` (STEPS = queries), and the ensembles ``autoattack`` (version
  "standard": APGD-CE, APGD-T, FAB-T, Square-5000) and ``autoattack-rand`` (version "rand":
  APGD-CE and APGD-DLR with 20 EOT iterations, for randomized models). Every attack object is
  pyautoattack's own, built by ``pyautoattack.AutoAttack(version=...)`` with the authors'
  settings; STEPS and RESTARTS, when given, replace only the iteration/query count and the
  restarts. Targeted attacks use min(9, K - 1) target classes.
- :class:`Counted`: a wrapper that counts forward and backward passes (in examples) into a
  :class:`~uncertainty_robust.attacks.registry.Cost`, so AutoAttack's cost is recorded like ours.
- :func:`run_plan`: components in order, each on the points still robust, with the model's mode,
  its parameters and the global RNG left as they were and pyautoattack's warnings captured (the
  evaluation's resumable, sharded runner, :mod:`uncertainty_robust.evaluation.aa_runner`, calls
  it per chunk of points).

Why not ``AutoAttack.run_standard_evaluation``: it runs the same attack objects in the same order
on the points still robust, as here, but its resume state cannot be reloaded in pyautoattack 0.2.0
(the attack set is written with ``json.dump(default=str)`` and then compared with a set: every
reload raises "The state was created with a different set of attacks"), it reports no per-attack
accuracy, and it re-seeds the global RNG.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Optional

import torch

from .registry import (
    ATTACKS,
    AUTOATTACK_SOURCE,
    LINF,
    Attack,
    AttackSpec,
    Cost,
    n_target_classes,
    register_attack,
)

APGD = "Croce & Hein 2020, Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks"
FAB = "Croce & Hein 2020, Minimally distorted Adversarial Examples with a Fast Adaptive Boundary Attack"
SQUARE = "Andriushchenko et al. 2020, Square Attack: a query-efficient black-box adversarial attack via random search"
LOGGER = "auto-attack"  # the logger pyautoattack's checks write to

# A substring of a pyautoattack.checks message -> the audit flag it becomes (see docs/audit.md).
CHECK_FLAGS = (
    ("randomized defense", "autoattack_randomized"),
    ("probability distribution", "autoattack_softmax_output"),
    ("zero gradient", "autoattack_zero_gradients"),
    ("dynamic defense", "autoattack_dynamic"),
    ("Square Attack has decreased", "autoattack_square"),
    ("classes", "autoattack_n_classes"),
)


def check_flag(message: str) -> str:
    """The audit flag of one pyautoattack check message (``autoattack_other`` if unknown)."""
    for needle, flag in CHECK_FLAGS:
        if needle in message:
            return flag
    return "autoattack_other"


# ------------------------------------------------------------------------------ counting, session
class Counted(torch.nn.Module):
    """``model`` with its passes counted into ``cost`` (in examples): a forward per call, a backward
    each time a gradient flows back through the output (FAB's K backward passes count K)."""

    def __init__(self, model: torch.nn.Module, cost: Cost):
        super().__init__()
        self.model, self.cost = model, cost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.cost.forward += len(x)
        if out.requires_grad:
            n = len(x)

            def count(grad, n=n):
                self.cost.backward += n

            out.register_hook(count)
        return out


class Capture(logging.Handler):
    """Collects pyautoattack's warning messages (one line each) instead of printing them."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@contextlib.contextmanager
def captured_warnings():
    """pyautoattack's logger, its warnings going to the yielded list instead of the console."""
    log = logging.getLogger(LOGGER)
    cap, prop = Capture(), log.propagate
    log.addHandler(cap)
    log.propagate = False
    try:
        yield log, cap.messages
    finally:
        log.removeHandler(cap)
        log.propagate = prop


@contextlib.contextmanager
def session(model: torch.nn.Module, device: torch.device):
    """Eval mode, parameters frozen (no parameter gradients are computed or accumulated), the global
    RNG forked (pyautoattack re-seeds it), pyautoattack's warnings captured instead of printed.
    Everything is restored afterwards. Yields the list the check messages go to."""
    was = model.training
    model.eval()
    params = list(model.parameters())
    req = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    try:
        with captured_warnings() as (_, messages), torch.random.fork_rng(devices=devices):
            yield messages
    finally:
        for p, r in zip(params, req):
            p.requires_grad_(r)
        model.train(was)


def device_of(model, x) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else x.device


# ------------------------------------------------------------------------------ running components
def _build(model, eps: float, version: str, n_classes: int, device, settings: dict):
    """pyautoattack's ``AutoAttack`` for ``version`` with the authors' settings; ``settings``
    {component: (steps, restarts)} replaces the iterations/queries and restarts where given."""
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    aa = AutoAttack(model, eps=eps, norm="Linf", version=version, device=device, seed=0)
    aa.verbose = False
    targets = n_target_classes(n_classes)
    aa.apgd_targeted.n_target_classes = targets
    aa.fab.n_target_classes = targets
    for name, (steps, restarts) in settings.items():
        if name in ("apgd-ce", "apgd-dlr") and (steps, restarts) != (aa.apgd.n_iter, aa.apgd.n_restarts):
            aa.apgd = APGDAttack(
                aa.model,
                n_restarts=restarts,
                n_iter=steps,
                verbose=False,
                eps=eps,
                norm="Linf",
                eot_iter=aa.apgd.eot_iter,
                rho=aa.apgd.thr_decr,
                seed=0,
                device=device,
                logger=aa.logger,
            )
        elif name == "apgd-t" and (steps, restarts) != (aa.apgd_targeted.n_iter, aa.apgd_targeted.n_restarts):
            aa.apgd_targeted = APGDAttack_targeted(
                aa.model,
                n_restarts=restarts,
                n_iter=steps,
                verbose=False,
                eps=eps,
                norm="Linf",
                eot_iter=1,
                rho=aa.apgd_targeted.thr_decr,
                seed=0,
                device=device,
                logger=aa.logger,
                n_target_classes=targets,
            )
        elif name == "fab-t":
            aa.fab.n_iter, aa.fab.n_restarts = steps, restarts
        elif name == "square":
            aa.square.n_queries, aa.square.n_restarts = steps, restarts
    return aa


def _perturb(aa, name: str, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    """One pyautoattack component on (x, y), exactly as ``run_standard_evaluation`` calls it
    (except that FAB-T keeps the restarts it was given)."""
    if name in ("apgd-ce", "apgd-dlr"):
        aa.apgd.loss = "ce" if name == "apgd-ce" else "dlr"
        aa.apgd.seed = seed
        return aa.apgd.perturb(x, y)
    if name == "apgd-t":
        aa.apgd_targeted.seed = seed
        return aa.apgd_targeted.perturb(x, y)
    if name == "fab-t":
        aa.fab.targeted = True
        aa.fab.seed = seed
        return aa.fab.perturb(x, y)
    if name == "square":
        aa.square.seed = seed
        return aa.square.perturb(x, y)
    raise ValueError(f"not a pyautoattack component: {name!r}")


def _broken(model, x, x_adv, y, eps: float) -> torch.Tensor:
    """Misclassified and inside the eps-ball and [0, 1] (FAB returns the clean point otherwise)."""
    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
    inside = (x_adv - x).flatten(1).abs().amax(1) <= eps + 1e-5
    in_range = (x_adv.flatten(1).amin(1) >= -1e-6) & (x_adv.flatten(1).amax(1) <= 1 + 1e-6)
    return wrong & inside & in_range


def plan_of(spec: AttackSpec) -> tuple:
    """(pyautoattack version, [(component, steps, restarts)]) of one registry spec."""
    a = spec.attack
    if a.ensemble:
        return a.version, [(c, ATTACKS[c].default_steps, 1) for c in a.components]
    return "standard", [(spec.name, spec.steps, spec.restarts)]


def run_plan(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    version: str,
    plan: list,
    seed: int,
    cost: Optional[Cost] = None,
    messages: Optional[list] = None,
) -> tuple:
    """Run ``plan`` ([(component, steps, restarts)]) in order, each on the points still robust
    (correctly classified clean and not broken by an earlier component). Returns (x_adv, [bool (N,)
    robust after each component]). The model's mode, parameters and the global RNG are left as
    they were; pyautoattack's warnings go to ``messages``."""
    cost = cost if cost is not None else Cost()
    device = device_of(model, x)
    counted = Counted(model, cost)
    t0 = time.perf_counter()
    with session(model, device) as log:
        with torch.no_grad():
            logits = counted(x)
        robust = logits.argmax(1) == y
        aa = _build(counted, eps, version, logits.shape[1], device, {n: (s, r) for n, s, r in plan})
        x_adv = x.detach().clone()
        after = []
        for name, _, _ in plan:
            idx = robust.nonzero().squeeze(1)
            if len(idx):
                xa = _perturb(aa, name, x[idx].clone(), y[idx].clone(), seed).detach()
                hit = _broken(counted, x[idx], xa, y[idx], eps)
                x_adv[idx[hit]] = xa[hit]
                robust[idx[hit]] = False
            after.append(robust.clone())
        if messages is not None:
            messages.extend(log)
    cost.seconds += time.perf_counter() - t0
    return x_adv, after


def _draw_seed() -> int:
    """A seed for pyautoattack from the caller's RNG (so a seeded evaluation is reproducible)."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def _registry_fn(name: str, doc: str) -> Callable:
    def fn(model, x, y, eps, steps=None, restarts=1, cost=None, **_):
        if eps <= 0:
            return x.detach().clone()
        version, plan = plan_of(AttackSpec(name, steps, restarts=restarts))
        x_adv, _ = run_plan(model, x, y, eps, version, plan, _draw_seed(), cost)
        return x_adv

    fn.__name__ = name.replace("-", "_")
    fn.__doc__ = doc
    return fn


# The registry entries: pyautoattack's single attacks, then its two ensembles. What each is, in one
# line (the docstring of its registry function, with its paper and defaults).
_SINGLE = (  # name, loss, paper, steps (unit), targeted, black box, extra passes per step, what it is
    ("apgd-ce", "ce", APGD, 100, "iterations", False, False, 0.0,
     "Auto-PGD on the cross-entropy loss (APGDAttack(loss='ce')); adaptive step from 2 eps, momentum 0.75"),
    ("apgd-dlr", "dlr", APGD, 100, "iterations", False, False, 0.0,
     "Auto-PGD on the difference-of-logits-ratio loss (APGDAttack(loss='dlr')), scale-invariant: a "
     "rescaled or saturated softmax does not hide its gradient"),
    ("apgd-t", "targeted dlr", APGD, 100, "iterations per target class", True, False, 0.0,
     "Auto-PGD on the targeted DLR loss, for each of the min(9, K-1) most likely wrong classes "
     "(APGDAttack_targeted)"),
    ("fab-t", "minimal distortion, targeted", FAB, 100, "iterations per target class", True, False, 1 / 3,
     "targeted Fast Adaptive Boundary attack (FABAttack_PT(targeted=True)), minimal distortion by "
     "projection on the linearised boundary, for each of the min(9, K-1) most likely wrong classes; a "
     "point counts as broken only if its example lies inside the eps-ball"),
    ("square", "margin", SQUARE, 5000, "queries", False, True, 0.0,
     "Square Attack (SquareAttack, p_init 0.8): score-based black-box, random square updates accepted "
     "when the margin loss falls; gradient-free, so gradient masking does not stop it"),
)  # fmt: skip
_ENSEMBLES = (  # name, pyautoattack version, components, what it is
    ("autoattack", "standard", ("apgd-ce", "apgd-t", "fab-t", "square"),
     "AutoAttack, version 'standard': APGD-CE (100 iterations), APGD-T (9 targets x 100), FAB-T (9 "
     "targets x 100), Square (5000 queries), each on the points the previous left robust"),
    ("autoattack-rand", "rand", ("apgd-ce", "apgd-dlr"),
     "AutoAttack, version 'rand', for randomized models: APGD-CE and APGD-DLR with Expectation over "
     "Transformation (20 samples per gradient)"),
)  # fmt: skip

for _name, _loss, _paper, _steps, _unit, _targeted, _black_box, _extra, _what in _SINGLE:
    register_attack(
        Attack(
            name=_name,
            fn=_registry_fn(
                _name,
                f"{_name}: {_what}.\n\nPaper: {_paper}. Norm: L-inf. Arguments: ``eps``, ``steps`` "
                f"({_steps}: {_unit}), ``restarts`` (1), ``cost``; pyautoattack's own object.",
            ),
            norm=LINF,
            loss=_loss,
            paper=_paper,
            default_steps=_steps,
            source=AUTOATTACK_SOURCE,
            unit=_unit,
            targeted=_targeted,
            black_box=_black_box,
            extra_passes=_extra,
            step_text="random squares (Square)" if _black_box else "adaptive (APGD/FAB)",
        )
    )
for _name, _version, _components, _what in _ENSEMBLES:
    register_attack(
        Attack(
            name=_name,
            fn=_registry_fn(
                _name,
                f"{_what}, with pyautoattack's own settings.\n\nPaper: {APGD}. Norm: L-inf. "
                "Arguments: ``eps``, ``cost`` (no steps or restarts: the authors' settings are the point).",
            ),
            norm=LINF,
            loss="ce, dlr, ...",
            paper=APGD,
            default_steps=1,
            source=AUTOATTACK_SOURCE,
            components=_components,
            version=_version,
            unit="",
            step_text=f"AutoAttack version {_version!r}",
        )
    )
