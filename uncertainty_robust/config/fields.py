"""The fields of a trial's config, each with its rule (type, choices, bounds), where a YAML grid sets
it, whether it tells table rows apart, and its help (:func:`_f`); grouped in two records that
:class:`~uncertainty_robust.config.TrialConfig` joins: what is trained (:class:`Training`) and how
it is evaluated (:class:`Evaluation`). Every choice the paper leaves open (``docs/paper.md``: none
of its settings could be read) is a field, with the usual convention as the default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .. import schema as S
from ..accel import PRECISIONS
from ..attacks import AttackSpec
from ..defenses import DEFENSES

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine", "cyclic")
CHECKPOINTS = ("last", "best")  # which weights the final evaluation reads (best: by val/robust_acc)
AXES = ("defenses", "lambdas", "train_eps", "epochs", "seeds")  # grid keys expanded into one trial per value
EPS = S.number(0.0, 1.0)  # an L-inf radius in pixel units ([0, 1] inputs)
POS_EPS = S.number(0.0, 1.0, lo_open=True)


def _datasets():
    from ..data import DATASETS  # data pulls torchvision lazily

    return sorted(DATASETS)


def _models():
    from ..models import MODELS

    return sorted(MODELS)


def _f(
    default=dataclasses.MISSING,
    *,
    grid: Optional[str],
    rule: Optional[S.Rule] = None,
    row: bool = True,
    help: str = "",
    factory=None,
    since: Optional[int] = None,
):
    """A field with its schema: ``rule`` (what it may be), ``grid`` (where a YAML grid sets it; None:
    not settable from a grid), ``row`` (False for fields that never change a result: trials
    differing only in those are one row), ``since`` (3: added with the v3 evaluation; hashed only
    when not at its default)."""
    return S.field(default, rule=rule, factory=factory, help=help, grid=grid, row=row, since=since)


@dataclass
class Training:
    # what is trained
    defense: str = _f(
        "standard", grid="defenses", rule=S.choice(lambda: list(DEFENSES)), help="a defense of the registry"
    )
    lam: float = _f(
        0.0, grid="lambdas", help="LS alpha, EntM lambda, TRADES beta; 0 for defenses without one"
    )
    dataset: str = _f("mnist_embedded", grid="dataset", rule=S.choice(_datasets))
    data_root: Optional[str] = _f(
        None,
        grid="data_root",
        rule=S.text(optional=True),
        row=False,
        help="local root of torchvision datasets",
    )
    download: bool = _f(False, grid="download", rule=S.flag(), row=False)
    n_train: Optional[int] = _f(
        None,
        grid="n_train",
        rule=S.integer(10, 10**8, optional=True),
        help="stratified subset of the training split (None: all)",
    )
    augment: str = _f(
        "none",
        grid="augment",
        rule=S.choice(("none", "crop_flip")),
        help='"crop_flip": 4-px padded random crop + horizontal flip',
    )
    model: str = _f("small_cnn", grid="model", rule=S.choice(_models))
    width: float = _f(1.0, grid="width", rule=S.number(0, 16, lo_open=True), help="channel multiplier")
    seed: int = _f(0, grid="seeds", rule=S.integer(0, 2**31 - 1), row=False)
    # optimisation
    epochs: int = _f(10, grid="epochs", rule=S.integer(1, 100000))
    batch_size: int = _f(128, grid="batch_size", rule=S.integer(1, 1 << 16))
    optimizer: str = _f("adam", grid="optimizer.name", rule=S.choice(OPTIMIZERS))
    lr: float = _f(1e-3, grid="optimizer.lr", rule=S.number(0, 10, lo_open=True))
    momentum: float = _f(0.9, grid="optimizer.momentum", rule=S.number(0, 1))
    weight_decay: float = _f(0.0, grid="optimizer.weight_decay", rule=S.number(0, 1))
    schedule: str = _f("constant", grid="optimizer.schedule", rule=S.choice(SCHEDULES))
    milestones: list = _f(
        grid="optimizer.milestones",
        rule=S.list_of(S.number(0, 1)),
        factory=lambda: [0.5, 0.75],
        help="fractions of epochs",
    )
    gamma: float = _f(0.1, grid="optimizer.gamma", rule=S.number(0, 1, lo_open=True))
    cyclic_peak: float = _f(
        0.4,
        grid="optimizer.cyclic_peak",
        rule=S.number(0, 1, lo_open=True),
        help='schedule "cyclic": the lr rises linearly from 0 to lr over this fraction of the batches, '
        "then falls linearly to 0 (Wong et al. 2020's one cycle: 0.4); stepped per batch",
        since=3,
    )
    # adversarial training (Madry et al. 2018). Defaults: the MNIST convention eps=0.3 with 40 steps;
    # the step is 2.5 * eps / steps = 0.01875 unless eps_step is set (mnist_challenge uses 0.01).
    # For CIFAR-10 use eps=8/255, 10 steps of 2/255 (cifar10_challenge).
    eps: float = _f(0.3, grid="train_eps", rule=EPS, help="training eps of adversarial defenses")
    eps_step: Optional[float] = _f(
        None,
        grid="adversarial.eps_step",
        rule=S.number(0, 1, lo_open=True, optional=True),
        help="None: 2.5 * eps / pgd_steps",
    )
    pgd_steps: int = _f(40, grid="adversarial.pgd_steps", rule=S.integer(1, 1000))
    fast_step: float = _f(
        1.25,
        grid="adversarial.fast_step",
        rule=S.number(0, 10, lo_open=True),
        help="fast_at: its one FGSM step, from a uniform random start in the eps-ball, is fast_step * eps "
        "(Wong et al. 2020: 1.25); the other defenses do not read it, nor fast_at pgd_steps/eps_step",
        since=3,
    )
    random_start: bool = _f(True, grid="adversarial.random_start", rule=S.flag())
    # open choices of the paper, explicit (not found in the paper; see docs/paper.md)
    entropy_on: str = _f(
        "adv",
        grid="adversarial.entropy_on",
        rule=S.choice(("adv", "clean")),
        help='at_entm: entropy on "adv" or "clean" inputs',
    )
    inner_loss: str = _f(
        "ce",
        grid="adversarial.inner_loss",
        rule=S.choice(("ce", "regularized")),
        help='PGD maximises "ce" or the "regularized" loss',
    )
    adv_fraction: float = _f(
        1.0,
        grid="adversarial.adv_fraction",
        rule=S.number(0, 1),
        help="1.0: all-adversarial batch; 0.5: half/half",
    )
    ls_form: str = _f(
        "uniform",
        grid="adversarial.ls_form",
        rule=S.choice(("uniform", "others")),
        help='"uniform" a/K (Szegedy) or "others" a/(K-1)',
    )
    attack_bn_mode: str = _f(
        "eval",
        grid="adversarial.attack_bn_mode",
        rule=S.choice(("eval", "train")),
        help="BatchNorm mode of training attacks",
    )


@dataclass
class Evaluation:
    # evaluation
    test_eps: list = _f(
        grid="evaluation.test_eps",
        rule=S.list_of(EPS, nonempty=True, unique=True),
        factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
    )
    attacks: list = _f(
        grid="evaluation.attacks",
        factory=lambda: [AttackSpec("fgsm"), AttackSpec("pgd", 20), AttackSpec("cw", 30)],
        help="NAME[:STEPS[xRESTARTS]], e.g. fgsm pgd:20 cw:30",
    )
    n_eval: int = _f(
        1000,
        grid="evaluation.n_eval",
        rule=S.integer(1, 10**7),
        help="test points under attack (stated in every result)",
    )
    # AutoAttack (Croce & Hein 2020, pyautoattack): per eps, after our attacks, on the points they
    # left robust; by default at every eps where they leave a share of the points robust inside
    # autoattack_informative (docs/evaluation.md)
    autoattack: list = _f(
        grid="evaluation.autoattack",
        factory=lambda: [AttackSpec("autoattack")],
        help="run in order after our attacks on the points they left robust: autoattack, "
        "autoattack-rand, apgd-ce[:N], apgd-dlr[:N], apgd-t[:N], fab-t[:N], square[:N]; [] for none",
    )
    autoattack_eps: Optional[list] = _f(
        None,
        grid="evaluation.autoattack_eps",
        rule=S.list_of(POS_EPS, unique=True, optional=True),
        help="None: every evaluated eps where our attacks leave an informative share of the points "
        "robust (autoattack_informative); a list: only those eps (a budget); [] for none",
    )
    autoattack_informative: list = _f(
        grid="evaluation.autoattack_informative",
        rule=S.list_of(S.number(0, 1), nonempty=True),
        factory=lambda: [0.01, 0.99],
        help="[lo, hi]: by default AutoAttack runs at an eps where our attacks leave between lo and hi "
        "of the n_eval points robust (outside it AutoAttack cannot change a cell by more than lo)",
        since=3,
    )
    autoattack_points: Optional[int] = _f(
        None,
        grid="evaluation.autoattack_points",
        rule=S.integer(1, 10**7, optional=True),
        help="AutoAttack on a stratified subset of this many of the n_eval points (None: all; a budget)",
    )
    reuse_eps: bool = _f(
        True,
        grid="evaluation.reuse_eps",
        rule=S.flag(),
        help="a point an attack broke at a smaller eps counts as broken at every larger eps of the same norm "
        "and is not attacked again (false: every eps on its own, which the audit's non_monotone needs)",
        since=3,
    )
    chunk_points: Optional[int] = _f(
        None,
        grid="evaluation.chunk_points",
        rule=S.integer(1, 10**7, optional=True),
        row=False,
        help="points per chunk, the unit the evaluation is sharded, seeded and resumed by (None: "
        "min(eval_batch_size, ceil(n_eval / 8)))",
        since=3,
    )
    probe_points: Optional[int] = _f(
        None,
        grid="evaluation.probe_points",
        rule=S.integer(1, 10**7, optional=True),
        help="the masking probe's strong CE-PGD and Square on a stratified subset of this many of the "
        "n_eval points (None: all)",
    )
    probe_eps: list = _f(
        grid="evaluation.probe_eps",
        rule=S.list_of(POS_EPS, unique=True),
        factory=list,
        help="eps where the masking probe's strong CE-PGD and Square also run, besides the eps its rule "
        "picks (e.g. the eps a claim is decided at); our attacks run there too",
        since=3,
    )
    jacobian_points: int = _f(500, grid="evaluation.jacobian_points", rule=S.integer(0, 10**7))
    jacobian_eps: Optional[float] = _f(
        None,
        grid="evaluation.jacobian_eps",
        rule=S.number(0, 1, optional=True),
        help="eps of the PGD points the Jacobians are also measured at (None: the validation eps)",
    )
    jacobian_projections: int = _f(
        1, grid="evaluation.jacobian_projections", rule=S.integer(1, 10000), help="per-epoch estimate"
    )
    eval_batch_size: int = _f(500, grid="evaluation.eval_batch_size", rule=S.integer(1, 1 << 16), row=False)
    # arithmetic (docs/gpu.md): bf16 autocast for training; the evaluation stays fp32 unless set
    precision: str = _f(
        "fp32",
        grid="precision.train",
        rule=S.choice(PRECISIONS),
        help='training forward passes: "fp32" or "bf16" (autocast)',
    )
    attack_precision: Optional[str] = _f(
        None,
        grid="precision.train_attack",
        rule=S.choice(PRECISIONS, optional=True),
        help="the training adversary's precision (None: as precision)",
    )
    eval_precision: str = _f(
        "fp32",
        grid="precision.eval",
        rule=S.choice(PRECISIONS),
        help="attacks, Jacobians and clean pass of the evaluation",
    )
    checkpoints: list = _f(
        grid="evaluation.checkpoints",
        rule=S.list_of(S.choice(CHECKPOINTS), nonempty=True, unique=True),
        row=False,
        factory=lambda: ["last"],
        help='checkpoints evaluated on the test split: ["last"] or ["last", "best"] (best by val/robust_acc)',
    )
    # validation split: carved from the training split, never trained on; the per-epoch validation,
    # the best checkpoint and ASHA read it (the test split is touched by the final evaluation only)
    val_points: int = _f(
        1000,
        grid="validation.points",
        rule=S.integer(0, 10**7),
        help="stratified validation points carved from train (0: none)",
    )
    val_seed: int = _f(
        0, grid="validation.seed", rule=S.integer(0, 2**31 - 1), help="seed of the validation draw"
    )
    val_eps: Optional[float] = _f(
        None,
        grid="validation.eps",
        rule=S.number(0, 1, optional=True),
        help="eps of the validation PGD (None: the training eps for adversarial defenses, else the "
        "smallest positive test eps)",
    )
    val_pgd_steps: int = _f(
        10,
        grid="validation.pgd_steps",
        rule=S.integer(1, 1000),
        help="steps of the validation PGD (CE, random start)",
    )
    # runtime
    device: str = _f("auto", grid="device", rule=S.text(), row=False)
    num_threads: int = _f(
        0, grid="num_threads", rule=S.integer(0, 1024), row=False, help="0: leave torch's default"
    )
    log_every: int = _f(
        0,
        grid=None,
        rule=S.integer(0, 10**9),
        row=False,
        help="batches between progress lines (0: per epoch only)",
    )
