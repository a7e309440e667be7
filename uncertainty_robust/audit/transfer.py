"""Transfer attacks for the gradient-masking audit (:mod:`uncertainty_robust.audit`): which finished
trials a target is attacked from (another seed of the same configuration, the defense's registry
baseline, the undefended model), the attack itself (PGD crafted on each source, per-example
minimum over sources), and the run-wide loop with its cache (``aggregate/transfer.json``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from ..attacks import ATTACKS, LINF
from ..config import TrialConfig
from ..defenses import DEFENSES, undefended


def _probe(record: dict) -> dict:
    return record.get("masking_probe") or {}


def _cfg(record: dict) -> TrialConfig:
    return TrialConfig.from_dict(record["config"], check=False)


def _others(target: dict, candidates: list) -> list:
    """[(dir, record, cfg)] of the candidates of the target's dataset and model, the target excluded."""
    tc = _cfg(target)
    return [
        (d, r, c)
        for d, r in candidates
        if r.get("trial_id") != target.get("trial_id")
        for c in [_cfg(r)]
        if (c.dataset, c.model) == (tc.dataset, tc.model)
    ]


def find_standard(target: dict, candidates: list) -> Optional[tuple]:
    """The undefended trial (the defense registry's ``undefended()``, standard training) of the same
    dataset and model: same seed, then same width, then the lowest seed. ``candidates``:
    [(trial_dir, record)]; returns (trial_dir, record) or None."""
    tc = _cfg(target)
    pool = [(d, r, c) for d, r, c in _others(target, candidates) if c.defense == undefended()]
    if not pool:
        return None
    d, r, _ = min(
        pool, key=lambda drc: (drc[2].seed != tc.seed, drc[2].width != tc.width, drc[2].seed, str(drc[0]))
    )
    return d, r


def find_transfer_sources(target: dict, candidates: list) -> list:
    """[(trial_dir, record, role)]: another seed of the same configuration ("same defense"), the
    defense's baseline (``Defense.baseline``: AT for AT+X, standard for LS/EntM/AT; same train eps
    preferred), and the standard model; each at most once, none the target itself."""
    tc = _cfg(target)
    same = _others(target, candidates)
    out, seen = [], set()

    def add(dr, role):
        if dr is not None and dr[1].get("trial_id") not in seen:
            seen.add(dr[1].get("trial_id"))
            out.append((dr[0], dr[1], role))

    row = tc.row_key()
    twins = [(d, r, c) for d, r, c in same if c.row_key() == row and c.seed != tc.seed]
    if twins:
        d, r, _ = min(twins, key=lambda drc: (drc[2].seed, str(drc[0])))
        add((d, r), "same defense, another seed")
    base = DEFENSES[tc.defense].baseline if tc.defense in DEFENSES else None
    if base is not None and base != undefended():
        pool = [(d, r, c) for d, r, c in same if c.defense == base]
        if pool:
            d, r, _ = min(
                pool,
                key=lambda drc: (
                    drc[2].eps != tc.eps,
                    drc[2].seed != tc.seed,
                    drc[2].width != tc.width,
                    drc[2].seed,
                    str(drc[0]),
                ),
            )
            add((d, r), f"baseline ({base})")
    add(find_standard(target, candidates), undefended())
    return out


def whitebox_reference(record: dict, eps: float) -> Optional[dict]:
    """The record's white-box reference (the probe's strongest CE-PGD, else the first L-inf
    CE-PGD) at ``eps``: what a transfer attack must not beat."""
    label = (_probe(record).get("whitebox") or {}).get("label")
    cands = [
        a
        for a in record.get("attacks", [])
        if a["attack"] in ATTACKS
        and ATTACKS[a["attack"]].reference
        and a["norm"] == LINF
        and math.isclose(a["eps"], eps, abs_tol=1e-9)
    ]
    return next((a for a in cands if a["label"] == label), cands[0] if cands else None)


@torch.no_grad()
def _accuracy(model, x, y, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [
            model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]
            for i in range(0, len(x), batch_size)
        ]
    )


def transfer_attack(
    source,
    target,
    x,
    y,
    eps: float,
    steps: int,
    restarts: int = 1,
    step_size: Optional[float] = None,
    batch_size: int = 500,
    x_adv: Optional[torch.Tensor] = None,
    seed: int = 0,
) -> tuple:
    """PGD (CE, L-inf, last iterate, as in Madry et al.'s transfer evaluation; with several restarts
    the restart with the highest source loss per example) crafted on ``source``, evaluated on
    ``target``. A point counts as robust only if ``target`` classifies it correctly both clean and
    adversarial, as in the white-box suite. Returns (robust mask (N,), x_adv); pass ``x_adv`` back
    to reuse one source's examples for many targets."""
    from ..attacks import pgd

    source.eval()
    target.eval()
    if x_adv is None:
        torch.manual_seed(seed)
        with torch.enable_grad():
            x_adv = torch.cat(
                [
                    pgd(
                        source,
                        x[i : i + batch_size],
                        y[i : i + batch_size],
                        eps,
                        steps=steps,
                        step_size=step_size,
                        restarts=restarts,
                        track_best=False,
                    )
                    for i in range(0, len(x), batch_size)
                ]
            )
    ok = _accuracy(target, x, y, batch_size) & _accuracy(target, x_adv, y, batch_size)
    return ok, x_adv


def transfer_for_trial(
    target_dir,
    target_record: dict,
    sources: list,
    device=None,
    cache: Optional[dict] = None,
) -> Optional[dict]:
    """Transfer from finished trials (``sources``: [(dir, record, role)], e.g. from
    :func:`find_transfer_sources`) to a finished target trial at the record's probe eps, with the
    white-box reference's steps and restarts, on the record's evaluation points; a point counts
    as robust only if it survives every source (per-example minimum). ``cache`` keeps each
    source's adversarial examples across targets. None when the probe, the white-box reference or
    a model.pt is missing; an entry with ``not_tested`` when the white-box accuracy is too low to
    show a gap."""
    from ..data import load_tensors
    from ..rundir import TrialDir
    from ..trial import load_trained

    probe = _probe(target_record)
    eps = probe.get("eps")
    ref = whitebox_reference(target_record, eps) if eps is not None else None
    if ref is None or "whitebox_robust" not in probe or not TrialDir(target_dir).model.exists():
        return None
    if probe.get("not_tested"):
        return {"eps": eps, "not_tested": probe["not_tested"], "sources": []}
    sources = [s for s in sources if TrialDir(s[0]).model.exists()]
    if not sources:
        return None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    target, tcfg = load_trained(target_dir, device)
    cache = cache if cache is not None else {}
    x, y = load_tensors(tcfg.dataset, "test", tcfg.data_root, n=tcfg.n_eval, seed=0, download=tcfg.download)
    x, y = x.to(device), y.to(device)
    robust = torch.ones(len(y), dtype=torch.bool, device=device)
    per_source = []
    for sdir, srec, role in sources:
        source, _ = load_trained(sdir, device)
        key = (str(sdir), eps, ref["steps"], ref["restarts"], tcfg.dataset, tcfg.n_eval)
        ok, xa = transfer_attack(
            source,
            target,
            x,
            y,
            eps,
            ref["steps"],
            ref["restarts"],
            ref.get("step_size"),
            tcfg.eval_batch_size,
            x_adv=cache.get(key),
        )
        cache[key] = xa
        robust &= ok
        per_source.append((srec, role, float(ok.float().mean())))
    wb = torch.zeros(len(y), dtype=torch.bool, device=device)
    if probe["whitebox_robust"]:
        wb[torch.tensor(probe["whitebox_robust"], device=device)] = True
    return transfer_result(per_source, eps, ref, wb, robust)


def transfer_result(
    per_source: list, eps: float, ref: dict, whitebox: torch.Tensor, robust: torch.Tensor
) -> dict:
    """The ``record["transfer"]`` entry the audit reads (also written to aggregate/transfer.json).
    ``per_source``: [(source record, role, its accuracy)]; ``whitebox`` / ``robust``: bool (N,)
    robust masks of the white-box reference and of the transfer (minimum over sources)."""
    return {
        "eps": eps,
        "steps": ref["steps"],
        "restarts": ref["restarts"],
        "step_size": ref.get("step_size"),
        "n_points": len(robust),
        "sources": [
            {
                "trial": r.get("name"),
                "trial_id": r.get("trial_id"),
                "role": role,
                "defense": _cfg(r).defense,
                "seed": _cfg(r).seed,
                "acc": acc,
            }
            for r, role, acc in per_source
        ],
        "acc": float(robust.float().mean()),
        "whitebox_label": ref["label"],
        "whitebox_acc": float(whitebox.float().mean()),
        "only_other": int((whitebox & ~robust).sum()),
        "only_ref": int((~whitebox & robust).sum()),
    }


def transfers_for_run(trials: list, cache: Optional[dict] = None, device=None) -> tuple:
    """Transfer attacks for every trial of a run that has a source (``trials``: [(dir, record)]),
    from :func:`find_transfer_sources`. ``cache``: the previous result ({trial dir name: entry});
    an entry is reused when sources, eps, steps and the white-box number still match. Returns
    (entries by trial dir name, {trial dir name: [reason the transfer failed]})."""
    cache, out, errors, adv = cache or {}, {}, {}, {}
    for d, rec in trials:
        name = Path(d).name
        srcs = find_transfer_sources(rec, trials)
        eps = _probe(rec).get("eps")
        ref = whitebox_reference(rec, eps) if eps is not None else None
        if not srcs or ref is None:
            continue
        old = cache.get(name) or {}
        if (
            [s.get("trial_id") for s in old.get("sources", [])],
            old.get("eps"),
            old.get("steps"),
            old.get("whitebox_acc"),
        ) == ([s[1].get("trial_id") for s in srcs], eps, ref["steps"], _probe(rec).get("whitebox_acc")):
            out[name] = old
            continue
        try:
            res = transfer_for_trial(d, rec, srcs, device, adv)
        except (
            Exception
        ) as e:  # e.g. the dataset is not on this machine: the audit reports the check as not tested
            errors[name] = [
                f"transfer_beats_whitebox: not tested: transfer attack failed: {type(e).__name__}: {e}"
            ]
            continue
        if res is not None:
            out[name] = res
    return out, errors
