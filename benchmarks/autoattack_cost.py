"""What AutoAttack adds to our cheap attacks, and what it costs, on the quickstart's models.

    python benchmarks/autoattack_cost.py                 # ~10-20 min on a 2-core CPU (models cached)
    python benchmarks/autoattack_cost.py --points 50 --eps 0.3   # smaller
    python benchmarks/autoattack_cost.py --eval-time-only --grid GRID --json FILE

Models: the four trials of ``sweeps/quickstart.yaml`` (standard, EntM λ=0.5, AT ε=0.2, AT+EntM),
trained here with ``uncertainty_robust.train.fit`` (no Ray, one process; cached under
``benchmarks/results/cache/``, not for git), plus a planted masked model: the standard model with its
logits multiplied by 1e4 (softmax saturated, CE input gradient exactly zero).

For each model and each eps, on the quickstart's AutoAttack points (a class-balanced subset of its
200 evaluation points, the same for every model):

- *ours*: the per-example worst case over the quickstart's attacks (FGSM, PGD-10, CW-10);
- *AA alone*: AutoAttack standard (pyautoattack: APGD-CE, APGD-T, FAB-T, Square-5000) on every
  clean-correct point, as RobustBench runs it;
- *ours+AA*: AutoAttack on the points our attacks left robust (what ``evaluate`` does);
- *ours ∪ AA alone*: the per-example worst case of the first two (what ours+AA should equal, up to
  AutoAttack's random starts);
- the cost of ours+AA (our attacks, then AutoAttack on the survivors) against AutoAttack alone, in
  process CPU seconds (one torch thread) and in forward+backward passes (examples). Goal: <= 1.0x.

``--eval-time-only`` times ``evaluate()`` on the four quickstart configs of ``--grid`` with the
library that is importable (the installed package, or the checkout on ``PYTHONPATH``): run it once
with the previous commit's checkout on ``PYTHONPATH`` and its ``quickstart.yaml`` for the "before"
numbers, and pass that JSON with ``--before``.
Writes ``<out>/autoattack.md`` and ``<out>/autoattack.json`` with the machine line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from sweeps.grid import load_grid
from uncertainty_robust.data import load_tensors
from uncertainty_robust.train import fit, make_model

REPO = Path(__file__).resolve().parents[1]


def load_avg() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine(threads: int) -> dict:
    """The machine line's facts (``benchmarks.harness.machine_info``) plus pyautoattack's version."""
    from importlib.metadata import PackageNotFoundError, version

    from benchmarks.harness import machine_info

    try:
        aa_version = version("pyautoattack")
    except PackageNotFoundError:
        aa_version = None
    return {**machine_info(threads), "pyautoattack": aa_version}


def machine_line(m: dict) -> str:
    return (
        f"{m['host']}: {m['cpu_count']} cores ({m['cpu_model']}), torch threads {m['torch_threads']}, python "
        f"{m['python']}, torch {m['torch']}, pyautoattack {m['pyautoattack']}, CUDA {'yes' if m['cuda'] else 'no'}, "
        f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}"
    )


def quickstart_models(grid_path: Path, cache: Path) -> list:
    """[(name, cfg, model)] for the grid's trials, trained once with ``fit`` and cached."""
    grid = load_grid(grid_path)
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for cfg in grid.trials:
        key = (
            f"quickstart_{cfg.defense}_lam{cfg.lam:g}_eps{cfg.eps_train:g}_w{cfg.width:g}_e{cfg.epochs}"
            f"_n{cfg.n_train}_s{cfg.seed}"
        )
        f = cache / f"{key}.pt"
        model = make_model(cfg)
        if f.exists():
            model.load_state_dict(torch.load(f, map_location="cpu"))
        else:
            print(f"training {key} once (cached at {f})", flush=True)
            model, _ = fit(cfg, cache / key, tensorboard=False)
            torch.save(model.state_dict(), f)
        out.append((cfg.method_label(), cfg, model.eval()))
    return out


class Saturate(torch.nn.Module):
    """The planted masked model: logits x 1e4 (same predictions, softmax one-hot, CE gradient 0)."""

    def __init__(self, model, t=1e4):
        super().__init__()
        self.model, self.t = model, t

    def forward(self, x):
        return self.model(x) * self.t


def library_id() -> str:
    """Which library ran: the importable ``uncertainty_robust`` and its checkout's git commit."""
    import subprocess

    import uncertainty_robust

    d = Path(uncertainty_robust.__file__).resolve().parent
    try:
        r = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=d, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "."], cwd=d, capture_output=True, text=True, timeout=5
        )
        commit = r.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"uncertainty_robust at commit {commit}" if commit else "uncertainty_robust (no git commit)"


def cpu_timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def compare(name, cfg, model, eps_list, n_points, seed=0) -> list:
    from uncertainty_robust.attacks import AttackSpec, Cost, run_suite
    from uncertainty_robust.autoattack import reference
    from uncertainty_robust.evaluate import autoattack_points

    x, y = load_tensors(cfg.dataset, "test", n=cfg.n_eval, seed=0)
    cfg_pts = type(cfg)(**{**cfg.to_dict(), "autoattack_points": min(n_points, cfg.n_eval)})
    pts = autoattack_points(y, cfg_pts)
    x, y = x[pts], y[pts]
    allp = torch.arange(len(y))
    spec = [AttackSpec("autoattack")]
    rows = []
    for eps in eps_list:
        torch.manual_seed(seed)
        suite, ours_cpu, ours_wall = cpu_timed(
            lambda eps=eps: run_suite(model, x, y, cfg.attacks, [eps], cfg.eval_batch_size)
        )
        ours_cost = Cost()
        for c in suite.cost.values():
            ours_cost.add(c)
        ours_cost.forward += len(y)  # the clean forward pass
        clean = suite.clean_correct
        alone, alone_cpu, alone_wall = cpu_timed(
            lambda eps=eps, m=clean: reference(
                model, x, y, spec, [eps], {eps: m}, allp, seed, cfg.eval_batch_size
            )
        )
        surv, surv_cpu, surv_wall = cpu_timed(
            lambda eps=eps, m=suite.worst[eps]: reference(
                model, x, y, spec, [eps], {eps: m}, allp, seed, cfg.eval_batch_size
            )
        )
        ours = suite.worst[eps]
        union = ours & alone["_robust"][eps]
        passes = lambda c: c.forward + c.backward  # noqa: E731
        row = {
            "model": name,
            "eps": eps,
            "n_points": len(y),
            "clean": float(clean.float().mean()),
            "ours": float(ours.float().mean()),
            "aa_alone": float(alone["_robust"][eps].float().mean()),
            "ours_plus_aa": float(surv["_robust"][eps].float().mean()),
            "ours_union_aa_alone": float(union.float().mean()),
            "aa_alone_by_attack": {r["label"]: r["acc"] for r in alone["results"]},
            "ours_plus_aa_by_attack": {r["label"]: r["acc"] for r in surv["results"]},
            "survivors": int(ours.sum()),
            "cpu_s": {"ours": ours_cpu, "aa_survivors": surv_cpu, "aa_alone": alone_cpu},
            "wall_s": {"ours": ours_wall, "aa_survivors": surv_wall, "aa_alone": alone_wall},
            "passes": {
                "ours": passes(ours_cost),
                "aa_survivors": passes(surv["cost"]),
                "aa_alone": passes(alone["cost"]),
            },
            "aa_checks": sorted({c["flag"] for c in alone["checks"] + surv["checks"]}),
        }
        row["ratio_cpu"] = (ours_cpu + surv_cpu) / alone_cpu if alone_cpu > 0 else None
        row["ratio_passes"] = (
            (row["passes"]["ours"] + row["passes"]["aa_survivors"]) / row["passes"]["aa_alone"]
            if row["passes"]["aa_alone"]
            else None
        )
        print(
            f"{name:28s} eps {eps:g}: ours {row['ours']:.3f}  AA alone {row['aa_alone']:.3f}  ours+AA "
            f"{row['ours_plus_aa']:.3f}  (union {row['ours_union_aa_alone']:.3f})  cost ours+AA / AA alone: "
            f"{row['ratio_cpu']:.2f}x CPU, {row['ratio_passes']:.2f}x passes  "
            f"[{ours_cpu:.1f} + {surv_cpu:.1f} vs {alone_cpu:.1f} CPU s]",
            flush=True,
        )
        rows.append(row)
    return rows


def eval_times(models) -> list:
    from uncertainty_robust.evaluate import evaluate

    out = []
    for name, cfg, model in models:
        torch.manual_seed(0)
        rec, cpu, wall = cpu_timed(lambda cfg=cfg, model=model: evaluate(model, cfg))
        out.append({"model": name, "cpu_s": cpu, "wall_s": wall, "eval_seconds": rec["eval_seconds"]})
        print(f"evaluate() {name:28s} {cpu:7.1f} CPU s  {wall:7.1f} s wall", flush=True)
    return out


def fmt(x, nd=1):
    return "—" if x is None else f"{100 * x:.{nd}f}"


def write_md(R: dict, path: Path) -> None:
    m = R["machine"]
    L = [
        "# AutoAttack: what it adds to our attacks, and its cost",
        "",
        f"Written by `benchmarks/autoattack_cost.py` ({R['finished']}). Machine: {machine_line(m)}.",
        "",
        f"Models: the four trials of `sweeps/quickstart.yaml` (small_cnn width 0.5, 2 epochs on 3,000 embedded-MNIST "
        f"digits; AT: PGD-5 at ε=0.2), trained with `fit` (no Ray), and a planted masked model: the standard model "
        f"with logits × 1e4. Points: a class-balanced subset of {R['points']} of the quickstart's 200 evaluation "
        f"points (embedded MNIST, held-out split), the same for every model; one seed (0). Library: {R['library']}. *ours* = "
        f"per-example worst case over the quickstart's attacks (FGSM, PGD-10, CW-10; L-inf); *AA alone* = AutoAttack "
        f"standard (pyautoattack {m['pyautoattack']}: APGD-CE 100 it., APGD-T 9×100, FAB-T 9×100, Square 5000 "
        f"queries) on every clean-correct point; *ours+AA* = AutoAttack on the points our attacks left robust "
        f"(what `evaluate` records); *ours ∪ AA* = per-example worst case of ours and AA alone. Accuracy in %. "
        f"Cost ratio = (our attacks + AutoAttack on the survivors) / AutoAttack alone, in process CPU seconds on one "
        f"torch thread and in forward+backward passes (examples); goal ≤ 1.0×.",
        "",
        "| model | ε | clean | ours | AA alone | ours+AA | ours ∪ AA | survivors | CPU s: ours + AA on survivors "
        "| CPU s: AA alone | ratio (CPU) | ratio (passes) | pyautoattack checks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in R["rows"]:
        L.append(
            f"| {r['model']} | {r['eps']:g} | {fmt(r['clean'])} | {fmt(r['ours'])} | {fmt(r['aa_alone'])} | "
            f"{fmt(r['ours_plus_aa'])} | {fmt(r['ours_union_aa_alone'])} | {r['survivors']} | "
            f"{r['cpu_s']['ours']:.1f} + {r['cpu_s']['aa_survivors']:.1f} | {r['cpu_s']['aa_alone']:.1f} | "
            f"{r['ratio_cpu']:.2f}× | {r['ratio_passes']:.2f}× | {', '.join(r['aa_checks']) or '—'} |"
        )
    tot = {k: sum(r["cpu_s"][k] for r in R["rows"]) for k in ("ours", "aa_survivors", "aa_alone")}
    tp = {k: sum(r["passes"][k] for r in R["rows"]) for k in ("ours", "aa_survivors", "aa_alone")}
    L += [
        "",
        f"Over all rows: ours + AA on survivors = {tot['ours']:.0f} + {tot['aa_survivors']:.0f} CPU s against AA alone "
        f"{tot['aa_alone']:.0f} CPU s: **{(tot['ours'] + tot['aa_survivors']) / tot['aa_alone']:.2f}×** "
        f"({(tp['ours'] + tp['aa_survivors']) / tp['aa_alone']:.2f}× in passes).",
        "",
        "Reading: where our cheap attacks break points AutoAttack would otherwise spend its 100 APGD-CE "
        "iterations (and FAB/Square queries) on, ours+AA is cheaper than AutoAttack alone; on the "
        "adversarially trained models at their training ε our attacks remove only points APGD-CE removes "
        "first anyway, so the two cost about the same, and a ratio above 1 appears only where the two runs "
        "end with different robust points (AutoAttack's random starts differ between them; every point "
        "that stays robust costs the full FAB-T and Square-5000 budget). The per-example worst case "
        "(ours+AA vs ours ∪ AA alone) agrees within those points.",
        "",
        "Per AutoAttack component (cumulative robust accuracy after each, %), AA alone → ours+AA:",
        "",
    ]
    for r in R["rows"]:
        a, b = r["aa_alone_by_attack"], r["ours_plus_aa_by_attack"]
        L.append(
            f"- {r['model']}, ε={r['eps']:g}: " + "; ".join(f"{k} {fmt(a[k])} → {fmt(b.get(k))}" for k in a)
        )
    if R.get("eval_time"):
        L += [
            "",
            "## Evaluation time of the quickstart, before and after",
            "",
            "`evaluate()` on each of the four quickstart models (the same trained weights), one torch thread, as the "
            "quickstart's trials run it (rank 0, after training); no Ray. *Before*: the library of the commit named, "
            "with its `quickstart.yaml` (FGSM, PGD-10, CW-10 on 200 points, the masking probe at the middle test ε). "
            "*After*: this library with this `quickstart.yaml` (the same attacks, AutoAttack standard at ε 0.2 and "
            "0.3 on a class-balanced subset of the 200 points, only on our attacks' survivors, and the new masking "
            "probe: 4x steps x 4x restarts CE-PGD on every point and Square-1000 on the AutoAttack points at the ε "
            "closest to 50 %).",
            "",
            "| model | before: CPU s | before: wall s | after: CPU s | after: wall s |",
            "|---|---|---|---|---|",
        ]
        before = {r["model"]: r for r in (R.get("eval_time_before") or {}).get("rows", [])}
        for r in R["eval_time"]:
            b = before.get(r["model"], {})
            L.append(
                f"| {r['model']} | {b.get('cpu_s', float('nan')):.1f} | {b.get('wall_s', float('nan')):.1f} | "
                f"{r['cpu_s']:.1f} | {r['wall_s']:.1f} |"
            )
        tb = sum(r.get("cpu_s", 0) for r in before.values())
        ta = sum(r["cpu_s"] for r in R["eval_time"])
        L += [
            "",
            f"Total: {tb:.0f} CPU s before, {ta:.0f} CPU s after"
            + (
                f" (before: {R['eval_time_before'].get('library')}; machine {machine_line(R['eval_time_before']['machine'])})."
                if before
                else "."
            ),
        ]
    path.write_text("\n".join(L) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default=str(REPO / "sweeps" / "quickstart.yaml"))
    p.add_argument("--points", type=int, default=100, help="AutoAttack points (a class-balanced subset)")
    p.add_argument("--eps", type=float, nargs="+", default=[0.2, 0.3])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--eval-time-only", action="store_true", help="only time evaluate() on the grid's models")
    p.add_argument("--json", help="with --eval-time-only: where to write the numbers")
    p.add_argument("--before", help="the JSON of an --eval-time-only run with the previous library")
    p.add_argument(
        "--no-eval-time", action="store_true", help="skip timing evaluate() on the quickstart models"
    )
    p.add_argument("--render", action="store_true", help="only rewrite autoattack.md from autoattack.json")
    args = p.parse_args(argv)
    if args.render:
        out = Path(args.out)
        write_md(json.loads((out / "autoattack.json").read_text()), out / "autoattack.md")
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    m = machine(args.threads)
    models = quickstart_models(Path(args.grid), out / "cache")
    if args.eval_time_only:
        rows = eval_times(models)
        m["loadavg_end"] = load_avg()
        res = {"machine": m, "library": library_id(), "grid": Path(args.grid).read_text(), "rows": rows}
        Path(args.json or out / "eval_time.json").write_text(json.dumps(res, indent=1))
        return 0
    std = next(mod for name, cfg, mod in models if cfg.defense == "standard")
    std_cfg = next(cfg for name, cfg, mod in models if cfg.defense == "standard")
    planted = [("planted: Standard, logits × 1e4", std_cfg, Saturate(std).eval())]
    t0 = time.time()
    rows = []
    for name, cfg, model in models + planted:
        rows += compare(name, cfg, model, args.eps, args.points)
    R = {
        "machine": m,
        "library": library_id(),
        "points": args.points,
        "eps": args.eps,
        "rows": rows,
        "seconds": time.time() - t0,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S%z"),
    }
    if not args.no_eval_time:
        R["eval_time"] = eval_times(models)
    if args.before:
        R["eval_time_before"] = json.loads(Path(args.before).read_text())
    m["loadavg_end"] = load_avg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "autoattack.json").write_text(json.dumps(R, indent=1))
    write_md(R, out / "autoattack.md")
    print(f"wrote {out / 'autoattack.md'} and {out / 'autoattack.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
