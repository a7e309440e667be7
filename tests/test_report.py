"""The aggregation step on a real (tiny) sweep: what TensorBoard's own reader finds in the event
files matches the result.json files, the tables hold the hand-computed mean ± std over seeds and
the confidence intervals and paired comparisons computed directly from the trials' points.npz,
unfinished trials and Ray's files are skipped and counted, reruns replace aggregate/ cleanly."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_meta
from tensorboard.plugins.hparams import plugin_data_pb2

from uncertainty_robust import report
from uncertainty_robust.config import AttackSpec, TrialConfig
from uncertainty_robust.rundir import AggregateDir
from uncertainty_robust.trial import run_trial

REPO = Path(__file__).resolve().parent.parent
COMMON = dict(
    width=0.25,
    n_train=1000,
    epochs=1,
    n_eval=100,
    jacobian_points=50,
    test_eps=[0.0, 0.1, 0.2, 0.3],
    attacks=[AttackSpec("fgsm", 1), AttackSpec("pgd", 10), AttackSpec("cw", 10)],
    autoattack=[
        AttackSpec("apgd-ce", 10)
    ],  # CI-sized AutoAttack column (the full ensemble: tests/test_autoattack.py)
    autoattack_points=50,
    pgd_steps=3,
)
SPECS = [
    dict(defense="standard", seed=0),
    dict(defense="standard", seed=1),
    dict(defense="entm", lam=0.5, seed=0),
    dict(defense="entm", lam=0.5, seed=1),
    dict(defense="at", eps=0.1, seed=0),
    dict(defense="at", eps=0.3, seed=0),
    dict(defense="at_entm", lam=0.5, eps=0.3, seed=0),
]


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """RUN/trials/<name>/ for 7 real trials, 2 unfinished ones, and Ray's own files beside them."""
    run = tmp_path_factory.mktemp("sweep") / "run"
    for kw in SPECS:
        cfg = TrialConfig(**COMMON, **kw)
        run_trial(cfg, run / "trials" / f"{cfg.short_name()}_{cfg.trial_id()}", keep_examples=4)
    unf = TrialConfig(**COMMON, defense="ls", lam=0.1)
    (run / "trials" / "ls_unfinished").mkdir()
    (run / "trials" / "ls_unfinished" / "config.json").write_text(json.dumps(unf.to_dict()))
    (run / "trials" / "crashed").mkdir()
    (run / "trials" / "crashed" / "checkpoint.pt").write_bytes(b"")
    ray = run / "train" / "ur_trial_0"  # Ray Tune/Train: JSON-lines result.json and checkpoint_* copies
    (ray / "checkpoint_000001").mkdir(parents=True)
    (ray / "checkpoint_000001" / "checkpoint.pt").write_bytes(b"")
    (ray / "result.json").write_text('{"clean_acc": 0.1, "training_iteration": 1}\n{"clean_acc": 0.2}\n')
    (run / "grid.yaml").write_text("defenses: [standard]\n")
    return run


@pytest.fixture(scope="session")
def aggregated(sweep):
    return report.aggregate(sweep, transfer=True)


def results(run):
    return {p.parent.name: json.loads(p.read_text()) for p in (run / "trials").glob("*/result.json")}


def test_scan_counts_unfinished_and_ignores_ray_files(sweep):
    scan = report.scan_run(sweep)
    assert len(scan.trials) == len(SPECS)
    assert sorted(p.name for p in scan.unfinished) == ["crashed", "ls_unfinished"]
    assert [p.parent.name for p in scan.ignored] == ["ur_trial_0"]


def test_hparams_rows_match_result_files(sweep, aggregated):
    tb = aggregated.out / "tb"
    recs = results(sweep)
    runs = sorted(p.name for p in (tb / "trials").iterdir())
    assert runs == sorted(recs)  # one HParams session per finished trial
    for name in runs:
        ea = EventAccumulator(str(tb / "trials" / name), size_guidance={"scalars": 0, "tensors": 0}).Reload()
        content = ea.PluginTagToContent(hp_meta.PLUGIN_NAME)
        ssi = plugin_data_pb2.HParamsPluginData.FromString(
            content[hp_meta.SESSION_START_INFO_TAG]
        ).session_start_info
        r, cfg = recs[name], recs[name]["config"]
        hp = {
            k: (v.string_value if v.HasField("string_value") else v.number_value)
            for k, v in ssi.hparams.items()
        }
        assert hp["defense"] == cfg["defense"] and hp["dataset"] == r["dataset"] and hp["model"] == r["model"]
        assert hp["lam"] == pytest.approx(cfg["lam"]) and hp["seed"] == cfg["seed"]
        assert hp["eps"] == pytest.approx(cfg["eps"] if cfg["defense"].startswith("at") else 0.0)
        scalar = lambda tag, ea=ea: ea.Scalars(tag)[-1].value  # noqa: E731
        assert scalar("clean_acc") == pytest.approx(r["clean_acc"])
        for w in r["worst_case"]:
            assert scalar(f"worst/eps_{w['eps']:g}") == pytest.approx((w.get("ours") or w)["acc"])
            if "ours" in w:  # where AutoAttack ran: ours + AutoAttack, on its points
                assert scalar(f"autoattack/eps_{w['eps']:g}") == pytest.approx(w["acc"])
        for a in r["attacks"]:
            assert scalar(f"acc/{a['label']}/eps_{a['eps']:g}") == pytest.approx(a["acc"])
        for out in ("logits", "softmax"):
            for stat in ("mean", "median"):
                assert scalar(f"jacobian/{out}_{stat}") == pytest.approx(r["jacobian"][out][stat], rel=1e-6)
        assert scalar("entropy_mean") == pytest.approx(r["entropy_mean"])
        assert scalar("ece") == pytest.approx(r["ece"])
        assert scalar("audit/flags") == len(aggregated.flags[name])
        assert "acc/pgd10/eps_0.3" in ea.Tags()["scalars"]
    root = EventAccumulator(str(tb), size_guidance={"tensors": 0}).Reload()
    exp = plugin_data_pb2.HParamsPluginData.FromString(
        root.PluginTagToContent(hp_meta.PLUGIN_NAME)[hp_meta.EXPERIMENT_TAG]
    ).experiment
    assert {h.name for h in exp.hparam_infos} >= {"defense", "lam", "eps", "seed", "dataset", "model"}
    defenses = next(h for h in exp.hparam_infos if h.name == "defense").domain_discrete.values
    assert sorted(v.string_value for v in defenses) == sorted({r["config"]["defense"] for r in recs.values()})
    assert {m.name.tag for m in exp.metric_infos} >= {
        "clean_acc",
        "worst/eps_0.3",
        "acc/cw10/eps_0.2",
        "audit/flags",
    }
    assert "custom_scalars__config__" in root.Tags()["tensors"]
    assert {"tables/text_summary", "audit/text_summary"} <= set(root.Tags()["tensors"])


def test_curves_and_examples_in_tensorboard(sweep, aggregated):
    tb, recs = aggregated.out / "tb", results(sweep)
    std = [r for r in recs.values() if r["config"]["defense"] == "standard"]
    ea = EventAccumulator(str(tb / "curves" / "Standard")).Reload()
    worst = {e.step: e.value for e in ea.Scalars("curve/worst")}
    assert sorted(worst) == [0, 100, 200, 300]  # x = round(1000 * eps)
    assert worst[300] == pytest.approx(sum(r["worst_case"][3]["acc"] for r in std) / 2)
    pgd = {e.step: e.value for e in ea.Scalars("curve/pgd10")}
    assert pgd[100] == pytest.approx(
        sum(a["acc"] for r in std for a in r["attacks"] if a["label"] == "pgd10" and a["eps"] == 0.1) / 2
    )
    ex = EventAccumulator(str(tb / "examples" / "AT_eps0.3"), size_guidance={"images": 0}).Reload()
    assert "adv/eps_0.3" in ex.Tags()["images"]
    jac = EventAccumulator(str(tb / "jacobian" / "EntM")).Reload()
    assert [e.step for e in jac.Scalars("jac_vs_lam/logits_mean")] == [500]
    mx = EventAccumulator(str(tb / "matrix")).Reload()
    rows = {e.step: e.value for e in mx.Scalars("matrix/Standard_AT/eps_test_0.1")}
    assert sorted(rows) == [0, 100, 300]  # eps_train 0 (standard), 0.1, 0.3
    assert list((aggregated.out / "examples").glob("*.png"))


def test_tables_hold_mean_and_std_over_seeds(sweep, aggregated):
    recs = results(sweep)
    std = sorted(
        (r for r in recs.values() if r["config"]["defense"] == "standard"), key=lambda r: r["config"]["seed"]
    )
    a, b = ((r["worst_case"][1].get("ours") or r["worst_case"][1])["acc"] for r in std)  # worst@: ours
    mean, sd = (a + b) / 2, abs(a - b) / math.sqrt(2)  # sample std (ddof=1) of two values
    rows = list(csv.DictReader(open(aggregated.out / "table_mnist_embedded_small_cnn.csv")))
    assert [r["method"] for r in rows] == [
        "Standard",
        "EntM (λ=0.5)",
        "AT (ε=0.1)",
        "AT (ε=0.3)",
        "AT+EntM (λ=0.5, ε=0.3)",
    ]
    row = rows[0]
    assert (
        row["n_seeds"] == "2"
        and row["seeds"] == "0 1"
        and row["n_points"] == "100"
        and row["dataset"] == "mnist_embedded"
    )
    assert float(row["worst@0.1_mean"]) == pytest.approx(mean) and float(
        row["worst@0.1_std"]
    ) == pytest.approx(sd)
    assert rows[2]["worst@0.1_std"] == ""  # one seed: no std
    assert "pgd10:10x1" in row["attack_settings"]
    doc = json.loads((aggregated.out / "table_mnist_embedded_small_cnn.json").read_text())
    assert doc["n_points"] == [100] and doc["norm"] == "Linf" and doc["eps"] == [0.1, 0.2, 0.3]
    assert (
        doc["attack_settings"]["pgd10"]["steps"] == 10 and doc["attack_settings"]["cw10"]["loss"] == "margin"
    )
    e = doc["entries"][0]
    assert e["name"] == "Standard" and e["n_seeds"] == 2
    assert e["worst_case_acc"]["0.1"]["mean"] == pytest.approx(mean) and e["worst_case_acc"]["0.1"][
        "std"
    ] == pytest.approx(sd)
    pa, pb = (next(x["acc"] for x in r["attacks"] if x["label"] == "pgd10" and x["eps"] == 0.2) for r in std)
    assert e["robust_acc"]["pgd10"]["0.2"]["mean"] == pytest.approx((pa + pb) / 2)
    assert e["clean_acc"] == pytest.approx((std[0]["clean_acc"] + std[1]["clean_acc"]) / 2)
    md = (aggregated.out / "tables.md").read_text()
    assert (
        "dataset: mnist_embedded" in md
        and "model: small_cnn" in md
        and "n_points: 100" in md
        and "10 step(s)" in md
    )
    assert f"| Standard | 2 | {100 * (std[0]['clean_acc'] + std[1]['clean_acc']) / 2:.1f} [" in md
    assert "2 unfinished trial(s) skipped" in md and "audit flags" in md


def test_table_statistics_match_the_per_point_outcomes(sweep, aggregated):
    """The CI of a cell and the paired comparison of a row, as the CSV/JSON/Markdown report them,
    equal what report.stats computes from the trials' own points.npz; the baseline of each row is
    the registry's (EntM -> Standard, AT -> Standard, AT+EntM -> AT at the same eps)."""
    import numpy as np
    from scipy.stats import binomtest

    from uncertainty_robust import stats
    from uncertainty_robust.trial import read_points

    recs = results(sweep)
    by = {}
    for name, r in recs.items():
        idx, m = read_points(sweep / "trials" / name)
        by.setdefault((r["config"]["defense"], r["config"]["eps"]), {})[r["config"]["seed"]] = (idx, m)
    std, entm = by[("standard", 0.3)], by[("entm", 0.3)]
    assert all(np.array_equal(std[0][0], v[0]) for d in by.values() for v in d.values())  # same test points
    col = "worst@0.1"
    M = np.stack([std[s][1]["worst/0.1"] for s in (0, 1)])
    ci = stats.mean_ci(M)
    rows = {
        r["method"]: r for r in csv.DictReader(open(aggregated.out / "table_mnist_embedded_small_cnn.csv"))
    }
    assert float(rows["Standard"][f"{col}_ci_lo"]) == pytest.approx(ci["lo"])
    assert float(rows["Standard"][f"{col}_ci_hi"]) == pytest.approx(ci["hi"])
    assert ci["lo"] <= float(rows["Standard"][f"{col}_mean"]) <= ci["hi"]
    A = np.stack([entm[s][1]["worst/0.1"] for s in (0, 1)])
    d = stats.paired_difference(A, M)
    row = rows["EntM (λ=0.5)"]
    assert row["baseline"] == "Standard" and row["paired_seeds"] == "0 1"
    assert float(row[f"{col}_diff"]) == pytest.approx(A.mean() - M.mean())
    assert float(row[f"{col}_diff_lo"]) == pytest.approx(d["lo"]) and float(row[f"{col}_p"]) == pytest.approx(
        d["p"]
    )
    n10, n01 = int((A & ~M).sum()), int((~A & M).sum())
    assert (int(row[f"{col}_n_better"]), int(row[f"{col}_n_worse"])) == (n10, n01)
    want = binomtest(n10, n10 + n01, 0.5).pvalue if n10 + n01 else 1.0
    assert float(row[f"{col}_p_mcnemar"]) == pytest.approx(want)
    assert rows["AT (ε=0.3)"]["baseline"] == "Standard" and rows["AT (ε=0.3)"]["paired_seeds"] == "0"
    assert rows["AT+EntM (λ=0.5, ε=0.3)"]["baseline"] == "AT (ε=0.3)"
    assert rows["Standard"]["baseline"] == "" and rows["Standard"][f"{col}_diff"] == ""
    # Holm over the worst-case columns of one row, by hand
    ps = [float(row[f"worst@{e}_p"]) for e in ("0.1", "0.2", "0.3")]
    order = sorted(range(3), key=lambda i: ps[i])
    adj, run = [0.0] * 3, 0.0
    for k, i in enumerate(order):
        run = max(run, min(1.0, (3 - k) * ps[i]))
        adj[i] = run
    assert [float(row[f"worst@{e}_p_holm"]) for e in ("0.1", "0.2", "0.3")] == pytest.approx(adj)
    doc = json.loads((aggregated.out / "table_mnist_embedded_small_cnn.json").read_text())
    e = next(x for x in doc["entries"] if x["name"] == "EntM (λ=0.5)")
    assert e["worst_case_acc"]["0.1"]["diff"]["p"] == pytest.approx(d["p"]) and e["baseline"] == "Standard"
    assert doc["statistics"]["n_boot"] == stats.N_BOOT
    md = (aggregated.out / "tables.md").read_text()
    assert "| Method − baseline | paired seed ids |" in md  # the seeds themselves, not a count
    assert "| EntM (λ=0.5) − Standard | 0 1 |" in md and "Holm" in md
    corr = json.loads((aggregated.out / "jacobian_correlation.json").read_text())
    (c,) = corr
    assert c["n_trials"] == len(SPECS) and "adv_margin_mean" in c["correlation"]
    assert "Jacobian statistics vs worst-case accuracy" in md


def rec(defense, seed, clean, worst, lam=0.0, width=1.0, jac_logits=None):
    """A hand-written result record: clean and PGD-20 accuracy at eps 0.3, optionally a logit Jacobian."""
    cfg = TrialConfig(defense=defense, lam=lam, seed=seed, width=width, test_eps=[0, 0.3]).to_dict()
    record = {
        "config": cfg,
        "dataset": cfg["dataset"],
        "model": cfg["model"],
        "clean_acc": clean,
        "n_points": 500,
        "attacks": [
            {
                "attack": "pgd",
                "label": "pgd20",
                "norm": "Linf",
                "eps": e,
                "acc": w,
                "n_points": 500,
                "steps": 20,
                "restarts": 1,
                "step_size": 2.5 * e / 20,
            }
            for e, w in ((0.0, clean), (0.3, worst))
        ],
        "worst_case": [
            {"eps": 0.0, "acc": clean, "n_points": 500},
            {"eps": 0.3, "acc": worst, "n_points": 500},
        ],
    }
    if jac_logits is not None:
        record["jacobian"] = {"logits": {"mean": jac_logits}}
    return record


def test_table_math_on_hand_written_records():
    trials = [
        report.Trial(Path(f"t{i}"), r)
        for i, r in enumerate(
            [
                rec("entm", 0, 0.9, 0.1, 0.5),
                rec("entm", 1, 0.8, 0.2, 0.5),
                rec("entm", 2, 0.7, 0.6, 0.5),
                rec("entm", 0, 0.5, 0.0, 0.5, width=0.5),
            ]
        )
    ]
    trials[0].flags = [report.au.Flag("zero_gradients", "x")]
    (tab,) = report.build_tables(report.group_trials(trials))
    assert [c[0] for c in tab["columns"]] == ["clean", "pgd20@0.3", "worst@0.3"]
    r0, r1 = tab["rows"]
    assert r0["method"] == "EntM (λ=0.5) [width=0.5]" and r1["method"] == "EntM (λ=0.5) [width=1.0]"
    m, s, n = r1["cells"]["worst@0.3"]
    assert (
        n == 3
        and m == pytest.approx(0.3)
        and s == pytest.approx(math.sqrt(((0.2) ** 2 + 0.1**2 + 0.3**2) / 2))
    )
    assert r1["flags"] == {"zero_gradients": 1}
    md = report.table_markdown(tab)
    assert (
        "| EntM (λ=0.5) [width=1.0] | 3 | 80.0 ± 10.0 | 30.0 ± 26.5 | 30.0 ± 26.5 | zero_gradients (1/3) |"
        in md
    )


def test_jacobian_correlation_within_the_adversarial_and_natural_subsets():
    # Simpson's paradox planted: across all 8 trials a smaller logit Jacobian goes with more
    # robustness (AT vs not), within each subset with less; the report must show both.
    trials = [
        report.Trial(Path(f"t{i}"), rec(d, seed, 0.9, acc, lam=lam, jac_logits=jac))
        for i, (d, lam, seed, acc, jac) in enumerate(
            [
                ("entm", 0.5, 0, 0.10, 13.0),
                ("entm", 0.5, 1, 0.08, 11.0),
                ("entm", 0.5, 2, 0.05, 8.0),
                ("entm", 0.5, 3, 0.02, 6.0),
                ("at_entm", 0.5, 0, 0.62, 4.0),
                ("at_entm", 0.5, 1, 0.61, 3.0),
                ("at_entm", 0.5, 2, 0.59, 2.5),
                ("at_entm", 0.5, 3, 0.55, 2.0),
            ]
        )
    ]
    (c,) = report.jacobian_correlations(report.group_trials(trials))
    assert c["correlation"]["logits_mean"]["worst@0.3"]["rho"] < -0.5
    within = c["within"]
    assert {k: v["n_trials"] for k, v in within.items()} == {
        "adversarially trained": 4,
        "not adversarially trained": 4,
    }
    for sub in within.values():
        assert sub["correlation"]["logits_mean"]["worst@0.3"]["rho"] == pytest.approx(1.0)
    md = report.correlation_markdown(c)
    assert "Within the 4 adversarially trained trials:" in md and md.count("| logits_mean | +1.00") == 2
    # one subset only: nothing "within" to report
    (c,) = report.jacobian_correlations(report.group_trials(trials[:4]))
    assert c["within"] == {} and "Within" not in report.correlation_markdown(c)


def test_jacobian_correlation_over_configuration_means():
    """Seeds of one configuration are not independent points: the correlation over configurations
    takes one point per row (the means over its seeds). Planted: across 5 configurations a larger
    logit Jacobian goes with less robustness (rho -1 over the means), while within each the seeds
    move both together; the per-trial rho over 15 points says something else."""
    trials, i = [], 0
    for k, lam in enumerate((0.1, 0.2, 0.3, 0.4, 0.5)):
        for seed in range(3):
            jac, acc = 1.0 + 0.1 * k + 0.5 * seed, 0.5 - 0.01 * k + 0.05 * seed
            trials.append(report.Trial(Path(f"t{i}"), rec("entm", seed, 0.9, acc, lam=lam, jac_logits=jac)))
            i += 1
    (c,) = report.jacobian_correlations(report.group_trials(trials))
    over = c["over_configurations"]
    assert over["n_configurations"] == 5 and over["within"] == {}
    r = over["correlation"]["logits_mean"]["worst@0.3"]
    assert r["rho"] == pytest.approx(-1.0) and r["n"] == 5
    assert c["correlation"]["logits_mean"]["worst@0.3"]["rho"] > 0  # per trial: the seeds dominate
    assert "Over the 5 configurations" in report.correlation_markdown(c)


def test_rerun_replaces_aggregate_and_reuses_transfers(sweep, aggregated, monkeypatch):
    out = aggregated.out
    tr = json.loads((out / "transfer.json").read_text())
    assert set(tr) == set(results(sweep))  # a standard trial transfers from its other seed
    for name, t in tr.items():
        assert all(
            s["trial"] != results(sweep)[name]["name"] or s["seed"] != results(sweep)[name]["config"]["seed"]
            for s in t.get("sources", [])
        )
        assert t.get("not_tested") or any(
            s["role"] == "standard" or s["role"].startswith("same") for s in t["sources"]
        )
    (out / "stale.txt").write_text("from an older aggregation")
    from uncertainty_robust.audit import transfer as transfer_module

    monkeypatch.setattr(
        transfer_module, "transfer_for_trial", lambda *a, **k: pytest.fail("cached transfer recomputed")
    )
    again = report.aggregate(sweep, transfer=True)
    assert again.out == out and not (out / "stale.txt").exists()
    assert json.loads((out / "transfer.json").read_text()) == tr
    assert [p.name for p in sweep.iterdir() if p.name.startswith(".")] == []  # no temp dirs left
    assert (out / "tables.md").read_text().split("## Audit")[0] == aggregated.markdown.split("## Audit")[0]


def test_figures_when_matplotlib_is_available(aggregated):
    pytest.importorskip("matplotlib")
    figs = {p.name for p in (aggregated.out / "figures").glob("*.png")}
    assert {
        "acc_vs_eps_worst.png",
        "acc_vs_eps_pgd10.png",
        "jacobian_vs_lam_logits_mean.png",
        "matrix_Standard_AT.png",
        "validation_curves.png",
    } <= figs


def test_figure_caption_names_data_split_model_points_and_seeds(sweep):
    from uncertainty_robust.report.figures import caption, validation_curves

    groups = report.group_trials(report.scan_run(sweep).trials)
    cap = caption(groups)
    recs = [t.record for g in groups for t in g.trials]
    for part in (
        recs[0]["dataset"],
        "test split",
        f"{recs[0]['n_points']} points",
        recs[0]["model"],
        "seeds 0",
    ):
        assert part in cap, (part, cap)
    val = validation_curves(groups)
    std = dict(val[f"{groups[0].label} robust"])
    hist = [t.record["train"]["history"] for t in groups[0].trials]
    assert sorted(std) == [h["epoch"] for h in hist[0]]  # one point per epoch, mean over the seeds
    assert std[1] == pytest.approx(sum(h[0]["val/robust_acc"] for h in hist) / len(hist))


def test_cli_script_and_module(sweep, tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "OMP_NUM_THREADS": "1",
    }  # the script finds the repo itself
    out = tmp_path / "agg"
    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "sweeps" / "aggregate.py"),
            str(sweep),
            "--out",
            str(out),
            "--no-transfer",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert (
        "| Standard | 2 |" in p.stdout
        and "2 unfinished trial(s) skipped" in p.stdout
        and "audit:" in p.stdout
    )
    assert (out / "tb").is_dir() and not (sweep / "aggregate" / "stale.txt").exists()
    (tmp_path / "empty").mkdir()
    p = subprocess.run(
        [sys.executable, "-m", "sweeps.aggregate", str(tmp_path / "empty")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "no trials" in p.stderr


def test_autoattack_column_and_json(tmp_path):
    """At an AutoAttack eps the table shows our worst case (all points) and AA (ours + AutoAttack, on
    the AutoAttack points, with ours on those same points beside it when they are a subset); the
    RobustBench-style JSON carries autoattack_acc."""

    def rec(seed, ours, with_aa):
        cfg = TrialConfig(defense="at", eps=0.3, seed=seed, test_eps=[0, 0.3]).to_dict()
        pgd = {"attack": "pgd", "label": "pgd20", "norm": "Linf", "eps": 0.3, "acc": ours, "n_points": 200}
        w = {"eps": 0.3, "acc": with_aa, "n_points": 100, "ours": {"acc": ours, "n_points": 200}}
        return {
            "config": cfg,
            "dataset": cfg["dataset"],
            "model": cfg["model"],
            "clean_acc": 0.9,
            "n_points": 200,
            "attacks": [pgd | {"steps": 20, "restarts": 1, "step_size": 0.0375}],
            "worst_case": [w | {"ours_on_points": ours + 0.02}],
            "autoattack": {
                "attacks": ["autoattack"],
                "components": ["apgd-ce100", "square5000"],
                "n_points": 100,
            },
        }

    pairs = [(0.5, 0.42), (0.6, 0.5)]
    trials = [report.Trial(Path(f"t{i}"), rec(i, o, a)) for i, (o, a) in enumerate(pairs)]
    (tab,) = report.build_tables(report.group_trials(trials))
    names = [c[0] for c in tab["columns"]]
    assert names == ["clean", "pgd20@0.3", "worst@0.3", "AA@0.3", "ours_on_AA_points@0.3"]
    cells = tab["rows"][0]["cells"]
    assert cells["worst@0.3"][0] == pytest.approx(0.55) and cells["AA@0.3"][0] == pytest.approx(0.46)
    md = report.table_markdown(tab)
    assert "AA = per-example worst case over our L-inf attacks and AutoAttack (autoattack" in md
    assert "on 100 of" in md and "ours_on_AA_points" not in md
    assert "| 55.0 ± 7.1 | 46.0 ± 5.7 (ours 57.0 ± 7.1) |" in md  # ours on the same 100 points beside AA
    report.files.write_table_files(tab, AggregateDir(tmp_path))
    doc = json.loads(next(tmp_path.glob("table_*.json")).read_text())
    e = doc["entries"][0]
    assert e["autoattack_acc"]["0.3"]["mean"] == pytest.approx(0.46)
    assert e["worst_case_acc"]["0.3"]["mean"] == pytest.approx(0.55)
    assert e["worst_case_acc_on_autoattack_points"]["0.3"]["mean"] == pytest.approx(0.57)
    assert doc["autoattack"]["n_points"] == [100]


def test_trials_csv_and_the_seed_level_test_let_a_reader_recompute_every_comparison(sweep, aggregated):
    """``trials.csv``: one row per trial with its config, clean, ours and ours + AutoAttack per eps
    (and whether AutoAttack ran), from its record; the tables' seed-level p for EntM vs Standard
    (seeds 0, 1) is the paired t-test of the per-seed differences recomputed from those rows."""
    import csv as csv_mod

    from scipy.stats import ttest_rel

    recs = results(sweep)
    rows = list(csv_mod.DictReader(open(AggregateDir(aggregated.out).trials_csv)))
    assert sorted(r["trial"] for r in rows) == sorted(recs)
    for r in rows:
        rec = recs[r["trial"]]
        assert (
            float(r["clean"]) == pytest.approx(rec["clean_acc"]) and int(r["seed"]) == rec["config"]["seed"]
        )
        for w in (w for w in rec["worst_case"] if w["eps"] > 0):
            assert float(r[f"worst@{w['eps']:g}"]) == pytest.approx((w.get("ours") or w)["acc"])
            assert r[f"AA_ran@{w['eps']:g}"] == str(w["autoattack"]["ran"])
    by = {
        (r["defense"], int(r["seed"])): float(r["worst@0.1"])
        for r in rows
        if r["defense"] in ("standard", "entm")
    }
    ref = ttest_rel([by[("entm", s)] for s in (0, 1)], [by[("standard", s)] for s in (0, 1)])
    table = list(
        csv_mod.DictReader(open(AggregateDir(aggregated.out).table("mnist_embedded", "small_cnn", "csv")))
    )
    entm = next(r for r in table if r["method"].startswith("EntM"))
    assert entm["worst@0.1_p_seed"] != "" and float(entm["worst@0.1_p_seed"]) == pytest.approx(ref.pvalue)


def test_an_archived_run_aggregates_to_the_same_tables(sweep, aggregated, tmp_path):
    """``sweeps/archive.py``: a run's finished trials, three small files each (no checkpoint, no
    model), aggregate on their own to the same tables, per-trial rows and paired tests; the transfer
    check, which needs the models, says "not tested"; unfinished trials are not archived; a trial
    archived before with another config is refused (exit 2, one line)."""
    from sweeps import archive

    assert archive.main([str(sweep), "--out", str(tmp_path)]) == 0
    dest = tmp_path / sweep.name
    got = sorted(p.name for p in (dest / "trials").iterdir())
    assert got == sorted(results(sweep)) and "ls_unfinished" not in got
    assert all(
        sorted(f.name for f in d.iterdir()) == sorted(archive.TRIAL_FILES)
        for d in (dest / "trials").iterdir()
    )
    s = report.aggregate(dest, out=tmp_path / "agg", transfer=True)
    a, b = AggregateDir(aggregated.out), AggregateDir(s.out)
    table = ("mnist_embedded", "small_cnn", "json")
    assert json.loads(b.table(*table).read_text()) == json.loads(a.table(*table).read_text())
    assert b.trials_csv.read_text() == a.trials_csv.read_text()
    checks = json.loads(b.summary.read_text())
    assert "transfer_beats_whitebox: not tested" in json.dumps(checks)
    # the same trial id with another config in the archive: refused, nothing overwritten
    victim = next((dest / "trials").iterdir()) / "config.json"
    victim.write_text(json.dumps({**json.loads(victim.read_text()), "seed": 99}))
    out = subprocess.run(
        [sys.executable, "sweeps/archive.py", str(sweep), "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "another trial's config" in out.stderr, out
    assert json.loads(victim.read_text())["seed"] == 99


def test_ctrl_c_on_ur_aggregate_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """Ctrl-C during an aggregation (its bootstraps can take minutes) used to print a traceback."""
    import uncertainty_robust.report as report
    from sweeps import aggregate as aggregate_cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "aggregate", interrupted)
    (tmp_path / "run").mkdir()
    try:
        rc = aggregate_cli.main([str(tmp_path / "run"), "--no-transfer"])
    except KeyboardInterrupt:
        pytest.fail("ur-aggregate let Ctrl-C through (a traceback)")
    assert rc == 130
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and err.startswith("interrupted (SIGINT); ") and "is as it was" in err
    ), err
