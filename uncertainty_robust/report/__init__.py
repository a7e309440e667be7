"""Aggregation of a sweep run (``ur-aggregate RUN``): every finished trial's ``result.json`` -> ``RUN/aggregate/``.

What it writes, and why each piece exists:

- ``tables.md`` and ``table_<dataset>_<model>.{csv,json}``: the paper's layout (rows = methods,
  columns = clean, attack@eps, worst@eps), mean over seeds with a 95 % CI over seeds and test
  points (and mean ± std, ddof=1, in the CSV/JSON), a paired comparison of every method with its
  baseline (difference, CI, p-values, Holm over eps; :mod:`.stats`), with dataset, model,
  checkpoint, n_points and attack settings stated next to the numbers and an audit column, because
  a robust accuracy means nothing without its threat model and red flags.
- ``jacobian_correlation.json`` (and a section of ``tables.md``): Spearman correlation across
  trials between each Jacobian statistic (clean and PGD points) and worst-case accuracy.
- ``checkpoint="best"`` (``ur-aggregate RUN --checkpoint best``, default output
  ``RUN/aggregate_best``): the same for the best-by-validation checkpoints, of the trials that
  evaluated one (the others are listed as excluded); the transfer check is not run there (it
  attacks the final weights).
- ``tb/``: TensorBoard: HParams (one session per trial), accuracy-vs-eps curves, Jacobian norm vs
  lambda, eps_train x eps_test matrices (scalars + a custom-scalars layout), adversarial examples,
  audit flags as text. Scalar steps are integers, so curves use x = ``round(1000 * eps)``.
- ``figures/*.png`` (when matplotlib is importable) and ``examples/*.png`` (torchvision + Pillow).
- ``summary.json`` (counts, flags, skipped checks) and ``transfer.json`` (the audit's transfer
  attacks; the next aggregation reuses them as a cache).

Safe while trials are still running (``result.json`` appears atomically and last) and idempotent:
everything goes to a temporary sibling directory that replaces ``aggregate/`` at the end. Only
records with our ``schema`` are read: Ray Tune writes its own ``result.json`` (JSON lines) into
the same run directory.

Modules: :mod:`.scan` (trials, groups, per-trial values), :mod:`.columns` (what a column is),
:mod:`.tables` (tables and their files), :mod:`.paired` and :mod:`.stats` (intervals, paired
tests), :mod:`.series` (curves, matrices, correlations), :mod:`.tensorboard`, :mod:`.figures`;
:func:`aggregate` ties them together.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import audit as au
from ..rundir import AggregateDir, RunDir, read_json
from ..stats import BootstrapSpec
from .figures import write_figures
from .files import write_table_files, write_trials_csv
from .scan import Group, NoTrialsError, Scan, Trial, group_trials, hparams, metrics, scan_run, slug
from .series import correlation_markdown, jacobian_correlations, matrices, matrix_markdown
from .tables import build_tables, table_markdown
from .tensorboard import write_tensorboard

__all__ = [
    "Group",
    "NoTrialsError",
    "Scan",
    "Summary",
    "Trial",
    "aggregate",
    "build_tables",
    "group_trials",
    "hparams",
    "metrics",
    "scan_run",
    "slug",
]


@dataclass
class Summary:
    out: Path
    n_trials: int
    unfinished: list
    ignored: list
    markdown: str
    flags: dict  # trial name -> [Flag]
    transfers: dict
    excluded: list = None  # [(trial dir, why)]: finished trials without this checkpoint's evaluation


def aggregate(
    run_dir,
    out=None,
    transfer: bool = True,
    rules: Optional[au.AuditRules] = None,
    device=None,
    checkpoint: str = "last",
    bootstrap: BootstrapSpec = BootstrapSpec(),
) -> Summary:
    """Read the run, audit every trial, write ``out`` (default ``RUN/aggregate``, or
    ``RUN/aggregate_best`` for ``checkpoint="best"``). Raises NoTrialsError when the run has no
    trials at all (finished or not)."""
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    out = Path(out) if out is not None else rd.aggregate_for(checkpoint)
    scan = scan_run(run_dir, exclude=[rd.aggregate, rd.aggregate_for(checkpoint), out], checkpoint=checkpoint)
    if checkpoint != "last" and transfer:
        transfer = False
        for t in scan.trials:
            t.skipped.append(
                "transfer_beats_whitebox: not run for the best checkpoint (it attacks the final weights)"
            )
    if not scan.trials and not scan.unfinished and not scan.excluded:
        raise NoTrialsError(f"no trials under {run_dir} (no result.json, config.json or checkpoint.pt)")
    if checkpoint != "last" and not scan.trials and scan.excluded:
        raise NoTrialsError(
            f"no trial under {run_dir} evaluated its {checkpoint} checkpoint "
            f"(the grid needs evaluation.checkpoints: [last, {checkpoint}])"
        )
    transfers = _audit(scan, rules, transfer, device, read_json(AggregateDir(out).transfer) or {})
    groups = group_trials(scan.trials)
    tables = build_tables(groups, bootstrap)
    corr = jacobian_correlations(groups)
    markdown, audit_md = _markdown(run_dir, checkpoint, scan, tables, groups, corr)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir(parents=True)
    new = AggregateDir(tmp)
    try:
        new.tables.write_text(markdown)
        for tab in tables:
            write_table_files(tab, new)
        new.transfer.write_text(json.dumps(transfers, indent=1))
        new.jacobian_correlation.write_text(json.dumps(corr, indent=1))
        new.summary.write_text(json.dumps(_summary(run_dir, checkpoint, scan), indent=1))
        write_trials_csv(scan.trials, new.trials_csv)
        if scan.trials:
            write_tensorboard(new.tb, scan.trials, groups, markdown, audit_md)
            write_figures(new.figures, groups)
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    flags = {t.name: t.flags for t in scan.trials}
    return Summary(
        out, len(scan.trials), scan.unfinished, scan.ignored, markdown, flags, transfers, scan.excluded
    )


def _audit(scan: Scan, rules, transfer: bool, device, cache: dict) -> dict:
    """Transfer attacks (``cache``: the previous aggregation's, reused where still valid), then every
    trial's checks: ``t.checks``, ``t.flags`` and ``t.skipped`` (not tested, with the reason)."""
    pairs = [(t.dir, t.record) for t in scan.trials]
    transfers, errors = au.transfers_for_run(pairs, cache, device) if transfer else ({}, {})
    for t in scan.trials:
        if t.name in transfers:
            t.record["transfer"] = transfers[t.name]
        std = au.find_standard(t.record, pairs)
        t.checks = au.checks(t.record, rules, std[1] if std else None)
        t.flags = [au.Flag(c.name, c.detail) for c in t.checks if c.status == "flagged"]
        t.skipped += [f"{c.name}: not tested: {c.detail}" for c in t.checks if c.status == "not tested"]
        t.skipped += errors.get(t.name, [])
    return transfers


def _markdown(run_dir: Path, checkpoint: str, scan: Scan, tables: list, groups: list, corr: list) -> tuple:
    """(tables.md, the audit section): the tables, matrices, Jacobian correlations and every trial's flags."""
    excluded = (
        f"; {len(scan.excluded)} finished trial(s) without a {checkpoint} checkpoint evaluation excluded."
        if scan.excluded
        else "."
    )
    md = [
        f"# Aggregate of {run_dir.name} ({checkpoint} checkpoint)",
        "",
        f"{len(scan.trials)} finished trial(s); {len(scan.unfinished)} unfinished trial(s) skipped"
        + excluded,
        "",
    ] + [table_markdown(t) for t in tables]
    md += [matrix_markdown(k, m) for k, m in matrices(groups).items()]
    md += [correlation_markdown(c) for c in corr]
    audit_md = "\n".join(
        f"- {t.name}: "
        + ("; ".join(str(f) for f in t.flags) or "no flags")
        + (
            " — not tested: " + "; ".join(s.split(": not tested: ", 1)[0] for s in t.skipped)
            if t.skipped
            else ""
        )
        for t in scan.trials
    )
    audit_md += (
        '\n\nA check marked "not tested" could not fire on that trial (the reason is in summary.json, '
        "skipped_checks); it is not a pass. Every flag is documented in docs/audit.md."
    )
    return "\n".join(md) + "\n## Audit flags\n\n" + (audit_md or "(no finished trials)") + "\n", audit_md


def _summary(run_dir: Path, checkpoint: str, scan: Scan) -> dict:
    return {
        "run_dir": str(run_dir),
        "n_trials": len(scan.trials),
        "n_unfinished": len(scan.unfinished),
        "unfinished": [str(p) for p in scan.unfinished],
        "checkpoint": checkpoint,
        "excluded": [{"trial": str(d), "why": why} for d, why in scan.excluded],
        "ignored": [str(p) for p in scan.ignored],
        "flags": {t.name: [f.as_dict() for f in t.flags] for t in scan.trials},
        "skipped_checks": {t.name: t.skipped for t in scan.trials},
        "checks": {t.name: [c.as_dict() for c in t.checks] for t in scan.trials},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _swap(tmp: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
