"""Item 1, ``attacks``: our FGSM, PGD-20 and CW-30 (margin-loss L-inf PGD) vs torchattacks' FGSM,
PGD and UPGD(loss="margin", decay=0): time and robust accuracy on the same points with the same
seeds, ours in evaluation mode (best iterate, per-step early exit) and with ``track_best=False``.

torchattacks' ``CW`` is the L2 Carlini-Wagner optimisation attack, another threat model; our ``cw``
(PGD on the margin loss in the L-inf ball) is compared with torchattacks' ``UPGD`` on its margin
("CW f-function") loss without momentum, the same algorithm with torchattacks' loss.
"""

from __future__ import annotations

import statistics

from benchmarks.harness import (
    EVAL_EPS,
    AlwaysTrain,
    accuracy,
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

NAME = "attacks"
TITLE = "our FGSM / PGD-20 / CW-30 (margin-loss PGD) vs torchattacks FGSM / PGD / UPGD(margin)"
COMPARED = {
    "fgsm": "ours attacks.fgsm vs torchattacks.FGSM (one signed CE-gradient step of size eps)",
    "pgd20": "ours attacks.pgd (L-inf, CE, random start, step 2.5*eps/20) vs torchattacks.PGD(alpha=2.5*eps/20, "
    "steps=20, random_start=True); same seed => the same random start",
    "cw30": "ours attacks.cw_linf (PGD on the margin max_{j!=y} z_j - z_y, 30 steps of 2.5*eps/30) vs "
    "torchattacks.UPGD(loss='margin', decay=0.0, random_start=True, same steps/step): PGD on "
    "torchattacks' CW f-function -clamp(z_y - max_{j!=y} z_j, min=0); torchattacks.CW is the L2 "
    "Carlini-Wagner optimisation attack (another threat model), so it is not compared",
}


def groups(model, x, y, eps: float, legacy: bool = True, which=("fgsm", "pgd20", "cw30")) -> dict:
    """{attack: {variant: callable}}: ours and torchattacks' on the same model and points."""
    import torchattacks

    from uncertainty_robust.attacks import cw_linf, fgsm, pgd

    ta_pgd = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 20, steps=20, random_start=True)
    ta_fgsm = torchattacks.FGSM(model, eps=eps)
    ta_cw = torchattacks.UPGD(
        model, eps=eps, alpha=2.5 * eps / 30, steps=30, random_start=True, loss="margin", decay=0.0
    )
    g = {
        "fgsm": {"ours": lambda: fgsm(model, x, y, eps), "torchattacks": lambda: ta_fgsm(x, y)},
        "pgd20": {
            "ours_best": lambda: pgd(model, x, y, eps, steps=20),
            "ours_last": lambda: pgd(model, x, y, eps, steps=20, track_best=False),
            "torchattacks": lambda: ta_pgd(x, y),
        },
        "cw30": {
            "ours_best": lambda: cw_linf(model, x, y, eps, steps=30),
            "ours_last": lambda: cw_linf(model, x, y, eps, steps=30, track_best=False),
            "torchattacks": lambda: ta_cw(x, y),
        },
    }
    if legacy:
        old = AlwaysTrain(model)
        g["pgd20"]["ours_best_fullbatch"] = lambda: pgd(old, x, y, eps, steps=20)
        g["cw30"]["ours_best_fullbatch"] = lambda: cw_linf(old, x, y, eps, steps=30)
        for k in ("pgd20", "cw30"):  # the published column order: torchattacks last
            g[k]["torchattacks"] = g[k].pop("torchattacks")
    return {k: g[k] for k in which}


def measure(model, y, fns: dict, rounds: int) -> dict:
    """Paired rounds of one attack's variants: times, robust accuracy, speed-up vs torchattacks."""
    res = paired(fns, rounds)
    out = {"variants": {}}
    for v in fns:
        accs = [accuracy(model, xa, y) for xa in res[v]["out"]]
        out["variants"][v] = {
            "wall_median": r3(med(res[v]["wall"])),
            "cpu_median": r3(med(res[v]["cpu"])),
            "robust_acc": r3(statistics.fmean(accs), 4),
            "robust_acc_all": [r3(a, 4) for a in accs],
        }
    ta = out["variants"]["torchattacks"]
    for v in fns:
        if v == "torchattacks":
            continue
        rs = ratio_stats(res, "torchattacks", v)  # >1: ours is faster
        out["variants"][v].update(
            {
                "speedup_vs_torchattacks_wall": rs["wall"],
                "speedup_vs_torchattacks_cpu": rs["cpu"],
                "speedup_all_wall": rs["wall_all"],
                "acc_diff_pts": r3(100 * (out["variants"][v]["robust_acc"] - ta["robust_acc"]), 2),
            }
        )
    return out


def run(ctx) -> dict:
    n, rounds = (150, 3) if ctx.args.quick else (300, 3)
    x, y = eval_points(n)
    out = {"n_points": n, "rounds": rounds, "models": {}}
    for mname, model in ctx.models().items():
        eps = EVAL_EPS[mname]
        mo = {"eps": eps, "clean_acc": r3(accuracy(model, x, y), 4), "attacks": {}}
        for gname, fns in groups(model, x, y, eps).items():
            log(f"attacks: {mname} model, {gname}, eps {eps}, {n} points x {rounds} rounds")
            mo["attacks"][gname] = measure(model, y, fns, rounds)
        out["models"][mname] = mo
    out["compared"] = dict(COMPARED)
    return out


_WHICH = {"ours": "", "ours_best": " best-iterate", "ours_last": " last-iterate (track_best=False)"}
_LABEL = (("pgd20", "PGD-20"), ("fgsm", "FGSM"), ("cw30", "CW-30 (margin PGD)"))


def rows(rec: dict) -> list:
    a, out = rec["result"], []
    for mname, m in a["models"].items():
        for g, lab in _LABEL:
            v = m["attacks"][g]["variants"]
            for kk in ["ours"] if g == "fgsm" else ["ours_best", "ours_last"]:
                s, d = v[kk]["speedup_vs_torchattacks_cpu"], v[kk]["acc_diff_pts"]
                ok = None if s is None else (s >= 1.2 and abs(d) <= 0.5)
                measured = (
                    f"{fmt(s)}x faster (wall {fmt(v[kk]['speedup_vs_torchattacks_wall'])}x); acc {d:+.2f} pt"
                )
                where = f"1 {lab}{_WHICH[kk]}, {mname} model eps {m['eps']}"
                out.append((where, measured, ">=1.2x, |acc diff| <=0.5 pt", verdict(ok), ""))
    return out


def section(rec: dict) -> str:
    a = rec["result"]
    table = []
    for mname, m in a["models"].items():
        for g, gv in m["attacks"].items():
            for vname, v in gv["variants"].items():
                table.append(
                    row(
                        f"{mname} (eps {m['eps']}, clean {m['clean_acc']:.3f})",
                        g,
                        vname,
                        fmt(v["cpu_median"]),
                        fmt(v["wall_median"]),
                        fmt(v.get("speedup_vs_torchattacks_cpu")),
                        fmt(v.get("speedup_vs_torchattacks_wall")),
                        f"{v['robust_acc']:.4f}",
                        f"{v.get('acc_diff_pts', 0):+.2f}",
                    )
                )
    compared = lines(f"- **{k}**: {v}" for k, v in a["compared"].items())
    return fill(NAME, n_points=a["n_points"], rounds=a["rounds"], compared=compared, rows=lines(table))
