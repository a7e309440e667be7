"""PNG figures of a run (matplotlib, Agg backend): accuracy vs test eps per attack, Jacobian norm
vs lambda, eps_train x eps_test matrices, and the per-epoch validation curves. Every figure carries a
caption with the dataset and split, model, number of points and seeds (:func:`caption`)."""

from __future__ import annotations

import math
from pathlib import Path

from .scan import slug
from .series import autoattack_coverage, curves, jacobian_lines, matrices


def write_figures(out: Path, groups: list) -> list:
    """PNG charts when matplotlib is importable (it is optional); returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out.mkdir(exist_ok=True)
    files, cv, jl = [], curves(groups), jacobian_lines(groups)
    cap = caption(groups)

    def lines(name, series: dict, xlabel, ylabel, title, note=cap, styles=None, hollow=None, **ax_kw):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for label, pts in series.items():
            kw = (styles or {}).get(label, {"marker": "o"})
            line = ax.plot([x for x, _ in pts], [y for _, y in pts], label=label, **kw)[0]
            empty = [(x, y) for x, y in pts if x in (hollow or {}).get(label, ())]
            if empty:  # points without AutoAttack in some seeds: hollow markers
                ax.plot(*zip(*empty), linestyle="none", marker="o", markerfacecolor="white",
                        markeredgecolor=line.get_color())  # fmt: skip
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title, **ax_kw)
        ax.legend(fontsize=6)
        files.append(_save(fig, out / name, plt, note))

    coverage = autoattack_coverage(groups)
    hollow = {g: {e for e, (ran, n) in c.items() if ran < n} for g, c in coverage.items()}
    for s in sorted({s for c in cv.values() for s in c}):
        lines(
            f"acc_vs_eps_{slug(s)}.png",
            {k: c[s] for k, c in cv.items() if s in c},
            "test ε",
            "accuracy",
            f"{s}: accuracy vs test ε (mean over seeds)"
            + (
                "\nper-example worst over ours and AutoAttack, on the AutoAttack points; "
                "hollow: AutoAttack not run there in some seeds (ours only)"
                if s == "AA"
                else ""
            ),
            hollow=hollow if s == "AA" else None,
            ylim=(-0.02, 1.02),
        )
    for stat in ("logits_mean", "softmax_mean"):
        lines(
            f"jacobian_vs_lam_{stat}.png",
            {k: v[stat] for k, v in jl.items() if stat in v},
            "λ",
            f"‖∂f/∂x‖_F ({stat})",
            f"input-Jacobian norm vs λ ({stat})",
            yscale="log",
        )
    val = validation_curves(groups)
    if val:
        v = groups[0].trials[0].record.get("validation") or {}
        styles = {  # one colour per method, its clean curve dashed
            _val_label(g, kind): {"color": f"C{i % 10}", **style}
            for i, g in enumerate(groups)
            for kind, (_, style) in _VALIDATION.items()
        }
        lines(
            "validation_curves.png",
            val,
            "epoch",
            "validation accuracy",
            f"validation split per epoch: clean (--) and {v.get('attack', 'PGD')} at ε={v.get('eps', '?')} (—)",
            note=caption(
                groups, split=f"validation split, {v.get('n_points', '?')} points carved from train"
            ),
            styles=styles,
            ylim=(-0.02, 1.02),
        )
    for title, m in matrices(groups).items():
        fig, ax = plt.subplots(figsize=(1 + 0.8 * len(m["cols"]), 1 + 0.6 * len(m["rows"])))
        a = [[float("nan") if v is None else v for v in row] for row in m["acc"]]
        ax.imshow(a, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i, row in enumerate(a):
            for j, v in enumerate(row):
                ax.text(
                    j,
                    i,
                    "" if math.isnan(v) else f"{100 * v:.0f}",
                    ha="center",
                    va="center",
                    color="w",
                    fontsize=8,
                )
        ax.set(
            xticks=range(len(m["cols"])),
            xticklabels=[f"{c:g}" for c in m["cols"]],
            yticks=range(len(m["rows"])),
            yticklabels=[f"{r:g}" for r in m["rows"]],
            xlabel="ε_test",
            ylabel="ε_train",
            title=f"worst-case acc, {title}",
        )
        files.append(_save(fig, out / f"matrix_{slug(title)}.png", plt, cap))
    return files


def caption(groups: list, split: str | None = None) -> str:
    """One line naming what every figure must: dataset and split, model, points, seeds, attacks."""

    def uniq(values) -> str:
        return ", ".join(sorted({str(v) for v in values}))

    recs = [t.record for g in groups for t in g.trials]
    seeds = uniq(t.cfg.seed for g in groups for t in g.trials)
    return (
        f"{uniq(r.get('dataset') for r in recs)} ({split or 'test split, ' + uniq(r.get('n_points') for r in recs) + ' points'})"
        f" · {uniq(r.get('model') for r in recs)} · seeds {seeds} · attacks L∞ "
        f"{uniq(a['label'] for r in recs for a in r.get('attacks', []))} · {len(recs)} trials, mean over seeds"
    )


_VALIDATION = {  # curve kind: (history key, line style)
    "clean": ("val/clean_acc", {"marker": "x", "linestyle": "--"}),
    "robust": ("val/robust_acc", {"marker": "o"}),
}


def _val_label(g, kind: str) -> str:
    return f"{g.label} {kind}"


def validation_curves(groups: list) -> dict:
    """{"<method> clean" / "<method> robust": [(epoch, mean over seeds)]} from each trial's history."""
    out = {}
    for g in groups:
        for kind, (key, _) in _VALIDATION.items():
            per_epoch: dict = {}
            for t in g.trials:
                for h in (t.record.get("train") or {}).get("history", []):
                    if h.get(key) is not None:
                        per_epoch.setdefault(h["epoch"], []).append(h[key])
            if per_epoch:
                out[_val_label(g, kind)] = [(e, sum(v) / len(v)) for e, v in sorted(per_epoch.items())]
    return out


def _save(fig, path: Path, plt, note: str | None = None) -> Path:
    if note:
        fig.text(0.01, 0.005, note, fontsize=6, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
