"""Constants and helpers shared by the library tests (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import pytest
import torch

from uncertainty_robust.train import fit

SUITE_EPS = [0.0, 0.1, 0.2, 0.3, 0.5]
TOL_MONOTONE = 0.005  # allowed increase of accuracy from one epsilon to the next
# The shared fixture models (conftest: std_model, at_model) select nothing, so they carve no validation
# split (val_points=0): they train on exactly the 3,000 points they trained on before the split
# existed, and the thresholds the attack/audit/Jacobian tests were calibrated on them still hold.
STD = dict(
    dataset="mnist_embedded", model="small_cnn", width=0.5, n_train=3000, epochs=2, seed=0, val_points=0
)
AT_EPS, AT_STEPS = 0.2, 7


def acc(mask: torch.Tensor) -> float:
    return float(mask.float().mean())


def fit_quiet(cfg, workdir, **kw):
    """``fit`` without TensorBoard; the model in eval mode and the summary."""
    model, summary = fit(cfg, workdir, tensorboard=False, **kw)
    return model.eval(), summary


def assert_autoattack_at_every_informative_eps(rec: dict, masks: dict | None = None, band=None) -> None:
    """Every eps > 0 where our attacks (and everything at the smaller eps) leave a share of the
    n_eval points robust inside the informative band has AutoAttack, on all its points; no other eps
    has it (the default rule). ``masks``: the per-point outcomes (default ``rec["_masks"]``)."""
    masks = masks if masks is not None else rec["_masks"]
    cfg = rec.get("config") or {}
    lo, hi = band or cfg.get("autoattack_informative", [0.01, 0.99])
    ran = {e["eps"]: e["ran"] for e in (rec.get("autoattack") or {}).get("eps", [])}
    prev = masks["clean"]
    n = len(prev)
    for w in (w for w in rec["worst_case"] if w["eps"] > 0):
        eps = w["eps"]
        base = masks[f"worst/{eps:g}"] & prev
        share = float(base.float().mean())
        informative = lo <= share <= hi
        assert ran.get(eps, False) == informative, (
            f"eps {eps:g}: our attacks leave {share:.3f} of the points robust ({'inside' if informative else 'outside'} "
            f"the informative band [{lo:g}, {hi:g}]) but AutoAttack {'did not run' if informative else 'ran'}"
        )
        if informative:
            assert w["n_points"] == n and w["autoattack"]["ran"], (
                f"eps {eps:g}: AutoAttack on {w['n_points']} of {n} points"
            )
        prev = masks[f"autoattack/{eps:g}"]


def assert_grid_refused(text: str, key: str, words: str = "", path=None):
    """The grid (YAML ``text``, or the file ``path``) is refused with a GridError naming ``key`` in
    one line (containing ``words``); returns the error."""
    from sweeps.grid import GridError, load_grid, parse_grid

    with pytest.raises(GridError) as e:
        load_grid(path) if path is not None else parse_grid(text)
    err = e.value
    assert err.key == key and "\n" not in str(err) and words in str(err), f"{err.key}: {err}"
    return err


TINY_GRID = __import__("pathlib").Path(__file__).resolve().parent / "grids" / "tiny.yaml"


def tiny_grid(tmp_path, name: str, replace: bool = False, **changes):
    """A grid file derived from ``tests/grids/tiny.yaml`` (the sweep tests' 4 small trials), named
    ``name``: nested mappings are merged key by key unless ``replace``."""
    import yaml

    g = yaml.safe_load(TINY_GRID.read_text())
    for k, v in changes.items():
        merge = isinstance(v, dict) and isinstance(g.get(k), dict) and not replace
        g[k] = {**g[k], **v} if merge else v
    g["name"] = name
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(g, sort_keys=False))
    return p


def run_trial_dirs(run_dir) -> list:
    """The planned trials' directories of a run, in plan order."""
    from uncertainty_robust.rundir import RunDir

    return [t.root for t in RunDir(run_dir).trial_dirs()]


def scripted_validation(monkeypatch, values: list) -> None:
    """The real per-epoch validation with ``val/robust_acc`` replaced by ``values[epoch - 1]`` (which
    epoch is best is then known in advance)."""
    from uncertainty_robust import train

    real = train._validate_epoch

    def validate_epoch(model, x, y, cfg, epoch):
        return {**real(model, x, y, cfg, epoch), "val/robust_acc": values[epoch - 1]}

    monkeypatch.setattr(train, "_validate_epoch", validate_epoch)


def reference_trial(cfg: dict, trial_dir, workers: int = 2) -> None:
    """``cfg`` run uninterrupted, to the end (training and evaluation), by the sweep's own rank
    supervisor without Ray: what a killed, requeued and resumed sweep trial must equal."""
    from cluster.ranks import run_ranks

    run_ranks(
        cfg,
        trial_dir,
        workers=workers,
        threads=1,
        use_gpu=False,
        retries=0,
        on_epoch=lambda epoch, metrics, ckpt, done: done(),
    )


# result.json keys that differ between two runs of one trial by design: timings, dates, host, versions
_VOLATILE = ("second", "time", "host", "pid", "versions", "git_", "restart")


def _stable(x):
    if isinstance(x, dict):
        return {
            k: _stable(v) for k, v in x.items() if not (k.endswith("_at") or any(s in k for s in _VOLATILE))
        }
    if isinstance(x, list):
        return [_stable(v) for v in x]
    return x


def assert_same_weights(got: dict, want: dict, what: str = "tensors differ after resume:") -> None:
    """Two state dicts hold the same tensors, bit for bit (``what`` starts the failure message)."""
    assert got.keys() == want.keys()
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"{what} {different}"


def assert_same_results(trial_dir, ref_dir) -> None:
    """The trial's final weights (tensor for tensor), per-point outcomes (every attack, eps and
    checkpoint) and result record (less timings, host and versions) equal the reference's."""
    import json
    from pathlib import Path

    import numpy as np

    from uncertainty_robust import checkpoint
    from uncertainty_robust.trial import read_points

    d, r = Path(trial_dir), Path(ref_dir)
    assert_same_weights(
        checkpoint.load(d / "model.pt")["model"],
        checkpoint.load(r / "model.pt")["model"],
        f"{d.name}: final weights differ from the uninterrupted run's in",
    )
    with np.load(d / "points.npz") as a, np.load(r / "points.npz") as b:
        assert sorted(a.files) == sorted(b.files), f"{d.name}: {sorted(a.files)} vs {sorted(b.files)}"
        differ = [k for k in b.files if not np.array_equal(a[k], b[k])]
    assert not differ, f"{d.name}: per-point outcomes differ from the uninterrupted run's in {differ}"
    assert read_points(d) is not None
    rec = _stable(json.loads((d / "result.json").read_text()))
    ref = _stable(json.loads((r / "result.json").read_text()))
    differ = [k for k in ref if rec.get(k) != ref[k]] + [k for k in rec if k not in ref]
    assert not differ, f"{d.name}: result.json differs from the uninterrupted run's in {differ}"
