"""The smallest difference a grid can detect, before it runs: ``launch.py --dry-run --pilot AGGREGATE``.

The seed (a training run) is the unit of the claims' tests (``docs/statistics.md``): a row's
difference with its baseline is decided by a paired t-test over the seeds both rows share. With n
such seeds and a standard deviation s of the per-seed differences, the smallest true difference the
test detects with probability ``power`` at two-sided level ``alpha`` is

    delta = (t_{1 - alpha/2, n-1} + t_{power, n-1}) * s / sqrt(n).

s comes from a pilot: an aggregate (``RUN/aggregate`` or a published ``results/<part>``) whose table
JSON holds, per paired cell, the per-seed differences (``seed_diffs``: s exactly), or else each row's
standard deviation over seeds, from which s <= sqrt(s_row^2 + s_baseline^2) (an upper bound: it
ignores the positive correlation of two rows trained from the same seed, so delta is not
understated). The pilot's s is pooled (root mean square) per baseline defense (the AT+X rows' pairs
with AT apart from the X rows' pairs with standard training) and column: clean, our worst case per
eps, AutoAttack per eps. A column the pilot lacks is reported as missing, never guessed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from uncertainty_robust.errors import UserError

ALPHA, POWER = 0.05, 0.8


class PilotError(UserError, ValueError):
    """A pilot that cannot give a spread (one line)."""


def detectable(s: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """delta = (t_{1-alpha/2, n-1} + t_{power, n-1}) s / sqrt(n); None below 2 seeds."""
    if n < 2:
        return None
    from scipy.stats import t

    return (float(t.ppf(1 - alpha / 2, n - 1)) + float(t.ppf(power, n - 1))) * s / math.sqrt(n)


def _cells(entry: dict) -> dict:
    """{column: cell} of one table entry: clean, worst@eps, AA@eps."""
    out = {"clean": entry.get("clean")}
    for key, label in (("worst_case_acc", "worst"), ("autoattack_acc", "AA")):
        for e, c in (entry.get(key) or {}).items():
            out[f"{label}@{float(e):g}"] = c
    return {k: v for k, v in out.items() if v}


def pilot_spread(path: Path) -> dict:
    """{baseline defense: {column: (s, pairs, how)}}: the pooled spread of per-seed paired
    differences in the pilot's tables (``how``: "exact" when every pair had its per-seed
    differences, else "bound")."""
    tables = sorted(Path(path).glob("table_*.json"))
    if not tables:
        raise PilotError(
            f"--pilot {path}: no table_*.json there (give an aggregate: RUN/aggregate or results/<part>)"
        )
    sums: dict = {}
    for f in tables:
        try:
            entries = json.loads(f.read_text())["entries"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PilotError(f"--pilot {f}: not a table JSON ({type(e).__name__})") from None
        by_name = {e["name"]: e for e in entries}
        for e in entries:
            base = by_name.get(e.get("baseline"))
            if base is None:
                continue
            bcells = _cells(base)
            for col, c in _cells(e).items():
                d, b = c.get("diff") or {}, bcells.get(col)
                diffs = d.get("seed_diffs") or []
                if len(diffs) >= 2:
                    m = sum(diffs) / len(diffs)
                    var, exact = sum((x - m) ** 2 for x in diffs) / (len(diffs) - 1), True
                elif b is not None and c.get("std") is not None and b.get("std") is not None:
                    var, exact = c["std"] ** 2 + b["std"] ** 2, False
                else:
                    continue
                acc = sums.setdefault(base["defense"], {}).setdefault(col, [0.0, 0, True])
                acc[0] += var
                acc[1] += 1
                acc[2] = acc[2] and exact
    if not sums:
        raise PilotError(
            f"--pilot {path}: no paired row with 2 or more seeds, so no spread to size a grid with"
        )
    return {
        b: {col: (math.sqrt(v / n), n, "exact" if ex else "bound") for col, (v, n, ex) in cols.items()}
        for b, cols in sums.items()
    }


def _rows(trials: list) -> list:
    """[(first config, seeds)] per table row of the grid, in grid order."""
    rows: dict = {}
    for c in trials:
        key = json.dumps(c.row_key(), sort_keys=True)
        rows.setdefault(key, [c, set()])[1].add(c.seed)
    return list(rows.values())


def lines(trials: list, pilot: Path, alpha: float = ALPHA, power: float = POWER) -> list:
    """The dry run's lines: per row with its registry baseline in the grid, the seeds they share and
    the smallest detectable difference per column the pilot has (clean and the grid's eps)."""
    spread = pilot_spread(pilot)
    eps = sorted({e for c in trials for e in c.eval_eps() if e > 0})
    wanted = ["clean", *(f"{a}@{e:g}" for e in eps for a in ("AA", "worst"))]
    how = sorted({h for cols in spread.values() for _, _, h in cols.values()})
    out = [
        f"smallest detectable difference, method - baseline, in points (seed-level paired t-test, "
        f"two-sided alpha {alpha:g}, power {power:g}); s = the spread of per-seed differences in the pilot "
        f"{pilot}, pooled per baseline over its row pairs ({' / '.join(how)}"
        f"{': an upper bound' if 'bound' in how else ''}):"
    ]
    for b, cols in sorted(spread.items()):
        have = [k for k in wanted if k in cols]
        out.append(
            f"  pilot s vs {b}: "
            + ", ".join(f"{k} {100 * cols[k][0]:.2f} ({cols[k][1]} pairs)" for k in have)
        )
        gone = [k[3:] for k in wanted if k.startswith("AA@") and k not in cols]
        if gone:
            out.append(f"    no AutoAttack column there at eps {', '.join(gone)}: not sized there")
    rows, sized = _rows(trials), 0
    for cfg, seeds in rows:
        b = cfg.defense_record.baseline
        shared = max((len(seeds & s) for c, s in rows if c.defense == b), default=0) if b else 0
        if not shared:
            continue
        sized += 1
        if b not in spread:
            out.append(f"  {cfg.method_label()} vs {b}, {shared} seeds: the pilot has no row paired with {b}")
            continue
        cols = spread[b]
        ds = [(k, detectable(cols[k][0], shared, alpha, power)) for k in wanted if k in cols]
        text = ", ".join(f"{k} {100 * d:.2f}" for k, d in ds if d is not None) or "needs 2 or more seeds"
        out.append(f"  {cfg.method_label()} vs {b}, {shared} seeds: {text}")
    if not sized:
        out.append("  no row of this grid has its baseline in the grid")
    return out
