"""Sharding the evaluation over a trial's DDP ranks, and its resumable state.

:class:`Shard`: this rank's chunks (chunk ``c`` goes to rank ``c % world``) and the two collectives
the evaluation needs (a sum per eps, to decide where AutoAttack runs; one gather of every chunk's
outcomes at the end). Without ``torch.distributed`` (one process) both are the identity.

:class:`ChunkStore`: one JSON file per chunk under ``TrialDir.eval_state/<model fingerprint>/``,
rewritten atomically after every step of that chunk: a requeued evaluation, or one whose rank was
killed, skips every finished step of every chunk, whichever rank runs it next. A file that cannot
be read is set aside with one warning line and its chunk starts over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger("uncertainty_robust")


class Shard:
    def __init__(self, n_chunks: int):
        import torch.distributed as dist

        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.chunks = [c for c in range(n_chunks) if c % self.world == self.rank]

    def all_sum(self, values: list) -> list:
        """Element-wise sum over ranks (float64; exact for counts)."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha1 of the model's state (weights and buffers): saved outcomes are reused only for the very
    same model."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ChunkStore:
    """Saved outcomes of the steps each chunk has finished: ``{step key: {"robust": [0/1 per point
    of the chunk], "cost": {...}, ...}}`` plus the chunk's ``extra`` items (clean pass, Jacobians)."""

    def __init__(self, root: Optional[os.PathLike], fingerprint: str, plan_key: str):
        self.dir = Path(root) / fingerprint[:16] if root is not None else None
        self.key = {"fingerprint": fingerprint, "plan": plan_key}
        self._mem: dict = {}

    def path(self, c: int) -> Optional[Path]:
        return None if self.dir is None else self.dir / f"chunk_{c:05d}.json"

    def load(self, c: int, points: list) -> dict:
        """The chunk's saved steps ({} when none, for another model or plan, or unreadable)."""
        if c in self._mem:
            return self._mem[c]
        st: dict = {}
        p = self.path(c)
        if p is not None and p.exists():
            try:
                d = json.loads(p.read_text())
                if d.get("key") == {**self.key, "points": points}:
                    st = d["steps"]
            except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
                aside = p.with_name(f"{p.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
                try:
                    p.rename(aside)
                except OSError:
                    aside = p
                log.warning(
                    "%s: cannot be read (%s); set aside as %s, chunk %d is evaluated again",
                    p,
                    e,
                    aside.name,
                    c,
                )
        self._mem[c] = st
        return st

    def save(self, c: int, points: list, key: str, entry: dict) -> None:
        st = self.load(c, points)
        st[key] = entry
        p = self.path(c)
        if p is None:
            return
        blob = json.dumps({"key": {**self.key, "points": points}, "steps": st}, separators=(",", ":"))
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_text(blob)
        os.replace(tmp, p)  # atomic; not fsynced: losing the last steps to a power cut only redoes them
