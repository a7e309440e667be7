"""Compact reproduction tables from a sweep's aggregate (reads the trials' result.json files and the
audit flags the aggregation wrote): one row per method, mean ± std over seeds of clean accuracy,
per-example worst-case accuracy over FGSM/PGD/CW at each test eps, PGD and FGSM at each eps, the
input-Jacobian norms and the predictive entropy, and the audit flags.

    python results/summarize.py runs/repro_mnist > results/repro_mnist.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from uncertainty_robust.report import group_trials, scan_run
from uncertainty_robust.report.scan import mean_std


def fmt(vals, scale=100.0, digits=1) -> str:
    m, s, n = mean_std([v * scale for v in vals if v is not None])
    if m is None:
        return "—"
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if s is not None else "")


def summarize(run_dir: Path) -> str:
    scan = scan_run(run_dir)
    flags = {}
    summary = run_dir / "aggregate" / "summary.json"
    if summary.exists():
        for name, fl in json.loads(summary.read_text()).get("flags", {}).items():
            flags[name] = fl
    groups = group_trials(scan.trials)
    t0 = scan.trials[0].record
    eps = sorted({w["eps"] for t in scan.trials for w in t.record["worst_case"] if w["eps"] > 0})
    labels = []
    for a in t0["attacks"]:
        if a["label"] not in labels:
            labels.append(a["label"])
    pgd = next((lab for lab in labels if lab.startswith("pgd")), None)
    out = [
        f"dataset **{t0['dataset']}**, model **{t0['model']}** (width {t0['config']['width']:g}), "
        f"{t0['config']['epochs']} epochs, n_train {t0['config']['n_train'] or 'all'}; "
        f"**{t0['n_points']} test points** per trial; attacks {', '.join(labels)} (L∞, step 2.5·ε/steps, "
        f"random start; CW = PGD on the margin loss); AT: PGD-{t0['config']['pgd_steps']} "
        f"(step {t0['config']['eps_step']}) at the ε_train shown; worst = per-example worst case over the "
        f"attacks; accuracy in %, mean ± std over seeds; ‖J‖ = mean per-example Frobenius norm of "
        f"∂f/∂x (exact, {t0['jacobian']['logits']['n']} points). {len(scan.trials)} finished trials"
        + (f", {len(scan.unfinished)} unfinished" if scan.unfinished else "")
        + ".",
        "",
    ]
    head = (
        ["Method", "seeds", "clean"]
        + [f"worst@{e:g}" for e in eps]
        + [f"{pgd}@{e:g}" for e in eps]
        + ["‖J‖ logits", "‖J‖ softmax", "entropy", "audit flags"]
    )
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for g in groups:
        recs = [t.record for t in g.trials]
        row = [g.label, str(len(recs)), fmt([r["clean_acc"] for r in recs])]
        for e in eps:
            row.append(fmt([next((w["acc"] for w in r["worst_case"] if w["eps"] == e), None) for r in recs]))
        for e in eps:
            row.append(
                fmt(
                    [
                        next((a["acc"] for a in r["attacks"] if a["label"] == pgd and a["eps"] == e), None)
                        for r in recs
                    ]
                )
            )
        row.append(fmt([r["jacobian"]["logits"]["mean"] for r in recs], 1, 2))
        row.append(fmt([r["jacobian"]["softmax"]["mean"] for r in recs], 1, 3))
        row.append(fmt([r["entropy_mean"] for r in recs], 1, 3))
        fl = sorted({f.split(":")[0] for t in g.trials for f in _flag_names(flags.get(t.name, []))})
        row.append(", ".join(fl) or "—")
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def _flag_names(fl) -> list:
    return [f["name"] if isinstance(f, dict) else str(f) for f in fl]


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))
