"""One typed config per trial. It flows YAML grid -> Tune param_space -> trainer -> result record.

Every choice the paper leaves open (see ``shared/paper.md``: none of its settings could be read)
is a field here, with the usual convention as the default and the source named next to it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Optional

DEFENSES = ("standard", "ls", "entm", "at", "at_ls", "at_entm")
ATTACK_NAMES = ("fgsm", "pgd", "pgd_l2", "cw")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")


class ConfigError(ValueError):
    """A bad config value. ``str()`` is one line naming the key and the allowed values."""

    def __init__(self, key: str, msg: str):
        self.key = key
        super().__init__(f"{key}: {msg}")


@dataclass
class AttackSpec:
    """One evaluation attack, run at every test epsilon of the trial.

    step_size: None -> 2.5 * eps / steps (Madry et al. 2018's rule of thumb; robustness lib).
    """

    name: str = "pgd"
    steps: int = 20
    step_size: Optional[float] = None
    restarts: int = 1
    random_start: bool = True

    def label(self) -> str:
        if self.name == "fgsm":
            return "fgsm"
        r = f"x{self.restarts}" if self.restarts > 1 else ""
        return f"{self.name}{self.steps}{r}"


@dataclass
class TrialConfig:
    # what is trained
    defense: str = "standard"
    lam: float = 0.0  # EntM: lambda in CE - lam*H(p); LS: smoothing alpha. Ignored by standard/at.
    dataset: str = "mnist_embedded"
    data_root: Optional[str] = None
    download: bool = False
    n_train: Optional[int] = None  # stratified subset of the training split (None: all)
    augment: str = "none"  # "crop_flip": 4-px padded random crop + horizontal flip (the CIFAR convention)
    model: str = "small_cnn"
    width: float = 1.0  # channel multiplier of the model
    seed: int = 0
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: list = field(default_factory=lambda: [0.5, 0.75])  # fractions of epochs (step schedule)
    gamma: float = 0.1
    # adversarial training (Madry et al. 2018). Defaults: MNIST convention eps=0.3, 40 steps of 0.01
    # (mnist_challenge config). For CIFAR-10 use eps=8/255, 10 steps of 2/255 (cifar10_challenge).
    eps: float = 0.3
    eps_step: Optional[float] = None  # None -> 2.5 * eps / pgd_steps
    pgd_steps: int = 40
    random_start: bool = True
    # open choices of the paper, explicit (not found in the paper; see shared/paper.md §3)
    entropy_on: str = "adv"  # at_entm: entropy term on "adv" or "clean" inputs
    inner_loss: str = "ce"  # PGD inner maximisation: plain "ce" or the "regularized" training loss
    adv_fraction: float = 1.0  # 1.0: all-adversarial batch (Madry); 0.5: half clean/half adv mix
    ls_form: str = "uniform"  # LS target: "uniform" (1-a)*onehot + a/K (Szegedy) or "others" a/(K-1)
    attack_bn_mode: str = "eval"  # BatchNorm mode while generating training adversaries
    # evaluation
    test_eps: list = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    attacks: list = field(default_factory=lambda: [AttackSpec("fgsm", steps=1), AttackSpec("pgd", 20), AttackSpec("cw", 30)])
    n_eval: int = 1000  # test points under attack (stated in every result)
    jacobian_points: int = 500
    jacobian_projections: int = 1  # random projections per example for the estimate logged per epoch
    eval_batch_size: int = 500
    # runtime
    device: str = "auto"
    num_threads: int = 0  # 0: leave torch's default
    log_every: int = 0  # batches between progress lines (0: per epoch only)

    # ---------------------------------------------------------------- helpers
    def __post_init__(self):
        self.attacks = [a if isinstance(a, AttackSpec) else AttackSpec(**a) for a in self.attacks]
        self.test_eps = [float(e) for e in self.test_eps]
        self.milestones = [float(m) for m in self.milestones]

    @property
    def is_adversarial(self) -> bool:
        return self.defense.startswith("at")

    @property
    def train_step(self) -> float:
        return self.eps_step if self.eps_step is not None else 2.5 * self.eps / max(1, self.pgd_steps)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown key; allowed: {', '.join(sorted(known))}")
        cfg = cls(**d)
        validate(cfg)
        return cfg

    def trial_id(self) -> str:
        """Stable short hash of the config (what identifies a trial across relaunches)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha1(blob).hexdigest()[:10]

    def short_name(self) -> str:
        parts = [self.defense]
        if self.defense in ("ls", "entm", "at_ls", "at_entm"):
            parts.append(f"lam{self.lam:g}")
        if self.is_adversarial:
            parts.append(f"eps{self.eps:g}")
        parts.append(f"s{self.seed}")
        return "_".join(parts)


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
    from .data import DATASETS  # local import: data pulls torchvision lazily
    from .models import MODELS

    _choice("defense", cfg.defense, DEFENSES)
    _choice("dataset", cfg.dataset, sorted(DATASETS))
    _choice("model", cfg.model, sorted(MODELS))
    _choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _choice("schedule", cfg.schedule, SCHEDULES)
    _choice("entropy_on", cfg.entropy_on, ("adv", "clean"))
    _choice("inner_loss", cfg.inner_loss, ("ce", "regularized"))
    _choice("ls_form", cfg.ls_form, ("uniform", "others"))
    _choice("attack_bn_mode", cfg.attack_bn_mode, ("eval", "train"))
    _choice("augment", cfg.augment, ("none", "crop_flip"))
    if cfg.defense in ("ls", "at_ls"):
        _range("lam", cfg.lam, 0.0, 0.99)  # alpha=1 would make the target uniform: nothing to learn
    elif cfg.defense in ("entm", "at_entm"):
        _range("lam", cfg.lam, 0.0, 10.0)  # beyond ~10 the entropy term swamps CE entirely
    else:
        _range("lam", cfg.lam, 0.0, 10.0)
    _range("eps", cfg.eps, 0.0, 1.0)
    if cfg.is_adversarial and cfg.eps == 0:
        raise ConfigError("eps", "adversarial training needs eps > 0 (inputs are in [0,1])")
    if cfg.eps_step is not None:
        _range("eps_step", cfg.eps_step, 0.0, 1.0, lo_open=True)
    _int("pgd_steps", cfg.pgd_steps, 1, 1000)
    _range("adv_fraction", cfg.adv_fraction, 0.0, 1.0)
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
    _int("num_threads", cfg.num_threads, 0, 1024)
    _int("log_every", cfg.log_every, 0, 10**9)
    if not cfg.test_eps:
        raise ConfigError("test_eps", "empty list; give at least one test epsilon, e.g. [0, 0.1, 0.3]")
    for i, e in enumerate(cfg.test_eps):
        _range(f"test_eps[{i}]", e, 0.0, 1.0)
    if not cfg.attacks:
        raise ConfigError("attacks", f"empty list; choose from {', '.join(ATTACK_NAMES)}")
    for i, a in enumerate(cfg.attacks):
        _choice(f"attacks[{i}].name", a.name, ATTACK_NAMES)
        _int(f"attacks[{i}].steps", a.steps, 1, 100000)
        _int(f"attacks[{i}].restarts", a.restarts, 1, 1000)
        if a.step_size is not None:
            _range(f"attacks[{i}].step_size", a.step_size, 0.0, 1.0, lo_open=True)
    _choice("device", cfg.device if not cfg.device.startswith("cuda:") else "cuda", ("auto", "cpu", "cuda"))
    return cfg
