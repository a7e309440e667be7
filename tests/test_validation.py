"""The validation split and what reads it: carved from train (stratified, seeded, disjoint,
recorded), the per-epoch validation reads it and never the test split, the best checkpoint (chosen on it)
is kept, evaluated and resumed bit-identically through a kill between its two files, the grid
accepts only validation metrics for ASHA and Tune's final report carries them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from common import fit_quiet, scripted_validation

from sweeps import launch
from sweeps.grid import GridError, parse_grid
from uncertainty_robust import checkpoint, train, trial
from uncertainty_robust.attacks import AttackSpec
from uncertainty_robust.config import TrialConfig, validate
from uncertainty_robust.data import load_arrays, load_train_val, loaders, train_val_indices
from uncertainty_robust.errors import ConfigError, UserError

TINY = dict(width=0.25, n_train=300, n_eval=30, jacobian_points=8, test_eps=[0.0, 0.2])
TINY_ATTACKS = [AttackSpec("fgsm", 1), AttackSpec("pgd", 3)]


# ----------------------------------------------------------------------------- the split
def test_validation_split_is_stratified_disjoint_seeded():
    _, y = load_arrays("mnist_embedded", "train")
    tr, val = train_val_indices(y, None, 1000, 0)
    assert len(val) == 1000 and len(tr) == len(y) - 1000
    assert not set(tr) & set(val) and sorted(set(tr) | set(val)) == list(range(len(y)))
    counts = np.bincount(y[val], minlength=10)
    assert counts.max() - counts.min() <= 1  # class-balanced
    tr2, val2 = train_val_indices(y, None, 1000, 0)
    assert np.array_equal(val, val2) and np.array_equal(tr, tr2)  # deterministic
    _, val3 = train_val_indices(y, None, 1000, 1)
    assert not np.array_equal(val, val3)  # the seed draws another split
    tr4, val4 = train_val_indices(y, 500, 1000, 0)
    assert np.array_equal(val4, val) and len(tr4) == 500 and not set(tr4) & set(val)
    assert np.bincount(y[tr4], minlength=10).min() >= 49  # the training subset is stratified too
    (xt, yt), (xv, yv), info = load_train_val("mnist_embedded", None, 500, 1000, 0)
    x_all, _ = load_arrays("mnist_embedded", "train")
    assert torch.equal(xv, torch.from_numpy(x_all[val].astype(np.float32)) / 255)
    assert torch.equal(yt, torch.from_numpy(y[tr4]))
    assert info["n_points"] == 1000 and info["seed"] == 0 and info["n_train"] == 500
    assert info["carved_from"] == "train" and sum(info["class_counts"]) == 1000
    with pytest.raises(UserError, match="val_points"):
        train_val_indices(y, None, len(y), 0)
    tr0, val0 = train_val_indices(y, None, 0, 0)
    assert len(val0) == 0 and len(tr0) == len(y)


def test_config_of_the_validation_fields():
    at = TrialConfig(defense="at", eps=0.25)
    assert at.val_attack_eps == 0.25 and at.jac_eps == 0.25  # adversarial: its training eps
    std = TrialConfig(defense="standard", test_eps=[0.0, 0.3, 0.1])
    assert std.val_attack_eps == 0.1  # the smallest positive test eps
    assert TrialConfig(val_eps=0.2, jacobian_eps=0.05).val_attack_eps == 0.2
    assert TrialConfig(val_eps=0.2, jacobian_eps=0.05).jac_eps == 0.05
    for kw, key in (
        (dict(checkpoints=["best"]), "checkpoints"),
        (dict(checkpoints=["last", "last"]), "checkpoints"),
        (dict(checkpoints=["last", "worst"]), "checkpoints[1]"),
        (dict(checkpoints=["last", "best"], val_points=0), "checkpoints"),
        (dict(val_points=-1), "val_points"),
        (dict(val_eps=1.5), "val_eps"),
        (dict(val_pgd_steps=0), "val_pgd_steps"),
        (dict(jacobian_eps=-0.1), "jacobian_eps"),
    ):
        with pytest.raises(ConfigError) as e:
            validate(TrialConfig(**kw))
        assert e.value.key == key
    validate(TrialConfig(checkpoints=["last", "best"]))


# ----------------------------------------------------------------------------- the per-epoch validation
def test_fit_reads_only_the_training_split_and_validates_on_its_validation_part(tmp_path, monkeypatch):
    asked = []
    real = loaders.load_arrays

    def spy(name, split, *a, **k):
        asked.append(split)
        return real(name, split, *a, **k)

    monkeypatch.setattr(loaders, "load_arrays", spy)
    cfg = validate(TrialConfig(defense="standard", epochs=1, val_points=100, **TINY))
    _, summary = fit_quiet(cfg, tmp_path / "t")
    assert asked and set(asked) == {"train"}, asked  # the test split is for the final evaluation only
    (h,) = summary["history"]
    assert {"val/clean_acc", "val/robust_acc", "val/entropy", "val/jacobian_logits_rms"} <= set(h)
    assert not [k for k in h if k.startswith("test/")]
    assert 0 <= h["val/robust_acc"] <= h["val/clean_acc"] <= 1
    v = summary["validation"]
    assert v["n_points"] == 100 and v["eps"] == 0.2 and v["attack"] == "pgd10" and v["n_train"] == 300


def test_validation_is_rms_deterministic_and_leaves_the_training_rng_alone(std_model):
    from uncertainty_robust.jacobian import jacobian_norms_estimate

    cfg = TrialConfig(defense="standard", seed=3, jacobian_projections=2, test_eps=[0.0, 0.1])
    (_, _), (x, y), _ = load_train_val("mnist_embedded", None, 100, 200, 0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = train._validate_epoch(std_model, x, y, cfg, epoch=2)
    assert torch.equal(torch.get_rng_state(), before)  # forked: training's stream is untouched
    assert a == train._validate_epoch(std_model, x, y, cfg, epoch=2)
    assert a["val/robust_acc"] < a["val/clean_acc"]
    g = torch.Generator().manual_seed(3 * 100003 + 2)
    sq = jacobian_norms_estimate(std_model, x[:128], projections=2, generator=g, squared=True)
    for out in ("logits", "softmax"):
        rms = float(sq[out].mean().sqrt())
        assert a[f"val/jacobian_{out}_rms"] == pytest.approx(rms, rel=1e-5)
        assert rms > float(sq[out].sqrt().mean())  # the mean of roots, which it replaces, is lower


# ----------------------------------------------------------------------------- best checkpoint
def test_best_checkpoint_is_kept_and_evaluated(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [0.2, 0.6, 0.4])
    cfg = validate(
        TrialConfig(
            defense="standard",
            epochs=3,
            val_points=100,
            checkpoints=["last", "best"],
            attacks=TINY_ATTACKS,
            **TINY,
        )
    )
    d = tmp_path / "trial"
    rec = trial.run_trial(cfg, d)
    assert rec["checkpoint"] == "last" and rec["epoch"] == 3
    b = rec["best"]
    assert b["epoch"] == 2 and b["value"] == 0.6 and b["evaluated"] and not b["same_as_last"]
    assert b["metric"] == "val/robust_acc" and {"clean_acc", "attacks", "worst_case", "jacobian"} <= set(b)
    best_state = checkpoint.load(d / "best.pt")
    assert best_state["epoch"] == 2
    final = checkpoint.load(d / "model.pt")["model"]
    assert any(not torch.equal(best_state["model"][k], final[k]) for k in final)
    # the best evaluation is of best.pt's weights: its clean accuracy, recomputed here
    model = train.make_model(cfg)
    model.load_state_dict(best_state["model"])
    from uncertainty_robust.data import load_tensors

    xt, yt = load_tensors("mnist_embedded", "test", n=cfg.n_eval, seed=0)
    with torch.no_grad():
        assert b["clean_acc"] == pytest.approx(float((model.eval()(xt).argmax(1) == yt).float().mean()))
    idx, masks = trial.read_points(d, "best")
    assert masks["clean"].mean() == pytest.approx(b["clean_acc"])
    w = b["worst_case"][1]
    assert masks["worst/0.2"].mean() == pytest.approx(w["ours"]["acc"])  # ours; with AutoAttack:
    assert masks["autoattack/0.2"][masks["autoattack/points"]].mean() == pytest.approx(w["acc"])
    assert trial.read_points(d)[1]["clean"].mean() == pytest.approx(rec["clean_acc"])
    # ur-aggregate --checkpoint best tables it, the default tables the last one
    from uncertainty_robust import report

    run = tmp_path
    last = report.aggregate(run, transfer=False)
    best = report.aggregate(run, transfer=False, checkpoint="best")
    assert best.out == run / "aggregate_best" and last.out == run / "aggregate"
    row = lambda out: json.loads((out / "table_mnist_embedded_small_cnn.json").read_text())["entries"][0]  # noqa: E731
    assert row(best.out)["clean_acc"] == pytest.approx(b["clean_acc"])
    assert row(last.out)["clean_acc"] == pytest.approx(rec["clean_acc"])
    assert "checkpoint: best" in best.markdown


def test_without_best_in_checkpoints_the_bookkeeping_is_still_recorded(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [0.5, 0.1])
    cfg = validate(TrialConfig(defense="standard", epochs=2, val_points=50, attacks=TINY_ATTACKS, **TINY))
    rec = trial.run_trial(cfg, tmp_path / "t")
    assert rec["best"] == {"epoch": 1, "metric": "val/robust_acc", "value": 0.5, "evaluated": False}
    assert trial.read_points(tmp_path / "t", "best") is None
    from uncertainty_robust import report

    with pytest.raises(report.NoTrialsError, match="checkpoints"):
        report.aggregate(tmp_path, transfer=False, checkpoint="best")


def test_resume_through_a_kill_between_best_and_checkpoint_is_bit_identical(tmp_path, monkeypatch):
    """Epoch 2 is the best; the process dies after writing best.pt of epoch 2 and before the
    checkpoint that records it. The rerun redoes epoch 2 and ends with the uninterrupted run's
    weights, best.pt and best-epoch bookkeeping."""
    scripted_validation(monkeypatch, [0.1, 0.5, 0.3])
    cfg = validate(TrialConfig(defense="at", eps=0.2, pgd_steps=2, epochs=3, val_points=60, **TINY))
    ref_model, ref = fit_quiet(cfg, tmp_path / "ref")
    ref_best = checkpoint.load(tmp_path / "ref" / "best.pt")
    assert ref["best"]["epoch"] == 2

    real_save = checkpoint.save_atomic

    class Killed(Exception):
        pass

    def dying_save(obj, path):
        if str(path).endswith("checkpoint.pt") and obj["epoch"] == 2:
            raise Killed
        real_save(obj, path)

    monkeypatch.setattr(checkpoint, "save_atomic", dying_save)
    d = tmp_path / "b"
    with pytest.raises(Killed):
        fit_quiet(cfg, d)
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    assert checkpoint.load(d / "best.pt")["epoch"] == 2  # the window was hit: best.pt is ahead of ...
    assert json.loads(checkpoint.load(d / "checkpoint.pt")["best"])["epoch"] == 1  # ... the checkpoint
    model, resumed = fit_quiet(cfg, d)
    assert resumed["best"] == ref["best"]

    def no_time(h):
        return [{k: v for k, v in e.items() if k != "epoch_seconds"} for e in h]

    assert no_time(resumed["history"]) == no_time(ref["history"])  # every metric, the validation's included
    for k, v in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    best = checkpoint.load(d / "best.pt")
    assert best["epoch"] == ref_best["epoch"] == 2
    for k, v in ref_best["model"].items():
        assert torch.equal(best["model"][k], v), k
    assert json.loads(checkpoint.load(d / "checkpoint.pt")["best"]) == json.loads(
        checkpoint.load(tmp_path / "ref" / "checkpoint.pt")["best"]
    )


# ----------------------------------------------------------------------------- grid and Tune
BAD = {
    "test metric": ("defenses: [at]\nsearch: {metric: worst_mean}\n", "search.metric"),
    "test clean acc": (
        "defenses: [at]\nsearch: {metric: test_clean_acc, scheduler: asha}\n",
        "search.metric",
    ),
    "asha without validation": (
        "defenses: [at]\nsearch: {scheduler: asha}\nvalidation: {points: 0}\n",
        "validation.points",
    ),
    "asha across validation eps": ("defenses: [standard, at]\nsearch: {scheduler: asha}\n", "validation.eps"),
    "best without validation": (
        "defenses: [at]\nvalidation: {points: 0}\nevaluation: {checkpoints: [last, best]}\n",
        "evaluation.checkpoints",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_grid_refuses_selection_off_the_validation_split(case, tmp_path, capsys):
    text, key = BAD[case]
    with pytest.raises(GridError) as e:
        parse_grid(text)
    assert e.value.key == key
    g = tmp_path / "bad.yaml"
    g.write_text(text)
    assert launch.main(["--grid", str(g), "--cluster", "local", "--dry-run", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err


def test_grid_accepts_validation_metrics_and_tune_sees_them():
    g = parse_grid(
        "defenses: [standard, at]\nsearch: {scheduler: asha, metric: val_robust_acc}\nvalidation: {eps: 0.3}\n"
    )
    assert g.search["metric"] == "val/robust_acc" and {c.val_attack_eps for c in g.trials} == {0.3}
    assert parse_grid("defenses: [at]\n").search["metric"] == "val/robust_acc"  # the default
    from cluster.trainables import final_metrics

    rec = {
        "clean_acc": 0.9,
        "worst_case": [{"eps": 0.1, "acc": 0.5}],
        "train": {"history": [{"val/robust_acc": 0.1}, {"val/robust_acc": 0.4, "val/clean_acc": 0.8}]},
    }
    m = final_metrics(rec)  # Tune checks every report, the final one too, for ASHA's metric
    assert m["val_robust_acc"] == 0.4 and m["val_clean_acc"] == 0.8
