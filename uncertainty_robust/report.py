"""Aggregation of a sweep run: every finished trial's ``result.json`` -> ``RUN/aggregate/``.

What it writes, and why each piece exists:

- ``tables.md`` and ``table_<dataset>_<model>.{csv,json}``: the paper's layout (rows = methods,
  columns = clean, attack@eps, worst@eps), mean ± std over seeds (sample std, ddof=1; blank for
  one seed), with dataset, model, n_points and attack settings stated next to the numbers and an
  audit column, because a robust accuracy means nothing without its threat model and red flags.
- ``tb/``: TensorBoard: HParams (one session per trial), accuracy-vs-eps curves, Jacobian norm vs
  lambda, eps_train x eps_test matrices (scalars + a custom-scalars layout), adversarial examples,
  audit flags as text. Scalar steps are integers, so curves use x = ``round(1000 * eps)``.
- ``figures/*.png`` (when matplotlib is importable) and ``examples/*.png`` (torchvision + Pillow).
- ``summary.json`` (counts, flags, skipped checks) and ``transfer.json`` (the audit's transfer
  attacks; the next aggregation reuses them as a cache).

Safe while trials are still running (``result.json`` appears atomically and last) and idempotent:
everything goes to a temporary sibling directory that replaces ``aggregate/`` at the end. Only
records with our ``schema`` are read: Ray Tune writes its own ``result.json`` (JSON lines) into
the same run directory.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import audit as au
from .evaluate import RESULT_NAME, SCHEMA

# config fields that never change a result: trials differing only in these (and the seed) are
# one row of a table
RUNTIME_KEYS = ("seed", "device", "num_threads", "log_every", "data_root", "download", "eval_batch_size")
DEFENSE_NAMES = {"standard": "Standard", "ls": "LS", "entm": "EntM", "at": "AT", "at_ls": "AT+LS", "at_entm": "AT+EntM"}
FAMILY = {"standard": "Standard/AT", "at": "Standard/AT", "ls": "LS/AT+LS", "at_ls": "LS/AT+LS",
          "entm": "EntM/AT+EntM", "at_entm": "EntM/AT+EntM"}


class NoTrialsError(FileNotFoundError):
    """The run directory holds no trial at all, finished or not."""


@dataclass
class Trial:
    dir: Path
    record: dict
    flags: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    @property
    def cfg(self) -> dict:
        return self.record["config"]

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def eps_train(self) -> float:
        return float(self.cfg["eps"]) if self.cfg["defense"].startswith("at") else 0.0


@dataclass
class Group:
    """Trials whose configs differ only in seed (and runtime fields): one row of a table."""
    label: str
    key: dict
    trials: list

    @property
    def slug(self) -> str:
        return _slug(self.label)


@dataclass
class Scan:
    trials: list
    unfinished: list
    ignored: list  # result.json files that are not ours (Ray's), duplicates


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def scan_run(run_dir, exclude=()) -> Scan:
    """Finished trials (``**/result.json`` with our schema) and unfinished ones (a directory with
    our ``config.json`` or a ``checkpoint.pt`` but no result; Ray Train's ``checkpoint_*`` copies
    and anything inside a known trial directory are not trials of their own)."""
    root = Path(run_dir)
    excl = [Path(e).resolve() for e in exclude]
    keep = lambda p: not _hidden(p, root) and not any(e == p.resolve() or e in p.resolve().parents for e in excl)  # noqa: E731
    trials, ignored, seen = [], [], {}
    for f in sorted(root.rglob(RESULT_NAME)):
        if not keep(f):
            continue
        rec = _read_json(f)
        if rec.get("schema") != SCHEMA or rec.get("trial_id") in seen:
            ignored.append(f)
        else:
            seen[rec.get("trial_id")] = f.parent
            trials.append(Trial(f.parent, rec))
    done = {t.dir.resolve() for t in trials}
    cands = set()
    for name in ("config.json", "checkpoint.pt"):
        for f in root.rglob(name):
            d = f.parent
            if not keep(f) or d.name.startswith("checkpoint_") or d.resolve() in done:
                continue
            if name == "checkpoint.pt" or {"defense", "test_eps"} <= set(_read_json(f)):
                cands.add(d)
    known = done | {c.resolve() for c in cands}
    unfinished = sorted(d for d in cands if not any(a.resolve() in known for a in d.parents))
    return Scan(trials, unfinished, ignored)


# ------------------------------------------------------------------------------ per-trial values
def method_label(cfg: dict) -> str:
    """e.g. "AT+EntM (λ=0.5, ε=0.3)": lambda for the regularized defenses, eps for the AT ones."""
    d, parts = cfg["defense"], []
    if d in ("ls", "entm", "at_ls", "at_entm"):
        parts.append(f"λ={cfg['lam']:g}")
    if d.startswith("at"):
        parts.append(f"ε={cfg['eps']:g}")
    return DEFENSE_NAMES.get(d, d) + (f" ({', '.join(parts)})" if parts else "")


def hparams(t: Trial) -> dict:
    return {"defense": t.cfg["defense"], "lam": float(t.cfg["lam"]), "eps": t.eps_train, "seed": int(t.cfg["seed"]),
            "dataset": t.record["dataset"], "model": t.record["model"], "method": method_label(t.cfg)}


def metrics(t: Trial) -> dict:
    """The HParams metrics of one trial, flat {tag: value}."""
    r = t.record
    m = {"clean_acc": r["clean_acc"], "entropy_mean": r["entropy_mean"], "ece": r["ece"], "audit/flags": float(len(t.flags))}
    for w in r["worst_case"]:
        m[f"worst/eps_{w['eps']:g}"] = w["acc"]
    for a in r["attacks"]:
        m[f"acc/{a['label']}/eps_{a['eps']:g}"] = a["acc"]
    for out in ("logits", "softmax"):
        for stat in ("mean", "median"):
            if out in r.get("jacobian", {}):
                m[f"jacobian/{out}_{stat}"] = r["jacobian"][out][stat]
    if r.get("masking_probe"):
        m["probe/zero_grad_frac"] = r["masking_probe"]["zero_grad_frac"]
    if r.get("transfer"):
        m["transfer/acc"] = r["transfer"]["acc"]
    return m


def group_trials(trials: list) -> list:
    """Group by config minus seed/runtime fields; labels of groups that would collide get the
    differing config fields appended, so two rows never share a name."""
    groups: dict = {}
    for t in sorted(trials, key=lambda t: (t.cfg["seed"], t.name)):
        key = {k: v for k, v in t.cfg.items() if k not in RUNTIME_KEYS}
        groups.setdefault(json.dumps(key, sort_keys=True, default=str), Group(method_label(t.cfg), key, [])).trials.append(t)
    out = list(groups.values())
    by_label: dict = {}
    for g in out:
        by_label.setdefault(g.label, []).append(g)
    for same in by_label.values():
        if len(same) > 1:
            diff = sorted(k for k in same[0].key if len({json.dumps(g.key.get(k), default=str) for g in same}) > 1)
            for g in same:
                g.label += " [" + ", ".join(f"{k}={json.dumps(g.key.get(k), default=str)}" for k in diff) + "]"
    order = list(DEFENSE_NAMES)
    return sorted(out, key=lambda g: (g.key["dataset"], g.key["model"], order.index(g.key["defense"]) if g.key["defense"] in order
                                      else 99, g.key["lam"], g.key["eps"], g.label))


def mean_std(vals: list) -> tuple:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


# ------------------------------------------------------------------------------------ tables
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
    cols += [(f"{lab}@{e:g}", "attack", lab, e) for lab in labels for e in eps
             if any(a["label"] == lab and a["eps"] == e for t in trials for a in t.record["attacks"])]
    cols += [(f"worst@{e:g}", "worst", None, e) for e in eps if any(w["eps"] == e for t in trials for w in t.record["worst_case"])]
    return cols


def cell(record: dict, col: tuple) -> Optional[float]:
    key, kind, label, eps = col
    if kind == "clean":
        return record["clean_acc"]
    rows = record["attacks"] if kind == "attack" else record["worst_case"]
    return next((r["acc"] for r in rows if r["eps"] == eps and (kind == "worst" or r["label"] == label)), None)


def attack_settings(trials: list) -> dict:
    out = {}
    for t in trials:
        for a in t.record["attacks"]:
            spec = next((s for s in t.cfg["attacks"] if s["name"] == a["attack"]), {})
            out.setdefault(a["label"], {"attack": a["attack"], "norm": a["norm"], "steps": a["steps"], "restarts": a["restarts"],
                                        "step_size": spec.get("step_size") or ("eps" if a["attack"] == "fgsm" else f"2.5*eps/{a['steps']}"),
                                        "loss": "margin" if a["attack"] == "cw" else "ce"})
    return out


def build_tables(groups: list) -> list:
    """One table per (dataset, model): dict with header facts, columns and rows (mean/std/n per cell)."""
    tables = {}
    for g in groups:
        tables.setdefault((g.key["dataset"], g.key["model"]), []).append(g)
    out = []
    for (dataset, model), gs in tables.items():
        trials = [t for g in gs for t in g.trials]
        cols = columns(trials)
        rows = []
        for g in gs:
            flags = Counter(f.name for t in g.trials for f in set(t.flags))
            rows.append({"method": g.label, "defense": g.key["defense"], "lam": g.key["lam"], "eps_train": g.trials[0].eps_train,
                         "n_seeds": len(g.trials), "seeds": [t.cfg["seed"] for t in g.trials],
                         "n_points": sorted({t.record["n_points"] for t in g.trials}),
                         "cells": {c[0]: mean_std([cell(t.record, c) for t in g.trials]) for c in cols},
                         "flags": {k: v for k, v in sorted(flags.items())}, "trials": [t.name for t in g.trials],
                         "forward_passes": statistics.fmean(t.record.get("cost", {}).get("eval", {}).get("forward", 0) for t in g.trials)})
        out.append({"dataset": dataset, "model": model, "columns": cols, "rows": rows, "attacks": attack_settings(trials),
                    "n_points": sorted({t.record["n_points"] for t in trials}),
                    "norm": "+".join(sorted({a["norm"] for t in trials for a in t.record["attacks"]})),
                    "eps": sorted({c[3] for c in cols if c[3] > 0})})
    return out


def _fmt(ms: tuple) -> str:
    m, s, _ = ms
    return "" if m is None else f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")


def _flags_text(row: dict) -> str:
    return ", ".join(f"{k} ({v}/{row['n_seeds']})" for k, v in row["flags"].items()) or "—"


def table_header(tab: dict) -> str:
    atk = "; ".join(f"{lab}: {s['attack']} {s['norm']} {s['loss']} loss, {s['steps']} step(s) x {s['restarts']} restart(s), "
                    f"step {s['step_size']}" for lab, s in tab["attacks"].items())
    return (f"dataset: {tab['dataset']} · model: {tab['model']} · n_points: {', '.join(map(str, tab['n_points']))} test points "
            f"per trial · attacks: {atk} · worst = per-example worst case over the L-inf attacks · accuracy in %, "
            f"mean ± std (ddof=1) over seeds")


def table_markdown(tab: dict) -> str:
    cols = tab["columns"]
    head = ["Method", "seeds"] + [c[0].replace("clean", "Clean") for c in cols] + ["audit flags"]
    lines = [f"### {tab['dataset']} · {tab['model']}", "", table_header(tab), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in tab["rows"]:
        lines.append("| " + " | ".join([r["method"], str(r["n_seeds"])] + [_fmt(r["cells"][c[0]]) for c in cols]
                                       + [_flags_text(r)]) + " |")
    return "\n".join(lines) + "\n"


def write_table_files(tab: dict, out: Path) -> None:
    stem = out / f"table_{tab['dataset']}_{tab['model']}"
    cols = tab["columns"]
    settings = "; ".join(f"{k}:{v['steps']}x{v['restarts']} step {v['step_size']}" for k, v in tab["attacks"].items())
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "defense", "lam", "eps_train", "dataset", "model", "n_points", "n_seeds", "seeds"]
                   + [f"{c[0]}_{s}" for c in cols for s in ("mean", "std")] + ["flags", "attack_settings"])
        for r in tab["rows"]:
            w.writerow([r["method"], r["defense"], r["lam"], r["eps_train"], tab["dataset"], tab["model"],
                        " ".join(map(str, r["n_points"])), r["n_seeds"], " ".join(map(str, r["seeds"]))]
                       + ["" if v is None else repr(v) for c in cols for v in r["cells"][c[0]][:2]]
                       + [_flags_text(r), settings])
    entries = []
    for r in tab["rows"]:
        ms = lambda c: dict(zip(("mean", "std", "n"), r["cells"][c[0]]))  # noqa: E731
        entries.append({"name": r["method"], "defense": r["defense"], "lam": r["lam"], "eps_train": r["eps_train"],
                        "dataset": tab["dataset"], "architecture": tab["model"], "threat_model": tab["norm"],
                        "clean_acc": r["cells"]["clean"][0], "clean_acc_std": r["cells"]["clean"][1],
                        "robust_acc": {lab: {f"{c[3]:g}": ms(c) for c in cols if c[2] == lab} for lab in tab["attacks"]},
                        "worst_case_acc": {f"{c[3]:g}": ms(c) for c in cols if c[1] == "worst"},
                        "n_points": r["n_points"], "n_seeds": r["n_seeds"], "seeds": r["seeds"], "trials": r["trials"],
                        "number_forward_passes": r["forward_passes"], "flags": r["flags"]})
    doc = {"schema": "uncertainty-robust/table/v1", "dataset": tab["dataset"], "architecture": tab["model"],
           "norm": tab["norm"], "eps": tab["eps"], "n_points": tab["n_points"], "attack_settings": tab["attacks"],
           "accuracy_unit": "fraction", "std": "sample std (ddof=1) over seeds; null for one seed", "entries": entries}
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
                series.setdefault("worst", {}).setdefault(w["eps"], []).append(w["acc"])
        out[g.label] = {s: sorted((e, statistics.fmean(v)) for e, v in pts.items()) for s, pts in series.items()}
    return out


def jacobian_lines(groups: list) -> dict:
    """{line label: {stat: [(lam, mean)]}}: one line per defense (and train eps), x = lambda."""
    lines: dict = {}
    for g in groups:
        rest = {k: v for k, v in g.key.items() if k != "lam"}
        name = DEFENSE_NAMES.get(g.key["defense"], g.key["defense"]) + (f" (ε={g.key['eps']:g})" if g.key["defense"].startswith("at") else "")
        line = lines.setdefault(json.dumps(rest, sort_keys=True, default=str), {"label": name, "points": {}})
        for out in ("logits", "softmax"):
            for stat in ("mean", "median"):
                vals = [t.record["jacobian"][out][stat] for t in g.trials if out in t.record.get("jacobian", {})]
                if vals:
                    line["points"].setdefault(f"{out}_{stat}", []).append((g.key["lam"], statistics.fmean(vals)))
    return {v["label"] + (f" #{i}" if [w["label"] for w in lines.values()].count(v["label"]) > 1 else ""):
            {k: sorted(p) for k, p in v["points"].items()} for i, v in enumerate(lines.values())}


def matrices(groups: list) -> dict:
    """{family title: {"rows": [eps_train], "cols": [eps_test], "acc": [[mean worst acc]]}}; a
    family is a regularizer and lambda (Standard/AT, LS/AT+LS λ, EntM/AT+EntM λ); its non-AT member is
    the eps_train = 0 row. Only families with an AT member get a matrix."""
    fams: dict = {}
    for g in groups:
        rest = {k: v for k, v in g.key.items() if k not in ("defense", "eps")}
        d = g.key["defense"]
        fam = FAMILY.get(d, d) + (f" (λ={g.key['lam']:g})" if d in ("ls", "entm", "at_ls", "at_entm") else "")
        f = fams.setdefault((fam, json.dumps(rest, sort_keys=True, default=str)), {"title": fam, "cells": {}, "at": False})
        f["at"] |= g.key["defense"].startswith("at")
        for t in g.trials:
            for w in t.record["worst_case"]:
                f["cells"].setdefault((t.eps_train, w["eps"]), []).append(w["acc"])
    out = {}
    for (title, _), f in fams.items():
        if not f["at"]:
            continue
        rows, cols = sorted({k[0] for k in f["cells"]}), sorted({k[1] for k in f["cells"]})
        title = title if title not in out else f"{title} #{len(out)}"
        out[title] = {"rows": rows, "cols": cols, "acc": [[statistics.fmean(f["cells"][(r, c)]) if (r, c) in f["cells"] else None
                                                           for c in cols] for r in rows]}
    return out


def matrix_markdown(title: str, m: dict) -> str:
    head = "| ε_train \\ ε_test | " + " | ".join(f"{c:g}" for c in m["cols"]) + " |"
    body = [f"| {r:g} | " + " | ".join("" if v is None else f"{100 * v:.1f}" for v in row) + " |" for r, row in zip(m["rows"], m["acc"])]
    return "\n".join([f"#### worst-case accuracy (%), {title}", "", head, "|" + "---|" * (len(m["cols"]) + 1)] + body) + "\n"


# ----------------------------------------------------------------------------------- writers
def _step(x: float) -> int:
    return int(round(1000 * x))


def write_tensorboard(tb: Path, trials: list, groups: list, tables_md: str, audit_md: str) -> None:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hp_summary

    all_hp = [hparams(t) for t in trials]
    union = {}
    for t in trials:
        union.update({k: 0.0 for k in metrics(t)})
    domains = {k: sorted({h[k] for h in all_hp}) for k in all_hp[0]}
    exp, _, _ = hp_summary(all_hp[0], union, domains)
    cv, jl, mx = curves(groups), jacobian_lines(groups), matrices(groups)
    attack_series = sorted({s for c in cv.values() for s in c if s != "worst"}) + ["worst"]
    layout = {"accuracy vs test eps (x = 1000*eps, mean over seeds)": {s: ["Multiline", [rf"^curve/{re.escape(s)}$"]] for s in attack_series},
              "Jacobian norm vs lambda (x = 1000*lambda, mean over seeds)": {s: ["Multiline", [rf"^jac_vs_lam/{s}$"]] for s in
                                                                            ("logits_mean", "logits_median", "softmax_mean", "softmax_median")},
              "worst-case acc vs eps_train (x = 1000*eps_train), one line per eps_test": {
                  title: ["Multiline", [rf"^matrix/{re.escape(_slug(title))}/"]] for title in mx}}
    with SummaryWriter(str(tb)) as w:
        w.file_writer.add_summary(exp)
        w.add_custom_scalars(layout)
        w.add_text("tables", tables_md)
        w.add_text("audit", audit_md)
        for title, m in mx.items():
            w.add_text(f"matrix/{_slug(title)}", matrix_markdown(title, m))
    for t, h in zip(trials, all_hp):
        with SummaryWriter(str(tb / "trials" / t.name)) as w:
            _, ssi, sei = hp_summary(h, {}, None)
            w.file_writer.add_summary(ssi)
            for k, v in metrics(t).items():
                w.add_scalar(k, v, 0)
            w.add_text("audit", "\n".join(f"- **{f.name}**: {f.detail}" for f in t.flags) or "no flags")
            w.file_writer.add_summary(sei)
    for g in groups:
        with SummaryWriter(str(tb / "curves" / g.slug)) as w:
            for s, pts in cv[g.label].items():
                for e, acc in pts:
                    w.add_scalar(f"curve/{s}", acc, _step(e))
        _write_examples(tb, g)
    for label, stats in jl.items():
        with SummaryWriter(str(tb / "jacobian" / _slug(label))) as w:
            for s, pts in stats.items():
                for lam, v in pts:
                    w.add_scalar(f"jac_vs_lam/{s}", v, _step(lam))
    with SummaryWriter(str(tb / "matrix")) as w:
        for title, m in mx.items():
            for j, c in enumerate(m["cols"]):
                for r, row in zip(m["rows"], m["acc"]):
                    if row[j] is not None:
                        w.add_scalar(f"matrix/{_slug(title)}/eps_test_{c:g}", row[j], _step(r))


def _slug(s: str) -> str:
    """A file/run name: "AT+EntM (λ=0.5, ε=0.3)" -> "AT+EntM_lam0.5_eps0.3"."""
    s = s.replace("λ=", "lam").replace("ε=", "eps")
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", s).strip("_")


def _write_examples(tb: Path, g: Group) -> None:
    """A few adversarial examples of the group's first seed that kept them, per eps (TB + PNG)."""
    from torch.utils.tensorboard import SummaryWriter

    from .checkpoint import load

    t = next((t for t in g.trials if (t.dir / "adv_examples.pt").exists()), None)
    if t is None:
        return
    try:
        ex = load(t.dir / "adv_examples.pt")
    except Exception:  # a truncated or foreign file must not break the whole report
        return
    import torch
    import torchvision.utils as vutils

    png = tb.parent / "examples"
    png.mkdir(exist_ok=True)
    with SummaryWriter(str(tb / "examples" / g.slug)) as w:
        for eps in sorted(ex, key=float):
            e = ex[eps]
            rows = torch.cat([e["clean"], e["x"]]) if "clean" in e else e["x"]  # clean row above adversarial row
            grid = vutils.make_grid(rows.float(), nrow=len(e["x"]), padding=2, pad_value=1.0)
            w.add_image(f"adv/eps_{float(eps):g}", grid, 0)
            w.add_text(f"adv/eps_{float(eps):g}", f"{t.name} ({e.get('attack', 'attack')}, top: clean, bottom: "
                       f"adversarial): label {e['y'].tolist()}, prediction {e['pred'].tolist()}")
            big = torch.nn.functional.interpolate(grid[None], scale_factor=3, mode="nearest")[0]
            vutils.save_image(big, png / f"{g.slug}__test_eps{float(eps):g}.png")


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
        lines(f"acc_vs_eps_{_slug(s)}.png", {k: c[s] for k, c in cv.items() if s in c}, "test ε", "accuracy",
              f"{s}: accuracy vs test ε (mean over seeds)", ylim=(-0.02, 1.02))
    for stat in ("logits_mean", "softmax_mean"):
        lines(f"jacobian_vs_lam_{stat}.png", {k: v[stat] for k, v in jl.items() if stat in v}, "λ", f"‖∂f/∂x‖_F ({stat})",
              f"input-Jacobian norm vs λ ({stat})", yscale="log")
    for title, m in matrices(groups).items():
        fig, ax = plt.subplots(figsize=(1 + 0.8 * len(m["cols"]), 1 + 0.6 * len(m["rows"])))
        a = [[float("nan") if v is None else v for v in row] for row in m["acc"]]
        ax.imshow(a, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i, row in enumerate(a):
            for j, v in enumerate(row):
                ax.text(j, i, "" if math.isnan(v) else f"{100 * v:.0f}", ha="center", va="center", color="w", fontsize=8)
        ax.set(xticks=range(len(m["cols"])), xticklabels=[f"{c:g}" for c in m["cols"]], yticks=range(len(m["rows"])),
               yticklabels=[f"{r:g}" for r in m["rows"]], xlabel="ε_test", ylabel="ε_train", title=f"worst-case acc, {title}")
        files.append(_save(fig, out / f"matrix_{_slug(title)}.png", plt))
    return files


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ driver
@dataclass
class Summary:
    out: Path
    n_trials: int
    unfinished: list
    ignored: list
    markdown: str
    flags: dict  # trial name -> [Flag]
    transfers: dict


def aggregate(run_dir, out=None, transfer: bool = True, rules: Optional[au.AuditRules] = None, device=None) -> Summary:
    """Read the run, audit every trial, write ``out`` (default ``RUN/aggregate``). Raises
    NoTrialsError when the run has no trials at all (finished or not)."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "aggregate"
    scan = scan_run(run_dir, exclude=[out])
    if not scan.trials and not scan.unfinished:
        raise NoTrialsError(f"no trials under {run_dir} (no result.json, config.json or checkpoint.pt)")
    transfers, errors = au.transfers_for_run([(t.dir, t.record) for t in scan.trials], _read_json(out / "transfer.json"),
                                             device) if transfer else ({}, {})
    for t in scan.trials:
        if t.name in transfers:
            t.record["transfer"] = transfers[t.name]
        t.skipped += errors.get(t.name, [])
        t.flags = au.audit(t.record, rules, t.skipped)
    groups = group_trials(scan.trials)
    tables = build_tables(groups)
    md = [f"# Aggregate of {run_dir.name}", "", f"{len(scan.trials)} finished trial(s); {len(scan.unfinished)} unfinished "
          f"trial(s) skipped.", ""] + [table_markdown(t) for t in tables]
    md += [matrix_markdown(k, m) for k, m in matrices(groups).items()]
    audit_md = "\n".join(f"- {t.name}: " + ("; ".join(str(f) for f in t.flags) or "no flags") for t in scan.trials)
    markdown = "\n".join(md) + "\n## Audit flags\n\n" + (audit_md or "(no finished trials)") + "\n"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir(parents=True)
    try:
        (tmp / "tables.md").write_text(markdown)
        for tab in tables:
            write_table_files(tab, tmp)
        (tmp / "transfer.json").write_text(json.dumps(transfers, indent=1))
        summary = {"run_dir": str(run_dir), "n_trials": len(scan.trials), "n_unfinished": len(scan.unfinished),
                   "unfinished": [str(p) for p in scan.unfinished], "ignored": [str(p) for p in scan.ignored],
                   "flags": {t.name: [f.as_dict() for f in t.flags] for t in scan.trials},
                   "skipped_checks": {t.name: t.skipped for t in scan.trials}, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        if scan.trials:
            write_tensorboard(tmp / "tb", scan.trials, groups, markdown, audit_md)
            write_figures(tmp / "figures", groups)
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Summary(out, len(scan.trials), scan.unfinished, scan.ignored, markdown, {t.name: t.flags for t in scan.trials}, transfers)


def _swap(tmp: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, half-written by someone else, or JSON lines (Ray)
        return {}
    return d if isinstance(d, dict) else {}
