#!/usr/bin/env bash
# One GPU call (at most 9 minutes): run bench/gpu_speed.py and always end with its table.
#
#   bash bench/gpu_run.sh            # on the GPU machine, from the repository root
#
# Writes $OUT/gpu_speed.json (rewritten after every part, so a kill keeps what was measured)
# and $OUT/gpu_speed.log. The Python process gets a hard limit of 510 s; its own budget stops
# starting new parts after 430 s. If a CIFAR subset exported with
#   python -m bench.gpu_speed --export-cifar-subset bench_data/cifar_subset.npz
# travels with the call (carry bench_data), the fp32/bf16 equality runs use it; else digits.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
extra=()
if [ -f bench_data/cifar_subset.npz ]; then
    extra+=(--equality-npz bench_data/cifar_subset.npz)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/nvidia_smi.txt"
timeout -k 10 510 "$PY" -m bench.gpu_speed --budget-s 430 --out "$OUT" "${extra[@]}" 2>&1 | tee "$OUT/gpu_speed.log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
    echo "[gpu_run] gpu_speed exited with $status; table from the partial JSON:"
    "$PY" -m bench.gpu_speed --table-only "$OUT/gpu_speed.json"
fi
exit "$status"
