"""The CUDA path (``pytest -m gpu``; ``benchmarks/gpu_check.sh`` runs these first). Skipped, with the
reason, where torch sees no CUDA GPU: the only skips allowed in CI. On a GPU they check that the
channels_last layout computes what the contiguous one does, that a small training set lives on the
GPU as exact uint8, that our attacks give the same accuracy on the GPU as on the CPU, that bf16
adversarial training learns what fp32 learns, that a trial records its device and precision and
its model evaluates the same on the CPU, and (with 2 GPUs) that NCCL DDP trains with 2 ranks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from common import AT_EPS, AT_STEPS, STD, acc, fit_quiet

from uncertainty_robust import accel
from uncertainty_robust.attacks import AttackSpec, run_suite
from uncertainty_robust.config import TrialConfig, validate
from uncertainty_robust.data import load_tensors
from uncertainty_robust.train import make_model
from uncertainty_robust.trial import load_trained, run_trial

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False here"
    ),
]
CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def gpu_std_model(tmp_path_factory):
    """small_cnn (the library tests' STD config) trained on the GPU; eval mode, on the GPU."""
    cfg = validate(TrialConfig(defense="standard", device="cuda", **STD))
    return fit_quiet(cfg, tmp_path_factory.mktemp("gpu_std"))[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("name", ["small_cnn", "preact_resnet18"])
def test_channels_last_computes_what_contiguous_does(name):
    accel.configure(CUDA, training=False)
    torch.manual_seed(0)
    cfg = validate(TrialConfig(model=name, width=0.5, device="cuda"))
    dense = make_model(cfg, CUDA).eval()
    last = make_model(
        validate(TrialConfig(model=name, width=0.5, device="cuda", precision="bf16")), CUDA
    ).eval()
    last.load_state_dict(dense.state_dict())
    conv = next(m for m in last.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x, _ = load_tensors("mnist_embedded", "test", n=128, seed=0)
    x = x.to(CUDA).requires_grad_(True)
    outs = {}
    for key, m in (("dense", dense), ("last", last)):
        z = m(x)
        (g,) = torch.autograd.grad(z.logsumexp(1).sum(), x)
        outs[key] = (z.detach(), g)
        with accel.autocast("bf16", CUDA), torch.no_grad():
            outs[key + "_bf16"] = m(x.detach())
    assert _rel(outs["last"][0], outs["dense"][0]) < 1e-4  # fp32 (TF32 off): summation order only
    assert _rel(outs["last"][1], outs["dense"][1]) < 1e-3  # a layout bug would be O(1)
    assert _rel(outs["last_bf16"], outs["dense_bf16"]) < 2e-2  # bf16 operands: ~1e-3..1e-2
    agree = (outs["last_bf16"].argmax(1) == outs["dense_bf16"].argmax(1)).float().mean()
    assert agree >= 0.98


def test_small_training_set_lives_on_the_gpu_as_exact_uint8():
    x, y = load_tensors("mnist_embedded", "train", seed=0)
    xg, yg = accel.place_data(x, y, CUDA)
    assert xg.device.type == "cuda" and xg.dtype == torch.uint8 and yg.device.type == "cuda"
    bi = torch.randperm(len(x))[:256]
    xb, yb = accel.batch(xg, yg, bi, CUDA)
    assert xb.dtype == torch.float32 and torch.equal(xb.cpu(), x[bi]) and torch.equal(yb.cpu(), y[bi])


def test_attacks_give_the_same_accuracy_on_gpu_and_cpu(gpu_std_model):
    """PGD-20 and CW-30 at eps 0.1 on 500 held-out points, fp32 on both devices (TF32 off): without a
    random start only the summation order differs; with one, the random draws differ too."""
    accel.configure(CUDA, training=False)
    x, y = load_tensors("mnist_embedded", "test", n=500, seed=0)
    cpu_model = make_model(validate(TrialConfig(device="cpu", **STD)))
    cpu_model.load_state_dict({k: v.cpu() for k, v in gpu_std_model.state_dict().items()})
    cpu_model.eval()
    res = {}
    for dev, m in (("cpu", cpu_model), ("cuda", gpu_std_model)):
        for start in (False, True):
            specs = [AttackSpec("pgd", 20, random_start=start), AttackSpec("cw", 30, random_start=start)]
            torch.manual_seed(0)
            r = run_suite(m, x.to(dev), y.to(dev), specs, [0.1])
            res[dev, start] = {k[0]: acc(v.cpu()) for k, v in r.correct.items()} | {
                "clean": acc(r.clean_correct)
            }
    print(f"\nGPU vs CPU, 500 points, eps 0.1: {res}")
    for start, tol in ((False, 0.02), (True, 0.03)):
        for k in ("clean", "pgd20", "cw30"):
            assert abs(res["cuda", start][k] - res["cpu", start][k]) <= (0.004 if k == "clean" else tol), k
    assert 0.05 < res["cuda", True]["pgd20"] < 0.95  # an informative eps: the comparison can fail


def test_bf16_adversarial_training_matches_fp32_on_gpu(mnist_test, tmp_path):
    """PGD-7 AT, fp32 vs bf16 (autocast, channels_last) on the GPU: clean and PGD-20 accuracy on 300
    held-out points within the tolerance of the CPU test (about two seed-stds of this config)."""
    x, y = (t.to(CUDA) for t in mnist_test)
    res, models = {}, {}
    for p in ("fp32", "bf16"):
        cfg = validate(
            TrialConfig(defense="at", eps=AT_EPS, pgd_steps=AT_STEPS, device="cuda", precision=p, **STD)
        )
        models[p], s = fit_quiet(cfg, tmp_path / p)
        assert s["completed"]
        torch.manual_seed(0)
        r = run_suite(models[p], x, y, [AttackSpec("pgd", 20)], [AT_EPS])
        res[p] = (acc(r.clean_correct), acc(r.correct[("pgd20", AT_EPS)]))
    print(f"\nAT on the GPU, {len(y)} points, clean/PGD-20: {res}")
    assert any(
        not torch.equal(a, b)
        for a, b in zip(models["fp32"].state_dict().values(), models["bf16"].state_dict().values())
    )
    assert abs(res["bf16"][0] - res["fp32"][0]) <= 0.03
    assert abs(res["bf16"][1] - res["fp32"][1]) <= 0.04
    assert res["bf16"][1] >= 0.3


def test_trial_on_gpu_records_device_and_precision(tmp_path):
    cfg = validate(
        TrialConfig(
            defense="at", eps=0.2, pgd_steps=3, n_train=1000, width=0.5, epochs=1, n_eval=200,
            jacobian_points=50, test_eps=[0.0, 0.1], attacks=[AttackSpec("pgd", 10)], device="cuda",
            precision="bf16",
        )
    )  # fmt: skip
    rec = run_trial(cfg, tmp_path / "t")
    pr = json.loads((tmp_path / "t" / "result.json").read_text())["precision"]
    assert pr["device"].startswith("cuda:0 (") and pr["train"] == "bf16" and pr["eval"] == "fp32"
    assert pr["channels_last"] is True and pr["tf32"] is False
    model, _ = load_trained(tmp_path / "t", map_location="cpu")  # a GPU-trained model evaluates on the CPU
    x, y = load_tensors("mnist_embedded", "test", n=200, seed=0)
    with torch.no_grad():
        cpu_acc = float((model(x).argmax(1) == y).float().mean())
    assert abs(cpu_acc - rec["clean_acc"]) <= 0.01


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason=f"needs 2 CUDA GPUs, found {torch.cuda.device_count()}"
)
def test_nccl_ddp_trains_with_two_ranks(train_cli, tmp_path):
    _, env = train_cli
    d = tmp_path / "t"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [
        "-m",
        "uncertainty_robust",
        "--device",
        "auto",
        "--defense",
        "at",
        "--eps",
        "0.2",
        "--pgd-steps",
        "3",
    ]
    cmd += [
        "--n-train",
        "2000",
        "--width",
        "0.5",
        "--epochs",
        "1",
        "--n-eval",
        "100",
        "--jacobian-points",
        "0",
    ]
    cmd += ["--test-eps", "0", "0.1", "--attacks", "pgd:10", "--workdir", str(d)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.loads((d / "result.json").read_text())
    assert rec["train"]["world_size"] == 2 and rec["precision"]["backend"] == "nccl"
    assert rec["clean_acc"] > 0.5
