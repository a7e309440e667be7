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

from .registry import ATTACKS, LINF, Attack, AttackSpec, Cost, n_target_classes, register_attack

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


_ARGS = "Arguments: ``eps`` (L-inf radius), ``steps`` ({steps}: {unit}), ``restarts`` ({restarts}), ``cost``."
_ADAPTIVE = "adaptive (APGD/FAB)"
_COMMON = dict(norm=LINF, source="autoattack", default_steps=100, unit="iterations", step_text=_ADAPTIVE)

register_attack(
    Attack(
        name="apgd-ce",
        fn=_registry_fn(
            "apgd-ce",
            f"""APGD-CE: Auto-PGD on the cross-entropy loss (pyautoattack's ``APGDAttack(loss="ce")``).

    Paper: {APGD}. Norm: L-inf. Step: adaptive (starts at 2 eps, halved on stalls; momentum 0.75).
    {_ARGS.format(steps=100, unit="iterations", restarts=1)}""",
        ),
        loss="ce",
        paper=APGD,
        **_COMMON,
    )
)
register_attack(
    Attack(
        name="apgd-dlr",
        fn=_registry_fn(
            "apgd-dlr",
            f"""APGD-DLR: Auto-PGD on the difference-of-logits-ratio loss (pyautoattack's ``APGDAttack(loss="dlr")``),
    scale-invariant, so a rescaled or saturated softmax does not hide its gradient.

    Paper: {APGD}. Norm: L-inf. Step: adaptive.
    {_ARGS.format(steps=100, unit="iterations", restarts=1)}""",
        ),
        loss="dlr",
        paper=APGD,
        **_COMMON,
    )
)
register_attack(
    Attack(
        name="apgd-t",
        fn=_registry_fn(
            "apgd-t",
            f"""APGD-T: Auto-PGD on the targeted DLR loss, for each of the min(9, K-1) most likely wrong classes
    in turn (pyautoattack's ``APGDAttack_targeted``).

    Paper: {APGD}. Norm: L-inf. Step: adaptive.
    {_ARGS.format(steps=100, unit="iterations per target class", restarts="1 per target class")}""",
        ),
        loss="targeted dlr",
        paper=APGD,
        targeted=True,
        **_COMMON,
    )
)
register_attack(
    Attack(
        name="fab-t",
        fn=_registry_fn(
            "fab-t",
            f"""FAB-T: the targeted Fast Adaptive Boundary attack, a minimal-distortion attack that projects on
    the linearised decision boundary, for each of the min(9, K-1) most likely wrong classes
    (pyautoattack's ``FABAttack_PT(targeted=True)``); a point counts as broken only if the
    example it finds lies inside the eps-ball.

    Paper: {FAB}. Norm: L-inf.
    {_ARGS.format(steps=100, unit="iterations per target class", restarts="1 per target class")}""",
        ),
        loss="minimal distortion, targeted",
        paper=FAB,
        targeted=True,
        extra_passes=1 / 3,  # a forward of the projected point besides each forward+backward
        **_COMMON,
    )
)
register_attack(
    Attack(
        name="square",
        fn=_registry_fn(
            "square",
            f"""Square: a score-based black-box attack (random square-shaped updates accepted when the margin
    loss falls), gradient-free, so gradient masking does not stop it (pyautoattack's
    ``SquareAttack``, p_init 0.8).

    Paper: {SQUARE}. Norm: L-inf.
    {_ARGS.format(steps=5000, unit="queries", restarts=1)}""",
        ),
        norm=LINF,
        loss="margin",
        paper=SQUARE,
        default_steps=5000,
        source="autoattack",
        unit="queries",
        black_box=True,
        step_text="random squares (Square)",
    )
)
for _name, _version, _components, _doc in (
    (
        "autoattack",
        "standard",
        ("apgd-ce", "apgd-t", "fab-t", "square"),
        """AutoAttack, version "standard": APGD-CE (100 iterations), APGD-T (9 targets x 100 iterations),
    FAB-T (9 targets x 100 iterations), Square (5000 queries), each on the points the previous left
    robust, with pyautoattack's own settings.""",
    ),
    (
        "autoattack-rand",
        "rand",
        ("apgd-ce", "apgd-dlr"),
        """AutoAttack, version "rand", for randomized models: APGD-CE and APGD-DLR with Expectation over
    Transformation (20 iterations per gradient), pyautoattack's own settings.""",
    ),
):
    register_attack(
        Attack(
            name=_name,
            fn=_registry_fn(
                _name,
                f"""{_doc}

    Paper: {APGD}. Norm: L-inf. Arguments: ``eps``, ``cost`` (no steps or restarts: the authors'
    settings are the point).""",
            ),
            norm=LINF,
            loss="ce, dlr, ...",
            paper=APGD,
            default_steps=1,
            source="autoattack",
            components=_components,
            version=_version,
            unit="",
            step_text=f"AutoAttack version {_version!r}",
        )
    )
