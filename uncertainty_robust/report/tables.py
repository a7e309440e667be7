"""Tables in the paper's layout (rows = methods, columns = clean, attack@eps, worst@eps), their
Markdown/CSV/JSON files, and the derived series the figures and TensorBoard plot (accuracy vs eps,
Jacobian norm vs lambda, eps_train x eps_test matrices)."""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Optional

from ..attacks import ATTACKS
from .scan import mean_std


def columns(trials: list) -> list:
    """[(key, kind, label, eps)]: clean, each attack at each eps > 0 (config order), worst at each eps > 0."""
    labels, eps = [], set()
    for t in trials:
        for a in t.record["attacks"]:
            if a["label"] not in labels:
                labels.append(a["label"])
            eps.add(a["eps"])
    eps = sorted(e for e in eps if e > 0)
    cols = [("clean", "clean", None, 0.0)]
    cols += [
        (f"{lab}@{e:g}", "attack", lab, e)
        for lab in labels
        for e in eps
        if any(a["label"] == lab and a["eps"] == e for t in trials for a in t.record["attacks"])
    ]
    cols += [
        (f"worst@{e:g}", "worst", None, e)
        for e in eps
        if any(w["eps"] == e for t in trials for w in t.record["worst_case"])
    ]
    aa_eps = [
        e for e in eps if any(w["eps"] == e and "ours" in w for t in trials for w in t.record["worst_case"])
    ]
    cols += [(f"AA@{e:g}", "autoattack", None, e) for e in aa_eps]
    # our worst case on the AutoAttack points (when those are a subset): what AA@eps is compared with
    cols += [(f"ours_on_AA_points@{e:g}", "aa_ours", None, e) for e in aa_eps]
    return cols


def cell(record: dict, col: tuple) -> Optional[float]:
    key, kind, label, eps = col
    if kind == "clean":
        return record["clean_acc"]
    if kind == "attack":
        return next((r["acc"] for r in record["attacks"] if r["eps"] == eps and r["label"] == label), None)
    w = next((r for r in record["worst_case"] if r["eps"] == eps), None)
    if w is None:
        return None
    if kind == "worst":  # our own attacks' worst case, on every evaluation point
        return (w.get("ours") or w)["acc"]
    if kind == "aa_ours":  # our own attacks' worst case on the AutoAttack points
        return w.get("ours_on_points", w["ours"]["acc"]) if "ours" in w else None
    return w["acc"] if "ours" in w else None  # ours + AutoAttack, on the AutoAttack points


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
    }


def build_tables(groups: list) -> list:
    """One table per (dataset, model): dict with header facts, columns and rows (mean/std/n per cell)."""
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
            }
        )
    return out


def _fmt(ms: tuple) -> str:
    m, s, _ = ms
    return "" if m is None else f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")


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
        f"{', '.join(aa['components'])}; pyautoattack, run on the points our attacks left robust) on "
        f"{', '.join(map(str, aa['n_points']))} of the test points"
        + (" (in brackets: our worst case on those points)" if aa["n_points"] != tab["n_points"] else "")
        if aa
        else ""
    )
    return (
        f"dataset: {tab['dataset']} · model: {tab['model']} · n_points: {', '.join(map(str, tab['n_points']))} test points "
        f"per trial · attacks: {atk} · worst = per-example worst case over our L-inf attacks{aa_text} · accuracy in %, "
        f"mean ± std (ddof=1) over seeds"
    )


def _aa_cell(row: dict, col: tuple, subset: bool) -> str:
    """``AA@eps``; on a subset of the points, with our own worst case on the same points beside it
    (our ``worst@eps`` column is on every point, so the two columns are not comparable)."""
    text = _fmt(row["cells"][col[0]])
    ours = row["cells"].get(f"ours_on_AA_points@{col[3]:g}")
    return f"{text} (ours {_fmt(ours)})" if subset and text and ours and ours[0] is not None else text


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
        lines.append(
            "| "
            + " | ".join(
                [r["method"], str(r["n_seeds"])]
                + [_aa_cell(r, c, subset) if c[1] == "autoattack" else _fmt(r["cells"][c[0]]) for c in cols]
                + [_flags_text(r)]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def write_table_files(tab: dict, out: Path) -> None:
    stem = out / f"table_{tab['dataset']}_{tab['model']}"
    cols = tab["columns"]
    settings = "; ".join(
        f"{k}:{v['steps']}x{v['restarts']} step {v['step_size']}" for k, v in tab["attacks"].items()
    )
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["method", "defense", "lam", "eps_train", "dataset", "model", "n_points", "n_seeds", "seeds"]
            + [f"{c[0]}_{s}" for c in cols for s in ("mean", "std")]
            + ["flags", "attack_settings"]
        )
        for r in tab["rows"]:
            w.writerow(
                [
                    r["method"],
                    r["defense"],
                    r["lam"],
                    r["eps_train"],
                    tab["dataset"],
                    tab["model"],
                    " ".join(map(str, r["n_points"])),
                    r["n_seeds"],
                    " ".join(map(str, r["seeds"])),
                ]
                + ["" if v is None else repr(v) for c in cols for v in r["cells"][c[0]][:2]]
                + [_flags_text(r), settings]
            )
    entries = []
    for r in tab["rows"]:
        ms = lambda c, r=r: dict(zip(("mean", "std", "n"), r["cells"][c[0]]))  # noqa: E731
        entries.append(
            {
                "name": r["method"],
                "defense": r["defense"],
                "lam": r["lam"],
                "eps_train": r["eps_train"],
                "dataset": tab["dataset"],
                "architecture": tab["model"],
                "threat_model": tab["norm"],
                "clean_acc": r["cells"]["clean"][0],
                "clean_acc_std": r["cells"]["clean"][1],
                "robust_acc": {
                    lab: {f"{c[3]:g}": ms(c) for c in cols if c[2] == lab} for lab in tab["attacks"]
                },
                "worst_case_acc": {f"{c[3]:g}": ms(c) for c in cols if c[1] == "worst"},
                "autoattack_acc": {f"{c[3]:g}": ms(c) for c in cols if c[1] == "autoattack"},
                "worst_case_acc_on_autoattack_points": {
                    f"{c[3]:g}": ms(c) for c in cols if c[1] == "aa_ours"
                },
                "n_points": r["n_points"],
                "n_seeds": r["n_seeds"],
                "seeds": r["seeds"],
                "trials": r["trials"],
                "number_forward_passes": r["forward_passes"],
                "flags": r["flags"],
            }
        )
    doc = {
        "schema": "uncertainty-robust/table/v1",
        "dataset": tab["dataset"],
        "architecture": tab["model"],
        "norm": tab["norm"],
        "eps": tab["eps"],
        "n_points": tab["n_points"],
        "attack_settings": tab["attacks"],
        "autoattack": tab.get("autoattack"),
        "accuracy_unit": "fraction",
        "std": "sample std (ddof=1) over seeds; null for one seed",
        "entries": entries,
    }
    Path(f"{stem}.json").write_text(json.dumps(doc, indent=1))


# ------------------------------------------------------------------------------ derived series
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
        name = c.spec.display + (f" (ε={c.eps:g})" if c.is_adversarial else "")
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
        fam = c.spec.family + (f" ({c.spec.lam.symbol}={c.lam:g})" if c.spec.takes_lam else "")
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
