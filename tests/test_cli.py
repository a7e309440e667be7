"""Config and the single-trial CLI: bad values exit 2 with one line naming the flag."""

from __future__ import annotations

import json
import subprocess

import pytest

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
