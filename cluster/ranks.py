"""One trial's N DDP ranks as local processes forked from a warm forkserver, supervised by the
Tune trial actor that holds the trial's resources.

Why not a Ray Train ``TorchTrainer`` per trial: every ``fit()`` starts 6 + N fresh Python processes
(controller, side actors, workers) that each import Ray and torch; on a 2-core machine that is
10-20 s per trial before the first batch (``docs/architecture.md``, "The sweep engine"). Here the
Tune trial actor is reused across trials (``reuse_actors=True``) and keeps one
``multiprocessing`` forkserver with torch and the library already imported; a trial's ranks are
forks of it (~0.02 s each once warm), joined by a ``TCPStore`` the actor hosts on a free port.

What the ranks keep from the Ray Train version: DDP over gloo (CPU) or NCCL (GPU) with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` set (``train.pick_device`` picks GPU ``LOCAL_RANK``), per-epoch
checkpoints (rank 0 writes ``checkpoint.pt``; the actor hands a copy to Tune every epoch), and the
retry of a killed rank: when any rank dies the others are killed and all N restart from the last
checkpoint, up to ``worker_retries`` times (``starts.log`` gets one ``train_start`` per start).
Each rank's output goes to the trial's ``trial.log``; its process name is ``ur-rank<R>`` (``pgrep``).

A rank exits when the actor that started it dies (a watchdog thread polls its parent), so a killed
driver or a lost node leaves no orphan writing into the trial directory.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import sys
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Callable, Optional

from uncertainty_robust.rundir import TrialDir

log = logging.getLogger("uncertainty_robust.cluster")

# imported once by the forkserver, so a rank starts with them loaded (the first fork pays ~3 s);
# torch._dynamo alone is ~1 s (the first optimizer imports it), then TensorBoard, torchvision, numpy.ma
PRELOAD = [
    "torch",
    "torch._dynamo",
    "torch.distributed",
    "torch.nn.parallel",
    "torch.utils.tensorboard",
    "torchvision",
    "numpy.ma",
    "uncertainty_robust.trial",
    "uncertainty_robust.evaluation",
    "cluster.ranks",
]
PROCESS_NAME = "ur-rank{rank}"  # comm name (15 chars max): `pgrep ur-rank` lists every rank

# (epoch, metrics with "/" replaced by "_", rank 0's checkpoint path, ack) -> None; call ack() once
# the checkpoint has been copied: rank 0 does not start the next epoch before that.
EpochHandler = Callable[[int, dict, Path, Callable[[], None]], None]


class RankFailure(RuntimeError):
    """The trial's ranks failed for good (after ``worker_retries`` restarts, or a user error)."""


def tune_metrics(metrics: dict) -> dict:
    """The trainer's per-epoch metrics under the names Tune and its schedulers see (``train/loss`` ->
    ``train_loss``, ``val/...`` -> ``val_...``)."""
    return {k.replace("/", "_"): v for k, v in metrics.items()}


def log_start(trial_dir: Path, what: str) -> None:
    """Append one line per start to ``starts.log``: tests and humans count (re)starts from it (the
    trainer adds ``checkpoint_unreadable`` lines there, :func:`uncertainty_robust.resume.record_event`)."""
    from uncertainty_robust.resume import record_event

    record_event(trial_dir, what)


# ------------------------------------------------------------------------------------ forkserver
_CTX = None


def context():
    """The forkserver context of this process, created on first use with :data:`PRELOAD`.

    Inside a Ray worker ``__main__`` is Ray's ``default_worker.py``, which multiprocessing re-runs
    in every child as ``__mp_main__`` (only its imports run); preloading ``ray`` makes that free."""
    global _CTX
    if _CTX is None:
        import multiprocessing.forkserver as fs

        fs.set_forkserver_preload((["ray"] if "ray" in sys.modules else []) + PRELOAD)
        _CTX = mp.get_context("forkserver")
    return _CTX


def warm_up() -> None:
    """Start the forkserver now (it imports torch once, in the background of the first trial)."""
    import multiprocessing.forkserver as fs

    context()
    fs.ensure_running()


# ------------------------------------------------------------------------------------ in a rank
def _set_process_name(name: str) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
        except (OSError, AttributeError):  # a libc without prctl: the rank keeps python's name
            log.debug("could not name the rank process %s", name)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead: its parent may be gone too)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def _watch_parent(actor_pid: int, poll_s: float = 1.0) -> None:
    """Exit at once when the actor that started this rank (or the forkserver between them) is gone."""
    server = os.getppid()

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != server or not _alive(actor_pid):
                os._exit(3)

    threading.Thread(target=watch, name="ur-watch-parent", daemon=True).start()


def _setup_output(trial: TrialDir, rank: int, verbose: bool) -> None:
    """Everything the rank prints (logging, warnings, tracebacks) goes to the trial's ``trial.log``;
    with ``verbose`` it also stays on the actor's stdout/stderr (which Ray shows with ``-v``)."""
    trial.root.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    if verbose:
        fh = logging.FileHandler(trial.log)
        fh.setFormatter(fmt)
        root.addHandler(fh)
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        root.addHandler(sh)
        return
    fd = os.open(trial.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(fmt)
    root.addHandler(h)


def rank_main(spec: dict, conn) -> None:
    """The body of one rank process (started by :func:`run_ranks`)."""
    rank, world = spec["rank"], spec["world"]
    trial = TrialDir(spec["trial_dir"])
    _set_process_name(PROCESS_NAME.format(rank=rank))
    os.environ.update(spec["env"])
    _setup_output(trial, rank, spec.get("verbose", False))
    _watch_parent(spec["actor_pid"])
    import torch
    import torch.distributed as dist

    from uncertainty_robust.checkpoint import is_disk_full
    from uncertainty_robust.config import TrialConfig
    from uncertainty_robust.errors import UserError
    from uncertainty_robust.trial import run_trial

    try:
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        cfg = TrialConfig.from_dict(spec["trial"])
        if world > 1:
            if spec["backend"] == "nccl":
                torch.cuda.set_device(int(spec["env"]["LOCAL_RANK"]) % torch.cuda.device_count())
            store = dist.TCPStore(
                "127.0.0.1", spec["store_port"], world, is_master=False, timeout=timedelta(seconds=120)
            )
            # a rank may wait at the evaluation's per-eps collective while its peers attack harder
            # chunks; a dead peer is noticed by the actor, which stops every rank, not by this timeout
            dist.init_process_group(
                spec["backend"], store=store, rank=rank, world_size=world, timeout=timedelta(hours=12)
            )
        if rank == 0:
            log_start(trial.root, "train_start")

        def on_epoch_end(epoch: int, metrics: dict, ckpt_path: Path) -> None:
            if rank == 0:
                conn.send(("epoch", epoch, tune_metrics(metrics), str(ckpt_path)))
                conn.recv()  # the actor has copied the checkpoint

        run_trial(cfg, trial.root, resume_from=spec.get("resume_from"), on_epoch_end=on_epoch_end)
        if world > 1:
            dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - reported to the actor, then the rank exits non-zero
        traceback.print_exc()
        sys.stderr.flush()
        msg = (str(e).strip().splitlines() or [""])[0]
        # the user's to fix, so a restart cannot succeed: a UserError, and a full disk wherever it
        # hit (a checkpoint raises DiskFull; a log line or TensorBoard's event file, OSError ENOSPC)
        user = isinstance(e, UserError) or is_disk_full(e)
        try:
            conn.send(("error", f"{type(e).__name__}: {msg}" if msg else type(e).__name__, user))
        except OSError:
            pass
        os._exit(1)
    conn.close()


# ------------------------------------------------------------------------------------ in the actor
def rank_env(rank: int, world: int, port: int) -> dict:
    env = {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # what Ray gave this trial's bundle
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


def _append_log(trial: TrialDir, line: str) -> None:
    trial.root.mkdir(parents=True, exist_ok=True)
    with open(trial.log, "a") as f:
        f.write(f"{time.strftime('%H:%M:%S')} supervisor: {line}\n")


def run_ranks(
    trial_cfg: dict,
    trial_dir: os.PathLike,
    workers: int,
    threads: int,
    use_gpu: bool,
    retries: int,
    on_epoch: EpochHandler,
    resume_from: Optional[os.PathLike] = None,
    verbose: bool = False,
    on_restart: Optional[Callable[[str, int], None]] = None,
) -> int:
    """Run the trial on ``workers`` ranks until they all exit 0; returns the number of restarts.

    A rank that dies (killed, crashed, out of memory) takes the others down with it and all of them
    restart from the trial's last checkpoint, at most ``retries`` times; a :class:`UserError` raised
    in a rank (missing data, bad config) is not retried. Raises :class:`RankFailure` with the rank's
    exception as its last line. ``on_restart(what happened, restart number)`` is called before each
    restart."""
    trial = TrialDir(trial_dir)
    for attempt in range(retries + 1):
        failure = _attempt(
            trial_cfg,
            trial,
            workers,
            threads,
            use_gpu,
            on_epoch,
            resume_from if attempt == 0 else None,
            verbose,
        )
        if failure is None:
            return attempt
        what, user_error = failure
        if user_error or attempt == retries:
            _append_log(trial, f"{what}; giving up after {attempt} restart(s)")
            raise RankFailure(what)
        _append_log(
            trial,
            f"{what}; restarting all {workers} rank(s) from the last checkpoint ({attempt + 1}/{retries})",
        )
        log.warning("%s: %s; restarting its ranks (%d/%d)", trial.name, what, attempt + 1, retries)
        if on_restart is not None:
            on_restart(what, attempt + 1)
    raise AssertionError("unreachable")


def _attempt(trial_cfg, trial: TrialDir, world, threads, use_gpu, on_epoch, resume_from, verbose):
    """One start of the trial's ranks. None when all exited 0, else (what happened, user error?)."""
    ctx = context()
    store = None
    port = 0
    if world > 1:
        from torch.distributed import TCPStore

        store = TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)
        port = store.port
    procs, conns, errors = [], {}, {}
    try:
        for r in range(world):
            parent_end, child_end = ctx.Pipe()
            spec = {
                "rank": r,
                "world": world,
                "trial": trial_cfg,
                "trial_dir": str(trial.root),
                "store_port": port,
                "backend": "nccl" if use_gpu else "gloo",
                "threads": threads,
                "env": rank_env(r, world, port),
                "actor_pid": os.getpid(),
                "resume_from": str(resume_from) if resume_from else None,
                "verbose": verbose,
            }
            p = ctx.Process(target=rank_main, args=(spec, child_end), name=f"ur-rank{r}")
            p.start()
            child_end.close()
            procs.append(p)
            conns[parent_end] = r
        running = {p.sentinel: r for r, p in enumerate(procs)}
        while running:
            for obj in mp.connection.wait(list(conns) + list(running)):
                if obj in conns:
                    try:
                        msg = obj.recv()
                    except (EOFError, OSError):
                        del conns[obj]
                        continue
                    if msg[0] == "epoch":
                        _, epoch, metrics, ckpt = msg
                        on_epoch(epoch, metrics, Path(ckpt), lambda c=obj: c.send("ok"))
                    elif msg[0] == "error":
                        errors[conns[obj]] = (msg[1], msg[2])
                elif obj in running:
                    r = running.pop(obj)
                    procs[r].join()
                    code = procs[r].exitcode
                    if code != 0:
                        for c in list(conns):  # an error message sent just before the exit
                            if c.poll(0.2):
                                try:
                                    m = c.recv()
                                except (EOFError, OSError):
                                    continue
                                if m[0] == "error":
                                    errors[conns[c]] = (m[1], m[2])
                        how = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
                        # the rank's own exception, else the first rank's (a peer of a crashed rank
                        # only sees the broken connection)
                        err = errors.get(r) or next((errors[k] for k in sorted(errors)), None)
                        if err is not None:
                            return f"rank {r} {how}: {err[0]}", err[1]
                        return f"rank {r} {how}", False
        return None
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(10)
        for c in conns:
            c.close()
        del store
