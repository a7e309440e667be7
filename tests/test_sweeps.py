"""Sweeps on a real local Ray cluster: grids validated up front, a sweep whose driver is SIGKILLed
at seeded random moments and relaunched ends bit-identical to an uninterrupted run without rerunning
finished trials (chaos), a killed DDP worker is retried from its checkpoint, two drivers of one run
are refused."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from common import assert_autoattack_at_every_informative_eps, assert_grid_refused, run_trial_dirs, tiny_grid

from sweeps import launch
from sweeps.grid import load_grid, parse_grid
from uncertainty_robust.trial import read_points

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "grids" / "tiny.yaml"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0"}


def launch_cmd(*args) -> list:
    return [sys.executable, str(REPO / "sweeps" / "launch.py"), *args]


trial_dirs = run_trial_dirs


def starts(d: Path) -> int:
    """(Re)starts of a trial's ranks: the ``train_start`` lines of its ``starts.log`` (which also
    records events such as ``checkpoint_unreadable``)."""
    f = d / "starts.log"
    return (
        sum(json.loads(ln)["event"] == "train_start" for ln in f.read_text().splitlines())
        if f.exists()
        else 0
    )


def ckpt_epoch(d: Path) -> int:
    p = d / "checkpoint.pt"
    try:
        return int(torch.load(p, weights_only=True)["epoch"]) if p.exists() else 0
    except Exception:  # being replaced right now
        return 0


def ranks_of(run: Path) -> list:
    """PIDs of the DDP rank processes of ``run`` (cluster/ranks.py names them ``ur-rank<R>`` and
    points their stdout at the trial's ``trial.log``), highest rank last."""
    found = []
    for pid in subprocess.run(["pgrep", "^ur-rank"], capture_output=True, text=True).stdout.split():
        try:
            out = os.readlink(f"/proc/{pid}/fd/1")
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if out.startswith(str(run.resolve()) + os.sep):
            found.append((name, int(pid)))
    return [pid for _, pid in sorted(found)]


def sweep_progress(run: Path) -> int:
    """Epochs checkpointed plus trials finished, over the run's planned trials (0 before its plan)."""
    dirs = trial_dirs(run) if (run / "plan.json").exists() else []
    return sum(ckpt_epoch(d) + (d / "result.json").exists() for d in dirs)


def assert_ranks_gone(run: Path, what: str, within: float = 30) -> None:
    """The DDP ranks of ``run`` exit within ``within`` s (after their driver was killed or stopped)."""
    deadline = time.time() + within
    while ranks_of(run) and time.time() < deadline:
        time.sleep(0.5)
    assert not ranks_of(run), f"DDP ranks of {what} still running {within:g} s later"


# ----------------------------------------------------------------------------- grid validation
BAD_GRIDS = {
    "unknown top-level key": ("defenses: [at]\nepochz: 3\n", "epochz"),
    "unknown defense": ("defenses: [at, mart]\n", "defenses[1]"),
    "unknown dataset": ("defenses: [at]\ndataset: imagenet\n", "dataset"),
    "negative eps": ("defenses: [at]\ntrain_eps: [-0.1]\n", "train_eps"),
    "absurd eps": ("defenses: [at]\ntrain_eps: [8]\n", "train_eps"),
    "lambda out of range (LS alpha 1.5)": ("defenses: [ls]\nlambdas: [1.5]\n", "lambdas"),
    "negative lambda": ("defenses: [entm]\nlambdas: [-1]\n", "lambdas"),
    "empty seeds": ("defenses: [at]\nseeds: []\n", "seeds"),
    "empty defenses": ("defenses: []\n", "defenses"),
    "empty test eps": ("defenses: [at]\nevaluation: {test_eps: []}\n", "evaluation.test_eps"),
    "unknown attack": (
        "defenses: [at]\nevaluation: {attacks: [fgsm, deepfool]}\n",
        "evaluation.attacks[1].name",
    ),
    "zero workers": ("defenses: [at]\nresources: {workers: 0}\n", "resources.workers"),
    "zero CPUs per worker": (
        "defenses: [at]\nresources: {cpus_per_worker: 0}\n",
        "resources.cpus_per_worker",
    ),
    "unknown resources key": ("defenses: [at]\nresources: {gpus: 1}\n", "resources.gpus"),
    "not YAML": ("defenses: [at\n", "yaml"),
    "not a mapping": ("- at\n- ls\n", "yaml"),
    "missing defenses": ("dataset: mnist_embedded\n", "defenses"),
    "bad optimizer": ("defenses: [at]\noptimizer: {name: lbfgs}\n", "optimizer.name"),
    "lambda string": ("defenses: [entm]\nlambdas: [high]\n", "lambdas[0]"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_malformed_grid_exits_2_with_one_line(case, tmp_path, capsys):
    text, key = BAD_GRIDS[case]
    assert_grid_refused(text, key)
    g = tmp_path / "bad.yaml"
    g.write_text(text)
    assert launch.main(["--grid", str(g), "--cluster", "local", "--dry-run", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not any(tmp_path.glob("*/plan.json")), "nothing may be written for a bad grid"


@pytest.mark.parametrize(
    "argv, flags",
    [
        (["--partition", "gpu"], "--partition"),
        (["--cluster", "local", "--time", "30", "--wait"], "--time, --wait"),
        (
            ["--cluster", "local", "--sbatch-opt=--exclusive", "--max-requeues", "3"],
            "--sbatch-opt, --max-requeues",
        ),
    ],
)
def test_slurm_options_on_a_local_run_exit_2_and_start_nothing(argv, flags, tmp_path, capsys, monkeypatch):
    """`--partition gpu` where sbatch is not on PATH used to run the whole grid on local CPUs,
    dropping the option unread; now it is refused in one line (a dry run only notes it)."""
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)  # no sbatch here
    base = ["--grid", "quickstart", "--storage", str(tmp_path / "runs")]
    assert launch.main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {flags}: SLURM option") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists(), "nothing may be written for refused options"
    monkeypatch.setattr(launch, "print_dry_run", lambda *a, **k: None)
    assert launch.main(base + argv + ["--dry-run"]) == 0
    assert f"note: {flags}: SLURM option" in capsys.readouterr().err


PARENT = """name: parent
description: the parent's own words
defenses: [at]
train_eps: [0.1]
seeds: [0]
epochs: 2
adversarial: {pgd_steps: 3, eps_step: 0.03}
evaluation: {test_eps: [0, 0.1], n_eval: 50, attacks: [fgsm]}
slurm: {nodes: 1, time_min: 30}
"""


def test_grid_extends_merges_sections_and_resolves_to_a_whole_grid(tmp_path):
    (tmp_path / "parent.yaml").write_text(PARENT)
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: parent\ndefenses: [at, at_entm]\nlambdas: {at_entm: [0.3]}\nseeds: [1, 2]\n"
        "adversarial: {adv_fraction: 0.5}\nevaluation: {n_eval: 20}\n"
    )
    g = load_grid(child)
    assert g.name == "child" and "description" not in g.data  # neither is inherited
    assert sorted((c.defense, c.seed) for c in g.trials) == [
        ("at", 1),
        ("at", 2),
        ("at_entm", 1),
        ("at_entm", 2),
    ]
    for c in g.trials:
        # sections merge key by key: the child's key wins, the parent's others stay
        assert (c.n_eval, c.test_eps, c.pgd_steps, c.eps_step, c.adv_fraction) == (20, [0, 0.1], 3, 0.03, 0.5)
        assert (c.epochs, c.eps) == (2, 0.1)
    assert g.slurm["time_min"] == 30
    # the source a run directory keeps (RUN/grid.yaml) is the whole grid: it parses alone, anywhere
    alone = parse_grid(g.source)
    assert "extends" not in alone.data and alone.name == "child"
    assert [c.to_dict() for c in alone.trials] == [c.to_dict() for c in g.trials]
    launch.write_run_dir(tmp_path / "run", g, child, argparse.Namespace(max_concurrent=None))
    kept = load_grid(tmp_path / "run" / "grid.yaml")
    assert [c.to_dict() for c in kept.trials] == [c.to_dict() for c in g.trials]
    # a chain: a grid extending the child gets the parent's settings through it
    (tmp_path / "grandchild.yaml").write_text("extends: child.yaml\nname: gc\nseeds: [7]\n")
    gc = load_grid(tmp_path / "grandchild.yaml")
    assert gc.name == "gc" and {(c.seed, c.n_eval, c.pgd_steps) for c in gc.trials} == {(7, 20, 3)}


def test_bad_value_from_a_parent_names_the_file_that_set_it(tmp_path):
    (tmp_path / "gp.yaml").write_text(PARENT.replace("attacks: [fgsm]", "attacks: [fgsm, deepfool]"))
    (tmp_path / "p.yaml").write_text("extends: gp\nseeds: [1]\n")
    (tmp_path / "c.yaml").write_text("extends: p\n")
    assert_grid_refused("", "evaluation.attacks[1].name", "(set in gp.yaml)", path=tmp_path / "c.yaml")
    (tmp_path / "gp.yaml").write_text(PARENT)
    (tmp_path / "p.yaml").write_text("extends: gp\nadversarial: {pgd_steps: 0}\n")
    assert_grid_refused("", "adversarial.pgd_steps", "(set in p.yaml)", path=tmp_path / "c.yaml")
    # a value the grid itself states (here overriding the parent's) is its own error: no file named
    (tmp_path / "c.yaml").write_text("extends: p\nadversarial: {pgd_steps: -3}\n")
    err = assert_grid_refused("", "adversarial.pgd_steps", path=tmp_path / "c.yaml")
    assert "set in" not in str(err), err


@pytest.mark.parametrize(
    "files, key, words",
    [
        ({"c.yaml": "extends: nowhere\n"}, "extends", "no grid 'nowhere'"),
        ({"c.yaml": "extends: [a, b]\n"}, "extends", "expected the name"),
        ({"c.yaml": "extends: d\n", "d.yaml": "extends: c\ndefenses: [at]\n"}, "extends", "c -> d -> c"),
        ({"c.yaml": "extends: d\n", "d.yaml": "defenses: [at]\nepochz: 2\n"}, "epochz", "d.yaml"),
        ({"c.yaml": "extends: d\n", "d.yaml": "defenses: [at\n"}, "yaml", "d.yaml"),
    ],
    ids=["missing parent", "not a name", "loop", "bad key in parent", "parent not YAML"],
)
def test_bad_extends_exits_2_with_one_line(files, key, words, tmp_path, capsys):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert_grid_refused("", key, words, path=tmp_path / "c.yaml")
    rc = launch.main(
        ["--grid", str(tmp_path / "c.yaml"), "--cluster", "local", "--dry-run", "--storage", str(tmp_path)]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_cluster_cannot_give_resources(tmp_path, capsys):
    g = tmp_path / "big.yaml"
    g.write_text("defenses: [at]\nresources: {workers: 64, cpus_per_worker: 2}\n")
    assert (
        launch.main(["--grid", str(g), "--cluster", "local", "--num-cpus", "2", "--storage", str(tmp_path)])
        == 2
    )
    assert "128 CPUs" in capsys.readouterr().err


def test_shipped_grids_parse_and_dry_run_lists_the_paper_grid():
    for g in sorted((REPO / "sweeps").glob("*.yaml")):
        assert load_grid(g).trials, g
    r = subprocess.run(
        launch_cmd("--grid", "lambda_eps.yaml", "--cluster", "local", "--dry-run"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    grid = parse_grid((REPO / "sweeps" / "lambda_eps.yaml").read_text())
    for d in ("standard", "ls", "entm", "at", "at_ls", "at_entm"):
        assert f" {d} " in r.stdout
    assert (
        f"{len(grid.trials)} trials" in r.stdout
        and "CPU-hours" in r.stdout
        and "nothing submitted" in r.stdout
    )


# ----------------------------------------------------------------------------- storage, names, live jobs
def _one_line_exit_2(argv, capsys, *words) -> str:
    assert launch.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert all(w in err for w in words), err
    return err


def _read_only_dir(tmp_path) -> Path:
    """A directory nobody may write into (a read-only tmpfs as root, else mode 0555)."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() == 0:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs: {r.stderr.decode().strip()[:100]}")
    else:
        d.chmod(0o555)
    return d


@pytest.mark.parametrize("case", ["a file", "parent is a file", "not writable", "path too long"])
def test_bad_storage_exits_2_with_one_line_before_anything_starts(case, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    storage, words = {
        "a file": (a_file, ["--storage", "is a file"]),
        "parent is a file": (a_file / "runs", ["--storage", "cannot be created"]),
        "not writable": (None, ["--storage", "not writable"]),
        "path too long": (tmp_path.joinpath(*["d" * 200] * 19), ["shorter --storage or --name"]),
    }[case]
    if case == "not writable":
        storage = _read_only_dir(tmp_path)
    elif case == "path too long":
        storage.mkdir(parents=True)
    try:
        _one_line_exit_2(
            ["--grid", str(TINY), "--cluster", "local", "--storage", str(storage)], capsys, *words
        )
        assert not list(tmp_path.rglob("plan.json"))  # nothing started, nothing written
    finally:
        if case == "not writable" and os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(storage)], capture_output=True)


def test_run_name_over_the_limit_exits_2_with_one_line(tmp_path, capsys):
    assert launch.NAME_MAX == 100 and "at most 100 characters" in " ".join(
        launch.build_parser().format_help().split()
    )
    base = ["--grid", str(TINY), "--cluster", "local", "--storage", str(tmp_path)]
    _one_line_exit_2(base + ["--name", "n" * 101], capsys, "--name", "101 characters", "at most 100")
    _one_line_exit_2(["--status", "n" * 300, "--storage", str(tmp_path)], capsys, "--status", "at most 100")
    _one_line_exit_2(base + ["--name", "n" * 300, "--dry-run"], capsys, "at most 100")
    (tmp_path / "taken").write_text("a file where the run directory would be")
    _one_line_exit_2(base + ["--name", "taken"], capsys, "is a file, not a run directory")
    assert not list(tmp_path.rglob("plan.json"))


def test_launcher_refuses_a_storage_with_less_free_space_than_the_run_needs(tmp_path, capsys, monkeypatch):
    """The dry run states what the run needs; a storage with less free space is refused before
    anything is written (a relaunch only needs what its run directory does not hold yet)."""
    import shutil

    from sweeps import disk

    grid = load_grid(TINY)
    need = disk.estimate(grid.trials, 1)["total"]
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=need // 2))
    err = _one_line_exit_2(
        ["--grid", str(TINY), "--cluster", "local", "--num-cpus", "2", "--storage", str(tmp_path)],
        capsys,
        "--storage",
        f"{disk.human(need // 2)} free",
        f"needs ~{disk.human(need)} more",
        "--no-disk-check",
    )
    assert not list(tmp_path.rglob("plan.json")), err
    run = tmp_path / "tiny"  # a relaunch whose directory already holds most of the run
    run.mkdir()
    (run / "old").write_bytes(b"x" * (need - need // 4))
    disk.check_free(tmp_path, run, grid.trials, 1)  # needs a quarter, has half: no error
    assert launch.main(["--grid", str(TINY), "--cluster", "local", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        f"disk: ~{disk.human(disk.estimate(grid.trials, disk.concurrency(grid, 'local'))['total'])} on --storage"
        in out
    )


def test_relaunch_while_the_runs_slurm_job_is_queued_is_refused(tmp_path, capsys, monkeypatch):
    """RUN/slurm_job.json names a job that squeue still lists: any relaunch (local or SLURM) is
    refused with one line, and the run directory is left as it was. (A fake squeue on PATH.)"""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    squeue = bindir / "squeue"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "slurm_job.json").write_text(json.dumps({"job_id": "4242"}))
    argv = ["--grid", str(TINY), "--cluster", "local", "--num-cpus", "2", "--storage", str(tmp_path / "runs")]
    for state in ("PENDING", "RUNNING", "REQUEUED"):
        squeue.write_text(f"#!/bin/sh\necho {state}\n")
        squeue.chmod(0o755)
        _one_line_exit_2(argv, capsys, "SLURM job 4242 still queued or running", "scancel 4242")
        assert sorted(p.name for p in run.iterdir()) == ["slurm_job.json"]
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    launch._check_no_live_job(run)  # the job has ended (purged): a relaunch may go on
    squeue.write_text("#!/bin/sh\necho COMPLETED\n")
    launch._check_no_live_job(run)
    squeue.write_text("#!/bin/sh\necho 'Unable to contact slurm controller' >&2\nexit 1\n")
    _one_line_exit_2(argv, capsys, "cannot tell whether job 4242")  # unknown: refused, not guessed


def test_a_second_writer_of_one_aggregate_is_refused(tmp_path, capsys):
    from cluster.driver import aggregate_lock
    from sweeps.aggregate import main as aggregate_main

    run = tmp_path / "run"
    run.mkdir()
    with aggregate_lock(run / "aggregate"):  # another ur-aggregate, the end of a sweep, a SLURM job
        assert aggregate_main([str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert (
            len(err.splitlines()) == 1 and f"{run / 'aggregate'} is being written by pid {os.getpid()}" in err
        )
        assert aggregate_main([str(run), "--checkpoint", "best"]) == 2  # another output: not locked,
        assert "no trials" in capsys.readouterr().err  # it goes on (and finds nothing here)
    assert aggregate_main([str(run)]) == 2
    assert "no trials" in capsys.readouterr().err  # released


# ----------------------------------------------------------------------------- real Ray sweeps
CHAOS_SEED = 20261203  # the kill moments are drawn from it: the same moments on every run


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos_driver_sigkilled_at_seeded_random_moments_ends_bit_identical(tmp_path):
    """Chaos: a 3-trial, 2-worker-per-trial sweep whose driver is SIGKILLed at 3 moments drawn from
    a seeded generator and relaunched by name after each kill. A moment is a point of the sweep's
    progress (epochs checkpointed + trials finished, 15 in all; two drawn from 2-11, one from 13-14,
    where at least one trial has finished and one has not) plus 0-2 s. A second launch is refused while
    the first runs; the DDP ranks follow a killed driver down; a trial finished before a kill never
    trains again; and every trial ends with weights, per-point outcomes and result record identical
    to the same trial run uninterrupted (by the same rank supervisor, without Ray)."""
    import random

    from common import assert_same_results, reference_trial

    epochs = 4
    g = tiny_grid(tmp_path, "chaos", defenses=["standard", "at", "at_entm"], epochs=epochs)
    run = tmp_path / "runs" / "c"
    args = launch_cmd(
        "--grid", str(g), "--cluster", "local", "--num-cpus", "4", "--storage", str(tmp_path / "runs"),
        "--name", "c", "-q", "--no-aggregate",
    )  # fmt: skip
    rng = random.Random(CHAOS_SEED)
    total = 3 * (epochs + 1)  # 3 trials: epochs checkpointed, then finished
    moments = sorted(rng.sample(range(2, total - 3), 2)) + [rng.choice([total - 2, total - 1])]

    kills = []  # per kill: when, and each trial's state at that moment
    for k, at in enumerate(moments):
        delay = rng.uniform(0.0, 2.0)
        log = open(tmp_path / f"launch{k}.log", "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)

        def alive(what, k=k, proc=proc):
            assert proc.poll() is None, (
                f"launch {k} ended (exit {proc.returncode}) before {what}: the sweep is too small for "
                "the kill moments\n" + (tmp_path / f"launch{k}.log").read_text()[-3000:]
            )

        try:
            if k == 0:  # while the first driver runs, a second launch of the name is refused
                while not (run / "plan.json").exists():
                    alive("its plan")
                    time.sleep(0.1)
                second = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=120)
                assert second.returncode == 2 and "already being driven" in second.stderr, second.stderr
            while sweep_progress(run) < at:
                alive(f"progress {at}")
                time.sleep(0.1)
            t_end = time.time() + delay
            while time.time() < t_end:
                alive(f"its kill {delay:.1f} s after progress {at}")
                time.sleep(0.1)
            state = {
                d.name: "finished" if (d / "result.json").exists() else f"epoch {ckpt_epoch(d)}"
                for d in (trial_dirs(run) if (run / "plan.json").exists() else [])
            }
            finished = {d: starts(run / "trials" / d) for d, s in state.items() if s == "finished"}
            os.kill(proc.pid, signal.SIGKILL)  # the driver only: Ray's processes follow it down
            proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert_ranks_gone(run, f"killed launch {k}")
        kills.append({"at": at, "delay": round(delay, 1), "state": state, "finished": finished})
        print(f"kill {k + 1}: {delay:.1f} s after progress {at} of {total} in launch {k}; {state}")
    assert 0 < len(kills[-1]["finished"]) < 3, f"the last kill came before a finish or after all: {kills}"

    r = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "restoring experiment" in r.stdout + r.stderr
    assert "evaluating:" not in r.stdout + r.stderr  # -q: no progress lines
    plan = json.loads((run / "plan.json").read_text())
    for cfg, name in zip(plan["trials"], plan["trial_dirs"]):
        d = run / "trials" / name
        rec = json.loads((d / "result.json").read_text())
        assert rec["train"]["epochs"] == epochs and len(rec["train"]["history"]) == epochs
        assert rec["evaluation"]["world_size"] == 2  # both ranks evaluated
        masks = {k: torch.from_numpy(v) for k, v in read_points(d)[1].items()}
        assert_autoattack_at_every_informative_eps(rec, masks)
        for kl in kills:  # finished before a kill: never trained again
            if name in kl["finished"]:
                assert starts(d) == kl["finished"][name], f"{name} finished before a kill but trained again"
        reference_trial(cfg, tmp_path / "ref" / name)
        assert_same_results(d, tmp_path / "ref" / name)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_interrupted_local_sweep_says_so_exits_128_plus_signal_and_resumes(tmp_path):
    """Ctrl-C (SIGINT) and then SIGTERM to the local driver, each while trials train: the sweep stops
    and saves its state, the summary says "interrupted" (not "finished"), nothing is aggregated, the
    exit status is 128 + the signal, no traceback and no Ray fault dump; the same command then resumes
    and finishes. Before, SIGINT ended in "sweep finished", an aggregation of half a sweep and exit
    0, and SIGTERM in Ray's ``sys.exit(15)`` with no word. One trial at a time, so the second is first
    created after a restore: Tune must resolve its ``config["shown"]`` (a ``sample_from``), not leave
    its placeholder, which made the status table raise and end the resumed driver."""
    g = tiny_grid(tmp_path, "intr", defenses=["standard", "at"], epochs=3)
    run = tmp_path / "runs" / "i"
    args = launch_cmd(
        "--grid", str(g), "--cluster", "local", "--num-cpus", "2", "--storage", str(tmp_path / "runs"),
        "--name", "i",
    )  # fmt: skip

    for k, (sig, at) in enumerate([(signal.SIGINT, 1), (signal.SIGTERM, 3)]):
        log_path = tmp_path / f"launch{k}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
            )
        try:
            while sweep_progress(run) < at:  # epochs checkpointed, trials finished: 2 x (3 + 1) in all
                assert proc.poll() is None, (
                    f"launch {k} ended before progress {at}:\n" + log_path.read_text()[-3000:]
                )
                time.sleep(0.1)
            assert sweep_progress(run) < 7, "the sweep is too small for the interrupt"
            os.kill(proc.pid, sig)  # the driver only, as `kill PID` or a terminal's Ctrl-C on it
            rc = proc.wait(120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        out = log_path.read_text()
        name = sig.name
        assert rc == 128 + sig, f"exit {rc}\n{out[-3000:]}"
        assert re.search(rf"^sweep interrupted \({name}\) after [\d.]+ s: 2 trials, ", out, re.M), out[-3000:]
        assert "sweep finished" not in out and "Traceback" not in out and "received at time" not in out, out[
            -3000:
        ]
        assert f"interrupted ({name}): run the same command again to resume (--name i)" in out, out[-3000:]
        assert not (run / "aggregate").exists(), "an interrupted sweep was aggregated"
        status = subprocess.run(
            launch_cmd("--status", "i", "--storage", str(tmp_path / "runs")),
            capture_output=True,
            text=True,
            env=ENV,
        )
        assert f"last driver exit: interrupted ({name}), " in status.stdout, status.stdout + status.stderr
        assert_ranks_gone(run, f"interrupted launch {k}")

    r = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "restoring experiment" in r.stdout and "sweep finished" in r.stdout, r.stdout[-3000:]
    for d in trial_dirs(run):
        assert len(json.loads((d / "result.json").read_text())["train"]["history"]) == 3
    assert (run / "aggregate").is_dir()
    (state,) = sorted((run / "tune").glob("experiment_state*.json"))[-1:]
    shown = {  # each trial's resolved config["shown"], as Tune saved it last
        meta["config"]["trial"]["defense"]: meta["config"]["shown"]
        for meta in (json.loads(t[0]) for t in json.loads(state.read_text())["trial_data"])
    }
    assert shown == {"standard": {"lam": "-", "eps": "-"}, "at": {"lam": "-", "eps": "0.2"}}, shown


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_ddp_worker_is_retried_from_its_checkpoint(tmp_path):
    """A 2-rank trial whose rank 1 is SIGKILLed mid-training restarts both ranks from its last
    checkpoint and finishes; the default console says where the logs are, prints one line per epoch
    (rank 0 only; the restart is noted on it) and nothing of Ray's or the ranks' own output."""
    g = tiny_grid(
        tmp_path, "one", replace=True, defenses=["at"], epochs=8, n_train=2000,
        adversarial={"pgd_steps": 5, "eps_step": 0.05},
    )  # fmt: skip
    args = launch_cmd(
        "--grid",
        str(g),
        "--cluster",
        "local",
        "--num-cpus",
        "2",
        "--storage",
        str(tmp_path),
        "--name",
        "w",
        "--no-aggregate",
    )
    out = open(tmp_path / "out.log", "w")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    run = tmp_path / "w"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            dirs = trial_dirs(run) if (run / "plan.json").exists() else []
            if dirs and ckpt_epoch(dirs[0]) >= 2:
                break
            assert proc.poll() is None, (tmp_path / "out.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("training never reached epoch 2")
        epoch_at_kill = ckpt_epoch(dirs[0])
        workers = ranks_of(run)
        assert workers, "no DDP rank process (ur-rank*) of this run found"
        os.kill(workers[-1], signal.SIGKILL)
        assert proc.wait(400) == 0, (tmp_path / "out.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    d = trial_dirs(run)[0]
    rec = json.loads((d / "result.json").read_text())
    assert len(rec["train"]["history"]) == 8  # no epoch lost or duplicated in the record
    assert starts(d) == 2, "the worker group should have been restarted exactly once"
    text = (d / "trial.log").read_text()  # every rank's log lines
    resumed = [
        int(line.rsplit("from epoch", 1)[1].split()[0]) for line in text.splitlines() if "from epoch" in line
    ]
    assert resumed and resumed[0] >= epoch_at_kill, (resumed, epoch_at_kill)

    # the console (stdout + stderr of launch.py at the default verbosity)
    lines = (tmp_path / "out.log").read_text().splitlines()
    assert lines[0].startswith("run directory: ") and lines[1].startswith("logs: "), lines[:3]
    assert str((run / "logs").resolve()) in lines[1] and "trial.log" in lines[1], lines[1]
    assert list((run / "logs").glob("driver.*.log")) and list((run / "logs").glob("ray.*")), "no log files"
    epoch_lines = [ln for ln in lines if re.match(r"\d\d:\d\d:\d\d \S+  epoch \d+/8  ", ln)]
    epochs = [int(re.search(r"epoch (\d+)/8", ln).group(1)) for ln in epoch_lines]
    assert 8 in epochs and len(epochs) == len(set(epochs)), epochs  # once per epoch: rank 0 alone
    assert any("ranks restarted 1x" in ln for ln in epoch_lines), epoch_lines
    assert sum(" done: clean " in ln for ln in lines) == 1, lines
    assert any(ln.startswith("sweep finished in") for ln in lines), lines
    # while it evaluated: its progress line (step, points left of rank 0's shard), at most every 10 s
    progress = [ln for ln in lines if re.match(r"\d\d:\d\d:\d\d \S+  evaluating: eps \S+ \S+", ln)]
    assert progress and all("points left (rank 0 of 2)" in ln for ln in progress), lines
    noise = [ln for ln in lines if "rank1" in ln or "(pid=" in ln or " INFO " in ln or "WARNING" in ln]
    assert not noise, noise


# ----------------------------------------------------------------------------- a user's own Tune script
USER_SCRIPT = r"""
import json, sys
import ray
from ray import tune
from cluster.trainables import register_all

if __name__ == "__main__":
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    register_all()
    tiny = {"dataset": "mnist_embedded", "width": 0.25, "epochs": 2, "n_train": 400, "batch_size": 100,
            "test_eps": [0.0, 0.1], "attacks": [{"name": "fgsm"}], "n_eval": 32, "jacobian_points": 8}
    tuner = tune.Tuner(
        "ur_entm",  # by name, as registered
        param_space={"trial": {**tiny, "lam": tune.grid_search([0.1, 0.5])}, "resources": {"workers": 1}},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(storage_path=sys.argv[1], name="mine", verbose=0),
    )
    grid = tuner.fit()
    best = grid.get_best_result(metric="worst_mean", mode="max")  # a final-evaluation metric
    print("BEST", best.config["trial"]["lam"], best.metrics["worst_mean"])
    out = []
    for r in grid:
        df = r.metrics_dataframe
        out.append({"error": str(r.error) if r.error else None, "lam": r.config["trial"]["lam"],
                    "path": r.path, "metrics": {k: v for k, v in r.metrics.items() if isinstance(v, (int, float))},
                    "epochs_reported": [int(e) for e, d in zip(df["epoch"], df["done"]) if not d],
                    "checkpoint": r.checkpoint is not None})
    print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_users_own_tune_script_runs_a_defense_trainable_by_name(tmp_path):
    """``ur_entm`` registered by ``register_all()`` runs in a plain Tune script: each trial trains
    (real embedded MNIST digits), reports per-epoch metrics and checkpoints, and writes its trial
    files under its Tune trial directory."""
    script = tmp_path / "mine.py"
    script.write_text(USER_SCRIPT)
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "tune")],
        capture_output=True,
        text=True,
        env={**ENV, "OMP_NUM_THREADS": "1"},
        timeout=280,
        cwd=tmp_path,
    )
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert r.returncode == 0 and line, r.stdout[-2000:] + r.stderr[-3000:]
    results = json.loads(line[len("RESULT ") :])
    assert sorted(x["lam"] for x in results) == [0.1, 0.5]
    for x in results:
        assert x["error"] is None, x["error"]
        assert x["epochs_reported"] == [1, 2], x  # one Tune result per epoch (rank 0 only)
        assert x["checkpoint"], "no checkpoint reported to Tune"
        assert 0 <= x["metrics"]["worst_mean"] <= x["metrics"]["clean_acc"] <= 1, x["metrics"]
        # the final result repeats the last epoch's metrics (a per-epoch scheduler metric is in every result)
        assert x["metrics"]["epoch"] == 2 and "train_loss" in x["metrics"], x["metrics"]
        rec = json.loads((Path(x["path"]) / "trial" / "result.json").read_text())
        assert rec["config"]["defense"] == "entm" and rec["config"]["lam"] == x["lam"]
        assert len(rec["train"]["history"]) == 2


# ----------------------------------------------------------------------------- Ray and the step's SIGTERM
SHIELD_SCRIPT = r"""
import os, signal, subprocess, sys, time
import ray
from cluster.slurm_job import shielded_children

def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

if __name__ == "__main__":
    shield = sys.argv[1] == "shield"
    if shield:
        with shielded_children():
            ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)

    @ray.remote
    def pid():
        return os.getpid()

    worker = ray.get(pid.remote())  # a worker process started by the raylet after ray.init
    kids = [int(p) for p in subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True,
                                           text=True).stdout.split()]
    procs = {p: open(f"/proc/{p}/comm").read().strip() for p in kids + [worker]}
    for p in procs:  # what slurmstepd does to every process of the step on `scancel --signal ...`
        os.kill(p, signal.SIGTERM)
        os.kill(p, signal.SIGUSR2)
    time.sleep(4)
    dead = sorted(n for p, n in procs.items() if not alive(p))
    print("DEAD", ",".join(dead) or "-", "OF", ",".join(sorted(procs.values())), flush=True)
    if shield and not dead:
        print("CALL", ray.get(pid.remote(), timeout=60) > 0, flush=True)
    os._exit(0)  # an unshielded driver would wait 60 s for its dead GCS
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ray_of_the_slurm_head_survives_the_steps_sigterm(tmp_path):
    """On ``scancel --signal TERM`` (submitit's ``_interrupt()``, preemption with a grace time) SLURM
    signals every process of the step. The head's Ray, started under ``shielded_children()``
    (cluster/slurm.py), must keep running so the USR2 that follows can requeue the job; without it
    the GCS and raylet shut down (seen in CI: the job ended FAILED instead of requeued)."""
    script = tmp_path / "shield.py"
    script.write_text(SHIELD_SCRIPT)
    out = {}
    for mode in ("shield", "bare"):
        r = subprocess.run(
            [sys.executable, str(script), mode], capture_output=True, text=True, env=ENV, timeout=150
        )
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("DEAD ")), None)
        assert line, (mode, r.stdout[-2000:], r.stderr[-2000:])
        out[mode] = (line, r.stdout)
    line, stdout = out["shield"]
    assert line.startswith("DEAD - OF") and "gcs_server" in line and "raylet" in line, line
    assert "CALL True" in stdout, stdout
    # the control: the same signals without the shield take Ray's own processes down
    assert "gcs_server" in out["bare"][0].split(" OF ")[0], out["bare"][0]


FAKE_SCONTROL = """#!{python}
import os, signal, sys, time
os.kill(os.getpid(), signal.SIGTERM)  # slurmstepd signals the step as soon as the requeue is accepted
time.sleep(0.3)
with open({log!r}, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
"""


def test_submitits_requeue_survives_the_sigterm_of_its_own_requeue(tmp_path, monkeypatch):
    """The requeue makes SLURM SIGTERM every process of the step, ``scontrol`` included; CI once saw
    ``scontrol requeue`` die of it before exiting, submitit raise CalledProcessError from its handler and
    the job end FAILED instead of requeued. The job's requeue must run ``scontrol`` with SIGTERM blocked
    (``cluster.slurm_job.install_shielded_requeue``); submitit's own ``_requeue`` is the control."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    from cluster.slurm_job import install_shielded_requeue

    log = tmp_path / "scontrol.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"
    fake.write_text(FAKE_SCONTROL.format(python=sys.executable, log=str(log)))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setattr(SlurmJobEnvironment, "_requeue", SlurmJobEnvironment._requeue)  # restored after
    env = SlurmJobEnvironment()

    with pytest.raises(subprocess.CalledProcessError) as bare:  # the control: submitit's own call
        env._requeue(3)
    assert bare.value.returncode == -signal.SIGTERM
    assert not log.exists()

    install_shielded_requeue()
    env._requeue(3)  # the same instance: the handler's env is patched through its class
    assert log.read_text() == "requeue 4242\n"


def test_a_status_table_tune_cannot_draw_does_not_end_the_sweep(monkeypatch, caplog):
    """The error a resumed run's placeholder config raised inside Tune's table (every 120 s), which
    ended the driver: now one warning in the driver's log, and the sweep goes on."""
    from ray.tune import CLIReporter

    from cluster import console
    from cluster.driver import METRIC_COLUMNS, PARAMETER_COLUMNS

    def broken(self, trials, done, *sys_info):
        raise ValueError("invalid literal for int() with base 10: 'lam'")

    monkeypatch.setattr(CLIReporter, "report", broken)
    reporter = console.table_reporter(dict(PARAMETER_COLUMNS), METRIC_COLUMNS)
    with caplog.at_level("WARNING"):
        reporter.report([], False, "", "")
    assert "status table skipped: ValueError: invalid literal" in caplog.text
