"""Claims of the plain-PyTorch library (``uncertainty_robust``), tested on real MNIST digits.

Every robustness property is checked on models trained here on the embedded MNIST
(``mnist_embedded``, real digits shipped with the package); random tensors appear only in pure
shape/plumbing checks. Training runs are CI-sized and shared between tests (module fixtures):

* ``std_model``: small_cnn, width 0.5, standard training, 2 epochs on 3,000 train points;
* ``at_model``: the same, trained with PGD-7 adversarial training at eps 0.2;
* ``resume_reference``: a tiny at_entm run (1,000 points, width 0.25, PGD-3) run uninterrupted,
  against which interrupted-and-resumed runs are compared bit for bit.

``pytest -s`` prints the numbers behind the accuracy claims.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import signal
import subprocess
import time

import pytest
import torch
import torch.nn.functional as F

from uncertainty_robust import checkpoint, trial
from uncertainty_robust.attacks import Cost, cw_linf, fgsm, pgd, pgd_l2, predict, run_suite
from uncertainty_robust.config import DEFENSES as DEFENSE_NAMES
from uncertainty_robust.config import AttackSpec, ConfigError, TrialConfig, validate
from uncertainty_robust.data import dataset_info, load_tensors
from uncertainty_robust.defenses import DEFENSES, entropy, ls_loss, make_adversary, smooth_targets
from uncertainty_robust.jacobian import jacobian_norms, jacobian_norms_estimate
from uncertainty_robust.models import Normalize, build_model
from uncertainty_robust.train import fit, make_model

SUITE_EPS = [0.0, 0.1, 0.2, 0.3, 0.5]
TOL_MONOTONE = 0.005  # allowed increase of accuracy from one epsilon to the next
STD = dict(dataset="mnist_embedded", model="small_cnn", width=0.5, n_train=3000, epochs=2, seed=0)
AT_EPS, AT_STEPS = 0.2, 7


def _acc(mask: torch.Tensor) -> float:
    return float(mask.float().mean())


def _fit(cfg: TrialConfig, workdir, **kw):
    model, summary = fit(cfg, workdir, tensorboard=False, **kw)
    return model.eval(), summary


# ----------------------------------------------------------------------------- trained models

@pytest.fixture(scope="module")
def std_model(tmp_path_factory):
    cfg = validate(TrialConfig(defense="standard", **STD))
    return _fit(cfg, tmp_path_factory.mktemp("std"))[0]


@pytest.fixture(scope="module")
def std_suite(std_model, mnist_test):
    """FGSM and PGD-20 (random start, best iterate) at every eps of SUITE_EPS, same points."""
    x, y = mnist_test
    torch.manual_seed(0)
    return run_suite(std_model, x, y, [AttackSpec("fgsm", steps=1), AttackSpec("pgd", steps=20)], SUITE_EPS)


@pytest.fixture(scope="module")
def at_model(tmp_path_factory):
    cfg = validate(TrialConfig(defense="at", eps=AT_EPS, pgd_steps=AT_STEPS, **STD))
    return _fit(cfg, tmp_path_factory.mktemp("at"))[0]


# ----------------------------------------------------------------------------- 1-3: attacks

def test_pgd_accuracy_falls_monotonically_with_eps_to_zero(std_suite, mnist_test):
    clean = _acc(std_suite.clean_correct)
    pgd_acc = [_acc(std_suite.correct[("pgd20", e)]) for e in SUITE_EPS]
    worst = [_acc(std_suite.worst[e]) for e in SUITE_EPS]
    print(f"\nstandard small_cnn, {len(mnist_test[1])} MNIST test points: clean {clean:.3f}; "
          + ", ".join(f"PGD-20 eps={e:g}: {a:.3f}" for e, a in zip(SUITE_EPS, pgd_acc)))
    assert clean > 0.9  # a real classifier, so the fall below means something
    for accs in (pgd_acc, worst):
        for e0, e1, a0, a1 in zip(SUITE_EPS, SUITE_EPS[1:], accs, accs[1:]):
            assert a1 <= a0 + TOL_MONOTONE, f"accuracy rose from {a0:.3f} at eps={e0} to {a1:.3f} at eps={e1}"
    assert pgd_acc[SUITE_EPS.index(0.1)] < clean - 0.05  # eps=0.1 already hurts an undefended model
    assert pgd_acc[SUITE_EPS.index(0.5)] <= 0.02
    assert worst[SUITE_EPS.index(0.5)] <= 0.02


def test_pgd20_is_at_least_as_strong_as_fgsm(std_suite):
    for eps in SUITE_EPS:
        a_fgsm, a_pgd = _acc(std_suite.correct[("fgsm", eps)]), _acc(std_suite.correct[("pgd20", eps)])
        if eps > 0:
            assert a_pgd <= a_fgsm, f"eps={eps}: PGD-20 {a_pgd:.3f} > FGSM {a_fgsm:.3f}"
        # the worst case is the per-example AND of the attacks
        assert torch.equal(std_suite.worst[eps], std_suite.correct[("fgsm", eps)] & std_suite.correct[("pgd20", eps)])
    eps = 0.2  # and strictly stronger where FGSM leaves something to break
    assert _acc(std_suite.correct[("pgd20", eps)]) < _acc(std_suite.correct[("fgsm", eps)])


def test_eps_zero_is_clean_accuracy(std_model, std_suite, mnist_test):
    x, y = mnist_test
    clean = predict(std_model, x) == y
    assert torch.equal(std_suite.clean_correct, clean)
    for label in ("fgsm", "pgd20"):
        assert torch.equal(std_suite.correct[(label, 0.0)], clean)
    assert torch.equal(std_suite.worst[0.0], clean)
    specs = [AttackSpec("fgsm", 1), AttackSpec("pgd", 20), AttackSpec("pgd_l2", 20), AttackSpec("cw", 30)]
    res = run_suite(std_model, x, y, specs, [0.0])
    assert all(torch.equal(res.correct[(s.label(), 0.0)], clean) for s in specs)
    assert all(res.cost[(s.label(), 0.0)].backward == 0 for s in specs)  # nothing was attacked
    # the attack functions themselves: eps=0 leaves the input, hence every prediction, unchanged
    xs, ys = x[:100], y[:100]
    pred = predict(std_model, xs)
    for attack in (fgsm, pgd, cw_linf, pgd_l2):
        xa = attack(std_model, xs, ys, 0.0)
        assert torch.equal(xa, xs), attack.__name__
        assert torch.equal(predict(std_model, xa), pred), attack.__name__


def test_attacks_stay_in_the_ball_and_the_image_range(std_model, mnist_test):
    x, y = mnist_test[0][:64], mnist_test[1][:64]
    eps = 0.1
    for attack in (fgsm, pgd, cw_linf):
        xa = attack(std_model, x, y, eps)
        assert float((xa - x).abs().max()) <= eps + 1e-6 and float(xa.min()) >= 0 and float(xa.max()) <= 1
    xa = pgd_l2(std_model, x, y, 2.0, steps=10)
    assert float((xa - x).flatten(1).norm(dim=1).max()) <= 2.0 + 1e-4


class _AlwaysTrain(torch.nn.Module):
    """``.eval()`` leaves the wrapped model in train mode: for small_cnn (no BatchNorm, no dropout)
    the outputs are the same, but PGD then keeps the whole batch through every step."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)

    def train(self, mode: bool = True):
        return super().train(True)


@pytest.mark.parametrize("name,loss,restarts", [("pgd", "ce", 1), ("cw", "margin", 2)])
def test_pgd_early_exit_gives_the_full_batch_result_for_fewer_passes(std_model, mnist_test, name, loss, restarts):
    """In eval mode PGD drops broken points from the batch; the adversarial inputs it returns must
    be exactly those of the full-batch loop (same random starts), at a lower cost."""
    x, y = mnist_test[0][:200], mnist_test[1][:200]
    std_model.eval()
    out, cost = {}, {}
    for key, m in (("early_exit", std_model), ("full_batch", _AlwaysTrain(std_model))):
        torch.manual_seed(7)
        c = Cost()
        out[key] = pgd(m, x, y, 0.1, steps=10, restarts=restarts, loss=loss, cost=c)
        cost[key] = c
    assert torch.equal(out["early_exit"], out["full_batch"])
    assert cost["early_exit"].backward < cost["full_batch"].backward


def test_worst_case_is_over_linf_attacks_only(std_model, mnist_test, monkeypatch):
    """An L2 attack's eps is another threat model: it is reported on its own and never enters
    the L-inf worst case (which ``evaluate`` labels with the L-inf attacks only). The L2 attack is
    replaced by one that breaks every point, so any leak into the worst case would show."""
    from uncertainty_robust import attacks

    x, y = mnist_test[0][:100], mnist_test[1][:100]
    monkeypatch.setitem(attacks.ATTACKS, "pgd_l2", (lambda model, x, y, eps, **kw: 1 - x, "L2"))
    specs = [AttackSpec("fgsm", 1), AttackSpec("pgd", 5), AttackSpec("pgd_l2", 5)]
    for per_attack in (True, False):
        torch.manual_seed(0)
        r = run_suite(std_model, x, y, specs, [0.05], per_attack=per_attack)
        l2 = r.correct[("pgd_l25", 0.05)]
        assert _acc(l2) < 0.5 < _acc(r.worst[0.05])  # the stand-in L2 attack breaks (nearly) all
        if per_attack:
            assert torch.equal(r.worst[0.05], r.correct[("fgsm", 0.05)] & r.correct[("pgd5", 0.05)])


# ----------------------------------------------------------------------------- 4-5: Jacobian

def _fd_jacobian(f, x: torch.Tensor, h: float) -> torch.Tensor:
    """Central differences along every input pixel: (K, D) for one image x."""
    d = x.numel()
    e = torch.eye(d, dtype=x.dtype).view(d, *x.shape) * h
    with torch.no_grad():
        cols = [(f(x + e[i:i + 392]) - f(x - e[i:i + 392])) / (2 * h) for i in range(0, d, 392)]
    return torch.cat(cols).T


def test_exact_jacobian_matches_finite_differences(std_model, mnist_test):
    """In float64, on 4 real digits: the whole 10 x 784 Jacobian by central differences along every
    pixel, and J v along random directions, against ``jacobian_norms`` and autograd; relative error
    < 1e-4 (central differences with h=1e-6 are exact for the piecewise-linear logits up to a
    rounding floor of ~1e-16/h relative to the outputs, which for the tiny softmax Jacobian of a
    confident digit is ~1e-5 relative).

    The images get a 1e-2 dither: on a raw MNIST digit the 2x2 max-pools over the constant
    background hold exact ties, where the ReLU/max-pool network is not differentiable and central
    differences average one-sided slopes; a dithered digit is a generic (differentiable) point."""
    md = copy.deepcopy(std_model).double().eval()
    g = torch.Generator().manual_seed(0)
    x = mnist_test[0][[0, 37, 101, 250]].double()
    x = x + (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5) * 2e-2
    exact = jacobian_norms(md, x)
    exact32 = jacobian_norms(std_model, x.float())
    assert all(bool((v > 0).all()) for v in exact.values())
    h, tol, worst = 1e-6, 1e-4, {}
    outputs = {"logits": md, "softmax": lambda t: torch.softmax(md(t), 1)}
    for name, f in outputs.items():
        errs = []
        for i in range(len(x)):
            j_fd = _fd_jacobian(f, x[i], h)
            j_ad = torch.autograd.functional.jacobian(lambda t: f(t[None])[0], x[i]).flatten(1)
            assert j_fd.shape == j_ad.shape == (10, 784)
            errs.append(float((j_fd - j_ad).norm() / j_ad.norm()))  # the whole matrix
            for ref in (j_fd.norm(), j_ad.norm()):  # the library's Frobenius norm against both
                errs.append(abs(float(exact[name][i] / ref) - 1))
            for _ in range(3):  # J v against (f(x+hv) - f(x-hv)) / 2h, random unit directions v
                v = torch.randn(x[i].shape, generator=g, dtype=torch.float64)
                v /= v.norm()
                with torch.no_grad():
                    jv_fd = (f((x[i] + h * v)[None]) - f((x[i] - h * v)[None]))[0] / (2 * h)
                jv = j_ad @ v.flatten()
                errs.append(float((jv - jv_fd).norm() / jv.norm()))
            assert abs(float(exact32[name][i] / exact[name][i]) - 1) < 1e-3  # the float32 path too
        worst[name] = max(errs)
    print(f"\nJacobian vs finite differences (float64): worst relative error {worst}")
    assert max(worst.values()) < tol


def test_projection_estimate_is_within_10_percent_of_exact(std_model, mnist_test):
    """8 random projections per example, on all 300 test points, against the exact norms.
    Compared: (a) the mean over points of the estimated per-example norm against the mean of the
    exact per-example norms (the number the estimate stands in for when logged per epoch), and
    (b) the mean over points of the per-example ratio estimate/exact. Both within 10%."""
    x = mnist_test[0]
    assert len(x) >= 200
    exact = jacobian_norms(std_model, x)
    est = jacobian_norms_estimate(std_model, x, projections=8, generator=torch.Generator().manual_seed(0))
    for name in ("logits", "softmax"):
        e, a = exact[name], est[name]
        assert e.shape == a.shape == (len(x),) and bool(torch.isfinite(a).all()) and bool((e > 0).all())
        of_means = float(a.mean() / e.mean()) - 1
        ratio = float((a / e).mean()) - 1
        print(f"\nJacobian ({name}), {len(x)} points: exact mean {float(e.mean()):.4g}, 8-projection "
              f"estimate mean {float(a.mean()):.4g} ({of_means:+.2%}); mean per-example ratio - 1 = {ratio:+.2%}")
        assert abs(of_means) < 0.10 and abs(ratio) < 0.10


# ----------------------------------------------------------------------------- 6: resume

RESUME = dict(defense="at_entm", lam=0.5, eps=0.3, pgd_steps=3, n_train=1000, width=0.25, epochs=3,
              n_eval=20, jacobian_points=0, test_eps=[0.0], attacks=[AttackSpec("fgsm", steps=1)])
RESUME_ARGS = ["--defense", "at_entm", "--lam", "0.5", "--eps", "0.3", "--pgd-steps", "3", "--n-train", "1000",
               "--width", "0.25", "--epochs", "3", "--n-eval", "20", "--jacobian-points", "0", "--test-eps", "0",
               "--attacks", "fgsm"]


@pytest.fixture(scope="module")
def resume_reference(tmp_path_factory):
    """The uninterrupted run's final weights."""
    cfg = validate(TrialConfig(**RESUME))
    model, summary = _fit(cfg, tmp_path_factory.mktemp("resume_ref"))
    assert summary["completed"] and summary["epochs"] == cfg.epochs
    return cfg, {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different}"


def test_resume_in_process_gives_identical_weights(resume_reference, tmp_path, monkeypatch):
    cfg, ref = resume_reference
    d = tmp_path / "b"
    _, first = _fit(cfg, d, stop_after_epochs=1)
    assert not first["completed"] and first["epochs"] == 1
    assert checkpoint.load(d / checkpoint.CKPT_NAME)["epoch"] == 1
    shutil.copytree(d, tmp_path / "c")  # the same interrupted state, for the control below
    model, second = _fit(cfg, d)
    assert second["completed"] and second["epochs"] == cfg.epochs
    assert second["history"][0] == first["history"][0]  # epoch 1 restored (its wall time too), not redone
    _assert_same_weights(model.state_dict(), ref)
    # control: the same resume without restoring the RNG (PGD's random start draws from it) must
    # not give the same weights, or this test would not see a broken RNG restore
    monkeypatch.setattr(checkpoint, "set_rng_state", lambda state: None)
    model_c, _ = _fit(cfg, tmp_path / "c")
    assert any(not torch.equal(v, ref[k]) for k, v in model_c.state_dict().items())


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_weights(resume_reference, train_cli, tmp_path):
    """``python -m uncertainty_robust.train`` killed with SIGKILL after its first checkpoint, then
    rerun with the same command, ends with the uninterrupted run's weights, tensor for tensor."""
    cfg, ref = resume_reference
    argv, env = train_cli
    d = tmp_path / "trial"
    cmd = argv + RESUME_ARGS + ["--workdir", str(d)]
    ck = d / checkpoint.CKPT_NAME
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while True:
            assert proc.poll() is None, f"trainer ended before it could be killed:\n{proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            if ck.exists() and checkpoint.load(ck)["epoch"] >= 1:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint.load(ck)
    assert 1 <= killed_at["epoch"] < cfg.epochs
    assert not (d / trial.MODEL_NAME).exists() and not (d / "result.json").exists()
    # the CLI resolved the same config as the in-process reference
    assert json.loads((d / "config.json").read_text()) == json.loads(json.dumps(cfg.to_dict()))

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"from epoch {killed_at['epoch']}" in rerun.stderr  # it resumed rather than started over
    final = checkpoint.load(d / trial.MODEL_NAME)["model"]
    _assert_same_weights(final, ref)
    hist = json.loads((d / "result.json").read_text())["train"]["history"]
    assert len(hist) == cfg.epochs and hist[0] == json.loads(killed_at["history"])[0]


# ----------------------------------------------------------------------------- 7: AT works

@pytest.mark.slow
def test_adversarial_training_raises_pgd_accuracy(std_model, std_suite, at_model, mnist_test):
    x, y = mnist_test
    torch.manual_seed(0)
    at = run_suite(at_model, x, y, [AttackSpec("fgsm", steps=1), AttackSpec("pgd", steps=20)], [AT_EPS])
    rows = {"standard": std_suite, f"at (PGD-{AT_STEPS}, eps {AT_EPS})": at}
    print(f"\nsmall_cnn width {STD['width']}, {STD['epochs']} epochs on {STD['n_train']} mnist_embedded train "
          f"points; test: {len(y)} held-out points, PGD-20 (step 2.5*eps/20, random start), eps={AT_EPS}")
    for name, r in rows.items():
        print(f"  {name:24s} clean {_acc(r.clean_correct):.3f}  FGSM {_acc(r.correct[('fgsm', AT_EPS)]):.3f}  "
              f"PGD-20 {_acc(r.correct[('pgd20', AT_EPS)]):.3f}")
    std_pgd, at_pgd = _acc(std_suite.correct[("pgd20", AT_EPS)]), _acc(at.correct[("pgd20", AT_EPS)])
    assert at_pgd >= std_pgd + 0.15
    assert _acc(at.clean_correct) > 0.8  # robust because it learned, not because the suite broke


# ----------------------------------------------------------------------------- 8: defenses

@pytest.fixture(scope="module")
def batch():
    x, y = load_tensors("mnist_embedded", "train", n=64, seed=0)
    return x, y


@pytest.mark.parametrize("form", ["uniform", "others"])
def test_label_smoothing_targets(form):
    y = torch.arange(10).repeat(3)
    k = 10
    for a in (0.0, 0.1, 0.5):
        t = smooth_targets(y, k, a, form)
        assert torch.allclose(t.sum(1), torch.ones(len(y)))
        on_true = t.gather(1, y[:, None]).squeeze(1)
        off = t.masked_select(~F.one_hot(y, k).bool())
        if form == "uniform":
            assert torch.allclose(on_true, torch.full_like(on_true, 1 - a + a / k))
            assert torch.allclose(off, torch.full_like(off, a / k))
        else:
            assert torch.allclose(on_true, torch.full_like(on_true, 1 - a))
            assert torch.allclose(off, torch.full_like(off, a / (k - 1)))


def test_ls_and_entm_losses_equal_their_formulas(std_model, batch):
    x, y = batch
    with torch.no_grad():
        z = std_model(x)
        logp = F.log_softmax(z, 1)
        h = -(logp.exp() * logp).sum(1)
        ce = F.cross_entropy(z, y)
        assert torch.allclose(entropy(z), h)
        for lam in (0.3, 2.0):
            loss, stats = DEFENSES["entm"](std_model, x, y, TrialConfig(defense="entm", lam=lam), Cost())
            assert torch.allclose(loss, ce - lam * h.mean(), atol=1e-6)
            assert stats["entropy"] == pytest.approx(float(h.mean()), rel=1e-5)
        a = 0.2
        t = torch.full((len(y), 10), a / 10)
        t[torch.arange(len(y)), y] += 1 - a
        loss, _ = DEFENSES["ls"](std_model, x, y, TrialConfig(defense="ls", lam=a), Cost())
        assert torch.allclose(loss, -(t * logp).sum(1).mean(), atol=1e-6)
        assert torch.allclose(ls_loss(z, y, 0.0).mean(), ce)
        loss, _ = DEFENSES["standard"](std_model, x, y, TrialConfig(), Cost())
        assert torch.allclose(loss, ce)


def _adversary(model, x, y, cfg, seed):
    torch.manual_seed(seed)
    return make_adversary(model, x, y, cfg, None, Cost())


def test_at_entm_entropy_on_clean_or_adversarial(std_model, batch):
    x, y = batch
    lam, seed = 0.5, 3
    losses = {}
    for on in ("adv", "clean"):
        cfg = TrialConfig(defense="at_entm", lam=lam, eps=0.2, pgd_steps=5, entropy_on=on)
        torch.manual_seed(seed)
        losses[on], _ = DEFENSES["at_entm"](std_model, x, y, cfg, Cost())
        x_adv = _adversary(std_model, x, y, cfg, seed)
        with torch.no_grad():
            z_adv = std_model(x_adv)
            h = entropy(z_adv if on == "adv" else std_model(x))
            assert torch.allclose(losses[on], (F.cross_entropy(z_adv, y, reduction="none") - lam * h).mean(), atol=1e-5)
    assert abs((losses["adv"] - losses["clean"]).item()) > 1e-3


def test_adv_fraction_half_mixes_adversarial_and_clean(std_model, batch):
    x, y = batch
    seed, half = 4, len(x) // 2
    cfg = TrialConfig(defense="at", eps=0.3, pgd_steps=5, adv_fraction=0.5)
    torch.manual_seed(seed)
    loss, stats = DEFENSES["at"](std_model, x, y, cfg, Cost())
    x_adv = _adversary(std_model, x[:half], y[:half], cfg, seed)
    x_all_adv = _adversary(std_model, x, y, TrialConfig(defense="at", eps=0.3, pgd_steps=5), seed)
    with torch.no_grad():
        z_adv, z_clean = std_model(x_adv), std_model(x[half:])
        expected = F.cross_entropy(torch.cat([z_adv, z_clean]), y)
        all_clean = F.cross_entropy(std_model(x), y)
        all_adv = F.cross_entropy(std_model(x_all_adv), y)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert all_clean.item() + 0.1 < loss.item() < all_adv.item() - 0.1  # really a mix of the two
    assert stats["acc"] == pytest.approx(float((z_adv.argmax(1) == y[:half]).float().mean()))


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_defense_takes_a_step(name, batch):
    assert set(DEFENSES) == set(DEFENSE_NAMES)
    x, y = batch
    lam = {"ls": 0.1, "at_ls": 0.1, "entm": 0.5, "at_entm": 0.5}.get(name, 0.0)
    cfg = validate(TrialConfig(defense=name, lam=lam, width=0.25, eps=0.3, pgd_steps=2))
    torch.manual_seed(0)
    model = make_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cost = Cost()
    loss, stats = DEFENSES[name](model, x, y, cfg, cost)
    assert loss.dim() == 0 and math.isfinite(loss.item()) and math.isfinite(stats["loss"])
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), pname
    assert any(float(p.grad.abs().max()) > 0 for p in model.parameters())
    opt.step()
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert cost.forward >= len(x)
    if cfg.is_adversarial:
        assert cost.backward == cfg.pgd_steps * len(x)  # the training adversary's input gradients


# ----------------------------------------------------------------------------- 9: config / CLI

def test_cli_unknown_defense_exits_2_with_one_line(train_cli, tmp_path):
    argv, env = train_cli
    r = subprocess.run(argv + ["--defense", "nope", "--workdir", str(tmp_path / "w")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--defense" in lines[0] and "nope" in lines[0] and "at_entm" in lines[0]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args, flag", [(["--defense", "entm", "--lam", "-1"], "--lam"),
                                        (["--defense", "ls", "--lam", "1.5"], "--lam"),
                                        (["--eps", "5"], "--eps"),
                                        (["--test-eps", "0", "2"], "--test-eps"),
                                        (["--attacks", "pgd:20", "boom"], "--attacks")])
def test_cli_bad_values_exit_2_naming_the_flag(args, flag, capsys, tmp_path):
    from uncertainty_robust.cli import main

    assert main(args + ["--workdir", str(tmp_path / "w")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}:")
    assert not (tmp_path / "w").exists()


def test_cli_missing_cifar10_exits_2_with_one_line(train_cli, tmp_path):
    argv, env = train_cli
    r = subprocess.run(argv + ["--dataset", "cifar10", "--data-root", "/nonexistent", "--workdir", str(tmp_path / "w")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cifar10" in lines[0] and "/nonexistent" in lines[0] and "--download" in lines[0]


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


# ----------------------------------------------------------------------------- 10: run_trial

def test_run_trial_result_record_and_no_rerun(tmp_path, monkeypatch):
    cfg = validate(TrialConfig(defense="standard", width=0.25, n_train=500, epochs=1, n_eval=40, jacobian_points=20,
                               test_eps=[0.0, 0.1], attacks=[AttackSpec("fgsm", 1), AttackSpec("pgd", 5),
                                                             AttackSpec("cw", 5)]))
    d = tmp_path / "trial"
    rec = trial.run_trial(cfg, d)
    on_disk = json.loads((d / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(rec, default=float))
    assert TrialConfig.from_dict(on_disk["config"]) == cfg
    assert 0 <= on_disk["clean_acc"] <= 1 and on_disk["n_points"] == 40
    grid = {(a["label"], a["eps"]): a for a in on_disk["attacks"]}
    assert set(grid) == {(s.label(), e) for s in cfg.attacks for e in cfg.test_eps}
    for (label, eps), a in grid.items():
        assert a["n_points"] == 40 and 0 <= a["acc"] <= 1
        assert a["steps"] == {"fgsm": 1, "pgd5": 5, "cw5": 5}[label] and a["norm"] == "Linf"
        if eps == 0:
            assert a["acc"] == on_disk["clean_acc"]
    assert [w["eps"] for w in on_disk["worst_case"]] == cfg.test_eps
    for w in on_disk["worst_case"]:
        assert w["n_points"] == 40 and w["acc"] <= min(grid[(s.label(), w["eps"])]["acc"] for s in cfg.attacks)
    jac = on_disk["jacobian"]
    assert jac["method"] == "exact"
    for out in ("logits", "softmax"):
        assert jac[out]["n"] == 20 and all(jac[out][k] > 0 for k in ("mean", "median", "p95"))
    assert on_disk["entropy_mean"] > 0 and 0 <= on_disk["ece"] <= 1
    assert on_disk["cost"]["train"]["forward"] > 0 and on_disk["cost"]["eval"]["backward"] > 0
    assert on_disk["versions"]["torch"] == torch.__version__
    assert "git_commit" in on_disk
    gc = on_disk["git_commit"]
    assert gc is None or (len(gc) == 40 and all(c in "0123456789abcdef" for c in gc))
    for name in ("checkpoint.pt", "model.pt", "config.json"):
        assert (d / name).is_file()
    model, cfg2 = trial.load_trained(d)
    assert cfg2 == cfg

    # a finished trial is not run again: same record, no training, checkpoint untouched
    mtime = (d / "checkpoint.pt").stat().st_mtime_ns

    def no_fit(*a, **k):
        raise AssertionError("fit() called for a finished trial")

    monkeypatch.setattr(trial, "fit", no_fit)
    assert trial.run_trial(cfg, d) == on_disk
    assert (d / "checkpoint.pt").stat().st_mtime_ns == mtime


def test_git_commit_is_none_without_a_commit(monkeypatch):
    from uncertainty_robust import evaluate

    def fake_git(returncode, stdout):
        return lambda *a, **k: subprocess.CompletedProcess(a, returncode, stdout=stdout, stderr="")

    monkeypatch.setattr(evaluate.subprocess, "run", fake_git(128, "HEAD\n"))  # `git init`, no commit yet
    assert evaluate.git_commit() is None
    monkeypatch.setattr(evaluate.subprocess, "run", fake_git(0, "a" * 40 + "\n"))
    assert evaluate.git_commit() == "a" * 40


# ----------------------------------------------------------------------------- 11: models

@pytest.mark.parametrize("name, dataset, width", [("small_cnn", "mnist_embedded", 1.0), ("small_cnn", "mnist_embedded", 0.25),
                                                  ("preact_resnet18", "cifar10", 0.25), ("wrn_16_4", "cifar10", 0.25)])
def test_models_give_logits_and_normalize_inside(name, dataset, width):
    info = dataset_info(dataset)
    torch.manual_seed(0)
    m = build_model(name, info.channels, info.num_classes, info.size, info.mean, info.std, width).eval()
    x = torch.rand(3, info.channels, info.size, info.size)  # shapes only
    with torch.no_grad():
        z = m(x)
        assert z.shape == (3, 10) and bool(torch.isfinite(z).all())
        assert isinstance(m[0], Normalize)
        mean = torch.tensor(info.mean).view(1, -1, 1, 1)
        std = torch.tensor(info.std).view(1, -1, 1, 1)
        assert torch.allclose(m[0].mean, mean) and torch.allclose(m[0].std, std)
        assert torch.allclose(m[1]((x - mean) / std), z, atol=1e-6)
    assert {"0.mean", "0.std"} <= set(m.state_dict())  # normalization travels in checkpoints


def test_small_cnn_needs_size_divisible_by_4():
    with pytest.raises(ValueError):
        build_model("small_cnn", 1, 10, 30, (0.5,), (0.5,))
    with pytest.raises(ValueError):
        build_model("resnet9000", 1, 10, 28, (0.5,), (0.5,))
