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
  repro_fmnist_adv_fraction repro_fmnist_adv_fraction_at repro_mnist)
for g in "${parts[@]}"; do
  "$PY" sweeps/launch.py --grid "$g" --partition debug --cpus-per-node 2 --storage runs --no-aggregate --wait -q
  "$PY" sweeps/aggregate.py "runs/$g"
  rm -rf "results/$g" && mkdir -p "results/$g"
  cp -r "runs/$g/aggregate/figures" "runs/$g/aggregate/tables.md" "runs/$g/aggregate/summary.json" "results/$g/"
  cp "runs/$g/aggregate"/table_*.csv "runs/$g/aggregate"/table_*.json "runs/$g/aggregate/jacobian_correlation.json" "results/$g/"
  [ -d "runs/$g/aggregate/examples" ] && cp -r "runs/$g/aggregate/examples" "results/$g/"
  "$PY" results/summarize.py "runs/$g" > "results/$g/summary.md"
done
# every Fashion-MNIST part together (the open choices and strengths are paired with the same AT /
# standard trials on the same points and seeds); hard links, so nothing is copied or retrained
rm -rf runs/_combined && mkdir -p runs/_combined
for d in runs/repro_fmnist*/; do cp -al "$d" "runs/_combined/$(basename "$d")"; done
rm -rf runs/_combined/*/aggregate
"$PY" sweeps/aggregate.py runs/_combined --out runs/_combined/aggregate
rm -rf results/combined && mkdir -p results/combined
cp -r runs/_combined/aggregate/figures runs/_combined/aggregate/tables.md runs/_combined/aggregate/summary.json \
  runs/_combined/aggregate/table_*.csv runs/_combined/aggregate/table_*.json \
  runs/_combined/aggregate/jacobian_correlation.json results/combined/
"$PY" results/summarize.py runs/_combined > results/combined/summary.md
