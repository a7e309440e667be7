"""``gpu.md`` from one ``gpu_check.sh`` run's work directory: the steps' exit codes and times
(``steps.jsonl``), the GPU tests (``tests.xml``, JUnit), the quickstart run's ``result.json`` files,
``precision.json`` and ``bench.json`` (:mod:`benchmarks.gpu_bench`). The prose is
``templates/gpu.md``. A dry run (``--cpu-dry-run``) is titled and marked as such on every verdict."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from benchmarks.harness import fmt, verdict
from benchmarks.render import fill, lines, row

DRY_BANNER = (
    "**CPU DRY RUN: these are not GPU results.** Every step ran on the CPU with tiny sizes to prove "
    "the script's plumbing end to end; no number here says anything about a GPU, and no goal is judged.\n\n"
)


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def device_line(work: Path, dry: bool) -> str:
    info = (_load(work / "bench.json") or _load(work / "precision.json") or {}).get("device") or {}
    smi = (work / "nvidia-smi.txt").read_text().strip() if (work / "nvidia-smi.txt").exists() else ""
    parts = [f"torch {info.get('torch')} (CUDA {info.get('cuda')})"]
    if info.get("device"):
        parts.insert(0, f"{info['device']} x{info.get('count', 1)}")
    if smi:
        parts.append("nvidia-smi: " + "; ".join(smi.splitlines()))
    if dry:
        parts.insert(0, "CPU (dry run)")
    return ", ".join(parts)


def _judge(ok, dry: bool) -> str:
    return "dry run: not judged" if dry else verdict(ok)


# ------------------------------------------------------------------------------------ goals
def _goal_attacks(b: dict, dry: bool) -> list:
    a = b.get("attacks") or {}
    if "models" not in a:
        return [
            (
                "PGD-20 vs torchattacks.PGD",
                f"not measured ({a.get('error')})",
                ">=1.2x at equal accuracy",
                "n/a",
            )
        ]
    out = []
    for mname, m in a["models"].items():
        for g, lab in (
            ("pgd20", "PGD-20 vs torchattacks.PGD"),
            ("cw30", "CW-30 vs torchattacks.UPGD(margin)"),
        ):
            v = m[g]["variants"]["ours_best"]
            s, d = v["speedup_vs_torchattacks_wall"], v["acc_diff_pts"]
            ok = None if s is None else (s >= 1.2 and abs(d) <= 0.5)
            what = f"{lab}, {mname} model eps {m['eps']}, {a['n_points']} points"
            out.append(
                (what, f"{fmt(s)}x faster; acc {d:+.2f} pt", ">=1.2x, |acc diff| <=0.5 pt", _judge(ok, dry))
            )
    return out


def _goal_precision(p: dict, dry: bool) -> list:
    out = []
    for name, r in ((p or {}).get("runs") or {}).items():
        c, rb = r["clean_acc"], r["robust_acc"]
        ok = r["speedup"] >= 1.5 and bool(c["within_one_std"]) and bool(rb["within_one_std"])
        judged = ok if c["within_one_std"] is not None else None
        seeds = len(r["speedup_per_seed"])
        measured = (
            f"{fmt(r['speedup'])}x; clean {100 * c['diff']:+.1f} pt, robust {100 * rb['diff']:+.1f} pt "
            f"(fp32 seed-std {fmt(100 * (c['fp32_seed_std'] or 0), 1)} / {fmt(100 * (rb['fp32_seed_std'] or 0), 1)} pt)"
            if seeds > 1
            else f"{fmt(r['speedup'])}x (1 seed: speed only)"
        )
        target = ">=1.5x, accuracies within one seed-std" if seeds > 1 else ">=1.5x"
        res = judged if seeds > 1 else r["speedup"] >= 1.5
        out.append(
            (f"bf16 AT vs fp32 AT epoch, {name} ({seeds} seed(s))", measured, target, _judge(res, dry))
        )
    return out


def _goal_jacobian(b: dict, dry: bool) -> list:
    j = b.get("jacobian") or {}
    if "floor" not in j:
        return [("exact Jacobian vs its floor", f"not measured ({j.get('error')})", "<=1.3x", "n/a")]
    f, r = j["floor"], j["reference"]
    return [
        (
            f"exact Jacobian norms vs 1 forward + K backward passes, {f['n_points']} points",
            f"{fmt(f['ratio_wall'])}x ({fmt(f['exact_wall_s'], 4)} s vs {fmt(f['floor_wall_s'], 4)} s)",
            "<=1.3x",
            _judge(f["ratio_wall"] <= 1.3, dry),
        ),
        (
            f"exact Jacobian vs autograd.functional.jacobian loop, {r['n_points']} points",
            f"{fmt(r['speedup_wall'], 1)}x faster",
            ">=20x (CPU bench item 3's goal)",
            _judge(r["speedup_wall"] >= 20, dry),
        ),
    ]


def _goal_at(b: dict, dry: bool) -> list:
    a = b.get("at_epoch") or {}
    return [
        (
            f"AT PGD-{k} epoch / standard epoch, {a['n_train']} points",
            f"{fmt(v['ratio_wall'])}x = {fmt(v['ratio_wall'] / (int(k) + 1))} x (k+1)",
            f"<=1.05 x (k+1) = {1.05 * (int(k) + 1):.2f}x",
            _judge(v["ratio_wall"] <= 1.05 * (int(k) + 1), dry),
        )
        for k, v in (a.get("k") or {}).items()
    ]


# ------------------------------------------------------------------------------------ sections
def _steps(work: Path) -> tuple:
    path = work / "steps.jsonl"
    steps = [json.loads(s) for s in path.read_text().splitlines() if s.strip()] if path.exists() else []
    rows = [row(s["step"], s["rc"], s["seconds"], s.get("what", "")) for s in steps]
    return lines(rows) or row("(none recorded)", "", "", ""), sum(s["seconds"] for s in steps)


def _tests(work: Path) -> str:
    path = work / "tests.xml"
    if not path.exists():
        return "Not run (no tests.xml)."
    suites = ET.parse(path).getroot()
    cases = list(suites.iter("testcase"))
    bad = [(c.get("name"), k) for c in cases for k in ("failure", "error") if c.find(k) is not None]
    skipped = [
        (c.get("name"), c.find("skipped").get("message", "")) for c in cases if c.find("skipped") is not None
    ]
    passed = len(cases) - len(bad) - len(skipped)
    text = [f"{len(cases)} tests: {passed} passed, {len(bad)} failed, {len(skipped)} skipped."]
    text += [f"- failed: `{n}` ({k})" for n, k in bad]
    text += [f"- skipped: `{n}`: {m}" for n, m in skipped]
    return "\n".join(text)


def _quickstart(work: Path) -> dict:
    import yaml

    grid = (
        yaml.safe_load((work / "quickstart.yaml").read_text()) if (work / "quickstart.yaml").exists() else {}
    )
    recs = [json.loads(p.read_text()) for p in sorted(work.glob("runs/gpu_quickstart/trials/*/result.json"))]
    rows = []
    for r in recs:
        pr = r.get("precision") or {}
        worst = ", ".join(f"{w['eps']:g}: {w['acc']:.3f}" for w in r["worst_case"])
        rows.append(row(r["name"], pr.get("device"), f"{pr.get('train')}/{pr.get('eval')}", f"{r['clean_acc']:.3f}",
                        worst, fmt(r["train"]["train_seconds"], 1), fmt(r["cost"]["eval"]["seconds"], 1)))  # fmt: skip
    on_gpu = sum(1 for r in recs if str((r.get("precision") or {}).get("device", "")).startswith("cuda"))
    summary = f"{len(recs)} of 4 trials finished, {on_gpu} of them on a CUDA device (from each result.json)."
    return {
        "quickstart_resources": f"resources {grid.get('resources')}, device {grid.get('device')}",
        "quickstart_summary": summary,
        "quickstart_rows": lines(rows) or row("(no result.json)", "", "", "", "", "", ""),
    }


def _acc_line(c: dict) -> str:
    line = (
        f"fp32 {c['fp32_mean']:.4f} vs bf16 {c['bf16_mean']:.4f} (mean over seeds, {100 * c['diff']:+.1f} pt)"
    )
    if c["fp32_seed_std"] is None:
        return line + ", one seed: no seed-std"
    within = "within" if c["within_one_std"] else "not within"
    return line + f", {within} one fp32 seed-std ({100 * c['fp32_seed_std']:.1f} pt)"


def _precision(p) -> dict:
    if not p:
        return {"pgd_steps": "k", "prec_config": "not run", "prec_points": 0, "prec_rows": row(*["n/a"] * 7),
                "prec_summary": "Not run (no precision.json)."}  # fmt: skip
    rows, summary = [], []
    for name, r in p["runs"].items():
        for prec, by_seed in r["runs"].items():
            for seed, v in by_seed.items():
                rows.append(row(name, prec, seed, fmt(v["epoch_s"], 3), v["epoch_seconds"], f"{v['clean_acc']:.4f}",
                                f"{v['robust_acc']:.4f}"))  # fmt: skip
        summary.append(
            f"{name}: bf16 {fmt(r['speedup'])}x the fp32 epoch speed (per seed {r['speedup_per_seed']}); "
            f"clean accuracy {_acc_line(r['clean_acc'])}; robust accuracy {_acc_line(r['robust_acc'])}."
        )
    first = next(iter(p["config"].values()))
    config = "; ".join(
        f"{n}: {c['model']} width {c['width']}, {c['epochs']} epochs, batch {c['batch_size']}, "
        f"n_train {c['n_train'] or 'all 8000'}, seeds {c['seeds']}"
        for n, c in p["config"].items()
    )
    any_run = next(iter(next(iter(p["runs"].values()))["runs"]["fp32"].values()))
    return {"pgd_steps": first["pgd_steps"], "prec_config": config, "prec_points": any_run["n_points"],
            "prec_rows": lines(rows), "prec_summary": "\n\n".join(summary)}  # fmt: skip


def _attack_section(b: dict) -> dict:
    a = b.get("attacks") or {}
    if "models" not in a:
        return {"attacks_intro": f"Not measured: {a.get('error')}", "attack_rows": row(*["n/a"] * 7)}
    rows = []
    for mname, m in a["models"].items():
        for g in ("pgd20", "cw30"):
            for vname, v in m[g]["variants"].items():
                rows.append(row(f"{mname} (eps {m['eps']})", g, vname, fmt(v["wall_median"], 4),
                                fmt(v.get("speedup_vs_torchattacks_wall")), f"{v['robust_acc']:.4f}",
                                f"{v.get('acc_diff_pts', 0):+.2f}"))  # fmt: skip
    intro = (
        f"{a['n_points']} held-out embedded-MNIST points in one batch, {a['rounds']} rounds; the small_cnn "
        "models of `benchmarks/run.py` (standard, and PGD-7 AT), trained on this device. `ours_best` is the "
        "evaluation mode (best iterate, per-step early exit), `ours_last` the last iterate (torchattacks' "
        "algorithm). torchattacks' CW is the L2 optimisation attack: our CW-30 is compared with UPGD on the margin loss."
    )
    return {"attacks_intro": intro, "attack_rows": lines(rows)}


def _autoattack_text(b: dict) -> str:
    a = b.get("autoattack") or {}
    if "alone_s" not in a:
        return f"Not measured: {a.get('error', 'no result')}."
    head = (
        f"AutoAttack (pyautoattack, version {a['version']}) on the {a['model']} model at eps {a['eps']}, "
        f"{a['n_points']} points: alone {a['alone_s']} s, robust accuracy {a['alone_acc']:.4f}."
    )
    if "project_s" not in a:
        return f"{head} Through the project: {a.get('project')}."
    return (
        f"{head} Through the project: {a['project_s']} s, robust accuracy {a['project_acc']:.4f} "
        f"({fmt(a['ratio'])}x the time of AutoAttack alone)."
    )


def _jacobian_text(b: dict) -> str:
    j = b.get("jacobian") or {}
    if "floor" not in j:
        return f"Not measured: {j.get('error', 'no result')}."
    f, r = j["floor"], j["reference"]
    return (
        f"`jacobian_norms` (1 forward and K backward passes per batch of 100, then the norms and the softmax "
        f"Jacobian from the logit rows) vs the same passes alone, {f['n_points']} points, {f['rounds']} rounds: "
        f"{fmt(f['ratio_wall'])}x its floor (per round {f['ratio_all_wall']}). Against a per-example "
        f"`torch.autograd.functional.jacobian` loop on {r['n_points']} points: {fmt(r['speedup_wall'], 1)}x faster; "
        f"largest relative difference of the norms {r['max_rel_diff']}."
    )


def _at_text(b: dict) -> str:
    a = b.get("at_epoch") or {}
    if "k" not in a:
        return f"Not measured: {a.get('error', 'no result')}."
    rows = [row(n, fmt(v["wall_median"], 3)) for n, v in a["epoch"].items()]
    return (
        f"One epoch of the training loop (defense loss with the PGD-k adversary, backward, Adam) on {a['n_train']} "
        f"points, batch {a['batch_size']}, eps {a['eps']}, {a['rounds']} rounds interleaved, fp32, wall clock.\n\n"
        "| run | epoch s (median) |\n|---|---|\n" + lines(rows)
    )


def render(work: Path, dry: bool) -> str:
    b = _load(work / "bench.json") or {}
    p = _load(work / "precision.json")
    goals = _goal_attacks(b, dry) + _goal_precision(p, dry) + _goal_jacobian(b, dry) + _goal_at(b, dry)
    step_rows, total = _steps(work)
    return fill(
        "gpu",
        title="GPU check: CPU DRY RUN (not GPU results)" if dry else "GPU check",
        banner=DRY_BANNER if dry else "",
        mode_flag=" --cpu-dry-run" if dry else "",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        total_s=f"{total:.0f}",
        device_line=device_line(work, dry),
        goal_rows=lines(row(*g) for g in goals),
        step_rows=step_rows,
        tests=_tests(work),
        **_quickstart(work),
        **_precision(p),
        **_attack_section(b),
        autoattack=_autoattack_text(b),
        jacobian=_jacobian_text(b),
        at_epoch=_at_text(b),
    )
