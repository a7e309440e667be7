"""What every benchmark item shares: clocks, paired rounds, the machine line, the cached models.

- :func:`timed` / :func:`paired`: both sides of a comparison run in the same process, interleaved,
  the order rotated every round, each call after ``torch.manual_seed(seed_of(round))`` (so PGD's
  random start is the same draw on both sides); wall clock and process CPU time are recorded. On a
  CUDA device the clocks are read after ``torch.cuda.synchronize()``.
- :func:`ratio_stats`: the median over rounds of the per-round ratio (paired).
- :func:`machine_info` / :func:`machine_line`: where a number was measured.
- :func:`get_models`: the two ``small_cnn`` models the attack items use (standard, and PGD
  adversarial training), trained once with ``uncertainty_robust.train.fit`` and cached.
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
K_CLASSES = 10


# ---------------------------------------------------------------------------------------- numbers
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def r3(x, n=3):
    return None if x is None else round(float(x), n)


def fmt(x, nd=2, suffix=""):
    return "n/a" if x is None else f"{x:.{nd}f}{suffix}"


def verdict(ok):
    return "n/a" if ok is None else ("**met**" if ok else "missed")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------- clocks
def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, seed=None):
    """(result, wall seconds, process-cpu seconds); device work is waited for on both ends."""
    if seed is not None:
        torch.manual_seed(seed)
    _sync()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - t0, time.process_time() - c0


def paired(fns: dict, rounds: int, seed_of=lambda r: r, warmup: bool = False) -> dict:
    """Run every callable once per round, the order rotated each round, each with
    ``torch.manual_seed(seed_of(round))`` first. Returns {name: {"wall": [...], "cpu": [...], "out": [...]}}."""
    names = list(fns)
    res = {n: {"wall": [], "cpu": [], "out": []} for n in names}
    if warmup:
        for n in names:
            torch.manual_seed(0)
            fns[n]()
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            out, w, c = timed(fns[n], seed_of(r))
            res[n]["wall"].append(w)
            res[n]["cpu"].append(c)
            res[n]["out"].append(out)
    return res


def ratio_stats(res: dict, num: str, den: str) -> dict:
    """Median over rounds of the paired ratio time[num] / time[den] (wall and cpu)."""
    out = {}
    for k in ("wall", "cpu"):
        rs = [a / b for a, b in zip(res[num][k], res[den][k]) if b > 0]
        out[k] = r3(med(rs))
        out[f"{k}_all"] = [r3(x) for x in rs]
    return out


# ---------------------------------------------------------------------------------------- machine
def load_avg() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _version(mod: str):
    try:
        return __import__(mod).__version__
    except Exception:
        return None


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info(threads: int) -> dict:
    return {
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": _version("ray"),
        "torchattacks": _version("torchattacks"),
        "numpy": _version("numpy"),
        "submitit": _version("submitit"),
        "cuda": torch.cuda.is_available(),
        "loadavg_start": load_avg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def machine_line(m: dict) -> str:
    return (
        f"{m['host']}: {m['cpu_count']} cores ({m['cpu_model']}), torch threads {m['torch_threads']}, "
        f"python {m['python']}, torch {m['torch']}, ray {m['ray']}, torchattacks {m['torchattacks']}, "
        f"submitit {m['submitit']}, CUDA {'yes' if m['cuda'] else 'no'}, load average at start {m['loadavg_start']}"
    )


def subprocess_env(**extra) -> dict:
    """The environment of a child process that imports this checkout (``PYTHONPATH`` first)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------- models
STD_CFG = dict(
    defense="standard",
    dataset="mnist_embedded",
    model="small_cnn",
    width=1.0,
    epochs=2,
    n_train=None,
    seed=0,
    n_eval=64,
    jacobian_points=0,
    device="cpu",
)
AT_CFG = dict(
    defense="at",
    dataset="mnist_embedded",
    model="small_cnn",
    width=1.0,
    epochs=3,
    n_train=4000,
    eps=0.2,
    pgd_steps=7,
    seed=0,
    n_eval=64,
    jacobian_points=0,
    device="cpu",
)
EVAL_EPS = {"standard": 0.1, "at": 0.2}  # where each model is attacked: robust accuracy well inside (0, 1)


def get_models(cache: Path, device: str = "cpu", **overrides) -> dict:
    """{"standard": model, "at": model} (eval mode, on ``device``), trained once and cached.
    ``overrides`` change both configs (e.g. ``epochs=1, n_train=500`` for a dry run)."""
    from uncertainty_robust.config import TrialConfig, validate
    from uncertainty_robust.train import fit, make_model

    cache.mkdir(parents=True, exist_ok=True)
    models = {}
    for name, kw in (("standard", STD_CFG), ("at", AT_CFG)):
        cfg = validate(TrialConfig(**{**kw, "device": device, **overrides}))
        f = cache / f"{name}_small_cnn_{cfg.trial_id()}.pt"
        model = make_model(cfg)
        if f.exists():
            model.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
        else:
            log(f"training the {name} model once ({cfg.epochs} epochs on {device}, cached at {f})")
            with tempfile.TemporaryDirectory() as d:
                model, s = fit(cfg, d, tensorboard=False)
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, f)
            acc = s["history"][-1]["val/clean_acc"]
            log(f"  {name}: {s['train_seconds']:.1f} s, probe clean acc {acc:.3f}")
        models[name] = model.to(device).eval()
    return models


def eval_points(n: int, device: str = "cpu"):
    from uncertainty_robust.data import load_tensors

    x, y = load_tensors("mnist_embedded", "test", n=n, seed=0)
    return x.to(device), y.to(device)


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return float((model(x).argmax(1) == y).float().mean())


class AlwaysTrain(torch.nn.Module):
    """Wraps a model so that ``.eval()`` leaves it in train mode. For a model without BatchNorm or
    dropout (small_cnn) the outputs are the same; the attacks then keep the whole batch through
    every step, i.e. the library's behaviour before PGD's per-step early exit (see bench.md)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)

    def train(self, mode: bool = True):
        return super().train(True)
