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
class Work:
    """Expected work of one step: forward+backward ``passes`` (per example) and ``iterations``
    (attack-loop iterations over a batch, each with a fixed cost), for ``attack`` (its name; "" for
    the clean pass and the Jacobians)."""

    stage: str
    attack: str
    passes: float
    iterations: float


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
    probe_eps: tuple = ()  # the evaluated eps the masking probe also runs at (``cfg.probe_at()``)
    probe_points: Optional[int] = None  # the probe's subset (``cfg.probe_points``; None: every point)

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
            probe_eps=tuple(cfg.probe_at()),
            probe_points=cfg.probe_points,
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
    def step_work(self, step: Step, attacked: float, robust_after: float, k: Optional[int] = None) -> Work:
        """Expected work of ``step`` on ``attacked`` of ``k`` points (default n_eval) of which
        ``robust_after`` survive it. Passes: survivors cost the attack's full passes, broken points
        :data:`BROKEN_SHARE` of them (early exit; APGD without early exit the full passes).
        Iterations (what a per-iteration fixed cost multiplies; it dominates on small batches): a
        chunk with a survivor runs the attack's whole loop, one whose points all break early a share
        of it."""
        a = step.spec.attack
        full = step.spec.passes_per_point(self.num_classes)
        early = 1.0 if a.pyautoattack and not a.targeted and not a.black_box else BROKEN_SHARE
        passes = robust_after * full + max(0.0, attacked - robust_after) * full * early
        k = k or self.n_points
        per_chunk = max(1.0, k / self.n_chunks)
        p_any = 1 - (1 - min(1.0, attacked / k)) ** per_chunk
        p_left = 1 - (1 - min(1.0, robust_after / k)) ** per_chunk
        loop = step.spec.steps * step.spec.restarts * a.n_target_classes(self.num_classes)
        iterations = self.n_chunks * (p_left + max(0.0, p_any - p_left) * early) * loop
        return Work(step.stage, step.spec.name, passes, iterations)

    def expected_work(self, robust: Callable[[float, str], float]) -> list:
        """Expected :class:`Work` of every step, given ``robust(eps, stage)``: the share of the n_eval
        points robust after our attacks ("ours") and after AutoAttack ("autoattack") at an eps (a
        prior for the dry run, or measured shares); with the clean pass, the Jacobians and the
        masking probe. Upper bounds."""
        n = self.n_points
        out = [Work("clean", "", n * (1 + 1 / QUERIES_PER_PASS), self.n_chunks)]
        prev = {OURS: 1.0, AUTOATTACK: 1.0}
        for eps in self.linf_eps[1:]:
            r_ours, r_aa = robust(eps, OURS), robust(eps, AUTOATTACK)
            before = prev[OURS] if self.reuse_eps else robust(0.0, OURS)
            out += [self.step_work(s, n * before, n * r_ours) for s in self.steps_at(eps, OURS)]
            listed = self.aa_listed(eps)
            share = min(r_ours, prev[AUTOATTACK])
            if listed or (listed is None and self.informative(share)):
                k = self.aa_points or n
                comps = self.steps_at(eps, AUTOATTACK)
                for i, s in enumerate(comps):
                    # the survivors fall from ours to AutoAttack's over the components, geometrically
                    left = share * (r_aa / max(share, 1e-9)) ** (i / max(1, len(comps)))
                    after = share * (r_aa / max(share, 1e-9)) ** ((i + 1) / max(1, len(comps)))
                    out.append(self.step_work(s, k * left, k * after, k))
                prev[AUTOATTACK] = min(r_aa, share)
            else:
                prev[AUTOATTACK] = share
            prev[OURS] = r_ours
        for s in (s for s in self.steps if s.stage == OTHER_NORM):
            out.append(self.step_work(s, n, n * robust(s.eps, OURS)))
        steps = self.reference.steps if self.reference else 20
        jac_chunks = min(self.n_chunks, self.jacobian_points)
        jac_loop = 2 * self.num_classes + steps + 2
        out.append(Work("jacobian", "", self.jacobian_points * jac_loop, jac_chunks * jac_loop))
        return out + self.probe_work(robust)

    def expected_passes(self, robust: Callable[[float, str], float]) -> dict:
        """Expected passes per stage (``clean``, ours, autoattack, other norm, ``jacobian``, ``probe``)."""
        out = {"clean": 0.0, OURS: 0.0, AUTOATTACK: 0.0, OTHER_NORM: 0.0, "jacobian": 0.0, "probe": 0.0}
        for w in self.expected_work(robust):
            out[w.stage] += w.passes
        return out

    def probe_work(self, robust: Callable[[float, str], float]) -> list:
        """The masking probe at the eps where the reference is closest to 50 % and at every
        ``probe_eps`` it leaves at least 5 % robust: the strong CE-PGD (4x steps, 4x restarts) and
        Square-1000 on the reference's survivors there."""
        from ..attacks import black_box_attack
        from .probe import (
            INFORMATIVE_MIN_ACC,
            PROBE,
            PROBE_RESTARTS_FACTOR,
            PROBE_SQUARE_QUERIES,
            PROBE_STEPS_FACTOR,
        )

        pos = [e for e in self.linf_eps if e > 0]
        if self.reference is None or not pos:
            return []
        eps = min(pos, key=lambda e: abs(robust(e, OURS) - 0.5))
        extra = [e for e in pos if e != eps and e in self.probe_eps]
        ref = self.reference
        strong = AttackSpec(
            ref.name, ref.steps * PROBE_STEPS_FACTOR, ref.step_size, ref.restarts * PROBE_RESTARTS_FACTOR
        )
        square = AttackSpec(black_box_attack().name, PROBE_SQUARE_QUERIES)
        out = []
        # the strong attack on the probe's points, Square on those of them AutoAttack has (nested)
        k_strong = min(self.n_points, self.probe_points or self.n_points)
        on = [(strong, k_strong), (square, min(k_strong, self.aa_points or self.n_points))]
        for e in [eps] + [e for e in extra if robust(e, OURS) >= INFORMATIVE_MIN_ACC]:
            for spec, k in on:
                # on the reference's survivors: the strong attack breaks few of them (full cost), Square some
                left = k * robust(e, OURS)
                out.append(self.step_work(Step(e, spec, PROBE), left, left, k))
        return out

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
