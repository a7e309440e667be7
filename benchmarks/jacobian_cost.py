"""Item 3, ``jacobian``: the exact ``jacobian_norms`` (1 forward + K backward passes per batch) vs a
per-example ``torch.autograd.functional.jacobian`` loop and vs the library's previous
``vmap(jacrev)`` path; the error and cost of ``jacobian_norms_estimate`` for P = 1..16
projections. :func:`exact_vs_floor` (used on the GPU) times the exact path against its floor."""

from __future__ import annotations

import statistics

import torch

from benchmarks.harness import K_CLASSES, eval_points, fmt, log, med, paired, r3, ratio_stats, verdict
from benchmarks.render import fill, lines, row

NAME = "jacobian"
TITLE = "exact Jacobian norms vs torch.autograd.functional.jacobian per example; estimator"


def reference_loop(model, xr) -> dict:
    """Per-example ``autograd.functional.jacobian`` of (logits, softmax): 2K rows per point."""
    lo, so = [], []
    for i in range(len(xr)):
        jz, jp = torch.autograd.functional.jacobian(
            lambda t: (model(t[None])[0], torch.softmax(model(t[None])[0], 0)), xr[i]
        )
        lo.append(jz.flatten(1).norm())
        so.append(jp.flatten(1).norm())
    return {"logits": torch.stack(lo), "softmax": torch.stack(so)}


def jacrev_path(model):
    """The library's exact path before this benchmark: vmap(jacrev) over (logits, softmax)."""
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def both(xi):
        z = functional_call(model, (params, buffers), (xi[None],))[0]
        return z, torch.softmax(z, 0)

    jac_both = vmap(jacrev(both))

    def norms(xx):
        lo, so = [], []
        for i in range(0, len(xx), 100):
            jz, jp = jac_both(xx[i : i + 100])
            lo.append(jz.flatten(2).norm(dim=(1, 2)))
            so.append(jp.flatten(2).norm(dim=(1, 2)))
        return {"logits": torch.cat(lo), "softmax": torch.cat(so)}

    return norms


def floor_passes(model, x, batch_size: int = 100) -> None:
    """The floor of the exact path: one forward and K backward passes of each batch (the
    K input-gradient rows), nothing else (no stacking, norms or softmax coefficients)."""
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].detach().requires_grad_(True)
            with torch.enable_grad():
                z = model(xb)
                for j in range(z.shape[1]):
                    torch.autograd.grad(z[:, j].sum(), xb, retain_graph=j < z.shape[1] - 1)
    finally:
        model.train(was)


def _max_rel(a: dict, b: dict) -> dict:
    return {k: r3(float(((a[k] - b[k]).abs() / b[k]).max()), 9) for k in a}


def exact_vs_reference(model, xr, rounds: int) -> dict:
    from uncertainty_robust.jacobian import jacobian_norms

    res = paired(
        {"exact": lambda: jacobian_norms(model, xr), "reference_loop": lambda: reference_loop(model, xr)},
        rounds,
    )
    sp = ratio_stats(res, "reference_loop", "exact")
    return {
        "speedup_wall": sp["wall"],
        "speedup_cpu": sp["cpu"],
        "speedup_all_wall": sp["wall_all"],
        "exact_wall_s": r3(med(res["exact"]["wall"])),
        "reference_wall_s": r3(med(res["reference_loop"]["wall"])),
        "max_rel_diff": _max_rel(res["exact"]["out"][0], res["reference_loop"]["out"][0]),
    }


def exact_vs_floor(model, x, rounds: int) -> dict:
    """Exact ``jacobian_norms`` time over its floor (:func:`floor_passes`), paired rounds."""
    from uncertainty_robust.jacobian import jacobian_norms

    res = paired(
        {"exact": lambda: jacobian_norms(model, x), "floor": lambda: floor_passes(model, x)},
        rounds,
        warmup=True,
    )
    rs = ratio_stats(res, "exact", "floor")
    return {
        "n_points": len(x),
        "rounds": rounds,
        "exact_wall_s": r3(med(res["exact"]["wall"]), 4),
        "floor_wall_s": r3(med(res["floor"]["wall"]), 4),
        "ratio_wall": rs["wall"],
        "ratio_all_wall": rs["wall_all"],
    }


def _errors(outs: list, exact: dict) -> dict:
    """Errors of the estimates ``outs`` (one per seed) against the exact norms."""
    rows = {}
    for k in ("logits", "softmax"):
        e = exact[k]
        mean_err = [float(o[k].mean() / e.mean() - 1) for o in outs]
        rms_err = [float(o[k].pow(2).mean().sqrt() / e.pow(2).mean().sqrt() - 1) for o in outs]
        per_ex = torch.cat([(o[k] / e - 1).abs() for o in outs])
        rows[k] = {
            "err_of_mean_abs_median": r3(med([abs(v) for v in mean_err]), 4),
            "err_of_mean_abs_max": r3(max(abs(v) for v in mean_err), 4),
            "err_of_mean_signed_avg": r3(statistics.fmean(mean_err), 4),
            "err_of_rms_abs_median": r3(med([abs(v) for v in rms_err]), 4),
            "per_example_abs_err_median": r3(float(per_ex.median()), 4),
            "per_example_abs_err_p90": r3(float(per_ex.quantile(0.9)), 4),
        }
    return rows


def estimator(model, x, ps, rounds: int) -> dict:
    from uncertainty_robust.jacobian import jacobian_norms, jacobian_norms_estimate

    old = jacrev_path(model)
    fns = {"exact": lambda: jacobian_norms(model, x), "exact_jacrev_both_outputs": lambda: old(x)}
    for p in ps:
        fns[f"P{p}"] = lambda p=p: jacobian_norms_estimate(model, x, projections=p)
    res = paired(fns, rounds, seed_of=lambda r: 1000 + r)
    exact = res["exact"]["out"][0]
    both = ratio_stats(res, "exact_jacrev_both_outputs", "exact")
    est = {
        "n_points": len(x),
        "seeds": rounds,
        "exact_wall_s": r3(med(res["exact"]["wall"])),
        "exact_vs_jacrev_both_outputs_speedup": both["wall"],
        "exact_vs_jacrev_both_outputs_speedup_cpu": both["cpu"],
        "exact_vs_jacrev_both_outputs_max_rel_diff": _max_rel(
            res["exact_jacrev_both_outputs"]["out"][0], exact
        ),
        "P": {},
    }
    for p in ps:
        cost = ratio_stats(res, f"P{p}", "exact")
        est["P"][str(p)] = {
            "cost_rel_wall": cost["wall"],
            "cost_rel_cpu": cost["cpu"],
            "wall_s": r3(med(res[f"P{p}"]["wall"]), 4),
            "backward_passes_per_example": 2 * p,
            **_errors(res[f"P{p}"]["out"], exact),
        }
    return est


def run(ctx) -> dict:
    model = ctx.models()["standard"]
    n, n_ref, rounds = (100, 30, 3) if ctx.args.quick else (300, 60, 5)
    ps = [1, 2, 4, 8] if ctx.args.quick else [1, 2, 4, 8, 16]
    x, _ = eval_points(n)
    log(f"jacobian: exact on {n_ref} points vs autograd.functional.jacobian loop, {rounds} rounds")
    out = {"n_points_reference": n_ref, "rounds": rounds}
    out["exact_vs_reference"] = exact_vs_reference(model, x[:n_ref], rounds)
    log(f"jacobian: estimator with P in {ps} vs exact on {n} points, {rounds} seeds")
    out["estimator"] = estimator(model, x, ps, rounds)
    return out


def _estimator_row(est: dict) -> tuple:
    by_p = sorted(est["P"].items(), key=lambda t: int(t[0]))
    cheap = [(p, r) for p, r in by_p if r["cost_rel_cpu"] is not None and r["cost_rel_cpu"] <= 1 / K_CLASSES]
    if not cheap:
        p, r = by_p[0]
        return (
            "3 estimator at <=1/K cost",
            f"cheapest (P={p}) costs {fmt(r['cost_rel_cpu'], 3)} of exact; "
            f"error of the mean {fmt(100 * r['logits']['err_of_mean_abs_median'], 1)}% (logits), "
            f"{fmt(100 * r['softmax']['err_of_mean_abs_median'], 1)}% (softmax)",
            "<=5% error at <=1/K (0.1) cost",
            verdict(False),
            "no P reaches 1/K of the exact cost: see section 3",
        )
    p, r = cheap[-1]
    lo, so = r["logits"], r["softmax"]
    err = max(lo["err_of_mean_abs_median"], so["err_of_mean_abs_median"])
    return (
        f"3 estimator P={p} (cost {fmt(r['cost_rel_cpu'], 3)} of exact)",
        f"error of the mean {fmt(100 * lo['err_of_mean_abs_median'], 1)}% (logits), "
        f"{fmt(100 * so['err_of_mean_abs_median'], 1)}% (softmax); per-example median "
        f"{fmt(100 * lo['per_example_abs_err_median'], 0)}% / {fmt(100 * so['per_example_abs_err_median'], 0)}%",
        "<=5% error at <=1/K cost",
        verdict(err <= 0.05),
        "error of the mean over the points",
    )


def rows(rec: dict) -> list:
    j = rec["result"]
    e = j["exact_vs_reference"]
    exact = (
        "3 exact Jacobian norms vs autograd.functional.jacobian loop",
        f"{fmt(e['speedup_cpu'], 1)}x faster (wall {fmt(e['speedup_wall'], 1)}x)",
        ">=20x",
        verdict(e["speedup_cpu"] >= 20),
        f"max rel diff {e['max_rel_diff']}; {fmt(j['estimator']['exact_vs_jacrev_both_outputs_speedup_cpu'])}x "
        "faster than the library's previous vmap(jacrev) path",
    )
    return [exact, _estimator_row(j["estimator"])]


def _p_row(p: str, r: dict) -> str:
    lo, so = r["logits"], r["softmax"]
    pct = lambda v, nd=1: f"{fmt(100 * v, nd)}%"  # noqa: E731
    return row(
        p,
        fmt(r["cost_rel_cpu"], 3),
        f"{pct(lo['err_of_mean_abs_median'])} ({pct(lo['err_of_mean_abs_max'])})",
        pct(lo["err_of_rms_abs_median"]),
        pct(lo["per_example_abs_err_median"], 0),
        f"{pct(so['err_of_mean_abs_median'])} ({pct(so['err_of_mean_abs_max'])})",
        pct(so["err_of_rms_abs_median"]),
        pct(so["per_example_abs_err_median"], 0),
        f"{pct(lo['err_of_mean_signed_avg'])}, {pct(so['err_of_mean_signed_avg'])}",
    )


def section(rec: dict) -> str:
    j = rec["result"]
    e, est = j["exact_vs_reference"], j["estimator"]
    p_rows = [_p_row(p, r) for p, r in sorted(est["P"].items(), key=lambda t: int(t[0]))]
    return fill(
        NAME,
        n_ref=j["n_points_reference"], rounds=j["rounds"], speedup_cpu=fmt(e["speedup_cpu"], 1),
        speedup_wall=fmt(e["speedup_wall"], 1), exact_wall=fmt(e["exact_wall_s"]),
        reference_wall=fmt(e["reference_wall_s"]), max_rel_diff=e["max_rel_diff"],
        jacrev_cpu=fmt(est["exact_vs_jacrev_both_outputs_speedup_cpu"]),
        jacrev_wall=fmt(est["exact_vs_jacrev_both_outputs_speedup"]),
        jacrev_diff=est["exact_vs_jacrev_both_outputs_max_rel_diff"],
        n_points=est["n_points"], seeds=est["seeds"], p_rows=lines(p_rows),
    )  # fmt: skip
