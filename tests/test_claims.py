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


def test_a_row_with_fewer_seeds_than_the_file_asks_for_is_shown_not_decided(aggregate):
    """``seeds: N``: a row whose paired seeds are fewer (a part run seed by seed, not all of it yet)
    keeps its difference in the table but gets no verdict; with enough seeds the rule decides as before."""
    text = (aggregate / "claims.yaml").read_text()
    rows = {}
    for need in (3, 4):
        (aggregate / "c.yaml").write_text(f"seeds: {need}\n{text}")
        rows[need] = {(r["claim"], r["row"]): r for r in cl.write(aggregate, cl.load(aggregate / "c.yaml"))}
    assert rows[3][("a", "LS (α=0.1)")]["verdict"] == "supported"  # 3 paired seeds, 3 asked for
    short = rows[4][("a", "LS (α=0.1)")]
    assert short["verdict"] == "not tested" and "3 of the 4 seeds" in short["why"], short
    assert short["diff"] == 0.03 and short["ci"] == [0.01, 0.05]  # shown, not decided
    assert {r["verdict"] for r in rows[4].values()} == {"not tested"}
    md = (aggregate / "claims.md").read_text()
    assert "| a | LS (α=0.1) − Standard | AA@0.05 | 3 | +3.0 [+1.0, +5.0] |" in md
    assert "**not tested**: 3 of the 4 seeds" in md and "fewer paired seeds than the 4" in md


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
        (
            "seeds: 0\nclaims:\n  - {id: a, method: {defense: ls}, baseline: standard, column: clean}\n",
            "seeds",
        ),
        ("seed: 5\nclaims:\n  - {id: a, method: {defense: ls}, baseline: standard, column: clean}\n", "seed"),
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


def test_a_jacobian_claim_is_decided_over_seeds_on_the_log_ratio(tmp_path):
    """(c) as a claim: a Jacobian column of ``trials.csv``, row vs baseline paired by seed (not by
    the order of the rows), the relative change from the log ratio's t interval. Planted: EntM's
    norm is 0.5x standard's in every seed (supported at min_effect 0.1), LS's 0.98-1.02x (refuted:
    below a 10 % change), and a row with one seed is not tested."""
    import csv
    import math

    from scipy.stats import ttest_rel

    trials = []  # (trial, defense, lam, seed, jacobian_logits_mean)
    for s, base in enumerate([4.0, 6.0, 5.0, 7.0]):
        trials += [
            (f"standard_s{s}", "standard", 0.0, s, base),
            (f"entm_s{s}", "entm", 0.3, s, base * (0.5 + 0.01 * s)),
        ]
        trials += [(f"ls_s{s}", "ls", 0.1, s, base * (0.98 + 0.01 * s))]
    trials.append(("ls2_s0", "ls", 0.2, 0, 1.0))
    trials.reverse()  # pairing is by seed, whatever the order
    with open(tmp_path / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "defense", "lam", "seed", "jacobian_logits_mean"])
        w.writerows(trials)

    def entry(name, defense, lam, baseline):
        e = _entry(name, defense, lam, baseline, {})
        e["trials"] = [t[0] for t in trials if t[1] == defense and t[2] == lam]
        return e

    entries = [entry("Standard", "standard", 0.0, None), entry("EntM (λ=0.3)", "entm", 0.3, "Standard"),
               entry("LS (α=0.1)", "ls", 0.1, "Standard"), entry("LS (α=0.2)", "ls", 0.2, "Standard")]  # fmt: skip
    (tmp_path / "table_fmnist_small_cnn.json").write_text(
        json.dumps({"dataset": "fmnist", "entries": entries})
    )
    (tmp_path / "c.yaml").write_text(
        "claims:\n"
        "  - {id: c-entm, method: {defense: entm}, baseline: standard, column: jacobian_logits_mean,"
        " direction: less, min_effect: 0.1}\n"
        "  - {id: c-ls, method: {defense: ls}, baseline: standard, column: jacobian_logits_mean,"
        " direction: less, min_effect: 0.1}\n"
    )
    rows = {(r["claim"], r["row"]): r for r in cl.write(tmp_path, cl.load(tmp_path / "c.yaml"))}
    entm = rows[("c-entm", "EntM (λ=0.3)")]
    assert entm["verdict"] == "supported" and entm["seeds"] == [0, 1, 2, 3], entm
    base = {t[3]: t[4] for t in trials if t[1] == "standard"}
    ratios = [t[4] / base[t[3]] for t in sorted(trials) if t[1] == "entm"]
    assert entm["diff"] == pytest.approx(math.exp(sum(map(math.log, ratios)) / 4) - 1)
    ref = ttest_rel([math.log(r) for r in ratios], [0.0] * 4)
    assert entm["p_seed"] == pytest.approx(ref.pvalue)
    assert rows[("c-ls", "LS (α=0.1)")]["verdict"] == "refuted"
    assert rows[("c-ls", "LS (α=0.2)")]["verdict"] == "not tested"
    assert "1 seed(s)" in rows[("c-ls", "LS (α=0.2)")]["why"] and rows[("c-ls", "LS (α=0.2)")]["seeds"] == [0]
    md = (tmp_path / "claims.md").read_text()
    assert (
        f"| c-entm | EntM (λ=0.3) − Standard | jacobian_logits_mean | 4 | {100 * entm['diff']:+.1f} % [" in md
    )


def test_the_verdict_table_is_generated_into_the_readme_block(aggregate, tmp_path, capsys):
    """``--readme``: the verdict table replaces exactly the marked block (twice gives the same file);
    a README without the block: one line, exit 2, the file untouched."""
    readme = tmp_path / "README.md"
    mark = f"<!-- verdicts: {aggregate.as_posix()} -->"
    readme.write_text(f"# before\n{mark}\nstale table\n<!-- /verdicts -->\nafter\n")
    argv = [str(aggregate), str(aggregate / "claims.yaml"), "--readme", str(readme)]
    assert cl.main(argv) == 0
    once = readme.read_text()
    assert "stale table" not in once and once.startswith(f"# before\n{mark}\nVerdicts of ")
    assert once.endswith("<!-- /verdicts -->\nafter\n") and "| a | LS (α=0.1) − Standard |" in once
    assert cl.main(argv) == 0 and readme.read_text() == once
    readme.write_text("no block\n")
    capsys.readouterr()
    assert cl.main(argv) == 2 and readme.read_text() == "no block\n"
    assert "no '<!-- verdicts:" in capsys.readouterr().err
