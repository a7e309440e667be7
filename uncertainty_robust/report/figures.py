"""PNG figures of a run (matplotlib, Agg backend): accuracy vs test eps per attack, Jacobian norm
vs lambda, eps_train x eps_test matrices."""

from __future__ import annotations

import math
from pathlib import Path

from .scan import slug
from .series import curves, jacobian_lines, matrices


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

    def lines(name, series: dict, xlabel, ylabel, title, **ax_kw):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, pts in series.items():
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title, **ax_kw)
        ax.legend(fontsize=6)
        files.append(_save(fig, out / name, plt))

    for s in sorted({s for c in cv.values() for s in c}):
        lines(
            f"acc_vs_eps_{slug(s)}.png",
            {k: c[s] for k, c in cv.items() if s in c},
            "test ε",
            "accuracy",
            f"{s}: accuracy vs test ε (mean over seeds)",
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
        files.append(_save(fig, out / f"matrix_{slug(title)}.png", plt))
    return files


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
