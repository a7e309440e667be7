"""Damage from outside and full disks (issue 21): a damaged checkpoint in DDP ranks, a damaged
``best.pt``, a write that fails because the filesystem is full (in the library, in a rank, in the
aggregation). The single-process resume cases are in ``test_train.py``.

The tests that need a really full filesystem mount a small tmpfs (root only; CI runs as root) and
skip with the reason elsewhere.
"""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from common import assert_same_results, reference_trial, scripted_validation

from uncertainty_robust import checkpoint, train, trial
from uncertainty_robust.attacks import AttackSpec
from uncertainty_robust.config import TrialConfig, validate
from uncertainty_robust.errors import DiskFull

SMALL = dict(
    defense="standard",
    width=0.25,
    n_train=300,
    epochs=3,
    n_eval=20,
    jacobian_points=0,
    test_eps=[0.0],
    attacks=[AttackSpec("fgsm", 1)],
    autoattack=[],
)


def _events(d: Path) -> list:
    f = d / "starts.log"
    return [json.loads(ln) for ln in f.read_text().splitlines()] if f.exists() else []


@pytest.fixture
def tmpfs(tmp_path):
    """A mount function: ``tmpfs(size_kb) -> Path`` of a fresh tmpfs that small (unmounted after)."""
    mounted = []

    def mount(size_kb: int) -> Path:
        d = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
        d.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(d)], capture_output=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (root only): {r.stderr.decode().strip()[:100]}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


# ------------------------------------------------------------------------------ best.pt
def _numbers(rec: dict) -> tuple:
    """What an evaluation measured: clean accuracy, every attack's and the worst case's accuracy."""
    return (
        rec["clean_acc"],
        [(a["label"], a["eps"], a["acc"]) for a in rec["attacks"]],
        [(w["eps"], w["acc"]) for w in rec["worst_case"]],
    )


def test_damaged_best_checkpoint_is_read_from_the_previous_one_or_reported_not_evaluated(
    tmp_path, monkeypatch, caplog
):
    """Training done, evaluation not (a kill in between), then best.pt damaged: the best epoch's
    weights come from checkpoint.prev.pt when it holds that epoch (the same evaluation as an
    undamaged run); otherwise the best checkpoint is reported not evaluated. Either way: one
    warning line, the file moved aside, an event in starts.log, and the trial finishes."""
    cfg = validate(TrialConfig(**SMALL, val_points=60, checkpoints=["last", "best"]))
    scripted_validation(monkeypatch, [0.2, 0.6, 0.4])  # best epoch 2 = checkpoint.prev.pt's
    ref = trial.run_trial(cfg, tmp_path / "ref")
    assert ref["best"]["epoch"] == 2 and ref["best"]["evaluated"]
    d = tmp_path / "t"
    train.fit(cfg, d, tensorboard=False)
    (d / "best.pt").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="uncertainty_robust"):
        rec = trial.run_trial(cfg, d)
    assert rec["best"]["evaluated"] and _numbers(rec["best"]) == _numbers(ref["best"])
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert str(d / "best.pt") in line and "taken from checkpoint.prev.pt" in line, line
    (ev,) = _events(d)
    assert (ev["file"], ev["resumed_from"], ev["epoch"]) == ("best.pt", "checkpoint.prev.pt", 2)
    assert len(list(d.glob("best.pt.unreadable-*"))) == 1

    scripted_validation(monkeypatch, [0.6, 0.2, 0.4])  # best epoch 1: no other copy of its weights
    d = tmp_path / "u"
    train.fit(cfg, d, tensorboard=False)
    (d / "best.pt").write_bytes((d / "best.pt").read_bytes()[:-20])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uncertainty_robust"):
        rec = trial.run_trial(cfg, d)
    assert rec["best"]["epoch"] == 1 and rec["best"]["evaluated"] is False
    assert (d / "result.json").exists()
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "best epoch not evaluated" in line, line
    assert [(e["file"], e["resumed_from"]) for e in _events(d)] == [("best.pt", None)]


# ------------------------------------------------------------------------------ DDP ranks
def test_ddp_ranks_resume_from_the_previous_checkpoint_when_the_last_is_damaged(tmp_path):
    """Two DDP ranks (the sweep's trial supervisor, no Ray) restarted on a truncated checkpoint.pt:
    no rank restart, both ranks continue from checkpoint.prev.pt, and the final weights equal an
    uninterrupted run's."""
    from cluster.ranks import run_ranks

    cfg = validate(TrialConfig(**SMALL, val_points=0)).to_dict()

    def ack(epoch, metrics, ckpt, done):
        done()

    class Stop(Exception):
        pass

    def stop_at_2(epoch, metrics, ckpt, done):
        done()
        if epoch == 2:
            raise Stop

    kw = dict(workers=2, threads=1, use_gpu=False, retries=0)
    reference_trial(cfg, tmp_path / "ref" / "t")  # the same directory name: the record names it
    d = tmp_path / "t"
    with pytest.raises(Stop):
        run_ranks(cfg, d, on_epoch=stop_at_2, **kw)
    ck = d / "checkpoint.pt"
    assert checkpoint.load(ck)["epoch"] == 2
    ck.write_bytes(ck.read_bytes()[:1000])
    assert run_ranks(cfg, d, on_epoch=ack, **kw) == 0  # retries=0: any failure would raise
    assert_same_results(d, tmp_path / "ref" / "t")
    events = [(e["event"], e.get("resumed_from"), e.get("epoch")) for e in _events(d)]
    assert events == [
        ("train_start", None, None),
        ("train_start", None, None),
        ("checkpoint_unreadable", "checkpoint.prev.pt", 1),
    ]
    assert "checkpoint.pt cannot be read" in (d / "trial.log").read_text()
    assert len(list(d.glob("checkpoint.pt.unreadable-*"))) == 1


# ------------------------------------------------------------------------------ full disks
def test_a_write_onto_a_full_disk_is_a_disk_full_error_naming_the_file(tmp_path, monkeypatch):
    """PyTorch turns ENOSPC into ``[enforce fail at inline_container.cc] unexpected pos`` (the
    OSError is its context); that and a plain ENOSPC become one user-facing line naming the file and
    the free space, and no temporary file is left behind. /dev/full fails every write with ENOSPC."""
    import os

    f = open("/dev/full", "wb")  # noqa: SIM115 - its close fails too (the buffer cannot be flushed)
    with pytest.raises(RuntimeError, match="unexpected pos") as e:
        torch.save({"w": torch.zeros(100_000)}, f)
    with pytest.raises(OSError):
        f.close()
    assert checkpoint.is_disk_full(e.value)
    assert not checkpoint.is_disk_full(RuntimeError("unexpected pos 704 vs 598"))

    real = os.fdopen
    monkeypatch.setattr(
        os, "fdopen", lambda fd, mode="r": (os.close(fd), real(os.open("/dev/full", os.O_WRONLY), mode))[1]
    )
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(DiskFull) as e:
        checkpoint.save_atomic({"w": torch.zeros(100_000)}, target)
    msg = str(e.value)
    assert (
        msg.startswith(f"disk full: could not write {target} (") and "free there" in msg and "\n" not in msg
    )
    with pytest.raises(DiskFull, match="result.json"):
        checkpoint.write_json_atomic({"a": "x" * 10_000}, tmp_path / "result.json")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # no temporary files left
    with pytest.raises(OSError) as e:  # other write failures stay what they are
        checkpoint.atomic_write(
            tmp_path / "x", lambda f: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))
        )
    assert not isinstance(e.value, DiskFull)


def test_disk_full_in_a_rank_is_not_retried(tmpfs):
    """A trial directory on a filesystem too small for its checkpoint: the rank's error names the
    file and the free space, and its ranks are not restarted (a restart cannot succeed)."""
    from cluster.ranks import RankFailure, run_ranks

    d = tmpfs(192) / "trial"
    cfg = validate(TrialConfig(**SMALL, val_points=0)).to_dict()
    with pytest.raises(RankFailure) as e:
        run_ranks(cfg, d, workers=1, threads=1, use_gpu=False, retries=2, on_epoch=lambda *a: a[-1]())
    msg = str(e.value)
    assert "DiskFull: disk full: could not write" in msg and str(d / "checkpoint.pt") in msg, msg
    assert "free there" in msg and "\n" not in msg
    assert [ev["event"] for ev in _events(d)] == ["train_start"]  # started once, never restarted
    assert "giving up after 0 restart(s)" in (d / "trial.log").read_text()


def test_aggregation_on_a_full_disk_ends_with_one_line(tmp_path, monkeypatch, capsys):
    """ENOSPC (plain, or under PyTorch's write failure) while the aggregate is written: exit 2 and
    one line naming the file, not a traceback."""
    import uncertainty_robust.report as report
    from sweeps.aggregate import main as aggregate_main

    run = tmp_path / "run"
    run.mkdir()
    failures = {
        "os": OSError(errno.ENOSPC, "No space left on device", str(run / "aggregate.tmp" / "tables.md")),
        "torch": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
    }
    failures["torch"].__context__ = OSError(errno.ENOSPC, "No space left on device")
    for how, exc in failures.items():

        def fail(*a, exc=exc, **k):
            raise exc

        monkeypatch.setattr(report, "aggregate", fail)
        assert aggregate_main([str(run)]) == 2, how
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: disk full: could not write"), err
        assert ("tables.md" if how == "os" else str(run / "aggregate")) in err


def test_disk_estimate_matches_a_real_checkpoint(tmp_path):
    """sweeps/disk.py's checkpoint size (weights, Adam's two moments, RNG states, history) against a
    checkpoint.pt written by the trainer; checkpoint.prev.pt and model.pt likewise."""
    from sweeps import disk

    cfg = validate(TrialConfig(**{**SMALL, "epochs": 2, "n_train": 100}, optimizer="adam", val_points=0))
    train.fit(cfg, tmp_path, tensorboard=False)
    est = disk.trial_bytes(cfg)
    real = (tmp_path / "checkpoint.pt").stat().st_size
    assert 0.95 * real <= est["checkpoint"] <= 1.1 * real, (est["checkpoint"], real)
    weights = sum(t.numel() * t.element_size() for t in train.make_model(cfg).state_dict().values())
    assert est["best_and_model"] >= weights  # no validation split: model.pt only
    assert disk.estimate([cfg], 1)["total"] > 3 * real + weights  # checkpoint, previous, Tune's copy, model
