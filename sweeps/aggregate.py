"""Aggregate a sweep run: tables, TensorBoard (HParams, curves, examples) and the gradient-masking
audit, written to RUN/aggregate/ (or --out). Rerun it any time, also while trials still run.

    ur-aggregate RUN_DIR [--out DIR] [--no-transfer] [--large-eps 0.4] [--checkpoint best]
    python sweeps/aggregate.py RUN_DIR     (the same, from a checkout)
    tensorboard --logdir RUN_DIR/aggregate/tb

Prints the Markdown tables (mean [95% CI] per cell, paired differences with each method's baseline),
how many unfinished trials were skipped and the audit flags. ``--checkpoint best`` tables the
best-by-validation checkpoints instead of the last ones (into RUN_DIR/aggregate_best by default).
Exit 2 with one line when RUN_DIR is missing or holds no trials at all, when another process is
writing the same output directory (an flock on ``.<out>.lock`` beside it), or when the output
cannot be written (a full disk: the file and the free space).
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from uncertainty_robust.errors import DiskFull, UserError, exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sweeps/aggregate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", type=Path, help="the sweep's run directory (holds trials/<trial>/result.json)")
    p.add_argument(
        "--out", type=Path, help="output directory (default RUN_DIR/aggregate); replaced as a whole"
    )
    p.add_argument(
        "--no-transfer",
        action="store_true",
        help="skip the transfer attacks (the audit then reports transfer_beats_whitebox as not tested)",
    )
    p.add_argument(
        "--large-eps",
        type=float,
        default=None,
        help="L-inf eps from which accuracy must be ~0 (default 0.5: every input reaches the constant image)",
    )
    p.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="which evaluation to table: the last epoch's (default) or the best by validation robust "
        "accuracy (trials whose grid had evaluation.checkpoints: [last, best])",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        metavar="B",
        help="bootstrap replicates of the confidence intervals and p-values (default 2000)",
    )
    p.add_argument(
        "--device", default=None, help="device for the transfer attacks (default cuda if available, else cpu)"
    )
    p.add_argument(
        "--claims",
        type=Path,
        default=None,
        metavar="FILE",
        help="a claims file (results/claims.yaml): one verdict per claim and row, printed and written to "
        "claims.md / claims.json in the aggregate",
    )
    return p


@exit_on_user_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from cluster.driver import aggregate_lock
    from uncertainty_robust.audit import AuditRules
    from uncertainty_robust.checkpoint import free_bytes, is_disk_full
    from uncertainty_robust.report import BootstrapSpec, aggregate
    from uncertainty_robust.rundir import RunDir

    if args.bootstrap is not None and not 100 <= args.bootstrap <= 10**6:
        raise UserError(f"--bootstrap: {args.bootstrap} replicates; give 100 to 1000000")
    if not args.run_dir.is_dir():
        raise UserError(f"{args.run_dir} is not a directory")
    out = args.out if args.out is not None else RunDir(args.run_dir).aggregate_for(args.checkpoint)
    claims = None
    if args.claims is not None:
        from uncertainty_robust.report import claims as claims_mod

        claims = claims_mod.load(args.claims)  # a bad file: one line, before any work
    try:
        with aggregate_lock(out):  # one writer per aggregate directory: a second one is refused
            s = aggregate(
                args.run_dir,
                out=out,
                transfer=not args.no_transfer,
                rules=AuditRules(large_eps=args.large_eps),
                device=args.device,
                checkpoint=args.checkpoint,
                bootstrap=BootstrapSpec(n_boot=args.bootstrap) if args.bootstrap else BootstrapSpec(),
            )
    except UserError:
        raise
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback from inside a bootstrap
        print(
            f"interrupted (SIGINT); {out} is as it was (a new aggregate replaces it only when complete): "
            "the same command runs it again",
            file=sys.stderr,
        )
        return 130
    except (OSError, RuntimeError) as e:
        if is_disk_full(e):  # ENOSPC, or PyTorch's write failure under it
            raise DiskFull(getattr(e, "filename", None) or out, free_bytes(out)) from None
        if isinstance(e, (PermissionError, FileExistsError, NotADirectoryError)) or (
            isinstance(e, OSError) and e.errno == errno.EROFS
        ):
            raise UserError(f"cannot write {e.filename or out}: {e.strerror}") from None
        raise
    print(s.markdown)
    print(f"{s.n_trials} finished trial(s) aggregated; {len(s.unfinished)} unfinished trial(s) skipped")
    for d, why in s.excluded or []:
        print(f"  excluded: {d} ({why})")
    for d in s.unfinished:
        print(f"  unfinished: {d}")
    n_flags = sum(len(f) for f in s.flags.values())
    print(f"audit: {n_flags} flag(s) on {sum(bool(f) for f in s.flags.values())} trial(s)")
    for name, flags in s.flags.items():
        for f in flags:
            print(f"  {name}: {f}")
    print(f"written to {s.out} (tensorboard --logdir {s.out / 'tb'})")
    if claims is not None:
        rows = claims_mod.write(s.out, claims)
        print()
        print(claims_mod.markdown(rows, claims), end="")
        counts = {v: sum(r["verdict"] == v for r in rows) for v in claims_mod.VERDICTS}
        print(
            "claims: "
            + ", ".join(f"{n} {v}" for v, n in counts.items())
            + f" (written to {s.out / 'claims.md'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
