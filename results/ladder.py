"""The training-budget ladder of a run (reproduction v3, part 1): one row per (defense, epochs) with
the budget (training images x epochs), clean accuracy, our worst case and ours + AutoAttack at the
training eps and twice it, and the training time; then, per doubling of the budget, the paired change
on the same test points (95 % interval of a point bootstrap and the exact McNemar p: one seed per
rung, so the interval holds test-point sampling only, not seed-to-seed variance); then each Fast-AT
rung against the PGD-AT rung of the same budget. Read from the run's trials (result.json,
points.npz); nothing is typed by hand.

    python results/ladder.py runs/repro_v3_ladder > results/repro_v3_ladder/ladder.md
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from uncertainty_robust import stats as st
from uncertainty_robust.report import scan_run
from uncertainty_robust.report.paired import trial_mask as _outcome


def _columns(eps_train: float) -> list:
    """[(header, table column (key, kind, label, eps) as uncertainty_robust.report.columns)]."""
    out = [("clean", ("clean", "clean", None, 0.0))]
    for e in (eps_train, 2 * eps_train):
        out += [
            (f"ours@{e:g}", (f"worst@{e:g}", "worst", None, e)),
            (f"AA@{e:g}", (f"AA@{e:g}", "autoattack", None, e)),
        ]
    return out


def _paired(a, b) -> str:
    """b - a on their common points: 'diff [lo, hi] p' in points."""
    if a is None or b is None:
        return "—"
    common, (pa, pb) = st.align([(a[0], None), (b[0], None)])
    d = st.paired_difference(b[1][pb][None], a[1][pa][None])
    return f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] p{st.fmt_p(d['p_mcnemar'], '=')}"


def main(run: str) -> int:
    trials = [t for t in scan_run(Path(run)).trials]
    if not trials:
        print(f"error: no finished trials under {run}", file=sys.stderr)
        return 2
    c0 = trials[0].cfg
    eps = c0.eps
    cols = _columns(eps)
    by = defaultdict(dict)
    for t in trials:
        by[t.cfg.defense][t.cfg.epochs] = t
    n_img = trials[0].record.get("validation", {}).get("n_train") or c0.n_train
    pts = sorted({len(t.points[0]) for t in trials if t.points is not None})
    print(
        f"{c0.dataset}: the training split less a {c0.val_points}-point validation split "
        f"({n_img:,} training images); {c0.model} width {c0.width:g}; eps_train {eps:g}; the test split, "
        f"{'/'.join(map(str, pts))} points; ours = worst case of "
        f"{', '.join(a.label() for a in c0.attacks)}; AA = ours + AutoAttack "
        f"({', '.join(a.label() for a in c0.autoattack)}, pyautoattack) on the points ours leave robust; "
        f"one seed ({c0.seed}) per rung; checkpoint: last epoch.\n"
    )
    print(
        "| defense | epochs | budget (images x epochs) | "
        + " | ".join(h for h, _ in cols)
        + " | train s | evaluation s |"
    )
    print("|---|---:|---:|" + "---:|" * len(cols) + "---:|---:|")
    for rungs in by.values():
        for e in sorted(rungs):
            t = rungs[e]
            vals = []
            for _, name in cols:
                o = _outcome(t, name)
                vals.append("—" if o is None else f"{100 * float(np.mean(o[1])):.1f}")
            secs = [(t.record.get("train") or {}).get("train_seconds"), t.record.get("eval_seconds")]
            secs = " | ".join(f"{s:.0f}" if isinstance(s, (int, float)) else "—" for s in secs)
            print(f"| {t.cfg.method_label()} | {e} | {n_img * e:,} | " + " | ".join(vals) + f" | {secs} |")
    print(
        "\nEach doubling of the budget: the later rung minus the earlier one, in points, on the same test points.\n"
    )
    print("| defense | epochs | " + " | ".join(h for h, _ in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for rungs in by.values():
        es = sorted(rungs)
        for lo, hi in zip(es, es[1:]):
            if hi != 2 * lo:
                continue
            cells = [_paired(_outcome(rungs[lo], n), _outcome(rungs[hi], n)) for _, n in cols]
            print(f"| {rungs[lo].cfg.method_label()} | {lo} → {hi} | " + " | ".join(cells) + " |")
    others = [d for d in by if d != "at" and "at" in by]
    if others:
        print("\nEach other defense minus PGD-AT at the same budget, in points, on the same test points.\n")
        print("| defense | epochs | " + " | ".join(h for h, _ in cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for d in others:
            for e in sorted(set(by[d]) & set(by["at"])):
                cells = [_paired(_outcome(by["at"][e], n), _outcome(by[d][e], n)) for _, n in cols]
                print(f"| {by[d][e].cfg.method_label()} − AT | {e} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]) if len(sys.argv) == 2 else print(__doc__) or 2)
