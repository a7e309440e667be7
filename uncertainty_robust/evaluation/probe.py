"""The masking probe: what the gradient-masking audit (:mod:`uncertainty_robust.audit`) needs beyond
the attack grid, run as extra steps of the evaluation (sharded and resumable like the others).

White-box reference: the strongest reference-role attack of ``cfg.attacks`` (CE-loss PGD, most
steps x restarts). Probe eps: the eps > 0 where its accuracy is closest to 50 % (a stronger,
transferred or gradient-free attack can show a gap only where something is left to break), and
every eps of ``probe_eps`` (where a claim is decided) where its accuracy is at least 5 %. There,
on the points the reference left robust (within ``probe_points``), the reference with 4x the
steps and 4x the restarts (``strong``) and the black-box attack (Square) with 1000 queries on the
AutoAttack points: the points each breaks beyond the reference, paired with it (by construction
neither is run on a point the reference broke). At every eps: the reference's margin twin (CW at
the same steps and restarts: reused from ``cfg.attacks`` when it has it, run here otherwise) and
the single-step attacks (FGSM), paired with the reference on every point, from the outcomes the
evaluation already has. Where the reference's accuracy is below 5 % a comparison is not run and
says why (``not_tested``). Also the share of points with an exactly zero CE input gradient (from
the evaluation's clean pass)."""

from __future__ import annotations

import torch

from ..attacks import AttackSpec, black_box_attack, margin_twin, same_setting, single_step_checks
from .engine import Runner, subset_mask
from .plan import Step

PROBE = "probe"  # the stage of the probe's steps
PROBE_STEPS_FACTOR = 4  # the strong CE-PGD: 4x the steps ...
PROBE_RESTARTS_FACTOR = 4  # ... and 4x the restarts of the reference
PROBE_SQUARE_QUERIES = 1000  # the gradient-free check: Square (pyautoattack) with this many queries
INFORMATIVE_MIN_ACC = 0.05  # below this white-box accuracy a stronger attack cannot show a gap
RULE = "eps > 0 where the strongest CE-PGD's accuracy is closest to 0.5"


def paired(ref: torch.Tensor, other: torch.Tensor) -> dict:
    """Two attacks on the same points (bool robust masks): accuracies and the discordant counts a
    McNemar test needs (``only_other``: broken by ``other`` only; ``only_ref``: by ``ref`` only)."""
    return {
        "n_points": len(ref),
        "ref_acc": float(ref.float().mean()),
        "acc": float(other.float().mean()),
        "only_other": int((ref & ~other).sum()),
        "only_ref": int((~ref & other).sum()),
    }


def run(runner: Runner, cfg) -> dict:
    """Run the probe's steps on this rank's chunks (their outcomes go to ``runner.masks`` as
    ``probe/...``); returns what :func:`record` needs besides the merged masks."""
    plan, n = runner.plan, runner.plan.n_points
    ref = plan.reference
    meta: dict = {"n_points": n}
    if ref is None:
        meta["not_tested"] = "no white-box reference (CE-loss PGD) in evaluation.attacks"
        return meta
    label = ref.label()
    eps_list = [e for e in ref.eps_list(cfg.eval_eps()) if e > 0 and f"attack/{label}/{e:g}" in runner.masks]
    counts = runner.shard.all_sum(
        [float((runner.masks[f"attack/{label}/{e:g}"] & runner.mine).sum()) for e in eps_list]
    )
    accs = {
        e: float(torch.tensor(c, dtype=torch.float32) / n) for e, c in zip(eps_list, counts)
    }  # as mask.mean()
    meta.update(label=label, steps=ref.steps, restarts=ref.restarts, accs=accs)
    if not eps_list:
        meta["not_tested"] = f"{label} ran at no eps > 0"
        return meta
    eps = min(eps_list, key=lambda e: (abs(accs[e] - 0.5), e))
    meta["eps"] = eps
    twin = margin_twin(ref)
    if twin is not None:
        meta["margin_label"] = twin.label()
        meta["margin_reused"] = any(same_setting(twin, s) for s in cfg.attacks)
        if not meta["margin_reused"]:
            chain = runner.masks["clean"]
            for e in eps_list:
                if accs[e] < INFORMATIVE_MIN_ACC:
                    continue
                before = chain if plan.reuse_eps else runner.masks["clean"]
                chain = before & ~runner.run(Step(e, twin, PROBE), before & runner.mine)
                runner.masks[f"probe/margin/{e:g}"] = chain
    wanted = [e for e in eps_list if e in plan.probe_eps and e != eps]
    meta["extra_eps"] = [e for e in wanted if accs[e] >= INFORMATIVE_MIN_ACC]
    if accs[eps] < INFORMATIVE_MIN_ACC and not meta["extra_eps"]:
        return meta
    sub = subset_mask(runner.y, cfg.probe_points)  # every point unless probe_points
    strong = AttackSpec(ref.name, ref.steps * PROBE_STEPS_FACTOR, ref.step_size,
                        ref.restarts * PROBE_RESTARTS_FACTOR, ref.random_start)  # fmt: skip
    on = sub & runner.aa_pts  # Square on the AutoAttack points within probe_points (nested subsets)
    square = AttackSpec(black_box_attack().name, PROBE_SQUARE_QUERIES)
    runner.masks["probe/strong_points"], runner.masks["probe/square_points"] = sub, on
    meta["strong"], meta["square"] = strong, square
    for e in ([eps] if accs[eps] >= INFORMATIVE_MIN_ACC else []) + meta["extra_eps"]:
        at = "" if e == eps else f"/{e:g}"  # the rule's eps keeps the keys it always had
        wb = runner.masks[f"attack/{label}/{e:g}"]
        runner.masks[f"probe/strong{at}"] = wb & ~runner.run(Step(e, strong, PROBE), wb & sub & runner.mine)
        runner.masks[f"probe/square{at}"] = wb & ~runner.run(Step(e, square, PROBE), wb & on & runner.mine)
    return meta


def record(meta: dict, masks: dict, zero_grad: torch.Tensor, cfg, cost: dict) -> dict:
    """The result record's ``masking_probe`` from :func:`run`'s ``meta`` and the merged masks."""
    n = meta["n_points"]
    out: dict = {
        "rule": RULE,
        "min_informative_acc": INFORMATIVE_MIN_ACC,
        "n_points": n,
        "zero_grad_frac": float(zero_grad.float().mean()),
    }
    if "label" not in meta:
        out["not_tested"] = meta["not_tested"]
        out["cost"] = cost
        return out
    label, accs = meta["label"], meta["accs"]
    out["whitebox"] = {
        "label": label,
        "steps": meta["steps"],
        "restarts": meta["restarts"],
        "acc": {f"{e:g}": a for e, a in accs.items()},
    }
    if "eps" not in meta:
        out["not_tested"], out["cost"] = meta["not_tested"], cost
        return out
    eps = meta["eps"]
    ref = lambda e: masks[f"attack/{label}/{e:g}"]  # noqa: E731
    wb = ref(eps)
    out.update(eps=eps, whitebox_acc=accs[eps], whitebox_robust=wb.nonzero().squeeze(1).tolist())
    out["fgsm_pgd"] = [
        {"eps": e, "label": s.label(), **paired(ref(e), masks[f"attack/{s.label()}/{e:g}"])}
        for s in single_step_checks(cfg.attacks)
        for e in accs
        if f"attack/{s.label()}/{e:g}" in masks
    ]
    margin = []
    for e, a in accs.items():
        twin = meta.get("margin_label")
        if twin is None:
            continue
        if a < INFORMATIVE_MIN_ACC:
            why = f"{label} accuracy {a:.3f} < {INFORMATIVE_MIN_ACC:g}"
            margin.append({"eps": e, "label": twin, "not_tested": why})
            continue
        m = masks.get(f"attack/{twin}/{e:g}" if meta["margin_reused"] else f"probe/margin/{e:g}")
        if m is None:
            margin.append({"eps": e, "label": twin, "not_tested": f"{twin} did not run at this eps"})
            continue
        margin.append({"eps": e, "label": twin, "reused": meta["margin_reused"], **paired(ref(e), m)})
    out["margin"] = margin
    if accs[eps] < INFORMATIVE_MIN_ACC:
        out["not_tested"] = (
            f"{label} accuracy is below {INFORMATIVE_MIN_ACC:g} at every eps (closest to 0.5: {accs[eps]:.3f} "
            f"at eps {eps:g}): a stronger, transferred or gradient-free attack has nothing left to break"
        )
    else:
        sub, on = masks["probe/strong_points"], masks["probe/square_points"]
        strong, square = meta["strong"], meta["square"]
        survivors = "the points the reference left robust (neither attacks a point it broke)"
        out["strong"] = {
            "label": strong.label(),
            "steps": strong.steps,
            "restarts": strong.restarts,
            "on": survivors,
            **paired(wb[sub], masks["probe/strong"][sub]),
        }
        out["square"] = {
            "label": square.label(),
            "queries": square.steps,
            "on": survivors,
            **paired(wb[on], masks["probe/square"][on]),
        }
        out["extra"] = []  # the probe_eps: the same two attacks where a claim is decided
        for e in meta.get("extra_eps", []):
            w = ref(e)
            out["extra"].append(
                {
                    "eps": e,
                    "whitebox_acc": accs[e],
                    "strong": {"label": strong.label(), **paired(w[sub], masks[f"probe/strong/{e:g}"][sub])},
                    "square": {"label": square.label(), **paired(w[on], masks[f"probe/square/{e:g}"][on])},
                }
            )
        probe_at = cfg.probe_at()
        asked = [e for e in accs if e != eps and e in probe_at]
        low = [e for e in asked if accs[e] < INFORMATIVE_MIN_ACC]
        if low:
            out["extra_not_tested"] = [
                {"eps": e, "why": f"{label} accuracy {accs[e]:.3f} < {INFORMATIVE_MIN_ACC:g}"} for e in low
            ]
    out["cost"] = cost
    return out
