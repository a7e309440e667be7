"""Statistics behind every table: confidence intervals that combine seed variance and test-point
sampling, paired comparisons of a method with its baseline, Holm's correction, Spearman correlations.

The data are per-point outcomes: for one table cell and one row, a 0/1 matrix ``M`` of shape
(seeds, points), ``M[s, i] = 1`` when the model trained with seed ``s`` classifies test point ``i``
correctly (under the cell's attack and eps). Every seed of every method is evaluated on the *same*
test points (``points.npz``), so the two sources of error are crossed, not nested:

- **seed variance**: another training seed gives another model;
- **test-point sampling**: another draw of test points from the same distribution.

**Two-level paired bootstrap** (:func:`bootstrap_means`). One replicate resamples the seeds with
replacement (S of S) and, independently, the test points with replacement (N of N); the same point
draw is used for every seed, because the points are shared. The replicate statistic is the mean of
``M`` over the drawn seeds and points. The 95 % interval is the 2.5 and 97.5 percentiles of
``n_boot`` replicates (percentile bootstrap). With one seed only points are resampled (the interval
then says nothing about seed variance; tables say how many seeds a row has). With few seeds (2-3)
the seed level is coarse and its variance is underestimated by a factor (S-1)/S: the intervals are
honest about test-point noise and optimistic about seed noise; use >= 3 seeds (5 where a claimed
difference is under 2 points).

**Paired difference** (:func:`paired_difference`). Method and baseline are paired by seed (same
seed = same initialisation and data order, see the trainer) and by test point; ``D = M_method -
M_baseline`` (values -1, 0, 1) goes through the same two-level bootstrap, resampling seed *pairs*
and points jointly. Reported: the difference of accuracies, its percentile CI and a two-sided
bootstrap p-value ``p = min(1, 2 min(#{d* <= 0} + 1, #{d* >= 0} + 1) / (B + 1))``, the p-value that
matches the interval (p < 0.05 about when the 95 % CI excludes 0). Also reported, as
``p_mcnemar``: the exact McNemar test (``scipy.stats.binomtest`` on the discordant pairs, pooled
over seeds): it tests test-point sampling only, conditional on the trained models, so it is the
right test for one seed and too liberal for several seeds whose differences disagree.

**Holm** (:func:`holm`): the step-down Holm-Bonferroni adjustment over a family of p-values (the
tables' family: one method's comparisons at the eps values of one attack). A difference is marked
significant when its Holm-adjusted bootstrap p-value is below 0.05.

Resampling is seeded (``seed``) and vectorised: counts of drawn points are generated in chunks and
applied to all matrices of a table at once (one matrix product), so a table with thousands of test
points and hundreds of cells takes seconds.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

N_BOOT = 2000
SEED = 0
LEVEL = 0.95
ALPHA = 0.05
_CHUNK = 1 << 22  # elements of one chunk of point counts (n_boot x n_points)


@dataclass(frozen=True)
class BootstrapSpec:
    n_boot: int = N_BOOT
    seed: int = SEED
    level: float = LEVEL

    def describe(self) -> str:
        return (
            f"{100 * self.level:g}% percentile interval of a paired two-level bootstrap (seeds and test "
            f"points resampled with replacement, the same point draw for every seed), {self.n_boot} "
            f"replicates, seed {self.seed}"
        )


def point_counts(rng: np.random.Generator, n_rep: int, n: int) -> np.ndarray:
    """(n_rep, n) float32: how often each of n points is drawn in each of n_rep resamples of n
    points with replacement (multinomial(n, 1/n) rows)."""
    draws = rng.integers(0, n, size=(n_rep, n))
    flat = (draws + (np.arange(n_rep) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=n_rep * n).reshape(n_rep, n).astype(np.float32)


def seed_weights(n_seeds: int, n_boot: int, seed: int = SEED) -> np.ndarray:
    """(n_boot, n_seeds): the share of each seed in each resample of n_seeds seeds with replacement."""
    rng = np.random.default_rng([seed, 1, n_seeds])
    return rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot) / n_seeds


def bootstrap_means(mats: list, n_boot: int = N_BOOT, seed: int = SEED) -> list:
    """Replicates of the two-level bootstrap mean for each (seeds, points) matrix of ``mats``.

    Matrices with the same number of points share the point draws (common random numbers; each
    matrix's own replicates are a correct bootstrap either way), and matrices with the same number of
    seeds share the seed draws. Returns a list of (n_boot,) float64 arrays, in the order of ``mats``."""
    mats = [np.atleast_2d(np.asarray(m, dtype=np.float32)) for m in mats]
    out: list = [None] * len(mats)
    by_n: dict = {}
    for i, m in enumerate(mats):
        if m.shape[1] == 0 or m.shape[0] == 0:
            raise ValueError(f"matrix {i} has shape {m.shape}: no seeds or no points")
        by_n.setdefault(m.shape[1], []).append(i)
    for n, idx in by_n.items():
        stack = np.concatenate([mats[i] for i in idx], 0)  # (rows, n)
        q = np.empty((n_boot, len(stack)), dtype=np.float64)  # per replicate and row: resampled point mean
        rng = np.random.default_rng([seed, 0, n])
        step = max(1, _CHUNK // n)
        for lo in range(0, n_boot, step):
            c = point_counts(rng, min(step, n_boot - lo), n)
            q[lo : lo + len(c)] = (c @ stack.T) / n
        row = 0
        for i in idx:
            s = mats[i].shape[0]
            out[i] = (seed_weights(s, n_boot, seed) * q[:, row : row + s]).sum(1)
            row += s
    return out


def percentile_ci(reps: np.ndarray, level: float = LEVEL) -> tuple:
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_p(reps: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the statistic is 0" (see the module docstring)."""
    b = len(reps)
    below, above = int((reps <= 0).sum()), int((reps >= 0).sum())
    return float(min(1.0, 2 * min(below + 1, above + 1) / (b + 1)))


def mcnemar(a: np.ndarray, b: np.ndarray) -> tuple:
    """Exact McNemar test of paired 0/1 outcomes (any shape, pooled): ``(p, n_a_only, n_b_only)``
    where n_a_only counts pairs where only ``a`` is correct. ``p`` = two-sided binomial test of
    n_a_only out of the discordant pairs at 1/2 (1.0 without discordant pairs)."""
    from scipy.stats import binomtest

    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(n10, n10 + n01, 0.5).pvalue if n10 + n01 else 1.0
    return float(p), n10, n01


def mcnemar_greater(only_other: int, only_ref: int) -> float:
    """One-sided exact McNemar p-value that a second attack breaks more points than a first on the
    same points: P(X >= only_other), X ~ Binomial(only_other + only_ref, 1/2); 1.0 with no
    discordant point (the audit's paired checks)."""
    n = only_other + only_ref
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(only_other, n, 0.5, alternative="greater").pvalue)


def mean_ci(mat, spec: BootstrapSpec = BootstrapSpec(), reps: Optional[np.ndarray] = None) -> dict:
    """Mean of a (seeds, points) 0/1 matrix and its two-level bootstrap interval."""
    m = np.atleast_2d(np.asarray(mat, dtype=np.float64))
    if reps is None:
        (reps,) = bootstrap_means([m], spec.n_boot, spec.seed)
    lo, hi = percentile_ci(reps, spec.level)
    return {"mean": float(m.mean()), "lo": lo, "hi": hi, "n_seeds": m.shape[0], "n_points": m.shape[1]}


def paired_difference(
    method, baseline, spec: BootstrapSpec = BootstrapSpec(), reps: Optional[np.ndarray] = None
) -> dict:
    """Paired comparison of two (seeds, points) 0/1 matrices whose rows are the same seeds and whose
    columns are the same points: difference of accuracies (method - baseline), its CI, the
    bootstrap p-value and the exact McNemar p-value (see the module docstring)."""
    a = np.atleast_2d(np.asarray(method, dtype=bool))
    b = np.atleast_2d(np.asarray(baseline, dtype=bool))
    if a.shape != b.shape:
        raise ValueError(f"paired matrices differ in shape: {a.shape} vs {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    if reps is None:
        (reps,) = bootstrap_means([d], spec.n_boot, spec.seed)
    lo, hi = percentile_ci(reps, spec.level)
    p_mc, n10, n01 = mcnemar(a, b)
    return {
        **seed_level(a, b),
        "diff": float(d.mean()),
        "lo": lo,
        "hi": hi,
        "p": bootstrap_p(reps),
        "p_mcnemar": p_mc,
        "n_better": n10,  # (seed, point) pairs only the method gets right
        "n_worse": n01,  # ... only the baseline gets right
        "n_seeds": a.shape[0],
        "n_points": a.shape[1],
    }


def seed_level(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> dict:
    """The seed (a training run) as the unit: per-seed accuracy differences of two (seeds, points)
    0/1 matrices paired by row, a paired t-test over seeds (``p_seed``) with its ``level`` t-interval
    (``seed_lo``, ``seed_hi``), and the exact sign-flip p-value over seeds (``p_seed_signflip``: all
    2^n sign patterns; with 5 seeds it cannot go below 2/32). None where fewer than 2 seeds."""
    d = np.asarray(a, dtype=np.float64).mean(1) - np.asarray(b, dtype=np.float64).mean(1)
    out = {"seed_diffs": [float(v) for v in d], "p_seed": None, "seed_lo": None, "seed_hi": None}
    out["p_seed_signflip"] = None
    n = len(d)
    if n < 2:
        return out
    from scipy.stats import t as t_dist

    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:  # every seed the same difference: no spread to test against
        out.update(p_seed=1.0 if mean == 0 else 0.0, seed_lo=mean, seed_hi=mean)
    else:
        se = sd / math.sqrt(n)
        q = float(t_dist.ppf(0.5 + level / 2, n - 1))
        p = float(2 * t_dist.sf(abs(mean) / se, n - 1))
        out.update(p_seed=p, seed_lo=mean - q * se, seed_hi=mean + q * se)
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        flipped = np.abs(signs @ d) / n
        out["p_seed_signflip"] = float((flipped >= abs(mean) - 1e-12).mean())
    return out


def holm(pvals: list) -> list:
    """Holm-Bonferroni adjusted p-values (step-down; ``None`` entries are skipped and kept as None):
    the i-th smallest of m p-values becomes max_{j <= i} min(1, (m - j + 1) p_(j))."""
    idx = [i for i, p in enumerate(pvals) if p is not None and not math.isnan(p)]
    m = len(idx)
    out: list = [None] * len(pvals)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvals[i])):
        running = max(running, min(1.0, (m - rank) * pvals[i]))
        out[i] = running
    return out


EXACT_SPEARMAN_MAX_N = 8  # up to here the p-value is exact (every permutation: 8! = 40,320)


def spearman(x: list, y: list) -> dict:
    """Spearman's rank correlation of paired values (``scipy.stats.spearmanr``): {rho, p, n}; rho and p
    are None with fewer than 3 pairs or a constant input. Up to :data:`EXACT_SPEARMAN_MAX_N` pairs the
    two-sided p-value is exact, the share of all pairings of the ranks whose |rho| reaches the
    observed one (scipy's t approximation says p < 0.001 for rho = 1 over 3 points, where the exact
    p is 1/3); above it, scipy's."""
    from scipy.stats import rankdata, spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and a == a and b == b]
    n = len(pairs)
    if n < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return {"rho": None, "p": None, "n": n}
    r = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    rho, p = float(r.statistic), float(r.pvalue)
    if n <= EXACT_SPEARMAN_MAX_N:
        rx, ry = (rankdata([v[i] for v in pairs]) for i in (0, 1))
        rx, ry = rx - rx.mean(), ry - ry.mean()
        perms = ry[np.array(list(itertools.permutations(range(n))))]
        rhos = perms @ rx / (np.linalg.norm(rx) * np.linalg.norm(ry))
        p = float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12))
    return {"rho": rho, "p": p, "n": n}


def align(points: list) -> tuple:
    """Common test points of several trials. ``points``: [(indices (N_i,), {name: bool (N_i,)})].
    Returns ``(common indices, [position array into each trial's points])``."""
    common = points[0][0]
    for idx, _ in points[1:]:
        common = np.intersect1d(common, idx)
    pos = []
    for idx, _ in points:
        order = np.argsort(idx, kind="stable")
        pos.append(order[np.searchsorted(idx, common, sorter=order)])
    return common, pos


def fmt_p(p: float, eq: str = "") -> str:
    """A p-value for a Markdown cell: ``<0.001`` or three decimals (after ``eq``, e.g. "=")."""
    return "<0.001" if p < 0.001 else f"{eq}{p:.3f}"
