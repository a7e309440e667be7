"""Claims as comparisons, and their verdicts from an aggregate (``ur-aggregate RUN --claims FILE``).

A claims file (YAML; ``results/claims.yaml`` holds the paper's) states each claim as a comparison
the tables already make, decided before any result is seen::

    alpha: 0.05                      # family-wise level (Holm over the eps of each attack, per row)
    seeds: 5                         # each row's paired seeds needed for a verdict (optional, default 1)
    claims:
      - id: a-ls
        says: "(a) LS improves robustness to small perturbations over standard training"
        method: {defense: ls}        # the rows: every row whose fields match (lam: [...] to restrict)
        baseline: standard           # the rows' registry baseline must be this defense
        column: AA                   # AA (ours + AutoAttack), worst (ours), clean, or an attack label (fgsm, pgd10)
        eps: 0.05
        direction: greater           # method - baseline
        min_effect: 0.01             # the smallest effect that matters (accuracy, 0.01 = 1 point)

Each matching row's paired difference with its baseline (same seeds, same points: ``docs/statistics.md``)
decides, in the claimed direction:

- **supported**: the 95 % interval excludes 0, the Holm-corrected p-value is below ``alpha`` and the
  difference is at least ``min_effect``;
- **refuted**: the interval's upper end is below ``min_effect`` (no effect that matters, or the
  opposite one);
- **inconclusive**: neither;
- **not tested**: the aggregate has no row the claim names, or no paired difference for it (no
  baseline row, no per-point outcomes), or the row has fewer paired seeds than the file's ``seeds``
  (a part run seed by seed, not all of it yet: its difference is shown, not decided): the claim was
  not put to the test, which is not a finding.

A claim's verdict is per row (each λ, each training ε); the seed-level test is shown beside the
point-level one.

A claim about a per-trial statistic, a Jacobian column of ``trials.csv`` (``column:
jacobian_logits_mean``, ``adv_jacobian_softmax_mean``, ...: no ``eps``), is decided with the seed as
the unit: per seed the row's trial and its baseline's (same seed) give the log ratio of the two
values; the paired t-test over seeds gives its 95 % interval and p (no Holm: one test per row), and
the difference is the relative change exp(mean log ratio) - 1, so ``min_effect: 0.1`` is a 10 %
change. Fewer than 2 paired seeds: not tested.

Weak evaluations are claims with ``column: fgsm`` or ``pgd10``: what a weaker attack would have
concluded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..defenses import DEFENSES
from ..errors import UserError
from ..stats import fmt_p as _fmt_p

VERDICTS = ("supported", "refuted", "inconclusive", "not tested")


def is_per_trial(column: str) -> bool:
    return column.startswith(("jacobian_", "adv_jacobian_"))


class ClaimsError(UserError, ValueError):
    """A bad claims file (one line naming the claim and key)."""


@dataclass(frozen=True)
class Claim:
    id: str
    says: str
    method: dict
    baseline: str
    column: str
    eps: float
    direction: str = "greater"
    min_effect: float = 0.01
    view: str = ""  # e.g. "weak: FGSM alone"

    @property
    def per_trial(self) -> bool:
        """A per-trial statistic of ``trials.csv`` (a Jacobian column), decided over seeds."""
        return is_per_trial(self.column)

    @property
    def key(self) -> str:
        """The table column the claim reads: ``clean``, ``worst@eps``, ``AA@eps``, ``<label>@eps``,
        or a per-trial statistic's name."""
        if self.column == "clean" or self.per_trial:
            return self.column
        return f"{self.column}@{self.eps:g}"


@dataclass
class Claims:
    claims: list
    alpha: float = 0.05
    source: str = field(default="")
    seeds: int = 1  # the paired seeds a row needs for a verdict (the seed is the unit of inference)


def load(path: Path) -> Claims:
    """The claims of ``path``; ClaimsError (one line) on anything malformed."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClaimsError(f"{path}: cannot read the claims ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list) or not data["claims"]:
        raise ClaimsError(f"{path}: expected a mapping with a non-empty list under 'claims'")
    out, seen = [], set()
    for i, c in enumerate(data["claims"]):
        where = f"{path}: claims[{i}]"
        if not isinstance(c, dict):
            raise ClaimsError(f"{where}: expected a mapping")
        unknown = sorted(set(c) - {f for f in Claim.__dataclass_fields__})
        if unknown:
            raise ClaimsError(f"{where}.{unknown[0]}: unknown key")
        for k in ("id", "method", "baseline", "column"):
            if k not in c:
                raise ClaimsError(f"{where}: missing '{k}'")
        if c["id"] in seen:
            raise ClaimsError(f"{where}.id: {c['id']!r} twice")
        seen.add(c["id"])
        if not isinstance(c["method"], dict) or c["method"].get("defense") not in DEFENSES:
            raise ClaimsError(f"{where}.method: expected {{defense: one of {', '.join(DEFENSES)}}}")
        if c["baseline"] not in DEFENSES:
            raise ClaimsError(f"{where}.baseline: {c['baseline']!r} is not one of {', '.join(DEFENSES)}")
        if c.get("direction", "greater") not in ("greater", "less"):
            raise ClaimsError(f"{where}.direction: expected greater or less")
        if (
            c["column"] != "clean"
            and not is_per_trial(c["column"])
            and not isinstance(c.get("eps"), (int, float))
        ):
            raise ClaimsError(f"{where}.eps: expected a number (the column's eps)")
        me = c.get("min_effect", 0.01)
        if isinstance(me, bool) or not isinstance(me, (int, float)) or not 0 <= me <= 1:
            raise ClaimsError(f"{where}.min_effect: expected a number in [0, 1]")
        out.append(Claim(**{"says": "", "eps": 0.0, **c}))
    alpha = data.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ClaimsError(f"{path}: alpha: expected a number in (0, 1)")
    seeds = data.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ClaimsError(f"{path}: seeds: expected a whole number >= 1 (the paired seeds a verdict needs)")
    unknown = sorted(set(data) - {"alpha", "seeds", "claims"})
    if unknown:
        raise ClaimsError(f"{path}: {unknown[0]}: unknown key (expected alpha, seeds, claims)")
    return Claims(out, float(alpha), str(path), seeds)


def _cells(entry: dict) -> dict:
    """{column key: cell} of one table entry (``table_*.json``)."""
    cells = {"clean": entry["clean"]}
    cells.update({f"worst@{e}": v for e, v in entry.get("worst_case_acc", {}).items()})
    cells.update({f"AA@{e}": v for e, v in entry.get("autoattack_acc", {}).items()})
    for label, by_eps in entry.get("robust_acc", {}).items():
        cells.update({f"{label}@{e}": v for e, v in by_eps.items()})
    return cells


def _matches(entry: dict, claim: Claim) -> bool:
    m = claim.method
    if entry["defense"] != m["defense"]:
        return False
    if "lam" in m and not any(abs(entry["lam"] - float(v)) <= 1e-9 for v in _as_list(m["lam"])):
        return False
    if "eps_train" in m and not any(
        abs(entry["eps_train"] - float(v)) <= 1e-9 for v in _as_list(m["eps_train"])
    ):
        return False
    base = entry.get("baseline") or ""
    return base.startswith(DEFENSES[claim.baseline].display)


def fmt_p(p: Optional[float]) -> str:
    return "—" if p is None else _fmt_p(p)


def _as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def per_trial_difference(csv_rows: list, entry: dict, base: Optional[dict], column: str) -> tuple:
    """(difference dict or None, why not, the seeds paired) of a per-trial statistic, row vs baseline:
    ``diff``/``lo``/``hi`` the relative change (exp of the mean log ratio and its t interval, - 1),
    ``p`` the paired t-test over seeds (:func:`stats.seed_level` on the logs)."""
    import math

    import numpy as np

    from ..stats import seed_level

    if base is None:
        return None, "no baseline row in the table", []
    if not csv_rows:
        return None, "no per-trial values (the aggregate has no trials.csv: it predates them)", []
    by = {r["trial"]: r for r in csv_rows}

    def values(e):
        out = {}
        for t in e.get("trials", []):
            r = by.get(t)
            if r is not None and r.get(column) not in (None, ""):
                out[int(r["seed"])] = float(r[column])
        return out

    m, b = values(entry), values(base)
    seeds = sorted(s for s in set(m) & set(b) if m[s] > 0 and b[s] > 0)
    if len(seeds) < 2:
        return None, f"{len(seeds)} seed(s) with {column} in both rows: a seed-level test needs 2", seeds
    t = seed_level(np.log([[m[s]] for s in seeds]), np.log([[b[s]] for s in seeds]))
    mean = float(np.mean(t["seed_diffs"]))
    rel = lambda x: math.exp(x) - 1  # noqa: E731
    return {"diff": rel(mean), "lo": rel(t["seed_lo"]), "hi": rel(t["seed_hi"]), "p": t["p_seed"],
            "p_seed": t["p_seed"]}, "", seeds  # fmt: skip


def decide(d: Optional[dict], claim: Claim, alpha: float) -> tuple:
    """(verdict, why) of one paired difference (:func:`stats.paired_difference` + p_holm, or
    :func:`per_trial_difference` for a per-trial statistic: then relative, in %)."""
    if d is None:
        return "not tested", "no paired difference (no baseline row, or no per-point outcomes)"
    sign = 1.0 if claim.direction == "greater" else -1.0
    effect, lo, hi = (
        sign * d["diff"],
        min(sign * d["lo"], sign * d["hi"]),
        max(sign * d["lo"], sign * d["hi"]),
    )
    p = d.get("p_holm", d["p"])
    me = 100 * claim.min_effect
    unit, test = ("%", "p_seed") if claim.per_trial else ("points", "p_holm")
    if lo > 0 and p < alpha and effect >= claim.min_effect:
        return (
            "supported",
            f"above 0, {test} {fmt_p(p)} < {alpha:g}, effect {100 * effect:+.1f} >= {me:g} {unit}",
        )
    if hi < claim.min_effect:
        return "refuted", f"upper end {100 * hi:+.1f} below the smallest effect that matters ({me:g} {unit})"
    return (
        "inconclusive",
        f"interval [{100 * lo:+.1f}, {100 * hi:+.1f}] in the claimed direction, {test} {fmt_p(p)}",
    )


def write(aggregate: Path, claims: Claims) -> list:
    """The verdicts of ``claims`` on the aggregate, also written beside its tables
    (``AggregateDir.claims_md``, ``claims_json``)."""
    from ..rundir import AggregateDir

    rows = verdicts(aggregate, claims)
    out = AggregateDir(aggregate)
    out.claims_md.write_text(markdown(rows, claims))
    out.claims_json.write_text(
        json.dumps({"source": claims.source, "alpha": claims.alpha, "verdicts": rows}, indent=1)
    )
    return rows


def verdicts(aggregate: Path, claims: Claims) -> list:
    """One verdict per (claim, matching row) of the aggregate's tables (``table_*.json``)."""
    import csv

    from ..rundir import AggregateDir

    tables = [json.loads(p.read_text()) for p in sorted(Path(aggregate).glob("table_*.json"))]
    csv_path = AggregateDir(aggregate).trials_csv
    csv_rows = list(csv.DictReader(csv_path.open())) if csv_path.exists() else []
    out = []
    for claim in claims.claims:
        rows = [(t, e) for t in tables for e in t["entries"] if _matches(e, claim)]
        if not rows:
            out.append({"claim": claim.id, "says": claim.says, "row": None, "verdict": "not tested",
                        "why": "no row of the aggregate matches the claim's method and baseline"})  # fmt: skip
            continue
        for t, e in rows:
            if claim.per_trial:
                base = next((b for b in t["entries"] if b["name"] == e.get("baseline")), None)
                d, why_not, seeds = per_trial_difference(csv_rows, e, base, claim.column)
            else:
                d, why_not = (_cells(e).get(claim.key) or {}).get("diff"), ""
                seeds = e.get("paired_seeds", [])
            verdict, why = decide(d, claim, claims.alpha)
            why = why_not or why
            if d is not None and len(seeds) < claims.seeds:
                verdict = "not tested"
                why = f"{len(seeds)} of the {claims.seeds} seeds the claims file asks for: shown, not decided"
            out.append(
                {
                    "claim": claim.id,
                    "says": claim.says,
                    "view": claim.view,
                    "dataset": t["dataset"],
                    "row": e["name"],
                    "baseline": e.get("baseline"),
                    "column": claim.key,
                    "direction": claim.direction,
                    "min_effect": claim.min_effect,
                    "seeds": seeds,
                    "relative": claim.per_trial,
                    "diff": None if d is None else d["diff"],
                    "ci": None if d is None else [d["lo"], d["hi"]],
                    "p_holm": None if d is None else d.get("p_holm"),
                    "p_seed": None if d is None else d.get("p_seed"),
                    "verdict": verdict,
                    "why": why,
                }
            )
    return out


def markdown(rows: list, claims: Claims) -> str:
    """The verdict table (what the README's verdict table is generated from)."""
    few = f" or fewer paired seeds than the {claims.seeds} the file asks for" if claims.seeds > 1 else ""
    lines = [
        f"Verdicts of `{claims.source}` (α = {claims.alpha:g}; supported: the 95 % interval excludes 0, "
        "Holm-corrected p < α and the effect reaches the claim's smallest effect; refuted: the interval's "
        f"upper end is below it; else inconclusive; not tested: no row or no paired difference{few}). Differences "
        "in points, method − baseline, same seeds and points (a Jacobian statistic: the relative change in %, "
        "decided by the seeds' test); `seeds p`: the paired t-test over seeds.",
        "",
        "| claim | row − baseline | column | seeds | difference [95 % CI] | p (Holm) | seeds p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["row"] is None:
            lines.append(f"| {r['claim']} | — | — | — | — | — | — | {r['verdict']}: {r['why']} |")
            continue
        pct = " %" if r.get("relative") else ""
        diff = (
            "—"
            if r["diff"] is None
            else f"{100 * r['diff']:+.1f}{pct} [{100 * r['ci'][0]:+.1f}, {100 * r['ci'][1]:+.1f}]"
        )
        view = f" ({r['view']})" if r["view"] else ""
        why = f": {r['why']}" if r["verdict"] == "not tested" else ""
        lines.append(
            f"| {r['claim']}{view} | {r['row']} − {r['baseline']} | {r['column']} | {len(r['seeds'])} | {diff} | "
            f"{fmt_p(r['p_holm'])} | {fmt_p(r['p_seed'])} | **{r['verdict']}**{why} |"
        )
    return "\n".join(lines) + "\n"


def into_readme(readme: Path, aggregate: Path, text: str) -> None:
    """Replace the block of ``readme`` between ``<!-- verdicts: <aggregate> -->`` and the next
    ``<!-- /verdicts -->`` with ``text`` (a report's verdict table is generated, never edited by hand)."""
    begin, end = f"<!-- verdicts: {Path(aggregate).as_posix().rstrip('/')} -->", "<!-- /verdicts -->"
    try:
        old = Path(readme).read_text()
    except OSError as e:
        raise ClaimsError(f"--readme {readme}: cannot read it ({e.strerror})") from None
    i = old.find(begin)
    j = old.find(end, i + len(begin)) if i >= 0 else -1
    if i < 0 or j < 0:
        raise ClaimsError(f"--readme {readme}: no '{begin}' ... '{end}' block to fill")
    Path(readme).write_text(old[: i + len(begin)] + "\n" + text + old[j:])


def main(argv=None) -> int:
    """``python -m uncertainty_robust.report.claims AGGREGATE CLAIMS``: the verdicts of a claims file
    on an aggregate that exists already (a committed one, e.g. ``results/combined``), without
    aggregating again."""
    import argparse
    import sys

    from ..errors import exit_on_user_error

    p = argparse.ArgumentParser(prog="python -m uncertainty_robust.report.claims", description=main.__doc__)
    p.add_argument("aggregate", type=Path, help="an aggregate directory (table_*.json)")
    p.add_argument("claims", type=Path, help="a claims file")
    p.add_argument(
        "--readme",
        type=Path,
        metavar="FILE",
        help="also put the verdict table into FILE, between the lines '<!-- verdicts: AGGREGATE -->' and "
        "'<!-- /verdicts -->' (what is between them is replaced; nothing else is touched)",
    )

    @exit_on_user_error
    def run(args) -> int:
        if not list(args.aggregate.glob("table_*.json")):
            raise ClaimsError(f"{args.aggregate}: no table_*.json (not an aggregate directory)")
        claims = load(args.claims)
        text = markdown(write(args.aggregate, claims), claims)
        if args.readme is not None:
            into_readme(args.readme, args.aggregate, text)
        print(text, end="")
        return 0

    return run(p.parse_args(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
