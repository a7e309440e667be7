"""The gradient-masking audit (``uncertainty_robust.audit``, flags documented in docs/audit.md).

Acceptance, on real models trained here on MNIST digits: models that look robust only because their
gradients are saturated (logits x 1e4), zero (8-bit input quantisation through ``round``) or random
(a backward pass that returns noise), each built on top of both a standard and an adversarially
trained model, are flagged by at least one check; the adversarially trained model itself is not,
and the checks that could have fired on it say "passed", not "not tested". Then each rule on
hand-written records: paired tests, Holm's correction, "not tested" never shown as passed."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from uncertainty_robust.attacks import AttackSpec
from uncertainty_robust.audit import (
    AuditRules,
    Flag,
    audit,
    checks,
    find_transfer_sources,
    large_eps,
    transfer_attack,
    transfer_for_trial,
    transfer_result,
    whitebox_reference,
)
from uncertainty_robust.config import TrialConfig
from uncertainty_robust.data import load_tensors
from uncertainty_robust.evaluation import evaluate
from uncertainty_robust.stats import holm, mcnemar_greater
from uncertainty_robust.trial import load_trained, run_trial

# small but real: width-0.5 small_cnn on 2,000 embedded MNIST digits, PGD-5 AT at eps 0.2, evaluated
# out to eps 0.5 (the audit's "large eps") with an evaluation attack strong enough (PGD-20) that the
# probe's 4x longer PGD with 4x the restarts does not beat it on a genuine model
COMMON = dict(
    dataset="mnist_embedded",
    model="small_cnn",
    width=0.5,
    n_train=2000,
    val_points=0,  # no validation split: the models train on the points this test was calibrated on
    n_eval=100,
    jacobian_points=20,
    test_eps=[0.0, 0.1, 0.2, 0.3, 0.5],
    pgd_steps=5,
    attacks=[AttackSpec("fgsm", 1), AttackSpec("pgd", 20), AttackSpec("cw", 20)],
    autoattack=[AttackSpec("apgd-ce", 20), AttackSpec("apgd-t", 5)],
    autoattack_eps=[0.2],
    autoattack_points=50,
)


class Saturate(torch.nn.Module):
    """logits * T: same predictions, but softmax(T z) is one-hot in float32 for almost every input,
    so the CE loss and its input gradient are exactly 0 (classic gradient masking)."""

    def __init__(self, model, t=1e4):
        super().__init__()
        self.model, self.t = model, t

    def forward(self, x):
        return self.model(x) * self.t


class ZeroGrad(torch.nn.Module):
    """The input quantised to 8 bits with ``round`` (a no-op on these images up to 1/510): the
    predictions are the model's, the input gradient is exactly 0 everywhere."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 255) / 255)


class _Noise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return torch.randn_like(g) * g.norm() / math.sqrt(g.numel())


class RandomGrad(torch.nn.Module):
    """Deterministic outputs, but the input gradient is replaced by Gaussian noise (of the same
    overall size): a gradient attack does a random walk."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_Noise.apply(x))


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("audit_run") / "trials"
    out = {}
    for key, kw in (
        ("std", dict(defense="standard", epochs=1)),
        ("at", dict(defense="at", eps=0.2, epochs=2)),
        ("at_s1", dict(defense="at", eps=0.2, epochs=2, seed=1)),
    ):
        cfg = TrialConfig(**kw, **COMMON)
        d = base / f"{key}_{cfg.trial_id()}"
        out[key] = (d, run_trial(cfg, d, keep_examples=0))
    return out


def names(flags):
    return {f.name for f in flags}


@pytest.mark.slow  # the fixture trains three models (~1 min on 2 busy cores)
def test_adversarially_trained_model_raises_no_flag(trained):
    (std_dir, std), (at_dir, at), (at1_dir, _) = trained["std"], trained["at"], trained["at_s1"]
    assert at["worst_case"][-1]["eps"] == 0.5 and at["worst_case"][-1]["acc"] <= 0.05  # reaches ~0
    w02 = next(w for w in at["worst_case"] if w["eps"] == 0.2)
    assert w02["ours"]["acc"] > 0.3 and w02["acc"] > 0.3  # robust at its training eps, AutoAttack included
    srcs = find_transfer_sources(at, [(d, r) for d, r in trained.values()])
    assert [(s[0], s[2]) for s in srcs] == [(at1_dir, "same defense, another seed"), (std_dir, "standard")]
    rec = dict(at, transfer=transfer_for_trial(at_dir, at, srcs))
    assert rec["transfer"]["eps"] == at["masking_probe"]["eps"] and rec["transfer"]["n_points"] == 100
    assert rec["transfer"]["acc"] <= min(s["acc"] for s in rec["transfer"]["sources"])  # per-example minimum
    out = checks(rec, standard=std)
    status = {c.name: c.status for c in out}
    print("\n" + "\n".join(str(c) for c in out))
    assert [c for c in out if c.status == "flagged"] == []
    for name in (
        "more_steps_help",
        "margin_beats_ce",
        "square_beats_pgd",
        "transfer_beats_whitebox",
        "fgsm_gap",
        "large_eps_not_zero",
    ):
        assert status[name] == "passed", (name, status[name])  # each could have fired here


@pytest.mark.slow
@pytest.mark.parametrize("wrap", [Saturate, ZeroGrad, RandomGrad])
@pytest.mark.parametrize("base", ["std", "at"])
def test_masked_models_are_flagged(trained, base, wrap):
    """Real measured numbers of a masked model, as a trial would record them; transfer from the other
    trained models (the standard one, and the AT one as a second source), per-example minimum."""
    (std_dir, std) = trained["std"]
    model, cfg = load_trained(trained[base][0])
    cfg = dataclasses.replace(cfg, n_eval=60, autoattack_points=30, test_eps=[0.0, 0.1, 0.3, 0.5])  # CI-sized
    masked = wrap(model).eval()
    torch.manual_seed(0)
    rec = evaluate(masked, cfg)
    rec.update(dataset=cfg.dataset, model=cfg.model, config=cfg.to_dict(), name=f"{wrap.__name__}({base})")
    probe = rec["masking_probe"]
    x, y = load_tensors(cfg.dataset, "test", n=cfg.n_eval, seed=0)
    robust, per_source = torch.ones(len(y), dtype=torch.bool), []
    for key in ("std", "at_s1"):
        src, _ = load_trained(trained[key][0])
        ref = whitebox_reference(rec, probe["eps"])
        ok, _ = transfer_attack(
            src, masked, x, y, probe["eps"], ref["steps"], ref["restarts"], ref["step_size"]
        )
        robust &= ok
        per_source.append((trained[key][1], key, float(ok.float().mean())))
    wb = torch.zeros(len(y), dtype=torch.bool)
    wb[probe["whitebox_robust"]] = True
    rec["transfer"] = transfer_result(
        per_source, probe["eps"], whitebox_reference(rec, probe["eps"]), wb, robust
    )
    out = checks(rec, standard=std if base != "std" else None)
    flags = audit(rec, standard=std if base != "std" else None)
    print(f"\n{wrap.__name__}({base}):\n" + "\n".join(str(c) for c in out))
    assert flags, "a masked model raised no flag"
    assert all(isinstance(f, Flag) and "\n" not in f.detail for f in flags)
    got = names(flags)
    if wrap is not RandomGrad:  # the CE input gradient is exactly zero on (almost) every point
        assert "zero_gradients" in got
    assert {
        "square_beats_pgd",
        "transfer_beats_whitebox",
    } & got  # attacks that need no gradient of the target


# ------------------------------------------------------------------------ rules on hand-written records
def record(curve=None, fgsm=None, cw=None, n=1000, eps=(0.0, 0.1, 0.2, 0.3), probe=None, **extra):
    """A result-record skeleton: pgd20 accuracies ``curve`` at ``eps`` (fgsm/cw optional)."""
    attacks = []
    for label, name, accs in (("pgd20", "pgd", curve), ("fgsm", "fgsm", fgsm), ("cw20", "cw", cw)):
        for e, a in zip(eps, accs or []):
            attacks.append(
                {
                    "attack": name,
                    "label": label,
                    "norm": "Linf",
                    "eps": e,
                    "acc": a,
                    "n_points": n,
                    "steps": 20,
                    "restarts": 1,
                    "step_size": 2.5 * e / 20,
                }
            )
    worst = [{"eps": e, "acc": min(a["acc"] for a in attacks if a["eps"] == e), "n_points": n} for e in eps]
    rec = {
        "dataset": "mnist_embedded",
        "model": "small_cnn",
        "config": {"seed": 0, "defense": "entm"},
        "attacks": attacks,
        "worst_case": worst,
        "n_points": n,
    }
    if probe is not None:
        rec["masking_probe"] = {
            "whitebox": {"label": "pgd20", "steps": 20, "restarts": 1},
            "n_points": n,
            **probe,
        }
    rec.update(extra)
    return rec


def pair(ref_acc, acc, only_other, only_ref, n=100, **kw):
    return {
        "n_points": n,
        "ref_acc": ref_acc,
        "acc": acc,
        "only_other": only_other,
        "only_ref": only_ref,
        **kw,
    }


def status(rec, name, **kw):
    return next(c for c in checks(rec, **kw) if c.name == name)


def test_statistics():
    assert mcnemar_greater(5, 0) == pytest.approx(1 / 32)
    assert mcnemar_greater(0, 0) == 1.0 and mcnemar_greater(3, 3) > 0.5
    assert [p <= 0.05 for p in holm([0.01, 0.04, 0.03])] == [
        True,
        False,
        False,
    ]  # 0.01 <= 0.05/3; 0.03 > 0.05/2
    assert [p <= 0.05 for p in holm([0.01, 0.02, 0.03])] == [True, True, True]
    assert math.isclose(AuditRules().tol(0.5, 100), 0.01 + 2 * 0.05)


def test_monotone_within_binomial_noise_is_not_flagged():
    # +1.5 pts at n=1000 is within 1 pt + 2 standard errors (~2.7 pts at p=0.3)
    assert "non_monotone" not in names(audit(record([0.9, 0.5, 0.3, 0.315])))
    flags = audit(record([0.9, 0.5, 0.3, 0.45]))
    assert "non_monotone" in names(flags)
    f = next(f for f in flags if f.name == "non_monotone")
    assert "pgd20" in f.detail and "0.450" in f.detail and "eps 0.3" in f.detail
    assert "non_monotone" not in names(audit(record([0.9, 0.5, 0.3, 0.45], n=30)))  # noise on 30 points


def test_non_monotone_compares_with_the_running_minimum():
    """A slow climb with eps, each step within the tolerance, is flagged against the lowest accuracy
    so far (0.30 at eps 0.1): +0.06 at eps 0.3 > 0.01 + 2 SE (0.039 at p 0.3, n 1000)."""
    flags = audit(record([0.9, 0.30, 0.33, 0.36, 0.39], eps=(0.0, 0.1, 0.2, 0.3, 0.4)))
    f = next(f for f in flags if f.name == "non_monotone")
    assert "0.360 at eps 0.3 > 0.300 at eps 0.1" in f.detail, f.detail
    # the same climb within the tolerance of the minimum: not flagged
    assert "non_monotone" not in names(
        audit(record([0.9, 0.30, 0.31, 0.32, 0.33], eps=(0.0, 0.1, 0.2, 0.3, 0.4)))
    )


def test_large_eps_is_tested_when_one_curve_reaches_it():
    """pgd20 reaches the large eps 0.5, cw20 stops at 0.3: the rule is tested on pgd20 (passed, with
    cw20 named as not reached), not reported "not tested"; a curve at the large eps above the limit
    is flagged whatever the others do."""
    eps = (0.0, 0.1, 0.2, 0.3, 0.5)
    c = status(record([0.9, 0.6, 0.3, 0.1, 0.0], cw=[0.9, 0.6, 0.3, 0.1], eps=eps), "large_eps_not_zero")
    assert c.status == "passed" and "not reached: cw20: largest eps 0.3 < large eps 0.5" in c.detail, c
    c = status(record([0.9, 0.6, 0.5, 0.4, 0.3], cw=[0.9, 0.6, 0.3, 0.1], eps=eps), "large_eps_not_zero")
    assert c.status == "flagged" and "pgd20: accuracy 0.300 at eps 0.5" in c.detail, c
    c = status(record([0.9, 0.6, 0.3, 0.1], cw=[0.9, 0.6, 0.3, 0.1]), "large_eps_not_zero")
    assert c.status == "not tested", c  # no curve reaches it


def test_large_eps_rule_and_not_tested():
    skipped = []
    flags = audit(record([0.9, 0.6, 0.5, 0.4]), skipped=skipped)  # max eps 0.3 < 0.5: not "large"
    assert "large_eps_not_zero" not in names(flags)
    assert any(
        s.startswith("large_eps_not_zero: not tested:") and "0.3 < large eps 0.5" in s for s in skipped
    )
    assert "large_eps_not_zero" in names(audit(record([0.9, 0.6, 0.5, 0.4]), AuditRules(large_eps=0.3)))
    rec = record([0.9, 0.6, 0.5, 0.4], config={"audit_large_eps": 0.3, "seed": 0, "defense": "entm"})
    assert "large_eps_not_zero" in names(audit(rec))
    assert (
        status(record([0.9, 0.6, 0.5, 0.03]), "large_eps_not_zero", rules=AuditRules(large_eps=0.3)).status
        == "passed"
    )
    assert large_eps({"dataset": "mnist_embedded"}, "L2", AuditRules()) == pytest.approx(0.5 * 28)


def test_probe_checks_also_read_the_probe_eps():
    """``probe_eps``: the strong PGD and Square also ran where a claim is decided (``extra``); a gap
    there flags the check and names that eps, Holm over all the probe's eps; none there passes and
    lists every eps it compared at."""
    base = dict(eps=0.2, whitebox_acc=0.5, zero_grad_frac=0.0)
    quiet = {
        "strong": pair(0.5, 0.5, 0, 0, label="pgd80x4"),
        "square": pair(0.5, 0.5, 0, 0, label="square1000"),
    }
    loud = {"eps": 0.1, "whitebox_acc": 0.7, "strong": pair(0.7, 0.55, 15, 0, label="pgd80x4"),
            "square": pair(0.7, 0.7, 1, 1, label="square1000")}  # fmt: skip
    rec = record([0.9, 0.7, 0.5, 0.3], probe={**base, **quiet, "extra": [loud]})
    ch = status(rec, "more_steps_help")
    assert ch.status == "flagged" and "eps 0.1" in ch.detail, ch.detail
    ch = status(rec, "square_beats_pgd")
    assert ch.status == "passed" and "eps 0.2, 0.1" in ch.detail, ch.detail
    assert status(record([0.9, 0.7, 0.5, 0.3], probe={**base, **quiet}), "more_steps_help").status == "passed"


def test_paired_checks_need_significance_and_size():
    base = dict(eps=0.2, whitebox_acc=0.5, zero_grad_frac=0.0)
    # 8 points broken only by the 4x longer PGD, none the other way: p = 1/256, drop 0.08 > 0.03
    rec = record([0.9, 0.7, 0.5, 0.3], probe={**base, "strong": pair(0.5, 0.42, 8, 0, label="pgd80x4")})
    assert status(rec, "more_steps_help").status == "flagged"
    assert "broken only by pgd80x4: 8" in status(rec, "more_steps_help").detail
    # the same drop on 3 + 0 discordant points... of 100: p = 1/8, not significant
    rec = record([0.9, 0.7, 0.5, 0.3], probe={**base, "strong": pair(0.5, 0.47, 3, 0, label="pgd80x4")})
    assert status(rec, "more_steps_help").status == "passed"
    # many discordant points both ways, equal accuracies: not a gap
    rec = record([0.9, 0.7, 0.5, 0.3], probe={**base, "square": pair(0.5, 0.5, 20, 20, label="square1000")})
    assert status(rec, "square_beats_pgd").status == "passed"
    rec = record([0.9, 0.7, 0.5, 0.3], probe={**base, "square": pair(0.5, 0.2, 32, 2, label="square1000")})
    assert status(rec, "square_beats_pgd").status == "flagged"


def test_margin_beats_ce_holm_over_eps():
    one = [pair(0.5, 0.44, 6, 0, eps=0.2, label="cw20")]  # p = 1/64 = 0.016 < 0.05
    rec = record([0.9, 0.7, 0.5, 0.3], probe=dict(eps=0.2, margin=one, zero_grad_frac=0.0))
    assert status(rec, "margin_beats_ce").status == "flagged"
    six = [pair(0.5, 0.44, 6, 0, eps=e, label="cw20") for e in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)]
    rec = record([0.9, 0.7, 0.5, 0.3], probe=dict(eps=0.2, margin=six, zero_grad_frac=0.0))
    assert (
        status(rec, "margin_beats_ce").status == "passed"
    )  # 0.016 > 0.05 / 6: the same gap at 6 eps is chance
    untested = [{"eps": 0.3, "label": "cw20", "not_tested": "pgd20 accuracy 0.010 < 0.05"}]
    rec = record([0.9, 0.7, 0.5, 0.3], probe=dict(eps=0.2, margin=untested, zero_grad_frac=0.0))
    assert status(rec, "margin_beats_ce").status == "not tested"


def test_a_check_that_could_not_fire_is_not_tested_never_passed():
    why = "pgd20 accuracy is below 0.05 at every eps (closest to 0.5: 0.010 at eps 0.1)"
    rec = record(
        [0.9, 0.01, 0.0, 0.0], probe=dict(eps=0.1, whitebox_acc=0.01, not_tested=why, zero_grad_frac=0.0)
    )
    skipped = []
    audit(rec, skipped=skipped)
    for name in ("more_steps_help", "square_beats_pgd", "transfer_beats_whitebox"):
        c = status(rec, name)
        assert c.status == "not tested" and why in c.detail, c
        assert any(s.startswith(f"{name}: not tested:") for s in skipped)
    rec["transfer"] = {"eps": 0.1, "not_tested": why, "sources": []}
    assert status(rec, "transfer_beats_whitebox").status == "not tested"
    assert status(record([0.9, 0.5, 0.3, 0.1]), "more_steps_help").status == "not tested"  # no probe at all
    assert status(record([0.9, 0.5, 0.3, 0.1]), "autoattack_checks").status == "not tested"  # no AutoAttack


def test_fgsm_gap_is_relative_to_the_standard_model():
    def probe(fgsm, pgd, n=500):
        rows = []
        for e, f, p in zip((0.1, 0.2, 0.3), fgsm, pgd):
            b = round((p - f) * n) if p > f else 0  # broken by FGSM only
            c = round((f - p) * n) if f > p else 0  # broken by PGD only
            rows.append(pair(p, f, b, c, n=n, eps=e, label="fgsm"))
        return dict(eps=0.1, fgsm_pgd=rows, zero_grad_frac=0.0)

    std = record(
        [0.95, 0.3, 0.03, 0.0],
        probe=probe([0.6, 0.3, 0.1], [0.3, 0.03, 0.0]),
        config={"seed": 0, "defense": "standard"},
    )
    # LS/EntM signature (evaluation review, repro_mnist): FGSM 0.2 at 50 % vs 30 %, PGD ~3 % for both
    ls = record([0.95, 0.3, 0.03, 0.0], probe=probe([0.7, 0.5, 0.3], [0.3, 0.03, 0.0]))
    assert status(ls, "fgsm_gap", standard=std).status == "flagged"
    # an AT model: a big FGSM - PGD gap too, but PGD gains as much: not masking
    at = record(
        [0.95, 0.9, 0.7, 0.4],
        probe=probe([0.9, 0.8, 0.6], [0.88, 0.7, 0.35]),
        config={"seed": 0, "defense": "at"},
    )
    assert status(at, "fgsm_gap", standard=std).status == "passed"
    # beyond its training eps (0.1) FGSM overstates an AT model while PGD falls to the standard
    # model's level (every AT model of the Fashion-MNIST reproduction at eps 0.3): not tested there
    far = dict(curve=[0.95, 0.88, 0.5, 0.01], probe=probe([0.9, 0.6, 0.35], [0.88, 0.5, 0.01]))
    at_far = record(**far, config={"seed": 0, "defense": "at", "eps": 0.1})
    c = status(at_far, "fgsm_gap", standard=std)
    assert c.status == "passed" and "not tested above the training eps 0.1 (0.2, 0.3)" in c.detail, c
    # the same numbers from a model that was not trained adversarially: flagged at eps 0.3
    c = status(record(**far, config={"seed": 0, "defense": "ls", "lam": 0.1}), "fgsm_gap", standard=std)
    assert c.status == "flagged" and "at eps 0.3" in c.detail, c
    at_only_far = record(**far, config={"seed": 0, "defense": "at", "eps": 0.05})
    c = status(at_only_far, "fgsm_gap", standard=std)
    assert c.status == "not tested" and "above the training eps 0.05" in c.detail, c
    assert status(ls, "fgsm_gap").status == "not tested"  # no standard model
    assert status(std, "fgsm_gap", standard=std).status == "not tested"


def test_fgsm_gap_is_bonferroni_corrected_over_eps():
    """An excess FGSM - PGD gap over the standard model's that is 1.9 standard errors above the
    tolerance at each of 3 eps: significant one-sided (z 1.645) but not after Bonferroni over the 3
    eps (z 2.128), so "passed"; at one eps alone (z 1.645) or 2.5 SE above, "flagged"."""

    def probe(gap, eps=(0.1, 0.2, 0.3), n=500):  # PGD 0.30 at every eps, FGSM 0.30 + gap
        b = round(gap * n)  # points broken by PGD only
        return dict(eps=0.1, fgsm_pgd=[pair(0.3, 0.3 + b / n, 0, b, n=n, eps=e, label="fgsm") for e in eps])

    def fgsm_gap(gap, **kw):
        std = record(
            [0.95, 0.3, 0.3, 0.3], probe=probe(0.10, **kw), config={"seed": 0, "defense": "standard"}
        )
        return status(record([0.95, 0.3, 0.3, 0.3], probe=probe(gap, **kw)), "fgsm_gap", standard=std)

    # gap 0.244 vs 0.100: excess 0.144 - 0.10 = 0.044 over an SE of 0.0234: z = 1.88
    c = fgsm_gap(0.244)
    assert c.status == "passed", c
    c = fgsm_gap(0.244, eps=(0.2,))
    assert c.status == "flagged" and "1.64 SE, Bonferroni over 1 eps" in c.detail, c
    c = fgsm_gap(0.26)  # z = 2.5
    assert c.status == "flagged" and "2.13 SE, Bonferroni over 3 eps" in c.detail, c


def test_transfer_check_is_paired_with_the_whitebox_points():
    tr = {
        "eps": 0.2,
        "steps": 20,
        "restarts": 1,
        "n_points": 200,
        "sources": [{"trial": "standard_s0", "role": "standard"}],
        "acc": 0.2,
        "whitebox_label": "pgd20",
        "whitebox_acc": 0.3,
        "only_other": 22,
        "only_ref": 2,
    }
    assert "transfer_beats_whitebox" in names(audit(record([0.9, 0.5, 0.3, 0.1], transfer=tr)))
    tr.update(acc=0.29, only_other=12, only_ref=10)
    assert status(record([0.9, 0.5, 0.3, 0.1], transfer=tr), "transfer_beats_whitebox").status == "passed"


def test_transfer_sources():
    def rec(defense, seed, width=1.0, dataset="mnist_embedded", eps=0.3, lam=0.0):
        cfg = TrialConfig(defense=defense, seed=seed, width=width, dataset=dataset, eps=eps, lam=lam)
        return {"trial_id": cfg.trial_id(), "dataset": dataset, "model": "small_cnn", "config": cfg.to_dict()}

    pool = [
        ("a", rec("standard", 0)),
        ("b", rec("standard", 1)),
        ("c", rec("standard", 1, 0.5)),
        ("d", rec("at", 1)),
        ("d2", rec("at", 1, eps=0.1)),
        ("e", rec("standard", 1, dataset="fashion_mnist")),
        ("f", rec("at_entm", 0, lam=0.5)),
        ("g", rec("at_entm", 1, lam=0.5)),
    ]
    srcs = lambda target: [(d, role) for d, _, role in find_transfer_sources(target, pool)]  # noqa: E731
    assert srcs(rec("entm", 1, lam=0.5)) == [("b", "standard")]
    assert srcs(rec("entm", 1, 0.5, lam=0.5)) == [("c", "standard")]
    assert srcs(rec("entm", 7, lam=0.5)) == [("a", "standard")]
    assert srcs(rec("at_entm", 1, lam=0.5)) == [
        ("f", "same defense, another seed"),
        ("d", "baseline (at)"),
        ("b", "standard"),
    ]
    assert srcs(rec("entm", 0, dataset="cifar10", lam=0.5)) == []
