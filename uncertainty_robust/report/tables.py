"""Tables in the paper's layout (rows = methods, columns = clean, attack@eps, worst@eps), their
Markdown/CSV/JSON files, and the derived series the figures and TensorBoard plot (accuracy vs eps,
Jacobian norm vs lambda, eps_train x eps_test matrices).

Every cell carries, besides mean ± std over seeds, a 95 % interval combining seed variance and
test-point sampling, and every row with a baseline in the table (``Defense.baseline``: standard
for LS/EntM/AT, AT for AT+LS/AT+EntM/TRADES, matched on every other row field) a paired comparison
with it on the same seeds and points: difference, its interval, a bootstrap p-value, the exact
McNemar p-value and Holm's correction over the eps values of each attack (see :mod:`.stats`).
Cells whose trials have no per-point outcomes (``points.npz``) keep mean ± std only."""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from ..attacks import ATTACKS
from ..defenses import DEFENSES
from . import stats as st
from .scan import jacobian_values, mean_std


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


# ------------------------------------------------------------------------------ statistics
_OPEN_CHOICES = ("entropy_on", "inner_loss", "ls_form")  # read only by the regularised defenses
_ADV_FIELDS = ("eps", "eps_step", "pgd_steps", "random_start", "adv_fraction", "attack_bn_mode")


def mask_name(col: tuple) -> tuple:
    """(outcome name in ``points.npz``, name of the mask of the points it is measured on or None for
    every point) of a column (see ``evaluate``): AutoAttack columns are on the AutoAttack points only."""
    key, kind, label, eps = col
    if kind == "clean":
        return "clean", None
    if kind == "attack":
        return f"attack/{label}/{eps:g}", None
    if kind == "autoattack":
        return f"autoattack/{eps:g}", "autoattack/points"
    return f"worst/{eps:g}", ("autoattack/points" if kind == "aa_ours" else None)


def find_baseline(g, groups: list):
    """The row ``g`` is compared with: the group of its defense's ``baseline`` whose row fields equal
    g's except defense and lambda, the open choices the baseline does not read (entropy_on,
    inner_loss, ls_form) and, for a non-adversarial baseline, the adversarial-training fields.
    None when there is no such group, or more than one."""
    b = g.cfg.spec.baseline
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


def _trial_mask(t, col) -> tuple | None:
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
    got = [_trial_mask(t, col) for t in trials]
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
    got = [(_trial_mask(a, col), _trial_mask(b, col)) for a, b in pairs]
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


def _fmt(ms: tuple, ci: tuple | None = None) -> str:
    m, s, _ = ms
    if m is None:
        return ""
    if ci is not None:
        return f"{100 * m:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")


def _fmt_p(p: float, eq: str = "") -> str:
    return "<0.001" if p < 0.001 else f"{eq}{p:.3f}"


def _fmt_diff(d: dict | None) -> str:
    if d is None:
        return ""
    star = " *" if d.get("significant") else ""
    return f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] p{_fmt_p(d['p'], '=')}{star}"


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


def _aa_cell(row: dict, col: tuple, subset: bool) -> str:
    """``AA@eps``; on a subset of the points, with our own worst case on the same points beside it
    (our ``worst@eps`` column is on every point, so the two columns are not comparable)."""
    ci = row.get("ci", {})
    text = _fmt(row["cells"][col[0]], ci.get(col[0]))
    key = f"ours_on_AA_points@{col[3]:g}"
    ours = row["cells"].get(key)
    if subset and text and ours and ours[0] is not None:
        return f"{text} (ours {_fmt(ours, ci.get(key))})"
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
                    _aa_cell(r, c, subset) if c[1] == "autoattack" else _fmt(r["cells"][c[0]], ci.get(c[0]))
                    for c in cols
                ]
                + [_flags_text(r)]
            )
            + " |"
        )
    if any(r.get("diff") for r in tab["rows"]):
        head = ["Method − baseline", "paired seeds"] + [c[0].replace("clean", "Clean") for c in cols]
        lines += [
            "",
            "Paired differences with the baseline (method − baseline, percentage points): difference "
            "[95% CI, two-level paired bootstrap over seeds and test points], two-sided bootstrap p-value; "
            "`*` = significant at 5% after Holm's correction over the eps values of that attack (clean: "
            "uncorrected). Same seeds and same test points on both sides; McNemar p-values, discordant "
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
                        + [_fmt_diff(r["diff"].get(c[0])) for c in cols]
                    )
                    + " |"
                )
    return "\n".join(lines) + "\n"


# CSV column suffix -> key of a paired difference
_DIFF_KEYS = {
    "diff": "diff",
    "diff_lo": "lo",
    "diff_hi": "hi",
    "p": "p",
    "p_holm": "p_holm",
    "significant": "significant",
    "p_mcnemar": "p_mcnemar",
    "n_better": "n_better",
    "n_worse": "n_worse",
    "diff_n_points": "n_points",
}


def _csv(v) -> str:
    return "" if v is None else repr(v)


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
            + ["flags", "attack_settings", "checkpoint", "baseline", "paired_seeds"]
            + [f"{c[0]}_{s}" for c in cols for s in ("ci_lo", "ci_hi")]
            + [f"{c[0]}_{s}" for c in cols for s in _DIFF_KEYS]
        )
        for r in tab["rows"]:
            ci, diff = r.get("ci", {}), r.get("diff", {})
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
                + [_flags_text(r), settings, " ".join(tab.get("checkpoint", ["last"]))]
                + [r.get("baseline") or "", " ".join(map(str, r.get("paired_seeds", [])))]
                + [repr(v) if ci.get(c[0]) else "" for c in cols for v in (ci.get(c[0]) or (None, None))]
                + [_csv(diff.get(c[0], {}).get(k)) for c in cols for k in _DIFF_KEYS.values()]
            )
    entries = []
    for r in tab["rows"]:

        def ms(c, r=r):
            d = dict(zip(("mean", "std", "n"), r["cells"][c[0]]))
            ci = r.get("ci", {}).get(c[0])
            d["ci"] = list(ci) if ci else None
            d["diff"] = r.get("diff", {}).get(c[0])
            return d

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
                "clean": ms(cols[0]),
                "baseline": r.get("baseline"),
                "paired_seeds": r.get("paired_seeds", []),
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
        "checkpoint": tab.get("checkpoint", ["last"]),
        "statistics": tab.get("statistics"),
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


# ------------------------------------------------------------------------------ Jacobian vs robustness
def jacobian_correlations(groups: list) -> list:
    """Per (dataset, model): Spearman's rho across trials (every seed a point) between each Jacobian
    statistic (:func:`~.scan.jacobian_values`: logit, softmax and margin-gradient norms and the
    boundary distance, at clean and at PGD points) and the worst-case accuracy at each eps > 0."""
    by: dict = {}
    for g in groups:
        by.setdefault((g.cfg.dataset, g.cfg.model), []).extend(g.trials)
    out = []
    for (dataset, model), trials in by.items():
        eps = sorted({w["eps"] for t in trials for w in t.record["worst_case"] if w["eps"] > 0})
        jv = [jacobian_values(t.record) for t in trials]
        names = [k for k in dict.fromkeys(k for v in jv for k in v)]
        if not names or not eps:
            continue
        acc = {e: [cell(t.record, (f"worst@{e:g}", "worst", None, e)) for t in trials] for e in eps}
        adv_eps = sorted(
            {(t.record.get("jacobian") or {}).get("adversarial", {}).get("eps") for t in trials} - {None}
        )
        out.append(
            {
                "dataset": dataset,
                "model": model,
                "n_trials": len(trials),
                "robust": [f"worst@{e:g}" for e in eps],
                "jacobian_adv_eps": adv_eps,
                "correlation": {
                    n: {f"worst@{e:g}": st.spearman([v.get(n) for v in jv], acc[e]) for e in eps}
                    for n in names
                },
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
        "| statistic | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for name, row in c["correlation"].items():
        cells = [
            "" if row[k]["rho"] is None else f"{row[k]['rho']:+.2f} ({_fmt_p(row[k]['p'])})" for k in cols
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
