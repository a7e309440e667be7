"""Claims as comparisons (``uncertainty_robust/report/claims.py``): the verdict rule at its edges on
hand-written table entries, row matching by defense, λ and baseline, and a bad claims file refused
with one line before any aggregation."""

from __future__ import annotations

import json

import pytest

from uncertainty_robust.report import claims as cl

CLAIMS = """
alpha: 0.05
claims:
  - {id: a, says: LS helps at small eps, method: {defense: ls}, baseline: standard, column: AA, eps: 0.05,
     direction: greater, min_effect: 0.01}
  - {id: b, method: {defense: at_ls, lam: [0.1]}, baseline: at, column: worst, eps: 0.2, direction: greater}
  - {id: weak, view: "weak: FGSM alone", method: {defense: ls}, baseline: standard, column: fgsm, eps: 0.05}
  - {id: none, method: {defense: entm}, baseline: standard, column: clean}
"""


def _diff(diff, lo, hi, p_holm):
    return {"diff": diff, "lo": lo, "hi": hi, "p": p_holm, "p_holm": p_holm, "p_seed": 0.2}


def _entry(name, defense, lam, baseline, cells):
    e = {"name": name, "defense": defense, "lam": lam, "eps_train": 0.0, "baseline": baseline,
         "paired_seeds": [0, 1, 2], "clean": {"diff": None}, "worst_case_acc": {}, "autoattack_acc": {},
         "robust_acc": {}}  # fmt: skip
    for key, d in cells.items():
        label, eps = key.split("@")
        where = {"worst": e["worst_case_acc"], "AA": e["autoattack_acc"]}.get(label)
        if where is None:
            where = e["robust_acc"].setdefault(label, {})
        where[eps] = {"mean": 0.5, "diff": d}
    return e


@pytest.fixture()
def aggregate(tmp_path):
    entries = [
        _entry(
            "LS (α=0.1)",
            "ls",
            0.1,
            "Standard",
            {"AA@0.05": _diff(0.03, 0.01, 0.05, 0.01), "fgsm@0.05": _diff(0.10, 0.05, 0.15, 0.001)},
        ),  # fmt: skip
        _entry(
            "LS (α=0.4)",
            "ls",
            0.4,
            "Standard",
            {"AA@0.05": _diff(-0.02, -0.04, 0.005, 0.03), "fgsm@0.05": _diff(0.002, -0.01, 0.02, 0.5)},
        ),  # fmt: skip
        _entry(
            "AT+LS (α=0.1, ε=0.2)",
            "at_ls",
            0.1,
            "AT (ε=0.2)",
            {"worst@0.2": _diff(0.008, 0.001, 0.015, 0.04)},
        ),
        _entry(
            "AT+LS (α=0.2, ε=0.2)", "at_ls", 0.2, "AT (ε=0.2)", {"worst@0.2": _diff(0.05, 0.02, 0.08, 0.001)}
        ),
    ]
    (tmp_path / "table_mnist_small_cnn.json").write_text(json.dumps({"dataset": "mnist", "entries": entries}))
    (tmp_path / "claims.yaml").write_text(CLAIMS)
    return tmp_path


def test_verdicts_follow_the_rule_at_its_edges(aggregate):
    claims = cl.load(aggregate / "claims.yaml")
    rows = cl.write(aggregate, claims)
    got = {(r["claim"], r["row"]): r["verdict"] for r in rows}
    assert got[("a", "LS (α=0.1)")] == "supported"  # above 0, significant, +3 >= 1 point
    assert got[("a", "LS (α=0.4)")] == "refuted"  # upper end +0.5 < 1 point: no effect that matters
    # significant but smaller than the effect that matters: neither supported nor refuted
    assert got[("b", "AT+LS (α=0.1, ε=0.2)")] == "inconclusive"
    assert ("b", "AT+LS (α=0.2, ε=0.2)") not in got  # lam: [0.1] restricts the rows
    assert got[("weak", "LS (α=0.1)")] == "supported" and got[("weak", "LS (α=0.4)")] == "inconclusive"
    assert got[("none", None)] == "not tested"  # no EntM row: said, not silently dropped, not a finding
    md = (aggregate / "claims.md").read_text()
    assert (
        "| a | LS (α=0.1) − Standard | AA@0.05 | 3 | +3.0 [+1.0, +5.0] |" in md and "weak: FGSM alone" in md
    )
    assert json.loads((aggregate / "claims.json").read_text())["verdicts"] == rows
    less = cl.Claim(id="x", says="", method={"defense": "ls"}, baseline="standard", column="AA", eps=0.05,
                    direction="less")  # fmt: skip
    assert cl.decide(_diff(-0.03, -0.05, -0.01, 0.01), less, 0.05)[0] == "supported"


@pytest.mark.parametrize(
    "text, words",
    [
        ("claims: []\n", "non-empty list"),
        (
            "claims:\n  - {id: a, method: {defense: mart}, baseline: standard, column: AA, eps: 0.1}\n",
            "method",
        ),
        ("claims:\n  - {id: a, method: {defense: ls}, baseline: at, column: AA}\n", "eps"),
        (
            "claims:\n  - {id: a, method: {defense: ls}, baseline: standard, column: AA, eps: 0.1, sign: +}\n",
            "sign",
        ),
        (
            "claims:\n  - {id: a, method: {defense: ls}, baseline: standard, column: clean, min_effect: 5}\n",
            "min_effect",
        ),
    ],
)
def test_a_bad_claims_file_exits_2_with_one_line_before_any_work(text, words, tmp_path, capsys):
    from sweeps import aggregate

    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(cl.ClaimsError, match=words):
        cl.load(f)
    (tmp_path / "run").mkdir()
    assert aggregate.main([str(tmp_path / "run"), "--claims", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "run" / "aggregate").exists()
