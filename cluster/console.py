"""What a sweep prints, and where everything else goes.

Verbosity (``launch.py -q`` = 0, default = 1, ``-v`` = 2):

* 0: only the final summary (one line per trial) and errors.
* 1: where the logs are (first lines), one line per trial-epoch from rank 0 (trial, epoch, key
  metrics, wall time), one line per finished or failed trial, Tune's status table every
  :data:`TABLE_EVERY_S` seconds while the sweep runs, and the summary.
* 2: everything: Ray's and Tune's own output, every actor's and rank's output, Tune's per-result
  lines.

Whatever the verbosity, the full logs are files under ``RUN/logs/`` (:class:`RunDir`):
``driver.<tag>.log`` (this process's Python logging: Ray, Tune, the driver) and ``ray.<tag>/``
(Ray's session logs: every Ray process and actor, linked while Ray runs and copied when it stops),
and each trial's ranks write ``RUN/trials/<trial>/trial.log``.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

from uncertainty_robust.rundir import RunDir

TABLE_EVERY_S = 120
VERBOSITY = 1  # read by the callback at event time (a restored experiment keeps its pickled callbacks)


def set_verbosity(v: int) -> None:
    global VERBOSITY
    VERBOSITY = int(v)


def out(line: str = "") -> None:
    print(line, flush=True)


def new_tag() -> str:
    """Names one driver's logs: ``YYYYmmdd-HHMMSS`` locally (SLURM jobs use ``jobid.restart``)."""
    return time.strftime("%Y%m%d-%H%M%S")


def setup_logging(run_dir: RunDir, tag: str, verbosity: int) -> Path:
    """The driver's Python logging (ours, Ray's, Tune's) into ``RUN/logs/driver.<tag>.log``; on the
    console only warnings of ours (verbosity 1), nothing (0) or everything at INFO (2)."""
    path = run_dir.driver_log(tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fh.setLevel(logging.DEBUG)
    ray_logger = logging.getLogger("ray")  # Ray's own handler prints to stderr and does not propagate
    if verbosity < 2:
        for h in list(ray_logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                ray_logger.removeHandler(h)
    ray_logger.addHandler(fh)
    root = logging.getLogger()
    for h in list(root.handlers):  # a basicConfig of an earlier incarnation in this process
        if getattr(h, "_ur_console", False):
            root.removeHandler(h)
    root.addHandler(fh)
    root.setLevel(logging.INFO)
    con = logging.StreamHandler(sys.stdout if verbosity >= 2 else sys.stderr)
    con.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    con.setLevel(logging.INFO if verbosity >= 2 else logging.WARNING if verbosity == 1 else logging.ERROR)
    con._ur_console = True
    if verbosity < 2:  # Ray's and Tune's warnings are in the log file, not on the console
        con.addFilter(lambda r: r.name.startswith("uncertainty_robust"))
    root.addHandler(con)
    return path


def header(run_dir: RunDir, tag: str) -> list[str]:
    """The first lines a sweep prints: where its files and logs are."""
    r = run_dir.root
    return [
        f"run directory: {r}",
        f"logs:          {run_dir.driver_log(tag)} (driver, Ray, Tune), {run_dir.ray_logs(tag)}/ (Ray "
        f"processes), {r}/trials/<trial>/trial.log (each trial's ranks)",
        f"TensorBoard:   tensorboard --logdir {r} --host 127.0.0.1",
    ]


def link_ray_logs(run_dir: RunDir, tag: str) -> Optional[Path]:
    """Point ``RUN/logs/ray.<tag>`` at Ray's session logs while Ray runs; returns the session's log
    directory (None when Ray does not say)."""
    try:
        import ray

        src = Path(ray._private.worker._global_node.get_logs_dir_path())  # no public API for it
    except Exception as e:  # a private API: a newer Ray may lack it; the logs are then only Ray's own
        logging.getLogger("uncertainty_robust.cluster").debug("no Ray log directory to link: %r", e)
        return None
    dst = run_dir.ray_logs(tag)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or not dst.exists():
        dst.unlink(missing_ok=True)
        dst.symlink_to(src, target_is_directory=True)
    return src


def keep_ray_logs(run_dir: RunDir, tag: str, src: Optional[Path]) -> None:
    """Replace the link by a copy once Ray has stopped (node-local /tmp does not outlive the job)."""
    dst = run_dir.ray_logs(tag)
    if src is None or not src.is_dir() or not dst.is_symlink():
        return
    try:
        tmp = dst.with_name(dst.name + ".copy")
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("old"), dirs_exist_ok=True)
        dst.unlink()
        tmp.rename(dst)
    except OSError as e:
        logging.getLogger("uncertainty_robust.cluster").warning("could not copy Ray's logs: %s", e)


# ------------------------------------------------------------------------------------ the lines
def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}" if abs(v) < 100 else f"{v:.4g}"
    return str(v)


def epoch_line(name: str, result: dict, epochs: Optional[int]) -> str:
    """``12:01:02 at_eps0.2_s0_00002  epoch 2/8  loss 1.850 acc 0.391 val_clean_acc 0.830 val_robust_acc 0.512  4.4 s``"""
    keys = ["train_loss", "train_acc", "val_clean_acc", "val_robust_acc"]
    shown = " ".join(f"{k.removeprefix('train_')} {_fmt(result[k])}" for k in keys if k in result)
    e = result.get("epoch", result.get("training_iteration"))
    of = f"/{epochs}" if epochs else ""
    wall = result.get("time_this_iter_s")
    again = result.get("ranks_restarted")
    return (
        f"{time.strftime('%H:%M:%S')} {name}  epoch {e}{of}  {shown}"
        + (f"  {wall:.1f} s" if wall else "")
        + (f"  (ranks restarted {again}x, see trial.log)" if again else "")
    ).rstrip()


def final_line(name: str, result: dict) -> str:
    total = result.get("time_total_s")
    return (
        f"{time.strftime('%H:%M:%S')} {name}  done: clean {_fmt(result.get('clean_acc'))}, "
        f"worst over attacks (mean over eps) {_fmt(result.get('worst_mean'))}"
        + (f", {total:.1f} s" if total else "")
    )


def _callback_base():
    from ray.tune import Callback

    return Callback


PROGRESS_EVERY_S = 10  # at most one evaluation progress line per trial in this many seconds


class EpochLines(_callback_base()):
    """Tune callback in the driver: one line per reported epoch (rank 0 reports; other ranks never
    do), one per finished or failed trial, and while a trial evaluates, its progress line (what rank
    0 writes to ``TrialDir.progress``) at most every :data:`PROGRESS_EVERY_S` seconds."""

    def on_step_begin(self, iteration, trials, **info):
        if VERBOSITY != 1:
            return
        now = time.time()
        seen = self.__dict__.setdefault("_progress", {})  # trial id -> (time printed, line)
        for trial in trials:
            if trial.status != "RUNNING":
                continue
            last_t, last_line = seen.get(trial.trial_id, (0.0, None))
            if now - last_t < PROGRESS_EVERY_S:
                continue
            p = progress_of(trial.config)
            if p is not None and p.get("line") != last_line and p.get("time", 0) > last_t:
                out(f"{time.strftime('%H:%M:%S')} {trial}  {p['line']}")
                seen[trial.trial_id] = (now, p.get("line"))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if VERBOSITY != 1:
            return
        if result.get("done") and "clean_acc" in result:
            out(final_line(str(trial), result))
        elif "epoch" in result:
            epochs = (trial.config.get("trial") or {}).get("epochs")
            out(epoch_line(str(trial), result, epochs))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if VERBOSITY == 1 and "clean_acc" not in last:  # stopped early by the scheduler (ASHA)
            out(
                f"{time.strftime('%H:%M:%S')} {trial}  stopped by the scheduler after epoch {last.get('epoch', '?')}"
            )

    def on_trial_error(self, iteration, trials, trial, **info):
        if VERBOSITY < 1:
            return
        err = ""
        try:
            err = trial.get_error()
            err = (str(err).strip().splitlines() or [""])[-1] if err else ""
        except Exception as e:  # the error file is Tune's; the FAILED line stands without its text
            logging.getLogger("uncertainty_robust.cluster").debug("cannot read %s's error: %r", trial, e)
        out(f"{time.strftime('%H:%M:%S')} {trial}  FAILED{': ' + err[:300] if err else ''}")


def progress_of(config: dict) -> Optional[dict]:
    """The latest evaluation progress of a sweep trial (its ``TrialDir.progress``), None if none."""
    from uncertainty_robust.config import TrialConfig
    from uncertainty_robust.rundir import read_json

    if not config.get("run_dir") or not config.get("trial"):
        return None
    try:
        name = TrialConfig.from_dict(config["trial"], check=False).dirname()
    except (TypeError, ValueError):
        return None
    return read_json(RunDir(config["run_dir"]).trial(name).progress)


def table_reporter(parameter_columns: dict, metric_columns: dict):
    """Tune's classic status table, printed every :data:`TABLE_EVERY_S` s while trials run (not at
    the start, where it says nothing, nor at the end, where the summary follows)."""
    from ray.tune import CLIReporter

    class PeriodicTable(CLIReporter):
        def should_report(self, trials, done=False):
            if done or VERBOSITY < 1:
                return False
            if self._last_report_time == 0:
                self._last_report_time = time.time()
                return False
            return super().should_report(trials, done)

        def report(self, trials, done, *sys_info):
            # a status table is a view: one Tune cannot draw (e.g. a trial that a resume by an earlier
            # version left with Tune's placeholder for config["shown"]) must not end the sweep
            try:
                super().report(trials, done, *sys_info)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                logging.getLogger(__name__).warning("status table skipped: %s: %s", type(e).__name__, e)

    return PeriodicTable(
        parameter_columns=parameter_columns,
        metric_columns=metric_columns,
        max_report_frequency=TABLE_EVERY_S if VERBOSITY < 2 else 30,
        sort_by_metric=False,
    )


def trial_state(result) -> str:
    """A Tune result's state in the summary: ERROR, done (evaluated), or stopped (before its
    evaluation: interrupted, or ended early by the scheduler)."""
    m = result.metrics or {}
    if result.error:
        return "ERROR"
    return "done" if m.get("done") and "clean_acc" in m else "stopped"


def headline(summary: dict, interrupted: str = "", planned: int = 0) -> str:
    """The summary's first line, from its counts (``trials``, ``done``, ``errors``, ``seconds``); an
    interrupted sweep counts its ``planned`` trials (Tune knows only those it has started)."""
    line = f"{summary['done']} done, {summary['errors']} errored"
    if not interrupted:
        return f"sweep finished in {summary['seconds']:.1f} s: {summary['trials']} trials, {line}"
    n = max(planned, summary["trials"])
    return (
        f"sweep interrupted ({interrupted}) after {summary['seconds']:.1f} s: {n} trials, {line}, "
        f"{n - summary['done'] - summary['errors']} unfinished"
    )


def summary_lines(results, seconds: float) -> list[str]:
    """One line per trial (state, epochs, clean, worst, time), then the errors."""
    rows, errors = [], []
    for r in results:
        m = r.metrics or {}
        cfg = (r.config or {}).get("trial") or {}
        name = m.get("trial_id") or "?"
        try:
            from uncertainty_robust.config import TrialConfig

            name = f"{TrialConfig(**cfg).short_name()}_{name[-5:]}"
        except TypeError:  # a config of another schema (a user's own Tune script): Tune's name stays
            pass
        state = trial_state(r)
        if state == "ERROR":
            errors.append(f"{name}: {(str(r.error).strip().splitlines() or [''])[-1][:300]}")
        rows.append(
            (
                name,
                state,
                f"{m.get('epoch', cfg.get('epochs') if state == 'done' else '-')}/{cfg.get('epochs', '?')}",
                _fmt(m["clean_acc"]) if "clean_acc" in m else "-",
                _fmt(m["worst_mean"]) if "worst_mean" in m else "-",
                f"{m['time_total_s']:.1f}" if "time_total_s" in m else "-",
            )
        )
    w = max([len(r[0]) for r in rows] + [5])
    counts = {"trials": len(rows), "done": sum(r[1] == "done" for r in rows), "errors": len(errors)}
    lines = [
        headline({**counts, "seconds": seconds}),
        f"{'trial':<{w}}  {'state':<7} {'epochs':>6} {'clean':>6} {'worst(mean eps)':>15} {'time s':>7}",
    ]
    lines += [f"{n:<{w}}  {s:<7} {e:>6} {c:>6} {wm:>15} {t:>7}" for n, s, e, c, wm, t in rows]
    lines += [f"  error: {e}" for e in errors]
    return lines
