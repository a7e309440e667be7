"""Item 6, ``suite``: ``run_suite(per_attack=False)`` with FGSM, PGD-20 and CW-30 (each attack only
on the points the previous ones left standing) vs the strongest of them alone; time, worst-case
accuracy and backward passes from the suite's own ``Cost`` accounting."""

from __future__ import annotations

import statistics

from benchmarks.harness import (
    EVAL_EPS,
    AlwaysTrain,
    eval_points,
    fmt,
    log,
    med,
    paired,
    r3,
    ratio_stats,
    verdict,
)
from benchmarks.render import fill, lines, row

NAME = "suite"
TITLE = "the attack suite with early exit vs the strongest attack alone"


def _fns(model, x, y, specs, eps) -> dict:
    from uncertainty_robust.attacks import run_suite

    legacy = AlwaysTrain(model)
    fns = {
        "suite_early_exit": lambda: run_suite(model, x, y, specs, [eps], per_attack=False),
        "suite_early_exit_fullbatch": lambda: run_suite(legacy, x, y, specs, [eps], per_attack=False),
    }
    for s in specs:
        fns[s.label()] = lambda s=s: run_suite(model, x, y, [s], [eps])
        if s.name != "fgsm":
            fns[f"{s.label()}_fullbatch"] = lambda s=s: run_suite(legacy, x, y, [s], [eps])
    return fns


def _passes(res: dict, strongest: str, eps: float) -> dict:
    """Backward passes spent, from the suite's own cost accounting (deterministic)."""
    r0, r1 = res["suite_early_exit"]["out"][0], res["suite_early_exit_fullbatch"]["out"][0]
    m = {
        "suite_backward_passes": {lab: c.backward for (lab, e), c in r0.cost.items()},
        "strongest_backward_passes": res[strongest]["out"][0].cost[(strongest, eps)].backward,
    }
    m["passes_ratio"] = r3(sum(m["suite_backward_passes"].values()) / max(1, m["strongest_backward_passes"]))
    m["suite_backward_passes_fullbatch"] = {lab: c.backward for (lab, e), c in r1.cost.items()}
    fb = res.get(f"{strongest}_fullbatch")
    m["strongest_backward_passes_fullbatch"] = fb["out"][0].cost[(strongest, eps)].backward if fb else None
    return m


def measure(model, x, y, specs, eps: float, rounds: int) -> dict:
    fns = _fns(model, x, y, specs, eps)
    res = paired(fns, rounds)
    accs = {v: statistics.fmean(float(r.worst[eps].float().mean()) for r in res[v]["out"]) for v in fns}
    singles = [s.label() for s in specs]
    strongest = min(singles, key=lambda lab: (round(accs[lab], 6), -med(res[lab]["wall"])))
    m = {
        "eps": eps,
        "strongest": strongest,
        "acc": {v: r3(a, 4) for v, a in accs.items()},
        "wall_median": {v: r3(med(res[v]["wall"])) for v in fns},
        "ratio_suite_over_strongest": ratio_stats(res, "suite_early_exit", strongest),
    }
    if f"{strongest}_fullbatch" in res:
        m["ratio_fullbatch_suite_over_fullbatch_strongest"] = ratio_stats(
            res, "suite_early_exit_fullbatch", f"{strongest}_fullbatch"
        )
    m["speedup_from_per_step_exit"] = {
        "suite": ratio_stats(res, "suite_early_exit_fullbatch", "suite_early_exit")
    }
    for s in singles:
        if f"{s}_fullbatch" in res:
            m["speedup_from_per_step_exit"][s] = ratio_stats(res, f"{s}_fullbatch", s)
    m.update(_passes(res, strongest, eps))
    return m


def run(ctx) -> dict:
    from uncertainty_robust.config import AttackSpec

    n, rounds = (150, 2) if ctx.args.quick else (300, 2)
    x, y = eval_points(n)
    specs = [AttackSpec("fgsm", steps=1), AttackSpec("pgd", 20), AttackSpec("cw", 30)]
    out = {"n_points": n, "rounds": rounds, "specs": [s.label() for s in specs], "models": {}}
    for mname, model in ctx.models().items():
        eps = EVAL_EPS[mname]
        log(f"suite: {mname} model, eps {eps}, {n} points x {rounds} rounds")
        out["models"][mname] = measure(model, x, y, specs, eps, rounds)
    return out


def rows(rec: dict) -> list:
    out = []
    for mname, m in rec["result"]["models"].items():
        r = m["ratio_suite_over_strongest"]["cpu"]
        out.append(
            (
                f"6 suite (early exit) / strongest alone ({m['strongest']}), {mname} model eps {m['eps']}",
                f"{fmt(r)}x (wall {fmt(m['ratio_suite_over_strongest']['wall'])}x; backward passes "
                f"{fmt(m.get('passes_ratio'))}x)",
                "<=1.2x",
                verdict(r <= 1.2),
                f"worst-case acc {fmt(100 * m['acc']['suite_early_exit'], 1)}% vs {fmt(100 * m['acc'][m['strongest']], 1)}%",
            )
        )
    return out


def section(rec: dict) -> str:
    u = rec["result"]
    ms = u["models"].items()
    table = [
        row(
            mname, m["eps"], m["strongest"], f"{fmt(m['ratio_suite_over_strongest']['cpu'])}x",
            f"{fmt((m.get('ratio_fullbatch_suite_over_fullbatch_strongest') or {}).get('cpu'))}x",
            f"{m['acc']['suite_early_exit']:.4f}", f"{m['acc'][m['strongest']]:.4f}",
            m["suite_backward_passes"], m["strongest_backward_passes"],
        )
        for mname, m in ms
    ]  # fmt: skip
    exit_speedups = "; ".join(
        f"{mn}: " + ", ".join(f"{k} {fmt(v['cpu'])}x" for k, v in m["speedup_from_per_step_exit"].items())
        for mn, m in ms
    )
    passes = "; ".join(
        f"{mn}: suite {m['suite_backward_passes']} = {sum(m['suite_backward_passes'].values())} vs "
        f"{m['strongest']} alone {m['strongest_backward_passes']} ({fmt(m.get('passes_ratio'))}x); before the "
        f"per-step exit: suite {m.get('suite_backward_passes_fullbatch')} vs {m.get('strongest_backward_passes_fullbatch')}"
        for mn, m in ms
    )
    return fill(
        NAME, specs=u["specs"], n_points=u["n_points"], rounds=u["rounds"], rows=lines(table),
        exit_speedups=exit_speedups, passes=passes,
    )  # fmt: skip
