"""The dry run's smallest detectable difference (``sweeps/power.py``): the formula against a
simulation of the test it sizes, the pilot's spread against hand computations, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sweeps import launch, power
from sweeps.grid import parse_grid


def test_detectable_difference_is_the_t_formula_and_has_the_power_it_claims():
    """delta = (t_.975,n-1 + t_.8,n-1) s / sqrt(n) (5 seeds: 2.776 + 0.941 over sqrt 5 = 1.662 s);
    simulated paired t-tests with that true difference reject at 5 % in about 80 % of the draws,
    and with half of it far less often."""
    from scipy.stats import ttest_1samp

    assert power.detectable(1.0, 5) == pytest.approx((2.7764 + 0.9410) / 5**0.5, rel=1e-3)
    assert power.detectable(2.0, 5) == pytest.approx(2 * power.detectable(1.0, 5))
    assert power.detectable(1.0, 1) is None
    rng = np.random.default_rng(0)
    for n in (3, 5, 10):
        delta = power.detectable(1.0, n)
        d = rng.normal(delta, 1.0, size=(20000, n))
        hit = (ttest_1samp(d, 0.0, axis=1).pvalue < 0.05).mean()
        assert 0.74 < hit < 0.84, (n, hit)
        d = rng.normal(delta / 2, 1.0, size=(20000, n))
        assert (ttest_1samp(d, 0.0, axis=1).pvalue < 0.05).mean() < 0.45


def _entry(name, defense, baseline, std, seed_diffs=None, aa=None):
    cell = {"mean": 0.5, "std": std, "diff": {"seed_diffs": seed_diffs} if seed_diffs else None}
    e = {"name": name, "defense": defense, "baseline": baseline, "clean": cell}
    if aa is not None:
        e["autoattack_acc"] = {"0.1": {"mean": 0.4, "std": aa, "diff": None}}
    return e


def test_pilot_spread_exact_from_seed_diffs_and_bounded_from_row_stds(tmp_path):
    entries = [
        _entry("Standard", "standard", None, 0.01),
        _entry("AT", "at", "Standard", 0.02, aa=0.03),
        _entry("AT+LS a", "at_ls", "AT", 0.01, seed_diffs=[0.01, 0.03, 0.02], aa=0.04),
        _entry("AT+LS b", "at_ls", "AT", 0.01, seed_diffs=[0.0, 0.02, 0.04]),
    ]
    (tmp_path / "table_x.json").write_text(json.dumps({"entries": entries}))
    s = power.pilot_spread(tmp_path)
    # AT+X vs AT: exact, per-seed SDs 0.01 and 0.02 pooled as sqrt((1e-4 + 4e-4) / 2)
    assert s["at"]["clean"] == pytest.approx((np.sqrt((1e-4 + 4e-4) / 2), 2, "exact"))
    # no seed_diffs there: bound sqrt(0.04^2 + 0.03^2) = 0.05 from one pair
    assert s["at"]["AA@0.1"] == pytest.approx((0.05, 1, "bound"))
    # AT vs standard apart from them: sqrt(0.02^2 + 0.01^2)
    assert s["standard"]["clean"] == pytest.approx((np.sqrt(5e-4), 1, "bound"))


def test_dry_run_sizes_each_row_by_the_seeds_it_shares_with_its_baseline(tmp_path, capsys):
    entries = [_entry("AT", "at", None, 0.0), _entry("AT+LS", "at_ls", "AT", 0.0, seed_diffs=[0.0, 0.02])]
    (tmp_path / "table_x.json").write_text(json.dumps({"entries": entries}))
    grid = parse_grid("defenses: [at, at_ls]\nlambdas: [0.1]\nseeds: [0, 1, 2, 3, 4]\nn_train: 1000\n")
    text = "\n".join(power.lines(grid.trials, tmp_path))
    s = np.std([0.0, 0.02], ddof=1)
    assert f"vs at, 5 seeds: clean {100 * power.detectable(s, 5):.2f}" in text
    assert "no AutoAttack column there at eps" in text


@pytest.mark.parametrize(
    "args, words",
    [
        (["--grid", "quickstart", "--pilot", "results/combined"], "use it with --dry-run"),
        (
            ["--grid", "quickstart", "--dry-run", "--cluster", "local", "--pilot", "no/such/dir"],
            "no table_*.json",
        ),
    ],
)
def test_bad_pilot_is_one_line_and_exit_2(args, words, capsys):
    assert launch.main(args) == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert "grid 'quickstart'" not in out.out  # refused before the dry run printed anything
