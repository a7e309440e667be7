"""Statistics of a table (:func:`add_statistics`): per cell a 95 % interval over seeds and test points,
per row a paired comparison with its registry baseline (``Defense.baseline``) on the same seeds and
points, and Holm's correction over the eps values; the numbers come from :mod:`.stats`."""

from __future__ import annotations

import numpy as np

from .. import stats as st
from ..defenses import DEFENSES
from .columns import cell, mask_name

_OPEN_CHOICES = ("entropy_on", "inner_loss", "ls_form")  # read only by the regularised defenses
_ADV_FIELDS = ("eps", "eps_step", "pgd_steps", "random_start", "adv_fraction", "attack_bn_mode")


def find_baseline(g, groups: list):
    """The row ``g`` is compared with: the group of its defense's ``baseline`` whose row fields equal
    g's except defense and lambda, the open choices the baseline does not read (entropy_on,
    inner_loss, ls_form) and, for a non-adversarial baseline, the adversarial-training fields.
    None when there is no such group, or more than one."""
    b = g.cfg.defense_record.baseline
    if b is None or b not in DEFENSES:
        return None
    ignore = {"defense", "lam", *_OPEN_CHOICES} | (set() if DEFENSES[b].adversarial else set(_ADV_FIELDS))
    cands = [
        h
        for h in groups
        if h.cfg.defense == b and all(h.key.get(k) == g.key.get(k) for k in g.key if k not in ignore)
    ]
    if len(cands) > 1:  # e.g. merged runs with baselines that differ in an ignored field: take the exact one
        cands = [h for h in cands if all(h.key.get(k) == g.key.get(k) for k in _OPEN_CHOICES)]
    return cands[0] if len(cands) == 1 else None


def trial_mask(t, col) -> tuple | None:
    """(indices, mask) of one trial and column, None when missing or inconsistent with the record."""
    pts = t.points
    if pts is None:
        return None
    idx, masks = pts
    name, on = mask_name(col)
    m = masks.get(name)
    if m is not None and on is not None:
        sub = masks.get(on)
        if sub is None or len(sub) != len(idx):
            return None
        idx, m = idx[sub], m[sub]
    v = cell(t.record, col)
    if m is None or v is None or len(m) != len(idx) or abs(float(m.mean()) - v) > 1e-6:
        return None  # a stale or foreign points file must not produce an interval
    return idx, m


def _matrix(trials: list, col) -> np.ndarray | None:
    """(seeds, common points) bool matrix of the trials' outcomes in ``col``; None if any is missing."""
    got = [trial_mask(t, col) for t in trials]
    if not got or any(x is None for x in got):
        return None
    common, pos = st.align([(idx, None) for idx, _ in got])
    if len(common) == 0:
        return None
    return np.stack([m[p] for (_, m), p in zip(got, pos)])


def _paired(g, base, col) -> np.ndarray | None:
    """(2, seeds, points): the method's and the baseline's outcomes on common seeds and points."""
    by_seed = {t.cfg.seed: t for t in reversed(base.trials)}
    pairs = [(t, by_seed[t.cfg.seed]) for t in g.trials if t.cfg.seed in by_seed]
    if not pairs:
        return None
    got = [(trial_mask(a, col), trial_mask(b, col)) for a, b in pairs]
    if any(x is None or y is None for x, y in got):
        return None
    flat = [x for pair in got for x in pair]
    common, pos = st.align([(idx, None) for idx, _ in flat])
    if len(common) == 0:
        return None
    ms = [m[p] for (_, m), p in zip(flat, pos)]
    return np.stack([np.stack(ms[0::2]), np.stack(ms[1::2])])


def families(cols: list) -> list:
    """Holm families of one row: the clean column alone, and each attack's (and the worst case's)
    columns over eps."""
    fam: dict = {}
    for c in cols:
        fam.setdefault(c[1] if c[1] != "attack" else f"attack/{c[2]}", []).append(c[0])
    return list(fam.values())


def add_statistics(tab: dict, groups: list, spec: st.BootstrapSpec = st.BootstrapSpec()) -> None:
    """Fill each row's ``ci`` {column: (lo, hi) or None}, ``baseline`` (label or None),
    ``paired_seeds`` and ``diff`` {column: :func:`stats.paired_difference` + p_holm, significant}."""
    cols = tab["columns"]
    requests, where = [], []
    pending = []
    for row, g in zip(tab["rows"], groups):
        row["ci"] = {c[0]: None for c in cols}
        row["diff"] = {}
        base = find_baseline(g, groups)
        row["baseline"] = base.label if base is not None else None
        row["paired_seeds"] = (
            sorted({t.cfg.seed for t in g.trials} & {t.cfg.seed for t in base.trials}) if base else []
        )
        for c in cols:
            m = _matrix(g.trials, c)
            if m is not None:
                requests.append(m)
                where.append((row, c, "ci", m))
            if base is not None:
                pr = _paired(g, base, c)
                if pr is not None:
                    requests.append(pr[0].astype(np.float64) - pr[1].astype(np.float64))
                    where.append((row, c, "diff", pr))
        pending.append(row)
    reps = st.bootstrap_means(requests, spec.n_boot, spec.seed) if requests else []
    for (row, c, what, m), r in zip(where, reps):
        if what == "ci":
            row["ci"][c[0]] = st.percentile_ci(r, spec.level)
            row.setdefault("ci_points", {})[c[0]] = m.shape[1]
        else:
            row["diff"][c[0]] = st.paired_difference(m[0], m[1], spec, reps=r)
    for row in pending:
        for fam in families(cols):
            keys = [k for k in fam if k in row["diff"]]
            adj = st.holm([row["diff"][k]["p"] for k in keys])
            for k, a in zip(keys, adj):
                row["diff"][k]["p_holm"] = a
                row["diff"][k]["significant"] = bool(a < st.ALPHA)
                row["diff"][k]["holm_family_size"] = len(keys)
    tab["statistics"] = {
        "ci": spec.describe(),
        "n_boot": spec.n_boot,
        "seed": spec.seed,
        "level": spec.level,
        "diff": "method - baseline on the same seeds and test points; p: two-sided bootstrap p-value; "
        "p_mcnemar: exact McNemar test pooled over seeds (test-point sampling only)",
        "holm": f"Holm over the eps values of each attack (and of the worst case), per row; significant: "
        f"p_holm < {st.ALPHA:g}",
    }
