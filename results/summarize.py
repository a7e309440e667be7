"""Compact reproduction tables from a sweep's aggregate: the handful of columns the report discusses,
with the aggregation's own numbers (95 % CIs over seeds and test points, paired differences with
each method's baseline, Holm over eps), the Jacobian statistics per method and the audit's flags and
not-tested checks. Everything is read from RUN/aggregate/ (table_*.json, summary.json) and the
trials' result.json; nothing is recomputed here.

    python results/summarize.py runs/repro_fmnist > results/repro_fmnist/summary.md
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from uncertainty_robust.report import group_trials, scan_run
from uncertainty_robust.report.scan import mean_std

WORST_EPS = ("0.025", "0.05", "0.1", "0.2", "0.3")  # the worst-case columns shown (where accuracy is not ~0)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _cell(c: dict | None) -> str:
    if not c or c.get("mean") is None:
        return "—"
    ci = c.get("ci")
    return _pct(c["mean"]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")


def _diff(c: dict | None) -> str:
    d = (c or {}).get("diff")
    if not d:
        return "—"
    p = d.get("p_holm", d["p"])
    ps = "p<0.001" if p < 0.001 else f"p={p:.3f}"
    return f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] {ps}" + (
        " **\\***" if d.get("significant") else ""
    )


def _join(x) -> str:
    return "/".join(str(v) for v in x) if isinstance(x, list) else str(x)


def _n(tab: dict) -> str:
    return _join((tab.get("autoattack") or {}).get("n_points") or "?")


def _columns(entry: dict) -> list[tuple[str, dict | None]]:
    cols = [("clean", entry["clean"])]
    worst = entry.get("worst_case_acc") or {}
    cols += [(f"worst@{e}", worst.get(e)) for e in WORST_EPS if e in worst]
    cols += [(f"AA@{e}", v) for e, v in sorted((entry.get("autoattack_acc") or {}).items())]
    return cols


def _jacobian_rows(run_dir: Path) -> list[str]:
    scan = scan_run(run_dir)
    keys = [
        ("logits", None),
        ("softmax", None),
        ("margin", None),
        ("boundary_linf", "median"),
        ("logits", "adv"),
        ("softmax", "adv"),
        ("margin", "adv"),
    ]
    head = [
        "‖J‖ logits",
        "‖J‖ softmax",
        "‖J‖ margin",
        "boundary dist. (median)",
        "adv ‖J‖ logits",
        "adv ‖J‖ softmax",
        "adv ‖J‖ margin",
        "entropy (nats)",
    ]
    out = ["| Method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for g in group_trials(scan.trials):
        row = [g.label]
        for name, how in keys:
            vals = []
            for t in g.trials:
                j = t.record.get("jacobian") or {}
                src = (j.get("adversarial") or {}) if how == "adv" else j
                st = src.get(name) or {}
                vals.append(st.get("median" if how == "median" else "mean"))
            m, s, _ = mean_std([v for v in vals if v is not None])
            row.append("—" if m is None else f"{m:.3g}" + (f" ± {s:.2g}" if s is not None else ""))
        m, s, _ = mean_std(
            [t.record.get("entropy_mean") for t in g.trials if t.record.get("entropy_mean") is not None]
        )
        row.append("—" if m is None else f"{m:.3f}" + (f" ± {s:.2g}" if s is not None else ""))
        out.append("| " + " | ".join(row) + " |")
    return out


def _audit_rows(run_dir: Path, entries: list[dict]) -> list[str]:
    summary = json.loads((run_dir / "aggregate" / "summary.json").read_text())
    checks = summary.get("checks", {})
    out = ["| Method | trials | flags (trials) | not tested (trials) |", "|---|---|---|---|"]
    for e in entries:
        flagged, untested = Counter(), Counter()
        for t in e["trials"]:
            for c in checks.get(t, []):
                if c["status"] == "flagged":
                    flagged[c["name"]] += 1
                elif c["status"] == "not tested":
                    untested[c["name"]] += 1
        fl = ", ".join(f"{k} ({v})" for k, v in sorted(flagged.items())) or "none"
        nt = ", ".join(f"{k} ({v})" for k, v in sorted(untested.items())) or "none"
        out.append(f"| {e['name']} | {len(e['trials'])} | {fl} | {nt} |")
    return out


def summarize(run_dir: Path) -> str:
    out = []
    for table in sorted((run_dir / "aggregate").glob("table_*.json")):
        tab = json.loads(table.read_text())
        entries = tab["entries"]
        cols = [name for name, _ in _columns(entries[0])]
        st = tab.get("statistics") or {}
        out += [
            f"## {tab['dataset']} · {tab['architecture']} ({_join(tab.get('checkpoint', 'last'))} checkpoint)",
            "",
            f"{_join(tab['n_points'])} test points per trial (AutoAttack: {_n(tab)} of them); accuracy in %, "
            "mean over seeds [95 % CI, two-level bootstrap over seeds and test "
            f"points]. worst = per-example worst case over {', '.join(tab['attack_settings'])} (L∞); "
            f"AA = per-example worst case over those and AutoAttack "
            f"({', '.join(tab.get('autoattack', {}).get('attacks', []) or ['?'])}) on the AutoAttack points. "
            f"{st.get('n_boot', '?')} bootstrap resamples.",
            "",
            "| Method | seeds | " + " | ".join(cols) + " |",
            "|---|---|" + "---|" * len(cols),
        ]
        for e in entries:
            out.append(
                f"| {e['name']} | {e['n_seeds']} | " + " | ".join(_cell(c) for _, c in _columns(e)) + " |"
            )
        out += [
            "",
            "Paired differences, method − baseline (percentage points) [95 % CI], p-value (bootstrap, "
            "Holm over the eps values of that column family); **\\*** = significant at 5 % after the "
            "correction. Same seeds, same test points.",
            "",
            "| Method − baseline | paired seeds | " + " | ".join(cols) + " |",
            "|---|---|" + "---|" * len(cols),
        ]
        for e in entries:
            if e.get("baseline"):
                seeds = ",".join(str(s) for s in e.get("paired_seeds", []))
                out.append(
                    f"| {e['name']} − {e['baseline']} | {seeds} | "
                    + " | ".join(_diff(c) for _, c in _columns(e))
                    + " |"
                )
        out += ["", "Audit (docs/audit.md): flags raised and checks that could not fire, per method.", ""]
        out += _audit_rows(run_dir, entries)
    out += [
        "",
        "## Jacobian statistics (exact, mean ± std over seeds of the per-trial mean)",
        "",
        "Frobenius norms of the input Jacobian of the logits, the softmax and the margin z_j* − z_y "
        "(strongest wrong class), at clean test points and (adv) at PGD points of the training eps; "
        "boundary dist. = first-order L∞ distance to the decision boundary, min over wrong "
        "classes j of (z_y − z_j) / ‖∇ₓ(z_y − z_j)‖₁ (signed: negative when misclassified; scale-free).",
        "",
    ]
    out += _jacobian_rows(run_dir)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))
