"""One evaluation plan per trial, built once from its config (:meth:`EvalPlan.of`): the evaluation
executes it (:mod:`.engine`), the dry run sums its expected passes (``sweeps/cost.py``), the progress
line reports on it (:mod:`.progress`).

The plan, per L-inf eps in ascending order:

1. **ours**: every one of our L-inf attacks (``cfg.attacks``), each on the points it left robust at
   the previous eps (``reuse_eps``: a point an attack broke at a smaller eps is broken at every
   larger one, since its adversarial example lies inside the larger ball, and is not attacked by it
   again);
2. **autoattack**: the AutoAttack components (``cfg.autoattack``: standard = APGD-CE, APGD-T, FAB-T,
   Square-5000), in order, on the points every attack so far left robust (ours at this eps,
   AutoAttack and ours at the smaller eps), among the AutoAttack points. Where: the listed
   ``autoattack_eps``, or by default every eps where ours leave between ``autoattack_informative``
   [lo, hi] of the points robust (decided at run time: outside that band AutoAttack cannot move the
   cell by more than lo, or the model is not attacked at all).

Then our attacks of another norm (L2) at their own radii, with the same reuse. The points are cut
into fixed chunks (:meth:`EvalPlan.chunks`): the unit a rank takes, a seed is drawn for, and a
requeued evaluation resumes by; they do not depend on the number of ranks, so a sharded evaluation
gives, per point, exactly the outcome of a one-rank one.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..attacks import LINF, QUERIES_PER_PASS, AttackSpec, reference_attack
from ..attacks.autoattack import plan_of

OURS, AUTOATTACK, OTHER_NORM = "ours", "autoattack", "other norm"
BROKEN_SHARE = 0.25  # expected share of a point's full passes an early-exiting attack spends to break it


@dataclass(frozen=True)
class Step:
    """One attack at one eps: ``spec`` (ours, or one AutoAttack component with its steps and
    restarts), its ``stage`` (ours, autoattack, other norm) and the AutoAttack ``version`` and
    ensemble (``part_of``) of a component."""

    eps: float
    spec: AttackSpec
    stage: str
    version: Optional[str] = None
    part_of: Optional[str] = None

    @property
    def label(self) -> str:
        return self.spec.label()

    @property
    def key(self) -> str:
        """Names the step in the evaluation state and the progress line."""
        return f"{self.stage}|{self.eps:g}|{self.label}"


@dataclass(frozen=True)
class EvalPlan:
    n_points: int
    num_classes: int
    chunk_points: int
    linf_eps: tuple  # every evaluated L-inf eps, ascending (0 = clean)
    ours: tuple  # our L-inf attacks (AttackSpec), in the config's order
    steps: tuple  # every Step, in the order they run
    aa_eps: Optional[tuple]  # the listed AutoAttack eps; None: the informative rule
    aa_band: tuple  # (lo, hi) of the informative rule
    aa_points: Optional[int]
    reuse_eps: bool
    reference: Optional[AttackSpec]  # the white-box reference (masking probe, Jacobians' PGD points)
    jacobian_points: int
    seed: int

    @classmethod
    def of(cls, cfg) -> EvalPlan:
        from ..data import dataset_info

        n = cfg.n_eval
        chunk = cfg.chunk_points or min(cfg.eval_batch_size, max(1, math.ceil(n / 8)))
        eval_eps = cfg.eval_eps()
        ours = [s for s in cfg.attacks if s.attack.norm == LINF]
        linf = sorted({e for s in ours for e in s.eps_list(eval_eps)} | {0.0})
        components = [
            (version, AttackSpec(name, steps, restarts=restarts), spec.name if spec.attack.ensemble else None)
            for spec in cfg.autoattack
            for version, plan in [plan_of(spec)]
            for name, steps, restarts in plan
        ]
        steps = []
        for eps in (e for e in linf if e > 0):
            steps += [Step(eps, s, OURS) for s in ours if eps in s.eps_list(eval_eps)]
            steps += [Step(eps, c, AUTOATTACK, v, part) for v, c, part in components]
        for s in (s for s in cfg.attacks if s.attack.norm != LINF):
            steps += [Step(e, s, OTHER_NORM) for e in sorted(set(s.eps_list(eval_eps))) if e > 0]
        aa = cfg.aa_eps()
        return cls(
            n_points=n,
            num_classes=dataset_info(cfg.dataset).num_classes,
            chunk_points=min(chunk, n),
            linf_eps=tuple(linf),
            ours=tuple(ours),
            steps=tuple(steps),
            aa_eps=None if aa is None else tuple(aa),
            aa_band=tuple(cfg.autoattack_informative),
            aa_points=cfg.autoattack_points,
            reuse_eps=cfg.reuse_eps,
            reference=reference_attack(cfg.attacks),
            jacobian_points=min(cfg.jacobian_points, n),
            seed=cfg.seed,
        )

    # ------------------------------------------------------------------ points
    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_points / self.chunk_points)

    def chunk(self, c: int) -> np.ndarray:
        """The point indices (into the n_eval points) of chunk ``c``: every ``n_chunks``-th point
        from ``c`` on, so every chunk is a sample of the whole (classes, Jacobian points)."""
        return np.arange(c, self.n_points, self.n_chunks, dtype=np.int64)

    def chunks_of(self, rank: int, world: int) -> list:
        return [c for c in range(self.n_chunks) if c % world == rank]

    @property
    def has_autoattack(self) -> bool:
        return any(s.stage == AUTOATTACK for s in self.steps) and self.aa_eps != ()

    def aa_listed(self, eps: float) -> Optional[bool]:
        """Whether AutoAttack runs at ``eps`` by the listed eps; None when the informative rule decides."""
        if not self.has_autoattack:
            return False
        return None if self.aa_eps is None else any(abs(eps - e) <= 1e-9 for e in self.aa_eps)

    def informative(self, robust_share: float) -> bool:
        lo, hi = self.aa_band
        return lo <= robust_share <= hi

    def steps_at(self, eps: float, stage: str) -> list:
        return [s for s in self.steps if s.stage == stage and s.eps == eps]

    def key(self) -> str:
        """A hash of everything a chunk's saved outcomes depend on besides the model's weights."""
        blob = json.dumps(
            {
                "steps": [[s.key, s.spec.step_size, s.spec.random_start, s.version] for s in self.steps],
                "n": self.n_points,
                "chunk": self.chunk_points,
                "aa": [self.aa_eps, self.aa_band, self.aa_points],
                "reuse": self.reuse_eps,
                "seed": self.seed,
            },
            sort_keys=True,
            default=str,
        ).encode()
        return hashlib.sha1(blob).hexdigest()[:16]

    # ------------------------------------------------------------------ cost
    def step_passes(self, step: Step, attacked: float, robust_after: float) -> float:
        """Expected forward+backward passes of ``step`` on ``attacked`` points of which ``robust_after``
        survive it: survivors cost the attack's full passes, broken points :data:`BROKEN_SHARE` of
        them (early exit), APGD without early exit the full passes."""
        full = step.spec.passes_per_point(self.num_classes)
        early = 1.0 if step.spec.attack.pyautoattack and not step.spec.attack.targeted else BROKEN_SHARE
        if step.spec.attack.black_box:
            early = BROKEN_SHARE
        return robust_after * full + max(0.0, attacked - robust_after) * full * early

    def expected_passes(self, robust: Callable[[float, str], float]) -> dict:
        """Expected passes per stage, given ``robust(eps, stage)``: the share of the n_eval points
        robust after our attacks ("ours") and after AutoAttack ("autoattack") at an eps (a prior for
        the dry run, or measured shares). Includes the clean pass and the Jacobians (``jacobian``)
        and the masking probe (``probe``), upper bounds."""
        n = self.n_points
        out = {"clean": n * (1 + 1 / QUERIES_PER_PASS), OURS: 0.0, AUTOATTACK: 0.0, OTHER_NORM: 0.0}
        prev = {OURS: 1.0, AUTOATTACK: 1.0}
        for eps in self.linf_eps[1:]:
            r_ours, r_aa = robust(eps, OURS), robust(eps, AUTOATTACK)
            before = prev[OURS] if self.reuse_eps else robust(0.0, OURS)
            for s in self.steps_at(eps, OURS):
                out[OURS] += self.step_passes(s, n * before, n * r_ours)
            listed = self.aa_listed(eps)
            share = min(r_ours, prev[AUTOATTACK])
            if listed or (listed is None and self.informative(share)):
                k = self.aa_points or n
                comps = self.steps_at(eps, AUTOATTACK)
                for i, s in enumerate(comps):
                    # the survivors fall from ours to AutoAttack's over the components, geometrically
                    left = share * (r_aa / max(share, 1e-9)) ** (i / max(1, len(comps)))
                    after = share * (r_aa / max(share, 1e-9)) ** ((i + 1) / max(1, len(comps)))
                    out[AUTOATTACK] += self.step_passes(s, k * left, k * after)
                prev[AUTOATTACK] = min(r_aa, share)
            else:
                prev[AUTOATTACK] = share
            prev[OURS] = r_ours
        for s in (s for s in self.steps if s.stage == OTHER_NORM):
            out[OTHER_NORM] += self.step_passes(s, n, n * robust(s.eps, OURS))
        k = self.num_classes
        steps = self.reference.steps if self.reference else 20
        out["jacobian"] = self.jacobian_points * (2 * k + steps + 2)
        out["probe"] = self.probe_passes(robust)
        return out

    def probe_passes(self, robust: Callable[[float, str], float]) -> float:
        """The masking probe at the eps where the reference is closest to 50 %: the strong CE-PGD
        (4x steps, 4x restarts) and Square-1000 on the reference's survivors there."""
        from .probe import PROBE_RESTARTS_FACTOR, PROBE_SQUARE_QUERIES, PROBE_STEPS_FACTOR

        if self.reference is None:
            return 0.0
        pos = [e for e in self.linf_eps if e > 0]
        if not pos:
            return 0.0
        eps = min(pos, key=lambda e: abs(robust(e, OURS) - 0.5))
        left = self.n_points * robust(eps, OURS)
        ref = self.reference
        strong = ref.steps * ref.restarts * PROBE_STEPS_FACTOR * PROBE_RESTARTS_FACTOR
        return left * (strong + PROBE_SQUARE_QUERIES / QUERIES_PER_PASS)

    def describe(self) -> list:
        """One line per eps: what runs there, for the dry run and docs."""
        lines = []
        for eps in self.linf_eps[1:]:
            ours = ", ".join(s.label for s in self.steps_at(eps, OURS))
            aa = ", ".join(s.label for s in self.steps_at(eps, AUTOATTACK))
            listed = self.aa_listed(eps)
            when = (
                "if our attacks leave {:g}-{:g} of the points robust".format(*self.aa_band)
                if listed is None
                else ("always" if listed else "not run")
            )
            lines.append(f"eps {eps:g}: {ours}" + (f"; then {aa} on their survivors ({when})" if aa else ""))
        return lines
