"""The evaluation's progress line: at most one every ``every`` seconds (10 by default), from rank 0,
with the step (eps, attack), the points left in it and an ETA.

The ETA is the passes the plan still expects (every remaining step on the points still standing,
AutoAttack only at the eps where it may still run: an upper bound that shrinks as points fall)
divided by the passes per second measured so far.
Where the line goes is the caller's choice (``run_trial`` writes it to the trial's log and to
``TrialDir.progress``, which a sweep's console prints; ``ur-train`` logs it)."""

from __future__ import annotations

import time
from typing import Callable, Optional


class Progress:
    def __init__(self, emit: Optional[Callable[[dict], None]], every: float = 10.0, world: int = 1):
        self.emit, self.every, self.world = emit, every, world
        self.t0 = time.perf_counter()
        self.last = float("-inf")
        self.done_passes = 0.0

    def add(self, passes: float) -> None:
        self.done_passes += passes

    def update(self, what: str, left: int, of: int, remaining_passes: float, force: bool = False) -> None:
        """``what``: the step ("eps 0.2 apgd-t100 (AutoAttack)"); ``left`` of ``of``: points this rank
        still attacks in it; ``remaining_passes``: what the plan still expects on this rank."""
        if self.emit is None:
            return
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.t0
        rate = self.done_passes / elapsed if elapsed > 0 and self.done_passes > 0 else None
        eta = remaining_passes / rate if rate else None
        shard = f" (rank 0 of {self.world})" if self.world > 1 else ""
        line = f"evaluating: {what}, {left} of {of} points left{shard}" + (
            f", ~{_duration(eta)} left (upper bound)" if eta is not None else ""
        )
        self.emit(
            {
                "line": line,
                "step": what,
                "points_left": left,
                "points": of,
                "eta_s": None if eta is None else round(eta, 1),
                "elapsed_s": round(elapsed, 1),
                "time": time.time(),
            }
        )


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
