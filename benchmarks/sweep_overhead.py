"""What a sweep through ``sweeps/launch.py`` costs on top of its trials, and what the quickstart costs.

    python benchmarks/sweep_overhead.py                       # everything (~25 min on 2 cores)
    python benchmarks/sweep_overhead.py --sizes 1 10          # skip the 60-s trials
    python benchmarks/sweep_overhead.py --no-slurm            # local Ray only
    python benchmarks/sweep_overhead.py --before <commit>     # + the quickstart at that commit

Measures, and writes to ``benchmarks/results/sweep.{md,json}`` with the machine line:

1. **Overhead ratio.** For trials of about 1 s, 10 s and 60 s (4 trials each: standard, EntM, AT,
   AT+EntM on the embedded MNIST digits, ``small_cnn`` width 0.25, 1 rank with 1 thread), the
   wall time of the same 4 trials run (a) in a plain loop of ``run_trial`` in one fresh process,
   (b) through ``launch.py --cluster local`` and (c) through ``launch.py`` as one job on the local
   SLURM (``--partition gpu --wait``), one trial at a time (``--max-concurrent 1``) so that (b) and
   (c) do the loop's work, not more in parallel. Ratio = (b or c) / (a); overhead per trial =
   ((b or c) - (a)) / 4. Goals (issue 11): ratio <= 1.10 at 60-s trials, <= 3 s per trial at 1-s
   trials. The run of each size is (a), (b), (c) back to back; the load average is recorded.
2. **Quickstart.** ``python sweeps/launch.py --cluster local`` (4 trials x 2 DDP ranks, aggregation
   included) in a fresh ``git clone`` of this checkout's HEAD and, with ``--before``, of that commit:
   wall time and the number of lines it prints (stdout + stderr). Goal: under 1 minute on 2 cores.

Benchmarks measure; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZES = {  # target seconds per trial -> grid size (per-epoch cost measured: ~0.4 s per 1000 digits)
    1: {"epochs": 2, "n_train": 800},
    10: {"epochs": 8, "n_train": 3000},
    60: {"epochs": 18, "n_train": 8000},
}
GRID = """# benchmarks/sweep_overhead.py: {size} s per trial on average (AT trials ~4x the standard ones)
name: bench{size}
dataset: mnist_embedded
model: small_cnn
width: 0.25
epochs: {epochs}
batch_size: 100
n_train: {n_train}
optimizer: {{name: adam, lr: 0.002}}
defenses: [standard, entm, at, at_entm]
lambdas: [0.5]
train_eps: [0.2]
seeds: [0]
adversarial: {{pgd_steps: 2, eps_step: 0.1}}
evaluation:
  test_eps: [0.0, 0.1, 0.3]
  attacks: [fgsm, "pgd:5", "cw:5"]
  n_eval: 64
  jacobian_points: 16
resources: {{workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}}
search: {{mode: grid, trial_retries: 0, worker_retries: 0}}
slurm: {{nodes: 1, time_min: 60}}
"""
LOOP = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)
from pathlib import Path
from sweeps.grid import load_grid
from uncertainty_robust.trial import run_trial
grid = load_grid(Path(sys.argv[1]))
t1 = time.perf_counter()
per = []
for cfg in grid.trials:
    s = time.perf_counter()
    rec = run_trial(cfg, Path(sys.argv[2]) / cfg.trial_id())
    per.append({"trial": cfg.short_name(), "wall_s": time.perf_counter() - s,
                "train_s": rec["train"]["train_seconds"], "eval_s": rec["eval_seconds"]})
print("LOOP_JSON " + json.dumps({"import_s": t1 - t0, "loop_s": time.perf_counter() - t1, "trials": per}))
"""


SUBREAPER = False


def r3(x):
    return None if x is None else round(float(x), 3)


def load_avg() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    """The machine line's facts, read without importing torch in this process (it times process starts)."""

    def ver(mod):
        try:
            return __import__(mod).__version__
        except Exception:
            return None

    cpu = None
    try:
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "torch": ver("torch"),
        "ray": ver("ray"),
        "submitit": ver("submitit"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "loadavg_start": load_avg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def machine_line(m: dict) -> str:
    return (
        f"{m['host']}: {m['cpu_count']} cores ({m['cpu_model']}), python {m['python']}, torch {m['torch']}, "
        f"ray {m['ray']}, submitit {m['submitit']}, commit {m['commit']}, load average at start "
        f"{m['loadavg_start']}, at end {m.get('loadavg_end')}"
    )


def _git(*args, cwd=REPO) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    return r.stdout.strip()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _env(repo: Path = REPO) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(repo)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


def _subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux), so that the CPU time of every
    process a command starts (Ray's daemons and workers, the ranks) ends up in RUSAGE_CHILDREN."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    return ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER


def _reap(timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.2)


def _run(cmd, cwd=REPO, env=None, timeout=3600) -> tuple:
    """(completed process, wall s, CPU s of the command and all its descendants; None when this process
    could not become their reaper)."""
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout
    )
    wall = time.perf_counter() - t0
    _reap()  # Ray's processes outlive launch.py by a moment
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime) if SUBREAPER else None
    return p, wall, cpu


def _tune_trials(run_dir: Path) -> list:
    """Per trial: Tune's total time and our compute (train + eval), from the trial and Tune files."""
    rows = []
    for rj in sorted((run_dir / "tune").glob("*/result.json")):
        lines = [json.loads(x) for x in rj.read_text().splitlines() if x.strip()]
        if not lines:
            continue
        last = lines[-1]
        rows.append(
            {"tune_total_s": r3(last.get("time_total_s")), "defense": last["config"]["trial"]["defense"]}
        )
    for td in sorted((run_dir / "trials").glob("*")):
        rp = td / "result.json"
        if rp.exists():
            rec = json.loads(rp.read_text())
            d = rec["config"]["defense"]
            row = next((r for r in rows if r["defense"] == d and "compute_s" not in r), None)
            if row is not None:
                row["compute_s"] = r3(rec["train"]["train_seconds"] + rec["eval_seconds"])
                row["in_trial_overhead_s"] = r3(row["tune_total_s"] - row["compute_s"])
    return rows


def _loop(grid: Path, work: Path, tag: str) -> dict:
    p, wall, cpu = _run([sys.executable, "-c", LOOP, grid, work / tag])
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("LOOP_JSON ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"plain loop failed ({p.returncode}): {p.stderr[-2000:]}")
    loop = json.loads(line[len("LOOP_JSON ") :])
    return {
        "wall_s": r3(wall),
        "cpu_s": r3(cpu),
        "import_s": r3(loop["import_s"]),
        "trials": [{k: r3(v) if isinstance(v, float) else v for k, v in t.items()} for t in loop["trials"]],
        "compute_s": r3(sum(t["train_s"] + t["eval_s"] for t in loop["trials"])),
        "mean_trial_s": r3(sum(t["wall_s"] for t in loop["trials"]) / len(loop["trials"])),
    }


def bench_size(size: int, work: Path, slurm: bool) -> dict:
    """Loop, local sweep, SLURM sweep, loop again (the baseline is the mean of the two loops, so
    load that drifts during the runs biases the ratios less)."""
    spec = SIZES[size]
    grid = work / f"bench{size}.yaml"
    grid.write_text(GRID.format(size=size, **spec))
    out = {
        "size_s": size,
        **spec,
        "trials": 4,
        "measured": time.strftime("%Y-%m-%dT%H:%M"),
        "loadavg_before": load_avg(),
    }
    log(f"{size}-s trials: plain loop")
    loops = [_loop(grid, work, f"loop{size}a")]
    common = ["--grid", grid, "--storage", work / "runs", "--max-concurrent", "1", "--no-aggregate", "-q"]
    log(f"{size}-s trials: launch.py --cluster local")
    p, wall, cpu = _run(
        [sys.executable, "sweeps/launch.py", *common, "--name", f"local{size}", "--cluster", "local"]
    )
    (work / f"local{size}.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    local = (p, wall, cpu, work / "runs" / f"local{size}")
    sl = None
    if slurm:
        log(f"{size}-s trials: launch.py on the local SLURM (--partition gpu --wait)")
        env = dict(_env(), UR_NO_AGGREGATE="1")
        p, wall, cpu = _run(
            [
                sys.executable,
                "sweeps/launch.py",
                *common,
                "--name",
                f"slurm{size}",
                "--partition",
                "gpu",
                "--wait",
                "--cpus-per-node",
                "2",
            ],
            env=env,
        )
        (work / f"slurm{size}.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
        sl = (p, wall, None, work / "runs" / f"slurm{size}")  # the job's CPU is under slurmd, not here
    log(f"{size}-s trials: plain loop again")
    loops.append(_loop(grid, work, f"loop{size}b"))
    base = {
        "wall_s": r3(sum(x["wall_s"] for x in loops) / 2),
        "cpu_s": r3(sum(x["cpu_s"] for x in loops) / 2) if all(x["cpu_s"] for x in loops) else None,
        "compute_s": r3(sum(x["compute_s"] for x in loops) / 2),
        "mean_trial_s": r3(sum(x["mean_trial_s"] for x in loops) / 2),
        "runs": loops,
    }
    out["loop"] = base
    out["local"] = _sweep_row(*local, base)
    if sl is not None:
        out["slurm"] = _sweep_row(*sl, base)
        out["slurm"].update(_sacct(sl[3]))
    out["loadavg_after"] = load_avg()
    return out


def _sweep_row(p, wall: float, cpu, run_dir: Path, base: dict) -> dict:
    n = 4
    row = {
        "wall_s": r3(wall),
        "rc": p.returncode,
        "ratio_vs_loop": r3(wall / base["wall_s"]),
        "overhead_per_trial_s": r3((wall - base["wall_s"]) / n),
        "cpu_s": r3(cpu),
    }
    if cpu is not None and base.get("cpu_s"):
        row["cpu_ratio_vs_loop"] = r3(cpu / base["cpu_s"])
        row["cpu_overhead_per_trial_s"] = r3((cpu - base["cpu_s"]) / n)
    fin = next((ln for ln in p.stdout.splitlines() if ln.startswith("sweep finished in")), None)
    if fin:
        row["tune_s"] = r3(float(fin.split("finished in", 1)[1].split(" s:", 1)[0]))
    tot = next((ln for ln in p.stdout.splitlines() if ln.startswith("total ")), None)
    if tot:
        row["with_ray_start_stop_s"] = r3(float(tot.split()[1]))
    trials = _tune_trials(run_dir)
    row["trials"] = trials
    comp = [t["compute_s"] for t in trials if t.get("compute_s") is not None]
    if comp:
        row["compute_s"] = r3(sum(comp))
    if "tune_s" in row and len(comp) == n:
        # Tune's loop minus the trials' own training + evaluation: per-trial engine cost (the first
        # trial of an actor also starts the actor and its forkserver)
        row["tune_minus_compute_per_trial_s"] = r3((row["tune_s"] - sum(comp)) / n)
        row["fixed_s"] = r3(wall - row["tune_s"])  # Python start, launch.py checks, Ray start/stop
    ov = [t["in_trial_overhead_s"] for t in trials if t.get("in_trial_overhead_s") is not None]
    if ov:
        row["in_trial_overhead_s"] = ov
    return row


def _sacct(run_dir: Path) -> dict:
    from datetime import datetime

    try:
        jid = json.loads((run_dir / "slurm_job.json").read_text())["job_id"]
    except (OSError, ValueError, KeyError):
        return {}
    r = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", str(jid), "-o", "Submit,Start,End,State"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    try:
        sub, start, end, state = r.stdout.strip().splitlines()[-1].split("|")
        f = "%Y-%m-%dT%H:%M:%S"
        return {
            "job": jid,
            "state": state,
            "queue_wait_s": (datetime.strptime(start, f) - datetime.strptime(sub, f)).total_seconds(),
            "job_elapsed_s": (datetime.strptime(end, f) - datetime.strptime(start, f)).total_seconds(),
        }
    except (ValueError, IndexError):
        return {"job": jid}


def bench_quickstart(ref: str, work: Path) -> dict:
    """The quickstart in a fresh clone at ``ref``: wall time and lines printed."""
    clone = work / f"clone-{ref[:12]}"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", ref], cwd=clone, check=True)
    commit = _git("rev-parse", "--short", "HEAD", cwd=clone)
    log(f"quickstart at {commit}: python sweeps/launch.py --cluster local (fresh clone)")
    la = load_avg()
    p, wall, cpu = _run(
        [sys.executable, "sweeps/launch.py", "--cluster", "local"], cwd=clone, env=_env(clone)
    )
    text = p.stdout + p.stderr
    (work / f"quickstart-{commit}.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    compute = 0.0
    for rp in (clone / "runs" / "quickstart" / "trials").glob("*/result.json"):
        rec = json.loads(rp.read_text())
        compute += rec["train"]["train_seconds"] + rec["eval_seconds"]
    return {
        "measured": time.strftime("%Y-%m-%dT%H:%M"),
        "cpu_s": r3(cpu),
        "trials_compute_s": r3(compute),
        "commit": commit,
        "rc": p.returncode,
        "wall_s": r3(wall),
        "lines": len(text.splitlines()),
        "stdout_lines": len(p.stdout.splitlines()),
        "stderr_lines": len(p.stderr.splitlines()),
        "loadavg_before": la,
        "loadavg_after": load_avg(),
        # the clone's path is this machine's: the committed results show it as CLONE
        "first_lines": [ln.replace(str(clone), "CLONE") for ln in p.stdout.splitlines()[:3]],
    }


def _f(x, fmt="{:.1f}", unit=" s") -> str:
    return "-" if x is None else fmt.format(x) + unit


def write_report(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(res, indent=1) + "\n")
    m = res["machine"]
    L = [
        "# Sweep engine: overhead of launch.py over a plain loop, and the quickstart",
        "",
        f"Machine: {machine_line(m)}. Written by `benchmarks/sweep_overhead.py` ({res['seconds']:.0f} s)"
        + (
            f"; rows not rerun come from its run of {res['merged_from']['started']} (commit "
            f"{res['merged_from']['commit']}), each row with its own time and load averages"
            if res.get("merged_from")
            else ""
        )
        + ". The",
        "machine is shared with other engineers' work: wall times include waiting for a core (see the load",
        "averages); CPU times (every process of the run, Ray's daemons included) do not.",
        "",
        "Work: 4 trials (standard, EntM λ=0.5, AT ε=0.2, AT+EntM) on the embedded MNIST digits, `small_cnn`",
        "width 0.25, PGD-2 training adversary; each trial evaluated on 64 test points with FGSM, PGD-5, CW-5 at",
        "ε ∈ {0, 0.1, 0.3}. 1 rank per trial, 1 torch thread, trials one at a time in all runs (the numbers time",
        "the machinery; they say nothing about robustness). *Loop*: `run_trial` for each config in one fresh",
        "process, run before and after the sweeps (the baseline is their mean). *Local*: `launch.py --cluster",
        "local --max-concurrent 1 -q` (Python start, Ray start, Tune, ranks, Ray stop). *SLURM*: the same as one",
        "job on the local SLURM (`--partition gpu --wait`): submission, queue, job start, Ray head in the job.",
        "Overhead per trial = (sweep - loop) / 4, so it includes the per-sweep fixed costs shared by 4 trials.",
        "",
        "| trial size | mean trial (loop) | loop | local | ratio | overhead / trial "
        "| SLURM | ratio | overhead / trial | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in res.get("sizes", []):
        loc, sl, lp = s["local"], s.get("slurm") or {}, s["loop"]
        runs = " / ".join(f"{x['wall_s']:.1f}" for x in lp["runs"])
        L.append(
            f"| ~{s['size_s']} s ({s['epochs']} epochs x {s['n_train']}) | {lp['mean_trial_s']:.1f} s | "
            f"{lp['wall_s']:.1f} s ({runs}) | {loc['wall_s']:.1f} s | "
            f"**{loc['ratio_vs_loop']:.2f}x** | {loc['overhead_per_trial_s']:.1f} s | "
            + (
                f"{sl['wall_s']:.1f} s | **{sl['ratio_vs_loop']:.2f}x** | {sl['overhead_per_trial_s']:.1f} s"
                if sl
                else "- | - | -"
            )
            + f" | {s['loadavg_before'][0]} -> {s['loadavg_after'][0]} ({s.get('measured', '')[11:]}) |"
        )
    L += [
        "",
        "Goals (issue 11): ratio <= 1.10x at 60-s trials; <= 3 s of overhead per trial at 1-s trials.",
        "",
        "Where the local run's time goes. *fixed*: wall time outside Tune's loop (Python start and imports,",
        "`launch.py`'s checks, Ray's start and stop), once per sweep. *per trial*: Tune's loop minus the trials' own",
        "training and evaluation, per trial (rank forks, the per-epoch checkpoint copies and reports, Tune's",
        "bookkeeping between trials; the first trial of an actor also starts the actor and its forkserver, which",
        "imports torch once: *first trial* is that trial's time in Tune beyond its compute). *compute*: the",
        "trials' training + evaluation as the trials measured it, in the sweep and in the loop (the difference",
        "is load: the same code). *CPU*: CPU seconds of every process of the run.",
        "",
        "| trial size | fixed | per trial | first trial | compute sweep / loop | CPU sweep / loop | CPU overhead / trial |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in res.get("sizes", []):
        loc, lp = s["local"], s["loop"]
        first = (loc.get("in_trial_overhead_s") or [None])[0]
        L.append(
            f"| ~{s['size_s']} s | {_f(loc.get('fixed_s'))} | {_f(loc.get('tune_minus_compute_per_trial_s'), '{:.2f}')} | "
            f"{_f(first)} | {_f(loc.get('compute_s'))} / {_f(lp.get('compute_s'))} | "
            f"{_f(loc.get('cpu_s'))} / {_f(lp.get('cpu_s'))} | {_f(loc.get('cpu_overhead_per_trial_s'))} |"
        )
    if any(s.get("slurm") for s in res.get("sizes", [])):
        L += [
            "",
            "SLURM: the job's queue wait and elapsed time (sacct, 1-s resolution); the rest of the SLURM wall",
            "time is submission and `--wait`'s polling (every 2 s).",
            "",
            "| trial size | queue wait | job elapsed | Tune loop in the job | compute in the job |",
            "|---|---|---|---|---|",
        ]
        for s in res["sizes"]:
            sl = s.get("slurm") or {}
            L.append(
                f"| ~{s['size_s']} s | {_f(sl.get('queue_wait_s'), '{:.0f}')} | {_f(sl.get('job_elapsed_s'), '{:.0f}')} | "
                f"{_f(sl.get('tune_s'))} | {_f(sl.get('compute_s'))} |"
            )
    q = res.get("quickstart") or {}
    if q:
        L += [
            "",
            "## The quickstart on a fresh clone",
            "",
            "`python sweeps/launch.py --cluster local` (4 trials x 2 DDP ranks on the embedded digits, 2 epochs,",
            "evaluation on 200 points and aggregation included) in a fresh `git clone`; lines = what it prints",
            "(stdout + stderr); compute = the 4 trials' own training + evaluation. Goal: under 1 minute on 2 cores.",
            "",
            "| version | commit | wall | trials' compute | lines printed | exit | load avg |",
            "|---|---|---|---|---|---|---|",
        ]
        for k in ("before", "after"):
            if k in q:
                x = q[k]
                L.append(
                    f"| {k} | {x['commit']} | {x['wall_s']:.1f} s | {_f(x.get('trials_compute_s'))} | {x['lines']} "
                    f"({x['stdout_lines']} stdout, {x['stderr_lines']} stderr) | {x['rc']} | "
                    f"{x['loadavg_before'][0]} -> {x['loadavg_after'][0]} ({x.get('measured', '')[11:]}) |"
                )
        if "after" in q:
            L += ["", "First lines printed (after):", "", "```", *q["after"]["first_lines"], "```"]
    (out / "sweep.md").write_text("\n".join(L) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=sorted(SIZES), choices=sorted(SIZES))
    p.add_argument("--no-slurm", action="store_true", help="local Ray only")
    p.add_argument("--no-quickstart", action="store_true")
    p.add_argument(
        "--before", help="also run the quickstart at this commit (e.g. the last one before the engine)"
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the sizes and quickstart runs of the existing sweep.json that this run does not redo",
    )
    a = p.parse_args(argv)
    global SUBREAPER
    SUBREAPER = _subreaper()
    slurm = not a.no_slurm and shutil.which("sbatch") is not None
    res = {"machine": machine(), "slurm": slurm}
    print("machine: " + machine_line(res["machine"]), flush=True)
    work = Path(tempfile.mkdtemp(prefix="ur-sweep-bench-"))
    t0 = time.time()
    try:
        res["sizes"] = [bench_size(s, work, slurm) for s in a.sizes]
        if not a.no_quickstart:
            res["quickstart"] = {}
            if a.before:
                res["quickstart"]["before"] = bench_quickstart(a.before, work)
            res["quickstart"]["after"] = bench_quickstart("HEAD", work)
    finally:
        res["machine"]["loadavg_end"] = load_avg()
        res["seconds"] = time.time() - t0
        res["workdir"] = str(work) if a.keep else None
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    old = (
        json.loads((a.out / "sweep.json").read_text())
        if a.merge and (a.out / "sweep.json").exists()
        else None
    )
    if old:
        done = {x["size_s"] for x in res["sizes"]}
        res["sizes"] = sorted(
            res["sizes"] + [x for x in old.get("sizes", []) if x["size_s"] not in done],
            key=lambda x: x["size_s"],
        )
        res["quickstart"] = {**(old.get("quickstart") or {}), **(res.get("quickstart") or {})}
        res["merged_from"] = old["machine"]
    write_report(res, a.out)
    for s in res["sizes"]:
        log(
            f"~{s['size_s']} s trials: loop {s['loop']['wall_s']:.1f} s, local {s['local']['ratio_vs_loop']:.2f}x"
            + (f", SLURM {s['slurm']['ratio_vs_loop']:.2f}x" if "slurm" in s else "")
        )
    log(f"written: {a.out / 'sweep.md'}, {a.out / 'sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
