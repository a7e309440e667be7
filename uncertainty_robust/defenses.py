"""Training defenses: one :class:`Defense` record per defense, one registry (``DEFENSES``).

Everything the rest of the project knows about a defense comes from its record: the name a grid
uses, the label a table prints, whether it takes a lambda (and its range and symbol), whether it
trains on adversarial examples (and so takes a training eps), the baseline it is compared with,
and its loss. Config validation, grid expansion, the dry run, the reports, TensorBoard's HParams,
the audit and the Tune trainables all read ``DEFENSES``; adding a defense means adding one
:func:`register` call here (see ``docs/architecture.md``, "Adding a defense").

Standard forms (none could be confirmed from the paper's body; see ``docs/paper.md``):

- standard : CE(f(x), y)
- ls       : CE against (1-a)*onehot(y) + a/K    (Szegedy et al. 2016; ``ls_form="others"`` puts
             a/(K-1) on the wrong classes instead), a = ``cfg.lam``
- entm     : CE(f(x), y) - lam * H(softmax f(x)), H(p) = -sum_k p_k log p_k
             (confidence penalty, Pereyra et al. 2017)
- at       : CE(f(x_adv), y), x_adv = PGD-Linf(eps, step, steps, random start) (Madry et al. 2018)
- fast_at  : CE(f(x_adv), y), x_adv = one FGSM step of ``fast_step`` * eps from a uniform random start
             in the eps-ball, projected back ("fast is better than free", Wong et al. 2020; their
             cyclic learning rate is ``optimizer.schedule: cyclic``)
- at_ls    : LS loss on x_adv
- at_entm  : CE(f(x_adv), y) - lam * H(softmax f(x_?)), ``entropy_on`` in {"adv", "clean"}
- trades   : CE(f(x), y) + beta * KL(p(x) || p(x_adv)), x_adv = PGD-Linf on that KL, beta = ``cfg.lam``
             (Zhang et al. 2019)

Open choices, all config fields: ``inner_loss`` (PGD maximises plain CE, or the regularized
training loss), ``adv_fraction`` (1.0 = all-adversarial batch; 0.5 = the first half of the batch
replaced by adversarial points, a clean/adversarial mix), ``attack_bn_mode`` (BatchNorm in eval
or train mode while the adversary is generated).

A loss has the signature ``loss(model, x, y, cfg, cost, attack_model=None) -> (mean loss, stats)``;
``stats`` holds ``loss``, ``acc`` (on what the loss saw: adversarial points for AT), ``clean_acc`` and
``entropy`` (mean, nats). It makes one forward pass of ``model`` per call, as DDP requires;
``attack_model`` is the module the training adversary is generated on (the unwrapped module
under DDP, so the attack's forward passes never arm DDP's gradient reducer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .attacks import Cost, pgd
from .errors import ConfigError

LossFn = Callable[..., tuple]  # (model, x, y, cfg, cost, attack_model=None) -> (loss, stats)
PerExample = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]  # (logits, y, cfg) -> (N,)


@dataclass(frozen=True)
class Lam:
    """What a defense's ``lam`` means and which values it accepts."""

    symbol: str  # "λ", "α", "β": how tables and labels print it
    meaning: str
    lo: float
    hi: float
    lo_open: bool = False


@dataclass(frozen=True)
class Defense:
    name: str  # registry key, grid and CLI name
    display: str  # table label
    family: str  # the eps_train x eps_test matrix it is a row of ("Standard/AT": standard is AT's eps_train = 0 row)
    adversarial: bool  # trains on adversarial examples: takes train_eps, pgd_steps, ...
    lam: Optional[Lam]  # None: takes no lambda
    baseline: Optional[str]  # what the reports compare it with, on the same points and seeds
    loss: LossFn
    paper: str
    check: Optional[Callable[[object, int], None]] = (
        None  # extra validation: (cfg, num_classes) -> raises ConfigError
    )
    attack_steps: Optional[int] = (
        None  # the training adversary's steps when the defense fixes them (None: pgd_steps)
    )

    @property
    def takes_lam(self) -> bool:
        return self.lam is not None


DEFENSES: dict[str, Defense] = {}  # in registration order: the order of table rows


def register(d: Defense) -> Defense:
    if d.name in DEFENSES:
        raise ValueError(f"defense {d.name!r} registered twice")
    DEFENSES[d.name] = d
    return d


def undefended() -> str:
    """The defense every baseline chain ends at: no baseline and no adversarial training (standard
    training). The audit compares with it and transfers from it."""
    return next(d.name for d in DEFENSES.values() if d.baseline is None and not d.adversarial)


def get(name: str) -> Defense:
    try:
        return DEFENSES[name]
    except (KeyError, TypeError):
        raise ConfigError("defense", f"{name!r} is not one of {', '.join(DEFENSES)}") from None


# ---------------------------------------------------------------------------- building blocks
def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-example entropy (nats) of softmax(logits)."""
    logp = F.log_softmax(logits, 1)
    return -(logp.exp() * logp).sum(1)


def smooth_targets(y: torch.Tensor, k: int, alpha: float, form: str = "uniform") -> torch.Tensor:
    if form == "uniform":
        t = torch.full((len(y), k), alpha / k, device=y.device)
        t.scatter_(1, y[:, None], 1 - alpha + alpha / k)
    else:
        t = torch.full((len(y), k), alpha / (k - 1), device=y.device)
        t.scatter_(1, y[:, None], 1 - alpha)
    return t


def ls_loss(logits, y, alpha: float, form: str = "uniform") -> torch.Tensor:
    """Per-example CE against smoothed targets."""
    t = smooth_targets(y, logits.shape[1], alpha, form)
    return -(t * F.log_softmax(logits, 1)).sum(1)


def _ce(z, y, cfg) -> torch.Tensor:
    return F.cross_entropy(z, y, reduction="none")


def _ls(z, y, cfg) -> torch.Tensor:
    return ls_loss(z, y, cfg.lam, cfg.ls_form)


def _entm(z, y, cfg) -> torch.Tensor:
    return F.cross_entropy(z, y, reduction="none") - cfg.lam * entropy(z)


def make_adversary(model, x, y, cfg, loss_fn, cost: Cost, fast: bool = False) -> torch.Tensor:
    """PGD-Linf training adversary, with BatchNorm in ``cfg.attack_bn_mode`` during generation.
    ``loss_fn``: (logits, y) -> per-example loss that PGD maximises. ``fast``: FGSM with a random
    start instead (one step of ``cfg.fast_step * eps`` from a uniform point of the ball)."""
    was = model.training
    model.train(cfg.attack_bn_mode == "train")
    if fast:
        steps, step, start = cfg.train_attack_steps, cfg.fast_step * cfg.eps, True
    else:
        steps, step, start = cfg.pgd_steps, cfg.train_step_size, cfg.random_start
    try:
        return pgd(
            model,
            x,
            y,
            cfg.eps,
            steps=steps,
            step_size=step,
            random_start=start,
            loss=loss_fn,
            track_best=False,
            cost=cost,
        )
    finally:
        model.train(was)


def natural(per_example: PerExample) -> LossFn:
    """A defense trained on clean inputs only: mean of ``per_example`` over the batch."""

    def loss(model, x, y, cfg, cost: Cost, attack_model=None):
        z = model(x)
        cost.forward += len(x)
        out = per_example(z, y, cfg).mean()
        acc = (z.argmax(1) == y).float().mean().item()
        return out, {
            "loss": out.item(),
            "acc": acc,
            "clean_acc": acc,
            "entropy": entropy(z.detach()).mean().item(),
        }

    return loss


def adversarial(per_example: PerExample, entropy_term: bool = False, fast: bool = False) -> LossFn:
    """Madry-style AT: ``per_example`` on the adversarial logits. With ``entropy_term`` (AT+EntM)
    the loss is CE - lam * H, H on the adversarial or, with ``entropy_on="clean"``, the clean
    logits (one forward pass of the concatenated batch). ``cfg.inner_loss="regularized"`` makes
    PGD maximise the training loss on the iterate itself instead of plain CE. ``fast``: the
    adversary is FGSM with a random start (:func:`make_adversary`)."""

    def loss(model, x, y, cfg, cost: Cost, attack_model=None):
        reg = (lambda z, t: _entm(z, t, cfg)) if entropy_term else (lambda z, t: per_example(z, t, cfg))
        n_adv = len(x) if cfg.adv_fraction >= 1 else int(round(cfg.adv_fraction * len(x)))
        x_in = x
        if n_adv > 0:
            inner = reg if cfg.inner_loss == "regularized" else "ce"
            x_adv = make_adversary(attack_model or model, x[:n_adv], y[:n_adv], cfg, inner, cost, fast)
            x_in = torch.cat([x_adv, x[n_adv:]]) if n_adv < len(x) else x_adv
        clean_too = entropy_term and cfg.entropy_on == "clean" and n_adv > 0
        z_all = model(torch.cat([x_in, x[:n_adv]]) if clean_too else x_in)
        cost.forward += len(z_all)
        z = z_all[: len(x_in)]
        if entropy_term:
            h = entropy(z_all[len(x_in) :]) if clean_too else entropy(z)
            if clean_too and n_adv < len(x):  # mixed batch: clean half's entropy is its own
                h = torch.cat([h, entropy(z[n_adv:])])
            per_ex = F.cross_entropy(z, y, reduction="none") - cfg.lam * h
        else:
            per_ex = per_example(z, y, cfg)
        out = per_ex.mean()
        acc = (z[:n_adv].argmax(1) == y[:n_adv]).float().mean().item() if n_adv else float("nan")
        if clean_too:
            zc, yc = z_all[len(x) :], y[:n_adv]
        elif n_adv < len(x):
            zc, yc = z_all[n_adv : len(x)], y[n_adv:]
        else:
            zc, yc = _clean_probe(attack_model or model, x, y, cost)
        stats = {
            "loss": out.item(),
            "acc": acc,
            "clean_acc": (zc.argmax(1) == yc).float().mean().item(),
            "entropy": entropy(z.detach()).mean().item(),
        }
        return out, stats

    return loss


def _clean_probe(model, x, y, cost: Cost, probe: int = 32) -> tuple:
    """Clean logits of an all-adversarial batch, for monitoring: one no-grad eval-mode forward of
    ``probe`` examples (a few % of an AT step; eval mode so BatchNorm statistics are not touched)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        zc = model(x[:probe])
    model.train(was)
    cost.forward += len(zc)
    return zc, y[:probe]


def trades_loss(model, x, y, cfg, cost: Cost, attack_model=None):
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(p(x) || p(x_adv)) / batch, beta = ``cfg.lam``.
    The adversary maximises the same KL with PGD-Linf (``eps``, ``pgd_steps``, ``eps_step``) from
    ``cfg.random_start`` (uniform in the ball; the authors' code starts at x + 0.001 N(0, I)). The
    clean and adversarial halves go through one forward pass (so BatchNorm sees both)."""
    am = attack_model or model
    was = am.training
    am.eval()
    with torch.no_grad():
        p_nat = F.softmax(am(x), 1)
    am.train(was)
    cost.forward += len(x)

    def kl_to_nat(z, _y):
        return F.kl_div(F.log_softmax(z, 1), p_nat, reduction="none").sum(1)

    x_adv = make_adversary(am, x, y, cfg, kl_to_nat, cost)
    z_all = model(torch.cat([x, x_adv]))
    cost.forward += len(z_all)
    z_nat, z_adv = z_all[: len(x)], z_all[len(x) :]
    kl = F.kl_div(F.log_softmax(z_adv, 1), F.softmax(z_nat, 1), reduction="batchmean")
    out = F.cross_entropy(z_nat, y) + cfg.lam * kl
    stats = {
        "loss": out.item(),
        "acc": (z_adv.argmax(1) == y).float().mean().item(),
        "clean_acc": (z_nat.argmax(1) == y).float().mean().item(),
        "entropy": entropy(z_adv.detach()).mean().item(),
    }
    return out, stats


def _ls_check(cfg, num_classes: int) -> None:
    """``ls_form="others"`` puts a/(K-1) on each wrong class and 1-a on y: from a = (K-1)/K on, y no
    longer gets the most mass (an inverted objective that would look like a result)."""
    if cfg.ls_form == "others" and cfg.lam >= (num_classes - 1) / num_classes:
        raise ConfigError(
            "lam",
            f"{cfg.lam!r} with ls_form 'others' puts at least as much mass on each wrong class as on the "
            f"label; use lam < (K-1)/K = {(num_classes - 1) / num_classes:g}",
        )


# ------------------------------------------------------------------------------------ registry
_ALPHA = Lam("α", "label-smoothing mass", 0.0, 0.99)  # alpha = 1 makes the target uniform: nothing to learn
_LAMBDA = Lam("λ", "entropy weight", 0.0, 10.0)  # beyond ~10 the entropy term swamps CE entirely
_MADRY = "Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks"

register(Defense("standard", "Standard", "Standard/AT", False, None, None, natural(_ce), "cross-entropy"))
register(
    Defense(
        "ls",
        "LS",
        "LS/AT+LS",
        False,
        _ALPHA,
        "standard",
        natural(_ls),
        "Szegedy et al. 2016, Rethinking the Inception Architecture",
        _ls_check,
    )
)
register(
    Defense(
        "entm",
        "EntM",
        "EntM/AT+EntM",
        False,
        _LAMBDA,
        "standard",
        natural(_entm),
        "Pereyra et al. 2017, Regularizing Neural Networks by Penalizing Confident Output Distributions",
    )
)
register(Defense("at", "AT", "Standard/AT", True, None, "standard", adversarial(_ce), _MADRY))
register(
    Defense(
        "fast_at",
        "Fast-AT",
        "Fast-AT",
        True,
        None,
        "at",  # compared with PGD-AT of the same eps and schedule: the cheap recipe must match it first
        adversarial(_ce, fast=True),
        "Wong, Rice & Kolter 2020, Fast is better than free: Revisiting adversarial training",
        attack_steps=1,
    )
)
register(Defense("at_ls", "AT+LS", "LS/AT+LS", True, _ALPHA, "at", adversarial(_ls), _MADRY, _ls_check))
register(Defense("at_entm", "AT+EntM", "EntM/AT+EntM", True, _LAMBDA, "at", adversarial(_ce, True), _MADRY))

register(
    Defense(
        "trades",
        "TRADES",
        "TRADES",
        True,
        Lam("β", "weight of KL(p(x) || p(x_adv))", 0.0, 20.0, lo_open=True),
        "at",
        trades_loss,
        "Zhang et al. 2019, Theoretically Principled Trade-off between Robustness and Accuracy",
    )
)


def defense_loss(name: str, model, x, y, cfg, cost: Cost, attack_model=None) -> tuple:
    """Mean training loss of defense ``name`` on the batch and its statistics (see the module docstring)."""
    return get(name).loss(model, x, y, cfg, cost, attack_model=attack_model)
