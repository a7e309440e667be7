"""``python -m uncertainty_robust.train``: one trial from the command line.

Every TrialConfig field is a flag (``--lam 0.5``, ``--test-eps 0 0.1 0.3``); attacks are given as
``NAME[:STEPS[xRESTARTS]]``, e.g. ``--attacks fgsm pgd:20 cw:30 pgd:100x5``.
Bad values exit with status 2 and one line naming the flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path

from .config import AttackSpec, ConfigError, TrialConfig, validate


def parse_attack(text: str) -> AttackSpec:
    name, _, rest = text.partition(":")
    if not rest:
        return AttackSpec(name, steps=1 if name == "fgsm" else 20)
    steps, _, restarts = rest.partition("x")
    try:
        return AttackSpec(name, steps=int(steps), restarts=int(restarts or 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad attack {text!r}; expected NAME[:STEPS[xRESTARTS]], e.g. pgd:20x2") from None


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m uncertainty_robust.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None, help="trial directory (default runs/single/<defense>_...)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    defaults = TrialConfig()
    hints = typing.get_type_hints(TrialConfig)
    for f in dataclasses.fields(TrialConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        t = hints[f.name]
        if f.name == "attacks":
            p.add_argument(flag, nargs="+", type=parse_attack, default=None, help="e.g. fgsm pgd:20 cw:30")
        elif f.name in ("test_eps", "milestones"):
            p.add_argument(flag, nargs="+", type=float, default=None, help=f"default {default}")
        elif t is bool:
            p.add_argument(flag, type=_bool, default=None, help=f"default {default}")
        else:
            base = typing.get_args(t)[0] if typing.get_origin(t) is typing.Union else t
            p.add_argument(flag, type=base, default=None, help=f"default {default}")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("workdir", "print_config")}
    try:
        cfg = TrialConfig(**overrides)
        validate(cfg)
    except ConfigError as e:
        print(f"error: --{e.key.split('[')[0].replace('_', '-')}: {str(e).split(': ', 1)[1]}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from .data import DatasetNotFound
    from .trial import run_trial

    workdir = Path(args.workdir or f"runs/single/{cfg.short_name()}_{cfg.trial_id()}")
    try:
        rec = run_trial(cfg, workdir)
    except DatasetNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"clean acc {rec['clean_acc']:.4f} on {rec['n_points']} {cfg.dataset} test points")
    for w in rec["worst_case"]:
        print(f"  eps={w['eps']:<6g} worst-case acc {w['acc']:.4f}  ({', '.join(w['attacks'])})")
    print(f"result: {workdir / 'result.json'}")
    return 0
