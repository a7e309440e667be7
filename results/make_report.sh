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
  repro_fmnist_seeds5 repro_fmnist_adv_fraction_seeds5 repro_mnist_seeds5)
for g in "${parts[@]}"; do
  "$PY" sweeps/launch.py --grid "$g" --partition debug --cpus-per-node 2 --storage runs --no-aggregate --wait -q
  # the *_seeds5 parts only add seeds 3-4 to their parent's rows: reported through the combined
  # aggregates below, not alone (2 seeds)
  [[ $g == *_seeds5 ]] && continue
  "$PY" sweeps/aggregate.py "runs/$g"
  rm -rf "results/$g" && mkdir -p "results/$g"
  cp -r "runs/$g/aggregate/figures" "runs/$g/aggregate/tables.md" "runs/$g/aggregate/summary.json" "results/$g/"
  cp "runs/$g/aggregate"/table_*.csv "runs/$g/aggregate"/table_*.json "runs/$g/aggregate/jacobian_correlation.json" "results/$g/"
  [ -d "runs/$g/aggregate/examples" ] && cp -r "runs/$g/aggregate/examples" "results/$g/"
  "$PY" results/summarize.py "runs/$g" > "results/$g/summary.md"
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
  rm -rf "results/$out" && mkdir -p "results/$out"
  cp -r "$tmp/aggregate/figures" "$tmp/aggregate/tables.md" "$tmp/aggregate/summary.json" \
    "$tmp/aggregate"/table_*.csv "$tmp/aggregate"/table_*.json "$tmp/aggregate/jacobian_correlation.json" "results/$out/"
  "$PY" results/summarize.py "$tmp" > "results/$out/summary.md"
}
combine combined repro_fmnist
combine mnist_combined repro_mnist
