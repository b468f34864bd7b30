#!/usr/bin/env bash
# The GPU check of issue 12, end to end: the device tests (tests/test_cuda.py), then bench/gpu.py.
#
#   bash bench/gpu.sh                       # on a GPU machine: CUDA tests + the GPU numbers (< 8 min on an H200)
#   bash bench/gpu.sh --device cpu --quick  # CPU smoke run of the same code (a couple of minutes on 2 cores)
#
# Ray (the test of gpu auto, the sweep) binds 127.0.0.1; run it in a loopback-only network namespace:
#   unshare -rn bash -c 'ip link set lo up && RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 bash bench/gpu.sh'
# Arguments are bench/gpu.py's (--device, --quick, --threads, --repeats); the default device is cuda.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --device) device="${args[$((i + 1))]:-}" ;;
    --device=*) device="${args[$i]#--device=}" ;;
  esac
done

if [[ "$device" == cuda* ]]; then
  python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "bench/gpu.sh: --device cuda, but torch sees no CUDA device here; use --device cpu --quick for the CPU smoke run")'
  markers=(-m cuda)  # only the CUDA variants: a skip here would hide a missing GPU
else
  markers=()         # the CPU variants run; the CUDA ones are skipped with the reason
fi

echo "## tests/test_cuda.py ${markers[*]:-(CPU variants)}"
started=$SECONDS
python -m pytest -q -p no:cacheprovider "${markers[@]}" tests/test_cuda.py
echo "# ($((SECONDS - started)) s)"

python bench/gpu.py "$@"
