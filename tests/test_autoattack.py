"""AutoAttack through the project (``uncertainty_robust.autoattack``, pyautoattack underneath) on a
small CNN trained here on real MNIST digits: it runs only on the points our attacks left robust,
counts its passes, leaves the model and the global RNG as they were, resumes an interrupted
evaluation without redoing finished (eps, attack) pieces and gives the same numbers, and turns
pyautoattack's own sanity checks into audit flags."""

from __future__ import annotations

import json

import pytest
import torch

from uncertainty_robust import autoattack as aa
from uncertainty_robust.attacks import AttackSpec, run_suite
from uncertainty_robust.audit import audit
from uncertainty_robust.config import TrialConfig, validate
from uncertainty_robust.data import load_tensors
from uncertainty_robust.evaluate import evaluate, result_record
from uncertainty_robust.rundir import TrialDir

SPECS = [AttackSpec("apgd-ce", 10), AttackSpec("square", 200)]
EPS = [0.1, 0.15]


@pytest.fixture(scope="module")
def setting(std_model, mnist_test):
    """40 points, our cheap PGD-5 at both eps, the points it leaves robust."""
    x, y = mnist_test[0][:40], mnist_test[1][:40]
    torch.manual_seed(0)
    suite = run_suite(std_model, x, y, [AttackSpec("pgd", 5)], EPS)
    return x, y, suite.worst


def _strip(res):
    """The per-piece records without wall-clock seconds (which differ between runs)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in res["results"]]


def test_runs_on_survivors_only_and_leaves_model_and_rng_alone(std_model, setting):
    x, y, worst = setting
    pts = torch.arange(len(y))
    std_model.train()  # handed over in train mode: attacked in eval mode, mode restored
    rng = torch.get_rng_state()
    grads = [None if p.grad is None else p.grad.clone() for p in std_model.parameters()]
    res = aa.reference(std_model, x, y, SPECS, EPS, worst, pts, seed=0, batch_size=16)
    assert std_model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(p.requires_grad for p in std_model.parameters())
    assert all(  # no parameter gradient was computed or accumulated
        (g is None and p.grad is None) or torch.equal(g, p.grad)
        for g, p in zip(grads, std_model.parameters())
    )
    std_model.eval()
    for eps in EPS:
        first = next(r for r in res["results"] if r["eps"] == eps)
        assert first["n_attacked"] == int(worst[eps].sum())  # only the points our attack left robust
        assert res["_robust"][eps].le(worst[eps]).all()  # the worst case only goes down
        summary = next(e for e in res["eps"] if e["eps"] == eps)
        assert summary["acc"] <= summary["ours_acc"]
        assert summary["acc"] == pytest.approx(float(res["_robust"][eps].float().mean()))
    apgd = [r for r in res["results"] if r["attack"] == "apgd-ce" and r["n_attacked"]]
    sq = [r for r in res["results"] if r["attack"] == "square" and r["n_attacked"]]
    assert apgd and all(r["backward"] > 0 and r["forward"] >= r["backward"] for r in apgd)
    assert sq and all(r["backward"] == 0 and r["forward"] > 0 for r in sq)  # gradient-free
    assert res["cost"].forward >= sum(r["forward"] for r in res["results"])
    print(f"\n{json.dumps(_strip(res), indent=0)}")


class _Stop(Exception):
    pass


def test_an_interrupted_evaluation_resumes_without_redoing_finished_pieces(
    std_model, setting, tmp_path, monkeypatch
):
    x, y, worst = setting
    pts = torch.arange(len(y))
    full = aa.reference(std_model, x, y, SPECS, EPS, worst, pts, seed=3, batch_size=4)
    trial = TrialDir(tmp_path / "trial")
    pieces = [(e, p[4]) for e in EPS for p in aa.pieces_of(SPECS)]
    kill_at = pieces[-1]  # the last piece (square at the second eps), after its first chunk

    def interrupt(eps, label):
        if (eps, label) == kill_at:
            raise _Stop

    with pytest.raises(_Stop):
        aa.reference(
            std_model,
            x,
            y,
            SPECS,
            EPS,
            worst,
            pts,
            seed=3,
            batch_size=4,
            state=trial.eval_piece,
            interrupt=interrupt,
        )
    saved = sorted(p.name for p in trial.eval_state.iterdir())
    assert len(saved) == len(pieces), saved  # every piece has a state file, the last one partial
    calls = []
    real = aa._perturb

    def counting(aa_obj, name, xs, ys, seed):
        calls.append((name, len(xs)))
        return real(aa_obj, name, xs, ys, seed)

    monkeypatch.setattr(aa, "_perturb", counting)
    resumed = aa.reference(
        std_model, x, y, SPECS, EPS, worst, pts, seed=3, batch_size=4, state=trial.eval_piece
    )
    last_input = next(r for r in full["results"] if (r["eps"], r["label"]) == kill_at)["n_attacked"]
    assert {c[0] for c in calls} <= {"square"}  # nothing but the unfinished piece ran again
    assert sum(n for _, n in calls) == last_input - 4  # minus the chunk saved before the kill
    assert _strip(resumed) == _strip(full)  # same points broken, same passes: as if never interrupted
    assert all(torch.equal(resumed["_robust"][e], full["_robust"][e]) for e in EPS)
    calls.clear()
    again = aa.reference(
        std_model, x, y, SPECS, EPS, worst, pts, seed=3, batch_size=4, state=trial.eval_piece
    )
    assert calls == [] and _strip(again) == _strip(full)  # a finished evaluation is not rerun at all
    # a different model (other weights) never reuses the state
    with torch.no_grad():
        p = next(std_model.parameters())
        p.add_(1e-3)
    try:
        aa.reference(std_model, x, y, SPECS, EPS, worst, pts, seed=3, batch_size=4, state=trial.eval_piece)
        assert calls, "the state of another model was reused"
    finally:
        with torch.no_grad():
            p.sub_(1e-3)


class _Softmax(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x).softmax(1)


class _Noisy(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x + 0.05 * torch.randn_like(x))


@pytest.mark.parametrize(
    "wrap, flag", [(_Softmax, "autoattack_softmax_output"), (_Noisy, "autoattack_randomized")]
)
def test_pyautoattack_checks_become_audit_flags(std_model, setting, wrap, flag):
    x, y, worst = setting
    model = wrap(std_model).eval()
    res = aa.reference(model, x, y, [AttackSpec("apgd-ce", 5)], [0.1], worst, torch.arange(20), seed=0)
    assert flag in {c["flag"] for c in res["checks"]}, res["checks"]
    rec = {
        "autoattack": {k: v for k, v in res.items() if not k.startswith("_")},
        "attacks": [],
        "worst_case": [],
    }
    assert flag in {f.name for f in audit(rec)}
    clean = aa.reference(std_model, x, y, [AttackSpec("apgd-ce", 5)], [0.1], worst, torch.arange(20), seed=0)
    assert clean["checks"] == []


def test_evaluate_records_autoattack_and_its_worst_case(std_model, tmp_path):
    cfg = validate(
        TrialConfig(
            width=0.5,
            n_eval=60,
            jacobian_points=10,
            test_eps=[0.0, 0.1, 0.3],
            attacks=[AttackSpec("fgsm"), AttackSpec("pgd", 5), AttackSpec("cw", 5)],
            autoattack=[AttackSpec("apgd-ce", 10), AttackSpec("apgd-t", 3)],
            autoattack_eps=[0.1, 0.2],
            autoattack_points=30,
        )
    )
    rec = evaluate(std_model, cfg, state=tmp_path / "trial")
    masks = rec["_masks"]
    pts = masks["autoattack/points"]
    _, y = load_tensors(cfg.dataset, "test", n=60, seed=0)
    assert (
        int(pts.sum()) == 30 and torch.bincount(y[pts], minlength=10).tolist() == [3] * 10
    )  # class-balanced
    by_eps = {w["eps"]: w for w in rec["worst_case"]}
    assert sorted(by_eps) == [0.0, 0.1, 0.2, 0.3]  # our attacks also ran at the AutoAttack eps 0.2
    for eps in (0.1, 0.2):
        w = by_eps[eps]
        assert w["n_points"] == 30 and w["ours"]["n_points"] == 60 and "apgd-ce10" in w["attacks"]
        ours = masks[f"attack/fgsm/{eps:g}"] & masks[f"attack/pgd5/{eps:g}"] & masks[f"attack/cw5/{eps:g}"]
        assert w["ours_on_points"] == pytest.approx(float(ours[pts].float().mean()))
        assert w["ours"]["acc"] == pytest.approx(float(ours.float().mean()))
        assert w["acc"] <= w["ours_on_points"] + 1e-9
        assert w["acc"] == pytest.approx(float(masks[f"autoattack/{eps:g}"][pts].float().mean()))
        assert torch.equal(masks[f"autoattack/apgd-t3/{eps:g}"] & pts, masks[f"autoattack/{eps:g}"] & pts)
        assert w["ours"]["acc"] == pytest.approx(float(masks[f"worst/{eps:g}"].float().mean()))
    assert "ours" not in by_eps[0.3]
    assert [r["label"] for r in rec["autoattack"]["results"]] == ["apgd-ce10", "apgd-t3"] * 2
    assert rec["eval_cost"]["backward"] > sum(a["backward"] for a in rec["attacks"])
    assert sorted(p.name for p in TrialDir(tmp_path / "trial").eval_state.iterdir()) == sorted(
        f"{aa.piece_name(e, i, lab)}.json"
        for e in (0.1, 0.2)
        for i, lab in enumerate(["apgd-ce10", "apgd-t3"])
    )
    out = result_record(
        cfg, {"epochs": 1, "train_seconds": 0, "world_size": 1, "history": [], "cost": {}}, rec, tmp_path
    )
    back = json.loads(json.dumps(out))
    assert back["versions"]["pyautoattack"] != "unknown" and "_masks" not in back
    assert (
        back["autoattack"]["n_points"] == 30
        and back["cost"]["eval"]["forward"] == rec["eval_cost"]["forward"]
    )
