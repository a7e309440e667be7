"""What the launcher prints without launching anything: the dry run (the trial table, each trial's
evaluation plan, the cost estimate, the disk it needs), ``--status`` (where a run stands) and
``--print-schema`` (every key a grid may set, generated from the fields' metadata)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from sweeps import disk
from sweeps.grid import AXES, SECTIONS, TOP_FIELDS, Grid, trial_resources
from uncertainty_robust.config import TrialConfig
from uncertainty_robust.errors import UserError
from uncertainty_robust.rundir import RunDir, read_json


class NoRun(UserError, ValueError):
    """``--status`` of a name with no run directory."""


def _shares_source(est: dict, pilot: str | None, n: int) -> str:
    """Where the dry run took the shares of points each attack leaves standing."""
    prior = "a prior of the points each attack leaves standing"
    if pilot is None:
        return prior
    k = est["priced_by_pilot"]
    return (
        f"the points each attack left standing in the pilot {pilot} for {k} of the {n} trials (same "
        f"defense, lambda and eps; between its eps interpolated), {prior} for "
        + ("the rest" if k < n else "eps outside the pilot's")
    )


def print_dry_run(grid: Grid, cluster: str, pilot: str | None = None) -> None:
    from sweeps import cost, power
    from uncertainty_robust.evaluation import EvalPlan

    sized = (
        power.lines(grid.trials, Path(pilot)) if pilot is not None else None
    )  # a bad pilot: before any output
    shares = cost.pilot_shares(Path(pilot)) if pilot is not None else None
    res = trial_resources(grid)
    print(
        f"grid {grid.name!r}: {len(grid.trials)} trials on {cluster}; each {res['workers']} DDP worker(s) x "
        f"{res['cpus_per_worker']:g} CPU, {res['gpus_per_worker']:g} GPU"
    )
    print(
        f"{'#':>3} {'defense':<9} {'lambda':>7} {'eps':>7} {'seed':>4} {'epochs':>6} {'workers':>7} "
        f"{'grad evals':>11} {'CPU-h':>7}"
    )
    est = cost.estimate(grid.trials, pilot=shares)
    for i, (c, e) in enumerate(zip(grid.trials, est["per_trial"])):
        shown = c.shown()
        print(
            f"{i:>3} {c.defense:<9} {shown['lam']:>7} {shown['eps']:>7} {c.seed:>4} {c.epochs:>6} {res['workers']:>7} "
            f"{e['grad_evals']:>11.3g} {e['cpu_hours']:>7.3f}"
        )
    c0 = grid.trials[0]
    print(
        f"dataset {c0.dataset}, model {c0.model} (width {c0.width:g}); test eps {c0.test_eps}; attacks "
        f"{', '.join(a.label() for a in c0.attacks)} on {c0.n_eval} test points; the evaluation plan "
        f"of trial 0 (docs/evaluation.md):"
    )
    for line in EvalPlan.of(c0).describe():
        print(f"  {line}")
    parts = ", ".join(f"{k} {v:.3g}" for k, v in est["parts"].items())
    print(
        f"total: {est['grad_evals']:.3g} gradient evaluations (forward+backward per example: {parts}; the "
        f"evaluation's from {_shares_source(est, pilot, len(grid.trials))}, sweeps/cost.py), "
        f"~{est['cpu_hours']:.2f} CPU-hours on this machine's CPU ({est['threads']} thread): passes at the measured "
        f"{est['sec_per_grad_eval'] * 1e3:.3f} ms per example, plus each attack's measured cost per loop "
        f"iteration (what small batches of survivors pay); GPUs are typically 20-100x faster per example"
    )
    print(disk.summary_line(grid.trials, disk.concurrency(grid, cluster)))
    if sized is not None:
        for line in sized:
            print(line)
    else:
        n = min(
            len({c.seed for c in grid.trials if c.defense == d}) for d in {c.defense for c in grid.trials}
        )
        k = power.detectable(1.0, n)
        print(
            "smallest detectable difference: give --pilot AGGREGATE (e.g. results/combined) for the spread s of "
            "per-seed paired differences; with "
            + (f"{n} seeds it is {k:.2f} x s" if k else f"{n} seed no seed-level test is possible")
            + " (seed-level paired t-test, alpha 0.05, power 0.8; sweeps/power.py)"
        )
    print("dry run: nothing submitted")


def print_status(run_dir: Path) -> int:
    rd = RunDir(run_dir)
    if not rd.plan.exists():
        raise NoRun(f"no run at {run_dir} (no plan.json); runs live under --storage (default ./runs)")
    trials = rd.trial_dirs()
    done = sum(t.result.exists() for t in trials)
    started = sum(t.checkpoint.exists() for t in trials)
    print(f"run {run_dir}: {done}/{len(trials)} trials finished, {started - done} in progress or stopped")
    st = read_json(rd.status)
    if st is not None:
        print(
            "last driver exit: "
            + (f"interrupted ({st['interrupted']}), " if st.get("interrupted") else "")
            + f"{st['trials']} trials, {st['errors']} errored"
            + "".join(f"\n  error: {m}" for m in st.get("error_messages", []))
        )
        for line in st.get("lines", [])[1:]:  # the per-trial summary (its errors are above)
            if not line.startswith("  error: "):
                print(f"  {line}")
    job = read_json(rd.slurm_job)
    if job is not None:
        from cluster.slurm import job_state

        print(f"SLURM {job_state(run_dir)} (partition {job['partition']}, submitted {job['submitted']})")
        print(f"logs: {job['stdout']}\n      {job['stderr']}")
    if rd.failed.exists():
        print(f"FAILED: {rd.failed.read_text().strip()}")
    return 0


AXIS_HELP = {
    "defenses": "the defenses to train, each a trial family (required)",
    "lambdas": "LS alpha / EntM lambda / TRADES beta for the defenses that take one; or {defense: [...]}",
    "train_eps": "training eps of the adversarial defenses",
    "epochs": "training epochs; a list makes a training-budget ladder (one trial per value, its own schedule)",
    "seeds": "one trial per seed",
}


def _yaml(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _line(key: str, default, rule, help_: str, indent: str = "") -> str:
    what = "; ".join(x for x in (help_, rule.describe() if rule is not None else "") if x)
    return f"{indent}{key}: {_yaml(default)}" + (f"  # {what}" if what else "")


def schema_text() -> str:
    """Every key a grid may set, with its default, what it may be and what it does, generated from
    the fields' metadata (``launch.py --print-schema``)."""
    from cluster import settings as st

    by_key = {f.metadata["grid"]: f for f in dataclasses.fields(TrialConfig) if f.metadata.get("grid")}
    default = TrialConfig()
    out = [
        "# every key is optional except defenses; a bad key or value: one line naming it, exit 2",
        "name: <file stem>  # the run's default name (--name overrides)",
        "description: <text>",
        "extends: <grid>  # start from another grid: sections merge key by key, other keys replace",
    ]
    for axis in AXES:
        f = by_key[axis]
        out.append(_line(axis, [getattr(default, f.name)], f.metadata.get("rule"), AXIS_HELP[axis]))
    for key in TOP_FIELDS:
        f = by_key[key]
        out.append(_line(key, getattr(default, f.name), f.metadata.get("rule"), f.metadata.get("help", "")))
    for sec, mapping in SECTIONS.items():
        out.append(f"{sec}:")
        for k, name in mapping.items():
            f = next(x for x in dataclasses.fields(TrialConfig) if x.name == name)
            value = getattr(default, name)
            if name in ("attacks", "autoattack"):
                value = [a.label() if a.attack.takes_steps else a.name for a in value]
            out.append(_line(k, value, f.metadata.get("rule"), f.metadata.get("help", ""), "  "))
    for sec, record in st.SECTIONS.items():
        out.append(f"{sec}:")
        inst = record()
        for f in dataclasses.fields(record):
            out.append(
                _line(f.name, getattr(inst, f.name), f.metadata.get("rule"), f.metadata.get("help", ""), "  ")
            )
    return "\n".join(out) + "\n"
