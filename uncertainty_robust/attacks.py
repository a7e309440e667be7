"""White-box attacks in pixel space ([0,1] inputs), batched, gradients w.r.t. the input only.

One interface, after torchattacks: ``attack(model, x, y, eps, ...) -> x_adv``. The caller chooses
the model's mode; :func:`run_suite` puts the model in eval mode for evaluation and restores it.

- FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps.
- PGD-Linf / PGD-L2 (Madry et al. 2018): random start in the ball, ``steps`` steps, projection,
  ``restarts`` restarts keeping the per-example worst case.
- CW-Linf: PGD on the margin loss max_{j!=y} z_j - z_y (Carlini & Wagner 2017's loss inside a
  PGD loop, as in mnist_challenge's ``loss_func: cw``); it does not rely on softmax
  probabilities, so it sees through the flat softmax that LS/EntM can produce.

During evaluation every iterate is checked: an example that is misclassified at any step counts
as broken and keeps that adversarial input (the usual "best iterate" of AutoAttack).

AutoAttack (Croce & Hein 2020: APGD-CE, APGD-T, FAB-T, Square and the ensembles ``autoattack``
and ``autoattack-rand``) is the authors' own code (``pyautoattack``), registered in the same
registry by :mod:`uncertainty_robust.autoattack`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> per-example loss


@dataclass
class Cost:
    """Forward/backward passes counted in examples (a batch of 128 is 128 passes), and seconds."""

    forward: int = 0
    backward: int = 0
    seconds: float = 0.0

    def add(self, other: Cost) -> None:
        self.forward += other.forward
        self.backward += other.backward
        self.seconds += other.seconds

    def as_dict(self) -> dict:
        return {"forward": self.forward, "backward": self.backward, "seconds": round(self.seconds, 4)}


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
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (delta.dim() - 1))
    return delta * torch.clamp(eps / n, max=1.0)


def _random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    d = torch.randn_like(x)
    n = d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
    r = torch.rand(len(x), device=x.device).pow(1.0 / x[0].numel()).view_as(n)  # uniform in the ball
    return d / n.clamp_min(1e-12) * r * eps


def _step(g: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    if norm == "linf":
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
    norm: str = "linf",
    restarts: int = 1,
    random_start: bool = True,
    loss: str | LossFn = "ce",
    track_best: bool = True,
    cost: Optional[Cost] = None,
) -> torch.Tensor:
    """Projected gradient ascent on ``loss`` within the eps-ball around x, clipped to [0,1].

    step_size None -> 2.5 * eps / steps. With ``track_best`` (evaluation) every iterate is checked
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
    step_size = step_size if step_size is not None else 2.5 * eps / steps
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
    return pgd(model, x, y, eps, norm="linf", **kw)


def pgd_l2(model, x, y, eps, **kw):
    """PGD-L2, projected gradient descent in the L2 ball (eps is an L2 radius in pixel units).

    Paper: Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks.
    Norm: L2. Loss: cross-entropy. Step: the gradient normalised to unit L2 norm times ``step_size``.
    Arguments: ``eps``, ``steps`` (20), ``step_size`` (None: 2.5 * eps / steps), ``restarts`` (1),
    ``random_start`` (True: uniform in the ball), ``track_best`` (True), ``cost``. See :func:`pgd`.
    """
    return pgd(model, x, y, eps, norm="l2", **kw)


def cw_linf(model, x, y, eps, **kw):
    """CW-Linf: PGD on the Carlini-Wagner margin loss max_{j != y} z_j - z_y in the L-inf ball.

    Paper: Carlini & Wagner 2017, Towards Evaluating the Robustness of Neural Networks (the loss),
    inside Madry et al. 2018's PGD loop, as in mnist_challenge's ``loss_func: cw``.
    Norm: L-inf. Loss: margin (no softmax, so a flat softmax does not hide its gradient).
    Arguments: ``eps``, ``steps`` (20), ``step_size`` (None: 2.5 * eps / steps), ``restarts`` (1),
    ``random_start`` (True), ``track_best`` (True), ``cost``. See :func:`pgd`.
    """
    kw.setdefault("loss", "margin")
    return pgd(model, x, y, eps, norm="linf", **kw)


# ----------------------------------------------------------------------------- the attack registry
@dataclass(frozen=True)
class Attack:
    """Everything the project knows about one attack: the CLI and grids name it, the evaluation
    runs it, the reports print its settings, the cost estimate counts its passes."""

    name: str
    fn: Callable  # fn(model, x, y, eps, steps=, step_size=, restarts=, random_start=, cost=) -> x_adv
    norm: str  # "Linf" or "L2": which epsilons are comparable; only L-inf attacks enter the worst case
    loss: str  # "ce", "margin", "dlr", "targeted dlr", ... (what the attack maximises)
    single_step: bool  # FGSM-like: one step of size eps, no restarts
    default_steps: int
    paper: str
    source: str = "ours"  # "ours" (this module) or "autoattack" (pyautoattack, Croce & Hein's own code)
    components: tuple = ()  # an ensemble: the attacks it runs in this order, each on the points still robust
    unit: str = "steps"  # what STEPS counts: "steps", "iterations" or "queries"
    gradient_free: bool = False  # uses the model's outputs only (Square)
    step_text: Optional[str] = None  # the step rule when it is not a fixed size (APGD: adaptive)

    @property
    def ensemble(self) -> bool:
        return bool(self.components)

    @property
    def takes_steps(self) -> bool:
        """Whether ``NAME:STEPSxRESTARTS`` may set steps and restarts (not for FGSM or an ensemble)."""
        return not (self.single_step or self.ensemble)

    def step_size(self, eps: float, steps: int, given: Optional[float] = None) -> Optional[float]:
        """The step actually used: ``given``, else eps for a single-step attack, else 2.5 * eps / steps
        (Madry et al. 2018's rule of thumb, as in the robustness library); None for an attack with
        its own step schedule (``step_text``)."""
        if given is not None:
            return given
        if self.step_text is not None:
            return None
        return eps if self.single_step else 2.5 * eps / max(1, steps)

    def step_rule(self, steps: int, given: Optional[float] = None) -> str:
        """The step as text for table headers: "eps", "2.5*eps/20", "adaptive (APGD)" or the given number."""
        if given is not None:
            return f"{given:g}"
        if self.step_text is not None:
            return self.step_text
        return "eps" if self.single_step else f"2.5*eps/{steps}"


ATTACKS: dict[str, Attack] = {}


def register_attack(a: Attack) -> Attack:
    if a.name in ATTACKS:
        raise ValueError(f"attack {a.name!r} registered twice")
    ATTACKS[a.name] = a
    return a


register_attack(Attack("fgsm", fgsm, "Linf", "ce", True, 1, "Goodfellow et al. 2015"))
register_attack(Attack("pgd", pgd_linf, "Linf", "ce", False, 20, "Madry et al. 2018"))
register_attack(Attack("pgd_l2", pgd_l2, "L2", "ce", False, 20, "Madry et al. 2018"))
register_attack(Attack("cw", cw_linf, "Linf", "margin", False, 20, "Carlini & Wagner 2017 loss in PGD"))


@dataclass
class AttackSpec:
    """One evaluation attack, run at every test epsilon of the trial (or at its own ``eps``).

    ``steps`` None: the attack's default (1 for a single-step attack; iterations for APGD/FAB,
    queries for Square). ``step_size`` None: the attack's rule (:meth:`Attack.step_size`).
    ``eps`` None: the trial's ``test_eps``; an L2 attack must be given its own list of L2 radii
    (an L-inf eps such as 0.3 is a negligible L2 radius). ``label()`` names it in results: "fgsm",
    "pgd20", "cw30x5", "apgd-ce100", "square5000", "autoattack".
    """

    name: str = "pgd"
    steps: Optional[int] = None
    step_size: Optional[float] = None
    restarts: int = 1
    random_start: bool = True
    eps: Optional[list] = None

    def __post_init__(self):
        if self.steps is None and self.name in ATTACKS:
            self.steps = ATTACKS[self.name].default_steps

    @property
    def attack(self) -> Attack:
        return ATTACKS[self.name]

    def label(self) -> str:
        if not self.attack.takes_steps:
            return self.name
        r = f"x{self.restarts}" if self.restarts > 1 else ""
        return f"{self.name}{self.steps}{r}"

    def eps_list(self, test_eps: list) -> list:
        """The epsilons this attack runs at: its own, else the trial's."""
        return [float(e) for e in (self.eps if self.eps is not None else test_eps)]

    def check(self, key: str, l2_max: Optional[float] = None) -> None:
        """Raise ConfigError(``key``.field) when a setting does not fit the attack (one line)."""
        from .errors import ConfigError

        if self.name not in ATTACKS:
            raise ConfigError(f"{key}.name", f"{self.name!r} is not one of {', '.join(ATTACKS)}")
        a = self.attack
        for fld, lo, hi in (("steps", 1, 10**6), ("restarts", 1, 1000)):
            v = getattr(self, fld)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"{key}.{fld}", f"expected an integer in [{lo}, {hi}], got {v!r}")
        if not a.takes_steps and (self.steps, self.restarts) != (a.default_steps, 1):
            what = "a single-step attack" if a.single_step else "an ensemble with its authors' settings"
            raise ConfigError(f"{key}.steps", f"{self.name} is {what}; give it no steps or restarts")
        if self.step_size is not None:
            if a.step_text is not None or a.single_step:
                raise ConfigError(
                    f"{key}.step_size", f"{self.name} has its own step rule; give it no step_size"
                )
            if isinstance(self.step_size, bool) or not isinstance(self.step_size, (int, float)):
                raise ConfigError(f"{key}.step_size", f"expected a number in (0, 1], got {self.step_size!r}")
            if not 0 < self.step_size <= 1:
                raise ConfigError(f"{key}.step_size", f"{self.step_size!r} is out of range (0, 1]")
        if self.eps is None:
            if a.norm != "Linf":
                raise ConfigError(
                    f"{key}.eps",
                    f"{self.name} is an {a.norm} attack: give it its own list of {a.norm} radii, "
                    f"e.g. {{name: {self.name}, eps: [0.5, 1.0, 2.0]}} (the test_eps are L-inf)",
                )
            return
        hi = 1.0 if a.norm == "Linf" else (l2_max if l2_max is not None else 1e4)
        if not isinstance(self.eps, list) or not self.eps:
            raise ConfigError(f"{key}.eps", f"expected a non-empty list of numbers in [0, {hi:g}]")
        for i, e in enumerate(self.eps):
            if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e <= hi:
                raise ConfigError(f"{key}.eps[{i}]", f"expected a number in [0, {hi:g}], got {e!r}")

    @classmethod
    def parse(cls, text: str, key: str = "attacks") -> AttackSpec:
        """``NAME[:STEPS[xRESTARTS]]``, e.g. ``fgsm``, ``pgd:20``, ``cw:30x5``, ``apgd-ce:50``,
        ``square:1000``, ``autoattack``: the one parser behind the CLI and the grids. Raises
        ConfigError(key) on a malformed string or an unknown name."""
        from .errors import ConfigError

        if not isinstance(text, str):
            raise ConfigError(key, f"expected NAME[:STEPS[xRESTARTS]] or a mapping, got {text!r}")
        name, _, rest = text.strip().partition(":")
        if name not in ATTACKS:
            raise ConfigError(f"{key}.name", f"{name!r} is not one of {', '.join(ATTACKS)}")
        steps, _, restarts = rest.partition("x")
        try:
            return cls(name, steps=int(steps) if steps else None, restarts=int(restarts or 1))
        except ValueError:
            raise ConfigError(
                key, f"bad attack {text!r}; expected NAME[:STEPS[xRESTARTS]], e.g. pgd:20x2"
            ) from None


def run_attack(model, x, y, spec: AttackSpec, eps: float, cost: Optional[Cost] = None) -> torch.Tensor:
    """Run one :class:`AttackSpec` at one epsilon."""
    a = spec.attack
    if not a.takes_steps:
        return a.fn(model, x, y, eps, cost=cost)
    return a.fn(
        model,
        x,
        y,
        eps,
        steps=spec.steps,
        step_size=a.step_size(eps, spec.steps, spec.step_size),
        restarts=spec.restarts,
        random_start=spec.random_start,
        cost=cost,
    )


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


@dataclass
class SuiteResult:
    clean_correct: torch.Tensor  # bool (N,)
    correct: dict = field(default_factory=dict)  # (attack label, eps) -> bool (N,)
    worst: dict = field(default_factory=dict)  # eps -> bool (N,), over the L-inf attacks run at eps
    cost: dict = field(default_factory=dict)  # (attack label, eps) -> Cost
    adv_examples: dict = field(default_factory=dict)  # eps -> a few (x_adv, y, pred, attack, x) for reports


def run_suite(
    model, x, y, specs, eps_list, batch_size: int = 500, per_attack: bool = True, keep_examples: int = 0
) -> SuiteResult:
    """Evaluate every (attack, eps) and the per-example worst case over the L-inf attacks at each eps.

    Each attack runs at its own ``spec.eps`` if it has one, else at every eps of ``eps_list``; the
    worst case is kept at every L-inf eps any attack ran at. Only points still correctly classified
    are attacked. With ``per_attack`` each attack runs on every clean-correct point (so per-attack
    accuracies are exact and comparable, e.g. FGSM vs PGD) and the worst case is their AND; without
    it attacks run in order on the points that survived the previous ones (AutoAttack's early exit)
    and only the worst case is exact. An attack of another norm (``pgd_l2``) has an eps of another
    threat model: it always runs on every clean-correct point, is reported on its own and never
    enters the L-inf worst case. The model is put in eval mode and restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        clean = predict(model, x, batch_size) == y
        res = SuiteResult(clean_correct=clean)
        runs = [(spec, [float(e) for e in spec.eps_list(eps_list)]) for spec in specs]
        linf_eps = sorted({e for spec, es in runs if spec.attack.norm == "Linf" for e in es})
        other_eps = sorted({e for spec, es in runs if spec.attack.norm != "Linf" for e in es} - set(linf_eps))
        for eps in linf_eps + other_eps:
            worst = clean.clone()
            for spec, es in runs:
                if eps not in es:
                    continue
                label = spec.label()
                linf = spec.attack.norm == "Linf"
                mask = clean.clone() if per_attack or not linf else worst.clone()
                cost = Cost()
                if eps > 0:
                    t0 = time.perf_counter()
                    idx = mask.nonzero().squeeze(1)
                    for i in range(0, len(idx), batch_size):
                        b = idx[i : i + batch_size]
                        xa = run_attack(model, x[b], y[b], spec, eps, cost)
                        with torch.no_grad():
                            pred = model(xa).argmax(1)
                        cost.forward += len(b)
                        mask[b] = pred == y[b]
                        if keep_examples and linf and i == 0:  # the last L-inf attack's first batch wins
                            k = min(keep_examples, len(b))
                            res.adv_examples[eps] = (
                                xa[:k].cpu(),
                                y[b][:k].cpu(),
                                pred[:k].cpu(),
                                label,
                                x[b][:k].cpu(),
                            )
                    cost.seconds = time.perf_counter() - t0
                res.cost[(label, eps)] = cost
                if per_attack or not linf:
                    res.correct[(label, eps)] = mask
                if linf:
                    worst &= mask
            if eps in linf_eps:
                res.worst[eps] = worst
        return res
    finally:
        model.train(was_training)


from . import autoattack as _autoattack  # noqa: E402,F401  (registers apgd-ce, apgd-t, fab-t, square, autoattack, ...)
