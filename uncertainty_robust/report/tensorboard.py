"""TensorBoard for a whole run: HParams (one session per trial), accuracy-vs-eps curves, Jacobian
norm vs lambda, eps_train x eps_test matrices (scalars and a custom-scalars layout), adversarial
examples and the audit as text. Scalar steps are integers, so curves use x = ``round(1000 * eps)``."""

from __future__ import annotations

import re
from pathlib import Path

from ..rundir import AggregateDir, TrialDir
from .scan import Group, hparams, metrics, slug
from .series import curves, jacobian_lines, matrices, matrix_markdown


def _step(x: float) -> int:
    return int(round(1000 * x))


def write_tensorboard(tb: Path, trials: list, groups: list, tables_md: str, audit_md: str) -> None:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hp_summary

    all_hp = [hparams(t) for t in trials]
    union = {}
    for t in trials:
        union.update({k: 0.0 for k in metrics(t)})
    domains = {k: sorted({h[k] for h in all_hp}) for k in all_hp[0]}
    exp, _, _ = hp_summary(all_hp[0], union, domains)
    cv, jl, mx = curves(groups), jacobian_lines(groups), matrices(groups)
    attack_series = sorted({s for c in cv.values() for s in c if s != "worst"}) + ["worst"]
    layout = {
        "accuracy vs test eps (x = 1000*eps, mean over seeds)": {
            s: ["Multiline", [rf"^curve/{re.escape(s)}$"]] for s in attack_series
        },
        "Jacobian norm vs lambda (x = 1000*lambda, mean over seeds)": {
            s: ["Multiline", [rf"^jac_vs_lam/{s}$"]]
            for s in ("logits_mean", "logits_median", "softmax_mean", "softmax_median")
        },
        "worst-case acc vs eps_train (x = 1000*eps_train), one line per eps_test": {
            title: ["Multiline", [rf"^matrix/{re.escape(slug(title))}/"]] for title in mx
        },
    }
    with SummaryWriter(str(tb)) as w:
        w.file_writer.add_summary(exp)
        w.add_custom_scalars(layout)
        w.add_text("tables", tables_md)
        w.add_text("audit", audit_md)
        for title, m in mx.items():
            w.add_text(f"matrix/{slug(title)}", matrix_markdown(title, m))
    for t, h in zip(trials, all_hp):
        with SummaryWriter(str(tb / "trials" / t.name)) as w:
            _, ssi, sei = hp_summary(h, {}, None)
            w.file_writer.add_summary(ssi)
            for k, v in metrics(t).items():
                w.add_scalar(k, v, 0)
            w.add_text("audit", "\n".join(f"- **{f.name}**: {f.detail}" for f in t.flags) or "no flags")
            w.file_writer.add_summary(sei)
    for g in groups:
        with SummaryWriter(str(tb / "curves" / g.slug)) as w:
            for s, pts in cv[g.label].items():
                for e, acc in pts:
                    w.add_scalar(f"curve/{s}", acc, _step(e))
        _write_examples(tb, g)
    for label, stats in jl.items():
        with SummaryWriter(str(tb / "jacobian" / slug(label))) as w:
            for s, pts in stats.items():
                for lam, v in pts:
                    w.add_scalar(f"jac_vs_lam/{s}", v, _step(lam))
    with SummaryWriter(str(tb / "matrix")) as w:
        for title, m in mx.items():
            for j, c in enumerate(m["cols"]):
                for r, row in zip(m["rows"], m["acc"]):
                    if row[j] is not None:
                        w.add_scalar(f"matrix/{slug(title)}/eps_test_{c:g}", row[j], _step(r))


def _write_examples(tb: Path, g: Group) -> None:
    """A few adversarial examples of the group's first seed that kept them, per eps (TB + PNG)."""
    from torch.utils.tensorboard import SummaryWriter

    from ..checkpoint import load

    t = next((t for t in g.trials if TrialDir(t.dir).adv_examples.exists()), None)
    if t is None:
        return
    try:
        ex = load(TrialDir(t.dir).adv_examples)
    except Exception:  # a truncated or foreign file must not break the whole report
        return
    import torch
    import torchvision.utils as vutils

    png = AggregateDir(tb.parent).examples
    png.mkdir(exist_ok=True)
    with SummaryWriter(str(tb / "examples" / g.slug)) as w:
        for eps in sorted(ex, key=float):
            e = ex[eps]
            rows = (
                torch.cat([e["clean"], e["x"]]) if "clean" in e else e["x"]
            )  # clean row above adversarial row
            grid = vutils.make_grid(rows.float(), nrow=len(e["x"]), padding=2, pad_value=1.0)
            w.add_image(f"adv/eps_{float(eps):g}", grid, 0)
            w.add_text(
                f"adv/eps_{float(eps):g}",
                f"{t.name} ({e.get('attack', 'attack')}, top: clean, bottom: "
                f"adversarial): label {e['y'].tolist()}, prediction {e['pred'].tolist()}",
            )
            big = torch.nn.functional.interpolate(grid[None], scale_factor=3, mode="nearest")[0]
            vutils.save_image(big, png / f"{g.slug}__test_eps{float(eps):g}.png")
