"""Compact reproduction tables from a sweep's aggregate: the handful of columns the report discusses,
with the aggregation's own numbers (95 % CIs over seeds and test points, paired differences with
each method's baseline, Holm over eps), the Jacobian statistics per method and the audit's flags and
not-tested checks, our attacks against AutoAttack on the same points, and the Jacobian statistics'
correlation with robust accuracy (all trials, and within the adversarially trained / other trials).
Everything is read from RUN/aggregate/ (table_*.json, summary.json) and the
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
from uncertainty_robust.report.series import fmt_rho
from uncertainty_robust.report.tables import fmt_cell, fmt_diff

WORST_EPS = ("0.025", "0.05", "0.1", "0.2", "0.3")  # the worst-case columns shown (where accuracy is not ~0)
CORRELATION_AT = ("worst@0.1", "worst@0.2")  # the Jacobian correlations shown: the training eps and twice it


def _cell(c: dict | None) -> str:
    return fmt_cell(((c or {}).get("mean"), None, None), (c or {}).get("ci")) or "—"


def _diff(c: dict | None) -> str:
    return fmt_diff((c or {}).get("diff") or None, p_key="p_holm", star=" **\\***") or "—"


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


JACOBIAN_COLUMNS = [  # (header, path in result.json, format of the mean)
    ("‖J‖ logits", ("jacobian", "logits", "mean"), ".3g"),
    ("‖J‖ softmax", ("jacobian", "softmax", "mean"), ".3g"),
    ("‖J‖ margin", ("jacobian", "margin", "mean"), ".3g"),
    ("boundary dist. (median)", ("jacobian", "boundary_linf", "median"), ".3g"),
    ("adv ‖J‖ logits", ("jacobian", "adversarial", "logits", "mean"), ".3g"),
    ("adv ‖J‖ softmax", ("jacobian", "adversarial", "softmax", "mean"), ".3g"),
    ("adv ‖J‖ margin", ("jacobian", "adversarial", "margin", "mean"), ".3g"),
    ("entropy (nats)", ("entropy_mean",), ".3f"),
]


def _get(record: dict, path: tuple):
    for k in path:
        record = (record or {}).get(k)
    return record


def _jacobian_rows(run_dir: Path) -> list[str]:
    head = [h for h, _, _ in JACOBIAN_COLUMNS]
    out = ["| Method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for g in group_trials(scan_run(run_dir).trials):
        row = [g.label]
        for _, path, f in JACOBIAN_COLUMNS:
            m, s, _ = mean_std([v for v in (_get(t.record, path) for t in g.trials) if v is not None])
            row.append("—" if m is None else f"{m:{f}}" + (f" ± {s:.2g}" if s is not None else ""))
        out.append("| " + " | ".join(row) + " |")
    return out


def _autoattack_rows(entries: list[dict]) -> list[str]:
    """Our worst case against AutoAttack on the same (AutoAttack) points: the share of the points our
    attacks leave robust that AutoAttack breaks is the evaluation's blind spot for that model."""
    out = [
        "| Method | eps | ours (worst case) | AA (ours + AutoAttack) | lost to AutoAttack | share of ours |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        ours_by_eps = e.get("worst_case_acc_on_autoattack_points") or {}
        for eps, aa in sorted((e.get("autoattack_acc") or {}).items()):
            ours, aa = (ours_by_eps.get(eps) or {}).get("mean"), (aa or {}).get("mean")
            if ours is None or aa is None:
                continue
            share = f"{100 * (ours - aa) / ours:.0f} %" if ours > 0 else "—"
            out.append(
                f"| {e['name']} | {eps} | {100 * ours:.1f} | {100 * aa:.1f} | {100 * (ours - aa):.1f} | {share} |"
            )
    return out


def _correlation_rows(run_dir: Path) -> list[str]:
    """Spearman's rho of each Jacobian statistic with worst-case accuracy at the AutoAttack eps (the
    training eps here), across all trials and within the adversarially trained / other trials; then
    the same over configuration means (one point per row), where the aggregate has them."""
    out = []
    for c in json.loads((run_dir / "aggregate" / "jacobian_correlation.json").read_text()):
        out += _rho_rows(c, "each seed a point", c["n_trials"], "trials", c["correlation"], c.get("within"))
        over = c.get("over_configurations")
        if over:
            out += _rho_rows(
                c,
                "one point per configuration (the mean over its seeds)",
                over["n_configurations"],
                "configurations",
                over["correlation"],
                over.get("within"),
            )
    return out


def _rho_rows(c: dict, unit: str, n: int, what: str, correlation: dict, within) -> list[str]:
    out = []
    subsets = {f"all {n} {what}": correlation} | {
        f"{label} ({sub.get('n_trials', sub.get('n_configurations'))})": sub["correlation"]
        for label, sub in (within or {}).items()
    }
    cols = [k for k in c["robust"] if k in CORRELATION_AT]
    head = [f"{name}, {k}" for name in subsets for k in cols]
    out += [
        f"Spearman's ρ (p) with worst-case accuracy, {c['dataset']} · {c['model']}, {unit} "
        f"(adv_ = at PGD points of eps {'/'.join(f'{e:g}' for e in c['jacobian_adv_eps']) or '—'}):",
        "",
        "| statistic | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
    ]
    for stat in correlation:
        cells = []
        for corr in subsets.values():
            for k in cols:
                cells.append(fmt_rho((corr.get(stat) or {}).get(k), empty="—"))
        out.append(f"| {stat} | " + " | ".join(cells) + " |")
    out.append("")
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
        paired = [e for e in entries if e.get("baseline")]
        out += [
            "",
            "Paired differences, method − baseline (percentage points) [95 % CI], p-value (bootstrap, "
            "Holm over the eps values of that column family); **\\*** = significant at 5 % after the "
            "correction. Same seeds, same test points.",
            "",
        ]
        if not paired:
            out.append(
                "None here: no method of this run has its baseline's trials in the run. Aggregate it "
                "together with the run that has them (as results/combined does)."
            )
        else:
            out += [
                "| Method − baseline | paired seed ids | " + " | ".join(cols) + " |",
                "|---|---|" + "---|" * len(cols),
            ]
        for e in paired:
            seeds = ",".join(str(s) for s in e.get("paired_seeds", []))
            out.append(
                f"| {e['name']} − {e['baseline']} | {seeds} | "
                + " | ".join(_diff(c) for _, c in _columns(e))
                + " |"
            )
        out += [
            "",
            "Our attacks against AutoAttack on the AutoAttack points (accuracy in %, mean over seeds): how "
            "much of what our attacks leave robust AutoAttack breaks.",
            "",
        ]
        out += _autoattack_rows(entries)
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
    out += ["", "## Jacobian statistics vs robustness", ""]
    out += _correlation_rows(run_dir)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))
