"""Archive a sweep run's results into the repository, so they outlive the machine that ran them.

    python sweeps/archive.py RUN_DIR [--out results/archive]

Copies, for every finished trial, ``config.json``, ``result.json`` and ``points.npz`` (the per-point
outcomes: about 40 kB a trial, no checkpoint and no model), and the run's ``grid.yaml``,
``plan.json`` and ``git_commit``, into ``OUT/<run name>/`` in a run directory's layout. An archived
run is a run to ``sweeps/aggregate.py``: alone, or with other archived parts (hard-linked into one
directory) it recomputes every table, paired and seed-level test and claim verdict on a fresh
machine, also when the parts ran in different sessions on different machines. The transfer check
attacks the models, which are not archived: on an archive it says "not tested".

Replaces only what it writes (a trial's files, the run's three); a trial archived before with
another config is refused. Exit 2 with one line when RUN_DIR holds no finished trial.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from uncertainty_robust.errors import UserError, exit_on_user_error

TRIAL_FILES = ("config.json", "result.json", "points.npz")  # what a trial's archive holds
RUN_FILES = ("grid.yaml", "plan.json", "git_commit")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sweeps/archive.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", type=Path, help="the sweep's run directory (holds trials/<trial>/result.json)")
    p.add_argument("--out", type=Path, default=Path("results/archive"), help="where OUT/<run name>/ goes")
    return p


def archive(run_dir: Path, out: Path) -> tuple[Path, list]:
    """Copy the run's finished trials into ``out/<run name>``; returns (that directory, trial names)."""
    from uncertainty_robust.rundir import RunDir, TrialDir

    rd = RunDir(run_dir)
    finished = sorted(d for d in rd.trials.glob("*") if TrialDir(d).finished()) if rd.trials.is_dir() else []
    if not finished:
        raise UserError(f"{run_dir}: no finished trial (no trials/<trial>/result.json) to archive")
    dest = out / run_dir.resolve().name
    if dest.resolve() == run_dir.resolve():
        raise UserError(f"--out {out}: that is the run itself")
    for d in finished:
        to = dest / "trials" / d.name
        old = to / "config.json"
        if old.exists() and json.loads(old.read_text()) != json.loads((d / "config.json").read_text()):
            raise UserError(f"{to} holds another trial's config: archive into another --out")
    for d in finished:
        to = dest / "trials" / d.name
        to.mkdir(parents=True, exist_ok=True)
        for name in TRIAL_FILES:
            if (d / name).exists():
                shutil.copyfile(d / name, to / name)
    for name in RUN_FILES:
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, dest / name)
    return dest, [d.name for d in finished]


@exit_on_user_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.run_dir.is_dir():
        raise UserError(f"{args.run_dir} is not a directory")
    try:
        dest, names = archive(args.run_dir, args.out)
    except OSError as e:
        raise UserError(f"cannot write {e.filename or args.out}: {e.strerror}") from None
    print(
        f"{len(names)} finished trial(s) of {args.run_dir} archived in {dest} ({', '.join(TRIAL_FILES)} each)"
    )
    left = [d.name for d in (args.run_dir / "trials").glob("*") if d.is_dir() and d.name not in names]
    if left:
        print(f"{len(left)} unfinished trial(s) not archived: {', '.join(sorted(left))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
