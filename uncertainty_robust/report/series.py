"""The derived series the figures and TensorBoard plot: accuracy vs test eps per attack, Jacobian
norm vs lambda, eps_train x eps_test matrices, and the Spearman correlation of each Jacobian
statistic with robust accuracy across trials."""

from __future__ import annotations

import json
import statistics

from .. import stats as st
from ..defenses import DEFENSES
from .columns import cell
from .scan import jacobian_values


def autoattack_coverage(groups: list) -> dict:
    """{group label: {eps: (seeds where AutoAttack ran, seeds)}} for the AA curve's points."""
    from .columns import autoattack_ran

    out = {}
    for g in groups:
        eps = sorted({w["eps"] for t in g.trials for w in t.record["worst_case"] if "ours" in w})
        out[g.label] = {
            e: (sum(bool(autoattack_ran(t.record, e)) for t in g.trials), len(g.trials)) for e in eps
        }
    return out


def curves(groups: list) -> dict:
    """{group label: {series: [(eps, mean)]}}: accuracy vs test eps per attack and worst case."""
    out = {}
    for g in groups:
        series: dict = {}
        for t in g.trials:
            for a in t.record["attacks"]:
                series.setdefault(a["label"], {}).setdefault(a["eps"], []).append(a["acc"])
            for w in t.record["worst_case"]:
                series.setdefault("worst", {}).setdefault(w["eps"], []).append((w.get("ours") or w)["acc"])
                if "ours" in w:
                    series.setdefault("AA", {}).setdefault(w["eps"], []).append(w["acc"])
        out[g.label] = {
            s: sorted((e, statistics.fmean(v)) for e, v in pts.items()) for s, pts in series.items()
        }
    return out


def jacobian_lines(groups: list) -> dict:
    """{line label: {stat: [(lam, mean)]}}: one line per defense (and train eps), x = lambda."""
    lines: dict = {}
    for g in groups:
        c = g.cfg
        rest = {k: v for k, v in g.key.items() if k != "lam"}
        name = c.defense_record.display + (f" (ε={c.eps:g})" if c.is_adversarial else "")
        line = lines.setdefault(json.dumps(rest, sort_keys=True, default=str), {"label": name, "points": {}})
        for out in ("logits", "softmax"):
            for stat in ("mean", "median"):
                vals = [
                    t.record["jacobian"][out][stat] for t in g.trials if out in t.record.get("jacobian", {})
                ]
                if vals:
                    line["points"].setdefault(f"{out}_{stat}", []).append((c.lam, statistics.fmean(vals)))
    return {
        v["label"] + (f" #{i}" if [w["label"] for w in lines.values()].count(v["label"]) > 1 else ""): {
            k: sorted(p) for k, p in v["points"].items()
        }
        for i, v in enumerate(lines.values())
    }


def matrices(groups: list) -> dict:
    """{family title: {"rows": [eps_train], "cols": [eps_test], "acc": [[mean worst acc]]}}; a
    family is the registry's ``Defense.family`` and lambda (Standard/AT, LS/AT+LS α, EntM/AT+EntM λ);
    a non-adversarial member is the eps_train = 0 row. Only families with an adversarial member get a matrix."""
    fams: dict = {}
    for g in groups:
        c = g.cfg
        rest = {k: v for k, v in g.key.items() if k not in ("defense", "eps")}
        fam = c.defense_record.family + (
            f" ({c.defense_record.lam.symbol}={c.lam:g})" if c.defense_record.takes_lam else ""
        )
        f = fams.setdefault(
            (fam, json.dumps(rest, sort_keys=True, default=str)),
            {"title": fam, "cells": {}, "adversarial": False},
        )
        f["adversarial"] |= c.is_adversarial
        for t in g.trials:
            for w in t.record["worst_case"]:  # our attacks' worst case: the same attacks at every eps_test
                f["cells"].setdefault((t.eps_train, w["eps"]), []).append((w.get("ours") or w)["acc"])
    out = {}
    for (title, _), f in fams.items():
        if not f["adversarial"]:
            continue
        rows, cols = sorted({k[0] for k in f["cells"]}), sorted({k[1] for k in f["cells"]})
        title = title if title not in out else f"{title} #{len(out)}"
        out[title] = {
            "rows": rows,
            "cols": cols,
            "acc": [
                [statistics.fmean(f["cells"][(r, c)]) if (r, c) in f["cells"] else None for c in cols]
                for r in rows
            ],
        }
    return out


def matrix_markdown(title: str, m: dict) -> str:
    head = "| ε_train \\ ε_test | " + " | ".join(f"{c:g}" for c in m["cols"]) + " |"
    body = [
        f"| {r:g} | " + " | ".join("" if v is None else f"{100 * v:.1f}" for v in row) + " |"
        for r, row in zip(m["rows"], m["acc"])
    ]
    return (
        "\n".join(
            [f"#### worst-case accuracy (%), {title}", "", head, "|" + "---|" * (len(m["cols"]) + 1)] + body
        )
        + "\n"
    )


# ------------------------------------------------------------------------------ Jacobian vs robustness
# Trials with and without adversarial training form two clusters tens of points apart in robust accuracy,
# so a correlation across all trials mostly says "AT vs not AT"; the same correlation within each
# subset says whether a smaller Jacobian goes with more robustness among comparable models.
SUBSETS = (("adversarially trained", True), ("not adversarially trained", False))
MIN_SUBSET_TRIALS = 4  # below this a Spearman rho is not worth printing


def _spearman_block(trials: list, eps: list) -> dict:
    jv = [jacobian_values(t.record) for t in trials]
    names = list(dict.fromkeys(k for v in jv for k in v))
    acc = {e: [cell(t.record, (f"worst@{e:g}", "worst", None, e)) for t in trials] for e in eps}
    return {n: {f"worst@{e:g}": st.spearman([v.get(n) for v in jv], acc[e]) for e in eps} for n in names}


def _mean(vals: list):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _spearman_means(groups: list, eps: list) -> dict:
    """Spearman's rho over configurations: one point per table row, the mean over its seeds of each
    Jacobian statistic and of the worst-case accuracy (seeds of one configuration are not independent
    points, so this is the correlation whose p-value means what it says)."""
    jv = [[jacobian_values(t.record) for t in g.trials] for g in groups]
    names = list(dict.fromkeys(k for vs in jv for v in vs for k in v))
    acc = {
        e: [_mean([cell(t.record, (f"worst@{e:g}", "worst", None, e)) for t in g.trials]) for g in groups]
        for e in eps
    }
    return {
        n: {f"worst@{e:g}": st.spearman([_mean([v.get(n) for v in vs]) for vs in jv], acc[e]) for e in eps}
        for n in names
    }


def jacobian_correlations(groups: list) -> list:
    """Per (dataset, model): Spearman's rho across trials (every seed a point) between each Jacobian
    statistic (:func:`~.scan.jacobian_values`: logit, softmax and margin-gradient norms and the
    boundary distance, at clean and at PGD points) and the worst-case accuracy at each eps > 0; the
    same within the adversarially trained trials and within the others (``within``, for subsets of
    at least :data:`MIN_SUBSET_TRIALS` trials when both subsets are present)."""
    by: dict = {}
    rows: dict = {}
    for g in groups:
        adv = DEFENSES[g.cfg.defense].adversarial
        by.setdefault((g.cfg.dataset, g.cfg.model), []).extend((t, adv) for t in g.trials)
        rows.setdefault((g.cfg.dataset, g.cfg.model), []).append((g, adv))
    out = []
    for (dataset, model), pairs in by.items():
        trials = [t for t, _ in pairs]
        eps = sorted({w["eps"] for t in trials for w in t.record["worst_case"] if w["eps"] > 0})
        if not eps:
            continue
        correlation = _spearman_block(trials, eps)
        if not correlation:  # no trial recorded Jacobian statistics
            continue
        adv_eps = sorted(
            {(t.record.get("jacobian") or {}).get("adversarial", {}).get("eps") for t in trials} - {None}
        )
        subsets = {label: [t for t, a in pairs if a == flag] for label, flag in SUBSETS}
        within = (
            {
                label: {"n_trials": len(ts), "correlation": _spearman_block(ts, eps)}
                for label, ts in subsets.items()
                if len(ts) >= MIN_SUBSET_TRIALS
            }
            if all(subsets.values())
            else {}
        )
        gs = rows[(dataset, model)]
        sub_rows = {label: [g for g, a in gs if a == flag] for label, flag in SUBSETS}
        over = {
            "n_configurations": len(gs),
            "correlation": _spearman_means([g for g, _ in gs], eps),
            "within": {
                label: {"n_configurations": len(g2), "correlation": _spearman_means(g2, eps)}
                for label, g2 in sub_rows.items()
                if len(g2) >= MIN_SUBSET_TRIALS
            }
            if all(sub_rows.values())
            else {},
        }
        out.append(
            {
                "dataset": dataset,
                "model": model,
                "n_trials": len(trials),
                "robust": [f"worst@{e:g}" for e in eps],
                "jacobian_adv_eps": adv_eps,
                "correlation": correlation,
                "within": within,
                "over_configurations": over,
            }
        )
    return out


def correlation_markdown(c: dict) -> str:
    cols = c["robust"]
    lines = [
        f"#### Jacobian statistics vs worst-case accuracy, {c['dataset']} · {c['model']}",
        "",
        f"Spearman's ρ across {c['n_trials']} trials (each seed a point; p-value in parentheses, n pairs in "
        f"the JSON). Rows: Jacobian norms of the logits, the softmax and the margin z_j* − z_y (strongest "
        f"wrong class), and the first-order L-inf distance to the boundary, at clean test points and "
        f"(adv_) at PGD points of eps {', '.join(f'{e:g}' for e in c['jacobian_adv_eps']) or '—'}"
        + (
            " (it differs across trials: set evaluation.jacobian_eps for one eps)."
            if len(c["jacobian_adv_eps"]) > 1
            else "."
        ),
        "",
    ]
    lines += _rho_table(c["correlation"], cols)
    for label, sub in (c.get("within") or {}).items():
        lines += ["", f"Within the {sub['n_trials']} {label} trials:", ""]
        lines += _rho_table(sub["correlation"], cols)
    over = c.get("over_configurations")
    if over:
        lines += [
            "",
            f"Over the {over['n_configurations']} configurations (one point per table row: the mean over its "
            "seeds; the seeds of one configuration are not independent points, so these p-values are the "
            "ones to read):",
            "",
        ]
        lines += _rho_table(over["correlation"], cols)
        for label, sub in (over.get("within") or {}).items():
            lines += ["", f"Within the {sub['n_configurations']} {label} configurations:", ""]
            lines += _rho_table(sub["correlation"], cols)
    return "\n".join(lines) + "\n"


def fmt_rho(r: dict | None, empty: str = "") -> str:
    """One correlation cell, ``+0.42 (p)``; ``empty`` where rho is undefined or missing."""
    return empty if not r or r.get("rho") is None else f"{r['rho']:+.2f} ({st.fmt_p(r['p'])})"


def _rho_table(correlation: dict, cols: list) -> list:
    lines = ["| statistic | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, row in correlation.items():
        lines.append(f"| {name} | " + " | ".join(fmt_rho(row[k]) for k in cols) + " |")
    return lines
