"""The trainer and one trial end to end: bit-identical resume (in process, after SIGKILL, and from
the previous checkpoint when the last one is damaged), adversarial training works, ``run_trial``
writes a complete record and never reruns a finished trial."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import time

import pytest
import torch
from common import AT_EPS, AT_STEPS, STD, acc, assert_same_weights, fit_quiet

from uncertainty_robust import checkpoint, resume, trial
from uncertainty_robust.attacks import AttackSpec, run_suite
from uncertainty_robust.config import TrialConfig, validate

RESUME = dict(
    defense="at_entm",
    lam=0.5,
    eps=0.3,
    pgd_steps=3,
    n_train=1000,
    width=0.25,
    epochs=3,
    n_eval=20,
    jacobian_points=0,
    test_eps=[0.0],
    attacks=[AttackSpec("fgsm", steps=1)],
)
RESUME_ARGS = [
    "--defense",
    "at_entm",
    "--lam",
    "0.5",
    "--eps",
    "0.3",
    "--pgd-steps",
    "3",
    "--n-train",
    "1000",
    "--width",
    "0.25",
    "--epochs",
    "3",
    "--n-eval",
    "20",
    "--jacobian-points",
    "0",
    "--test-eps",
    "0",
    "--attacks",
    "fgsm",
]


@pytest.fixture(scope="module")
def resume_reference(tmp_path_factory):
    """The uninterrupted run's final weights."""
    cfg = validate(TrialConfig(**RESUME))
    model, summary = fit_quiet(cfg, tmp_path_factory.mktemp("resume_ref"))
    assert summary["completed"] and summary["epochs"] == cfg.epochs
    return cfg, {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_in_process_gives_identical_weights(resume_reference, tmp_path, monkeypatch):
    cfg, ref = resume_reference
    d = tmp_path / "b"
    _, first = fit_quiet(cfg, d, stop_after_epochs=1)
    assert not first["completed"] and first["epochs"] == 1
    assert checkpoint.load(d / "checkpoint.pt")["epoch"] == 1
    shutil.copytree(d, tmp_path / "c")  # the same interrupted state, for the control below
    model, second = fit_quiet(cfg, d)
    assert second["completed"] and second["epochs"] == cfg.epochs
    assert second["history"][0] == first["history"][0]  # epoch 1 restored (its wall time too), not redone
    assert_same_weights(model.state_dict(), ref)
    # control: the same resume without restoring the RNG (PGD's random start draws from it) must
    # not give the same weights, or this test would not see a broken RNG restore
    monkeypatch.setattr(checkpoint, "set_rng_state", lambda state: None)
    model_c, _ = fit_quiet(cfg, tmp_path / "c")
    assert any(not torch.equal(v, ref[k]) for k, v in model_c.state_dict().items())


DAMAGE = {"truncated": lambda b: b[: len(b) // 2], "zero bytes": lambda b: b""}


def _events(d) -> list:
    f = d / "starts.log"
    return [json.loads(ln) for ln in f.read_text().splitlines()] if f.exists() else []


def _warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_resumes_from_the_previous_one(damage, resume_reference, tmp_path, caplog):
    """checkpoint.pt of epoch 2 damaged from outside: one warning line naming it, moved aside (not
    deleted), recorded in starts.log, and the run resumes from checkpoint.prev.pt (epoch 1) and ends
    with the uninterrupted run's weights; a rerun never reads the damaged file again."""
    cfg, ref = resume_reference
    d = tmp_path / "t"
    fit_quiet(cfg, d, stop_after_epochs=2)
    ck, prev = d / "checkpoint.pt", d / "checkpoint.prev.pt"
    assert (checkpoint.load(ck)["epoch"], checkpoint.load(prev)["epoch"]) == (2, 1)
    bad = DAMAGE[damage](ck.read_bytes())
    ck.write_bytes(bad)
    with caplog.at_level(logging.WARNING, logger="uncertainty_robust"):
        model, summary = fit_quiet(cfg, d)
    assert_same_weights(model.state_dict(), ref)
    assert summary["completed"] and [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    (line,) = _warnings(caplog)
    assert str(ck) in line and "resuming from checkpoint.prev.pt (epoch 1)" in line, line
    (moved,) = d.glob("checkpoint.pt.unreadable-*")
    assert moved.read_bytes() == bad and f"moved to {moved.name}" in line
    (ev,) = _events(d)
    assert (ev["event"], ev["file"], ev["moved_to"], ev["resumed_from"], ev["epoch"]) == (
        "checkpoint_unreadable",
        "checkpoint.pt",
        moved.name,
        "checkpoint.prev.pt",
        1,
    )
    assert checkpoint.load(ck)["epoch"] == 3 and checkpoint.load(prev)["epoch"] == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uncertainty_robust"):
        model, _ = fit_quiet(cfg, d)  # finished: nothing to redo, nothing damaged read again
    assert _warnings(caplog) == [] and len(_events(d)) == 1
    assert_same_weights(model.state_dict(), ref)


def test_both_checkpoints_damaged_start_from_scratch_recorded(resume_reference, tmp_path, caplog):
    cfg, ref = resume_reference
    d = tmp_path / "t"
    fit_quiet(cfg, d, stop_after_epochs=2)
    ck, prev = d / "checkpoint.pt", d / "checkpoint.prev.pt"
    ck.write_bytes(ck.read_bytes()[:100])
    prev.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="uncertainty_robust"):
        model, summary = fit_quiet(cfg, d)
    assert_same_weights(model.state_dict(), ref)  # from scratch, with the same seed
    lines = _warnings(caplog)
    assert len(lines) == 2 and all("starting from scratch" in ln for ln in lines), lines
    assert str(ck) in lines[0] and str(prev) in lines[1]
    events = _events(d)
    assert [(e["file"], e["resumed_from"], e["epoch"]) for e in events] == [
        ("checkpoint.pt", None, 0),
        ("checkpoint.prev.pt", None, 0),
    ]
    assert len(list(d.glob("*.unreadable-*"))) == 2


def test_checkpoint_damaged_during_training_is_not_kept_as_the_previous_one(resume_reference, tmp_path):
    """Damage between two epochs of one run: the damaged file is moved aside when the next epoch's
    checkpoint replaces it, never kept as checkpoint.prev.pt."""
    cfg, ref = resume_reference
    d = tmp_path / "t"

    def damage_after_epoch_1(epoch, metrics, path):
        if epoch == 1:
            path.write_bytes(path.read_bytes()[:-50])

    fit_quiet(cfg, d, on_epoch_end=damage_after_epoch_1, stop_after_epochs=2)
    assert not (d / "checkpoint.prev.pt").exists()  # epoch 1's checkpoint, damaged, was not kept
    (moved,) = d.glob("checkpoint.pt.unreadable-*")
    assert [(e["event"], e["moved_to"]) for e in _events(d)] == [("checkpoint_unreadable", moved.name)]
    model, _ = fit_quiet(cfg, d)
    assert_same_weights(model.state_dict(), ref)
    assert checkpoint.load(d / "checkpoint.prev.pt")["epoch"] == 2


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_weights(resume_reference, train_cli, tmp_path):
    """``python -m uncertainty_robust`` killed with SIGKILL after its first checkpoint, then
    rerun with the same command, ends with the uninterrupted run's weights, tensor for tensor."""
    cfg, ref = resume_reference
    argv, env = train_cli
    d = tmp_path / "trial"
    cmd = argv + RESUME_ARGS + ["--workdir", str(d)]
    ck = d / "checkpoint.pt"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while True:
            assert proc.poll() is None, f"trainer ended before it could be killed:\n{proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            if ck.exists() and checkpoint.load(ck)["epoch"] >= 1:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint.load(ck)
    assert 1 <= killed_at["epoch"] < cfg.epochs
    assert not (d / "model.pt").exists() and not (d / "result.json").exists()
    # the CLI resolved the same config as the in-process reference
    assert json.loads((d / "config.json").read_text()) == json.loads(json.dumps(cfg.to_dict()))

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"from epoch {killed_at['epoch']}" in rerun.stderr  # it resumed rather than started over
    final = checkpoint.load(d / "model.pt")["model"]
    assert_same_weights(final, ref)
    hist = json.loads((d / "result.json").read_text())["train"]["history"]
    assert len(hist) == cfg.epochs and hist[0] == json.loads(killed_at["history"])[0]


def test_step_schedule_follows_its_milestones_formula():
    """``schedule: step``: the learning rate is lr x gamma^k after the k-th milestone, a milestone at
    round(fraction x epochs); 10 epochs, [0.5, 0.75]: 0.1 for 5 epochs, 0.01 for 3, 0.001 for 2."""
    from uncertainty_robust import train

    for epochs, milestones in ((10, [0.5, 0.75]), (4, [0.5, 0.75]), (20, [0.3]), (3, [0.1, 0.9])):
        cfg = TrialConfig(epochs=epochs, schedule="step", milestones=milestones, gamma=0.1, lr=0.1)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        sched = train.make_scheduler(cfg, opt)
        got = []
        for _ in range(epochs):
            got.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        at = sorted({max(1, round(m * epochs)) for m in milestones})
        want = [0.1 * 0.1 ** sum(e >= m for m in at) for e in range(epochs)]
        assert got == pytest.approx(want), (epochs, milestones, got)
    cfg = TrialConfig(epochs=10, schedule="step", milestones=[0.5, 0.75], gamma=0.1, lr=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched, lrs = train.make_scheduler(cfg, opt), []
    for _ in range(10):
        lrs.append(round(opt.param_groups[0]["lr"], 6))
        opt.step()
        sched.step()
    assert lrs == [0.1] * 5 + [0.01] * 3 + [0.001] * 2


def test_cyclic_schedule_is_one_triangle_over_every_batch():
    """``schedule: cyclic`` (Wong et al. 2020): stepped per batch, the lr at batch i is lr x t / peak
    up to the peak and lr x (T - t) / (T - peak) after it, t = i + 0.5, T = epochs x batches,
    peak = cyclic_peak x T: it rises from near 0 to lr and falls back, never reaching 0."""
    from uncertainty_robust import train

    for epochs, per_epoch, peak in ((3, 7, 0.4), (1, 10, 0.5), (5, 3, 0.2)):
        cfg = validate(TrialConfig(epochs=epochs, schedule="cyclic", cyclic_peak=peak, lr=0.2))
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        sched = train.make_scheduler(cfg, opt, batches_per_epoch=per_epoch)
        total, got = epochs * per_epoch, []
        for _ in range(total):
            got.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        p = peak * total
        want = [
            0.2 * ((i + 0.5) / p if i + 0.5 <= p else (total - i - 0.5) / (total - p)) for i in range(total)
        ]
        assert got == pytest.approx(want), (epochs, per_epoch, peak)
        assert max(got) <= 0.2 and min(got) > 0


def test_cyclic_schedule_steps_per_batch_and_resumes_bit_identical(tmp_path):
    """A cyclic-lr trial's lr moves within an epoch (logged lr after epoch 1 is the value at its last
    batch, not at epoch 1 of a per-epoch schedule), and a resume after epoch 1 ends with the weights
    of the uninterrupted run: the scheduler's batch count is restored with the checkpoint."""

    cfg = validate(
        TrialConfig(**{**RESUME, "defense": "fast_at", "lam": 0.0, "schedule": "cyclic", "lr": 0.004})
    )
    model, ref = fit_quiet(cfg, tmp_path / "ref")
    per_epoch = -(-(1000) // cfg.batch_size)
    total = cfg.epochs * per_epoch
    t = per_epoch - 0.5  # the next batch's midpoint after epoch 1: the lr the history logs
    want = (
        0.004 * (t + 1) / (0.4 * total) if t + 1 <= 0.4 * total else 0.004 * (total - t - 1) / (0.6 * total)
    )
    assert ref["history"][0]["lr"] == pytest.approx(want)
    d = tmp_path / "b"
    fit_quiet(cfg, d, stop_after_epochs=1)
    resumed, _ = fit_quiet(cfg, d)
    assert_same_weights(resumed.state_dict(), model.state_dict())


def test_best_epoch_is_the_earliest_of_equal_validation_values(monkeypatch):
    """The best checkpoint is the epoch with the highest val/robust_acc, the earliest on ties; a
    NaN (no validation split) never wins."""
    from uncertainty_robust import train

    cfg = TrialConfig()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    nan = float("nan")
    for values, best in (([0.2, 0.6, 0.6], 2), ([0.0, 0.0, 0.0], 1), ([0.5, 0.4, 0.6], 3), ([nan, nan], 0)):
        monkeypatch.setattr(
            train, "_validate_epoch", lambda m, x, y, c, epoch, v=values: {"val/robust_acc": v[epoch - 1]}
        )
        st = resume.TrainState()
        for e in range(len(values)):
            st.epoch = e + 1
            train._epoch_metrics(None, opt, cfg, {"loss": [1.0, 1]}, None, None, "cpu", st, 0.0)
        assert st.best_epoch == best, (values, st.best_epoch)
        assert st.best_value == (max(values) if best else float("-inf"))


@pytest.mark.slow
def test_adversarial_training_raises_pgd_accuracy(std_model, std_suite, at_model, mnist_test):
    x, y = mnist_test
    torch.manual_seed(0)
    at = run_suite(at_model, x, y, [AttackSpec("fgsm", steps=1), AttackSpec("pgd", steps=20)], [AT_EPS])
    rows = {"standard": std_suite, f"at (PGD-{AT_STEPS}, eps {AT_EPS})": at}
    print(
        f"\nsmall_cnn width {STD['width']}, {STD['epochs']} epochs on {STD['n_train']} mnist_embedded train "
        f"points; test: {len(y)} held-out points, PGD-20 (step 2.5*eps/20, random start), eps={AT_EPS}"
    )
    for name, r in rows.items():
        print(
            f"  {name:24s} clean {acc(r.clean_correct):.3f}  FGSM {acc(r.correct[('fgsm', AT_EPS)]):.3f}  "
            f"PGD-20 {acc(r.correct[('pgd20', AT_EPS)]):.3f}"
        )
    std_pgd, at_pgd = acc(std_suite.correct[("pgd20", AT_EPS)]), acc(at.correct[("pgd20", AT_EPS)])
    assert at_pgd >= std_pgd + 0.15
    assert acc(at.clean_correct) > 0.8  # robust because it learned, not because the suite broke


def test_run_trial_result_record_and_no_rerun(tmp_path, monkeypatch):
    cfg = validate(
        TrialConfig(
            defense="standard",
            width=0.25,
            n_train=500,
            epochs=1,
            n_eval=40,
            jacobian_points=20,
            test_eps=[0.0, 0.1],
            attacks=[AttackSpec("fgsm", 1), AttackSpec("pgd", 5), AttackSpec("cw", 5)],
        )
    )
    d = tmp_path / "trial"
    rec = trial.run_trial(cfg, d)
    on_disk = json.loads((d / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(rec, default=float))
    assert TrialConfig.from_dict(on_disk["config"]) == cfg
    assert 0 <= on_disk["clean_acc"] <= 1 and on_disk["n_points"] == 40
    grid = {(a["label"], a["eps"]): a for a in on_disk["attacks"]}
    # our attacks run at the test eps and at AutoAttack's (default: MNIST's conventional 0.3)
    assert cfg.eval_eps() == [0.0, 0.1, 0.3]
    assert set(grid) == {(s.label(), e) for s in cfg.attacks for e in cfg.eval_eps()}
    for (label, eps), a in grid.items():
        assert a["n_points"] == 40 and 0 <= a["acc"] <= 1
        assert a["steps"] == {"fgsm": 1, "pgd5": 5, "cw5": 5}[label] and a["norm"] == "Linf"
        if eps == 0:
            assert a["acc"] == on_disk["clean_acc"]
    assert [w["eps"] for w in on_disk["worst_case"]] == cfg.eval_eps()
    for w in on_disk["worst_case"]:
        assert w["n_points"] == 40 and w["acc"] <= min(
            grid[(s.label(), w["eps"])]["acc"] for s in cfg.attacks
        )
    jac = on_disk["jacobian"]
    assert jac["method"] == "exact"
    for out in ("logits", "softmax"):
        assert jac[out]["n"] == 20 and all(jac[out][k] > 0 for k in ("mean", "median", "p95"))
    assert on_disk["entropy_mean"] > 0 and 0 <= on_disk["ece"] <= 1
    assert on_disk["cost"]["train"]["forward"] > 0 and on_disk["cost"]["eval"]["backward"] > 0
    assert on_disk["versions"]["torch"] == torch.__version__
    assert "git_commit" in on_disk
    gc = on_disk["git_commit"]
    assert gc is None or (len(gc) == 40 and all(c in "0123456789abcdef" for c in gc))
    for name in ("checkpoint.pt", "model.pt", "config.json"):
        assert (d / name).is_file()
    model, cfg2 = trial.load_trained(d)
    assert cfg2 == cfg

    # a finished trial is not run again: same record, no training, checkpoint untouched
    mtime = (d / "checkpoint.pt").stat().st_mtime_ns

    def no_fit(*a, **k):
        raise AssertionError("fit() called for a finished trial")

    monkeypatch.setattr(trial, "fit", no_fit)
    assert trial.run_trial(cfg, d) == on_disk
    assert (d / "checkpoint.pt").stat().st_mtime_ns == mtime


def test_git_commit_is_none_without_a_commit(monkeypatch):
    from uncertainty_robust import provenance

    def fake_git(returncode, stdout):
        return lambda *a, **k: subprocess.CompletedProcess(a, returncode, stdout=stdout, stderr="")

    monkeypatch.setattr(provenance.subprocess, "run", fake_git(128, "HEAD\n"))  # `git init`, no commit yet
    assert provenance.git_commit() is None
    monkeypatch.setattr(provenance.subprocess, "run", fake_git(0, "a" * 40 + "\n"))
    assert provenance.git_commit() == "a" * 40


def test_a_record_names_the_commit_its_process_started_from(monkeypatch):
    """``git_state`` is read once per process (a trial reads it when it starts): a commit made while
    the trial runs does not change what its record names; a dirty tree is said."""
    from uncertainty_robust import provenance

    answers = {
        ("rev-parse", "HEAD"): "a" * 40 + "\n",
        ("--no-optional-locks", "status", "--porcelain", "--untracked-files=no"): " M x.py\n",
    }

    def fake_git(cmd, **k):
        return subprocess.CompletedProcess(cmd, 0, stdout=answers[tuple(cmd[1:])], stderr="")

    monkeypatch.setattr(provenance, "_STATE", {})
    monkeypatch.setattr(provenance.subprocess, "run", fake_git)
    assert provenance.git_state() == {"git_commit": "a" * 40, "git_dirty": True}
    (
        answers[("rev-parse", "HEAD")],
        answers[("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")],
    ) = "b" * 40, ""
    assert provenance.git_commit() == "b" * 40  # HEAD moved ...
    assert provenance.git_state() == {"git_commit": "a" * 40, "git_dirty": True}  # ... the record's did not
    monkeypatch.setattr(provenance, "_STATE", {})
    assert provenance.git_state() == {"git_commit": "b" * 40, "git_dirty": False}
