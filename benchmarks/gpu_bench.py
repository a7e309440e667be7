"""The measuring half of ``benchmarks/gpu_check.sh`` (the script runs the steps, this module does
the work of each and writes ``gpu.md``). Subcommands, each writing JSON into the work directory:

    python -m benchmarks.gpu_bench quickstart-grid WORK   # sweeps/quickstart.yaml for 1 rank on the GPU
    python -m benchmarks.gpu_bench precision WORK         # AT in bf16 vs fp32, 3 seeds (run_trial)
    python -m benchmarks.gpu_bench bench WORK             # attacks, AutoAttack, Jacobian, AT epoch
    python -m benchmarks.gpu_bench render WORK OUT.md     # gpu.md from the step files

``--dry`` (what ``gpu_check.sh --cpu-dry-run`` passes): every step on the CPU with tiny sizes, to
prove the plumbing; its numbers are not GPU results and ``render`` says so on every line that
matters. Goals (issue 13), as ratios measured in one run: our PGD-20 >= 1.2x torchattacks' speed
at equal accuracy; bf16 AT >= 1.5x fp32 AT with clean and robust accuracy within one seed-std;
the exact Jacobian within 1.3x its floor (1 forward + K backward passes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.harness import EVAL_EPS, eval_points, get_models, log, med, r3

FULL = dict(
    models={},  # harness.STD_CFG / AT_CFG as they are
    attack_points=1000, attack_rounds=5,
    aa_points=500,
    jac_points=1000, jac_ref_points=100, jac_rounds=5,
    at_points=4000, at_ks=[3, 10], at_rounds=3,
    prec=dict(model="small_cnn", width=2.0, n_train=None, epochs=5, batch_size=256, pgd_steps=7, n_eval=1000),
    prec_seeds=[0, 1, 2],
    resnet=dict(model="preact_resnet18", width=1.0, n_train=None, epochs=2, batch_size=256, pgd_steps=7, n_eval=500),
)  # fmt: skip
DRY = dict(
    models=dict(epochs=1, n_train=400),
    attack_points=64, attack_rounds=2,
    aa_points=12,
    jac_points=40, jac_ref_points=8, jac_rounds=2,
    at_points=256, at_ks=[3], at_rounds=2,
    prec=dict(model="small_cnn", width=0.25, n_train=300, epochs=2, batch_size=100, pgd_steps=3, n_eval=50),
    prec_seeds=[0, 1],
    resnet=dict(model="preact_resnet18", width=0.125, n_train=200, epochs=2, batch_size=100, pgd_steps=2, n_eval=40),
)  # fmt: skip


def device_of(dry: bool) -> str:
    return "cpu" if dry else "cuda"


def device_info() -> dict:
    """The device line: torch's view, and nvidia-smi's when it is there."""
    import shutil
    import subprocess

    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["count"] = torch.cuda.device_count()
    if shutil.which("nvidia-smi"):
        q = "name,driver_version,memory.total"
        p = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True
        )
        info["nvidia_smi"] = p.stdout.strip() or p.stderr.strip()
    return info


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str))


# ------------------------------------------------------------------------------ quickstart grid
def quickstart_grid(work: Path, dry: bool) -> Path:
    """sweeps/quickstart.yaml for 1 rank per trial on the GPU (a quarter GPU each, so the 4 trials
    share one GPU at once); ``dry``: on the CPU, smaller."""
    import yaml

    from benchmarks.harness import REPO

    g = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())
    g["name"] = "gpu_quickstart"
    if dry:
        g.update(device="cpu", n_train=400, epochs=1)
        g["evaluation"].update(n_eval=50, jacobian_points=20)
        g["resources"] = {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}
    else:
        g["device"] = "cuda"
        g["resources"] = {"workers": 1, "cpus_per_worker": 2, "gpus_per_worker": 0.25}
    out = work / "quickstart.yaml"
    out.write_text(yaml.safe_dump(g, sort_keys=False))
    return out


# ------------------------------------------------------------------------------ bf16 vs fp32 AT
def _trial_cfg(spec: dict, precision: str, seed: int, device: str):
    from uncertainty_robust.attacks import AttackSpec
    from uncertainty_robust.config import TrialConfig, validate

    return validate(
        TrialConfig(
            defense="at", eps=0.2, seed=seed, precision=precision, device=device, test_eps=[0.0, 0.2],
            attacks=[AttackSpec("pgd", 20), AttackSpec("cw", 30)], jacobian_points=0, **spec,
        )
    )  # fmt: skip


def _one_trial(cfg, work: Path) -> dict:
    from uncertainty_robust.trial import run_trial

    rec = run_trial(cfg, work / f"{cfg.short_name()}_{cfg.precision}_{cfg.trial_id()}", keep_examples=0)
    ep = [h["epoch_seconds"] for h in rec["train"]["history"]]
    return {
        "precision": rec["precision"],
        "epoch_seconds": [r3(e, 4) for e in ep],
        "epoch_s": r3(med(ep[1:] or ep), 4),  # the first epoch includes warm-up (cuDNN autotuning)
        "clean_acc": rec["clean_acc"],
        "robust_acc": next(w["acc"] for w in rec["worst_case"] if w["eps"] == 0.2),
        "n_points": rec["n_points"],
    }


def _compare(runs: dict, seeds: list) -> dict:
    """Speed-up per seed (paired) and accuracies: bf16 within one seed-std (of fp32) of fp32?"""
    out = {"speedup_per_seed": [r3(runs["fp32"][s]["epoch_s"] / runs["bf16"][s]["epoch_s"]) for s in seeds]}
    out["speedup"] = r3(med(out["speedup_per_seed"]))
    for k in ("clean_acc", "robust_acc"):
        vals = {p: [runs[p][s][k] for s in seeds] for p in ("fp32", "bf16")}
        std = statistics.stdev(vals["fp32"]) if len(seeds) > 1 else None
        diff = statistics.fmean(vals["bf16"]) - statistics.fmean(vals["fp32"])
        out[k] = {
            "fp32_mean": r3(statistics.fmean(vals["fp32"]), 4),
            "bf16_mean": r3(statistics.fmean(vals["bf16"]), 4),
            "diff": r3(diff, 4),
            "fp32_seed_std": r3(std, 4),
            "within_one_std": None if std is None else abs(diff) <= std,
        }
    return out


def precision_step(work: Path, dry: bool) -> dict:
    sizes, device = (DRY if dry else FULL), device_of(dry)
    out = {"device": device_info(), "dry": dry, "runs": {}, "config": {}}
    for name, spec, seeds in (
        ("small_cnn", sizes["prec"], sizes["prec_seeds"]),
        ("resnet", sizes["resnet"], [0]),
    ):
        runs = {"fp32": {}, "bf16": {}}
        for seed in seeds:
            for p in ("fp32", "bf16"):
                log(f"precision: {name} AT, {p}, seed {seed} on {device}")
                runs[p][seed] = _one_trial(_trial_cfg(spec, p, seed, device), work / "precision")
        out["config"][name] = {**spec, "defense": "at", "eps": 0.2, "seeds": seeds, "eval": "PGD-20, CW-30"}
        out["runs"][name] = {"runs": runs, **_compare(runs, seeds)}
    return out


# ------------------------------------------------------------------------------ bench
def _attacks(models, sizes, device) -> dict:
    from benchmarks.attacks_vs_torchattacks import groups, measure

    x, y = eval_points(sizes["attack_points"], device)
    out = {"n_points": len(y), "rounds": sizes["attack_rounds"], "models": {}}
    for mname, model in models.items():
        eps = EVAL_EPS[mname]
        log(f"bench: attacks vs torchattacks, {mname} model, eps {eps}, {len(y)} points")
        g = groups(model, x, y, eps, legacy=False, which=("pgd20", "cw30"))
        out["models"][mname] = {
            "eps": eps,
            **{k: measure(model, y, fns, sizes["attack_rounds"]) for k, fns in g.items()},
        }
    return out


def _project_autoattack(model, x, y, eps):
    """AutoAttack (standard) through the project's attack registry (``uncertainty_robust.attacks.autoattack``,
    pyautoattack's attack objects with pass counting and eval-mode/frozen-parameter guards): the mask
    of points still robust."""
    from uncertainty_robust.attacks import AttackSpec, run_attack

    x_adv = run_attack(model, x, y, AttackSpec.parse("autoattack"), eps)
    with torch.no_grad():
        return (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)


def _autoattack(models, sizes, device) -> dict:
    import logging

    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    model, eps = models["at"], EVAL_EPS["at"]
    x, y = eval_points(sizes["aa_points"], device)
    alone = AutoAttack(model, eps=eps, device=device, seed=0, version="standard")
    alone.verbose = False
    t0 = time.perf_counter()
    _, y_adv = alone.run_standard_evaluation(x, y, batch_size=500)
    t_alone = time.perf_counter() - t0
    out = {"n_points": len(y), "eps": eps, "model": "at", "version": "standard",
           "alone_s": r3(t_alone), "alone_acc": r3(float((y_adv == y).float().mean()), 4)}  # fmt: skip
    torch.manual_seed(0)
    t0 = time.perf_counter()
    mask = _project_autoattack(model, x, y, eps)
    out.update(project_s=r3(time.perf_counter() - t0), project_acc=r3(float(mask.float().mean()), 4))
    out["ratio"] = r3(out["project_s"] / out["alone_s"])
    return out


def _jacobian(models, sizes, device) -> dict:
    from benchmarks.jacobian_cost import exact_vs_floor, exact_vs_reference

    model = models["standard"]
    x, _ = eval_points(sizes["jac_points"], device)
    log(f"bench: exact Jacobian vs its floor on {len(x)} points, and vs a per-example loop")
    return {
        "floor": exact_vs_floor(model, x, sizes["jac_rounds"]),
        "reference": {"n_points": sizes["jac_ref_points"]}
        | exact_vs_reference(model, x[: sizes["jac_ref_points"]], sizes["jac_rounds"]),
    }


def _at_epochs(sizes, device) -> dict:
    from benchmarks.at_epoch import epochs_vs_standard
    from uncertainty_robust.data import load_tensors

    x, y = load_tensors("mnist_embedded", "train", n=sizes["at_points"], seed=0)
    log(f"bench: AT epoch vs standard epoch, k in {sizes['at_ks']}, {len(x)} points")
    out = epochs_vs_standard(x.to(device), y.to(device), sizes["at_ks"], sizes["at_rounds"], device=device)
    return {"n_train": len(x), "batch_size": 128, "eps": 0.3, "rounds": sizes["at_rounds"], **out}


def bench_step(work: Path, dry: bool) -> dict:
    """Every comparison in its own try: one failing part keeps the others."""
    sizes, device = (DRY if dry else FULL), device_of(dry)
    from uncertainty_robust import accel

    accel.configure(torch.device(device, 0) if device == "cuda" else torch.device("cpu"), training=False)
    out = {"device": device_info(), "dry": dry}
    models = get_models(work / "cache", device, **sizes["models"])
    parts = {
        "attacks": lambda: _attacks(models, sizes, device),
        "autoattack": lambda: _autoattack(models, sizes, device),
        "jacobian": lambda: _jacobian(models, sizes, device),
        "at_epoch": lambda: _at_epochs(sizes, device),
    }
    for name, fn in parts.items():
        t0 = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as e:  # recorded, and the next part runs
            import traceback

            traceback.print_exc()
            out[name] = {"error": f"{type(e).__name__}: {e}"}
        out[name]["seconds"] = r3(time.perf_counter() - t0, 1)
    return out


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("step", choices=["quickstart-grid", "precision", "bench", "render"])
    p.add_argument("work", type=Path, help="the work directory of one gpu_check.sh run")
    p.add_argument("out", nargs="?", type=Path, help="render: the Markdown file to write")
    p.add_argument("--dry", action="store_true", help="on the CPU, tiny sizes: plumbing only")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.step == "quickstart-grid":
        print(quickstart_grid(a.work, a.dry))
    elif a.step == "precision":
        write_json(a.work / "precision.json", precision_step(a.work, a.dry))
    elif a.step == "bench":
        write_json(a.work / "bench.json", bench_step(a.work, a.dry))
    else:
        from benchmarks.gpu_report import render

        if a.out is None:
            p.error("render: give the Markdown file to write")
        a.out.write_text(render(a.work, a.dry))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
