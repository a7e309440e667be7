"""One typed config per trial. It flows YAML grid -> Tune param_space -> trainer -> result record.

Every choice the paper leaves open (see ``docs/paper.md``: none of its settings could be read)
is a field here, with the usual convention as the default and the source named next to it.

Each field carries its own schema in ``metadata`` (see :func:`_f`): where it lives in a YAML grid
(``grid``: a top-level key, ``section.key``, or one of the expanded axes), whether two trials that
differ in it are different rows of a table (``row``), and its help text. The grid parser, the
CLI and the reports derive their keys from it (:func:`grid_fields`, :func:`row_fields`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from .accel import PRECISIONS
from .attacks import ATTACKS, AttackSpec
from .defenses import DEFENSES
from .errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")
CHECKPOINTS = ("last", "best")  # which weights the final evaluation reads (best: by val/robust_acc)
AXES = ("defenses", "lambdas", "train_eps", "seeds")  # grid keys expanded into one trial per value

__all__ = ["AttackSpec", "ConfigError", "TrialConfig", "validate", "grid_fields", "row_fields"]


def _f(default=dataclasses.MISSING, *, grid: Optional[str], row: bool = True, help: str = "", factory=None):
    """A field with its schema: ``grid`` is where a YAML grid sets it (None: not settable from a grid),
    ``row`` False for fields that never change a result (trials differing only in those are one row)."""
    meta = {"grid": grid, "row": row, "help": help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrialConfig:
    # what is trained
    defense: str = _f("standard", grid="defenses", help="one of uncertainty_robust.defenses.DEFENSES")
    lam: float = _f(
        0.0, grid="lambdas", help="LS alpha, EntM lambda, TRADES beta; 0 for defenses without one"
    )
    dataset: str = _f("mnist_embedded", grid="dataset")
    data_root: Optional[str] = _f(
        None, grid="data_root", row=False, help="local root of torchvision datasets"
    )
    download: bool = _f(False, grid="download", row=False)
    n_train: Optional[int] = _f(
        None, grid="n_train", help="stratified subset of the training split (None: all)"
    )
    augment: str = _f("none", grid="augment", help='"crop_flip": 4-px padded random crop + horizontal flip')
    model: str = _f("small_cnn", grid="model")
    width: float = _f(1.0, grid="width", help="channel multiplier of the model")
    seed: int = _f(0, grid="seeds", row=False)
    # optimisation
    epochs: int = _f(10, grid="epochs")
    batch_size: int = _f(128, grid="batch_size")
    optimizer: str = _f("adam", grid="optimizer.name")
    lr: float = _f(1e-3, grid="optimizer.lr")
    momentum: float = _f(0.9, grid="optimizer.momentum")
    weight_decay: float = _f(0.0, grid="optimizer.weight_decay")
    schedule: str = _f("constant", grid="optimizer.schedule")
    milestones: list = _f(
        grid="optimizer.milestones", factory=lambda: [0.5, 0.75], help="fractions of epochs"
    )
    gamma: float = _f(0.1, grid="optimizer.gamma")
    # adversarial training (Madry et al. 2018). Defaults: the MNIST convention eps=0.3 with 40 steps;
    # the step is 2.5 * eps / steps = 0.01875 unless eps_step is set (mnist_challenge uses 0.01).
    # For CIFAR-10 use eps=8/255, 10 steps of 2/255 (cifar10_challenge).
    eps: float = _f(0.3, grid="train_eps", help="training eps of adversarial defenses")
    eps_step: Optional[float] = _f(None, grid="adversarial.eps_step", help="None: 2.5 * eps / pgd_steps")
    pgd_steps: int = _f(40, grid="adversarial.pgd_steps")
    random_start: bool = _f(True, grid="adversarial.random_start")
    # open choices of the paper, explicit (not found in the paper; see docs/paper.md)
    entropy_on: str = _f(
        "adv", grid="adversarial.entropy_on", help='at_entm: entropy on "adv" or "clean" inputs'
    )
    inner_loss: str = _f(
        "ce", grid="adversarial.inner_loss", help='PGD maximises "ce" or the "regularized" loss'
    )
    adv_fraction: float = _f(
        1.0, grid="adversarial.adv_fraction", help="1.0: all-adversarial batch; 0.5: half/half"
    )
    ls_form: str = _f(
        "uniform", grid="adversarial.ls_form", help='"uniform" a/K (Szegedy) or "others" a/(K-1)'
    )
    attack_bn_mode: str = _f(
        "eval", grid="adversarial.attack_bn_mode", help="BatchNorm mode of training attacks"
    )
    # evaluation
    test_eps: list = _f(grid="evaluation.test_eps", factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    attacks: list = _f(
        grid="evaluation.attacks",
        factory=lambda: [AttackSpec("fgsm"), AttackSpec("pgd", 20), AttackSpec("cw", 30)],
        help="NAME[:STEPS[xRESTARTS]], e.g. fgsm pgd:20 cw:30",
    )
    n_eval: int = _f(1000, grid="evaluation.n_eval", help="test points under attack (stated in every result)")
    # AutoAttack (Croce & Hein 2020, pyautoattack) as the reference evaluation, run at autoattack_eps on
    # the points that survive the attacks above (the per-example worst case is the same; see evaluate.py)
    autoattack: list = _f(
        grid="evaluation.autoattack",
        factory=lambda: [AttackSpec("autoattack")],
        help="run in order at autoattack_eps on the points our attacks left robust: autoattack, "
        "autoattack-rand, apgd-ce[:N], apgd-dlr[:N], apgd-t[:N], fab-t[:N], square[:N]; [] for none",
    )
    autoattack_eps: Optional[list] = _f(
        None,
        grid="evaluation.autoattack_eps",
        help="None: the training eps (adversarial defenses; in a grid every train_eps) plus the "
        "dataset's conventional eps; [] for none",
    )
    autoattack_points: Optional[int] = _f(
        None,
        grid="evaluation.autoattack_points",
        help="AutoAttack on a stratified subset of this many of the n_eval points (None: all)",
    )
    probe_points: Optional[int] = _f(
        None,
        grid="evaluation.probe_points",
        help="the masking probe's strong CE-PGD and Square on a stratified subset of this many of the "
        "n_eval points (None: all)",
    )
    jacobian_points: int = _f(500, grid="evaluation.jacobian_points")
    jacobian_eps: Optional[float] = _f(
        None,
        grid="evaluation.jacobian_eps",
        help="eps of the PGD points the Jacobians are also measured at (None: the validation eps)",
    )
    jacobian_projections: int = _f(1, grid="evaluation.jacobian_projections", help="per-epoch estimate")
    eval_batch_size: int = _f(500, grid="evaluation.eval_batch_size", row=False)
    # arithmetic (docs/gpu.md): bf16 autocast for training; the evaluation stays fp32 unless set
    precision: str = _f(
        "fp32", grid="precision.train", help='training forward passes: "fp32" or "bf16" (autocast)'
    )
    attack_precision: Optional[str] = _f(
        None, grid="precision.train_attack", help="the training adversary's precision (None: as precision)"
    )
    eval_precision: str = _f(
        "fp32", grid="precision.eval", help="attacks, Jacobians and clean pass of the evaluation"
    )
    checkpoints: list = _f(
        grid="evaluation.checkpoints",
        row=False,
        factory=lambda: ["last"],
        help='checkpoints evaluated on the test split: ["last"] or ["last", "best"] (best by val/robust_acc)',
    )
    # validation split: carved from the training split, never trained on; the per-epoch probe, the
    # best checkpoint and ASHA read it (the test split is touched by the final evaluation only)
    val_points: int = _f(
        1000, grid="validation.points", help="stratified validation points carved from train (0: none)"
    )
    val_seed: int = _f(0, grid="validation.seed", help="seed of the validation draw")
    val_eps: Optional[float] = _f(
        None,
        grid="validation.eps",
        help="eps of the validation PGD (None: the training eps for adversarial defenses, else the "
        "smallest positive test eps)",
    )
    val_pgd_steps: int = _f(
        10, grid="validation.pgd_steps", help="steps of the validation PGD (CE, random start)"
    )
    # runtime
    device: str = _f("auto", grid="device", row=False)
    num_threads: int = _f(0, grid="num_threads", row=False, help="0: leave torch's default")
    log_every: int = _f(0, grid=None, row=False, help="batches between progress lines (0: per epoch only)")

    # ---------------------------------------------------------------- helpers
    def __post_init__(self):
        self.attacks = [a if isinstance(a, AttackSpec) else AttackSpec(**a) for a in self.attacks]
        self.autoattack = [a if isinstance(a, AttackSpec) else AttackSpec(**a) for a in self.autoattack]
        self.test_eps = [float(e) for e in self.test_eps]
        self.milestones = [float(m) for m in self.milestones]

    @property
    def spec(self):
        """This trial's :class:`~uncertainty_robust.defenses.Defense` record."""
        return DEFENSES[self.defense]

    @property
    def is_adversarial(self) -> bool:
        return self.spec.adversarial

    @property
    def eps_train(self) -> float:
        """The training eps, 0 for a defense that does not train on adversarial examples."""
        return self.eps if self.is_adversarial else 0.0

    @property
    def probe_eps(self) -> float:
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
        """Where the Jacobians are measured besides the clean points: ``jacobian_eps`` else :attr:`probe_eps`."""
        return float(self.jacobian_eps) if self.jacobian_eps is not None else self.probe_eps

    @property
    def train_step(self) -> float:
        return self.eps_step if self.eps_step is not None else 2.5 * self.eps / max(1, self.pgd_steps)

    def aa_eps(self) -> list:
        """The epsilons AutoAttack runs at: ``autoattack_eps``, or by default this trial's training
        eps (adversarial defenses) plus the dataset's conventional eps (``DatasetInfo``); [] when
        ``autoattack`` is empty. Values within 1e-6 of a test eps are that test eps."""
        if not self.autoattack:
            return []
        if self.autoattack_eps is not None:
            want = [float(e) for e in self.autoattack_eps]
        else:
            from .data import dataset_info

            want = [dataset_info(self.dataset).conventional_eps] + ([self.eps] if self.is_adversarial else [])
        return [e for e in merge_eps(self.test_eps, want) if e > 0 and any(abs(e - w) <= 1e-6 for w in want)]

    def eval_eps(self) -> list:
        """Where our own attacks run: ``test_eps`` plus the AutoAttack epsilons (AutoAttack starts
        from the points our attacks leave robust, so they must have run there too)."""
        return merge_eps(self.test_eps, self.aa_eps())

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
        """Stable short hash of the config (what identifies a trial across relaunches)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha1(blob).hexdigest()[:10]

    def short_name(self) -> str:
        parts = [self.defense]
        if self.spec.takes_lam:
            parts.append(f"lam{self.lam:g}")
        if self.is_adversarial:
            parts.append(f"eps{self.eps:g}")
        parts.append(f"s{self.seed}")
        return "_".join(parts)

    def method_label(self) -> str:
        """e.g. "AT+EntM (λ=0.5, ε=0.3)": the defense's display name, its lambda and train eps."""
        d, parts = self.spec, []
        if d.takes_lam:
            parts.append(f"{d.lam.symbol}={self.lam:g}")
        if d.adversarial:
            parts.append(f"ε={self.eps:g}")
        return d.display + (f" ({', '.join(parts)})" if parts else "")

    def row_key(self) -> dict:
        """The fields that make a table row: everything but seed and runtime settings."""
        return {k: v for k, v in self.to_dict().items() if k in row_fields()}


def merge_eps(base: list, extra: list) -> list:
    """Sorted union of two eps lists; a value within 1e-6 of one already there is that one (8/255
    written as 0.0313725490 in a grid and computed as 8 / 255 are one eps)."""
    out = [float(e) for e in base]
    for e in extra:
        if not any(abs(float(e) - o) <= 1e-6 for o in out):
            out.append(float(e))
    return sorted(set(out))


def grid_fields() -> dict:
    """{grid key: field name}: ``dataset`` -> dataset, ``optimizer.lr`` -> lr, ``lambdas`` -> lam."""
    return {f.metadata["grid"]: f.name for f in fields(TrialConfig) if f.metadata.get("grid")}


def row_fields() -> tuple:
    return tuple(f.name for f in fields(TrialConfig) if f.metadata.get("row", True))


def _choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, allowed))}")


def _range(key: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"expected a number in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")
    if value != value or value > hi or value < lo or (lo_open and value == lo):
        raise ConfigError(key, f"{value!r} is out of range {'(' if lo_open else '['}{lo}, {hi}]")


def _int(key: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer in [{lo}, {hi}], got {value!r}")
    _range(key, value, lo, hi)


def validate(cfg: TrialConfig) -> TrialConfig:
    """Raise ConfigError (one line, naming the key) on the first bad value."""
    from .data import DATASETS, dataset_info  # local import: data pulls torchvision lazily
    from .models import MODELS

    _choice("defense", cfg.defense, list(DEFENSES))
    _choice("dataset", cfg.dataset, sorted(DATASETS))
    _choice("model", cfg.model, sorted(MODELS))
    _choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _choice("schedule", cfg.schedule, SCHEDULES)
    _choice("entropy_on", cfg.entropy_on, ("adv", "clean"))
    _choice("inner_loss", cfg.inner_loss, ("ce", "regularized"))
    _choice("ls_form", cfg.ls_form, ("uniform", "others"))
    _choice("attack_bn_mode", cfg.attack_bn_mode, ("eval", "train"))
    _choice("augment", cfg.augment, ("none", "crop_flip"))
    _choice("precision", cfg.precision, PRECISIONS)
    if cfg.attack_precision is not None:
        _choice("attack_precision", cfg.attack_precision, PRECISIONS)
    _choice("eval_precision", cfg.eval_precision, PRECISIONS)
    d = cfg.spec
    if d.takes_lam:
        _range("lam", cfg.lam, d.lam.lo, d.lam.hi, d.lam.lo_open)
    elif cfg.lam != 0:
        raise ConfigError("lam", f"defense {cfg.defense!r} takes no lambda (got {cfg.lam!r}); leave it at 0")
    _range("eps", cfg.eps, 0.0, 1.0)
    if cfg.is_adversarial and cfg.eps == 0:
        raise ConfigError("eps", "adversarial training needs eps > 0 (inputs are in [0,1])")
    if cfg.eps_step is not None:
        _range("eps_step", cfg.eps_step, 0.0, 1.0, lo_open=True)
    _int("pgd_steps", cfg.pgd_steps, 1, 1000)
    _range(
        "adv_fraction", cfg.adv_fraction, 0.0, 1.0, lo_open=cfg.is_adversarial
    )  # AT with 0: clean training
    _int("epochs", cfg.epochs, 1, 100000)
    _int("batch_size", cfg.batch_size, 1, 1 << 16)
    _int("eval_batch_size", cfg.eval_batch_size, 1, 1 << 16)
    _int("seed", cfg.seed, 0, 2**31 - 1)
    _range("lr", cfg.lr, 0.0, 10.0, lo_open=True)
    _range("momentum", cfg.momentum, 0.0, 1.0)
    _range("weight_decay", cfg.weight_decay, 0.0, 1.0)
    _range("gamma", cfg.gamma, 0.0, 1.0, lo_open=True)
    _range("width", cfg.width, 0.0, 16.0, lo_open=True)
    for i, m in enumerate(cfg.milestones):
        _range(f"milestones[{i}]", m, 0.0, 1.0)
    if cfg.n_train is not None:
        _int("n_train", cfg.n_train, 10, 10**8)
    _int("n_eval", cfg.n_eval, 1, 10**7)
    _int("jacobian_points", cfg.jacobian_points, 0, 10**7)
    _int("jacobian_projections", cfg.jacobian_projections, 1, 10000)
    if cfg.jacobian_eps is not None:
        _range("jacobian_eps", cfg.jacobian_eps, 0.0, 1.0)
    _int("val_points", cfg.val_points, 0, 10**7)
    _int("val_seed", cfg.val_seed, 0, 2**31 - 1)
    if cfg.val_eps is not None:
        _range("val_eps", cfg.val_eps, 0.0, 1.0)
    _int("val_pgd_steps", cfg.val_pgd_steps, 1, 1000)
    if not isinstance(cfg.checkpoints, list) or not cfg.checkpoints:
        raise ConfigError("checkpoints", f"expected a list from {', '.join(CHECKPOINTS)}, e.g. [last, best]")
    for i, c in enumerate(cfg.checkpoints):
        _choice(f"checkpoints[{i}]", c, CHECKPOINTS)
    if len(set(cfg.checkpoints)) != len(cfg.checkpoints) or "last" not in cfg.checkpoints:
        raise ConfigError(
            "checkpoints", f"{cfg.checkpoints!r}: give each once and include last (the record's top level)"
        )
    if "best" in cfg.checkpoints and cfg.val_points == 0:
        raise ConfigError(
            "checkpoints", "best is chosen on the validation split: give it points (val_points > 0)"
        )
    _int("num_threads", cfg.num_threads, 0, 1024)
    _int("log_every", cfg.log_every, 0, 10**9)
    if not cfg.test_eps:
        raise ConfigError("test_eps", "empty list; give at least one test epsilon, e.g. [0, 0.1, 0.3]")
    for i, e in enumerate(cfg.test_eps):
        _range(f"test_eps[{i}]", e, 0.0, 1.0)
    if not cfg.attacks:
        raise ConfigError("attacks", f"empty list; choose from {', '.join(ATTACKS)}")
    info = dataset_info(cfg.dataset)
    l2_max = math.sqrt(
        info.channels * info.size * info.size
    )  # the distance from the all-0 to the all-1 image
    for i, a in enumerate(cfg.attacks):
        a.check(f"attacks[{i}]", l2_max)
    aa_names = [n for n, a in ATTACKS.items() if a.source == "autoattack"]
    for i, a in enumerate(cfg.autoattack):
        a.check(f"autoattack[{i}]")
        if a.attack.source != "autoattack":
            raise ConfigError(f"autoattack[{i}].name", f"{a.name!r} is not one of {', '.join(aa_names)}")
        if a.eps is not None:
            raise ConfigError(
                f"autoattack[{i}].eps", "AutoAttack runs at autoattack_eps; set the epsilons there"
            )
    if cfg.autoattack_eps is not None:
        if not isinstance(cfg.autoattack_eps, list):
            raise ConfigError(
                "autoattack_eps", f"expected a list of numbers in (0, 1] or [], got {cfg.autoattack_eps!r}"
            )
        for i, e in enumerate(cfg.autoattack_eps):
            _range(f"autoattack_eps[{i}]", e, 0.0, 1.0, lo_open=True)
    if cfg.probe_points is not None:
        _int("probe_points", cfg.probe_points, 1, 10**7)
    if cfg.autoattack_points is not None:
        _int("autoattack_points", cfg.autoattack_points, 1, 10**7)
        if cfg.autoattack_points > cfg.n_eval:
            raise ConfigError(
                "autoattack_points",
                f"{cfg.autoattack_points} > n_eval {cfg.n_eval}: AutoAttack runs on a subset of the evaluation points",
            )
    _choice("device", cfg.device if not cfg.device.startswith("cuda:") else "cuda", ("auto", "cpu", "cuda"))
    if d.check is not None:
        d.check(cfg, info.num_classes)
    return cfg
