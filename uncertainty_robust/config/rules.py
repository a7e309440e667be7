"""The rules that relate a trial's fields (every single field's rule is declared beside it in
:mod:`.fields` and checked by one loop here, :func:`schema.check_fields`)."""

from __future__ import annotations

import math

from .. import schema as S
from ..attacks import ATTACKS
from ..data import dataset_info
from ..errors import ConfigError
from . import TrialConfig


def check(cfg: TrialConfig) -> TrialConfig:
    """Raise ConfigError (one line, naming the key) on the first bad value: every field's own rule
    (one loop over the fields), then the rules that relate fields, each explicit below."""
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
    aa_names = [n for n, a in ATTACKS.items() if a.pyautoattack]
    for i, a in enumerate(cfg.autoattack):
        a.check(f"autoattack[{i}]")
        if not a.attack.pyautoattack:
            raise ConfigError(f"autoattack[{i}].name", f"{a.name!r} is not one of {', '.join(aa_names)}")
        if a.eps is not None:
            raise ConfigError(
                f"autoattack[{i}].eps", "AutoAttack runs at autoattack_eps; set the epsilons there"
            )
