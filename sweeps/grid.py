"""YAML sweep grids: schema, complete validation, expansion into TrialConfigs.

A grid is validated completely before anything starts; the first problem raises
:class:`GridError`, one line naming the key and the allowed values (``launch.py`` exits 2). A value
listed twice (a seed, a lambda, a training or test eps) is refused, not merged; a grid that expands
to more than :data:`MAX_TRIALS` (10,000) trials is refused.

The schema is generated from the fields' own metadata (their grid key, default, rule and help:
``uncertainty_robust/config/fields.py``, ``cluster/settings.py``), so it cannot go stale:
``python sweeps/launch.py --print-schema`` prints it (:func:`sweeps.show.schema_text`). ``extends: <grid>`` starts
from another grid (a file beside this one, or a name in sweeps/): its sections (evaluation,
adversarial, optimizer, validation, precision, resources, search, slurm) are merged key by key with
this grid's, every other key this grid states replaces the parent's; name and description are not
inherited (the name defaults to this file's stem).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cluster import settings
from uncertainty_robust.attacks import AttackSpec
from uncertainty_robust.config import AXES, ConfigError, TrialConfig, grid_fields, validate
from uncertainty_robust.defenses import DEFENSES

_FIELDS = grid_fields()  # {grid key: TrialConfig field}, from the fields' own metadata
SECTIONS: dict = {}
for _key, _name in _FIELDS.items():
    if "." in _key:
        _sec, _k = _key.split(".", 1)
        SECTIONS.setdefault(_sec, {})[_k] = _name
TOP_FIELDS = tuple(k for k in _FIELDS if "." not in k and k not in AXES)
TOP_KEYS = (
    set(TOP_FIELDS)
    | set(SECTIONS)
    | set(AXES)
    | {"name", "description", "extends", "resources", "search", "slurm"}
)
MERGED = set(SECTIONS) | {"resources", "search", "slurm"}  # mappings a derived grid merges key by key
NOT_INHERITED = ("name", "description", "extends")
SWEEPS_DIR = Path(__file__).resolve().parent
MAX_TRIALS = 10_000  # the most trials one grid may expand to (one Tune experiment, one plan.json)


class GridError(ConfigError):
    """A bad grid: ``key`` is where it lives in the YAML (``evaluation.attacks[1].name``)."""


@dataclass
class Grid:
    source: str  # the YAML text as given; for a grid with ``extends``, the resolved grid (self-contained)
    data: dict
    trials: list  # [TrialConfig]
    resources: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    slurm: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.data.get("name") or "sweep")


def find_grid(arg: str, sweeps_dir: Path) -> Path:
    """``--grid NAME`` finds a bare name (with or without .yaml) in sweeps/."""
    p = Path(arg)
    if p.exists():
        return p
    for cand in (sweeps_dir / arg, sweeps_dir / f"{arg}.yaml"):
        if cand.exists():
            return cand
    known = ", ".join(sorted(q.name for q in sweeps_dir.glob("*.yaml")))
    raise GridError("--grid", f"no grid file {arg!r} (here or in sweeps/); shipped grids: {known}")


def _list(key: str, v: Any, kind=None, unique: bool = False) -> list:
    if not isinstance(v, list):
        v = [v]
    if not v:
        raise GridError(key, "empty list; give at least one value")
    for i, x in enumerate(v):
        if kind is not None and (isinstance(x, bool) or not isinstance(x, kind)):
            raise GridError(f"{key}[{i}]", f"expected {getattr(kind, '__name__', 'number')}, got {x!r}")
        if unique and x in v[:i]:
            raise GridError(key, f"{v!r} lists {x!r} twice; give each value once")
    return v


def _section(data: dict, name: str) -> dict:
    """A typed sweep section (``cluster.settings``): known keys only, each checked by its rule."""
    allowed = settings.defaults(name)
    sec = data.get(name) or {}
    if not isinstance(sec, dict):
        raise GridError(name, f"expected a mapping with keys {', '.join(allowed)}")
    unknown = sorted(set(sec) - set(allowed))
    if unknown:
        raise GridError(f"{name}.{unknown[0]}", f"unknown key; allowed: {', '.join(allowed)}")
    try:
        return settings.resolve(name, sec)
    except ConfigError as e:
        raise GridError(e.key, e.msg) from None


def _attack(key: str, a: Any) -> dict:
    if isinstance(a, dict):
        extra = sorted(set(a) - {"name", "steps", "step_size", "restarts", "random_start", "eps"})
        if extra:
            raise GridError(
                f"{key}.{extra[0]}",
                "unknown key; allowed: name, steps, step_size, restarts, random_start, eps",
            )
        return dict(a)
    try:
        return dataclasses.asdict(AttackSpec.parse(a, key))
    except ConfigError as e:
        raise GridError(e.key, e.msg) from None


def _load_yaml(text: str, where: str = "") -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark else "?"
        raise GridError("yaml", f"{where}not valid YAML ({line}): {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise GridError("yaml", f"{where}the grid must be a mapping of keys (dataset, defenses, ...)")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise GridError(unknown[0], f"{where}unknown key; allowed: {', '.join(sorted(TOP_KEYS))}")
    return data


def _resolve_extends(
    data: dict, base_dir: Path | None, chain: tuple = (), origin: dict | None = None
) -> dict:
    """``data`` with its ``extends`` chain applied: the parent's sections merged key by key under this
    grid's, every other key of this grid replacing the parent's; the parent's name, description and
    extends are dropped. The parent is a file relative to ``base_dir`` (the extending grid's folder),
    else a grid of sweeps/, by path or bare name. ``origin`` (if given) receives, for each key that a
    parent set (``seeds``, ``evaluation.n_eval``), the parent's file name."""
    ref = data.get("extends")
    if ref is None:
        return data
    if not isinstance(ref, str) or not ref:
        raise GridError("extends", f"expected the name or path of another grid, got {ref!r}")
    dirs = [d for d in (base_dir, SWEEPS_DIR) if d is not None]
    cands = [d / r for d in dirs for r in (ref, f"{ref}.yaml")]
    path = next((c.resolve() for c in cands if c.is_file()), None)
    if path is None:
        raise GridError("extends", f"no grid {ref!r} beside this grid or in sweeps/")
    if path in chain:
        loop = " -> ".join(p.stem for p in (*chain, path))
        raise GridError("extends", f"grids extend each other in a loop: {loop}")
    raw = _load_yaml(path.read_text(), f"{path.name}: ")
    parent = _resolve_extends(raw, path.parent, (*chain, path), origin)
    merged = {k: v for k, v in parent.items() if k not in NOT_INHERITED}
    for k, v in data.items():
        if k == "extends":
            continue
        if k in MERGED and isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    if origin is not None:
        _set_origin(origin, raw, path.name)  # what the parent itself states
        _set_origin(origin, data, None)  # minus what this grid states
    return merged


def _set_origin(origin: dict, grid: dict, name: str | None) -> None:
    """Record ``name`` (None: forget) as where each key ``grid`` states comes from: ``k`` for a plain
    key (which also replaces a whole section), ``k.sub`` for a key inside a merged section."""
    for k, v in grid.items():
        if k in NOT_INHERITED:
            continue
        section = k in MERGED and isinstance(v, dict)
        keys = [f"{k}.{sub}" for sub in v] if section else [k]
        if not section:  # replaces the whole key: what a parent set inside it is gone
            for x in [x for x in origin if x.startswith(f"{k}.")]:
                del origin[x]
        elif name is None:
            origin.pop(k, None)  # a section this grid states key by key replaced a parent's plain value
        for key in keys:
            if name is None:
                origin.pop(key, None)
            else:
                origin[key] = name


def parse_grid(text: str, path: Path | None = None) -> Grid:
    """Validate and expand a grid. ``path``, the file the text came from, is where ``extends`` looks
    first (then sweeps/), and its stem names a derived grid that states no name of its own."""
    data = _load_yaml(text)
    if "extends" not in data:
        return _expand(text, data)
    path = Path(path).resolve() if path is not None else None
    chain = (path,) if path is not None else ()
    origin: dict = {}
    merged = _resolve_extends(data, path.parent if path is not None else None, chain, origin)
    name = merged.pop("name", path.stem if path is not None else None)
    merged = {**({"name": name} if name is not None else {}), **merged}
    header = f"# resolved from a grid that extends {data['extends']!r}; this text is the whole grid\n"
    try:
        return _expand(header + yaml.safe_dump(merged, sort_keys=False, default_flow_style=None), merged)
    except GridError as e:  # a bad value a parent set: say which file set it
        parts = e.key.split("[")[0].split(".")  # evaluation.attacks[1].name -> evaluation, attacks
        prefixes = (".".join(parts[:i]) for i in range(len(parts), 0, -1))  # longest first
        where = next((origin[k] for k in prefixes if k in origin), None)
        if where is None:
            raise
        raise GridError(e.key, f"{e.msg} (set in {where})") from None


def _expand(text: str, data: dict) -> Grid:
    """Validate a whole grid (``extends`` resolved) and expand it into trials."""
    if "defenses" not in data:
        raise GridError("defenses", f"missing; choose from {', '.join(DEFENSES)}")
    defenses = _list("defenses", data["defenses"], str, unique=True)
    for i, d in enumerate(defenses):
        if d not in DEFENSES:
            raise GridError(f"defenses[{i}]", f"{d!r} is not one of {', '.join(DEFENSES)}")
    seeds = _list("seeds", data.get("seeds", [0]), int, unique=True)
    eps_list = _list("train_eps", data.get("train_eps", [TrialConfig().eps]), (int, float), unique=True)
    epochs_list = _list("epochs", data.get("epochs", [TrialConfig().epochs]), int, unique=True)
    lambdas = data.get("lambdas", [0.0])
    with_lam = [d for d, spec in DEFENSES.items() if spec.takes_lam]
    if isinstance(lambdas, dict):
        bad = sorted(set(lambdas) - set(with_lam))
        if bad:
            raise GridError(
                f"lambdas.{bad[0]}", f"not a defense with a lambda; allowed: {', '.join(with_lam)}"
            )
        lam_of = {d: _list(f"lambdas.{d}", v, (int, float), unique=True) for d, v in lambdas.items()}
    else:
        lam_list = _list("lambdas", lambdas, (int, float), unique=True)
        lam_of = {d: lam_list for d in with_lam}

    base: dict = {k: data[k] for k in TOP_FIELDS if k in data}
    for sec, mapping in SECTIONS.items():
        s = data.get(sec) or {}
        if not isinstance(s, dict):
            raise GridError(sec, f"expected a mapping with keys {', '.join(mapping)}")
        for k, v in s.items():
            if k not in mapping:
                raise GridError(f"{sec}.{k}", f"unknown key; allowed: {', '.join(mapping)}")
            base[mapping[k]] = v
    if "attacks" in base:
        base["attacks"] = [
            _attack(f"evaluation.attacks[{i}]", a)
            for i, a in enumerate(_list("evaluation.attacks", base["attacks"]))
        ]
    if "autoattack" in base:
        aa = base["autoattack"] if isinstance(base["autoattack"], list) else [base["autoattack"]]
        base["autoattack"] = [_attack(f"evaluation.autoattack[{i}]", a) for i, a in enumerate(aa)]
    if base.get("autoattack_eps") not in (None, []):
        base["autoattack_eps"] = _list("evaluation.autoattack_eps", base["autoattack_eps"], (int, float))
    if "test_eps" in base:
        _list("evaluation.test_eps", base["test_eps"], (int, float))
    resources, search, slurm = (_section(data, k) for k in ("resources", "search", "slurm"))

    n = sum(
        len(lam_of.get(d, [0.0]) if DEFENSES[d].takes_lam else [0.0])
        * (len(eps_list) if DEFENSES[d].adversarial else 1)
        * len(epochs_list)
        * len(seeds)
        for d in defenses
    )
    if n > MAX_TRIALS:
        raise GridError(
            "grid", f"expands to {n:,} trials, more than the {MAX_TRIALS:,} one sweep may hold; split it"
        )
    trials, seen = [], set()
    for d in defenses:
        spec = DEFENSES[d]
        lams = lam_of.get(d, [0.0]) if spec.takes_lam else [0.0]
        if spec.takes_lam and d not in lam_of:
            raise GridError(f"lambdas.{d}", f"defense {d!r} is in the grid but has no lambda values")
        epss = eps_list if spec.adversarial else [base.get("eps", TrialConfig().eps)]
        for lam, eps, epochs, seed in itertools.product(lams, epss, epochs_list, seeds):
            try:
                cfg = TrialConfig(
                    **{
                        **base,
                        "defense": d,
                        "lam": float(lam),
                        "eps": float(eps),
                        "epochs": int(epochs),
                        "seed": int(seed),
                    }
                )
                validate(cfg)
            except ConfigError as e:
                raise GridError(_grid_key(e.key), e.msg) from None
            except TypeError as e:
                raise GridError("grid", str(e)) from None
            tid = cfg.trial_id()
            if tid not in seen:
                seen.add(tid)
                trials.append(cfg)
    _check_metric(search, trials)
    if search["mode"] == "random":
        rng = random.Random(int(search["seed"]))
        trials = rng.sample(trials, min(len(trials), int(search["num_samples"])))
    return Grid(text, data, trials, resources, search, slurm)


def _grid_key(key: str) -> str:
    """Map a TrialConfig field (``attacks[1].steps``) back to where it lives in the grid."""
    name = key.split("[")[0].split(".")[0]
    for gk, field_name in _FIELDS.items():
        if field_name == name:
            return gk + key[len(name) :]
    return key


# What ASHA may select on: validation accuracies only (maximised). Tune sees "/" as "_".
VAL_METRICS = ("val/robust_acc", "val/clean_acc")


def tune_metric(name: str) -> str:
    """The name Tune reports a per-epoch metric under: ``val/robust_acc`` -> ``val_robust_acc``."""
    return name.replace("/", "_")


def _check_metric(search: dict, trials: list) -> None:
    """``search.metric`` must be a validation metric (a test metric would select on the test split);
    under ASHA every trial needs a validation split, and robust accuracies are comparable only at
    one validation eps."""
    m = search["metric"]
    if isinstance(m, str) and m.startswith("val_"):  # Tune's spelling of val/...
        m = "val/" + m[4:]
    if m not in VAL_METRICS:
        raise GridError(
            "search.metric",
            f"{search['metric']!r} is not a validation metric; choose from {', '.join(VAL_METRICS)} "
            "(selection must never read the test split)",
        )
    search["metric"] = m
    if search["scheduler"] != "asha":
        return
    if any(c.val_points == 0 for c in trials):
        raise GridError("validation.points", "ASHA selects on the validation split: set it above 0")
    if search["metric"] == "val/robust_acc" and len({c.val_attack_eps for c in trials}) > 1:
        found = ", ".join(f"{e:g}" for e in sorted({c.val_attack_eps for c in trials}))
        raise GridError(
            "validation.eps",
            f"ASHA compares val/robust_acc across trials, but their validation eps differ ({found}); "
            "set one validation.eps for the grid",
        )


def load_grid(path: Path) -> Grid:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise GridError("--grid", f"cannot read {path}: {e.strerror}") from None
    return parse_grid(text, Path(path))


def trial_resources(grid: Grid) -> dict:
    r = grid.resources
    return {
        "workers": int(r["workers"]),
        "cpus_per_worker": float(r["cpus_per_worker"]),
        "gpus_per_worker": float(r["gpus_per_worker"]),
    }
