"""The columns of a table and what fills a cell: ``(key, kind, label, eps)`` with kind ``clean``,
``attack`` (one of our attacks), ``worst`` (our per-example worst case), ``autoattack`` (the worst
case over ours and AutoAttack, on the AutoAttack points; where AutoAttack did not run at that eps,
ours and what AutoAttack broke at smaller eps: :func:`autoattack_ran` says which) or ``aa_ours`` (ours
on those points); :func:`cell` reads a record, :func:`mask_name` names a column's per-point outcome
in ``points.npz``."""

from __future__ import annotations

from typing import Optional


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


def autoattack_ran(record: dict, eps: float) -> Optional[bool]:
    """Whether AutoAttack ran at ``eps`` in this record (None: the record has no AutoAttack column
    there). Records from before the informative rule have an ``ours`` entry only where it ran."""
    w = next((r for r in record["worst_case"] if r["eps"] == eps), None)
    if w is None or "ours" not in w:
        return None
    return bool((w.get("autoattack") or {"ran": True})["ran"])


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
