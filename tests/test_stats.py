"""report.stats against cases computed by hand, by brute-force enumeration and by scipy directly: the
two-level bootstrap's distribution, paired differences that must (and must not) exclude 0, a case
where seed variance (which McNemar ignores) keeps a difference from being significant, Holm,
Spearman, point alignment."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import binomtest, bootstrap, permutation_test, spearmanr

from uncertainty_robust import stats


def _enumerate(m: np.ndarray, shared_points: bool = True) -> tuple:
    """Exact mean and variance of the two-level bootstrap statistic by enumerating every seed draw
    and every point draw (with ``shared_points`` False: an independent point draw per seed, the
    wrong scheme for crossed data, to show the test can tell them apart)."""
    s, n = m.shape
    vals = []
    seed_draws = list(itertools.product(range(s), repeat=s))
    point_draws = list(itertools.product(range(n), repeat=n))
    for sd in seed_draws:
        if shared_points:
            for pd in point_draws:
                vals.append(m[np.ix_(sd, pd)].mean())
        else:
            for pds in itertools.product(point_draws, repeat=s):
                vals.append(np.mean([m[a, list(p)].mean() for a, p in zip(sd, pds)]))
    v = np.array(vals)
    return v.mean(), v.var()


def test_two_level_bootstrap_matches_exact_enumeration():
    m = np.array([[1, 0, 1], [1, 0, 0]], dtype=float)
    mean, var = _enumerate(m)
    _, var_indep = _enumerate(m, shared_points=False)
    assert abs(var - var_indep) / var > 0.15  # the two schemes differ enough for the check to bite
    (reps,) = stats.bootstrap_means([m], n_boot=40000, seed=3)
    assert reps.mean() == pytest.approx(mean, abs=0.005)
    assert reps.var() == pytest.approx(var, rel=0.04)
    assert abs(reps.var() - var_indep) > 3 * abs(reps.var() - var)


def test_batched_replicates_equal_single_ones_and_are_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 50)) < 0.5, rng.random((2, 50)) < 0.7
    ra, rb = stats.bootstrap_means([a, b], n_boot=500, seed=1)
    assert np.array_equal(ra, stats.bootstrap_means([a], n_boot=500, seed=1)[0])
    assert np.array_equal(rb, stats.bootstrap_means([b], n_boot=500, seed=1)[0])
    assert not np.array_equal(ra, stats.bootstrap_means([a], n_boot=500, seed=2)[0])


def test_one_seed_interval_agrees_with_scipy_bootstrap():
    rng = np.random.default_rng(5)
    x = (rng.random(800) < 0.35).astype(float)
    ours = stats.mean_ci(x[None], stats.BootstrapSpec(n_boot=20000, seed=0))
    ref = bootstrap((x,), np.mean, n_resamples=20000, method="percentile", random_state=0).confidence_interval
    assert ours["mean"] == pytest.approx(x.mean())
    assert ours["lo"] == pytest.approx(ref.low, abs=0.004) and ours["hi"] == pytest.approx(
        ref.high, abs=0.004
    )
    se = np.sqrt(x.mean() * (1 - x.mean()) / len(x))  # and it is the binomial interval's width
    assert ours["hi"] - ours["lo"] == pytest.approx(2 * 1.96 * se, rel=0.06)


def _base(seeds: int, n: int = 500, p: float = 0.5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((seeds, n)) < p


def test_clear_paired_improvement_excludes_zero():
    base = _base(3)
    method = base.copy()
    for s in range(3):
        wrong = np.flatnonzero(~base[s])[:60]
        method[s, wrong] = True  # 60 more points right on every seed, none lost
    d = stats.paired_difference(method, base)
    assert d["diff"] == pytest.approx(60 / 500)
    assert d["lo"] > 0 and d["p"] < 0.01
    assert (d["n_better"], d["n_worse"]) == (180, 0)
    assert d["p_mcnemar"] == pytest.approx(binomtest(180, 180, 0.5).pvalue)


def test_balanced_changes_do_not_exclude_zero():
    base = _base(3, seed=1)
    method = base.copy()
    for s in range(3):
        method[s, np.flatnonzero(~base[s])[:10]] = True
        method[s, np.flatnonzero(base[s])[:10]] = False
    d = stats.paired_difference(method, base)
    assert d["diff"] == 0 and d["lo"] < 0 < d["hi"] and d["p"] > 0.5
    assert d["p_mcnemar"] == pytest.approx(binomtest(30, 60, 0.5).pvalue)


def test_seed_variance_keeps_a_pooled_mcnemar_result_from_being_significant():
    """Seeds disagree (+20, +20, -10 points): McNemar, pooling (seed, point) pairs, calls it
    overwhelming; the two-level bootstrap, resampling seeds, does not exclude 0 (P(all three draws
    are the third seed) = 1/27)."""
    n = 500
    base = _base(3, n, seed=2)
    method = base.copy()
    for s, k in ((0, 100), (1, 100)):
        method[s, np.flatnonzero(~base[s])[:k]] = True
    method[2, np.flatnonzero(base[2])[:50]] = False
    d = stats.paired_difference(method, base, stats.BootstrapSpec(n_boot=4000))
    assert d["diff"] == pytest.approx((100 + 100 - 50) / (3 * n))
    assert d["p_mcnemar"] < 1e-6
    assert d["lo"] < 0 < d["hi"] and d["p"] > 0.05
    point_only = stats.paired_difference(method[:1], base[:1])  # one seed: points only
    assert point_only["lo"] > 0


def test_bootstrap_p_value_bounds():
    assert stats.bootstrap_p(np.full(999, 0.1)) == pytest.approx(2 / 1000)
    assert stats.bootstrap_p(np.zeros(999)) == 1.0
    assert stats.bootstrap_p(np.linspace(-1, 1, 1001)) == pytest.approx(1.0)


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = stats.holm([0.2, None, 0.01])
    assert out[1] is None and out[0] == pytest.approx(0.2) and out[2] == pytest.approx(0.02)
    assert stats.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_spearman_against_scipy():
    x, y = [0.3, 0.1, 0.7, 0.5, 0.9], [2.0, 1.0, 2.5, 4.0, 3.0]
    r = stats.spearman(x, y)
    ref = spearmanr(x, y)
    exact = permutation_test(
        (y,), lambda v: spearmanr(x, v).statistic, permutation_type="pairings", alternative="two-sided"
    )  # 5! pairings: scipy enumerates them all
    assert r["rho"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(exact.pvalue) and r["n"] == 5
    many = np.random.default_rng(0).normal(size=(2, 12))  # above the exact range: scipy's p
    assert stats.spearman(*many)["p"] == pytest.approx(spearmanr(*many).pvalue)
    assert stats.spearman([1, 2, 3, 4], [40, 30, 20, 10])["rho"] == pytest.approx(-1.0)
    assert stats.spearman([1, 2, None, 4], [1, 2, 3, 4])["n"] == 3
    assert stats.spearman([1, 2], [1, 2])["rho"] is None
    # few points: the exact permutation p (rho = 1 over 3 points is 2 of the 6 pairings), not the t
    # approximation's p ~ 0
    assert stats.spearman([1, 2, 3], [1, 2, 3])["p"] == pytest.approx(2 / 6)
    assert stats.spearman([1, 2, 3, 4], [40, 30, 20, 10])["p"] == pytest.approx(2 / 24)
    assert stats.spearman([1, 2, 3], [5, 5, 5])["rho"] is None


def test_align_takes_common_points_in_order():
    a = np.array([5, 1, 9, 3])
    b = np.array([3, 9, 7, 5])
    common, (pa, pb) = stats.align([(a, None), (b, None)])
    assert common.tolist() == [3, 5, 9]
    assert a[pa].tolist() == [3, 5, 9] and b[pb].tolist() == [3, 5, 9]


# ----------------------------------------------------------------------------- report.paired
def _trial(seed: int, outcomes: list, idx=None):
    """A finished trial as report.paired reads it: its seed, clean accuracy and per-point outcomes."""
    from types import SimpleNamespace

    m = np.array(outcomes, dtype=bool)
    idx = np.arange(len(m)) if idx is None else np.asarray(idx)
    return SimpleNamespace(
        cfg=SimpleNamespace(seed=seed), record={"clean_acc": float(m.mean())}, points=(idx, {"clean": m})
    )


def test_method_and_baseline_are_paired_by_seed_not_by_position():
    """Method seeds 0, 1, 2 (seed 1 weak), baseline seeds 0 and 2 (its seed 1 unfinished): the
    pairs are (0, 0) and (2, 2), in either trial order, and the difference is the method's gain; a
    pairing by position would pair (1, 2) and flip its sign."""
    from types import SimpleNamespace

    from uncertainty_robust.report import paired

    n = 40
    strong = [True] * 30 + [False] * 10  # 0.75
    weak = [True] * 10 + [False] * 30  # 0.25
    base = [True] * 28 + [False] * 12  # 0.70
    g = SimpleNamespace(trials=[_trial(0, strong), _trial(1, weak), _trial(2, strong)])
    b = SimpleNamespace(trials=[_trial(0, base), _trial(2, base)])
    col = ("clean", "clean", None, 0.0)
    for order in (lambda t: t, lambda t: t[::-1]):
        pr = paired._paired(
            SimpleNamespace(trials=order(g.trials)), SimpleNamespace(trials=order(b.trials)), col
        )
        assert pr.shape == (2, 2, n)
        assert pr[0].mean() == pytest.approx(0.75) and pr[1].mean() == pytest.approx(0.70)
        assert (pr[0].astype(int) - pr[1].astype(int)).mean() == pytest.approx(0.05)  # the method is better
    # points are aligned by index too: the baseline's seed 2 lists its points in another order
    perm = np.random.default_rng(0).permutation(n)
    b2 = SimpleNamespace(trials=[_trial(0, base), _trial(2, np.array(base)[perm].tolist(), idx=perm)])
    pr = paired._paired(g, b2, col)
    assert (pr[1][1] == np.array(base, dtype=bool)).all()


def test_holm_families_are_per_attack_over_eps():
    """The documented families: the clean column alone, then each attack's columns over eps, the
    worst case's, AutoAttack's and ours-on-the-AutoAttack-points', each over its eps."""
    from uncertainty_robust.report import paired

    eps = (0.1, 0.2, 0.3)
    cols = [("clean", "clean", None, 0.0)]
    cols += [(f"{a}@{e:g}", "attack", a, e) for a in ("fgsm", "pgd20", "cw20") for e in eps]
    cols += [(f"worst@{e:g}", "worst", None, e) for e in eps]
    cols += [(f"AA@{e:g}", "autoattack", None, e) for e in eps[1:]]
    cols += [(f"ours_on_AA_points@{e:g}", "aa_ours", None, e) for e in eps[1:]]
    fams = paired.families(cols)
    assert [len(f) for f in fams] == [1, 3, 3, 3, 3, 2, 2]
    assert fams[0] == ["clean"] and fams[2] == ["pgd20@0.1", "pgd20@0.2", "pgd20@0.3"]
    assert sorted(k for f in fams for k in f) == sorted(c[0] for c in cols)  # each column in one family


def test_seed_level_test_treats_the_seed_as_the_unit():
    """Per-seed accuracy differences, the paired t-test over seeds against scipy, its t-interval, and
    the exact sign-flip p-value by enumeration: 3 seeds with differences +0.1, +0.2, +0.3."""
    from scipy.stats import ttest_1samp

    a = np.zeros((3, 10), dtype=bool)
    b = np.zeros((3, 10), dtype=bool)
    for s, k in enumerate((1, 2, 3)):
        a[s, :k] = True  # method right on k more points than the baseline in seed s
    out = stats.seed_level(a, b)
    assert out["seed_diffs"] == pytest.approx([0.1, 0.2, 0.3])
    ref = ttest_1samp([0.1, 0.2, 0.3], 0.0)
    assert out["p_seed"] == pytest.approx(ref.pvalue)
    lo, hi = ref.confidence_interval(0.95)
    assert (out["seed_lo"], out["seed_hi"]) == pytest.approx((lo, hi))
    assert out["p_seed_signflip"] == pytest.approx(2 / 8)  # only all-plus and all-minus reach |mean| 0.2
    assert stats.seed_level(a[:1], b[:1])["p_seed"] is None  # one seed: no seed-level test
    d = stats.paired_difference(a, b)
    assert d["p_seed"] == pytest.approx(ref.pvalue) and "p_seed_signflip" in d
