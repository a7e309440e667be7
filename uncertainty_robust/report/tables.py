"""Tables in the paper's layout (rows = methods, columns = clean, attack@eps, worst@eps), their
Markdown/CSV/JSON files (columns: :mod:`.columns`; statistics: :mod:`.paired`; the derived series
the figures plot: :mod:`.series`).

Every cell carries, besides mean ± std over seeds, a 95 % interval combining seed variance and
test-point sampling, and every row with a baseline in the table (``Defense.baseline``: standard
for LS/EntM/AT, AT for AT+LS/AT+EntM/TRADES, matched on every other row field) a paired comparison
with it on the same seeds and points: difference, its interval, a bootstrap p-value, the exact
McNemar p-value and Holm's correction over the eps values of each attack (see :mod:`.stats`).
Cells whose trials have no per-point outcomes (``points.npz``) keep mean ± std only."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Optional

from .. import stats as st
from ..attacks import ATTACKS
from .columns import autoattack_ran, cell, columns
from .paired import add_statistics
from .scan import mean_std
from .series import (
    correlation_markdown,
    curves,
    jacobian_correlations,
    jacobian_lines,
    matrices,
    matrix_markdown,
)

__all__ = [
    "add_statistics",
    "build_tables",
    "cell",
    "columns",
    "correlation_markdown",
    "curves",
    "jacobian_correlations",
    "jacobian_lines",
    "matrices",
    "matrix_markdown",
    "table_markdown",
]


def attack_settings(trials: list) -> dict:
    out = {}
    for t in trials:
        for a in t.record["attacks"]:
            spec = next((s for s in t.cfg.attacks if s.label() == a["label"]), None)
            if spec is None or spec.name not in ATTACKS:
                continue
            out.setdefault(
                a["label"],
                {
                    "attack": a["attack"],
                    "norm": a["norm"],
                    "steps": a["steps"],
                    "restarts": a["restarts"],
                    "step_size": spec.attack.step_rule(spec.steps, spec.step_size),
                    "loss": spec.attack.loss,
                },
            )
    return out


def autoattack_settings(trials: list) -> Optional[dict]:
    """What the AA columns mean: the AutoAttack attacks and the number of points they ran on."""
    recs = [t.record["autoattack"] for t in trials if t.record.get("autoattack")]
    if not recs:
        return None
    return {
        "attacks": sorted({a for r in recs for a in r["attacks"]}),
        "components": sorted({c for r in recs for c in r["components"]}),
        "n_points": sorted({r["n_points"] for r in recs}),
        "rules": sorted({r["rule"] for r in recs if r.get("rule")}),
    }


def build_tables(groups: list, spec: st.BootstrapSpec = st.BootstrapSpec()) -> list:
    """One table per (dataset, model): dict with header facts, columns and rows (mean/std/n per
    cell; ``ci``, ``baseline`` and ``diff`` from the per-point outcomes, see :func:`add_statistics`)."""
    tables = {}
    for g in groups:
        tables.setdefault((g.cfg.dataset, g.cfg.model), []).append(g)
    out = []
    for (dataset, model), gs in tables.items():
        trials = [t for g in gs for t in g.trials]
        cols = columns(trials)
        rows = []
        for g in gs:
            flags = Counter(f.name for t in g.trials for f in set(t.flags))
            rows.append(
                {
                    "method": g.label,
                    "defense": g.cfg.defense,
                    "lam": g.cfg.lam,
                    "eps_train": g.cfg.eps_train,
                    "n_seeds": len(g.trials),
                    "seeds": [t.cfg.seed for t in g.trials],
                    "n_points": sorted({t.record["n_points"] for t in g.trials}),
                    "cells": {c[0]: mean_std([cell(t.record, c) for t in g.trials]) for c in cols},
                    "autoattack_ran": {  # AA@eps: in how many of the row's trials AutoAttack ran there
                        c[0]: sum(bool(autoattack_ran(t.record, c[3])) for t in g.trials)
                        for c in cols
                        if c[1] == "autoattack"
                    },
                    "flags": {k: v for k, v in sorted(flags.items())},
                    "trials": [t.name for t in g.trials],
                    "forward_passes": statistics.fmean(
                        t.record.get("cost", {}).get("eval", {}).get("forward", 0) for t in g.trials
                    ),
                }
            )
        out.append(
            {
                "dataset": dataset,
                "model": model,
                "columns": cols,
                "rows": rows,
                "attacks": attack_settings(trials),
                "n_points": sorted({t.record["n_points"] for t in trials}),
                "norm": "+".join(sorted({a["norm"] for t in trials for a in t.record["attacks"]})),
                "autoattack": autoattack_settings(trials),
                "eps": sorted({c[3] for c in cols if c[3] > 0}),
                "checkpoint": sorted({t.record.get("checkpoint", "last") for t in trials}),
            }
        )
        add_statistics(out[-1], gs, spec)
    return out


def fmt_cell(ms: tuple, ci: tuple | None = None) -> str:
    """A table cell in %: ``mean [lo, hi]`` with a CI, else ``mean ± std`` (or the mean alone);
    "" when there is no mean. ``ms``: (mean, std, n) as :func:`scan.mean_std` gives it."""
    m, s, _ = ms
    if m is None:
        return ""
    if ci is not None:
        return f"{100 * m:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")


def fmt_diff(d: dict | None, p_key: str = "p", star: str = " *") -> str:
    """A paired difference in percentage points: ``diff [lo, hi] p=...`` and ``star`` when significant
    after Holm; ``p_key``: which p-value to show ("p", or "p_holm" for the corrected one)."""
    if d is None:
        return ""
    mark = star if d.get("significant") else ""
    seeds = f", seeds p{st.fmt_p(d['p_seed'], '=')}" if d.get("p_seed") is not None else ""
    return (
        f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] "
        f"p{st.fmt_p(d.get(p_key, d['p']), '=')}{mark}{seeds}"
    )


def _flags_text(row: dict) -> str:
    return ", ".join(f"{k} ({v}/{row['n_seeds']})" for k, v in row["flags"].items()) or "—"


def table_header(tab: dict) -> str:
    atk = "; ".join(
        f"{lab}: {s['attack']} {s['norm']} {s['loss']} loss, {s['steps']} step(s) x {s['restarts']} restart(s), "
        f"step {s['step_size']}"
        for lab, s in tab["attacks"].items()
    )
    aa = tab.get("autoattack")
    aa_text = (
        f" · AA = per-example worst case over our L-inf attacks and AutoAttack ({', '.join(aa['attacks'])}: "
        f"{', '.join(aa['components'])}; pyautoattack, run on the points our attacks left robust"
        + (f"; {'; '.join(aa['rules'])}" if aa.get("rules") else "")
        + f") on {', '.join(map(str, aa['n_points']))} of the test points"
        + (" (after it: our worst case on those points)" if aa["n_points"] != tab["n_points"] else "")
        if aa
        else ""
    )
    ckpt = ", ".join(tab.get("checkpoint", ["last"]))
    cis = any(v is not None for r in tab["rows"] for v in r.get("ci", {}).values())
    how = (
        "mean over seeds [95% CI over seeds and test points, two-level paired bootstrap]"
        if cis
        else "mean ± std (ddof=1) over seeds"
    )
    return (
        f"dataset: {tab['dataset']} (test split) · model: {tab['model']} · checkpoint: {ckpt} · n_points: "
        f"{', '.join(map(str, tab['n_points']))} test points per trial · attacks: {atk} · worst = per-example "
        f"worst case over our L-inf attacks{aa_text} · accuracy in %, {how}"
    )


NOT_RUN_MARK = "†"
NOT_RUN_NOTE = (
    f"{NOT_RUN_MARK} AutoAttack did not run at this ε in k of the n seeds (k/n: our attacks left a share of the "
    "points robust outside the informative band, or the ε was not in autoattack_eps): there the cell is our "
    "attacks' worst case and what AutoAttack broke at smaller ε, an upper bound (`result.json` → "
    "`worst_case[].autoattack.why`)."
)


def _aa_cell(row: dict, col: tuple, subset: bool) -> str:
    """``AA@eps``; on a subset of the points, with our own worst case on the same points beside it
    (our ``worst@eps`` column is on every point, so the two columns are not comparable); marked
    when AutoAttack did not run there in some of the row's seeds."""
    ci = row.get("ci", {})
    text = fmt_cell(row["cells"][col[0]], ci.get(col[0]))
    ran, n = row.get("autoattack_ran", {}).get(col[0]), row["n_seeds"]
    if text and ran is not None and ran < n:
        text += f" {NOT_RUN_MARK}{n - ran}/{n}"
    key = f"ours_on_AA_points@{col[3]:g}"
    ours = row["cells"].get(key)
    if subset and text and ours and ours[0] is not None:
        return f"{text} (ours {fmt_cell(ours, ci.get(key))})"
    return text


def table_markdown(tab: dict) -> str:
    subset = bool(tab.get("autoattack")) and tab["autoattack"]["n_points"] != tab["n_points"]
    cols = [c for c in tab["columns"] if c[1] != "aa_ours"]
    head = ["Method", "seeds"] + [c[0].replace("clean", "Clean") for c in cols] + ["audit flags"]
    lines = [
        f"### {tab['dataset']} · {tab['model']}",
        "",
        table_header(tab),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in tab["rows"]:
        ci = r.get("ci", {})
        lines.append(
            "| "
            + " | ".join(
                [r["method"], str(r["n_seeds"])]
                + [
                    _aa_cell(r, c, subset)
                    if c[1] == "autoattack"
                    else fmt_cell(r["cells"][c[0]], ci.get(c[0]))
                    for c in cols
                ]
                + [_flags_text(r)]
            )
            + " |"
        )
    if any(v < r["n_seeds"] for r in tab["rows"] for v in r.get("autoattack_ran", {}).values()):
        lines += ["", NOT_RUN_NOTE]
    if any(r.get("diff") for r in tab["rows"]):
        head = ["Method − baseline", "paired seed ids"] + [c[0].replace("clean", "Clean") for c in cols]
        lines += [
            "",
            "Paired differences with the baseline (method − baseline, percentage points): difference "
            "[95% CI, two-level paired bootstrap over seeds and test points], two-sided bootstrap p-value; "
            "`*` = significant at 5% after Holm's correction over the eps values of that attack (clean: "
            "uncorrected); `seeds p` = the seed (a training run) as the unit: a paired t-test over the "
            "seeds' accuracy differences (its t-interval and the exact sign-flip p-value are in the "
            "CSV/JSON). Same seeds and same test points on both sides; McNemar p-values, discordant "
            "counts and Holm-adjusted p-values are in the CSV/JSON.",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for r in tab["rows"]:
            if r.get("diff"):
                lines.append(
                    "| "
                    + " | ".join(
                        [f"{r['method']} − {r['baseline']}", " ".join(map(str, r["paired_seeds"]))]
                        + [fmt_diff(r["diff"].get(c[0])) for c in cols]
                    )
                    + " |"
                )
    return "\n".join(lines) + "\n"
