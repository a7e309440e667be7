"""``fit(config, workdir)``: the epoch loop of one trial, resumable and DDP-aware.

- Checkpoint every epoch (model, optimizer, scheduler, epoch, RNG states, history, cost, best
  epoch so far), written atomically to ``workdir/checkpoint.pt``; a restarted run continues from it and, on the
  CPU with the same seed, ends with bit-identical weights (the data order is a function of
  (seed, epoch) alone, and the global RNG that PGD's random start draws from is restored).
- The checkpoint it replaces stays beside it as ``checkpoint.prev.pt``. A checkpoint that exists but
  cannot be read (truncated, empty, overwritten: damage from outside, since writes are atomic) is
  moved aside to ``<name>.unreadable-<time>`` (never deleted) with one warning line and a
  ``checkpoint_unreadable`` event in ``starts.log``, and the run resumes from ``checkpoint.prev.pt``
  (one epoch redone, bit-identical), else from scratch: never twice from the same damaged file.
- When ``torch.distributed`` is initialized (Ray Train, torchrun) the model is wrapped in DDP,
  each rank sees its shard (DistributedSampler), metrics are all-reduced, rank 0 writes files.
  Training adversaries are generated on the unwrapped module so no DDP reducer is armed by the
  attack's forward passes.
- A validation split is carved from the training split (``val_points``, stratified, seeded; the
  training set excludes it). After every epoch :func:`_validate_epoch` measures on it, and only on it,
  ``val/clean_acc``, ``val/robust_acc`` (a cheap PGD at :attr:`TrialConfig.val_attack_eps`),
  ``val/entropy`` and RMS Jacobian-norm estimates. The epoch with the highest ``val/robust_acc``
  (earliest on ties) is kept in ``workdir/best.pt`` (written before the checkpoint that records it,
  so a kill between the two is redone identically). The test split is not read here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler

from . import accel
from . import checkpoint as ckpt
from .accel import rank_world
from .attacks import Cost, default_step_size
from .config import TrialConfig
from .data import dataset_info, load_train_val
from .defenses import get as get_defense
from .jacobian import jacobian_norms_estimate
from .models import build_model
from .resume import TrainState, record_event, restore_trial
from .rundir import TrialDir

log = logging.getLogger("uncertainty_robust")

EpochCallback = Callable[[int, dict, Path], None]  # (epoch, metrics, checkpoint path)


def pick_device(cfg: TrialConfig) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` on a GPU node, else the CPU
    (:func:`uncertainty_robust.accel.pick_device`)."""
    return accel.pick_device(cfg.device)


def make_model(cfg: TrialConfig, device: Optional[torch.device] = None) -> torch.nn.Module:
    """The trial's model; on ``device`` in the memory layout of ``cfg.precision`` when one is given
    (channels_last for bf16 on CUDA; the CPU layout is never changed)."""
    info = dataset_info(cfg.dataset)
    model = build_model(cfg.model, info.channels, info.num_classes, info.size, info.mean, info.std, cfg.width)
    return model if device is None else accel.place_model(model, device, cfg.precision)


def make_optimizer(cfg: TrialConfig, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrialConfig, opt, batches_per_epoch: int = 1):
    """Stepped once per epoch, or once per batch for ``cyclic`` (:data:`PER_BATCH`), whose one cycle
    spans ``epochs * batches_per_epoch`` batches: the lr rises linearly from 0 to ``lr`` until the
    fraction ``cyclic_peak`` of them, then falls linearly to 0 (each batch takes the value at its
    midpoint, so none trains at lr 0)."""
    if cfg.schedule == "cyclic":
        total = max(1, cfg.epochs * batches_per_epoch)
        peak = cfg.cyclic_peak * total

        def one_cycle(i: int) -> float:
            t = min(i + 0.5, total)
            return t / peak if t <= peak else (total - t) / (total - peak)

        return torch.optim.lr_scheduler.LambdaLR(opt, one_cycle)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        ms = sorted({max(1, int(round(m * cfg.epochs))) for m in cfg.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)


def _reduce(values: dict, device) -> dict:
    """Sum-reduce {name: (sum, count)} across ranks and return means."""
    names = sorted(values)
    t = torch.tensor([[values[n][0], values[n][1]] for n in names], dtype=torch.float64, device=device)
    if rank_world()[1] > 1:
        dist.all_reduce(t)
    return {n: (t[i, 0] / t[i, 1]).item() if t[i, 1] > 0 else float("nan") for i, n in enumerate(names)}


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


PER_BATCH = ("cyclic",)  # schedules stepped after every optimizer step, not at the end of an epoch
BEST_METRIC = "val/robust_acc"  # what the best checkpoint (and ASHA by default) selects on


def train_epoch(
    net, model, opt, cfg: TrialConfig, x_tr, y_tr, idx, device, cost: Cost, epoch: int, sched=None
) -> dict:
    """One pass over the shard ``idx`` of the training set; returns per-example sums of the
    defense's statistics, ``{name: [sum, count]}`` (acc: on what the loss saw). ``sched``: a
    per-batch schedule (:data:`PER_BATCH`), stepped after each optimizer step."""
    rank, _ = rank_world()
    loss_of = get_defense(cfg.defense).loss
    adversary = accel.attack_model(model, cfg)  # the model itself, or in the adversary's own precision
    net.train()
    sums = {"loss": [0.0, 0], "acc": [0.0, 0], "clean_acc": [0.0, 0], "entropy": [0.0, 0]}
    for b, i in enumerate(range(0, len(idx), cfg.batch_size)):
        bi = idx[i : i + cfg.batch_size]
        x, y = accel.batch(x_tr, y_tr, bi, device)
        if cfg.augment == "crop_flip":
            x = crop_flip(x)
        with accel.autocast(cfg.precision, device):  # fp32: autocast off, the same code as before
            loss, stats = loss_of(net, x, y, cfg, cost, attack_model=adversary)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        cost.backward += len(x)
        opt.step()
        if sched is not None:
            sched.step()
        for k in sums:
            if not math.isnan(stats[k]):
                sums[k][0] += stats[k] * len(x)
                sums[k][1] += len(x)
        if cfg.log_every and rank == 0 and b % cfg.log_every == 0:
            log.info("epoch %d batch %d loss %.4f", epoch + 1, b, stats["loss"])
    return sums


def end_epoch(
    cfg: TrialConfig, trial: TrialDir, model, opt, sched, st: TrainState, metrics: dict, writer
) -> None:
    """Rank 0: ``best.pt`` when this epoch is the best so far, then the atomic checkpoint (RNG state
    after the epoch's validation, so a resumed run continues from exactly here), TensorBoard scalars and
    the epoch's log line."""
    if st.best_epoch == st.epoch:
        ckpt.save_atomic(
            {
                "model": model.state_dict(),
                "epoch": st.epoch,
                "metric": BEST_METRIC,
                "value": st.best_value,
                "config": json.dumps(cfg.to_dict(), default=str),
            },
            trial.best,
        )
    damaged = ckpt.keep_previous(trial.checkpoint, trial.checkpoint_prev)  # the epoch before stays
    if damaged is not None:  # checkpoint.pt was damaged since it was written: not kept as the previous one
        log.warning(
            "%s cannot be read: moved to %s; writing epoch %d", trial.checkpoint, damaged.name, st.epoch
        )
        record_event(trial.root, "checkpoint_unreadable", file=trial.checkpoint.name, moved_to=damaged.name)
    ckpt.save_atomic(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": st.epoch,
            "rng": ckpt.rng_state(),
            "history": json.dumps(st.history),
            "cost": json.dumps(st.cost.as_dict()),
            "train_seconds": st.train_seconds,
            "best": json.dumps({"epoch": st.best_epoch, "value": st.best_value, "metric": BEST_METRIC}),
            "config": json.dumps(cfg.to_dict(), default=str),
        },
        trial.checkpoint,
    )
    if writer is not None:
        for k, v in metrics.items():
            if k != "epoch" and isinstance(v, (int, float)) and not math.isnan(v):
                writer.add_scalar(k, v, st.epoch)
        writer.flush()
    log.info(
        "epoch %d/%d %s",
        st.epoch,
        cfg.epochs,
        " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("epoch",)),
    )


def fit(
    cfg: TrialConfig,
    workdir: os.PathLike,
    resume_from: Optional[os.PathLike] = None,
    on_epoch_end: Optional[EpochCallback] = None,
    tensorboard: bool = True,
    stop_after_epochs: Optional[int] = None,
) -> tuple[torch.nn.Module, dict]:
    """Train one trial. Returns the (unwrapped) model and the training summary.

    ``resume_from``: a checkpoint file to start from (e.g. one Ray Train restored); otherwise
    ``workdir/checkpoint.pt`` if it exists, or ``checkpoint.prev.pt`` when it cannot be read
    (:func:`restore_trial`). ``stop_after_epochs`` ends the call early (used to
    simulate an interruption in tests) exactly as a kill between two epochs would.
    """
    trial = TrialDir(workdir)
    rank, world = rank_world()
    if rank == 0:
        trial.root.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = pick_device(cfg)
    accel.configure(device, training=True)
    _seed_all(cfg.seed)
    model = make_model(cfg, device)
    opt = make_optimizer(cfg, model.parameters())
    (x_tr, y_tr), (x_val, y_val), val_info = load_train_val(
        cfg.dataset, cfg.data_root, cfg.n_train, cfg.val_points, cfg.val_seed, download=cfg.download
    )
    per_rank = -(-len(x_tr) // world)  # DistributedSampler (drop_last=False): ceil(n / world) each
    sched = make_scheduler(cfg, opt, batches_per_epoch=-(-per_rank // cfg.batch_size))
    st = restore_trial(trial, model, opt, sched, device, resume_from) or TrainState()
    if st.epoch and rank == 0:
        log.info("resumed %s from epoch %d", trial.root, st.epoch)

    x_tr, y_tr = accel.place_data(x_tr, y_tr, device)  # CUDA: on the GPU if small, else pinned
    x_val, y_val = x_val.to(device), y_val.to(device)
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    writer = None
    if tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(trial.tb))

    sampler = DistributedSampler(
        range(len(x_tr)), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=False
    )
    last = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, st.epoch + stop_after_epochs)
    for epoch in range(st.epoch, last):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)  # order = f(seed, epoch): identical after a resume
        idx = torch.tensor(list(iter(sampler)))
        per_batch = cfg.schedule in PER_BATCH
        sums = train_epoch(
            net, model, opt, cfg, x_tr, y_tr, idx, device, st.cost, epoch, sched if per_batch else None
        )
        if not per_batch:
            sched.step()
        epoch_seconds = time.perf_counter() - t0
        st.train_seconds += epoch_seconds
        st.epoch = epoch + 1
        metrics = _epoch_metrics(model, opt, cfg, sums, x_val, y_val, device, st, epoch_seconds)
        if rank == 0:
            end_epoch(cfg, trial, model, opt, sched, st, metrics, writer)
        if world > 1:
            dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(st.epoch, metrics, trial.checkpoint)
    if writer is not None:
        writer.close()
    return model, _summary(cfg, st, world, val_info)


def _epoch_metrics(
    model, opt, cfg: TrialConfig, sums: dict, x_val, y_val, device, st: TrainState, seconds: float
):
    """The epoch's metrics (training statistics reduced over ranks, the validation split's metrics, lr, time),
    appended to the history; the best epoch so far by ``BEST_METRIC`` updated."""
    metrics = {f"train/{k}": v for k, v in _reduce(sums, device).items()}
    metrics.update(_validate_epoch(model, x_val, y_val, cfg, st.epoch))
    metrics.update({"epoch": st.epoch, "lr": opt.param_groups[0]["lr"], "epoch_seconds": seconds})
    st.history.append(metrics)
    value = metrics.get(BEST_METRIC, float("nan"))
    if value == value and value > st.best_value:  # NaN (no validation split) never wins
        st.best_epoch, st.best_value = st.epoch, value
    return metrics


def _summary(cfg: TrialConfig, st: TrainState, world: int, val_info: dict) -> dict:
    """What ``fit`` returns besides the model: history, cost, time, the validation split and the best epoch."""
    return {
        "epochs": len(st.history),
        "history": st.history,
        "cost": st.cost.as_dict(),
        "train_seconds": st.train_seconds,
        "world_size": world,
        "completed": len(st.history) >= cfg.epochs,
        "validation": {
            **val_info,
            "eps": cfg.val_attack_eps,
            "attack": f"pgd{cfg.val_pgd_steps}",
            "steps": cfg.val_pgd_steps,
            "step_size": default_step_size(cfg.val_attack_eps, cfg.val_pgd_steps),
        },
        "best": {"epoch": st.best_epoch, "metric": BEST_METRIC, "value": st.best_value}
        if st.best_epoch
        else None,
    }


def crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded batch and random horizontal flip, per example (draws from
    the global RNG, which checkpoints restore)."""
    n, _, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n))
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (n, w)
    out = xp[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(x.shape[1], device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    flip = torch.rand(n, device=x.device) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def _validate_epoch(model, x, y, cfg: TrialConfig, epoch: int) -> dict:
    """Per-epoch signals on the validation split (never the test split): clean accuracy, robust
    accuracy under PGD-``val_pgd_steps`` (CE, random start, step 2.5 eps / steps, best iterate) at
    :attr:`TrialConfig.val_attack_eps`, mean entropy, and the Jacobian norms' random-projection estimate
    on up to 128 points, as an RMS (sqrt of the mean of the squared per-example estimates, which is
    unbiased for the mean squared norm; the mean of square roots is biased low).

    Its random draws (PGD's start, the projections) come from an RNG forked and seeded with
    (seed, epoch): the training RNG stream, hence exact resume, is untouched, and the validation of an
    epoch is the same whether or not the run was interrupted. Empty split: {} (no validation)."""
    from .attacks import pgd
    from .defenses import entropy

    if len(y) == 0:
        return {}
    was = model.training
    model.eval()
    bs = cfg.eval_batch_size
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed * 100003 + epoch)
            with torch.no_grad():
                z = torch.cat([model(x[i : i + bs]) for i in range(0, len(x), bs)])
            correct = z.argmax(1) == y
            robust = correct.clone()
            eps = cfg.val_attack_eps
            idx = correct.nonzero().squeeze(1)
            for i in range(0, len(idx), bs):
                b = idx[i : i + bs]
                xa = pgd(model, x[b], y[b], eps, steps=cfg.val_pgd_steps)
                with torch.no_grad():
                    robust[b] = model(xa).argmax(1) == y[b]
            g = torch.Generator(device=x.device).manual_seed(cfg.seed * 100003 + epoch)
            jn = jacobian_norms_estimate(
                model, x[:128], projections=cfg.jacobian_projections, generator=g, squared=True
            )
    finally:
        model.train(was)
    return {
        "val/clean_acc": correct.float().mean().item(),
        "val/robust_acc": robust.float().mean().item(),
        "val/entropy": entropy(z).mean().item(),
        "val/jacobian_logits_rms": jn["logits"].mean().sqrt().item(),
        "val/jacobian_softmax_rms": jn["softmax"].mean().sqrt().item(),
    }
