"""The trial config: its hash (which names every run directory), its field rules, its bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from common import assert_grid_refused

from uncertainty_robust.attacks import AttackSpec
from uncertainty_robust.config import TrialConfig

REPO = Path(__file__).resolve().parents[1]


def test_trial_id_of_a_fixed_config_is_pinned():
    """``trial_id()`` names every existing trial directory: a change of the hash (a new field that
    enters it, another serialisation) would orphan every run on disk. Values computed at 3a81627."""
    assert TrialConfig().trial_id() == "a99c15b632"
    c = TrialConfig(
        defense="at_entm",
        lam=0.5,
        eps=0.2,
        seed=3,
        n_train=3000,
        width=0.5,
        epochs=2,
        test_eps=[0, 0.1, 0.2],
        attacks=[AttackSpec("fgsm"), AttackSpec("pgd", 10), AttackSpec("cw", 10)],
        autoattack_points=50,
        n_eval=200,
    )
    assert (c.short_name(), c.trial_id()) == ("at_entm_lam0.5_eps0.2_s3", "464f02333c")


def test_reproduction_grids_name_the_committed_trial_directories():
    """Every trial of the committed reproduction grids expands to a directory name that the committed
    results name: the grid -> config -> hash chain is unchanged for all 142 trials of v2; and every
    trial that the committed v3 results name is a trial of a v3 grid (a v3 part may be committed
    while some of its trials are still to run)."""
    from sweeps.grid import load_grid

    names, v3_names = set(), set()
    pattern = r"[a-z_0-9.]+_s\d+_[0-9a-f]{10}"
    for p in (REPO / "results").rglob("*.json"):
        found = set(re.findall(pattern, p.read_text()))
        names |= found
        v3_names |= found if p.relative_to(REPO / "results").parts[0].startswith("repro_v3") else set()
    grids = sorted((REPO / "sweeps").glob("repro_*.yaml"))
    assert len(grids) >= 11
    total, v3_trials = 0, set()
    for g in grids:
        dirs = [c.dirname() for c in load_grid(g).trials]
        if g.name.startswith("repro_v3"):
            v3_trials |= set(dirs)
            continue
        missing = [d for d in dirs if d not in names]
        assert not missing, f"{g.name}: {missing[:3]} not among the committed trial directories"
        total += len(dirs)
    assert total == 142  # the v2 reproduction
    assert v3_names <= v3_trials, f"{sorted(v3_names - v3_trials)[:3]} are no trial of a v3 grid"
    # a part split by seed (repro_v3_<part>_s<k>, one sweep each) is exactly the part's trials
    for part in ("repro_v3_adversarial", "repro_v3_inner_loss"):
        split = [
            c.dirname()
            for g in sorted((REPO / "sweeps").glob(f"{part}_s*.yaml"))
            for c in load_grid(g).trials
        ]
        assert sorted(split) == sorted(
            c.dirname() for c in load_grid(REPO / "sweeps" / f"{part}.yaml").trials
        )
    # every archived trial (sweeps/archive.py) is a trial of its run's grid, with that very config
    archived = sorted((REPO / "results" / "archive").glob("*/trials/*/config.json"))
    assert len(archived) >= 9  # the ladder's 9 trials at least
    for p in archived:
        grid = load_grid(REPO / "sweeps" / f"{p.parents[2].name}.yaml")
        want = {c.dirname(): c for c in grid.trials}
        assert p.parent.name in want, f"{p.parent.name} is no trial of {p.parents[2].name}"
        assert TrialConfig.from_dict(json.loads(p.read_text()), check=False) == want[p.parent.name]


@pytest.mark.parametrize("n", [1, 2])
def test_trial_id_changes_with_a_result_changing_field(n):
    base = TrialConfig(seed=n)
    assert TrialConfig(seed=n, lam=0.0).trial_id() == base.trial_id()
    assert TrialConfig(seed=n, n_eval=999).trial_id() != base.trial_id()


@pytest.mark.parametrize(
    "text, key",
    [
        ("defenses: [at]\nseeds: [0, 1, 0]\n", "seeds"),
        ("defenses: [entm]\nlambdas: [0.5, 0.5]\n", "lambdas"),
        ("defenses: [at]\ntrain_eps: [0.1, 0.2, 0.1]\n", "train_eps"),
        ("defenses: [at]\nepochs: [1, 2, 1]\n", "epochs"),
        ("defenses: [at]\nepochs: [2, 0]\n", "epochs"),
        ("defenses: [at]\nepochs: [2, 1.5]\n", "epochs[1]"),
        ("defenses: [at, at]\n", "defenses"),
        ("defenses: [at_entm]\nlambdas: {at_entm: [1, 1]}\n", "lambdas.at_entm"),
        ("defenses: [at]\nevaluation: {test_eps: [0, 0.1, 0.1]}\n", "evaluation.test_eps"),
        ("defenses: [at]\nn_train: 500\nvalidation: {points: 1000000}\n", "validation.points"),
        ("defenses: [at]\nevaluation: {n_eval: 5000}\n", "evaluation.n_eval"),  # embedded test split: 2,000
        ("defenses: [at]\nresources: {cpus_per_worker: 0}\n", "resources.cpus_per_worker"),
        ("defenses: [at]\nsearch: {trial_retries: -1}\n", "search.trial_retries"),
        ("defenses: [at]\nslurm: {extra: [1]}\n", "slurm.extra[0]"),
    ],
)
def test_grid_refuses_duplicates_and_impossible_splits_naming_the_key(text, key):
    assert_grid_refused(text, key)


def test_an_epochs_list_is_a_budget_ladder_one_trial_per_value():
    """``epochs: [1, 3]`` expands like the other axes (one trial per value, each its own trial id and
    its own table row); a single value means what it always did: the same trial ids as before."""
    from sweeps.grid import parse_grid

    g = parse_grid("defenses: [standard, fast_at]\nepochs: [1, 3]\nseeds: [0, 1]\n")
    got = sorted((c.defense, c.epochs, c.seed) for c in g.trials)
    assert got == sorted((d, e, s) for d in ("standard", "fast_at") for e in (1, 3) for s in (0, 1))
    assert len({c.trial_id() for c in g.trials}) == 8
    assert (
        len({json.dumps(c.row_key(), sort_keys=True) for c in g.trials}) == 4
    )  # seeds share a row, epochs do not
    one = parse_grid("defenses: [at]\nepochs: 3\n").trials
    assert [c.trial_id() for c in one] == [TrialConfig(defense="at", epochs=3).trial_id()]
    assert [c.trial_id() for c in parse_grid("defenses: [at]\nepochs: [3]\n").trials] == [one[0].trial_id()]
    # and Tune's status table shows the epochs, so two rungs never look alike there
    from cluster.driver import parameter_columns

    cols = parameter_columns([c.to_dict() for c in g.trials])
    assert list(cols.values()) == ["defense", "lam", "eps", "epochs", "seed"]
    assert list(parameter_columns([c.to_dict() for c in one]).values()) == ["defense", "lam", "eps", "seed"]


def test_tunes_table_shows_lam_and_eps_only_where_the_defense_uses_them():
    """The status table's lam and eps come from ``config["shown"]``, which Tune resolves per trial from
    its ``config["trial"]`` (Tune's own variant generator here, no cluster): standard training shows
    no eps (its config's 0.3 is a default it never uses), AT no lam; and no column appears twice when
    lam and eps vary across the grid."""
    from ray import tune
    from ray.tune.search.variant_generator import generate_variants

    from cluster.driver import parameter_columns, shown
    from sweeps.grid import parse_grid

    g = parse_grid("defenses: [standard, at, at_entm]\nlambdas: [0.5, 1]\ntrain_eps: [0.1, 0.2]\n")
    trials = [c.to_dict() for c in g.trials]
    got = {}
    for _, cfg in generate_variants({"trial": tune.grid_search(trials), "shown": tune.sample_from(shown)}):
        t = cfg["trial"]
        got[(t["defense"], t["lam"], t["eps"])] = (cfg["shown"]["lam"], cfg["shown"]["eps"])
    assert len(got) == len(trials) == 1 + 2 + 4
    assert {v for (d, _, _), v in got.items() if d == "standard"} == {("-", "-")}
    assert {v for (d, _, _), v in got.items() if d == "at"} == {("-", "0.1"), ("-", "0.2")}
    assert got[("at_entm", 1.0, 0.2)] == ("1", "0.2")
    cols = parameter_columns(trials)
    assert list(cols.values()) == ["defense", "lam", "eps", "seed"] and cols["shown/eps"] == "eps"


def test_tunes_table_shows_the_epoch_not_tunes_iteration():
    """A 2-epoch trial reports 3 times (2 epochs, then its final evaluation): Tune's table, drawn by
    Tune's own code with the driver's columns, says epoch 2, not iteration 3."""
    from ray.tune.experiment import Trial
    from ray.tune.progress_reporter import _trial_progress_table

    from cluster.driver import METRIC_COLUMNS

    t = Trial("ur_trial", config={"shown": {"defense": "at"}}, stub=True)
    t.run_metadata.last_result = {"epoch": 2, "training_iteration": 3, "clean_acc": 0.9, "done": True}
    head, row = [ln for ln in _trial_progress_table([t], METRIC_COLUMNS, {"shown/defense": "defense"})[0]
                 .splitlines() if ln.startswith("| ")]  # fmt: skip
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["epoch"] == "2" and "iter" not in cells and cells["defense"] == "at", cells


def test_a_grid_above_the_trial_cap_is_refused_before_it_is_expanded():
    import time

    from sweeps.grid import MAX_TRIALS

    seeds = ", ".join(map(str, range(MAX_TRIALS // 2 + 1)))
    t0 = time.perf_counter()
    assert_grid_refused(f"defenses: [standard, at]\nseeds: [{seeds}]\n", "grid", f"{MAX_TRIALS + 2:,} trials")
    assert time.perf_counter() - t0 < 5  # refused from the axis sizes, not after expanding them


def test_print_schema_lists_every_key_a_grid_may_set(capsys):
    from cluster import settings
    from sweeps import launch
    from uncertainty_robust.config import grid_fields

    assert launch.main(["--print-schema"]) == 0
    text = capsys.readouterr().out
    keys = {ln.split(":")[0].strip() for ln in text.splitlines() if ":" in ln and not ln.startswith("#")}
    assert {k.split(".")[-1] for k in grid_fields()} <= keys
    for sec in settings.SECTIONS:
        assert f"{sec}:" in text and set(settings.defaults(sec)) <= keys
    assert "reuse_eps: true" in text and "autoattack_informative: [0.01, 0.99]" in text
