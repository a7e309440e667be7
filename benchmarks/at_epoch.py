"""Item 2, ``at``: one epoch of PGD-k adversarial training vs one epoch of standard training, against
the (k+1) a training step with k attack steps costs; step costs, torch.profiler and cProfile
breakdowns of where an AT epoch's time goes."""

from __future__ import annotations

import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import eval_points, fmt, log, med, paired, r3, ratio_stats, verdict
from benchmarks.render import fill, lines, row

NAME = "at"
TITLE = "adversarial training with PGD-k vs standard training, time per epoch, vs (k+1)"


def epoch_fn(defense: str, k: int, x_tr, y_tr, batch_size: int = 128, device="cpu", precision="fp32"):
    """One epoch of fit's inner loop (same calls per batch: defense loss with the training
    adversary, zero_grad, backward, Adam step, under the trainer's autocast), on a persistent
    model; without fit's per-epoch probe, checkpoint and logging."""
    from uncertainty_robust import accel
    from uncertainty_robust.attacks import Cost
    from uncertainty_robust.config import TrialConfig, validate
    from uncertainty_robust.defenses import DEFENSES
    from uncertainty_robust.train import make_model, make_optimizer

    cfg = validate(
        TrialConfig(
            defense=defense,
            eps=0.3,
            pgd_steps=max(1, k),
            device=str(device),
            batch_size=batch_size,
            precision=precision,
        )
    )
    torch.manual_seed(0)
    dev = torch.device(device)
    model = make_model(cfg, dev)
    opt = make_optimizer(cfg, model.parameters())
    loss_of = DEFENSES[defense].loss
    cost = Cost()
    n = len(x_tr)

    def epoch():
        model.train()
        idx = torch.randperm(n)
        for i in range(0, n, batch_size):
            bi = idx[i : i + batch_size]
            x, y = x_tr[bi], y_tr[bi]
            with accel.autocast(cfg.precision, dev):
                loss, _ = loss_of(model, x, y, cfg, cost, attack_model=model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return epoch


def epochs_vs_standard(x_tr, y_tr, ks, rounds: int, device="cpu") -> dict:
    """Paired epochs of standard training and PGD-k AT for each k: medians and ratios to (k+1)."""
    fns = {"standard": epoch_fn("standard", 0, x_tr, y_tr, device=device)}
    for k in ks:
        fns[f"at_k{k}"] = epoch_fn("at", k, x_tr, y_tr, device=device)
    res = paired(fns, rounds, warmup=True)
    out = {"epoch": {}, "k": {}}
    for n in fns:
        out["epoch"][n] = {
            "cpu_median": r3(med(res[n]["cpu"])),
            "wall_median": r3(med(res[n]["wall"])),
            "cpu_all": [r3(v) for v in res[n]["cpu"]],
        }
    for k in ks:
        rs = ratio_stats(res, f"at_k{k}", "standard")
        out["k"][str(k)] = {
            "ratio": rs["cpu"],
            "ratio_wall": rs["wall"],
            "ratio_all": rs["cpu_all"],
            "floor": k + 1,
            "ratio_over_floor": r3(rs["cpu"] / (k + 1)),
        }
    return out


def _through_fit(n_train: int, ks, rounds: int) -> dict:
    """The same comparison through ``fit`` itself (its ``epoch_seconds``: wall clock of the loop)."""
    from uncertainty_robust.config import TrialConfig, validate
    from uncertainty_robust.train import fit

    base = dict(
        dataset="mnist_embedded",
        model="small_cnn",
        width=1.0,
        epochs=1,
        n_train=n_train,
        seed=0,
        n_eval=64,
        jacobian_points=0,
        device="cpu",
        batch_size=128,
    )
    cfgs = {"standard": validate(TrialConfig(defense="standard", **base))}
    for k in ks:
        cfgs[f"at_k{k}"] = validate(TrialConfig(defense="at", eps=0.3, pgd_steps=k, **base))

    def one(cfg):
        with tempfile.TemporaryDirectory() as d:
            _, s = fit(cfg, d, tensorboard=False)
        return s["history"][0]["epoch_seconds"]

    fr = paired({n: (lambda c=c: one(c)) for n, c in cfgs.items()}, rounds)
    return {
        "fit_epoch_seconds_wall": {n: r3(med(fr[n]["out"])) for n in cfgs},
        "fit_ratio_wall": {
            str(k): r3(med([a / b for a, b in zip(fr[f"at_k{k}"]["out"], fr["standard"]["out"])])) for k in ks
        },
    }


def run(ctx) -> dict:
    from uncertainty_robust.data import load_tensors

    n_train, ks, rounds, fit_rounds = (1000, [3], 3, 1) if ctx.args.quick else (2000, [3, 10], 3, 1)
    x_tr, y_tr = load_tensors("mnist_embedded", "train", n=n_train, seed=0)
    log(
        f"at: 1 epoch of the training loop on {n_train} points, standard vs PGD-k AT for k in {ks}, {rounds} rounds"
    )
    out = {"n_train": n_train, "rounds": rounds, "batch_size": 128, "eps": 0.3}
    out.update(epochs_vs_standard(x_tr, y_tr, ks, rounds))
    log(f"at: the same through fit ({fit_rounds} round(s), wall epoch_seconds)")
    out.update(_through_fit(n_train, ks, fit_rounds))
    out["step_costs"] = step_costs(10 if ctx.args.quick else 25)
    out["profile"] = profile_at(ks[-1], n_train)
    return out


def step_costs(reps: int) -> dict:
    """One training step (forward, backward, Adam step; train mode) vs one attack step (forward and
    input-gradient backward; eval mode) on the same batch of 128: what (k+1) assumes to be equal."""
    from uncertainty_robust.attacks.whitebox import _input_grad, ce_loss
    from uncertainty_robust.config import TrialConfig, validate
    from uncertainty_robust.train import make_model, make_optimizer

    cfg = validate(TrialConfig(device="cpu"))
    torch.manual_seed(0)
    model = make_model(cfg)
    opt = make_optimizer(cfg, model.parameters())
    x, y = eval_points(128)
    F = torch.nn.functional

    def train_step():
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def attack_step():
        model.eval()
        _input_grad(model, x, y, ce_loss, None)

    def fwd_bwd_only():
        model.train()
        F.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    res = paired({"train_step": train_step, "attack_step": attack_step, "fwd_bwd_params": fwd_bwd_only}, reps)
    t = {n: med(res[n]["cpu"]) for n in res}
    return {
        "batch": 128,
        "reps": reps,
        "cpu_ms": {n: r3(1e3 * v) for n, v in t.items()},
        "attack_over_train": r3(t["attack_step"] / t["train_step"]),
        "optimizer_share_of_train_step": r3(1 - t["fwd_bwd_params"] / t["train_step"]),
    }


# torch.profiler op names -> category, first match wins (substrings of the lower-cased op name)
CATEGORIES = (
    ("model forward+backward (conv/linear/relu/pool)",
     ("conv", "mkldnn", "linear", "addmm", "mm", "relu", "threshold", "max_pool", "pool2d", "flatten", "view",
      "reshape", "sum_to", "t_", "aten::t", "transpose", "permute")),
    ("attack element-wise (sign, clamp, projection, random start)",
     ("sign", "clamp", "uniform", "empty_like", "clip", "mul", "add", "sub", "neg", "where", "ge", "le",
      "minimum", "maximum", "zeros_like", "detach", "requires_grad")),
    ("loss (cross-entropy, softmax)",
     ("softmax", "nll", "cross_entropy", "log_softmax", "mean", "argmax", "eq", "ones_like")),
    ("data movement (index, copy, cat, clone)",
     ("index", "copy", "cat", "clone", "to", "contiguous", "slice", "select", "stack", "randperm", "gather",
      "scatter")),
    ("optimizer (Adam)",
     ("adam", "optimizer", "sqrt", "div", "lerp", "addcmul", "addcdiv", "foreach", "zero_")),
)  # fmt: skip


def category(op: str) -> str:
    low = op.lower()
    return next((c for c, subs in CATEGORIES if any(s in low for s in subs)), "other")


def _at_setup(defense: str, k: int):
    from uncertainty_robust.attacks import Cost
    from uncertainty_robust.config import TrialConfig, validate
    from uncertainty_robust.defenses import DEFENSES
    from uncertainty_robust.train import make_model, make_optimizer

    cfg = validate(TrialConfig(defense=defense, eps=0.3, pgd_steps=k, device="cpu"))
    torch.manual_seed(0)
    model = make_model(cfg)
    opt = make_optimizer(cfg, model.parameters())
    cost, loss_of = Cost(), DEFENSES[defense].loss

    def epoch(x_tr, y_tr):
        model.train()
        idx = torch.randperm(len(x_tr))
        for i in range(0, len(x_tr), 128):
            bi = idx[i : i + 128]
            loss, _ = loss_of(model, x_tr[bi], y_tr[bi], cfg, cost, attack_model=model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return epoch


def _op_shares(epoch, x_tr, y_tr) -> dict:
    from torch.profiler import ProfilerActivity, profile

    epoch(x_tr, y_tr)  # warm-up
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        epoch(x_tr, y_tr)
    wall = time.perf_counter() - t0
    cats = {c: 0.0 for c, _ in CATEGORIES} | {"other": 0.0}
    top = []
    for ev in prof.key_averages():
        top.append((ev.key, ev.self_cpu_time_total))
        cats[category(ev.key)] += ev.self_cpu_time_total
    total = sum(cats.values())
    top.sort(key=lambda t: -t[1])
    return {
        "wall_s": r3(wall),
        "profiled_self_cpu_s": r3(total / 1e6),
        "share": {c: r3(v / total) for c, v in cats.items()},
        "top_ops_ms": {nm: r3(us / 1e3, 1) for nm, us in top[:12]},
    }


def profile_at(k: int, n_train: int) -> dict:
    """torch.profiler over the inner loop of one epoch (fit's loop, minus checkpointing): self CPU
    time per aten op, grouped into model compute, attack element-wise work (random start, sign,
    projection, clamping), data movement (indexing, copies, cat) and the optimizer; then cProfile."""
    from uncertainty_robust.data import load_tensors

    n = min(n_train, 640)
    x_tr, y_tr = load_tensors("mnist_embedded", "train", n=n, seed=0)
    out = {"k": k, "n_points": n}
    for defense in ("standard", "at"):
        out[defense] = _op_shares(_at_setup(defense, k), x_tr, y_tr)
    out["cprofile_cumulative_s"] = _cprofile_at(k, x_tr, y_tr)
    return out


def _cprofile_at(k: int, x_tr, y_tr) -> dict:
    """cProfile of one AT epoch: the Python-level split of the attack's time."""
    epoch = _at_setup("at", k)
    pr = cProfile.Profile()
    pr.enable()
    epoch(x_tr, y_tr)
    pr.disable()
    stats = pstats.Stats(pr).stats
    fn = {}
    for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items():
        key = f"{Path(file).name}:{name}" if file != "~" else name
        fn[key] = fn.get(key, 0.0) + ct
    adam = sum(v[3] for (f, _, name), v in stats.items() if name == "step" and "adam" in f.lower())
    total = sum(v[3] for (_, _, name), v in stats.items() if name == "defense_loss")
    total += sum(v[3] for (f, _, name), v in stats.items() if name == "backward" and "_tensor" in f)
    total += adam
    pick = {
        "attack: pgd total": "attacks.py:pgd",
        "attack: forward+input-grad (_input_grad)": "attacks/whitebox.py:_input_grad",
        "attack: projection (_project)": "attacks.py:_project",
        "attack: step (_step)": "attacks.py:_step",
        "attack: random start": "attacks.py:_random_start",
        "training backward": "_tensor.py:backward",
    }
    cp = {label: r3(fn.get(key, 0.0)) for label, key in pick.items()}
    cp["training forward + loss (defense_loss minus pgd)"] = r3(
        fn.get("defenses.py:defense_loss", 0.0) - fn.get("attacks.py:pgd", 0.0)
    )
    cp["optimizer step"] = r3(adam)
    cp["total (loss+backward+step)"] = r3(total)
    return cp


def rows(rec: dict) -> list:
    return [
        (
            f"2 AT PGD-{k} epoch / standard epoch",
            f"{fmt(v['ratio'])}x = {fmt(v['ratio_over_floor'])} x (k+1)",
            f"<=1.05 x (k+1) = {1.05 * (int(k) + 1):.2f}x",
            verdict(v["ratio_over_floor"] <= 1.05),
            "",
        )
        for k, v in rec["result"]["k"].items()
    ]


def section(rec: dict) -> str:
    a = rec["result"]
    sc, pr = a["step_costs"], a["profile"]
    aot = sc["attack_over_train"]
    epoch_rows = [
        row(n, fmt(v["cpu_median"]), fmt(v["wall_median"]), v["cpu_all"]) for n, v in a["epoch"].items()
    ]
    k_rows = [
        row(k, fmt(v["ratio"]), fmt(v["ratio_wall"]), v["floor"], fmt(v["ratio_over_floor"]))
        for k, v in a["k"].items()
    ]
    profile_rows = [
        row(c, f"{fmt(100 * pr['standard']['share'][c], 1)}%", f"{fmt(100 * pr['at']['share'][c], 1)}%")
        for c in pr["at"]["share"]
    ]
    return fill(
        NAME,
        n_train=a["n_train"], batch_size=a["batch_size"], eps=a["eps"], rounds=a["rounds"],
        fit_epoch_seconds_wall=a["fit_epoch_seconds_wall"], fit_ratio_wall=a["fit_ratio_wall"],
        epoch_rows=lines(epoch_rows), k_rows=lines(k_rows),
        step_batch=sc["batch"], step_reps=sc["reps"], step_cpu_ms=sc["cpu_ms"], attack_over_train=fmt(aot),
        optimizer_share=fmt(100 * sc["optimizer_share_of_train_step"], 0),
        profile_points=pr["n_points"], profile_k=pr["k"], profile_rows=lines(profile_rows),
        top_ops=pr["at"]["top_ops_ms"], cprofile=pr["cprofile_cumulative_s"],
        expected=", ".join(f"{fmt(int(k) * aot + 1)} for k={k}" for k in a["k"]),
        measured=", ".join(f"{fmt(v['ratio'])} for k={k}" for k, v in a["k"].items()),
    )  # fmt: skip
