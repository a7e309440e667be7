"""AutoAttack (Croce & Hein 2020) through ``pyautoattack``, the authors' own code (MIT license).

What this module adds around it, and nothing more:

- Entries in the one attack registry (:data:`uncertainty_robust.attacks.ATTACKS`): the single
  attacks ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab-t`` (``NAME:STEPSxRESTARTS``: STEPS =
  iterations, RESTARTS = restarts, per target class for the targeted ones) and ``square`` (STEPS =
  queries), and the ensembles ``autoattack`` (version "standard": APGD-CE, APGD-T, FAB-T,
  Square-5000) and ``autoattack-rand`` (version "rand": APGD-CE and APGD-DLR with 20 EOT
  iterations, for randomized models). Every attack object is pyautoattack's own, built by
  ``pyautoattack.AutoAttack(version=...)`` with the authors' settings; STEPS and RESTARTS, when
  given, replace only the iteration/query count and the restarts. Targeted attacks use
  min(9, K - 1) target classes.
- :class:`Counted`: a wrapper that counts forward and backward passes (in examples) into a
  :class:`~uncertainty_robust.attacks.Cost`, so AutoAttack's cost is recorded like ours.
- :func:`reference`: the evaluation's AutoAttack run at the chosen epsilons on the points that
  survive our own attacks (the per-example worst case is the same, and AutoAttack itself only
  attacks points still robust), checkpointed per (eps, attack, chunk of points) so that a SLURM
  requeue resumes it, with pyautoattack's sanity checks (``pyautoattack.checks``: randomized
  model, softmax output, dynamic model, number of classes, zero gradients, Square beating the
  gradient attacks) captured as messages for the audit (:data:`CHECK_FLAGS`).

Why our loop rather than ``AutoAttack.run_standard_evaluation``: that function runs the same attack
objects in the same order on the points still robust, as here, but its resume state cannot be
reloaded in pyautoattack 0.2.0 (the attack set is written with ``json.dump(default=str)`` and then
compared with a set: every reload raises "The state was created with a different set of
attacks"), it reports no per-attack accuracy, and it re-seeds the global RNG. Here each component
runs inside ``torch.random.fork_rng`` with a seed derived from (trial seed, eps, attack, first point
of the chunk), so a resumed evaluation gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .attacks import Attack, AttackSpec, Cost, register_attack

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


@dataclass(frozen=True)
class Component:
    """One pyautoattack attack: its default STEPS (iterations or queries) and what it maximises."""

    name: str  # our registry name, also pyautoattack's
    default_steps: int
    unit: str
    loss: str
    paper: str
    gradient_free: bool = False


COMPONENTS = {
    c.name: c
    for c in (
        Component("apgd-ce", 100, "iterations", "ce", APGD),
        Component("apgd-dlr", 100, "iterations", "dlr", APGD),
        Component("apgd-t", 100, "iterations", "targeted dlr", APGD),
        Component("fab-t", 100, "iterations", "minimal distortion, targeted", FAB),
        Component("square", 5000, "queries", "margin", SQUARE, gradient_free=True),
    )
}
ENSEMBLES = {  # name -> (pyautoattack version, components in the order it runs them)
    "autoattack": ("standard", ("apgd-ce", "apgd-t", "fab-t", "square")),
    "autoattack-rand": ("rand", ("apgd-ce", "apgd-dlr")),
}


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


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@contextlib.contextmanager
def _session(model: torch.nn.Module, device: torch.device):
    """Eval mode, parameters frozen (no parameter gradients are computed or accumulated), the global
    RNG forked (pyautoattack re-seeds it), pyautoattack's warnings captured instead of printed.
    Everything is restored afterwards. Yields the list the check messages go to."""
    was = model.training
    model.eval()
    params = list(model.parameters())
    req = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    log = logging.getLogger(LOGGER)
    cap, prop = _Capture(), log.propagate
    log.addHandler(cap)
    log.propagate = False
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    try:
        with torch.random.fork_rng(devices=devices):
            yield cap.messages
    finally:
        log.removeHandler(cap)
        log.propagate = prop
        for p, r in zip(params, req):
            p.requires_grad_(r)
        model.train(was)


def _device(model, x) -> torch.device:
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
    targets = max(1, min(9, n_classes - 1))
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
    if spec.name in ENSEMBLES:
        version, names = ENSEMBLES[spec.name]
        return version, [(n, COMPONENTS[n].default_steps, 1) for n in names]
    return "standard", [(spec.name, spec.steps, spec.restarts)]


def component_label(name: str, steps: int, restarts: int) -> str:
    return AttackSpec(name, steps, restarts=restarts).label()


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
    device = _device(model, x)
    counted = Counted(model, cost)
    t0 = time.perf_counter()
    with _session(model, device) as log:
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
apgd_ce = _registry_fn(
    "apgd-ce",
    f"""APGD-CE: Auto-PGD on the cross-entropy loss (pyautoattack's ``APGDAttack(loss="ce")``).

    Paper: {APGD}. Norm: L-inf. Step: adaptive (starts at 2 eps, halved on stalls; momentum 0.75).
    {_ARGS.format(steps=100, unit="iterations", restarts=1)}""",
)
apgd_dlr = _registry_fn(
    "apgd-dlr",
    f"""APGD-DLR: Auto-PGD on the difference-of-logits-ratio loss (pyautoattack's ``APGDAttack(loss="dlr")``),
    scale-invariant, so a rescaled or saturated softmax does not hide its gradient.

    Paper: {APGD}. Norm: L-inf. Step: adaptive.
    {_ARGS.format(steps=100, unit="iterations", restarts=1)}""",
)
apgd_t = _registry_fn(
    "apgd-t",
    f"""APGD-T: Auto-PGD on the targeted DLR loss, for each of the min(9, K-1) most likely wrong classes
    in turn (pyautoattack's ``APGDAttack_targeted``).

    Paper: {APGD}. Norm: L-inf. Step: adaptive.
    {_ARGS.format(steps=100, unit="iterations per target class", restarts="1 per target class")}""",
)
fab_t = _registry_fn(
    "fab-t",
    f"""FAB-T: the targeted Fast Adaptive Boundary attack, a minimal-distortion attack that projects on
    the linearised decision boundary, for each of the min(9, K-1) most likely wrong classes
    (pyautoattack's ``FABAttack_PT(targeted=True)``); a point counts as broken only if the
    example it finds lies inside the eps-ball.

    Paper: {FAB}. Norm: L-inf.
    {_ARGS.format(steps=100, unit="iterations per target class", restarts="1 per target class")}""",
)
square = _registry_fn(
    "square",
    f"""Square: a score-based black-box attack (random square-shaped updates accepted when the margin
    loss falls), gradient-free, so gradient masking does not stop it (pyautoattack's
    ``SquareAttack``, p_init 0.8).

    Paper: {SQUARE}. Norm: L-inf.
    {_ARGS.format(steps=5000, unit="queries", restarts=1)}""",
)
autoattack_standard = _registry_fn(
    "autoattack",
    f"""AutoAttack, version "standard": APGD-CE (100 iterations), APGD-T (9 targets x 100 iterations),
    FAB-T (9 targets x 100 iterations), Square (5000 queries), each on the points the previous left
    robust, with pyautoattack's own settings.

    Paper: {APGD}. Norm: L-inf. Arguments: ``eps``, ``cost`` (no steps or restarts: the authors'
    settings are the point).""",
)
autoattack_rand = _registry_fn(
    "autoattack-rand",
    f"""AutoAttack, version "rand", for randomized models: APGD-CE and APGD-DLR with Expectation over
    Transformation (20 iterations per gradient), pyautoattack's own settings.

    Paper: {APGD}. Norm: L-inf. Arguments: ``eps``, ``cost``.""",
)

for _fn, _name in (
    (apgd_ce, "apgd-ce"),
    (apgd_dlr, "apgd-dlr"),
    (apgd_t, "apgd-t"),
    (fab_t, "fab-t"),
    (square, "square"),
):
    _c = COMPONENTS[_name]
    register_attack(
        Attack(
            _name,
            _fn,
            "Linf",
            _c.loss,
            False,
            _c.default_steps,
            _c.paper,
            source="autoattack",
            unit=_c.unit,
            gradient_free=_c.gradient_free,
            step_text="random squares (Square)" if _c.gradient_free else "adaptive (APGD/FAB)",
        )
    )
for _fn, _name in ((autoattack_standard, "autoattack"), (autoattack_rand, "autoattack-rand")):
    register_attack(
        Attack(
            _name,
            _fn,
            "Linf",
            "ce, dlr, ...",
            False,
            1,
            APGD,
            source="autoattack",
            components=ENSEMBLES[_name][1],
            unit="",
            step_text=f"AutoAttack version {ENSEMBLES[_name][0]!r}",
        )
    )


# ------------------------------------------------------------------------------ the evaluation's reference run
def model_fingerprint(model: torch.nn.Module) -> str:
    """sha1 of the model's state (weights and buffers): a saved evaluation state is reused only
    for the very same model."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _chunk_seed(seed: int, eps: float, label: str, first: int) -> int:
    blob = f"{seed}|{eps:.10g}|{label}|{first}".encode()
    return int(hashlib.sha1(blob).hexdigest()[:8], 16)


def piece_name(eps: float, order: int, label: str) -> str:
    """The evaluation-state name of one (eps, attack) piece, e.g. ``autoattack_eps0.3_1_apgd-t100``."""
    return f"autoattack_eps{eps:g}_{order}_{label}"


def pieces_of(specs: list) -> list:
    """[(version, component, steps, restarts, label, part_of)] in the order they run at each eps."""
    out = []
    for spec in specs:
        version, plan = plan_of(spec)
        for name, steps, restarts in plan:
            part_of = spec.name if spec.attack.ensemble else None
            out.append((version, name, steps, restarts, component_label(name, steps, restarts), part_of))
    return out


def reference(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    specs: list,
    eps_list: list,
    survivors: dict,
    points: torch.Tensor,
    seed: int,
    batch_size: int = 500,
    state: Optional[Callable] = None,
    interrupt: Optional[Callable] = None,
) -> dict:
    """AutoAttack (``specs``: registry specs, run in order) at every eps of ``eps_list`` on the
    evaluation points ``points`` (indices into x) that ``survivors[eps]`` (bool (N,), our worst case)
    marks robust.

    ``state``: name -> path of a JSON file (``TrialDir.eval_piece``), or None for no checkpointing.
    Each (eps, attack) piece saves the points it has attacked and broken after every chunk of
    ``batch_size`` points; a rerun with the same model, points and settings skips finished pieces and
    chunks (a SLURM requeue in the middle of a long evaluation loses at most one chunk).
    ``interrupt``: called after every saved chunk (tests use it to simulate a kill).

    Returns {"attacks", "n_points", "eps": [per-eps summary], "results": [per-piece records],
    "checks": [{"flag", "message", "where"}], "cost": Cost, "_robust": {eps: bool (N,)} (True = not
    broken by AutoAttack; points outside ``points`` are True), "_robust_after": {(eps, label): bool
    (N,)} (robust on ``points`` after that piece, our attacks included)}.
    """
    device = _device(model, x)
    points = points.to(x.device)
    n_pts = len(points)
    pieces = pieces_of(specs)
    total = Cost()
    checks = _model_checks(model, x, y, points, pieces, batch_size, device, total) if n_pts else []
    fp = model_fingerprint(model)
    robust_out, robust_after, results, per_eps = {}, {}, [], []
    for eps in eps_list:
        robust = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        robust[points] = survivors[eps][points]
        before = robust.clone()
        acc_dict = {"ours": float(robust[points].float().mean()) if n_pts else float("nan")}
        for order, (version, name, steps, restarts, label, part_of) in enumerate(pieces):
            key = {
                "fingerprint": fp,
                "eps": eps,
                "attack": name,
                "steps": steps,
                "restarts": restarts,
                "version": version,
                "points": points.tolist(),
            }
            path = state(piece_name(eps, order, label)) if state is not None else None
            st = _run_piece(model, x, y, eps, (version, name, steps, restarts, label), robust, seed, batch_size,
                            path, key, interrupt)  # fmt: skip
            broken = torch.zeros_like(robust)
            if st["broken"]:
                broken[torch.tensor(st["broken"], device=x.device)] = True
            n_attacked = int(robust.sum())
            robust &= ~broken
            total.add(st["cost"])
            robust_after[(eps, label)] = robust.clone()
            acc = float(robust[points].float().mean()) if n_pts else float("nan")
            acc_dict[name] = acc
            results.append(
                {
                    "eps": eps,
                    "attack": name,
                    "label": label,
                    "part_of": part_of,
                    "version": version,
                    "steps": steps,
                    "restarts": restarts,
                    "unit": COMPONENTS[name].unit,
                    "n_points": n_pts,
                    "n_attacked": n_attacked,
                    "n_broken": n_attacked - int(robust.sum()),
                    "acc": acc,
                    **st["cost"].as_dict(),
                }
            )
            checks += [
                {"flag": check_flag(m), "message": m, "where": f"{label} at eps {eps:g}"}
                for m in st["messages"]
            ]
        checks += _square_checks(acc_dict, eps)
        robust_out[eps] = robust | ~_in(points, len(x), x.device)
        per_eps.append(
            {
                "eps": eps,
                "n_points": n_pts,
                "ours_acc": acc_dict["ours"],
                "acc": float(robust[points].float().mean()) if n_pts else float("nan"),
                "n_attacked": int(before.sum()),
            }
        )
    return {
        "attacks": [s.label() for s in specs],
        "components": [p[4] for p in pieces],
        "n_points": n_pts,
        "eps": per_eps,
        "results": results,
        "checks": checks,
        "cost": total,
        "_robust": robust_out,
        "_robust_after": robust_after,
    }


def _model_checks(model, x, y, points, pieces, batch_size: int, device, total: Cost) -> list:
    """pyautoattack's model checks, once, on the clean evaluation points (they do not depend on eps)."""
    msgs: list = []
    chk_cost = Cost()
    xs, ys = x[points[:batch_size]], y[points[:batch_size]]
    with _session(model, device) as log:
        from pyautoattack import checks as aa_checks

        counted, lg = Counted(model, chk_cost), logging.getLogger(LOGGER)
        if all(v != "rand" for v, *_ in pieces):
            aa_checks.check_randomized(counted, xs, ys, bs=len(xs), logger=lg)
        n_cls = aa_checks.check_range_output(counted, xs, logger=lg)
        aa_checks.check_dynamic(counted, xs, False, logger=lg)
        targets = max(1, min(9, n_cls - 1))
        aa_checks.check_n_classes(n_cls, [p[1] for p in pieces], targets, targets, logger=lg)
        msgs.extend(log)
    total.add(chk_cost)
    return [{"flag": check_flag(m), "message": m, "where": "model checks"} for m in msgs]


def _run_piece(model, x, y, eps, piece, robust, seed, batch_size, path, key, interrupt) -> dict:
    """One (eps, attack) piece on the points still ``robust``, chunk by chunk, its state saved to
    ``path`` after every chunk and resumed from it (chunks already attacked are skipped)."""
    version, name, steps, restarts, label = piece
    st = _load_piece(path, key)
    todo = [i for i in robust.nonzero().squeeze(1).tolist() if i not in st["attacked_set"]]
    for c in range(0, len(todo), batch_size):
        chunk = todo[c : c + batch_size]
        idx = torch.tensor(chunk, device=x.device)
        cost, msgs = Cost(), []
        _, after = run_plan(
            model,
            x[idx],
            y[idx],
            eps,
            version,
            [(name, steps, restarts)],
            _chunk_seed(seed, eps, label, chunk[0]),
            cost,
            msgs,
        )
        st["attacked"] += chunk
        st["attacked_set"].update(chunk)
        st["broken"] += [i for i, ok in zip(chunk, after[-1].tolist()) if not ok]
        st["cost"].add(cost)
        st["messages"] += [m for m in msgs if m not in st["messages"]]
        _save_piece(path, key, st)
        if interrupt is not None:
            interrupt(eps, label)
    return st


def _square_checks(acc_dict: dict, eps: float) -> list:
    """pyautoattack's ``check_square_sr`` when Square ran after other attacks (cumulative robust
    accuracy after each attack, as in ``run_standard_evaluation``)."""
    if "square" not in acc_dict or len(acc_dict) <= 2:
        return []
    from pyautoattack import checks as aa_checks

    cap = _Capture()
    lg = logging.getLogger(LOGGER)
    lg.addHandler(cap)
    prop, lg.propagate = lg.propagate, False
    try:
        aa_checks.check_square_sr(dict(acc_dict), logger=lg)
    finally:
        lg.removeHandler(cap)
        lg.propagate = prop
    return [{"flag": check_flag(m), "message": m, "where": f"eps {eps:g}"} for m in cap.messages]


def _in(points: torch.Tensor, n: int, device) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool, device=device)
    m[points] = True
    return m


def _load_piece(path, key: dict) -> dict:
    st = {"attacked": [], "broken": [], "cost": Cost(), "messages": []}
    if path is not None and path.exists():
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            d = None
        if isinstance(d, dict) and d.get("key") == key:
            st = {
                "attacked": list(d["attacked"]),
                "broken": list(d["broken"]),
                "cost": Cost(**d["cost"]),
                "messages": list(d.get("messages", [])),
            }
    st["attacked_set"] = set(st["attacked"])
    return st


def _save_piece(path, key: dict, st: dict) -> None:
    if path is None:
        return
    from .rundir import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        {
            "key": key,
            "attacked": st["attacked"],
            "broken": st["broken"],
            "cost": st["cost"].as_dict(),
            "messages": st["messages"],
        },
        path,
    )
