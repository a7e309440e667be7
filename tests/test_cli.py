"""Config and the single-trial CLI: bad values exit 2 with one line naming the flag."""

from __future__ import annotations

import json
import subprocess

import pytest
from common import assert_grid_refused

from uncertainty_robust.attacks import AttackSpec
from uncertainty_robust.config import ConfigError, TrialConfig


def test_cli_unknown_defense_exits_2_with_one_line(train_cli, tmp_path):
    argv, env = train_cli
    r = subprocess.run(
        argv + ["--defense", "nope", "--workdir", str(tmp_path / "w")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--defense" in lines[0] and "nope" in lines[0] and "at_entm" in lines[0]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--defense", "entm", "--lam", "-1"], "--lam"),
        (["--defense", "ls", "--lam", "1.5"], "--lam"),
        (["--eps", "5"], "--eps"),
        (["--test-eps", "0", "2"], "--test-eps"),
        (["--attacks", "pgd:20", "boom"], "--attacks"),
    ],
)
def test_cli_bad_values_exit_2_naming_the_flag(args, flag, capsys, tmp_path):
    from uncertainty_robust.cli import main

    assert main(args + ["--workdir", str(tmp_path / "w")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}:")
    assert not (tmp_path / "w").exists()


def test_cli_missing_cifar10_exits_2_with_one_line(train_cli, tmp_path):
    argv, env = train_cli
    r = subprocess.run(
        argv + ["--dataset", "cifar10", "--data-root", "/nonexistent", "--workdir", str(tmp_path / "w")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "cifar10" in lines[0] and "/nonexistent" in lines[0] and "--download" in lines[0]
    )


def test_config_from_dict():
    with pytest.raises(ConfigError) as exc:
        TrialConfig.from_dict({"defense": "at", "epsilon": 0.3})
    assert exc.value.key == "epsilon" and "epsilon" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        TrialConfig.from_dict({"defense": "at", "eps": 0.0})
    assert exc.value.key == "eps"
    cfg = TrialConfig(defense="at_ls", lam=0.1, attacks=[AttackSpec("pgd", 10, restarts=2)])
    back = TrialConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.trial_id() == cfg.trial_id()
    assert TrialConfig(seed=1).trial_id() != cfg.trial_id()


def test_launch_refuses_a_non_ascii_name_with_one_line(tmp_path):
    """``--name ünï`` used to pass validation and then hang inside Ray, leaving a run directory."""
    import os
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    r = subprocess.run(
        [
            sys.executable,
            str(repo / "sweeps" / "launch.py"),
            "--grid",
            str(repo / "tests" / "grids" / "tiny.yaml"),
        ]
        + ["--name", "ünï", "--storage", str(tmp_path / "runs"), "--cluster", "local"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --name:") and "ünï" in lines[0], r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(
    "kw, key",
    [
        (dict(defense="ls", lam=0.9, ls_form="others"), "lam"),  # alpha >= (K-1)/K inverts the target
        (dict(defense="at_ls", lam=0.95, ls_form="others"), "lam"),
        (dict(defense="at", adv_fraction=0.0), "adv_fraction"),  # AT with no adversarial point
        (dict(attacks=[AttackSpec("pgd_l2", 10)]), "attacks[0].eps"),  # L2 radii are not the L-inf test_eps
        (dict(attacks=[AttackSpec("pgd_l2", 10, eps=[0.5, 40.0])]), "attacks[0].eps[1]"),  # > sqrt(784)
        (dict(attacks=[AttackSpec("autoattack", 5)]), "attacks[0].steps"),  # an ensemble takes no steps
        (dict(attacks=[AttackSpec("apgd-ce", step_size=0.1)]), "attacks[0].step_size"),
        (dict(autoattack=[AttackSpec("pgd", 20)]), "autoattack[0].name"),  # not an AutoAttack attack
        (dict(autoattack=[AttackSpec("square", 100, eps=[0.3])]), "autoattack[0].eps"),
        (dict(autoattack_eps=[0.3, 1.5]), "autoattack_eps[1]"),
        (dict(n_eval=100, autoattack_points=200), "autoattack_points"),
    ],
)
def test_config_refuses_bad_values_naming_the_key(kw, key):
    from uncertainty_robust.config import validate

    with pytest.raises(ConfigError) as exc:
        validate(TrialConfig(**kw))
    assert exc.value.key == key and "\n" not in str(exc.value), str(exc.value)
    if "lam" in kw:
        validate(TrialConfig(**{**kw, "lam": 0.85 if kw["defense"] == "ls" else 0.89}))  # just below (K-1)/K


def test_autoattack_flags_on_the_command_line(capsys, tmp_path):
    from uncertainty_robust.cli import main

    assert main(["--autoattack", "pgd:5", "--workdir", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --autoattack:")
    assert main(["--autoattack-eps", "2", "--workdir", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --autoattack-eps:")
    assert (
        main(["--autoattack", "apgd-ce:10", "square:100", "--autoattack-eps", "0.1", "--print-config"]) == 0
    )
    cfg = json.loads(capsys.readouterr().out)
    assert [a["name"] for a in cfg["autoattack"]] == ["apgd-ce", "square"] and cfg["autoattack_eps"] == [0.1]
    assert main(["--autoattack", "--print-config"]) == 0  # no value: AutoAttack off
    assert json.loads(capsys.readouterr().out)["autoattack"] == []
    assert not (tmp_path / "w").exists()


def test_autoattack_eps_defaults():
    """By default AutoAttack's eps are decided at run time (every evaluated eps where our attacks
    leave an informative share robust: ``aa_eps()`` is None) and our attacks run at the test eps
    plus the trial's headline eps (its training eps, the dataset's conventional eps); a listed
    ``autoattack_eps`` is a budget: only those; [] or no AutoAttack: none."""
    from sweeps.grid import parse_grid
    from uncertainty_robust.data import DATASETS

    assert TrialConfig(defense="at", eps=0.2).aa_eps() is None
    assert TrialConfig(defense="at", eps=0.2, autoattack_eps=[0.3]).aa_eps() == [0.3]
    assert TrialConfig(defense="at", autoattack=[]).aa_eps() == []
    assert TrialConfig(defense="at", autoattack_eps=[]).aa_eps() == []
    assert TrialConfig(defense="at", eps=0.2, test_eps=[0, 0.1]).eval_eps() == [0.0, 0.1, 0.2, 0.3]
    assert TrialConfig(defense="entm", lam=0.5, test_eps=[0, 0.1]).eval_eps() == [0.0, 0.1, 0.3]
    assert TrialConfig(dataset="fashion_mnist", test_eps=[0, 0.2]).eval_eps() == [0.0, 0.1, 0.2]
    assert TrialConfig(test_eps=[0, 0.1], autoattack=[]).eval_eps() == [0.0, 0.1]
    assert DATASETS["cifar10"].conventional_eps == pytest.approx(8 / 255) and DATASETS["svhn"].eps_source
    g = parse_grid("defenses: [standard, at]\ntrain_eps: [0.1, 0.2]\n")
    assert [c.aa_eps() for c in g.trials] == [None] * 3
    g = parse_grid("defenses: [standard, entm]\nlambdas: [0.5]\nevaluation: {autoattack_eps: []}\n")
    assert [c.aa_eps() for c in g.trials] == [[], []]
    g = parse_grid(
        "dataset: cifar10\ndefenses: [at]\ntrain_eps: [0.0313725]\n"
        "evaluation: {test_eps: [0, 0.0313725], autoattack_eps: [0.0313725]}\n"
    )
    assert g.trials[0].aa_eps() == [0.0313725]  # 8/255 as written and as computed are one eps
    assert g.trials[0].eval_eps() == [0.0, 0.0313725]


@pytest.mark.parametrize(
    "evaluation, key",
    [
        ("{autoattack: [pgd]}", "evaluation.autoattack[0].name"),
        ("{autoattack: [nope]}", "evaluation.autoattack[0].name"),
        ('{autoattack: ["square:0"]}', "evaluation.autoattack[0].steps"),
        ("{autoattack: [{name: square, queries: 10}]}", "evaluation.autoattack[0].queries"),
        ("{autoattack_eps: [0.3, two]}", "evaluation.autoattack_eps[1]"),
        ("{autoattack_eps: [0]}", "evaluation.autoattack_eps[0]"),
        ("{n_eval: 50, autoattack_points: 100}", "evaluation.autoattack_points"),
        ("{autoattack_points: 0}", "evaluation.autoattack_points"),
        ("{test_eps: [0, 0.1, 0.1]}", "evaluation.test_eps"),
        ("{autoattack_eps: [0.1, 0.3, 0.1]}", "evaluation.autoattack_eps"),
        ("{autoattack_informative: [0.5, 0.2]}", "evaluation.autoattack_informative"),
        ("{autoattack_informative: [0.01, 1.5]}", "evaluation.autoattack_informative[1]"),
        ("{chunk_points: 0}", "evaluation.chunk_points"),
        ("{reuse_eps: maybe}", "evaluation.reuse_eps"),
        ('{attacks: [fgsm, "pgd:10", "pgd:10"]}', "evaluation.attacks"),
        ("{attacks: [{name: pgd_l2, steps: 5}]}", "evaluation.attacks[0].eps"),
        ("{attacks: [{name: pgd_l2, eps: [1, -1]}]}", "evaluation.attacks[0].eps[1]"),
    ],
)
def test_grid_refuses_bad_autoattack_settings_naming_the_key(evaluation, key):
    assert_grid_refused(f"defenses: [standard]\nevaluation: {evaluation}\n", key)


def test_ctrl_c_on_ur_train_is_one_line_and_exit_130(train_cli, tmp_path):
    """Ctrl-C used to print a traceback from inside autograd. Now one line that says whether the
    same command resumes (a checkpoint exists) or starts over, exit 130."""
    import signal
    import time

    prefix, env = train_cli
    argv = prefix + [
        "--defense", "standard", "--model", "small_cnn", "--width", "0.25", "--n-train", "200",
        "--epochs", "200", "--val-points", "50", "--workdir", str(tmp_path / "t"),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "t" / "checkpoint.pt").exists():
            assert proc.poll() is None and time.time() < deadline, (
                "no checkpoint: " + proc.communicate()[1][-2000:]
            )
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"interrupted (SIGINT); the same command resumes from the last checkpoint in {tmp_path / 't'}"
        )
    ), err[-2000:]
