#!/usr/bin/env bash
# The GPU path of uncertainty_robust, checked in one run on a machine with a CUDA GPU (issue 13):
# the GPU tests, the quickstart grid on the GPU with 1 rank (launch.py --cluster local), AT trials in
# bf16 and fp32, and GPU benchmarks against the goals. About 5-6 minutes expected on one H100; each
# step has a time limit, 560 s in all, so a hung step cannot keep the GPU past ~9.5 minutes.
#
#   bash benchmarks/gpu_check.sh                 # writes benchmarks/results/gpu.md
#   bash benchmarks/gpu_check.sh --cpu-dry-run   # every step on the CPU, tiny sizes: the plumbing only;
#                                                # writes WORK/gpu_dry_run.md, never gpu.md
# Options: --out FILE (the report), --work DIR (logs and step outputs; default a new temporary dir).
# Python: $PYTHON, else .venv/bin/python, else python3, with the project installed: pip install -e
# '.[test,bench]' (torchattacks) and pyautoattack. Without a GPU (and no --cpu-dry-run) it says so in
# one line and exits 1, writing nothing. Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dry=0 out="" work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) dry=1 ;;
    --out) out=${2:?--out needs a file}; shift ;;
    --work) work=${2:?--work needs a directory}; shift ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (--cpu-dry-run, --out FILE, --work DIR)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} RAY_DEDUP_LOGS=0
if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "gpu_check: $PY cannot import torch: use the project's venv (PYTHON=... or .venv/bin/python)" >&2
  exit 1
fi
if [ "$dry" = 0 ]; then
  out=${out:-benchmarks/results/gpu.md}
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no GPU found (torch.cuda.is_available() is False): nothing run, $out not written" >&2
    exit 1
  fi
fi
work=${work:-$(mktemp -d -t ur-gpu-check-XXXXXX)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
if [ "$dry" = 1 ]; then
  out=${out:-$work/gpu_dry_run.md}
  case "$(cd "$(dirname "$out")" 2>/dev/null && pwd)/$(basename "$out")" in
    "$PWD/benchmarks/results/gpu.md")
      echo "gpu_check: a dry run never writes benchmarks/results/gpu.md (that file holds GPU results)" >&2
      exit 2 ;;
  esac
  flag=(--dry) scale=3 # a 2-core CPU is slower at Ray's start and at the tiny trainings than a GPU node
else
  flag=() scale=1
fi
: > "$work/steps.jsonl"
failed=0
echo "gpu_check: $([ "$dry" = 1 ] && echo 'CPU DRY RUN (not GPU results)' || echo GPU run), work dir $work"
command -v nvidia-smi > /dev/null && nvidia-smi -L > "$work/nvidia-smi.txt" 2>&1

# step NAME SECONDS WHAT CMD...: run CMD with a time limit, log to WORK/NAME.log, record exit and time
step() {
  local name=$1 limit=$(($2 * scale)) what=$3 t0 rc secs
  shift 3
  echo "== $name: $what (at most ${limit} s)"
  t0=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" > "$work/$name.log" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  tail -n 4 "$work/$name.log" | sed 's/^/   /'
  echo "   -> exit $rc in ${secs} s"
  printf '{"step": "%s", "rc": %d, "seconds": %d, "what": "%s"}\n' "$name" "$rc" "$secs" "$what" >> "$work/steps.jsonl"
  [ "$rc" = 0 ] || failed=1
}

tests_env=()
[ "$dry" = 0 ] && tests_env=(env UR_REQUIRE_GPU=1)
step tests 110 "pytest -m gpu tests/test_gpu.py" \
  "${tests_env[@]}" "$PY" -m pytest -q -rs -m gpu tests/test_gpu.py -p no:cacheprovider --junitxml="$work/tests.xml"
step quickstart-grid 30 "sweeps/quickstart.yaml for 1 rank on the GPU" \
  "$PY" -m benchmarks.gpu_bench quickstart-grid "$work" "${flag[@]}"
step quickstart 160 "launch.py --cluster local, the 4 quickstart trials" \
  "$PY" sweeps/launch.py --grid "$work/quickstart.yaml" --cluster local --storage "$work/runs" \
  --name gpu_quickstart -q
step precision 130 "AT trials in bf16 and fp32 (run_trial), speed and accuracy" \
  "$PY" -m benchmarks.gpu_bench precision "$work" "${flag[@]}"
step bench 130 "attacks vs torchattacks, AutoAttack, Jacobian floor, AT epoch" \
  "$PY" -m benchmarks.gpu_bench bench "$work" "${flag[@]}"
mkdir -p "$(dirname "$out")"
if ! "$PY" -m benchmarks.gpu_bench render "$work" "$out" "${flag[@]}" > "$work/render.log" 2>&1; then
  cat "$work/render.log" >&2
  echo "gpu_check: the report could not be written" >&2
  exit 1
fi
echo "gpu_check: wrote $out ($([ "$dry" = 1 ] && echo 'CPU dry run: not GPU results' || echo 'GPU results')); logs in $work"
exit $failed
