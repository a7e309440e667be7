"""One typed config per trial. It flows YAML grid -> Tune param_space -> trainer -> result record.

Every choice the paper leaves open (see ``docs/paper.md``: none of its settings could be read)
is a field here, with the usual convention as the default and the source named next to it.

Each field carries its own schema (:mod:`.fields`, :func:`~.fields._f`): its rule (type, choices, bounds:
:mod:`uncertainty_robust.schema`, checked by one loop in :func:`validate`), where it lives in a
YAML grid (``grid``: a top-level key, ``section.key``, or one of the expanded axes), whether two
trials that differ in it are different rows of a table (``row``), its help text, and ``since``
(fields added after the trial hash was pinned: they enter :meth:`TrialConfig.trial_id` only when
set to something other than their default, so every existing run directory keeps its name). The
grid parser, the CLI and the reports derive their keys from it (:func:`grid_fields`, :func:`row_fields`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Optional

from ..attacks import AttackSpec
from ..defenses import DEFENSES
from ..errors import ConfigError
from .fields import AXES, CHECKPOINTS, OPTIMIZERS, SCHEDULES, Evaluation, Training

__all__ = [
    "AXES",
    "CHECKPOINTS",
    "OPTIMIZERS",
    "SCHEDULES",
    "AttackSpec",
    "ConfigError",
    "TrialConfig",
    "grid_fields",
    "merge_eps",
    "row_fields",
    "validate",
]


@dataclass
class TrialConfig(Evaluation, Training):
    """One trial's config: what is trained (:class:`~.fields.Training`) and how it is evaluated
    (:class:`~.fields.Evaluation`), every field with its rule beside it."""

    # ---------------------------------------------------------------- helpers
    def __post_init__(self):
        self.attacks = [a if isinstance(a, AttackSpec) else AttackSpec(**a) for a in self.attacks]
        self.autoattack = [a if isinstance(a, AttackSpec) else AttackSpec(**a) for a in self.autoattack]
        self.test_eps = [float(e) if _num(e) else e for e in self.test_eps]
        self.milestones = [float(m) if _num(m) else m for m in self.milestones]

    @property
    def defense_record(self):
        """This trial's :class:`~uncertainty_robust.defenses.Defense` record."""
        return DEFENSES[self.defense]

    @property
    def is_adversarial(self) -> bool:
        return self.defense_record.adversarial

    @property
    def eps_train(self) -> float:
        """The training eps, 0 for a defense that does not train on adversarial examples."""
        return self.eps if self.is_adversarial else 0.0

    @property
    def val_attack_eps(self) -> float:
        """The validation PGD's eps: ``val_eps``, else the training eps of an adversarial defense,
        else the smallest positive test eps (where a non-robust model still has accuracy to lose),
        else ``eps``."""
        if self.val_eps is not None:
            return float(self.val_eps)
        if self.is_adversarial:
            return float(self.eps)
        pos = [e for e in self.test_eps if e > 0]
        return float(min(pos)) if pos else float(self.eps)

    @property
    def jac_eps(self) -> float:
        """Where the Jacobians are measured besides the clean points: ``jacobian_eps`` else :attr:`val_attack_eps`."""
        return float(self.jacobian_eps) if self.jacobian_eps is not None else self.val_attack_eps

    @property
    def train_attack_steps(self) -> int:
        """Gradient steps of the training adversary per example: the defense's own (fast_at: 1), else ``pgd_steps``."""
        return self.defense_record.attack_steps or self.pgd_steps

    @property
    def train_step_size(self) -> float:
        from ..attacks import default_step_size

        return self.eps_step if self.eps_step is not None else default_step_size(self.eps, self.pgd_steps)

    def headline_eps(self) -> list:
        """The eps every trial reports even when ``test_eps`` lacks them: the dataset's conventional
        eps (``DatasetInfo``) and this trial's training eps (adversarial defenses)."""
        from ..data import dataset_info

        return [dataset_info(self.dataset).conventional_eps] + ([self.eps] if self.is_adversarial else [])

    def aa_eps(self) -> Optional[list]:
        """The eps AutoAttack is limited to: ``autoattack_eps`` (values within 1e-6 of an evaluated
        eps are that eps); None when the default rule decides at run time (every evaluated eps where
        our attacks leave an informative share robust); [] when ``autoattack`` is empty."""
        if not self.autoattack:
            return []
        if self.autoattack_eps is None:
            return None
        return listed_eps(self.eval_eps(), self.autoattack_eps)

    def probe_at(self) -> list:
        """The evaluated eps the masking probe is asked to run at besides its own rule's:
        ``probe_eps``, each value within 1e-6 of an evaluated eps being that eps (as :meth:`aa_eps`)."""
        return listed_eps(self.eval_eps(), self.probe_eps)

    def eval_eps(self) -> list:
        """Where our own attacks run: ``test_eps`` plus the masking probe's extra eps (``probe_eps``)
        and the AutoAttack eps (AutoAttack and the probe start from the points our attacks leave
        robust, so they must have run there too); with the default rule, plus the headline eps
        (:meth:`headline_eps`)."""
        base = merge_eps(self.test_eps, [float(e) for e in self.probe_eps])
        if not self.autoattack:
            return base
        if self.autoattack_eps is None:
            return merge_eps(base, self.headline_eps())
        return merge_eps(base, [float(e) for e in self.autoattack_eps])

    def to_dict(self) -> dict:
        """The fields as plain data (what ``dataclasses.asdict`` gives, without its deep copy of every
        value: a grid of 10,000 trials hashes each one)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict, check: bool = True) -> TrialConfig:
        """From a dict (a grid's trial, Tune's config, a result record's ``config``). ``check`` False
        skips :func:`validate` (reading records of finished trials whose dataset is not here)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown key; allowed: {', '.join(sorted(known))}")
        cfg = cls(**d)
        return validate(cfg) if check else cfg

    def trial_id(self) -> str:
        """Stable short hash of the config (what identifies a trial across relaunches). Fields with
        ``since`` enter it only when set to something other than their default."""
        d = self.to_dict()
        for f in dataclasses.fields(self):
            if f.metadata.get("since") is not None and d[f.name] == _default(f):
                del d[f.name]
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha1(blob).hexdigest()[:10]

    def dirname(self) -> str:
        """The trial's directory name in a run: ``<short name>_<trial id>``."""
        return f"{self.short_name()}_{self.trial_id()}"

    def shown(self) -> dict:
        """``lam`` and ``eps`` as a table shows them: "-" where the defense does not use the field
        (a config default, such as standard training's eps, is not a setting of the trial)."""
        return {
            "lam": f"{self.lam:g}" if self.defense_record.takes_lam else "-",
            "eps": f"{self.eps:g}" if self.is_adversarial else "-",
        }

    def short_name(self) -> str:
        parts = [self.defense]
        if self.defense_record.takes_lam:
            parts.append(f"lam{self.lam:g}")
        if self.is_adversarial:
            parts.append(f"eps{self.eps:g}")
        parts.append(f"s{self.seed}")
        return "_".join(parts)

    def method_label(self) -> str:
        """e.g. "AT+EntM (λ=0.5, ε=0.3)": the defense's display name, its lambda and train eps."""
        d, parts = self.defense_record, []
        if d.takes_lam:
            parts.append(f"{d.lam.symbol}={self.lam:g}")
        if d.adversarial:
            parts.append(f"ε={self.eps:g}")
        return d.display + (f" ({', '.join(parts)})" if parts else "")

    def row_key(self) -> dict:
        """The fields that make a table row: everything but seed and runtime settings."""
        return {k: v for k, v in self.to_dict().items() if k in row_fields()}


def _plain(v):
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, AttackSpec):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def listed_eps(evaluated: list, want) -> list:
    """The eps > 0 of ``evaluated`` that ``want`` lists, a value within 1e-6 being that eps (what
    :func:`merge_eps` merged): callers then test membership exactly."""
    return [e for e in evaluated if e > 0 and any(abs(e - float(w)) <= 1e-6 for w in want)]


def merge_eps(base: list, extra: list) -> list:
    """Sorted union of two eps lists; a value within 1e-6 of one already there is that one (8/255
    written as 0.0313725490 in a grid and computed as 8 / 255 are one eps)."""
    out: list = []
    for e in list(base) + list(extra):
        if not any(abs(float(e) - o) <= 1e-6 for o in out):
            out.append(float(e))
    return sorted(out)


def grid_fields() -> dict:
    """{grid key: field name}: ``dataset`` -> dataset, ``optimizer.lr`` -> lr, ``lambdas`` -> lam."""
    return {f.metadata["grid"]: f.name for f in dataclasses.fields(TrialConfig) if f.metadata.get("grid")}


def row_fields() -> tuple:
    return tuple(f.name for f in dataclasses.fields(TrialConfig) if f.metadata.get("row", True))


def validate(cfg: TrialConfig) -> TrialConfig:
    """Raise ConfigError (one line, naming the key) on the first bad value: every field's own rule
    (one loop), then the rules that relate fields (:mod:`uncertainty_robust.config_rules`)."""
    from .rules import check

    return check(cfg)
