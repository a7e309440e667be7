"""Executes a trial's :class:`~.plan.EvalPlan` on this rank's chunks of the evaluation points.

Every step of the plan runs chunk by chunk on the points it is meant for; each chunk's outcome is
saved (:class:`~.shards.ChunkStore`) and reused after a requeue or a killed rank. Random draws are
seeded by (trial seed, step, chunk, batch within the chunk), never by rank, and a chunk's batches
do not depend on the number of ranks, so the outcome of every point is that of a one-rank
evaluation. The per-point outcomes live in bool (N,) tensors, filled on this rank's points and
merged over ranks at the end (:func:`merge`).
"""

from __future__ import annotations

import hashlib
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..attacks import Cost, pgd, run_attack
from ..attacks.autoattack import run_plan
from ..data import stratified_indices
from ..jacobian import jacobian_norms
from .plan import AUTOATTACK, OTHER_NORM, OURS, EvalPlan, Step
from .progress import Progress
from .shards import ChunkStore, Shard


def chunk_seed(base: int, key: str, chunk: int, batch: int = 0) -> int:
    """The seed of one batch of one chunk in one step: stable under resume and sharding."""
    return int(hashlib.sha1(f"{base}|{key}|{chunk}|{batch}".encode()).hexdigest()[:8], 16)


def subset_mask(y: torch.Tensor, k: Optional[int]) -> torch.Tensor:
    """Every point, or a class-balanced subset of ``k`` of them (fixed seed, the same for every
    trial): the AutoAttack points (``autoattack_points``), the probe's (``probe_points``)."""
    m = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    if k is None or k >= len(y):
        m[:] = True
    else:
        m[torch.from_numpy(stratified_indices(y.cpu().numpy(), k, seed=0)).to(y.device)] = True
    return m


class Runner:
    """One rank's share of an evaluation: its chunks, their outcomes, costs and messages."""

    def __init__(self, plan: EvalPlan, model, x, y, shard: Shard, store: ChunkStore, progress: Progress,
                 batch_size: int, aa_points: Optional[int], keep_examples: int = 0):  # fmt: skip
        self.plan, self.model, self.x, self.y = plan, model, x, y
        self.shard, self.store, self.progress, self.bs = shard, store, progress, batch_size
        self.keep = keep_examples
        n = len(y)
        self.chunk_idx = {c: torch.from_numpy(plan.chunk(c)).to(y.device) for c in shard.chunks}
        self.mine = torch.zeros(n, dtype=torch.bool, device=y.device)
        for idx in self.chunk_idx.values():
            self.mine[idx] = True
        self.aa_pts = subset_mask(y, aa_points)
        self.masks: dict = {}
        self.cost: dict = {}  # step key -> Cost on this rank
        self.attacked: dict = {}  # step key -> points attacked on this rank
        self.messages: dict = {}  # step key -> pyautoattack's warnings
        self.examples: dict = {}  # eps -> a few (x_adv, y, pred, attack, x) of chunk 0
        self.decisions: list = []  # where AutoAttack ran, and why (or why not)
        self.logits = torch.zeros(n, 0)
        self.zero_grad = torch.zeros(n, dtype=torch.bool)

    # ------------------------------------------------------------------ steps
    def run(self, step: Step, on: torch.Tensor, remaining: float = 0.0) -> torch.Tensor:
        """``step`` on the points ``on`` (bool (N,)) of this rank's chunks; returns bool (N,): the
        points it broke. Chunks whose outcome is saved are not attacked again."""
        broken = torch.zeros_like(on)
        total = self.cost.setdefault(step.key, Cost())
        self.attacked.setdefault(step.key, 0)
        msgs = self.messages.setdefault(step.key, [])
        left = int((on & self.mine).sum())
        for c, idx in self.chunk_idx.items():
            sel = on[idx]
            pts = idx[sel]
            entry = self.store.load(c, self._points(c)).get(step.key)
            if entry is None:
                self.progress.update(
                    _what(step), left, int(self.mine.sum()), remaining + left * self._per(step)
                )
                cost, new = Cost(), []
                hit = self._attack(step, pts, c, cost, new) if len(pts) else torch.zeros(0, dtype=torch.bool)
                pos = sel.nonzero().squeeze(1)[hit.to(sel.device)]
                entry = {"n": len(pts), "broken": pos.tolist(), "cost": cost.as_dict(), "messages": new}
                self.store.save(c, self._points(c), step.key, entry)
                self.progress.add(cost.passes)
            if entry["broken"]:
                broken[idx[torch.tensor(entry["broken"], device=idx.device)]] = True
            total.add(Cost(**entry["cost"]))
            self.attacked[step.key] += entry["n"]
            msgs += [m for m in entry["messages"] if m not in msgs]
            left -= entry["n"]
        return broken

    def _points(self, c: int) -> list:
        return self.plan.chunk(c).tolist()

    def _per(self, step: Step) -> float:
        return step.spec.passes_per_point(self.plan.num_classes)

    def _attack(self, step: Step, pts: torch.Tensor, c: int, cost: Cost, msgs: list) -> torch.Tensor:
        """Bool over ``pts``: broken by ``step``, batch by batch, each batch seeded on its own."""
        t0 = time.perf_counter()
        out = []
        spec, x, y = step.spec, self.x, self.y
        for b, i in enumerate(range(0, len(pts), self.bs)):
            p = pts[i : i + self.bs]
            seed = chunk_seed(self.plan.seed, step.key, c, b)
            if spec.attack.pyautoattack:
                c0 = cost.seconds
                _, after = run_plan(self.model, x[p], y[p], step.eps, step.version or "standard",
                                    [(spec.name, spec.steps, spec.restarts)], seed, cost, msgs)  # fmt: skip
                cost.seconds = c0  # counted below, with ours
                out.append(~after[-1])
                continue
            devices = [x.device.index or 0] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                xa = run_attack(self.model, x[p], y[p], spec, step.eps, cost)
            with torch.no_grad():
                pred = self.model(xa).argmax(1)
            cost.forward += len(p)
            out.append(pred != y[p])
            if self.keep and c == 0 and b == 0 and step.stage == OURS:  # the last of ours at each eps wins
                k = min(self.keep, len(p))
                few = (xa[:k], y[p][:k], pred[:k])  # clone: a view would save the whole batch's storage
                self.examples[step.eps] = (
                    *(t.detach().cpu().clone() for t in few),
                    step.label,
                    x[p][:k].cpu().clone(),
                )
        cost.seconds += time.perf_counter() - t0
        return torch.cat(out)

    # ------------------------------------------------------------------ the plan
    def clean(self) -> None:
        """Clean logits and correctness, and which points have an exactly zero CE input gradient
        (one forward+backward per point)."""
        x, y, parts = self.x, self.y, []
        zero = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        for idx in self.chunk_idx.values():
            for i in range(0, len(idx), self.bs):
                p = idx[i : i + self.bs]
                xr = x[p].detach().requires_grad_(True)
                z = self.model(xr)
                (g,) = torch.autograd.grad(F.cross_entropy(z, y[p], reduction="sum"), xr)
                zero[p] = g.flatten(1).abs().amax(1) <= 1e-12
                parts.append((p, z.detach()))
        k = parts[0][1].shape[1] if parts else 0
        self.logits = torch.zeros(len(y), k, device=y.device)
        for p, z in parts:
            self.logits[p] = z.float()
        self.zero_grad = zero
        self.masks["clean"] = (self.logits.argmax(1) == y) & self.mine if k else self.mine.clone()

    def linf(self) -> None:
        """Per eps ascending: ours on their own survivors, then AutoAttack where the plan says."""
        p, clean = self.plan, self.masks["clean"]
        chain = {s.label(): clean.clone() for s in p.ours}
        for s in p.ours:
            self.masks[f"attack/{s.label()}/0"] = clean.clone()
        self.masks["worst/0"] = clean.clone()
        final_prev = clean.clone()
        for eps in p.linf_eps[1:]:
            worst = clean.clone()
            for s in p.steps_at(eps, OURS):
                before = chain[s.label] if p.reuse_eps else clean
                rob = before & ~self.run(s, before & self.mine, self._remaining(s, chain, final_prev))
                chain[s.label] = rob
                self.masks[f"attack/{s.label}/{eps:g}"] = rob
                worst &= rob
            self.masks[f"worst/{eps:g}"] = worst
            base = worst & final_prev if p.reuse_eps else worst
            final = base.clone()
            listed = p.aa_listed(eps)
            if listed is False and p.has_autoattack:
                self.decisions.append({"eps": eps, "ran": False, "why": "not listed in autoattack_eps"})
            elif listed is not False:
                (left,) = self.shard.all_sum([float((base & self.mine).sum())])
                share = left / p.n_points
                run_aa = bool(listed) or p.informative(share)
                why = "listed in autoattack_eps" if listed else (
                    f"our attacks leave {share:.3f} of the points robust, "
                    f"{'inside' if run_aa else 'outside'} [{p.aa_band[0]:g}, {p.aa_band[1]:g}]"
                )  # fmt: skip
                self.decisions.append({"eps": eps, "ran": run_aa, "why": why, "ours_robust_share": share})
                if run_aa:
                    on = base & self.aa_pts
                    for s in p.steps_at(eps, AUTOATTACK):
                        on = on & ~self.run(s, on & self.mine, self._remaining(s, chain, on))
                        self.masks[f"autoattack/{s.label}/{eps:g}"] = on.clone()
                    final = base & (on | ~self.aa_pts)
            self.masks[f"autoattack/{eps:g}"] = final
            final_prev = final

    def other_norms(self) -> None:
        """Our attacks of another norm (L2) at their own radii, each on its own survivors."""
        chain: dict = {}
        for s in (s for s in self.plan.steps if s.stage == OTHER_NORM):
            clean = self.masks["clean"]
            before = chain.get(s.label, clean) if self.plan.reuse_eps else clean
            rob = before & ~self.run(s, before & self.mine)
            chain[s.label] = rob
            self.masks[f"attack/{s.label}/{s.eps:g}"] = rob

    def _remaining(self, step: Step, chain: dict, final: torch.Tensor) -> float:
        """Passes the plan still expects on this rank after ``step``, with the points standing now (an
        upper bound: no point falls any more; AutoAttack counted wherever it may still run, not at
        the eps ``autoattack_eps`` leaves out)."""
        later = self.plan.steps[self.plan.steps.index(step) + 1 :]
        total = 0.0
        for s in later:
            if s.stage == AUTOATTACK and self.plan.aa_listed(s.eps) is False:
                continue
            alive = chain.get(s.label, final) if s.stage == OURS else final & self.aa_pts
            total += float((alive & self.mine).sum()) * self._per(s)
        return total

    def jacobians(self, jac_eps: float, steps: int) -> dict:
        """Exact per-point Jacobian statistics of this rank's Jacobian points (the first
        ``jacobian_points`` evaluation points), at the clean points and at PGD points (seeded per
        chunk). Saved per chunk."""
        out: dict = {"idx": [], "clean": {}, "adversarial": {}}
        jp = self.plan.jacobian_points
        key = f"jacobian|{jac_eps:g}|pgd{steps}"
        for c, idx in self.chunk_idx.items():
            pts = idx[idx < jp]
            if not len(pts):
                continue
            entry = self.store.load(c, self._points(c)).get(key)
            if entry is None:
                xs, ys = self.x[pts], self.y[pts]
                clean = jacobian_norms(self.model, xs, y=ys)
                devices = [xs.device.index or 0] if xs.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(chunk_seed(self.plan.seed, key, c))
                    xa = pgd(self.model, xs, ys, jac_eps, steps=steps)
                adv = jacobian_norms(self.model, xa, y=ys)
                entry = {
                    "clean": {k: v.double().cpu().tolist() for k, v in clean.items()},
                    "adversarial": {k: v.double().cpu().tolist() for k, v in adv.items()},
                }
                self.store.save(c, self._points(c), key, entry)
            out["idx"] += pts.tolist()
            for part in ("clean", "adversarial"):
                for k, v in entry[part].items():
                    out[part].setdefault(k, []).extend(v)
        return out

    def payload(self) -> dict:
        """What this rank contributes to the record: its points' outcomes, costs and messages."""
        mine = self.mine.cpu()
        idx = mine.nonzero().squeeze(1).numpy()
        return {
            "idx": idx,
            "masks": {k: v.cpu()[mine].numpy() for k, v in self.masks.items()},
            "logits": self.logits.cpu()[mine].numpy(),
            "zero_grad": self.zero_grad.cpu()[mine].numpy(),
            "cost": {k: v.as_dict() for k, v in self.cost.items()},
            "attacked": dict(self.attacked),
            "messages": dict(self.messages),
            "examples": self.examples,
        }


def _what(step: Step) -> str:
    stage = {OURS: "", AUTOATTACK: " (AutoAttack)", OTHER_NORM: "", "probe": " (masking probe)"}.get(
        step.stage, ""
    )
    return f"eps {step.eps:g} {step.label}{stage}"


def merge(parts: list, n: int) -> dict:
    """The ranks' payloads as one: full bool (N,) masks, summed costs and counts, merged messages."""
    idx = np.concatenate([p["idx"] for p in parts]).astype(np.int64)
    order = np.argsort(idx)
    if not np.array_equal(idx[order], np.arange(n)):
        raise RuntimeError(f"the ranks' chunks cover {len(set(idx.tolist()))} of the {n} evaluation points")
    names = parts[0]["masks"].keys()
    masks = {k: torch.from_numpy(np.concatenate([p["masks"][k] for p in parts])[order]) for k in names}
    cost: dict = {}
    attacked: dict = {}
    messages: dict = {}
    for p in parts:
        for k, v in p["cost"].items():
            cost.setdefault(k, Cost()).add(Cost(**v))
        for k, v in p["attacked"].items():
            attacked[k] = attacked.get(k, 0) + v
        for k, v in p["messages"].items():
            messages.setdefault(k, [])
            messages[k] += [m for m in v if m not in messages[k]]
    examples = next((p["examples"] for p in parts if p["examples"]), {})
    return {
        "masks": masks,
        "logits": torch.from_numpy(np.concatenate([p["logits"] for p in parts])[order]),
        "zero_grad": torch.from_numpy(np.concatenate([p["zero_grad"] for p in parts])[order]),
        "cost": cost,
        "attacked": attacked,
        "messages": messages,
        "examples": examples,
    }
