"""The device and precision choices of a trial, on the CPU (tests that need CUDA are in test_gpu.py):
the precision keys are validated and reach the grid and the CLI, bf16 autocast reaches the
training forward passes and the training adversary and not the evaluation (unless asked), the
CPU arithmetic is what it was, bf16 adversarial training on the CPU learns what fp32 learns, a
CUDA device asked for on a machine without one is one line, and ``ur-train`` under ``torchrun``
trains with 2 ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from common import AT_EPS, AT_STEPS, STD, acc, fit_quiet

from sweeps.grid import GridError, parse_grid
from uncertainty_robust import accel, cli, defenses, train
from uncertainty_robust.attacks import AttackSpec, run_suite
from uncertainty_robust.config import ConfigError, TrialConfig, validate
from uncertainty_robust.data import load_tensors
from uncertainty_robust.trial import run_trial

TINY = dict(
    defense="at",
    eps=0.2,
    pgd_steps=2,
    n_train=256,
    width=0.25,
    epochs=1,
    batch_size=128,
    n_eval=40,
    jacobian_points=8,
    test_eps=[0.0, 0.1],
    attacks=[AttackSpec("pgd", 3)],
    device="cpu",
)


# ----------------------------------------------------------------------------- keys
@pytest.mark.parametrize("key", ["precision", "attack_precision", "eval_precision"])
def test_precision_keys_are_validated(key):
    with pytest.raises(ConfigError) as e:
        validate(TrialConfig(**{key: "fp16"}))
    assert e.value.key == key and "fp32, bf16" in str(e.value)


def test_precision_is_a_grid_section_and_cli_flags(capsys):
    grid = parse_grid(
        "defenses: [at]\ntrain_eps: [0.2]\nprecision: {train: bf16, train_attack: fp32, eval: bf16}\n"
    )
    (cfg,) = grid.trials
    assert (cfg.precision, cfg.attack_precision, cfg.eval_precision) == ("bf16", "fp32", "bf16")
    with pytest.raises(GridError) as e:
        parse_grid("defenses: [at]\nprecision: {train: fp16}\n")
    assert e.value.key.startswith("precision")
    with pytest.raises(GridError) as e:
        parse_grid("defenses: [at]\nprecision: {training: bf16}\n")
    assert e.value.key == "precision.training"
    assert cli.main(["--precision", "fp16", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --precision:")
    assert cli.main(["--precision", "bf16", "--eval-precision", "fp32", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "bf16"


# ----------------------------------------------------------------------------- where autocast reaches
class Spy:
    """Records the dtype the model's last layer computes in, per call, in train or eval mode, and
    the dtype the training adversary's model computes in (through the PGD it is handed to)."""

    def __init__(self, monkeypatch):
        self.calls, self.adversary = [], []
        make = train.make_model

        def make_spied(cfg, device=None):
            model = make(cfg, device)
            model[1].fc2.register_forward_hook(lambda m, i, o: self.calls.append((m.training, o.dtype)))
            return model

        real_pgd = defenses.pgd

        def pgd_spied(model, x, y, eps, **kw):
            n = len(self.calls)
            with torch.no_grad():
                model(x[:2])
            self.adversary += [d for _, d in self.calls[n:]]
            del self.calls[n:]
            return real_pgd(model, x, y, eps, **kw)

        monkeypatch.setattr(train, "make_model", make_spied)
        monkeypatch.setattr(defenses, "pgd", pgd_spied)

    def training(self) -> set:
        return {d for t, d in self.calls if t}


def test_bf16_reaches_training_and_its_adversary_not_the_evaluation(monkeypatch, tmp_path):
    spy = Spy(monkeypatch)
    cfg = validate(TrialConfig(precision="bf16", **TINY))
    model, summary = train.fit(cfg, tmp_path / "fit", tensorboard=False)
    assert spy.training() == {torch.bfloat16} and set(spy.adversary) == {torch.bfloat16}
    assert summary["completed"] and torch.isfinite(torch.tensor(summary["history"][-1]["train/loss"]))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: fp32 master weights
    spy.calls.clear()
    from uncertainty_robust.evaluation import evaluate

    rec = evaluate(model, cfg)
    assert spy.calls and {d for _, d in spy.calls} == {torch.float32}  # attacks and Jacobians in fp32
    assert rec["precision"] == {
        "train": "bf16",
        "train_attack": "bf16",
        "eval": "fp32",
        "device": accel.device_name(torch.device("cpu")),
        "tf32": False,
        "channels_last": False,
        "backend": None,
    }


def test_adversary_and_evaluation_precision_can_differ_from_training(monkeypatch, tmp_path):
    spy = Spy(monkeypatch)
    cfg = validate(TrialConfig(precision="bf16", attack_precision="fp32", eval_precision="bf16", **TINY))
    rec = run_trial(cfg, tmp_path / "t", keep_examples=0)
    assert spy.training() == {torch.bfloat16}
    assert set(spy.adversary) == {torch.float32}  # the adversary in fp32 inside bf16 training
    eval_calls = {d for t, d in spy.calls if not t}
    assert torch.bfloat16 in eval_calls  # the evaluation's forward passes under bf16 autocast
    on_disk = json.loads((tmp_path / "t" / "result.json").read_text())
    assert on_disk["precision"]["train_attack"] == "fp32" and on_disk["precision"]["eval"] == "bf16"
    assert rec["precision"] == on_disk["precision"]
    assert all(0.0 <= a["acc"] <= 1.0 for a in rec["attacks"])  # float32 outputs from the bf16 model


def test_fp32_training_runs_no_autocast(monkeypatch, tmp_path):
    spy = Spy(monkeypatch)
    train.fit(validate(TrialConfig(**TINY)), tmp_path, tensorboard=False)
    assert spy.training() == {torch.float32} and set(spy.adversary) == {torch.float32}


# ----------------------------------------------------------------------------- the CPU is untouched
def test_cpu_layout_and_batches_are_unchanged():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    model = train.make_model(validate(TrialConfig(precision="bf16", device="cpu")), cpu)
    assert all(p.is_contiguous() for p in model.parameters())  # never channels_last on the CPU
    assert accel.memory_format(cpu, "bf16") is torch.contiguous_format
    assert accel.memory_format(cuda, "bf16") is torch.channels_last  # the CUDA rule, no GPU needed
    assert accel.memory_format(cuda, "fp32") is torch.contiguous_format
    x, y = load_tensors("mnist_embedded", "train", n=500, seed=0)
    xp, yp = accel.place_data(x, y, cpu)
    assert xp is x and yp is y
    bi = torch.randperm(500)[:128]
    xb, yb = accel.batch(xp, yp, bi, cpu)
    assert torch.equal(xb, x[bi]) and torch.equal(yb, y[bi]) and xb.dtype == torch.float32


def test_uint8_storage_is_exact_on_real_images():
    """What the GPU keeps for a small training set: uint8, giving back the loader's floats bit for bit."""
    x, y = load_tensors("mnist_embedded", "train", seed=0)
    u8 = accel._as_uint8(x)
    assert u8 is not None and u8.dtype == torch.uint8
    bi = torch.arange(0, len(x), 7)
    xb, _ = accel.batch(u8, y, bi, torch.device("cpu"))
    assert torch.equal(xb, x[bi])
    assert accel._as_uint8(x + 1e-3) is None  # not k/255: kept in float32


def test_cuda_asked_for_without_a_gpu_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        accel.pick_device("cuda")
    assert e.value.key == "device" and "no CUDA GPU" in str(e.value)
    assert accel.pick_device("auto") == torch.device("cpu")
    rc = cli.main(["--device", "cuda", "--epochs", "1", "--n-train", "100", "--workdir", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: device:") and "Traceback" not in "\n".join(err)


def test_auto_device_takes_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert accel.pick_device("auto") == torch.device("cuda", 2)
    assert accel.pick_device("cuda") == torch.device("cuda", 2)
    assert accel.pick_device("cuda:1") == torch.device("cuda", 1)


# ----------------------------------------------------------------------------- bf16 learns what fp32 learns
@pytest.mark.slow
def test_bf16_adversarial_training_matches_fp32_on_cpu(at_model, mnist_test, tmp_path):
    """PGD-7 AT in bf16 (CPU autocast) vs the same run in fp32 (the ``at_model`` fixture): clean and
    PGD-20 accuracy on 300 held-out points agree within about two seed-stds of this config (seed 0
    vs 1 in fp32 differed by 2.7 points clean and 2.0 points under PGD-20)."""
    x, y = mnist_test
    cfg = validate(TrialConfig(defense="at", eps=AT_EPS, pgd_steps=AT_STEPS, precision="bf16", **STD))
    bf16, summary = fit_quiet(cfg, tmp_path)
    assert summary["completed"]
    # the runs really differ (autocast engaged): otherwise this would compare a model with itself
    assert any(
        not torch.equal(a, b) for a, b in zip(bf16.state_dict().values(), at_model.state_dict().values())
    )
    res = {}
    for name, m in (("fp32", at_model), ("bf16", bf16)):
        torch.manual_seed(0)
        r = run_suite(m, x, y, [AttackSpec("pgd", 20)], [AT_EPS])
        res[name] = (acc(r.clean_correct), acc(r.correct[("pgd20", AT_EPS)]))
    print(
        f"\nAT PGD-{AT_STEPS} eps {AT_EPS}, {len(y)} points: fp32 clean/PGD-20 {res['fp32']}, bf16 {res['bf16']}"
    )
    assert abs(res["bf16"][0] - res["fp32"][0]) <= 0.03
    assert abs(res["bf16"][1] - res["fp32"][1]) <= 0.04
    assert res["bf16"][1] >= 0.3  # robust because it learned, not a broken suite


# ----------------------------------------------------------------------------- torchrun: 2 ranks
def test_ur_train_under_torchrun_trains_with_two_ranks(train_cli, tmp_path):
    """``torchrun --nproc-per-node 2 -m uncertainty_robust``: the CLI joins the process group from
    the environment (gloo here, NCCL on GPUs), trains with 2 ranks, rank 0 writes the result."""
    _, env = train_cli
    d = tmp_path / "t"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "uncertainty_robust", "--device", "cpu", "--defense", "standard", "--n-train", "400"]
    cmd += ["--width", "0.25", "--epochs", "1", "--n-eval", "40", "--jacobian-points", "0"]
    cmd += ["--test-eps", "0", "--attacks", "fgsm", "--workdir", str(d)]
    p = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.loads((d / "result.json").read_text())
    assert rec["train"]["world_size"] == 2 and rec["precision"]["backend"] == "gloo"
    assert p.stdout.count("clean acc") == 1  # rank 0 reports, rank 1 returns quietly
    assert os.path.exists(d / "model.pt")
