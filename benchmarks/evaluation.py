"""The evaluation engine, measured (``benchmarks/results/evaluation.md``):

    python -m benchmarks.evaluation            # ~15-25 min on a 2-core CPU (the four models are trained first)
    python -m benchmarks.evaluation --render   # evaluation.md again from evaluation.json
    python -m benchmarks.evaluation --points 100,50,25   # + evaluation time against points (~15 min)

On the quickstart's four models (``sweeps/quickstart.yaml``: standard, EntM, AT, AT+EntM, trained
here with ``fit`` exactly as the grid says) and its 100 test points:

1. **ranks**: the AT model's evaluation on 2 DDP ranks (gloo, one thread each) against 1 rank:
   wall time, and whether every point's outcome is identical;
2. **vs pyautoattack**: our whole evaluation (ours + AutoAttack at every informative eps, survivor
   filter and eps reuse on) against ``pyautoattack.AutoAttack(version="standard")
   .run_standard_evaluation`` called once per eps on the same points and model: time, passes, and
   the points pyautoattack alone breaks that we count robust (there should be none);
3. **passes saved** by the survivor filter (AutoAttack on ours' survivors vs on every clean point,
   as run_standard_evaluation does) and by the eps reuse (``reuse_eps`` on vs off), per defense;
4. **the dry run's estimate** of each evaluation (``sweeps/cost.py``: its prior, and the measured
   shares) against what it took;
5. with ``--points``: each model's whole evaluation (1 rank, the grid otherwise unchanged; the points
   in 2 chunks as the grid has them) on fewer points: CPU time by stage, and the CPU time the whole
   quickstart's evaluation needs at each size, a floor under its wall time on 2 cores.

Every number is from one run on one machine (stated in the file), the machine otherwise idle; the
``--points`` section states its own load (its figures are process CPU time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "cache"
REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def quickstart_models() -> list:
    """[(defense, cfg, model)] of sweeps/quickstart.yaml, trained once and cached."""
    from sweeps.grid import load_grid
    from uncertainty_robust.train import fit, make_model

    out = []
    for cfg in load_grid(REPO / "sweeps" / "quickstart.yaml").trials:
        path = CACHE / f"quickstart_{cfg.dirname()}.pt"
        model = make_model(cfg)
        if path.exists():
            model.load_state_dict(torch.load(path))
        else:
            log(f"training {cfg.short_name()} (quickstart settings, one process)")
            model, _ = fit(cfg, CACHE / "work" / cfg.dirname(), tensorboard=False)
            CACHE.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
        out.append((cfg.defense, cfg, model.eval()))
    return out


def _passes(cost: dict) -> float:
    from uncertainty_robust.attacks import Cost

    return Cost(cost["forward"], cost["backward"]).passes


def ours(cfg, model) -> dict:
    """Our evaluation, one rank: wall and CPU time, passes by stage, the per-point worst case."""
    from uncertainty_robust.evaluation import evaluate

    c0, t0 = time.process_time(), time.perf_counter()
    rec = evaluate(model, cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stages = rec["evaluation"]["cost_by_stage"]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "passes": {k: v["passes"] for k, v in stages.items()},
        "seconds_by_stage": {k: v["seconds"] for k, v in stages.items()},
        "aa_eps": [e["eps"] for e in (rec["autoattack"] or {}).get("eps", []) if e["ran"]],
        "worst_case": [
            {k: w.get(k) for k in ("eps", "acc", "ours", "autoattack")} for w in rec["worst_case"]
        ],
        "_rec": rec,
    }


def pyautoattack_alone(cfg, model, eps_list: list) -> dict:
    """``run_standard_evaluation`` once per eps on the n_eval points: time, passes, robust masks."""
    from pyautoattack import AutoAttack

    from uncertainty_robust.attacks import Cost
    from uncertainty_robust.attacks.autoattack import Counted, captured_warnings
    from uncertainty_robust.data import load_tensors

    x, y = load_tensors(cfg.dataset, "test", n=cfg.n_eval, seed=0)
    out = {"wall_s": 0.0, "passes": 0.0, "robust": {}, "per_eps": []}
    for eps in eps_list:
        cost = Cost()
        counted = Counted(model, cost).eval()
        aa = AutoAttack(counted, norm="Linf", eps=eps, version="standard", seed=0)
        aa.verbose = False
        t0 = time.perf_counter()
        with captured_warnings():  # its checks' warnings: the evaluation records them, here noise
            xa, _ = aa.run_standard_evaluation(x, y, batch_size=cfg.eval_batch_size)  # (x_adv, y_adv)
        wall = time.perf_counter() - t0
        with torch.no_grad():
            ok = (model(xa).argmax(1) == y) & ((xa - x).flatten(1).abs().amax(1) <= eps + 1e-5)
        out["robust"][eps] = ok
        out["wall_s"] += wall
        out["passes"] += cost.passes
        out["per_eps"].append(
            {"eps": eps, "wall_s": wall, "passes": cost.passes, "acc": float(ok.float().mean())}
        )
    return out


def estimate(cfg, measured_rec: dict) -> dict:
    """The dry run's estimate of the evaluation's CPU seconds (``sweeps/cost.py``: the plan's passes
    and iterations at this machine's measured costs), with the prior and with the measured shares."""
    from sweeps.cost import evaluation_seconds, iteration_seconds, measured, prior, seconds_per_example
    from uncertainty_robust.evaluation import EvalPlan

    names = {w.attack for w in EvalPlan.of(cfg).expected_work(prior(cfg))}
    cal = {"example": seconds_per_example(cfg), "iteration": iteration_seconds(cfg, names)}
    return {
        "sec_per_pass": cal["example"],
        "sec_per_iteration": cal["iteration"],
        "seconds_prior": evaluation_seconds(cfg, prior(cfg), cal),
        "seconds_measured_shares": evaluation_seconds(cfg, measured(measured_rec), cal),
    }


def _rank(rank: int, world: int, port: int, path: str, cfg: dict, out: str) -> None:
    import torch.distributed as dist

    from uncertainty_robust.config import TrialConfig
    from uncertainty_robust.evaluation import evaluate
    from uncertainty_robust.train import make_model

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    c = TrialConfig.from_dict(cfg)
    m = make_model(c)
    m.load_state_dict(torch.load(path))
    dist.barrier()
    t0 = time.perf_counter()
    rec = evaluate(m.eval(), c)
    dist.barrier()
    wall = time.perf_counter() - t0
    if rank == 0:
        keep = {k: rec[k] for k in ("attacks", "worst_case", "autoattack", "jacobian", "masking_probe")}
        torch.save(
            {"wall_s": wall, "masks": rec["_masks"], "rec": keep, "world": rec["evaluation"]["world_size"]},
            out,
        )
    dist.destroy_process_group()


def evaluate_on_ranks(model, cfg, world: int, workdir: Path) -> dict:
    """``evaluate`` on ``world`` DDP ranks (separate processes, gloo, one thread each) of the same
    model: rank 0's wall time, per-point masks, record parts and world size."""
    import torch.multiprocessing as mp

    workdir.mkdir(parents=True, exist_ok=True)
    path, out = workdir / f"model_{world}.pt", workdir / f"ranks_{world}.pt"
    torch.save(model.state_dict(), path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(world, port, str(path), cfg.to_dict(), str(out)), nprocs=world)
    return torch.load(out)


def ranks(cfg, model) -> dict:
    """1 rank vs 2 ranks on the same model."""
    res = {world: evaluate_on_ranks(model, cfg, world, CACHE) for world in (1, 2)}
    same = all(torch.equal(res[1]["masks"][k], res[2]["masks"][k]) for k in res[1]["masks"])
    return {
        "wall_1_s": res[1]["wall_s"],
        "wall_2_s": res[2]["wall_s"],
        "speedup": res[1]["wall_s"] / res[2]["wall_s"],
        "identical_per_point": same,
        "n_masks": len(res[1]["masks"]),
    }


def run(partial: Path) -> dict:
    """Every measurement; each part is saved to ``partial`` as it finishes and not measured again by a
    rerun (delete the file to start over)."""
    from benchmarks.harness import machine_info

    torch.set_num_threads(1)
    models = quickstart_models()
    R = json.loads(partial.read_text()) if partial.exists() else {}
    R.setdefault("machine", machine_info(1))
    R.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
    R.setdefault("load_start", os.getloadavg())
    at = next((cfg, m) for d, cfg, m in models if d == "at")
    if "ranks" not in R:
        log("ranks: the AT model on 1 and 2 ranks")
        R["ranks"] = ranks(*at)
        partial.write_text(json.dumps(R, indent=1, default=float))
    log(f"  ranks: {R['ranks']}")
    R.setdefault("defenses", [])
    for defense, cfg, model in models:
        if any(d["defense"] == defense for d in R["defenses"]):
            continue
        log(f"{defense}: our evaluation (reuse on), then reuse off, then pyautoattack alone")
        torch.manual_seed(0)
        a = ours(cfg, model)
        b = ours(dataclasses.replace(cfg, reuse_eps=False), model)
        pos = [e for e in cfg.eval_eps() if e > 0]
        alone = pyautoattack_alone(cfg, model, pos)
        masks = a["_rec"]["_masks"]
        missed = {
            f"{e:g}": int((masks[f"autoattack/{e:g}"] & ~alone["robust"][e]).sum()) for e in pos
        }  # broken by pyautoattack alone, robust in ours
        aa_only = [e for e in pos if e in a["aa_eps"]]
        alone_at_aa = sum(p["passes"] for p in alone["per_eps"] if p["eps"] in aa_only)
        row = {
            "defense": defense,
            "eps": pos,
            "ours": {k: v for k, v in a.items() if not k.startswith("_")},
            "ours_no_reuse": {k: v for k, v in b.items() if not k.startswith("_")},
            "pyautoattack": {k: v for k, v in alone.items() if k != "robust"},
            "missed_by_ours": missed,
            "time_ratio": a["wall_s"] / alone["wall_s"],
            "aa_passes_ours": a["passes"]["autoattack"],
            "aa_passes_alone_at_the_same_eps": alone_at_aa,
            "estimate": estimate(cfg, a["_rec"]),
        }
        log(
            f"  ours {a['wall_s']:.1f} s vs pyautoattack {alone['wall_s']:.1f} s ({row['time_ratio']:.2f}x); "
            f"missed {missed}; estimate {row['estimate']['seconds_prior']:.1f} s (prior)"
        )
        R["defenses"].append(row)
        partial.write_text(json.dumps(R, indent=1, default=float))
    R["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    R["load_end"] = os.getloadavg()
    return R


def points(sizes: list) -> dict:
    """Evaluation CPU time against the number of points, per model (one rank, one thread)."""
    from benchmarks.harness import machine_info

    torch.set_num_threads(1)
    out = {"sizes": sizes, "machine": machine_info(1), "load_start": os.getloadavg(), "rows": []}
    models = quickstart_models()
    for n in sizes:
        for defense, cfg, model in models:
            c = dataclasses.replace(
                cfg, n_eval=n, chunk_points=-(-n // 2), jacobian_points=min(cfg.jacobian_points, n)
            )
            log(f"points: {defense} on {n} points")
            a = ours(c, model)
            out["rows"].append(
                {
                    "defense": defense,
                    "points": n,
                    "cpu_s": a["cpu_s"],
                    "seconds_by_stage": a["seconds_by_stage"],
                    "aa_eps": a["aa_eps"],
                }
            )
    out["load_end"] = os.getloadavg()
    out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return out


def render_points(P: dict) -> list:
    from benchmarks.harness import machine_line

    sizes, rows = P["sizes"], P["rows"]
    total = {n: sum(r["cpu_s"] for r in rows if r["points"] == n) for n in sizes}
    lines = [
        "",
        "## Evaluation time against points",
        "",
        f"Written by `python -m benchmarks.evaluation --points` ({P['finished']}). Machine: "
        f"{machine_line(P['machine'])}; load average {P['load_start'][0]:.2f} at the start, "
        f"{P['load_end'][0]:.2f} at the end (process CPU time; a load above 1: another process ran on "
        "the other core). The quickstart's four models; each whole evaluation on 1 rank with `n_eval` points "
        "in 2 chunks, the grid otherwise unchanged (its ε, attacks, AutoAttack rule, probe). "
        "CPU seconds:",
        "",
        "| defense | " + " | ".join(f"{n} points (AutoAttack)" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for d in dict.fromkeys(r["defense"] for r in rows):
        cells = []
        for n in sizes:
            r = next(r for r in rows if r["defense"] == d and r["points"] == n)
            cells.append(f"{r['cpu_s']:.1f} ({r['seconds_by_stage']['autoattack']:.1f})")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines.append("| **all four** | " + " | ".join(f"**{total[n]:.0f}**" for n in sizes) + " |")
    big = sizes[0]
    lines += [
        "",
        "- Fewer points: "
        + ", ".join(f"{n} points {total[n] / total[big]:.2f}×" for n in sizes[1:])
        + f" the CPU time of {big} points. AutoAttack's cost is partly per robust point (Square's 5,000 "
        "queries and the 9 targets of APGD-T and FAB-T are passes of every survivor) and partly a "
        "per-iteration floor that every chunk pays (this grid's 2 chunks: 2 calls per component and ε), "
        "which grows in share as the points shrink.",
        "- The evaluation alone therefore needs "
        + ", ".join(f"{total[n]:.0f} CPU-s at {n} points" for n in sizes)
        + ": on 2 cores at least "
        + ", ".join(f"{total[n] / 2:.0f} s" for n in sizes)
        + " of wall time, before the training, Ray's start and stop, the aggregation and the DDP ranks' "
        "overhead.",
    ]
    return lines


def render(R: dict) -> str:
    from benchmarks.harness import machine_line
    from sweeps.cost import CLEAN_ACC

    rk = R["ranks"]
    lines = [
        "# The evaluation engine, measured",
        "",
        f"Written by `python -m benchmarks.evaluation` ({R['finished']}). Machine: {machine_line(R['machine'])}; "
        f"load average {R['load_start'][0]:.2f} at the start, {R['load_end'][0]:.2f} at the end. One run, "
        "one machine: ratios, not timings to quote elsewhere. No GPU was lent to this session: the GPU rows "
        "are **not run** (`benchmarks/gpu_check.sh` has the same two measurements for a GPU).",
        "",
        "Models: the quickstart's four (`sweeps/quickstart.yaml`: `small_cnn` width 0.25, 2 epochs on 3,000 "
        "embedded-MNIST digits; AT and AT+EntM with PGD-5 at ε 0.2), trained by `fit` as the grid says. "
        "Points: the grid's 100 held-out test points (class-balanced). Attacks: ours FGSM, PGD-10, CW-10; "
        "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square-5000) at every ε where ours leave 1-99 % "
        "robust; one torch thread per process.",
        "",
        "## Goals",
        "",
        "| measure | goal | measured |",
        "|---|---|---|",
        f"| AT model: 2 ranks vs 1 rank, evaluation wall time | ≥ 1.8× | **{rk['speedup']:.2f}×** "
        f"({rk['wall_1_s']:.1f} s → {rk['wall_2_s']:.1f} s); per-point outcomes identical: "
        f"{'yes' if rk['identical_per_point'] else '**no**'} ({rk['n_masks']} outcome arrays) |",
    ]
    for d in R["defenses"]:
        missed = sum(d["missed_by_ours"].values())
        ours_passes = sum(d["ours"]["passes"].values())
        lines.append(
            f"| {d['defense']}: our whole evaluation vs pyautoattack `run_standard_evaluation` per ε "
            f"({', '.join(f'{e:g}' for e in d['eps'])}) | ≤ 0.5× the time, no point it breaks counted robust | "
            f"time **{d['time_ratio']:.2f}×** ({d['ours']['wall_s']:.1f} s vs {d['pyautoattack']['wall_s']:.1f} s), "
            f"passes {ours_passes / d['pyautoattack']['passes']:.2f}× ({ours_passes:,.0f} vs "
            f"{d['pyautoattack']['passes']:,.0f}); points pyautoattack alone breaks that we count robust: {missed} |"
        )
    for d in R["defenses"]:
        e = d["estimate"]
        lines.append(
            f"| {d['defense']}: dry-run estimate of the evaluation / measured CPU time | within 1.3× | "
            f"prior **{e['seconds_prior'] / d['ours']['cpu_s']:.2f}×**, measured shares "
            f"{e['seconds_measured_shares'] / d['ours']['cpu_s']:.2f}× ({e['seconds_prior']:.0f} s, "
            f"{e['seconds_measured_shares']:.0f} s vs {d['ours']['cpu_s']:.0f} s) |"
        )
    lines += ["| GPU: the same ratios | — | not run (no GPU lent) |", ""]
    aa_share = [d["ours"]["seconds_by_stage"]["autoattack"] / d["ours"]["cpu_s"] for d in R["defenses"]]
    saved = [1 - d["aa_passes_ours"] / d["aa_passes_alone_at_the_same_eps"] for d in R["defenses"]]
    missed = sum(sum(d["missed_by_ours"].values()) for d in R["defenses"])
    cells = [
        (w["acc"], {p["eps"]: p["acc"] for p in d["pyautoattack"]["per_eps"]}[w["eps"]])
        for d in R["defenses"]
        for w in d["ours"]["worst_case"]
        if w["eps"] > 0
    ]
    same = sum(abs(a - b) < 1e-9 for a, b in cells)
    clean_adv = [
        next(w["acc"] for w in d["ours"]["worst_case"] if w["eps"] == 0)
        for d in R["defenses"]
        if d["defense"].startswith("at")
    ]
    lines += [
        "## What the numbers say",
        "",
        f"- **Ranks.** Two ranks evaluate the AT model {rk['speedup']:.2f}× faster than one, every point's "
        "outcome identical: each rank takes its chunks, and the chunks, not the ranks, carry the seeds.",
        f"- **Against pyautoattack alone the goal of ≤ 0.5× is missed**: our whole evaluation takes "
        f"{min(d['time_ratio'] for d in R['defenses']):.2f}-{max(d['time_ratio'] for d in R['defenses']):.2f}× "
        "its time. AutoAttack is "
        f"{100 * min(aa_share):.0f}-{100 * max(aa_share):.0f} % of our evaluation, and its cost is the points it "
        "cannot break: a robust point costs APGD-T's and FAB-T's 9 targets × 100 iterations and Square's 5,000 "
        "queries whoever filters the points before it, while a point our attacks break would have cost "
        "pyautoattack only APGD-CE's 100 iterations. The survivor filter therefore saves only "
        f"{100 * min(saved):.0f}-{100 * max(saved):.0f} % of AutoAttack's passes here, and the ε reuse about 1 % of "
        "all passes (our attacks are cheap). On this CPU a small batch also pays each iteration's fixed cost: "
        "our 2 chunks of 50 points call each component twice per ε where pyautoattack calls it once on 100, "
        "which is why our time ratio is above our pass ratio (the 2-rank run gives each chunk a rank). "
        "What the engine buys is coverage at the same cost: AutoAttack at every informative ε on every "
        f"point (the quickstart's grid before ran it at 2 ε on 50 of 200 points), with {missed} point(s) "
        f"that pyautoattack alone breaks counted robust by us, and the same accuracy as pyautoattack alone in "
        f"{same} of the {len(cells)} (defense, ε) cells below.",
        "- **The dry run's estimate** prices every step's passes at the measured per-example cost and its "
        "loop iterations at each attack's measured per-iteration cost (`sweeps/cost.py`). With the shares "
        "of points each attack really left standing it is within "
        f"{min(d['estimate']['seconds_measured_shares'] / d['ours']['cpu_s'] for d in R['defenses']):.2f}-"
        f"{max(d['estimate']['seconds_measured_shares'] / d['ours']['cpu_s'] for d in R['defenses']):.2f}× of the "
        "CPU time measured; with its prior (before any model exists) the error is the prior's guess of how "
        f"robust the models are (the AT models' clean accuracy: "
        f"{', '.join(f'{100 * a:.0f} %' for a in clean_adv)}; the prior assumes {100 * CLEAN_ACC:.0f} %).",
        "",
        "## Passes saved, per defense",
        "",
    ]
    lines += [
        "Forward+backward pass equivalents (a forward alone counts a third), counted by the evaluation. "
        "*Survivor filter*: AutoAttack's passes on our attacks' survivors vs pyautoattack alone on every "
        "clean point at the same ε. *ε reuse*: the whole evaluation with `reuse_eps: false` vs on.",
        "",
        "| defense | AutoAttack ran at ε | AA passes: on survivors / alone | saved by the filter | "
        "all passes: reuse on / off | saved by the reuse |",
        "|---|---|---|---|---|---|",
    ]
    for d in R["defenses"]:
        on, off = sum(d["ours"]["passes"].values()), sum(d["ours_no_reuse"]["passes"].values())
        aa, alone = d["aa_passes_ours"], d["aa_passes_alone_at_the_same_eps"]
        filt = f"{100 * (1 - aa / alone):.0f} %" if alone else "—"
        lines.append(
            f"| {d['defense']} | {', '.join(f'{e:g}' for e in d['ours']['aa_eps']) or 'none'} | "
            f"{aa:,.0f} / {alone:,.0f} | {filt} | {on:,.0f} / {off:,.0f} | {100 * (1 - on / off):.0f} % |"
        )
    lines += ["", "## Per defense and ε", ""]
    lines += [
        "| defense | ε | ours (worst) | ours + AutoAttack | pyautoattack alone | AutoAttack ran? |",
        "|---|---|---|---|---|---|",
    ]
    for d in R["defenses"]:
        alone = {p["eps"]: p for p in d["pyautoattack"]["per_eps"]}
        for w in d["ours"]["worst_case"]:
            if w["eps"] <= 0:
                continue
            ran = (w.get("autoattack") or {}).get("why", "")
            lines.append(
                f"| {d['defense']} | {w['eps']:g} | {100 * (w['ours'] or w)['acc']:.1f} | {100 * w['acc']:.1f} | "
                f"{100 * alone[w['eps']]['acc']:.1f} | {ran} |"
            )
    if R.get("points"):
        lines += render_points(R["points"])
    return "\n".join(lines) + "\n"


def _point_counts(text: str) -> list:
    """``--points``: distinct positive numbers of points, comma-separated (else an argparse error, exit 2)."""
    try:
        sizes = [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if any(n < 1 for n in sizes) or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"the numbers of points must be distinct and positive: {text!r}")
    return sizes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.evaluation", description=__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--render", action="store_true", help="write evaluation.md from evaluation.json")
    mode.add_argument(
        "--estimates",
        action="store_true",
        help="measure the dry run's estimates again (for evaluation.json's measured evaluations) and render",
    )
    mode.add_argument(
        "--points",
        type=_point_counts,
        metavar="N,N,...",
        help="measure the evaluation's CPU time at these numbers of points (into evaluation.json) and render",
    )
    args = p.parse_args(argv)
    js = RESULTS / "evaluation.json"
    if args.points:
        R = json.loads(js.read_text())
        R["points"] = points(args.points)
        js.write_text(json.dumps(R, indent=1, default=float))
    elif args.estimates:
        R = json.loads(js.read_text())
        torch.set_num_threads(1)
        by = {d: cfg for d, cfg, _ in quickstart_models()}
        for d in R["defenses"]:
            d["estimate"] = estimate(by[d["defense"]], {"worst_case": d["ours"]["worst_case"]})
            log(
                f"{d['defense']}: estimate {d['estimate']['seconds_prior']:.1f} s vs {d['ours']['cpu_s']:.1f} s"
            )
        R["estimates_measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
        js.write_text(json.dumps(R, indent=1, default=float))
    elif not args.render:
        partial = CACHE / "evaluation.partial.json"
        CACHE.mkdir(parents=True, exist_ok=True)
        R = run(partial)
        js.write_text(json.dumps(R, indent=1, default=float))
        partial.unlink()
    R = json.loads(js.read_text())
    (RESULTS / "evaluation.md").write_text(render(R))
    log(f"wrote {RESULTS / 'evaluation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
