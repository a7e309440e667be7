"""The files of a table and of a run's trials: ``table_<dataset>_<model>.csv`` / ``.json`` (every cell,
its interval and its paired difference with the baseline, RobustBench-style entries) and
``trials.csv`` (one row per trial: the seed-level data every seed-level test can be recomputed from)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..rundir import AggregateDir
from .columns import autoattack_ran
from .tables import _flags_text

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
    "p_seed": "p_seed",
    "seed_lo": "seed_lo",
    "seed_hi": "seed_hi",
    "p_seed_signflip": "p_seed_signflip",
}


def _csv(v) -> str:
    return "" if v is None else repr(v)


def write_table_files(tab: dict, out: AggregateDir) -> None:
    csv_path, json_path = (out.table(tab["dataset"], tab["model"], s) for s in ("csv", "json"))
    cols = tab["columns"]
    settings = "; ".join(
        f"{k}:{v['steps']}x{v['restarts']} step {v['step_size']}" for k, v in tab["attacks"].items()
    )
    with open(csv_path, "w", newline="") as f:
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
                "autoattack_ran_in_seeds": {
                    f"{c[3]:g}": r.get("autoattack_ran", {}).get(c[0]) for c in cols if c[1] == "autoattack"
                },
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
    json_path.write_text(json.dumps(doc, indent=1))


TRIAL_FIELDS = ("defense", "lam", "eps", "seed", "dataset", "model", "width", "epochs", "n_train", "adv_fraction",
                "entropy_on", "inner_loss", "ls_form")  # fmt: skip
JACOBIAN_STATS = (("logits", "mean"), ("softmax", "mean"), ("margin", "mean"), ("boundary_linf", "median"))


def write_trials_csv(trials: list, path: Path) -> None:
    """One row per trial (the seed, a training run, is the unit of the seed-level tests): its
    config, checkpoint and epoch, clean accuracy, per eps our worst case, ours + AutoAttack and
    whether AutoAttack ran there, and its Jacobian statistics (clean points, then adversarial)."""
    eps = sorted({w["eps"] for t in trials for w in t.record["worst_case"] if w["eps"] > 0})
    head = ["trial", *TRIAL_FIELDS, "checkpoint", "epoch", "n_points", "clean"]
    head += [f"{k}@{e:g}" for e in eps for k in ("worst", "AA", "AA_ran")]
    head += [f"jacobian_{o}_{s}" for o, s in JACOBIAN_STATS] + [
        f"adv_jacobian_{o}_{s}" for o, s in JACOBIAN_STATS
    ]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for t in sorted(trials, key=lambda t: t.name):
            rec, cfg = t.record, t.record.get("config") or {}
            by = {x["eps"]: x for x in rec["worst_case"]}
            row = [
                t.name,
                *[cfg.get(k) for k in TRIAL_FIELDS],
                t.checkpoint,
                rec.get("epoch"),
                rec["n_points"],
            ]
            row.append(rec["clean_acc"])
            for e in eps:
                x = by.get(e)
                ran = autoattack_ran(rec, e)
                row += (
                    [None, None, None]
                    if x is None
                    else [(x.get("ours") or x)["acc"], x["acc"] if "ours" in x else None, ran]
                )
            jac = rec.get("jacobian") or {}
            row += [(jac.get(o) or {}).get(s) for o, s in JACOBIAN_STATS]
            row += [((jac.get("adversarial") or {}).get(o) or {}).get(s) for o, s in JACOBIAN_STATS]
            w.writerow(["" if v is None else v for v in row])
