"""The evaluation engine (``uncertainty_robust.evaluation``) on small CNNs trained here on real MNIST
digits: the plan (ours, then AutoAttack, per eps ascending), reuse across eps, AutoAttack at every
informative eps, sharding over ranks (per point identical to one rank, a BatchNorm model included),
resuming after a kill without re-attacking finished chunks, and the progress line."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest
import torch
from common import STD, assert_autoattack_at_every_informative_eps

from benchmarks.evaluation import evaluate_on_ranks
from uncertainty_robust.attacks import AttackSpec
from uncertainty_robust.config import TrialConfig, validate
from uncertainty_robust.evaluation import AUTOATTACK, OURS, EvalPlan, evaluate
from uncertainty_robust.evaluation import engine as engine_module
from uncertainty_robust.rundir import TrialDir

CFG = dict(
    width=0.5,
    n_eval=40,
    chunk_points=10,
    jacobian_points=8,
    test_eps=[0.0, 0.05, 0.1, 0.2, 0.3],
    attacks=[AttackSpec("fgsm"), AttackSpec("pgd", 5), AttackSpec("cw", 5)],
    autoattack=[AttackSpec("apgd-ce", 5), AttackSpec("square", 50)],
)


def small(**kw) -> TrialConfig:
    return validate(TrialConfig(**{**CFG, **kw}))


def test_plan_runs_ours_then_autoattack_per_eps_and_chunks_do_not_depend_on_ranks():
    plan = EvalPlan.of(small())
    eps = [s.eps for s in plan.steps]
    assert eps == sorted(eps) and plan.linf_eps == (0.0, 0.05, 0.1, 0.2, 0.3)
    at = [(s.stage, s.label) for s in plan.steps if s.eps == 0.1]
    assert at == [
        (OURS, "fgsm"),
        (OURS, "pgd5"),
        (OURS, "cw5"),
        (AUTOATTACK, "apgd-ce5"),
        (AUTOATTACK, "square50"),
    ]
    assert plan.aa_listed(0.1) is None  # the default: decided at run time by the informative rule
    chunks = [plan.chunk(c).tolist() for c in range(plan.n_chunks)]
    assert sorted(i for ch in chunks for i in ch) == list(range(40)) and plan.n_chunks == 4
    for world in (1, 2, 3, 8):  # each chunk on exactly one rank, whatever the number of ranks
        owned = sorted(c for r in range(world) for c in plan.chunks_of(r, world))
        assert owned == list(range(plan.n_chunks))
    assert EvalPlan.of(small(autoattack_eps=[0.1])).aa_listed(0.2) is False
    assert EvalPlan.of(small(chunk_points=None, n_eval=1000)).chunk_points == 125  # ceil(1000 / 8)


def test_a_point_broken_at_a_smaller_eps_is_never_robust_at_a_larger_one(std_model):
    cfg = small()
    rec = evaluate(std_model, cfg)
    m, eps = rec["_masks"], [e for e in cfg.test_eps if e > 0]
    for name in ["worst", "autoattack"] + [f"attack/{s.label()}" for s in cfg.attacks]:
        prev = m["clean"]
        for e in eps:
            cur = m[f"{name}/{e:g}"]
            assert cur.le(prev).all(), f"{name}: a point broken below eps {e:g} is robust at {e:g}"
            prev = cur
    # not attacked again: each attack at the next eps attacks only the points it left robust
    rows = {(r["label"], r["eps"]): r for r in rec["attacks"]}
    for s in cfg.attacks:
        for lo, hi in zip(eps, eps[1:]):
            assert rows[(s.label(), hi)]["n_attacked"] == int(m[f"attack/{s.label()}/{lo:g}"].sum())
    assert_autoattack_at_every_informative_eps(rec)
    decisions = {e["eps"]: e for e in rec["autoattack"]["eps"]}
    assert any(d["ran"] for d in decisions.values()) and not all(d["ran"] for d in decisions.values())
    # without reuse every eps stands alone: the same attack at the larger eps attacks every clean point
    alone = evaluate(std_model, dataclasses.replace(cfg, reuse_eps=False))
    n_clean = int(alone["_masks"]["clean"].sum())
    assert all(r["n_attacked"] == n_clean for r in alone["attacks"] if r["eps"] > 0)


def test_informative_rule_follows_its_band(std_model):
    """Narrow the band to nothing: AutoAttack runs nowhere, and says why at every eps."""
    rec = evaluate(std_model, small(autoattack_informative=[0.999, 1.0]))
    assert rec["autoattack"]["results"] == [] and not any(e["ran"] for e in rec["autoattack"]["eps"])
    assert all("outside [0.999, 1]" in w["autoattack"]["why"] for w in rec["worst_case"] if w["eps"] > 0)
    assert_autoattack_at_every_informative_eps(rec, band=(0.999, 1.0))
    with pytest.raises(AssertionError, match="informative"):  # the checker fires on a left-out cell
        broken = {**rec, "autoattack": {**rec["autoattack"], "eps": []}}
        assert_autoattack_at_every_informative_eps(broken, band=(0.0, 1.0))


def test_probe_eps_runs_the_masking_probe_where_asked(std_model):
    """``probe_eps``: the strong CE-PGD and Square also run at each listed eps where the reference
    leaves at least 5 % robust (on its survivors, paired with it), say why where it does not, and
    the dry run's plan prices them."""
    want = [0.2, 0.3]
    cfg = small(probe_eps=want, autoattack=[])
    probe = evaluate(std_model, cfg)["masking_probe"]
    accs = {float(e): a for e, a in probe["whitebox"]["acc"].items()}
    extra = {x["eps"]: x for x in probe["extra"]}
    assert set(extra) == {e for e in want if e != probe["eps"] and accs[e] >= 0.05} and extra, (
        probe["eps"],
        accs,
    )
    assert {x["eps"] for x in probe.get("extra_not_tested", [])} == {
        e for e in want if e != probe["eps"] and accs[e] < 0.05
    }
    assert probe["eps"] == 0.1 and set(extra) == {0.2} and probe["extra_not_tested"][0]["eps"] == 0.3, accs
    for e, x in extra.items():
        assert x["strong"]["ref_acc"] == pytest.approx(accs[e]) and x["strong"]["only_ref"] == 0
        assert x["strong"]["acc"] <= x["strong"]["ref_acc"] and x["square"]["label"] == "square1000"
    plain = EvalPlan.of(small(autoattack=[])).probe_work(lambda e, stage: 0.5)
    assert len(EvalPlan.of(cfg).probe_work(lambda e, stage: 0.5)) == len(plain) * 3  # rule eps + 2 others
    # a value within 1e-6 of an evaluated eps is that eps (merged into eval_eps, then probed)
    near = small(probe_eps=[0.2 + 1e-7], autoattack=[])
    assert near.probe_at() == [0.2] and 0.2 + 1e-7 not in near.eval_eps()


def test_the_dry_run_prices_the_probe_on_its_points():
    """``probe_points`` (and ``autoattack_points`` for Square, whose points are nested in both): the
    plan prices the probe's attacks on those points, not on all n_eval."""
    half = lambda e, stage: 0.5  # noqa: E731
    n = small(autoattack=[]).n_eval
    every = {w.attack: w.passes for w in EvalPlan.of(small(autoattack=[])).probe_work(half)}
    sub = {
        w.attack: w.passes for w in EvalPlan.of(small(autoattack=[], probe_points=n // 4)).probe_work(half)
    }
    both = EvalPlan.of(small(autoattack=[], probe_points=n // 2, autoattack_points=n // 4)).probe_work(half)
    assert len(every) == 2 and set(sub) == set(every)
    for name in every:
        assert sub[name] == pytest.approx(every[name] / 4, rel=0.05), (name, sub, every)
    square = {w.attack: w.passes for w in both}
    strong = next(a for a in every if a != "square")
    assert square[strong] == pytest.approx(every[strong] / 2, rel=0.05)
    assert square["square"] == pytest.approx(every["square"] / 4, rel=0.05)


# ------------------------------------------------------------------------------ sharding
def _comparable(rec: dict) -> dict:
    """The record without wall-clock seconds (which differ between runs)."""
    if isinstance(rec, dict):
        return {k: _comparable(v) for k, v in rec.items() if k != "seconds"}
    if isinstance(rec, list):
        return [_comparable(v) for v in rec]
    return rec


@pytest.mark.parametrize("model_name", ["small_cnn", "preact_resnet18"])
def test_two_ranks_give_every_point_the_outcome_of_one_rank(model_name, std_model, tmp_path):
    if model_name == "small_cnn":
        cfg, model = small(), std_model
    else:  # BatchNorm: in eval mode its running statistics, so no point depends on its batch
        from common import fit_quiet

        train = validate(
            TrialConfig(**{**STD, "model": "preact_resnet18", "width": 0.0625, "n_train": 500, "epochs": 1})
        )
        model = fit_quiet(train, tmp_path / "bn")[0]
        cfg = small(model="preact_resnet18", width=0.0625, test_eps=[0.0, 0.1, 0.2], jacobian_points=4)
    one = evaluate(model, cfg)
    two = evaluate_on_ranks(model, cfg, 2, tmp_path)
    assert two["world"] == 2
    assert sorted(two["masks"]) == sorted(one["_masks"])
    differ = [k for k, v in one["_masks"].items() if not torch.equal(v, two["masks"][k])]
    assert not differ, differ
    for k in ("attacks", "worst_case", "autoattack", "jacobian"):
        assert _comparable(two["rec"][k]) == _comparable(one[k]), k
    probe = {k: v for k, v in one["masking_probe"].items() if k != "cost"}
    assert probe == {k: v for k, v in two["rec"]["masking_probe"].items() if k != "cost"}


# ------------------------------------------------------------------------------ resume
class _Killed(Exception):
    pass


def test_a_killed_evaluation_resumes_without_re_attacking_finished_chunks(std_model, tmp_path, monkeypatch):
    cfg = small()
    trial = TrialDir(tmp_path / "trial")
    real = engine_module.Runner._attack
    calls: list = []

    def counting(self, step, pts, c, cost, msgs):
        calls.append((step.key, c))
        if kill_after is not None and len(calls) > kill_after:
            raise _Killed
        return real(self, step, pts, c, cost, msgs)

    monkeypatch.setattr(engine_module.Runner, "_attack", counting)
    kill_after = None
    full = evaluate(std_model, cfg)  # uninterrupted, no state: counts the chunk-steps of a whole evaluation
    total = len(calls)
    calls.clear()
    kill_after = total // 2
    with pytest.raises(_Killed):
        evaluate(std_model, cfg, state=trial)
    done = calls[:-1]
    calls.clear()
    kill_after = None
    resumed = evaluate(std_model, cfg, state=trial)
    assert len(calls) == total - len(done) and not set(calls) & set(done)  # no finished chunk again
    assert all(torch.equal(resumed["_masks"][k], full["_masks"][k]) for k in full["_masks"])
    for k in ("attacks", "worst_case", "autoattack"):
        assert _comparable(resumed[k]) == _comparable(full[k]), k
    calls.clear()
    again = evaluate(std_model, cfg, state=trial)
    assert calls == [] and _comparable(again["worst_case"]) == _comparable(full["worst_case"])
    # a damaged chunk file: set aside with a warning, only its chunk is evaluated again
    store = next(trial.eval_state.iterdir())
    victim = sorted(store.glob("chunk_*.json"))[1]
    victim.write_bytes(victim.read_bytes()[:50])
    redo = evaluate(std_model, cfg, state=trial)
    assert calls and {c for _, c in calls} == {1}
    assert list(store.glob("chunk_00001.json.unreadable-*"))
    assert all(torch.equal(redo["_masks"][k], full["_masks"][k]) for k in full["_masks"])
    # another model's saved outcomes are never reused
    calls.clear()
    other = dataclasses.replace(cfg)
    with torch.no_grad():
        p = next(std_model.parameters())
        saved = p.clone()  # the session's model, restored bit for bit (adding and subtracting 1e-3 is not)
        p.add_(1e-3)
    try:
        evaluate(std_model, other, state=trial)
        assert len(calls) > 0
    finally:
        with torch.no_grad():
            p.copy_(saved)


# ------------------------------------------------------------------------------ progress
def test_progress_reports_step_points_left_and_eta_at_most_every_10_s(std_model, monkeypatch):
    from uncertainty_robust.evaluation import progress as progress_module

    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    lines: list = []
    p = progress_module.Progress(lines.append, every=10.0)
    p.add(100.0)
    for t in (1.0, 5.0, 11.5, 12.0, 30.0):
        clock[0] = t
        p.update("eps 0.1 pgd5", left=7, of=40, remaining_passes=300.0)
    assert [round(x["elapsed_s"], 1) for x in lines] == [1.0, 11.5, 30.0]  # at most one per 10 s
    first = lines[0]
    assert first["eta_s"] == pytest.approx(3.0) and "eps 0.1 pgd5, 7 of 40 points left" in first["line"]
    got: list = []
    evaluate(std_model, small(), progress=got.append)
    assert got and all("evaluating: eps" in x["line"] for x in got)
    # the ETA's passes leave out AutoAttack where autoattack_eps does not list it: at AutoAttack's
    # last step at eps 0.05 only our attacks at the larger eps are left (at most on every point)
    seen: list = []
    monkeypatch.setattr(
        progress_module.Progress, "update", lambda self, what, *a, **k: seen.append((what, a))
    )
    cfg = small(autoattack_eps=[0.05])
    plan = EvalPlan.of(cfg)
    ours_after = sum(
        cfg.n_eval * s.spec.passes_per_point(10) for s in plan.steps if s.stage == OURS and s.eps > 0.05
    )
    evaluate(std_model, cfg)
    square = next(s for s in plan.steps if s.eps == 0.05 and s.label.startswith("square")).spec
    # (left, of, remaining): remaining = the current step on the points it has left + every later step
    at = [
        r - left * square.passes_per_point(10)
        for what, (left, of, r) in seen
        if what.startswith("eps 0.05 square")
    ]
    assert at and all(0 < r <= ours_after for r in at), (at, ours_after)


def test_ur_train_prints_evaluation_progress_by_default_and_not_with_q(train_cli, tmp_path):
    argv, env = train_cli
    common = ["--width", "0.25", "--n-train", "300", "--epochs", "1", "--n-eval", "20", "--val-points", "0",
              "--test-eps", "0", "0.1", "--attacks", "pgd:3", "--autoattack", "apgd-ce:3", "--jacobian-points", "0"]  # fmt: skip
    loud = subprocess.run(
        argv + common + ["--workdir", str(tmp_path / "a")], env=env, capture_output=True, text=True
    )
    quiet = subprocess.run(
        argv + common + ["--workdir", str(tmp_path / "b"), "-q"], env=env, capture_output=True, text=True
    )
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr[-2000:] + quiet.stderr[-2000:]
    assert "evaluating: eps 0.1" in loud.stderr + loud.stdout
    assert "evaluating:" not in quiet.stderr + quiet.stdout and "clean acc" in quiet.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--points", "50,abc"],
        ["--points", "100,0"],
        ["--points", "50,50"],
        ["--points", "50", "--estimates"],
    ],
)
def test_the_benchmark_refuses_bad_points_and_two_modes_with_exit_2(argv, monkeypatch, capsys):
    """Bad ``--points`` or two modes at once: argparse's one-line error and exit 2, before anything runs."""
    import benchmarks.evaluation as bench

    def started(*a, **k):
        raise AssertionError("the benchmark started on bad input")

    for name in ("points", "run", "quickstart_models", "estimate"):
        monkeypatch.setattr(bench, name, started)
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m benchmarks.evaluation: error:"), err
