"""``ur-train`` (or ``python -m uncertainty_robust``): one trial from the command line, no Ray.

Every TrialConfig field is a flag (``--lam 0.5``, ``--test-eps 0 0.1 0.3``); attacks are given as
``NAME[:STEPS[xRESTARTS]]``, e.g. ``--attacks fgsm pgd:20 cw:30 pgd:100x5``; AutoAttack as
``--autoattack autoattack`` (or ``apgd-ce:50 square:1000``; no value for none) at
``--autoattack-eps 0.3`` on ``--autoattack-points 500`` points.
Bad values exit with status 2 and one line naming the flag. Under ``torchrun --nproc-per-node N``
each process is one DDP rank (NCCL on GPUs, one GPU per rank; gloo on CPUs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path

from .attacks import AttackSpec
from .config import TrialConfig, validate
from .errors import ConfigError, UserError


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ur-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", default=None, help="trial directory (default runs/single/<defense>_...)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress lines (training epochs, evaluation); only the result",
    )
    defaults = TrialConfig()
    hints = typing.get_type_hints(TrialConfig)
    for f in dataclasses.fields(TrialConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        t = hints[f.name]
        help_ = f"{f.metadata.get('help') or ''} (default {default})".strip()
        if f.name in ("attacks", "autoattack"):  # parsed in main: errors name the flag
            p.add_argument(flag, nargs="+" if f.name == "attacks" else "*", default=None, help=help_)
        elif f.name == "checkpoints":
            p.add_argument(flag, nargs="+", default=None, help=help_)
        elif t is list:
            p.add_argument(flag, nargs="+", type=float, default=None, help=help_)
        elif typing.get_origin(t) is typing.Union and list in typing.get_args(t):
            p.add_argument(flag, nargs="*", type=float, default=None, help=help_ + "; no value: []")
        elif t is bool:
            p.add_argument(flag, type=_bool, default=None, help=help_)
        else:
            base = typing.get_args(t)[0] if typing.get_origin(t) is typing.Union else t
            p.add_argument(flag, type=base, default=None, help=help_)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        k: v for k, v in vars(args).items() if v is not None and k not in ("workdir", "print_config", "quiet")
    }
    try:
        for key in ("attacks", "autoattack"):
            if key in overrides:
                overrides[key] = [AttackSpec.parse(a, f"{key}[{i}]") for i, a in enumerate(overrides[key])]
        cfg = validate(TrialConfig(**overrides))
    except ConfigError as e:
        flag = "--" + e.key.split("[")[0].split(".")[0].replace("_", "-")
        print(f"error: {flag}: {e.msg}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    level = logging.WARNING if args.quiet else logging.INFO  # INFO: epochs and the evaluation's progress
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from .accel import init_distributed_from_env
    from .trial import run_trial

    joined = init_distributed_from_env()  # under torchrun: one process per GPU (NCCL) or CPU worker (gloo)
    workdir = Path(args.workdir or f"runs/single/{cfg.dirname()}")
    try:
        rec = run_trial(cfg, workdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback from inside autograd
        where = (
            f"resumes from the last checkpoint in {workdir} (the epoch or evaluation chunk in progress is redone)"
            if (workdir / "checkpoint.pt").exists()
            else f"starts over (no epoch had finished: {workdir} holds no checkpoint)"
        )
        print(f"interrupted (SIGINT); the same command {where}", file=sys.stderr)
        return 130
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rec is None:  # a rank other than 0 under torchrun: rank 0 evaluates and reports
        return 0
    print(f"clean acc {rec['clean_acc']:.4f} on {rec['n_points']} {cfg.dataset} test points")
    for w in rec["worst_case"]:
        print(
            f"  eps={w['eps']:<6g} worst-case acc {w['acc']:.4f} on {w['n_points']} points  ({', '.join(w['attacks'])})"
        )
    print(f"result: {workdir / 'result.json'}")
    return 0
