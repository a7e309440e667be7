"""Side-by-side performance benchmarks of uncertainty_robust, one command.

    python benchmarks/run.py                  # everything (~15-20 min on a 2-core CPU)
    python benchmarks/run.py --quick          # smaller sizes, fewer repeats (~5 min)
    python benchmarks/run.py --only attacks jacobian suite
    python benchmarks/run.py --only sweep ddp # the slow ones (Ray, SLURM, DDP)
    python -m benchmarks ...                  # the same

Writes ``<out>/bench.json`` (every number, merged with earlier runs of other items) and
``<out>/bench.md`` (table of ratios against goals, and what the misses are made of; the prose is
``benchmarks/templates/*.md``, the numbers come from bench.json: ``--report-only`` re-renders it).

Every comparison runs both sides in the same process (or the same run), interleaved, with the
same model, points, seeds and torch threads; a ratio is the median over repeats of the per-repeat
ratio (paired), so load from other users of the machine cancels as far as it can. Times are
wall clock (``time.perf_counter``) unless marked "cpu" (``time.process_time`` of this process).

Items (names for ``--only``), one module each:
  attacks   1. benchmarks/attacks_vs_torchattacks.py
  at        2. benchmarks/at_epoch.py
  jacobian  3. benchmarks/jacobian_cost.py
  sweep     4. benchmarks/sweep_overhead.py (a sweep through launch.py vs a plain loop; its own
               command line and results file, benchmarks/results/sweep.md)
  ddp       5. benchmarks/ddp_scaling.py
  suite     6. benchmarks/suite_early_exit.py
An item module has ``NAME``, ``TITLE``, ``run(ctx) -> dict`` (the result, JSON-able; ``ctx.args``
are the options below, ``ctx.models()`` the two cached small_cnn models), ``rows(record)`` (its
lines of the table of ratios) and ``section(record) -> str`` (its Markdown section), where
``record`` is its entry in bench.json: ``{"result", "machine", "mode", "finished", "seconds"}``.
Models: a small_cnn trained on the embedded MNIST (standard, and PGD adversarial training), cached
under ``<out>/cache/`` (not for git: benchmarks/.gitignore).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.harness import RESULTS, get_models, load_avg, log, machine_info, machine_line
from benchmarks.render import fill, lines, row

ITEMS = {
    "attacks": "benchmarks.attacks_vs_torchattacks",
    "at": "benchmarks.at_epoch",
    "jacobian": "benchmarks.jacobian_cost",
    "sweep": "benchmarks.sweep_overhead",
    "ddp": "benchmarks.ddp_scaling",
    "suite": "benchmarks.suite_early_exit",
}
ALIASES = {str(i + 1): name for i, name in enumerate(ITEMS)}


def module_path(name: str) -> str:
    return ITEMS[name].replace(".", "/") + ".py"


def item_module(name: str):
    """The item's module, None when it is not in this checkout."""
    if importlib.util.find_spec(ITEMS[name]) is None:
        return None
    return importlib.import_module(ITEMS[name])


@dataclass
class Context:
    """What an item's ``run`` gets: the command-line options and the cached models."""

    args: argparse.Namespace
    out: Path
    _models: dict = field(default_factory=dict)

    def models(self) -> dict:
        if not self._models:
            self._models.update(get_models(self.out / "cache"))
        return self._models


# ------------------------------------------------------------------------------------- report
def standalone(mod) -> bool:
    """An item with its own command line and results file (``sweep_overhead``: sweep.md), not rendered here."""
    return mod is not None and not hasattr(mod, "rows")


def _item_line(name: str, rec: dict, mod) -> str:
    if standalone(mod):
        return (
            f"- `{name}`: measured by `python {module_path(name)}` (Ray, SLURM, fresh clones), which writes "
            f"its own `benchmarks/results/{name}.md`"
        )
    if mod is None:
        return (
            f"- `{name}`: not shown: its module `{module_path(name)}` is not in this checkout; its "
            f"numbers of {rec.get('finished')} stay in bench.json"
        )
    if "result" not in rec:
        return f"- `{name}`: failed ({rec.get('error')}), {rec.get('finished')}"
    m = rec["machine"]
    return f"- `{name}`: {rec['mode']} run, {rec['finished']}, {rec['seconds']:.0f} s; machine: {machine_line(m)}"


def render_md(R: dict) -> str:
    """bench.md from the merged results: the header, the table of ratios, one section per item."""
    items, table, sections = [], [], []
    for name in ITEMS:
        mod = item_module(name)
        if name not in R and not standalone(mod):
            continue
        items.append(_item_line(name, R.get(name, {}), mod))
        if mod is not None and not standalone(mod) and "result" in R[name]:
            table += [row(*r) for r in mod.rows(R[name])]
            sections.append(mod.section(R[name]))
    head = fill("bench", items=lines(items), rows=lines(table))
    return "\n".join([head] + sections) + "\n"


def write_md(R: dict, path: Path) -> None:
    path.write_text(render_md(R))


# ------------------------------------------------------------------------------------- running
def run_item(name: str, ctx: Context, mach: dict) -> dict:
    """One item, its failure kept to itself (one failing item must not lose the others)."""
    log(f"=== {name}")
    t0 = time.time()
    mod = item_module(name)
    if standalone(mod):
        log(f"{name}: run `python {module_path(name)}` (it writes benchmarks/results/{name}.md)")
        return {"error": "standalone item", "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        res, err = mod.run(ctx), None
    except Exception as e:
        traceback.print_exc()
        res, err = None, f"{type(e).__name__}: {e}"
    rec = {
        "result": res,
        "error": err,
        "mode": "quick" if ctx.args.quick else "full",
        "seconds": time.time() - t0,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {**mach, "loadavg_end": load_avg()},
    }
    if res is None:
        rec.pop("result")
    log(f"=== {name} done in {time.time() - t0:.0f} s" + (f" (error: {err})" if err else ""))
    return rec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (~5 min)")
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"items to run: {', '.join(ITEMS)} (or 1-6)")
    p.add_argument("--out", default=str(RESULTS), help="where bench.json and bench.md go")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for in-process items")
    p.add_argument("--no-slurm", action="store_true", help="item 4: skip the SLURM run")
    p.add_argument("--keep", action="store_true", help="keep the temporary sweep directories")
    p.add_argument(
        "--report-only", action="store_true", help="rewrite bench.md from bench.json, measure nothing"
    )
    return p


def _selected(p: argparse.ArgumentParser, only) -> list:
    names = [ALIASES.get(n, n) for n in (only or ITEMS)]
    bad = [n for n in names if n not in ITEMS]
    if bad:
        p.error(f"--only: unknown item {bad[0]!r}; items: {', '.join(ITEMS)} (or 1-6)")
    missing = [n for n in names if item_module(n) is None]
    for n in missing:
        log(f"{n}: not run: its module {module_path(n)} is not in this checkout")
    return [n for n in names if n not in missing]


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    out = Path(args.out)
    jpath = out / "bench.json"
    if args.report_only:
        write_md(json.loads(jpath.read_text()), out / "bench.md")
        print(f"wrote {out / 'bench.md'}")
        return 0
    only = _selected(p, args.only)
    torch.set_num_threads(args.threads)
    mach = machine_info(args.threads)
    print("machine: " + machine_line(mach), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    R = json.loads(jpath.read_text()) if jpath.exists() else {}
    ctx = Context(args, out)
    for name in only:
        R[name] = run_item(name, ctx, mach)
        jpath.write_text(json.dumps({k: R[k] for k in ITEMS if k in R}, indent=1, default=str))
        write_md(R, out / "bench.md")
    for name in only:
        if "result" in R[name]:
            for r in item_module(name).rows(R[name]):
                print(" | ".join(str(c) for c in r))
    print(f"wrote {jpath} and {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
