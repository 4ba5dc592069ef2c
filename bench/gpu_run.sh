#!/usr/bin/env bash
# One GPU call (at most 9 minutes): CUDA correctness tests, the speed benchmark, the Hessian
# benchmark, a short real CIFAR-10 run and (optionally) the attack's precision check and
# torch.compile, each under its own time limit so that one slow part cannot take the others with it.
#
#   bash bench/gpu_run.sh                                  # tests, cifar, speed, hessian
#   SECTIONS=speed SPEED_PARTS=env,flops,ours_epoch,profile bash bench/gpu_run.sh
#                                                          # where the step's GPU time goes
#   SECTIONS=tests,cifar,speed,compile SPEED_PARTS=env,flops,ours_epoch,equality \
#       bash bench/gpu_run.sh
#   SECTIONS=tests,speed,compile SPEED_PARTS=env,flops,ours_epoch,ours_nchw,profile \
#       COMPILE_PARTS=env,flops,compile_max_autotune COMPILE_UNTIL_S=560 bash bench/gpu_run.sh
#   SECTIONS=cifar CIFAR_ARGS=--compile bash bench/gpu_run.sh   # extra harness train options
#   SECTIONS=tests,precision,speed SPEED_PARTS=env,flops,ours_epoch,equality bash bench/gpu_run.sh
#                                                          # the next call: fp16 attack fix on a GPU
#   SECTIONS=fulltest bash bench/gpu_run.sh                # lambda_max and lambda_min (float64,
#       with error bounds) of all 10,000 CIFAR-10 test images, full-width PreActResNet-18 trained
#       200 SGD steps here (FULLTEST_CKPT=path: a checkpoint instead); goal under 2 minutes.
#       Needs the CIFAR-10 data (below). FULLTEST_LIMIT_S (150) stops starting batches after that
#       many Hessian seconds; FULLTEST_BATCH (500, halved on running out of memory).
#
# Data: the CIFAR-10 JPEG copy, from bench_data/cifar10-jpg.tar.gz when it travels with the call
#   (tar czf bench_data/cifar10-jpg.tar.gz -C ../shared/data cifar10-jpg   # ~20 MB)
# or from $GPU_DATA; without it the equality runs use digits and the CIFAR run is skipped.
# Writes into $OUT: nvidia_smi.txt, pytest_cuda.txt, gpu_speed.json/.log, hessian_*.json,
# cifar_run/ (config.json, metrics.jsonl), compile/gpu_speed.json, attack_precision.json,
# full_test_hessian.json/.log.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SECTIONS=",${SECTIONS:-tests,cifar,speed,hessian},"
SPEED_PARTS="${SPEED_PARTS:-}"
COMPILE_PARTS="${COMPILE_PARTS:-env,flops,compile}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
want() { [[ "$SECTIONS" == *",$1,"* ]]; }

DATA="${GPU_DATA:-}"
if [ -z "$DATA" ] && [ -f bench_data/cifar10-jpg.tar.gz ]; then
    mkdir -p /tmp/lowcurv_data && tar xzf bench_data/cifar10-jpg.tar.gz -C /tmp/lowcurv_data \
        && DATA=/tmp/lowcurv_data/cifar10-jpg
fi
echo "[gpu_run] data: ${DATA:-none} (extracted after $(elapsed) s)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 \
    | tee "$OUT/nvidia_smi.txt"
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])"

if want tests; then
    echo "[gpu_run] $(elapsed) s: CUDA tests"
    if "$PY" -c "import pytest" 2>/dev/null; then
        # tests/conftest.py hides GPUs unless CUDA_VISIBLE_DEVICES is set
        CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" timeout -k 5 150 "$PY" -m pytest -q \
            -p no:cacheprovider -k "cuda" tests/test_graphs.py tests/test_data.py tests/test_fp16.py \
            tests/test_models.py 2>&1 | tail -15 | tee "$OUT/pytest_cuda.txt"
    else
        echo "pytest not installed here: CUDA tests skipped" | tee "$OUT/pytest_cuda.txt"
    fi
fi

if want precision; then
    echo "[gpu_run] $(elapsed) s: the attack under bf16 and fp16 against fp32"
    timeout -k 5 120 "$PY" bench/attack_precision.py --device cuda --n 512 --width 1 \
        > "$OUT/attack_precision.json" 2>&1
    tail -c 1500 "$OUT/attack_precision.json"
fi

if want cifar && [ -n "$DATA" ]; then
    echo "[gpu_run] $(elapsed) s: harness train on CIFAR-10 (45k/5k/10k), 2 epochs"
    timeout -k 5 "${CIFAR_LIMIT_S:-170}" "$PY" -c "from harness.cli import main; main()" train \
        --dataset "imagefolder:$DATA" --epochs 2 --out "$OUT/cifar_run" --no-progress \
        ${CIFAR_ARGS:-} 2>&1 \
        | tail -6
fi

if want speed; then
    echo "[gpu_run] $(elapsed) s: speed"
    extra=()
    [ -n "$DATA" ] && extra+=(--equality-data "imagefolder:$DATA")
    [ -n "$SPEED_PARTS" ] && extra+=(--parts "$SPEED_PARTS")
    timeout -k 10 290 "$PY" -m bench.gpu_speed --budget-s 270 --no-compile --out "$OUT" \
        "${extra[@]}" > "$OUT/gpu_speed.log" 2>&1
    "$PY" -m bench.gpu_speed --table-only "$OUT/gpu_speed.json"
fi

if want hessian; then
    echo "[gpu_run] $(elapsed) s: Hessian"
    # the library defaults (stop on the error bound, float64), the former defaults (stop on the
    # estimate, check every 2) in float64 and float32, the bound rule in float32; per-example
    # power iteration (PyHessian) beside them; every row checked against the float64 reference
    timeout -k 5 130 "$PY" bench/hessian_bench.py --n 256 --batch 256 --width 1.0 \
        --train-steps 400 --dtype float64 --methods lanczos,lanczos_old,power,power_oracle \
        --lanczos-configs "eigenvalue/2/always/rev-rev/float32/same,residual/1/compact/rev-rev/float32" \
        --json "$OUT/hessian_f64.json" > "$OUT/hessian_f64.log" 2>&1
    tail -c 300 "$OUT/hessian_f64.log"
fi

if want fulltest; then
    ft=(--batch "${FULLTEST_BATCH:-500}" --limit-s "${FULLTEST_LIMIT_S:-150}"
        --json "$OUT/full_test_hessian.json")
    if [ -n "${FULLTEST_CKPT:-}" ]; then
        ft+=(--ckpt "$FULLTEST_CKPT")
    elif [ -n "$DATA" ]; then
        ft+=(--data "imagefolder:$DATA" --train-steps 200 --train-images 10000)
    fi
    if [ -n "${FULLTEST_CKPT:-}" ] || [ -n "$DATA" ]; then
        echo "[gpu_run] $(elapsed) s: input-Hessian spectra of the whole CIFAR-10 test set"
        timeout -k 10 $(( ${FULLTEST_LIMIT_S:-150} + 150 )) "$PY" bench/full_test_hessian.py \
            "${ft[@]}" > "$OUT/full_test_hessian.log" 2>&1
        tail -4 "$OUT/full_test_hessian.log"
    else
        echo "[gpu_run] fulltest skipped: no CIFAR-10 data (carry bench_data/cifar10-jpg.tar.gz)"
    fi
fi

if want compile; then
    left=$(( ${COMPILE_UNTIL_S:-500} - $(elapsed) ))
    echo "[gpu_run] $(elapsed) s: torch.compile + CUDA graphs (limit ${left} s)"
    mkdir -p "$OUT/compile"
    timeout -k 10 "$left" "$PY" -m bench.gpu_speed --budget-s $(( left - 15 )) --compile \
        --parts "$COMPILE_PARTS" --out "$OUT/compile" > "$OUT/compile/gpu_speed.log" 2>&1
    tail -5 "$OUT/compile/gpu_speed.log"
    "$PY" -m bench.gpu_speed --table-only "$OUT/compile/gpu_speed.json" | grep -i "compile"
fi
echo "[gpu_run] done after $(elapsed) s"
