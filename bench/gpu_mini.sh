#!/usr/bin/env bash
# One GPU call (under 9 minutes): the runs of an experiment spec at the gpu-mini scale, each with
# its Final Test, the table and figures rendered as they finish; no run is ever cut short.
#
#   bash bench/gpu_mini.sh table1      # shortcut: table1-cifar10 (relu lisht gelu mish silu)
#   bash bench/gpu_mini.sh tables23    # shortcut: table2-pswish and table3-leakyrelu
#   bash bench/gpu_mini.sh SPEC...     # any spec name or .json path, e.g. pswish-curvature
#
# Data: the CIFAR-10 JPEG copy from bench_data/cifar10-jpg.tar.gz when it travels with the call
#   (tar czf bench_data/cifar10-jpg.tar.gz -C ../shared/data cifar10-jpg   # as bench/gpu_run.sh)
# or from $GPU_DATA (a folder, or any dataset spec such as digits).
#
# Never cut (bench/gpu_mini.py): a probe first trains the first PARALLEL runs' settings side by
# side for 2 epochs and times one Final Test; from that, each run's seconds are predicted, and a
# run is started only if it can finish (training, then the Final Test) before LIMIT_S minus
# RESERVE_S. A run that is started always finishes its whole schedule; one that would not fit is
# not started and the summary says so. The Final Test: `harness eval --n 1000 --steps 20
# --restarts 5` (EVAL_ARGS) on last.pt and best.pt, on the GPU, written as eval_last.json and
# eval_best.json into the run folder.
#
# Writes into $OUT (small files only; checkpoints stay in $RUNS_DIR):
#   runs/SCALE/SPEC/RUN/{config.json,metrics.jsonl,DONE,eval_last.json,eval_best.json,
#   hessian_curve.json if made}, runs/SCALE/SPEC/spec.json, logs/ (one per run, and the probe's),
#   figures/ (the paper_figs entries that read the specs, re-rendered after each run),
#   summary.txt (the paper_figs report), gpu_mini_summary.json (per run: status, predicted and
#   measured seconds, epochs trained, seconds per epoch; the probe's timings; device, date).
#
# Knobs (environment): SCALE (gpu-mini), SEEDS (the spec's; comma list), ONLY ("relu silu"),
#   PARALLEL (runs at a time, default all), LIMIT_S (500), RESERVE_S (45), RUN_S (seconds per run:
#   skips the probe), EVAL_ARGS, SETS ("epochs=2 width=0.0625": --set for every run), RUNS_DIR
#   (/tmp/gpu_mini_runs), PYTHON. Resuming later: the same command with RUNS_DIR pointing at the
#   kept run folders (finished runs with both Final Tests are skipped). The suite runs this script
#   on CPU with digits (tests/test_gpu_mini_script.py).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-out}"
PY="${PYTHON:-python3}"
SCALE="${SCALE:-gpu-mini}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ "$#" -ge 1 ] || set -- table1
specs=()
for arg in "$@"; do
    case "$arg" in
        table1) specs+=(table1-cifar10) ;;
        tables23) specs+=(table2-pswish table3-leakyrelu) ;;
        *) specs+=("$arg") ;;
    esac
done
"$PY" -m bench.gpu_mini --check --scale "$SCALE" "${specs[@]}" || exit 2

DATA="${GPU_DATA:-}"
if [ -z "$DATA" ] && [ -f bench_data/cifar10-jpg.tar.gz ]; then
    mkdir -p /tmp/lowcurv_data && tar xzf bench_data/cifar10-jpg.tar.gz -C /tmp/lowcurv_data \
        && DATA=/tmp/lowcurv_data/cifar10-jpg
fi
if [ -n "$DATA" ] && [ -d "$DATA" ]; then
    DATA="imagefolder:$DATA"
elif [ -z "$DATA" ] && [ ! -d ../shared/data/cifar10-jpg ]; then
    echo "[gpu_mini] no data: carry bench_data/cifar10-jpg.tar.gz or set GPU_DATA" >&2; exit 2
fi
echo "[gpu_mini] specs ${specs[*]}, scale $SCALE, data ${DATA:-spec default}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
extra=()
[ -n "${RUN_S:-}" ] && extra+=(--run-s "$RUN_S")
"$PY" -m bench.gpu_mini "${specs[@]}" --scale "$SCALE" --seeds "${SEEDS:-}" \
    --only "${ONLY:-}" --parallel "${PARALLEL:-0}" --limit-s "${LIMIT_S:-500}" \
    --reserve-s "${RESERVE_S:-45}" --runs-dir "${RUNS_DIR:-/tmp/gpu_mini_runs}" --out "$OUT" \
    --data "$DATA" --sets "${SETS:-}" --eval-args="${EVAL_ARGS:---n 1000 --steps 20 --restarts 5}" \
    --python "$PY" "${extra[@]}"
rc=$?
[ -f "$OUT/summary.txt" ] && cat "$OUT/summary.txt"
exit $rc
