"""One typed config per trial. It flows YAML grid -> Tune param_space -> trainer -> result record.

Every choice the paper leaves open (see ``docs/paper.md``: none of its settings could be read)
is a field here, with the usual convention as the default and the source named next to it.

Each field carries its own schema (see :func:`_f`): its rule (type, choices, bounds:
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
import math
from dataclasses import dataclass, fields
from typing import Optional

from . import schema as S
from .accel import PRECISIONS
from .attacks import ATTACKS, AttackSpec
from .defenses import DEFENSES
from .errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")
CHECKPOINTS = ("last", "best")  # which weights the final evaluation reads (best: by val/robust_acc)
AXES = ("defenses", "lambdas", "train_eps", "seeds")  # grid keys expanded into one trial per value
EPS = S.number(0.0, 1.0)  # an L-inf radius in pixel units ([0, 1] inputs)
POS_EPS = S.number(0.0, 1.0, lo_open=True)

__all__ = ["AttackSpec", "ConfigError", "TrialConfig", "validate", "grid_fields", "row_fields"]


def _datasets():
    from .data import DATASETS  # data pulls torchvision lazily

    return sorted(DATASETS)


def _models():
    from .models import MODELS

    return sorted(MODELS)


def _f(
    default=dataclasses.MISSING,
    *,
    grid: Optional[str],
    rule: Optional[S.Rule] = None,
    row: bool = True,
    help: str = "",
    factory=None,
    since: Optional[int] = None,
):
    """A field with its schema: ``rule`` (what it may be), ``grid`` (where a YAML grid sets it; None:
    not settable from a grid), ``row`` (False for fields that never change a result: trials
    differing only in those are one row), ``since`` (3: added with the v3 evaluation; hashed only
    when not at its default)."""
    return S.field(default, rule=rule, factory=factory, help=help, grid=grid, row=row, since=since)


@dataclass
class TrialConfig:
    # what is trained
    defense: str = _f(
        "standard", grid="defenses", rule=S.choice(lambda: list(DEFENSES)), help="a defense of the registry"
    )
    lam: float = _f(
        0.0, grid="lambdas", help="LS alpha, EntM lambda, TRADES beta; 0 for defenses without one"
    )
    dataset: str = _f("mnist_embedded", grid="dataset", rule=S.choice(_datasets))
    data_root: Optional[str] = _f(
        None,
        grid="data_root",
        rule=S.text(optional=True),
        row=False,
        help="local root of torchvision datasets",
    )
    download: bool = _f(False, grid="download", rule=S.flag(), row=False)
    n_train: Optional[int] = _f(
        None,
        grid="n_train",
        rule=S.integer(10, 10**8, optional=True),
        help="stratified subset of the training split (None: all)",
    )
    augment: str = _f(
        "none",
        grid="augment",
        rule=S.choice(("none", "crop_flip")),
        help='"crop_flip": 4-px padded random crop + horizontal flip',
    )
    model: str = _f("small_cnn", grid="model", rule=S.choice(_models))
    width: float = _f(1.0, grid="width", rule=S.number(0, 16, lo_open=True), help="channel multiplier")
    seed: int = _f(0, grid="seeds", rule=S.integer(0, 2**31 - 1), row=False)
    # optimisation
    epochs: int = _f(10, grid="epochs", rule=S.integer(1, 100000))
    batch_size: int = _f(128, grid="batch_size", rule=S.integer(1, 1 << 16))
    optimizer: str = _f("adam", grid="optimizer.name", rule=S.choice(OPTIMIZERS))
    lr: float = _f(1e-3, grid="optimizer.lr", rule=S.number(0, 10, lo_open=True))
    momentum: float = _f(0.9, grid="optimizer.momentum", rule=S.number(0, 1))
    weight_decay: float = _f(0.0, grid="optimizer.weight_decay", rule=S.number(0, 1))
    schedule: str = _f("constant", grid="optimizer.schedule", rule=S.choice(SCHEDULES))
    milestones: list = _f(
        grid="optimizer.milestones",
        rule=S.list_of(S.number(0, 1)),
        factory=lambda: [0.5, 0.75],
        help="fractions of epochs",
    )
    gamma: float = _f(0.1, grid="optimizer.gamma", rule=S.number(0, 1, lo_open=True))
    # adversarial training (Madry et al. 2018). Defaults: the MNIST convention eps=0.3 with 40 steps;
    # the step is 2.5 * eps / steps = 0.01875 unless eps_step is set (mnist_challenge uses 0.01).
    # For CIFAR-10 use eps=8/255, 10 steps of 2/255 (cifar10_challenge).
    eps: float = _f(0.3, grid="train_eps", rule=EPS, help="training eps of adversarial defenses")
    eps_step: Optional[float] = _f(
        None,
        grid="adversarial.eps_step",
        rule=S.number(0, 1, lo_open=True, optional=True),
        help="None: 2.5 * eps / pgd_steps",
    )
    pgd_steps: int = _f(40, grid="adversarial.pgd_steps", rule=S.integer(1, 1000))
    random_start: bool = _f(True, grid="adversarial.random_start", rule=S.flag())
    # open choices of the paper, explicit (not found in the paper; see docs/paper.md)
    entropy_on: str = _f(
        "adv",
        grid="adversarial.entropy_on",
        rule=S.choice(("adv", "clean")),
        help='at_entm: entropy on "adv" or "clean" inputs',
    )
    inner_loss: str = _f(
        "ce",
        grid="adversarial.inner_loss",
        rule=S.choice(("ce", "regularized")),
        help='PGD maximises "ce" or the "regularized" loss',
    )
    adv_fraction: float = _f(
        1.0,
        grid="adversarial.adv_fraction",
        rule=S.number(0, 1),
        help="1.0: all-adversarial batch; 0.5: half/half",
    )
    ls_form: str = _f(
        "uniform",
        grid="adversarial.ls_form",
        rule=S.choice(("uniform", "others")),
        help='"uniform" a/K (Szegedy) or "others" a/(K-1)',
    )
    attack_bn_mode: str = _f(
        "eval",
        grid="adversarial.attack_bn_mode",
        rule=S.choice(("eval", "train")),
        help="BatchNorm mode of training attacks",
    )
    # evaluation
    test_eps: list = _f(
        grid="evaluation.test_eps",
        rule=S.list_of(EPS, nonempty=True, unique=True),
        factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
    )
    attacks: list = _f(
        grid="evaluation.attacks",
        factory=lambda: [AttackSpec("fgsm"), AttackSpec("pgd", 20), AttackSpec("cw", 30)],
        help="NAME[:STEPS[xRESTARTS]], e.g. fgsm pgd:20 cw:30",
    )
    n_eval: int = _f(
        1000,
        grid="evaluation.n_eval",
        rule=S.integer(1, 10**7),
        help="test points under attack (stated in every result)",
    )
    # AutoAttack (Croce & Hein 2020, pyautoattack): per eps, after our attacks, on the points they
    # left robust; by default at every eps where they leave a share of the points robust inside
    # autoattack_informative (docs/evaluation.md)
    autoattack: list = _f(
        grid="evaluation.autoattack",
        factory=lambda: [AttackSpec("autoattack")],
        help="run in order after our attacks on the points they left robust: autoattack, "
        "autoattack-rand, apgd-ce[:N], apgd-dlr[:N], apgd-t[:N], fab-t[:N], square[:N]; [] for none",
    )
    autoattack_eps: Optional[list] = _f(
        None,
        grid="evaluation.autoattack_eps",
        rule=S.list_of(POS_EPS, unique=True, optional=True),
        help="None: every evaluated eps where our attacks leave an informative share of the points "
        "robust (autoattack_informative); a list: only those eps (a budget); [] for none",
    )
    autoattack_informative: list = _f(
        grid="evaluation.autoattack_informative",
        rule=S.list_of(S.number(0, 1), nonempty=True),
        factory=lambda: [0.01, 0.99],
        help="[lo, hi]: by default AutoAttack runs at an eps where our attacks leave between lo and hi "
        "of the n_eval points robust (outside it AutoAttack cannot change a cell by more than lo)",
        since=3,
    )
    autoattack_points: Optional[int] = _f(
        None,
        grid="evaluation.autoattack_points",
        rule=S.integer(1, 10**7, optional=True),
        help="AutoAttack on a stratified subset of this many of the n_eval points (None: all; a budget)",
    )
    reuse_eps: bool = _f(
        True,
        grid="evaluation.reuse_eps",
        rule=S.flag(),
        help="a point an attack broke at a smaller eps counts as broken at every larger eps of the same norm "
        "and is not attacked again (false: every eps on its own, which the audit's non_monotone needs)",
        since=3,
    )
    chunk_points: Optional[int] = _f(
        None,
        grid="evaluation.chunk_points",
        rule=S.integer(1, 10**7, optional=True),
        row=False,
        help="points per chunk, the unit the evaluation is sharded, seeded and resumed by (None: "
        "min(eval_batch_size, ceil(n_eval / 8)))",
        since=3,
    )
    probe_points: Optional[int] = _f(
        None,
        grid="evaluation.probe_points",
        rule=S.integer(1, 10**7, optional=True),
        help="the masking probe's strong CE-PGD and Square on a stratified subset of this many of the "
        "n_eval points (None: all)",
    )
    jacobian_points: int = _f(500, grid="evaluation.jacobian_points", rule=S.integer(0, 10**7))
    jacobian_eps: Optional[float] = _f(
        None,
        grid="evaluation.jacobian_eps",
        rule=S.number(0, 1, optional=True),
        help="eps of the PGD points the Jacobians are also measured at (None: the validation eps)",
    )
    jacobian_projections: int = _f(
        1, grid="evaluation.jacobian_projections", rule=S.integer(1, 10000), help="per-epoch estimate"
    )
    eval_batch_size: int = _f(500, grid="evaluation.eval_batch_size", rule=S.integer(1, 1 << 16), row=False)
    # arithmetic (docs/gpu.md): bf16 autocast for training; the evaluation stays fp32 unless set
    precision: str = _f(
        "fp32",
        grid="precision.train",
        rule=S.choice(PRECISIONS),
        help='training forward passes: "fp32" or "bf16" (autocast)',
    )
    attack_precision: Optional[str] = _f(
        None,
        grid="precision.train_attack",
        rule=S.choice(PRECISIONS, optional=True),
        help="the training adversary's precision (None: as precision)",
    )
    eval_precision: str = _f(
        "fp32",
        grid="precision.eval",
        rule=S.choice(PRECISIONS),
        help="attacks, Jacobians and clean pass of the evaluation",
    )
    checkpoints: list = _f(
        grid="evaluation.checkpoints",
        rule=S.list_of(S.choice(CHECKPOINTS), nonempty=True, unique=True),
        row=False,
        factory=lambda: ["last"],
        help='checkpoints evaluated on the test split: ["last"] or ["last", "best"] (best by val/robust_acc)',
    )
    # validation split: carved from the training split, never trained on; the per-epoch validation,
    # the best checkpoint and ASHA read it (the test split is touched by the final evaluation only)
    val_points: int = _f(
        1000,
        grid="validation.points",
        rule=S.integer(0, 10**7),
        help="stratified validation points carved from train (0: none)",
    )
    val_seed: int = _f(
        0, grid="validation.seed", rule=S.integer(0, 2**31 - 1), help="seed of the validation draw"
    )
    val_eps: Optional[float] = _f(
        None,
        grid="validation.eps",
        rule=S.number(0, 1, optional=True),
        help="eps of the validation PGD (None: the training eps for adversarial defenses, else the "
        "smallest positive test eps)",
    )
    val_pgd_steps: int = _f(
        10,
        grid="validation.pgd_steps",
        rule=S.integer(1, 1000),
        help="steps of the validation PGD (CE, random start)",
    )
    # runtime
    device: str = _f("auto", grid="device", rule=S.text(), row=False)
    num_threads: int = _f(
        0, grid="num_threads", rule=S.integer(0, 1024), row=False, help="0: leave torch's default"
    )
    log_every: int = _f(
        0,
        grid=None,
        rule=S.integer(0, 10**9),
        row=False,
        help="batches between progress lines (0: per epoch only)",
    )

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
    def train_step_size(self) -> float:
        from .attacks import default_step_size

        return self.eps_step if self.eps_step is not None else default_step_size(self.eps, self.pgd_steps)

    def headline_eps(self) -> list:
        """The eps every trial reports even when ``test_eps`` lacks them: the dataset's conventional
        eps (``DatasetInfo``) and this trial's training eps (adversarial defenses)."""
        from .data import dataset_info

        return [dataset_info(self.dataset).conventional_eps] + ([self.eps] if self.is_adversarial else [])

    def aa_eps(self) -> Optional[list]:
        """The eps AutoAttack is limited to: ``autoattack_eps`` (values within 1e-6 of an evaluated
        eps are that eps); None when the default rule decides at run time (every evaluated eps where
        our attacks leave an informative share robust); [] when ``autoattack`` is empty."""
        if not self.autoattack:
            return []
        if self.autoattack_eps is None:
            return None
        want = [float(e) for e in self.autoattack_eps]
        return [e for e in self.eval_eps() if e > 0 and any(abs(e - w) <= 1e-6 for w in want)]

    def eval_eps(self) -> list:
        """Where our own attacks run: ``test_eps`` plus the AutoAttack eps (AutoAttack starts from the
        points our attacks leave robust, so they must have run there too); with the default rule,
        plus the headline eps (:meth:`headline_eps`)."""
        if not self.autoattack:
            return merge_eps(self.test_eps, [])
        if self.autoattack_eps is None:
            return merge_eps(self.test_eps, self.headline_eps())
        return merge_eps(self.test_eps, [float(e) for e in self.autoattack_eps])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, check: bool = True) -> TrialConfig:
        """From a dict (a grid's trial, Tune's config, a result record's ``config``). ``check`` False
        skips :func:`validate` (reading records of finished trials whose dataset is not here)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown key; allowed: {', '.join(sorted(known))}")
        cfg = cls(**d)
        return validate(cfg) if check else cfg

    def trial_id(self) -> str:
        """Stable short hash of the config (what identifies a trial across relaunches). Fields with
        ``since`` enter it only when set to something other than their default."""
        d = self.to_dict()
        for f in fields(self):
            if f.metadata.get("since") is not None and d[f.name] == _default(f):
                del d[f.name]
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha1(blob).hexdigest()[:10]

    def dirname(self) -> str:
        """The trial's directory name in a run: ``<short name>_<trial id>``."""
        return f"{self.short_name()}_{self.trial_id()}"

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


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


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
    return {f.metadata["grid"]: f.name for f in fields(TrialConfig) if f.metadata.get("grid")}


def row_fields() -> tuple:
    return tuple(f.name for f in fields(TrialConfig) if f.metadata.get("row", True))


def validate(cfg: TrialConfig) -> TrialConfig:
    """Raise ConfigError (one line, naming the key) on the first bad value: every field's own rule
    (one loop), then the rules that relate fields."""
    from .data import dataset_info

    S.check_fields(cfg)
    device = "cuda" if cfg.device.startswith("cuda:") else cfg.device
    S.choice(("auto", "cpu", "cuda")).check("device", device)
    d = cfg.defense_record
    if d.takes_lam:
        S.number(d.lam.lo, d.lam.hi, d.lam.lo_open).check("lam", cfg.lam)
    elif cfg.lam != 0:
        raise ConfigError("lam", f"defense {cfg.defense!r} takes no lambda (got {cfg.lam!r}); leave it at 0")
    if cfg.is_adversarial and cfg.eps == 0:
        raise ConfigError("eps", "adversarial training needs eps > 0 (inputs are in [0,1])")
    if cfg.is_adversarial and cfg.adv_fraction == 0:
        raise ConfigError(
            "adv_fraction", "0 is out of range (0, 1] for adversarial training (0: clean training)"
        )
    if "last" not in cfg.checkpoints:
        raise ConfigError("checkpoints", f"{cfg.checkpoints!r}: include last (the record's top level)")
    if "best" in cfg.checkpoints and cfg.val_points == 0:
        raise ConfigError(
            "checkpoints", "best is chosen on the validation split: give it points (val_points > 0)"
        )
    info = dataset_info(cfg.dataset)
    if info.train_size and cfg.val_points > info.train_size - 10:
        raise ConfigError(
            "val_points",
            f"{cfg.val_points} of {cfg.dataset}'s {info.train_size} training points leave fewer than 10 to train on",
        )
    if info.test_size and cfg.n_eval > info.test_size:
        raise ConfigError(
            "n_eval", f"{cfg.n_eval} > the {info.test_size} points of {cfg.dataset}'s test split"
        )
    _check_attacks(cfg, info)
    lo, hi = (cfg.autoattack_informative + [None, None])[:2]
    if len(cfg.autoattack_informative) != 2 or not lo < hi:
        raise ConfigError(
            "autoattack_informative",
            f"expected [lo, hi] with 0 <= lo < hi <= 1, got {cfg.autoattack_informative!r}",
        )
    if cfg.autoattack_points is not None and cfg.autoattack_points > cfg.n_eval:
        raise ConfigError(
            "autoattack_points",
            f"{cfg.autoattack_points} > n_eval {cfg.n_eval}: AutoAttack runs on a subset of the evaluation points",
        )
    if d.check is not None:
        d.check(cfg, info.num_classes)
    return cfg


def _check_attacks(cfg: TrialConfig, info) -> None:
    if not cfg.attacks:
        raise ConfigError("attacks", f"empty list; choose from {', '.join(ATTACKS)}")
    l2_max = math.sqrt(
        info.channels * info.size * info.size
    )  # the distance from the all-0 to the all-1 image
    for i, a in enumerate(cfg.attacks):
        a.check(f"attacks[{i}]", l2_max)
    labels = [a.label() for a in cfg.attacks]
    dup = next((lab for i, lab in enumerate(labels) if lab in labels[:i]), None)
    if dup is not None:
        raise ConfigError("attacks", f"{dup} is listed twice; give each attack setting once")
    aa_names = [n for n, a in ATTACKS.items() if a.source == "autoattack"]
    for i, a in enumerate(cfg.autoattack):
        a.check(f"autoattack[{i}]")
        if a.attack.source != "autoattack":
            raise ConfigError(f"autoattack[{i}].name", f"{a.name!r} is not one of {', '.join(aa_names)}")
        if a.eps is not None:
            raise ConfigError(
                f"autoattack[{i}].eps", "AutoAttack runs at autoattack_eps; set the epsilons there"
            )
