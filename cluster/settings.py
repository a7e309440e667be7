"""The sweep's typed sections: ``resources`` (one trial's ranks and devices), ``search`` (Tune's
search and retries) and ``slurm`` (the job). Each field states its default and its rule where it is
defined (:mod:`uncertainty_robust.schema`); the grid parser checks them with the same loop as a
trial's config, and everything that reads a section takes its defaults from here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from uncertainty_robust import schema as S


@dataclass
class Resources:
    workers: int = S.field(1, rule=S.integer(1, 1024), help="DDP ranks of one trial (one node)")
    cpus_per_worker: float = S.field(1, rule=S.number(0, 512, lo_open=True))
    gpus_per_worker: float = S.field(0, rule=S.number(0, 16))


@dataclass
class Search:
    mode: str = S.field("grid", rule=S.choice(("grid", "random")))
    num_samples: int = S.field(1, rule=S.integer(1, 10**6), help="random mode: trials drawn")
    scheduler: str = S.field("none", rule=S.choice(("none", "asha")))
    metric: str = S.field("val/robust_acc", rule=S.text(), help="what ASHA maximises (a validation metric)")
    max_concurrent: Optional[int] = S.field(None, rule=S.integer(1, 10**5, optional=True))
    trial_retries: int = S.field(2, rule=S.integer(0, 100), help="Tune's retries of a failed trial")
    worker_retries: int = S.field(2, rule=S.integer(0, 100), help="restarts of a trial's ranks")
    seed: int = S.field(0, rule=S.integer(0, 2**31 - 1), help="random mode: the draw's seed")


@dataclass
class Slurm:
    nodes: int = S.field(1, rule=S.integer(1, 4096))
    time_min: int = S.field(240, rule=S.integer(1, 60 * 24 * 30))
    cpus_per_node: Optional[int] = S.field(None, rule=S.integer(1, 100000, optional=True))
    gpus_per_node: int = S.field(0, rule=S.integer(0, 64))
    mem_gb: Optional[int] = S.field(None, rule=S.integer(1, 100000, optional=True))
    account: Optional[str] = S.field(None, rule=S.text(optional=True))
    qos: Optional[str] = S.field(None, rule=S.text(optional=True))
    constraint: Optional[str] = S.field(None, rule=S.text(optional=True))
    extra: list = S.field(rule=S.list_of(S.text()), factory=list, help="sbatch options, e.g. ['--exclusive']")
    # time-outs after which the job stops requeuing itself (submitit's default: 3)
    max_requeues: int = S.field(100, rule=S.integer(0, 100000))


SECTIONS = {"resources": Resources, "search": Search, "slurm": Slurm}


def defaults(section: str) -> dict:
    """The section's defaults as a dict (what a grid that omits it gets)."""
    return dataclasses.asdict(SECTIONS[section]())


def resolve(section: str, given: dict) -> dict:
    """``given`` (keys already known to be fields) over the section's defaults, checked field by
    field; raises ConfigError naming ``section.key``."""
    record = SECTIONS[section](**given)
    S.check_fields(record, key=lambda name: f"{section}.{name}")
    return dataclasses.asdict(record)
