#!/usr/bin/env bash
# Regenerates the reproduction's tables and figures from the committed grids, as a user would:
# both sweeps through sweeps/launch.py on SLURM (the local cluster: slurm/local-cluster/slurm-local.sh up),
# then the aggregation, then the compact tables in results/. A finished run is not retrained
# (relaunching a finished run only re-aggregates).
#   bash results/make_report.sh [PYTHON]      (default: python)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${1:-python}
for g in repro_mnist repro_fmnist; do
  "$PY" sweeps/launch.py --grid "$g" --partition debug --cpus-per-node 2 --storage runs --wait
  "$PY" sweeps/aggregate.py "runs/$g"
  rm -rf "results/$g" && mkdir -p "results/$g"
  cp -r "runs/$g/aggregate/figures" "runs/$g/aggregate/tables.md" "runs/$g/aggregate/summary.json" "results/$g/"
  cp "runs/$g/aggregate"/table_*.csv "runs/$g/aggregate"/table_*.json "results/$g/"
  [ -d "runs/$g/aggregate/examples" ] && cp -r "runs/$g/aggregate/examples" "results/$g/"
  "$PY" results/summarize.py "runs/$g" > "results/$g/summary.md"
done
