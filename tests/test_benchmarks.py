"""The benchmark plumbing (no measurement here: benchmarks measure, they are not timed tests): the
committed bench.md is the rendering of bench.json through the templates, both entry points of the
runner work, and ``benchmarks/gpu_check.sh`` without a GPU says so in one line, exits non-zero and
writes nothing; a dry run can never write gpu.md and its report says it is not GPU results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks import gpu_report
from benchmarks.render import TEMPLATES, placeholders
from benchmarks.run import ITEMS, render_md

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHON=sys.executable, **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


def test_committed_bench_md_is_bench_json_through_the_templates():
    R = json.loads((RESULTS / "bench.json").read_text())
    assert render_md(R) == (RESULTS / "bench.md").read_text()
    for name in ("bench", "gpu", *[n for n in ITEMS if (TEMPLATES / f"{n}.md").exists()]):
        assert placeholders(name), f"templates/{name}.md has no placeholders: numbers written into prose?"


def test_runner_entry_points(tmp_path):
    shutil.copy(RESULTS / "bench.json", tmp_path / "bench.json")
    for argv in (["benchmarks/run.py"], ["-m", "benchmarks"]):
        (tmp_path / "bench.md").unlink(missing_ok=True)
        cmd = [sys.executable, *argv, "--report-only", "--out", str(tmp_path)]
        p = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert (tmp_path / "bench.md").read_text() == (RESULTS / "bench.md").read_text()
    p = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--only", "nonsense"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "unknown item 'nonsense'" in p.stderr.strip().splitlines()[-1]


def _gpu_md_state():
    f = RESULTS / "gpu.md"
    return (f.exists(), f.stat().st_mtime_ns if f.exists() else None)


def test_gpu_check_without_a_gpu_says_so_and_writes_nothing(tmp_path):
    before = _gpu_md_state()
    out, work = tmp_path / "gpu.md", tmp_path / "work"
    cmd = ["bash", str(SCRIPT), "--out", str(out), "--work", str(work)]
    p = subprocess.run(cmd, env=_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stdout == "" and p.stderr.count("\n") == 1 and "no GPU found" in p.stderr
    assert not out.exists() and not work.exists()
    # without --out it names the committed file and leaves it alone
    p = subprocess.run(
        ["bash", str(SCRIPT)], env=_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True
    )
    assert p.returncode == 1 and "benchmarks/results/gpu.md not written" in p.stderr
    assert _gpu_md_state() == before


def test_gpu_check_dry_run_never_writes_gpu_md_and_bad_options_exit_2(tmp_path):
    before = _gpu_md_state()
    cmd = [
        "bash",
        str(SCRIPT),
        "--cpu-dry-run",
        "--out",
        "benchmarks/results/gpu.md",
        "--work",
        str(tmp_path),
    ]
    p = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "never writes" in p.stderr
    p = subprocess.run(["bash", str(SCRIPT), "--bogus"], env=_env(), capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert _gpu_md_state() == before


def test_gpu_report_marks_a_dry_run(tmp_path):
    """The report of a run whose steps all failed early: every part says it was not run; a dry run's
    report is titled and judged as a dry run, a GPU run's is not."""
    (tmp_path / "steps.jsonl").write_text(
        json.dumps({"step": "tests", "rc": 1, "seconds": 3, "what": "x"}) + "\n"
    )
    dry, gpu = gpu_report.render(tmp_path, dry=True), gpu_report.render(tmp_path, dry=False)
    assert dry.startswith("# GPU check: CPU DRY RUN (not GPU results)") and gpu_report.DRY_BANNER in dry
    assert gpu.startswith("# GPU check\n") and "DRY RUN" not in gpu
    for text in (dry, gpu):
        assert "| tests | 1 | 3 | x |" in text and "Not run (no tests.xml)." in text
        assert "not measured" in text and "Not run (no precision.json)." in text
