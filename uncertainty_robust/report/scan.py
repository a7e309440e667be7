"""A run's trials as data: find the finished ones, group seeds into table rows, flatten one
trial into HParams values and metrics. Everything here reads a :class:`TrialConfig`, not raw dicts."""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional

from ..config import TrialConfig
from ..defenses import DEFENSES
from ..errors import UserError
from ..evaluation import SCHEMA
from ..rundir import TrialDir, read_json


class NoTrialsError(UserError, FileNotFoundError):
    """The run directory holds no trial at all, finished or not."""


@dataclass
class Trial:
    dir: Path
    record: dict  # the evaluation of ``checkpoint`` (see :func:`checkpoint_view`)
    flags: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    checks: list = field(default_factory=list)  # audit.Check per check: flagged / passed / not tested
    checkpoint: str = "last"

    @cached_property
    def points(self):
        """``(indices, {outcome name: bool ndarray})`` of this checkpoint, or None (no points.npz:
        records written before per-point outcomes existed, or hand-made ones)."""
        from ..trial import read_points

        try:
            return read_points(self.dir, self.checkpoint)
        except (OSError, ValueError, KeyError):  # a truncated or foreign file: no per-point statistics
            return None

    @cached_property
    def cfg(self) -> TrialConfig:
        return TrialConfig.from_dict(self.record["config"], check=False)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def eps_train(self) -> float:
        return self.cfg.eps_train


@dataclass
class Group:
    """Trials whose configs differ only in seed (and runtime fields): one row of a table."""

    label: str
    key: dict  # TrialConfig.row_key() of its trials
    trials: list

    @property
    def cfg(self) -> TrialConfig:
        return self.trials[0].cfg

    @property
    def slug(self) -> str:
        return slug(self.label)


@dataclass
class Scan:
    trials: list
    unfinished: list
    ignored: list  # result.json files that are not ours (Ray's), duplicates
    excluded: list = field(default_factory=list)  # [(trial dir, why)]: finished, but not for this checkpoint


_BEST_META = ("epoch", "metric", "value", "evaluated", "same_as_last")


def checkpoint_view(record: dict, checkpoint: str = "last") -> Optional[dict]:
    """The record as if ``checkpoint`` were its top level: "last" is the record itself; "best"
    overlays the best epoch's evaluation (``record["best"]``) on it, with ``checkpoint`` and
    ``epoch`` set. None when that checkpoint was not evaluated."""
    if checkpoint == "last":
        return record
    best = record.get(checkpoint)
    if not isinstance(best, dict) or not best.get("evaluated"):
        return None
    ev = {k: v for k, v in best.items() if k not in _BEST_META}
    return {**record, **ev, "checkpoint": checkpoint, "epoch": best["epoch"]}


def slug(s: str) -> str:
    """A file/run name: "AT+EntM (λ=0.5, ε=0.3)" -> "AT+EntM_lam0.5_eps0.3"."""
    for d in DEFENSES.values():
        if d.lam is not None:
            s = s.replace(f"{d.lam.symbol}=", "lam")
    s = s.replace("ε=", "eps")
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", s).strip("_")


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def scan_run(run_dir, exclude=(), checkpoint: str = "last") -> Scan:
    """Finished trials (``**/result.json`` with our schema) and unfinished ones (a directory with
    our ``config.json`` or a ``checkpoint.pt`` but no result; Ray Train's ``checkpoint_*`` copies
    and anything inside a known trial directory are not trials of their own). ``checkpoint``:
    which evaluation each trial's ``record`` holds (:func:`checkpoint_view`); finished trials
    without it are listed in ``excluded``."""
    root = Path(run_dir)
    excl = [Path(e).resolve() for e in exclude]

    def keep(p: Path) -> bool:
        return not _hidden(p, root) and not any(e == p.resolve() or e in p.resolve().parents for e in excl)

    names = TrialDir(root)
    trials, ignored, seen, excluded = [], [], {}, []
    for f in sorted(root.rglob(names.result.name)):
        if not keep(f):
            continue
        rec = read_json(f) or {}
        if rec.get("schema") != SCHEMA or rec.get("trial_id") in seen:
            ignored.append(f)
        else:
            seen[rec.get("trial_id")] = f.parent
            view = checkpoint_view(rec, checkpoint)
            if view is None:
                excluded.append((f.parent, f"no evaluation of the {checkpoint} checkpoint"))
                continue
            trials.append(Trial(f.parent, view, checkpoint=checkpoint))
    done = {t.dir.resolve() for t in trials} | {d.resolve() for d, _ in excluded}
    cands = set()
    for name in (names.config.name, names.checkpoint.name):
        for f in root.rglob(name):
            d = f.parent
            if not keep(f) or d.name.startswith("checkpoint_") or d.resolve() in done:
                continue
            if name == names.checkpoint.name or {"defense", "test_eps"} <= set(read_json(f) or {}):
                cands.add(d)
    known = done | {c.resolve() for c in cands}
    unfinished = sorted(d for d in cands if not any(a.resolve() in known for a in d.parents))
    return Scan(trials, unfinished, ignored, excluded)


# ------------------------------------------------------------------------------ per-trial values
def hparams(t: Trial) -> dict:
    c = t.cfg
    return {
        "defense": c.defense,
        "lam": float(c.lam),
        "eps": c.eps_train,
        "seed": int(c.seed),
        "dataset": c.dataset,
        "model": c.model,
        "method": c.method_label(),
    }


def metrics(t: Trial) -> dict:
    """The HParams metrics of one trial, flat {tag: value}."""
    r = t.record
    m = {
        "clean_acc": r["clean_acc"],
        "entropy_mean": r["entropy_mean"],
        "ece": r["ece"],
        "audit/flags": float(len(t.flags)),
    }
    for w in r["worst_case"]:
        m[f"worst/eps_{w['eps']:g}"] = (w.get("ours") or w)["acc"]
        if "ours" in w:
            m[f"autoattack/eps_{w['eps']:g}"] = w["acc"]
    for a in r["attacks"]:
        m[f"acc/{a['label']}/eps_{a['eps']:g}"] = a["acc"]
    for out in ("logits", "softmax"):
        for stat in ("mean", "median"):
            if out in r.get("jacobian", {}):
                m[f"jacobian/{out}_{stat}"] = r["jacobian"][out][stat]
    for k, v in jacobian_values(r).items():
        m.setdefault(f"jacobian/{k}", v)
    if isinstance(r.get("best"), dict):
        m["best/epoch"] = float(r["best"]["epoch"])
    if r.get("masking_probe") and "zero_grad_frac" in r["masking_probe"]:
        m["probe/zero_grad_frac"] = r["masking_probe"]["zero_grad_frac"]
    if r.get("transfer") and "acc" in r["transfer"]:
        m["transfer/acc"] = r["transfer"]["acc"]
    return m


# The Jacobian statistics that tables correlate with robust accuracy: (output, summary). Medians for
# the signed boundary distance (a few misclassified points make its mean meaningless).
JACOBIAN_STATS = (("logits", "mean"), ("softmax", "mean"), ("margin", "mean"), ("boundary_linf", "median"))


def jacobian_values(record: dict) -> dict:
    """{"<output>_<stat>": v} at the clean points and {"adv_<output>_<stat>": v} at the PGD points
    (``record["jacobian"]["adversarial"]``), for what the record has of :data:`JACOBIAN_STATS`."""
    jac = record.get("jacobian") or {}
    out = {}
    for prefix, part in (("", jac), ("adv_", jac.get("adversarial") or {})):
        for o, stat in JACOBIAN_STATS:
            if isinstance(part.get(o), dict) and stat in part[o]:
                out[f"{prefix}{o}_{stat}"] = part[o][stat]
    return out


def group_trials(trials: list) -> list:
    """Group by config minus seed/runtime fields; labels of groups that would collide get the
    differing config fields appended, so two rows never share a name. Rows follow the defense
    registry's order."""
    groups: dict = {}
    for t in sorted(trials, key=lambda t: (t.cfg.seed, t.name)):
        key = t.cfg.row_key()
        groups.setdefault(
            json.dumps(key, sort_keys=True, default=str), Group(t.cfg.method_label(), key, [])
        ).trials.append(t)
    out = list(groups.values())
    by_label: dict = {}
    for g in out:
        by_label.setdefault(g.label, []).append(g)
    for same in by_label.values():
        if len(same) > 1:
            diff = sorted(
                k for k in same[0].key if len({json.dumps(g.key.get(k), default=str) for g in same}) > 1
            )
            for g in same:
                g.label += (
                    " [" + ", ".join(f"{k}={json.dumps(g.key.get(k), default=str)}" for k in diff) + "]"
                )
    order = list(DEFENSES)

    def rank(g: Group):
        c = g.cfg
        return (
            c.dataset,
            c.model,
            order.index(c.defense) if c.defense in order else 99,
            c.lam,
            c.eps_train,
            g.label,
        )

    return sorted(out, key=rank)


def mean_std(vals: list) -> tuple:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)
