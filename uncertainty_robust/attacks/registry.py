"""The one attack registry: every attack is an :class:`Attack` record, and everything that needs to
know something about an attack asks the record, never its name.

A record carries, besides the function and its paper:

- its **norm** (:data:`LINF` or :data:`L2`, the one spelling) and its **step rule**
  (:func:`default_step_size`, or the attack's own schedule, ``step_text``);
- its **roles**: ``reference`` (the white-box reference: the CE-loss PGD that the masking audit
  measures the others against, that the Jacobians' adversarial points and the transfer attack use),
  ``margin_twin_of`` (the same loop on the margin loss as another attack: CW is PGD's twin, which
  the audit's ``margin_beats_ce`` compares at equal steps), ``single_step`` (the single-step check:
  FGSM), ``black_box`` (the gradient-free check: Square), ``targeted`` (runs once per target
  class: :meth:`Attack.n_target_classes`);
- its **cost per point** (:meth:`Attack.passes_per_point`), which the evaluation plan sums for the
  dry run and the progress line.

:class:`AttackSpec` is one configured use of an attack (``NAME[:STEPS[xRESTARTS]]``, the one parser
behind the CLI and the grids). Attack modules register themselves; the package's ``__init__``
imports each of them (after torchattacks' ``__init__``), so this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

LINF, L2 = "Linf", "L2"  # the norms, one spelling
OURS_SOURCE, AUTOATTACK_SOURCE = "ours", "autoattack"  # who wrote an attack: this package, or pyautoattack
NORMS = (LINF, L2)
QUERIES_PER_PASS = 3  # a forward-only query (Square) costs about a third of a forward+backward pass


def default_step_size(eps: float, steps: int) -> float:
    """2.5 * eps / steps: Madry et al. 2018's rule of thumb (as in the robustness library), the step
    of every fixed-step PGD here, in evaluation and in training, unless a step is given."""
    return 2.5 * eps / max(1, steps)


def n_target_classes(num_classes: int) -> int:
    """Target classes of a targeted attack: the min(9, K - 1) most likely wrong classes (AutoAttack's
    standard setting)."""
    return max(1, min(9, num_classes - 1))


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

    @property
    def passes(self) -> float:
        """Forward+backward pass equivalents: a forward alone counts a third (:data:`QUERIES_PER_PASS`)."""
        return self.backward + max(0, self.forward - self.backward) / QUERIES_PER_PASS

    def as_dict(self) -> dict:
        return {"forward": self.forward, "backward": self.backward, "seconds": round(self.seconds, 4)}


@dataclass(frozen=True, kw_only=True)
class Attack:
    """Everything the project knows about one attack: the CLI and grids name it, the evaluation
    plan runs and costs it, the audit finds its roles, the reports print its settings."""

    name: str
    fn: Callable  # fn(model, x, y, eps, steps=, step_size=, restarts=, random_start=, cost=) -> x_adv
    norm: str  # LINF or L2: which epsilons are comparable; only L-inf attacks enter the worst case
    loss: str  # "ce", "margin", "dlr", "targeted dlr", ... (what the attack maximises)
    paper: str
    default_steps: int
    single_step: bool = False  # the single-step check (FGSM): one step of size eps, no restarts
    reference: bool = False  # the white-box reference (CE-loss PGD)
    margin_twin_of: Optional[str] = None  # the same loop as this attack, on the margin loss
    black_box: bool = False  # gradient-free, outputs only: the black-box check (Square)
    targeted: bool = False  # runs once per target class (n_target_classes)
    source: str = OURS_SOURCE  # or AUTOATTACK_SOURCE (pyautoattack, Croce & Hein's own code)
    components: tuple = ()  # an ensemble: the attacks it runs in this order, each on the points still robust
    version: Optional[str] = None  # an AutoAttack ensemble's pyautoattack version ("standard", "rand")
    unit: str = "steps"  # what STEPS counts: "steps", "iterations" or "queries"
    step_text: Optional[str] = None  # the step rule when it is not a fixed size (APGD: adaptive)
    extra_passes: float = 0.0  # per step, beyond one forward+backward (FAB: one more forward)

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"attack {self.name!r}: norm {self.norm!r} is not one of {NORMS}")

    @property
    def ensemble(self) -> bool:
        return bool(self.components)

    @property
    def pyautoattack(self) -> bool:
        """Croce & Hein's own code (run per chunk through ``attacks.autoattack.run_plan``)."""
        return self.source == AUTOATTACK_SOURCE

    @property
    def takes_steps(self) -> bool:
        """Whether ``NAME:STEPSxRESTARTS`` may set steps and restarts (not for FGSM or an ensemble)."""
        return not (self.single_step or self.ensemble)

    def n_target_classes(self, num_classes: int) -> int:
        return n_target_classes(num_classes) if self.targeted else 1

    def step_size(self, eps: float, steps: int, given: Optional[float] = None) -> Optional[float]:
        """The step actually used: ``given``, else eps for a single-step attack, else
        :func:`default_step_size`; None for an attack with its own step schedule (``step_text``)."""
        if given is not None:
            return given
        if self.step_text is not None:
            return None
        return eps if self.single_step else default_step_size(eps, steps)

    def step_rule(self, steps: int, given: Optional[float] = None) -> str:
        """The step as text for table headers: "eps", "2.5*eps/20", "adaptive (APGD)" or the given number."""
        if given is not None:
            return f"{given:g}"
        if self.step_text is not None:
            return self.step_text
        return "eps" if self.single_step else f"2.5*eps/{steps}"

    def passes_per_point(self, steps: int, restarts: int, num_classes: int) -> float:
        """Forward+backward passes spent on one point the attack cannot break (an upper bound: a
        point broken early costs less): steps x restarts x target classes, a forward-only query at
        a third; an ensemble sums its components at their default settings."""
        if self.ensemble:
            return sum(
                ATTACKS[c].passes_per_point(ATTACKS[c].default_steps, 1, num_classes) for c in self.components
            )
        per = steps * restarts * self.n_target_classes(num_classes)
        if self.black_box:
            return per / QUERIES_PER_PASS
        return per * (1 + self.extra_passes) + (0 if self.single_step else restarts / QUERIES_PER_PASS)


ATTACKS: dict[str, Attack] = {}


def register_attack(a: Attack) -> Attack:
    if a.name in ATTACKS:
        raise ValueError(f"attack {a.name!r} registered twice")
    ATTACKS[a.name] = a
    return a


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
    eps: Optional[list] = field(default=None)

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

    def passes_per_point(self, num_classes: int) -> float:
        return self.attack.passes_per_point(self.steps, self.restarts, num_classes)

    def check(self, key: str, l2_max: Optional[float] = None) -> None:
        """Raise ConfigError(``key``.field) when a setting does not fit the attack (one line)."""
        from ..errors import ConfigError

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
            if a.norm != LINF:
                raise ConfigError(
                    f"{key}.eps",
                    f"{self.name} is an {a.norm} attack: give it its own list of {a.norm} radii, "
                    f"e.g. {{name: {self.name}, eps: [0.5, 1.0, 2.0]}} (the test_eps are L-inf)",
                )
            return
        hi = 1.0 if a.norm == LINF else (l2_max if l2_max is not None else 1e4)
        if not isinstance(self.eps, list) or not self.eps:
            raise ConfigError(f"{key}.eps", f"expected a non-empty list of numbers in [0, {hi:g}]")
        for i, e in enumerate(self.eps):
            if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e <= hi:
                raise ConfigError(f"{key}.eps[{i}]", f"expected a number in [0, {hi:g}], got {e!r}")
        if len(set(map(float, self.eps))) != len(self.eps):
            raise ConfigError(f"{key}.eps", f"{self.eps!r} lists an epsilon twice; give each once")

    @classmethod
    def parse(cls, text: str, key: str = "attacks") -> AttackSpec:
        """``NAME[:STEPS[xRESTARTS]]``, e.g. ``fgsm``, ``pgd:20``, ``cw:30x5``, ``apgd-ce:50``,
        ``square:1000``, ``autoattack``: the one parser behind the CLI and the grids. Raises
        ConfigError(key) on a malformed string or an unknown name."""
        from ..errors import ConfigError

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


# ------------------------------------------------------------------------------ roles
def reference_attack(specs: list) -> Optional[AttackSpec]:
    """The white-box reference among ``specs``: the reference-role attack (CE-loss PGD) with the most
    steps x restarts (then steps); None when the evaluation runs none."""
    cands = [s for s in specs if s.attack.reference]
    return max(cands, key=lambda s: (s.steps * s.restarts, s.steps)) if cands else None


def margin_twin(spec: AttackSpec) -> Optional[AttackSpec]:
    """The attack that runs ``spec``'s loop on the margin loss, at ``spec``'s steps, restarts, step
    size and random start (CW for PGD); None when none is registered."""
    twin = next((a for a in ATTACKS.values() if a.margin_twin_of == spec.name), None)
    if twin is None:
        return None
    return AttackSpec(twin.name, spec.steps, spec.step_size, spec.restarts, spec.random_start)


def same_setting(a: AttackSpec, b: AttackSpec) -> bool:
    return (a.name, a.steps, a.restarts, a.step_size, a.random_start) == (
        b.name,
        b.steps,
        b.restarts,
        b.step_size,
        b.random_start,
    )


def single_step_checks(specs: list) -> list:
    """The single-step attacks among ``specs`` (FGSM): the audit's FGSM-vs-PGD checks."""
    return [s for s in specs if s.attack.single_step]


def black_box_attack() -> Attack:
    """The gradient-free attack the masking probe runs (the first registered black-box attack)."""
    return next(a for a in ATTACKS.values() if a.black_box and not a.ensemble)


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
