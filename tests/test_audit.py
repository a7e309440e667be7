"""The gradient-masking audit on real models: a model whose softmax saturates (logits x 1e4, so the
CE input gradient is exactly zero) must raise the masking flags, a normal adversarially trained
model must raise none. Plus each rule on hand-written records (thresholds, noise, skips)."""

import math

import pytest
import torch

from uncertainty_robust.audit import (
    AuditRules,
    Flag,
    audit,
    find_transfer_source,
    large_eps,
    transfer_attack,
    transfer_for_trial,
    transfer_result,
    whitebox_reference,
)
from uncertainty_robust.config import AttackSpec, TrialConfig
from uncertainty_robust.data import load_tensors
from uncertainty_robust.evaluate import evaluate
from uncertainty_robust.trial import load_trained, run_trial

# small but real: width-0.5 small_cnn, PGD-5 AT at eps 0.2 on 2,000 embedded MNIST digits, evaluated
# out to eps 0.5 where a working attack must reach ~0 accuracy (the audit's "large eps")
COMMON = dict(
    dataset="mnist_embedded",
    model="small_cnn",
    width=0.5,
    n_train=2000,
    n_eval=100,
    jacobian_points=20,
    test_eps=[0.0, 0.1, 0.2, 0.3, 0.5],
    pgd_steps=5,
    attacks=[AttackSpec("fgsm", 1), AttackSpec("pgd", 5), AttackSpec("cw", 5)],
)


class Saturate(torch.nn.Module):
    """logits * T: same predictions, but softmax(T z) is one-hot in float32 for almost every input,
    so the CE loss and its input gradient are exactly 0 (classic gradient masking)."""

    def __init__(self, model, t=1e4):
        super().__init__()
        self.model, self.t = model, t

    def forward(self, x):
        return self.model(x) * self.t


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("audit_run") / "trials"
    std_cfg = TrialConfig(defense="standard", epochs=1, **COMMON)
    at_cfg = TrialConfig(defense="at", eps=0.2, epochs=2, **COMMON)
    std = run_trial(std_cfg, base / "standard_s0", keep_examples=0)
    at = run_trial(at_cfg, base / "at_eps0.2_s0", keep_examples=0)
    return {"std": (base / "standard_s0", std), "at": (base / "at_eps0.2_s0", at)}


def names(flags):
    return {f.name for f in flags}


def test_adversarially_trained_model_raises_no_flag(trained):
    (std_dir, std), (at_dir, at) = trained["std"], trained["at"]
    assert at["worst_case"][-1]["eps"] == 0.5 and at["worst_case"][-1]["acc"] <= 0.05  # reaches ~0
    assert at["worst_case"][2]["acc"] > 0.3  # and is robust at its training eps
    src = find_transfer_source(at, [(std_dir, std), (at_dir, at)])
    assert src[0] == std_dir
    rec = dict(at, transfer=transfer_for_trial(at_dir, at, std_dir, std))
    assert rec["transfer"]["eps"] == at["masking_probe"]["eps"] and rec["transfer"]["n_points"] == 100
    skipped = []
    flags = audit(rec, skipped=skipped)
    assert flags == [], [str(f) for f in flags]
    assert not any("large_eps" in s or "transfer" in s or "masking_probe" in s for s in skipped), skipped


def test_saturated_softmax_raises_masking_flags(trained):
    (std_dir, std), (at_dir, _) = trained["std"], trained["at"]
    model, cfg = load_trained(at_dir)
    masked = Saturate(model)
    rec = evaluate(masked, cfg)  # real measured numbers, as a trial would record them
    rec.update(dataset=cfg.dataset, model=cfg.model, config=cfg.to_dict())
    eps = rec["masking_probe"]["eps"]
    ref = whitebox_reference(rec, eps)
    x, y = load_tensors(cfg.dataset, "test", n=cfg.n_eval, seed=0)
    source, _ = load_trained(std_dir)
    acc, _ = transfer_attack(source, masked, x, y, eps, ref["steps"], ref["restarts"], ref["step_size"])
    rec["transfer"] = transfer_result(std, eps, ref, acc, len(y))
    flags = audit(rec)
    got = names(flags)
    assert {"zero_gradients", "large_eps_not_zero", "transfer_beats_whitebox", "margin_beats_ce"} <= got, [
        str(f) for f in flags
    ]
    assert all(isinstance(f, Flag) and "\n" not in f.detail for f in flags)
    assert rec["masking_probe"]["zero_grad_frac"] > 0.5
    # the flagged attack is the CE one; the margin attack (CW) still drives accuracy to ~0
    assert any(f.name == "large_eps_not_zero" and f.detail.startswith("pgd5") for f in flags)
    assert not any(f.name == "large_eps_not_zero" and f.detail.startswith(("cw5", "worst")) for f in flags)


# ------------------------------------------------------------------------ rules on hand-written records
def record(curve=None, fgsm=None, cw=None, n=1000, probe=None, eps=(0.0, 0.1, 0.2, 0.3), **extra):
    """A result-record skeleton: pgd20 accuracies ``curve`` at ``eps`` (fgsm/cw optional)."""
    attacks = []
    for label, name, accs in (("pgd20", "pgd", curve), ("fgsm", "fgsm", fgsm), ("cw30", "cw", cw)):
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
        "config": {"seed": 0},
        "attacks": attacks,
        "worst_case": worst,
        "n_points": n,
    }
    if probe is not None:
        rec["masking_probe"] = {
            "eps": 0.2,
            "n_points": 200,
            "steps": 20,
            "strong_steps": 100,
            "strong_restarts": 5,
            **probe,
        }
    rec.update(extra)
    return rec


def test_monotone_within_binomial_noise_is_not_flagged():
    # +1.5 pts at n=1000 is within 1 pt + 2 standard errors (~2.7 pts at p=0.3)
    assert "non_monotone" not in names(audit(record([0.9, 0.5, 0.3, 0.315])))
    flags = audit(record([0.9, 0.5, 0.3, 0.45]))
    assert "non_monotone" in names(flags)
    f = next(f for f in flags if f.name == "non_monotone")
    assert "pgd20" in f.detail and "0.450" in f.detail and "eps 0.3" in f.detail
    # the same rise measured on 30 points is noise
    assert "non_monotone" not in names(audit(record([0.9, 0.5, 0.3, 0.45], n=30)))


def test_large_eps_rule_and_its_skip():
    skipped = []
    flags = audit(record([0.9, 0.6, 0.5, 0.4]), skipped=skipped)  # max eps 0.3 < 0.5: not "large"
    assert "large_eps_not_zero" not in names(flags)
    assert any(s.startswith("large_eps_not_zero(pgd20)") and "0.3 < large eps 0.5" in s for s in skipped)
    flags = audit(record([0.9, 0.6, 0.5, 0.4]), AuditRules(large_eps=0.3))
    assert "large_eps_not_zero" in names(flags)
    assert "large_eps_not_zero" in names(
        audit(record([0.9, 0.6, 0.5, 0.4], config={"audit_large_eps": 0.3, "seed": 0}))
    )
    assert "large_eps_not_zero" not in names(audit(record([0.9, 0.6, 0.5, 0.03]), AuditRules(large_eps=0.3)))
    assert large_eps({"dataset": "mnist_embedded"}, "L2", AuditRules()) == pytest.approx(0.5 * 28)
    # FGSM is exempt from the "must reach 0" and monotonicity rules
    assert audit(record([0.9, 0.5, 0.1, 0.0], fgsm=[0.9, 0.6, 0.3, 0.4]), AuditRules(large_eps=0.3)) == []


def test_fgsm_beating_pgd_and_margin_beating_ce():
    flags = audit(record([0.9, 0.7, 0.6, 0.5], fgsm=[0.9, 0.6, 0.45, 0.2]))
    assert names(flags) == {"fgsm_beats_pgd"}
    assert "eps 0.3" in next(iter(flags)).detail  # the largest excess is reported
    assert audit(record([0.9, 0.7, 0.6, 0.5], cw=[0.9, 0.68, 0.57, 0.47])) == []
    assert names(audit(record([0.9, 0.7, 0.6, 0.5], cw=[0.9, 0.3, 0.1, 0.0]))) == {"margin_beats_ce"}


def test_probe_flags():
    assert (
        audit(record([0.9, 0.5, 0.3, 0.1], probe={"pgd": 0.30, "pgd_strong": 0.29, "zero_grad_frac": 0.0}))
        == []
    )
    flags = audit(
        record([0.9, 0.5, 0.3, 0.1], probe={"pgd": 0.30, "pgd_strong": 0.10, "zero_grad_frac": 0.5})
    )
    assert names(flags) == {"more_steps_help", "zero_gradients"}
    assert (
        names(
            audit(
                record([0.9, 0.5, 0.3, 0.1], probe={"pgd": 0.3, "pgd_strong": 0.3, "zero_grad_frac": 0.5}),
                AuditRules(zero_grad_frac=0.6),
            )
        )
        == set()
    )


def test_transfer_flag_uses_whitebox_of_same_points():
    tr = {
        "source_trial": "standard_s0",
        "eps": 0.2,
        "steps": 20,
        "n_points": 1000,
        "acc": 0.25,
        "whitebox_label": "pgd20",
        "whitebox_acc": 0.30,
    }
    assert "transfer_beats_whitebox" in names(audit(record([0.9, 0.5, 0.3, 0.1], transfer=tr)))
    tr["acc"] = 0.29
    assert audit(record([0.9, 0.5, 0.3, 0.1], transfer=tr)) == []
    skipped = []
    audit(record([0.9, 0.5, 0.3, 0.1]), skipped=skipped)
    assert any(s.startswith("transfer_beats_whitebox") for s in skipped)


def test_transfer_source_prefers_same_seed():
    def rec(defense, seed, width=1.0, dataset="mnist_embedded"):
        return {
            "trial_id": f"{defense}{seed}{width}",
            "dataset": dataset,
            "model": "small_cnn",
            "config": {"defense": defense, "seed": seed, "width": width},
        }

    pool = [
        ("a", rec("standard", 0)),
        ("b", rec("standard", 1)),
        ("c", rec("standard", 1, 0.5)),
        ("d", rec("at", 1)),
        ("e", rec("standard", 1, dataset="fashion_mnist")),
    ]
    assert find_transfer_source(rec("entm", 1), pool)[0] == "b"
    assert find_transfer_source(rec("entm", 1, 0.5), pool)[0] == "c"
    assert find_transfer_source(rec("entm", 7), pool)[0] == "a"
    assert find_transfer_source(rec("entm", 0, dataset="cifar10"), pool) is None
    assert math.isclose(AuditRules().tol(0.5, 100), 0.01 + 2 * 0.05)
