"""Launch (or resume) a sweep.

    python sweeps/launch.py --grid quickstart                      # local Ray, or SLURM if sbatch is on PATH
    python sweeps/launch.py --grid lambda_eps.yaml --partition gpu # one SLURM job for the whole sweep
    python sweeps/launch.py --grid lambda_eps --dry-run            # the trial table and a cost estimate
    python sweeps/launch.py --status NAME                          # where a run stands

Launching again with the same --name resumes: finished trials are kept, unfinished and errored
trials continue from their last checkpoint. Bad input exits 2 with one line.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

from sweeps import disk
from sweeps.grid import Grid, find_grid, load_grid, trial_resources
from sweeps.show import print_dry_run, print_status
from uncertainty_robust.errors import UserError, exit_on_user_error
from uncertainty_robust.rundir import RunDir, read_json, write_json

SWEEPS_DIR = Path(__file__).resolve().parent


class LaunchError(UserError, ValueError):
    """The grid cannot run on the chosen cluster as it is, or the run directory is not this grid's (one line)."""


# A run name is one directory name under --storage (and the SLURM job's name, ur-<name>); 100 fits
# every filesystem's 255-byte limit on a name with room to spare, and a run directory's deepest
# path (Ray's logs, Tune's checkpoints, a trial's eval_state/) adds at most RUN_PATH_MAX bytes to it.
NAME_MAX = 100
RUN_PATH_MAX = 400


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sweeps/launch.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--grid",
        default="quickstart",
        help="YAML grid: a path, or a bare name found in sweeps/ (default: quickstart)",
    )
    p.add_argument(
        "--name",
        help=f"experiment name (default: the grid's name): ASCII letters, digits, '-', '_', '.', at most "
        f"{NAME_MAX} characters; the same name resumes",
    )
    p.add_argument(
        "--cluster", choices=["local", "slurm"], help="default: slurm when sbatch is on PATH, else local"
    )
    p.add_argument("--partition", help="SLURM partition (checked against sinfo)")
    p.add_argument("--nodes", type=int, help="SLURM nodes (default from the grid's slurm.nodes)")
    p.add_argument("--time", type=int, dest="time_min", help="SLURM time limit in minutes")
    p.add_argument("--cpus-per-node", type=int, help="SLURM CPUs per node")
    p.add_argument("--gpus-per-node", type=int, help="SLURM GPUs per node")
    p.add_argument("--mem-gb", type=int, help="SLURM memory per node (GB)")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument(
        "--sbatch-opt",
        action="append",
        default=[],
        help="extra sbatch option, repeatable (e.g. --sbatch-opt=--exclusive)",
    )
    p.add_argument("--wait", action="store_true", help="SLURM: follow the job until it ends")
    p.add_argument(
        "--dry-run", action="store_true", help="print the trials and a cost estimate; submit nothing"
    )
    p.add_argument(
        "--pilot",
        metavar="AGGREGATE",
        help="with --dry-run: an aggregate (RUN/aggregate or results/<part>) whose seed-to-seed spread "
        "sizes the grid: the smallest difference each row's paired test can detect (sweeps/power.py); "
        "its trials.csv prices the evaluation of the rows it ran (sweeps/cost.py)",
    )
    p.add_argument(
        "--print-schema",
        action="store_true",
        help="print every key a grid may set (defaults, rules) and exit",
    )
    p.add_argument(
        "--max-concurrent", type=int, help="trials at once (default: as many as the resources allow)"
    )
    p.add_argument(
        "--storage",
        default=os.environ.get("UR_STORAGE", "runs"),
        help="where run directories live (shared storage on a cluster; default ./runs or $UR_STORAGE)",
    )
    p.add_argument("--num-cpus", type=int, help="local: CPUs Ray may use (default: all)")
    p.add_argument("--no-aggregate", action="store_true", help="skip the aggregation step at the end")
    p.add_argument(
        "--no-disk-check",
        action="store_true",
        help="start even when --storage has less free space than the run's estimate (see --dry-run)",
    )
    p.add_argument("--status", metavar="NAME", help="print the state of run NAME and exit")
    p.add_argument(
        "--max-requeues",
        type=int,
        help="SLURM: time-outs after which the job stops requeuing itself (default: the grid's "
        "slurm.max_requeues, 100)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the final summary (and errors)")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print everything: Ray's and Tune's output, every trial's and rank's log lines",
    )
    return p


def verbosity(args) -> int:
    """0 with -q, 2 with -v, else 1 (see cluster/console.py)."""
    if args.quiet and args.verbose:
        raise LaunchError("-q/--quiet and -v/--verbose: choose one")
    return 0 if args.quiet else 2 if args.verbose else 1


# ------------------------------------------------------------------------------ plan & dry run
def write_run_dir(run_dir: Path, grid: Grid, grid_path: Path, args) -> None:
    """RUN/grid.yaml (as given, extends resolved), RUN/plan.json (resolved trials, resources), RUN/git_commit."""
    from uncertainty_robust.provenance import git_commit

    rd = RunDir(run_dir)
    trials = [c.to_dict() for c in grid.trials]
    ids = sorted(c.trial_id() for c in grid.trials)
    old = read_json(rd.plan)
    if old is not None and sorted(old.get("trial_ids", [])) != ids:
        raise LaunchError(
            f"run {run_dir} exists with a different grid ({len(old.get('trial_ids', []))} trials); "
            f"use another --name, or the grid it was launched with ({rd.grid})"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    search = dict(grid.search)
    if args.max_concurrent:
        search["max_concurrent"] = args.max_concurrent
    plan = {
        "name": run_dir.name,
        "grid_file": grid_path.name,
        "trials": trials,
        "trial_ids": ids,
        "trial_dirs": [c.dirname() for c in grid.trials],
        "resources": trial_resources(grid),
        "search": search,
        "slurm": grid.slurm,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if old is None:
        rd.grid.write_text(grid.source)
        rd.git_commit.write_text((git_commit() or "unknown") + "\n")
    write_json(plan, rd.plan)


# ------------------------------------------------------------------------------ main
@exit_on_user_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    verbosity(args)  # -q with -v: one line, exit 2
    storage = Path(args.storage)
    if args.print_schema:
        from sweeps.show import schema_text

        print(schema_text(), end="")
        return 0
    if args.status:
        return print_status(storage / _check_name(args.status, "--status"))
    if not args.grid:
        raise LaunchError("--grid is required (a YAML file or a bare name in sweeps/)")
    if args.pilot is not None and not args.dry_run:
        raise LaunchError("--pilot sizes a grid before it runs: use it with --dry-run")
    grid_path = find_grid(args.grid, SWEEPS_DIR)
    grid = load_grid(grid_path)
    cluster = args.cluster or ("slurm" if shutil.which("sbatch") else "local")
    if cluster == "local":
        _check_no_slurm_flags(args)
        if args.cluster is None:
            print("no sbatch on PATH: running on a local Ray cluster (--cluster local)", file=sys.stderr)
    name = _check_name(args.name or grid.name, "--name")
    run_dir = (storage / name).resolve()
    from cluster.slurm import SlurmError, check_slurm, slurm_options

    try:
        if cluster == "slurm":
            opts = slurm_options(grid, args)
            check_slurm(opts, trial_resources(grid))
        else:
            _check_local(grid, args)
    except (LaunchError, SlurmError) as e:
        if not args.dry_run:
            raise
        print(f"note: this grid cannot run here as it is: {e}", file=sys.stderr)
    if args.dry_run:
        print_dry_run(grid, cluster, pilot=args.pilot)
        return 0
    _check_storage(storage, run_dir, grid, cluster, args)
    _check_no_live_job(run_dir)
    _check_data(grid)
    write_run_dir(run_dir, grid, grid_path, args)
    if cluster == "slurm":
        from cluster.slurm import submit

        return submit(run_dir, opts, wait=args.wait)
    return run_local(run_dir, args)


def _check_name(name: str, flag: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise LaunchError(
            f"{flag}: {name!r} may contain only ASCII letters, digits, '-', '_' and '.' "
            "(and starts with a letter or digit)"
        )
    if len(name) > NAME_MAX:
        raise LaunchError(f"{flag}: a run name of {len(name)} characters; at most {NAME_MAX}")
    return name


def _check_storage(storage: Path, run_dir: Path, grid: Grid, cluster: str, args) -> None:
    """--storage is a directory that can be created and written, the run directory's paths fit the
    filesystem, and (unless --no-disk-check) it has the free space the run still needs."""
    why = disk.storage_problem(storage)
    if why is not None:
        raise LaunchError(f"--storage: {why}; give a directory that can be created and written")
    if run_dir.exists() and not run_dir.is_dir():
        raise LaunchError(f"--name: {run_dir} is a file, not a run directory; use another --name")
    try:
        path_max = os.pathconf(storage, "PC_PATH_MAX")
    except (OSError, ValueError):
        path_max = 4096
    if len(os.fsencode(run_dir)) + RUN_PATH_MAX > path_max:
        raise LaunchError(
            f"--storage: the run directory {run_dir} leaves under {RUN_PATH_MAX} bytes for the paths in "
            f"it (the filesystem allows {path_max}); use a shorter --storage or --name"
        )
    if not args.no_disk_check:
        cpus = args.num_cpus if cluster == "local" else None
        disk.check_free(storage, run_dir, grid.trials, disk.concurrency(grid, cluster, cpus))


def _check_no_live_job(run_dir: Path) -> None:
    """A relaunch while a SLURM job of the same run is still queued or running is refused (its
    driver would restore the same experiment behind this one's back)."""
    if not RunDir(run_dir).slurm_job.exists():
        return
    if shutil.which("squeue") is None:
        print(
            f"note: run {run_dir.name} was submitted to SLURM (see --status); no squeue here to check "
            "that its job has ended",
            file=sys.stderr,
        )
        return
    from cluster.slurm import active_job

    job_id = active_job(run_dir)  # SlurmError when squeue cannot tell: one line, exit 2
    if job_id:
        raise LaunchError(
            f"run {run_dir.name} has SLURM job {job_id} still queued or running; wait for it "
            f"(--status {run_dir.name}), or scancel {job_id} and relaunch"
        )


def _check_data(grid: Grid) -> None:
    """Every dataset the grid names is present (downloaded here first when the grid says
    ``download: true``: compute nodes often have no network, the submitting machine may)."""
    from uncertainty_robust.data import DatasetNotFound, load_arrays

    for ds, root, dl in sorted({(c.dataset, c.data_root, c.download) for c in grid.trials}, key=str):
        try:
            for split in ("train", "test"):
                load_arrays(ds, split, root, download=dl)
        except DatasetNotFound as e:
            raise LaunchError(f"dataset: {e}") from None


# the options that only a SLURM job reads (dest, flag); a local run given one would drop it unread
SLURM_ONLY = (
    ("partition", "--partition"), ("nodes", "--nodes"), ("time_min", "--time"),
    ("cpus_per_node", "--cpus-per-node"), ("gpus_per_node", "--gpus-per-node"), ("mem_gb", "--mem-gb"),
    ("account", "--account"), ("qos", "--qos"), ("constraint", "--constraint"),
    ("sbatch_opt", "--sbatch-opt"), ("wait", "--wait"), ("max_requeues", "--max-requeues"),
)  # fmt: skip


def _check_no_slurm_flags(args) -> None:
    """A local run refuses SLURM's options instead of dropping them: ``--partition gpu`` on a machine
    without sbatch would otherwise run the whole grid on this machine's CPUs. A dry run only notes it."""
    given = [flag for dest, flag in SLURM_ONLY if getattr(args, dest, None) not in (None, False, [])]
    if not given:
        return
    why = "--cluster local" if args.cluster == "local" else "sbatch is not on PATH, so the run would be local"
    msg = (
        f"{', '.join(given)}: SLURM option{'s' if len(given) > 1 else ''}, but {why}; "
        + ("drop them" if len(given) > 1 else "drop it")
        + " to run on a local Ray cluster"
        + ("" if args.cluster == "local" else ", or launch where SLURM's sbatch is on PATH")
    )
    if args.dry_run:
        print(f"note: {msg}", file=sys.stderr)
        return
    raise LaunchError(msg)


def _check_local(grid: Grid, args) -> None:
    res = trial_resources(grid)
    cpus = args.num_cpus or os.cpu_count() or 1
    need = res["workers"] * res["cpus_per_worker"]
    if need > cpus:
        raise LaunchError(
            f"resources: one trial needs {res['workers']} workers x {res['cpus_per_worker']:g} CPUs = {need:g} CPUs, "
            f"the local cluster has {cpus} (--num-cpus); lower resources.workers/cpus_per_worker"
        )
    if res["gpus_per_worker"] > 0:
        import torch

        if torch.cuda.device_count() < res["workers"] * res["gpus_per_worker"]:
            raise LaunchError(
                f"resources.gpus_per_worker: {res['gpus_per_worker']:g} GPU(s) per worker requested, "
                f"this machine has {torch.cuda.device_count()}; set it to 0 for CPU"
            )


class _Interrupt:
    """Ctrl-C (SIGINT) and SIGTERM on a local sweep. The first, while Tune runs, ends the run the way
    Tune ends it on SIGINT: trials stop, the experiment's state is saved, and the same command resumes
    it. Any other (a second one, or one before or after Tune's loop) raises KeyboardInterrupt at
    once. Installed here rather than left to Tune and Ray: Tune's own SIGINT handler lets the launcher
    report an interrupted sweep as finished (exit 0, then an aggregation of half a sweep), and the one
    ``ray.init`` installs for SIGTERM exits the driver with no word (``sys.exit(15)``)."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.in_tune = False

    def __enter__(self) -> _Interrupt:
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # the first Ctrl-C is ours, then Tune's stop
        self._before = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if self._env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env

    def rearm_sigterm(self) -> None:
        """After ``ray.init``, which puts its own ``sys.exit`` on SIGTERM."""
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.signals.append(signum)
        tune_stop = signal.getsignal(signal.SIGUSR1)  # Tune's run loop stops on SIGUSR1 (ray/tune/tune.py)
        if self.in_tune and len(self.signals) == 1 and callable(tune_stop):
            os.write(
                2,
                f"{self.name}: stopping the sweep and saving its state; the same command resumes it "
                f"({self.name} again: quit at once)\n".encode(),
            )
            tune_stop(signal.SIGUSR1, frame)
            return
        raise KeyboardInterrupt

    @property
    def name(self) -> str:
        """The first signal's name; SIGINT for a KeyboardInterrupt that came without one of ours."""
        return signal.Signals(self.signals[0] if self.signals else signal.SIGINT).name

    def exit_code(self) -> int:
        return 128 + signal.Signals[self.name].value


def run_local(run_dir: Path, args) -> int:
    import ray

    from cluster import console
    from cluster.driver import DriverLock, init_ray, run_sweep

    v = verbosity(args)
    rd = RunDir(run_dir)
    tag = console.new_tag()
    t0 = time.time()
    resume = f"run the same command again to resume (--name {run_dir.name}): finished trials are kept"
    stop = _Interrupt()
    try:
        with stop, DriverLock(run_dir):
            console.setup_logging(rd, tag, v)
            if v >= 1:
                for line in console.header(rd, tag):
                    console.out(line)
            init_ray(num_cpus=args.num_cpus or os.cpu_count(), verbosity=v)
            stop.rearm_sigterm()
            logs = console.link_ray_logs(rd, tag)
            try:
                stop.in_tune = True
                summary = run_sweep(run_dir, verbosity=v)
            finally:
                stop.in_tune = False
                ray.shutdown()
                console.keep_ray_logs(rd, tag, logs)
    except KeyboardInterrupt:
        console.out(f"interrupted ({stop.name}) after {time.time() - t0:.1f} s; {resume}")
        return stop.exit_code()
    if stop.signals:
        planned = len(rd.read_plan().get("trial_ids", []))
        summary["lines"][0] = console.headline(summary, interrupted=stop.name, planned=planned)
        write_json({**summary, "interrupted": stop.name}, rd.status)  # for --status
    for line in summary["lines"]:
        console.out(line)
    console.out(f"total {time.time() - t0:.1f} s with Ray's start and stop; logs in {rd.logs}")
    if any("disk full" in m for m in summary.get("error_messages", [])):
        grid = load_grid(rd.grid)
        console.out(
            f"disk full: the run needs ~{disk.human(disk.estimate(grid.trials, 1)['total'])} on "
            f"{run_dir.parent}; free space there and relaunch with --name {run_dir.name}: finished trials "
            "and checkpoints are kept"
        )
    if stop.signals:
        console.out(
            f"interrupted ({stop.name}): {resume}; not aggregated (ur-aggregate {run_dir} aggregates the "
            "finished trials)"
        )
        return stop.exit_code()
    failed = bool(summary["errors"])
    if not args.no_aggregate:
        try:
            failed |= aggregate(run_dir) != 0
        except KeyboardInterrupt:
            console.out(
                f"interrupted (SIGINT) while aggregating; the sweep is over, ur-aggregate {run_dir} aggregates it"
            )
            return 130
    return 1 if failed else 0


def aggregate(run_dir: Path) -> int:
    """The aggregation step (tables, TensorBoard HParams, audit), in-process; rerunnable any time
    with ``ur-aggregate RUN`` (``sweeps/aggregate.py``). Returns its exit status."""
    from sweeps.aggregate import main as aggregate_main

    rc = aggregate_main([str(run_dir)])
    if rc != 0:
        print(f"aggregation failed (exit {rc}); rerun: ur-aggregate {run_dir}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
