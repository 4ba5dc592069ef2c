#!/usr/bin/env bash
# One GPU call (at most 9 minutes): CUDA correctness tests, the speed benchmark, the Hessian
# benchmark and a short real CIFAR-10 run, each under its own time limit so one slow part
# cannot take the others with it.
#
#   bash bench/gpu_run.sh            # on the GPU machine, from the repository root
#
# Data: the CIFAR-10 JPEG copy at $GPU_DATA (default .gpu_data/cifar10-jpg, carried with the
# call); without it the equality runs use digits and the real CIFAR run is skipped.
# Writes into $OUT: nvidia_smi.txt, pytest_cuda.txt, gpu_speed.json/.log, hessian_*.json,
# cifar_run/ (metrics.jsonl, config.json) and a final summary on stdout.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA="${GPU_DATA:-.gpu_data/cifar10-jpg}"
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 \
    | tee "$OUT/nvidia_smi.txt"
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])"

echo "[gpu_run] $(elapsed) s: CUDA tests"
if "$PY" -c "import pytest" 2>/dev/null; then
    timeout -k 5 100 "$PY" -m pytest -q -p no:cacheprovider -k "cuda" \
        tests/test_graphs.py tests/test_data.py tests/test_models.py 2>&1 | tail -15 \
        | tee "$OUT/pytest_cuda.txt"
else
    echo "pytest not installed on this machine: CUDA tests skipped" | tee "$OUT/pytest_cuda.txt"
fi

echo "[gpu_run] $(elapsed) s: speed"
extra=()
if [ -d "$DATA" ]; then
    extra+=(--equality-data "imagefolder:$DATA")
fi
timeout -k 10 290 "$PY" -m bench.gpu_speed --budget-s 270 --no-compile --out "$OUT" \
    "${extra[@]}" 2>&1 | tee "$OUT/gpu_speed.log" | grep -v "^\[gpu_speed\] .*needs" | tail -45
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    echo "[gpu_run] gpu_speed stopped early; table from the partial JSON:"
    "$PY" -m bench.gpu_speed --table-only "$OUT/gpu_speed.json"
fi

echo "[gpu_run] $(elapsed) s: Hessian"
# the library defaults, the behaviour before compaction and the new stop rule, and the new
# rule with forward-over-reverse HVPs; per-example power iteration (PyHessian) beside them
timeout -k 5 130 "$PY" bench/hessian_bench.py --n 256 --batch 256 --width 1.0 \
    --train-steps 400 --dtype float64 --methods lanczos,power,power_oracle \
    --lanczos-configs "residual/5/nocompact/fwd-rev,eigenvalue/2/compact/fwd-rev" \
    --json "$OUT/hessian_f64.json" > "$OUT/hessian_f64.log" 2>&1
tail -c 600 "$OUT/hessian_f64.log"

left=$(( 520 - $(elapsed) ))
if [ -d "$DATA" ] && [ "$left" -gt 60 ]; then
    echo "[gpu_run] $(elapsed) s: real CIFAR-10 run, 2 epochs (limit ${left} s)"
    timeout -k 5 "$left" "$PY" -c "from harness.cli import main; main()" train \
        --dataset "imagefolder:$DATA" --epochs 2 --out "$OUT/cifar_run" --no-progress 2>&1 \
        | tail -8
fi
left=$(( 540 - $(elapsed) ))
if [ "$left" -gt 50 ]; then
    echo "[gpu_run] $(elapsed) s: Hessian, float32 HVPs (TF32 off), limit ${left} s"
    timeout -k 5 "$left" "$PY" bench/hessian_bench.py --n 256 --batch 256 --width 1.0 \
        --train-steps 400 --dtype float32 --methods lanczos,power \
        --json "$OUT/hessian_f32.json" > "$OUT/hessian_f32.log" 2>&1
    tail -c 400 "$OUT/hessian_f32.log"
fi
echo "[gpu_run] done after $(elapsed) s"
