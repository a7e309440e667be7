#!/usr/bin/env bash
# Regenerates the reproduction's tables and figures from the committed grids, as a user would: each
# part through sweeps/launch.py on SLURM (the local cluster: slurm/local-cluster/slurm-local.sh up),
# then the aggregation, then the compact tables in results/<part>/summary.md. A finished run is not
# retrained (relaunching a finished run only re-aggregates). Plan first:
#   python sweeps/launch.py --grid repro_fmnist --dry-run --partition debug --cpus-per-node 2
#   bash results/make_report.sh [PYTHON] [PART ...]   (default: python; every part below)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${1:-python}
shift || true
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(repro_fmnist repro_fmnist_lambdas repro_fmnist_at_lambdas repro_fmnist_entropy_on repro_fmnist_inner_loss
  repro_fmnist_adv_fraction repro_fmnist_adv_fraction_at repro_mnist
  repro_fmnist_seeds5 repro_fmnist_adv_fraction_seeds5 repro_mnist_seeds5
  repro_v3_ladder repro_v3_ladder_16 repro_v3_natural repro_v3_adversarial repro_v3_inner_loss)
# publish RUN OUT: RUN's aggregate (tables, figures, JSON) into results/OUT, with its compact summary
publish() {
  local run=$1 out=$2 a=$1/aggregate
  rm -rf "results/$out" && mkdir -p "results/$out"
  cp -r "$a/figures" "$a/tables.md" "$a/summary.json" "$a"/table_*.csv "$a"/table_*.json \
    "$a/jacobian_correlation.json" "results/$out/"
  # the seed-level data every seed-level test is recomputed from (aggregates since v3)
  if [ -f "$a/trials.csv" ]; then cp "$a/trials.csv" "results/$out/"; fi
  if [ -f "$a/claims.md" ]; then cp "$a/claims.md" "$a/claims.json" "results/$out/"; fi
  "$PY" results/summarize.py "$run" > "results/$out/summary.md"
}
for g in "${parts[@]}"; do
  "$PY" sweeps/launch.py --grid "$g" --partition debug --cpus-per-node 2 --storage runs --no-aggregate --wait -q
  # v3: every finished trial's config, record and per-point outcomes into the repository
  # (results/archive/<part>), so parts run in other sessions or on other machines aggregate together
  [[ $g == repro_v3_* ]] && "$PY" sweeps/archive.py "runs/$g" --out results/archive
  # the *_seeds5 parts only add seeds 3-4 to their parent's rows: reported through the combined
  # aggregates below, not alone (2 seeds)
  [[ $g == *_seeds5 ]] && continue
  [[ $g == repro_v3_ladder* ]] && continue  # v3 part 1: its two runs are reported together, below
  "$PY" sweeps/aggregate.py "runs/$g"
  publish "runs/$g" "$g"
  if [ -d "runs/$g/aggregate/examples" ]; then cp -r "runs/$g/aggregate/examples" "results/$g/"; fi
done
# every part of one dataset together (the open choices, strengths and extra seeds are paired with the
# same AT / standard trials on the same points and seeds); hard links, so nothing is copied or retrained.
# results/combined: Fashion-MNIST (runs/repro_fmnist*); results/mnist_combined: MNIST (runs/repro_mnist*)
combine() {
  local out=$1 pattern=$2 tmp=runs/_$1
  rm -rf "$tmp" && mkdir -p "$tmp"
  for d in runs/$pattern*/; do cp -al "$d" "$tmp/$(basename "$d")"; done
  rm -rf "$tmp"/*/aggregate
  "$PY" sweeps/aggregate.py "$tmp" --out "$tmp/aggregate"
  publish "$tmp" "$out"
}
combine combined repro_fmnist
combine mnist_combined repro_mnist
# v3 part 1, the AT baseline's budget ladder: its two runs (repro_v3_ladder, repro_v3_ladder_16) together
if [ -d runs/repro_v3_ladder ]; then
  combine repro_v3_ladder repro_v3_ladder
  "$PY" results/ladder.py runs/_repro_v3_ladder > results/repro_v3_ladder/ladder.md
fi
# v3 parts 2-4, the claims at the operating point, together (part 2's AT trials are the baseline of
# part 4's rows), from their archives (results/archive: whichever parts have run, on whatever machine),
# with the verdicts of results/claims.yaml. The transfer check needs the models, which archives do
# not hold: it is in each part's own aggregate (results/<part>), "not tested" here.
# A part may be archived whole (repro_v3_adversarial) or by seed (repro_v3_adversarial_s0, ...: the same
# trials, one sweep each); a trial archived twice stops the report.
tmp=runs/_repro_v3
rm -rf "$tmp" && mkdir -p "$tmp"
for d in results/archive/repro_v3_{natural,adversarial,inner_loss}*/; do
  if [ -d "$d" ]; then cp -al "$d" "$tmp/$(basename "$d")"; fi
done
twice=$(find "$tmp" -mindepth 3 -maxdepth 3 -path '*/trials/*' -type d -printf '%f\n' | sort | uniq -d)
if [ -n "$twice" ]; then echo "make_report: archived twice: $twice" >&2; exit 2; fi
if [ -n "$(ls -A "$tmp")" ]; then
  "$PY" sweeps/aggregate.py "$tmp" --out "$tmp/aggregate" --claims results/claims.yaml
  publish "$tmp" repro_v3
  # results/README.md's v3 verdict table, generated from the verdict file (never edited by hand)
  "$PY" -m uncertainty_robust.report.claims results/repro_v3 results/claims.yaml --readme results/README.md >/dev/null
fi
