"""Where and in which precision a trial computes: the device of each rank, bf16 autocast, memory
layout, cuDNN settings and where the training set lives. See ``docs/gpu.md``.

On the CPU nothing here changes a number: fp32 runs exactly the code it ran before, the model keeps
its contiguous layout and the batches are cut from the same tensors. On a CUDA device:

- one GPU per rank: ``cuda:LOCAL_RANK`` (the rank's index on its node, set by Ray Train, torchrun
  and the SLURM engine), and the process's current device is set to it, which NCCL relies on;
- ``fp32`` is IEEE float32 (TF32 is switched off for matrix products and convolutions), so an
  attack on the GPU computes what it computes on the CPU; ``bf16`` runs the forward passes under
  ``torch.autocast(dtype=torch.bfloat16)`` (no loss scaling is needed for bf16);
- models trained in bf16 are kept ``channels_last`` (tensor-core convolutions want NHWC);
- cuDNN autotuning (``cudnn.benchmark``) is on while training (fixed batch shapes) and off during
  the evaluation, whose attacks shrink the batch at every step (each new shape would be re-tuned);
- the training set stays on the GPU when it is small (uint8 when that is exact: 47 MB for MNIST's
  60,000 digits), else batches go through pinned host memory with asynchronous copies.

The training precision is ``TrialConfig.precision`` (grid ``precision.train``); the training
adversary's is ``attack_precision`` (``precision.train_attack``; None: the same); the evaluation's
(attacks, Jacobians, clean pass) is ``eval_precision`` (``precision.eval``), fp32 unless the grid
says otherwise, and every result records what was used (:func:`record`).
"""

from __future__ import annotations

import os
import platform

import torch

from .errors import ConfigError

PRECISIONS = ("fp32", "bf16")
GPU_DATA_MAX_BYTES = (
    4 << 30
)  # a training set up to this size (and a quarter of free GPU memory) stays on the GPU


# --------------------------------------------------------------------------------------- devices
def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def pick_device(name: str) -> torch.device:
    """``auto``: this rank's GPU (``cuda:LOCAL_RANK``) if there is one, else the CPU; ``cuda``: the
    same GPU, an error when there is none; ``cuda:N`` / ``cpu`` as given."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda") or name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "device",
                f"{name!r} asked for, but torch sees no CUDA GPU on {platform.node()}; use auto or cpu",
            )
        if name in ("auto", "cuda"):
            return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device(name)


def configure(device: torch.device, training: bool) -> None:
    """CUDA only: this rank's device as the current one, IEEE fp32 (no TF32), and cuDNN autotuning
    while ``training`` (fixed shapes), not during the evaluation (the attacks' shrinking batches)."""
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = training


def init_distributed_from_env() -> bool:
    """Join the process group a launcher described in the environment (``torchrun``: WORLD_SIZE,
    RANK, MASTER_ADDR, MASTER_PORT): NCCL on GPUs, gloo on CPUs. False when there is none to join
    or one is already initialized (Ray Train initializes its own)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend)
    return True


# --------------------------------------------------------------------------------------- precision
def autocast(precision: str, device: torch.device):
    """The context of a forward pass in ``precision``: bf16 autocast, or fp32 (autocast off, also
    inside an outer bf16 region)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class Precision(torch.nn.Module):
    """``model`` whose forward runs in ``precision`` whatever the caller's autocast state, returning
    float32 logits (so losses, argmax and gradients w.r.t. the input are float32). The training
    adversary uses it when its precision differs from the training's, the evaluation when it is
    not fp32. ``train``/``eval`` reach the wrapped model; the parameters are the model's."""

    def __init__(self, model: torch.nn.Module, precision: str):
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, x):
        with autocast(self.precision, x.device):
            return self.model(x).float()


def attack_precision(cfg) -> str:
    return cfg.attack_precision or cfg.precision


def attack_model(model, cfg):
    """The module the training adversary runs on: ``model`` itself when the adversary computes in
    the training precision (inside the training autocast), else a :class:`Precision` wrapper."""
    p = attack_precision(cfg)
    return model if p == cfg.precision else Precision(model, p)


def eval_model(model, cfg):
    """The module the evaluation attacks: fp32 is the model itself, bf16 a :class:`Precision` wrapper."""
    return model if cfg.eval_precision == "fp32" else Precision(model, cfg.eval_precision)


def memory_format(device: torch.device, precision: str):
    """channels_last for bf16 on CUDA (tensor-core convolutions), contiguous otherwise (the CPU always)."""
    if device.type == "cuda" and precision == "bf16":
        return torch.channels_last
    return torch.contiguous_format


def place_model(model: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    model = model.to(device)
    fmt = memory_format(device, precision)
    return model if fmt is torch.contiguous_format else model.to(memory_format=fmt)


# --------------------------------------------------------------------------------------- data
def _as_uint8(x: torch.Tensor):
    """x as uint8 when x == k/255 exactly for every element (images loaded from uint8), else None."""
    u = (x * 255).round_().clamp_(0, 255).to(torch.uint8)
    return u if torch.equal(u.float().div_(255.0), x) else None


def place_data(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple:
    """Where the training batches are cut from. CPU: (x, y) unchanged. CUDA: on the GPU when the set
    fits (uint8 when exact, see :func:`batch`), else in pinned host memory."""
    if device.type != "cuda":
        return x, y
    u8 = _as_uint8(x)
    stored = u8 if u8 is not None else x
    free, _ = torch.cuda.mem_get_info(device)
    if stored.numel() * stored.element_size() <= min(GPU_DATA_MAX_BYTES, free // 4):
        return stored.to(device), y.to(device)
    return x.pin_memory(), y.pin_memory()


def batch(x: torch.Tensor, y: torch.Tensor, bi: torch.Tensor, device: torch.device) -> tuple:
    """The batch ``bi`` (CPU indices) as float32 in [0, 1] on ``device``. From uint8 it divides by 255
    in float32, as the loader does, so the values are the same bit for bit."""
    if x.device != bi.device:
        bi = bi.to(x.device, non_blocking=True)
    xb, yb = x[bi], y[bi]
    if xb.dtype == torch.uint8:
        xb = xb.float().div_(255.0)
    if xb.device != device:
        pin = device.type == "cuda"
        xb = (xb.pin_memory() if pin else xb).to(device, non_blocking=pin)
        yb = (yb.pin_memory() if pin else yb).to(device, non_blocking=pin)
    return xb, yb


# --------------------------------------------------------------------------------------- record
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        return ""


def device_name(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu (AMD EPYC ...)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({_cpu_model() or platform.machine()})"


def record(cfg, device: torch.device) -> dict:
    """What a result says about its arithmetic: precisions of training, of the training adversary and
    of the evaluation, the device, TF32 and the memory layout."""
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    return {
        "train": cfg.precision,
        "train_attack": attack_precision(cfg),
        "eval": cfg.eval_precision,
        "device": device_name(device),
        "tf32": False,
        "channels_last": memory_format(device, cfg.precision) is torch.channels_last,
        "backend": dist.get_backend() if distributed else None,
    }


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside ``torch.distributed``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
