"""The trial config: its hash (which names every run directory), its field rules, its bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from uncertainty_robust.attacks import AttackSpec
from uncertainty_robust.config import TrialConfig

REPO = Path(__file__).resolve().parents[1]


def test_trial_id_of_a_fixed_config_is_pinned():
    """``trial_id()`` names every existing trial directory: a change of the hash (a new field that
    enters it, another serialisation) would orphan every run on disk. Values computed at 3a81627."""
    assert TrialConfig().trial_id() == "a99c15b632"
    c = TrialConfig(
        defense="at_entm",
        lam=0.5,
        eps=0.2,
        seed=3,
        n_train=3000,
        width=0.5,
        epochs=2,
        test_eps=[0, 0.1, 0.2],
        attacks=[AttackSpec("fgsm"), AttackSpec("pgd", 10), AttackSpec("cw", 10)],
        autoattack_points=50,
        n_eval=200,
    )
    assert (c.short_name(), c.trial_id()) == ("at_entm_lam0.5_eps0.2_s3", "464f02333c")


def test_reproduction_grids_name_the_committed_trial_directories():
    """Every trial of the committed reproduction grids expands to a directory name that the committed
    results name: the grid -> config -> hash chain is unchanged for all 142 trials."""
    from sweeps.grid import load_grid

    names: set = set()
    for p in (REPO / "results").rglob("*.json"):
        names |= set(re.findall(r"[a-z_0-9.]+_s\d+_[0-9a-f]{10}", p.read_text()))
    grids = sorted((REPO / "sweeps").glob("repro_*.yaml"))
    assert len(grids) >= 11
    total = 0
    for g in grids:
        dirs = [c.dirname() for c in load_grid(g).trials]
        missing = [d for d in dirs if d not in names]
        assert not missing, f"{g.name}: {missing[:3]} not among the committed trial directories"
        total += len(dirs)
    assert total == 142


@pytest.mark.parametrize("n", [1, 2])
def test_trial_id_changes_with_a_result_changing_field(n):
    base = TrialConfig(seed=n)
    assert TrialConfig(seed=n, lam=0.0).trial_id() == base.trial_id()
    assert TrialConfig(seed=n, n_eval=999).trial_id() != base.trial_id()
