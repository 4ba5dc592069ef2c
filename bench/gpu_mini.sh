#!/usr/bin/env bash
# One GPU call (under 9 minutes): a paper table at the gpu-mini scale, one seed, with the
# input-Hessian lambda_max every 10 epochs, rendering the table and figures as it goes.
#
#   bash bench/gpu_mini.sh table1      # Table 1 (CIFAR-10): relu lisht gelu mish silu
#   bash bench/gpu_mini.sh tables23    # Tables 2 and 3: PSwish beta x5, LeakyReLU k x5
#
# Data: the CIFAR-10 JPEG copy from bench_data/cifar10-jpg.tar.gz when it travels with the call
#   (tar czf bench_data/cifar10-jpg.tar.gz -C ../shared/data cifar10-jpg   # as bench/gpu_run.sh)
# or from $GPU_DATA (a folder, or any dataset spec such as digits).
#
# Time: budgeted at about 0.8 s per training epoch on an H200 (an estimate) plus per-epoch
# evaluation on 1,500 images and lambda_max every 10 epochs: 80 epochs x 5 runs one after another
# would take about 9-11 minutes, over the limit. So the runs train side by side on the one GPU
# (PARALLEL at a time, default all) and every run is stopped at LIMIT_S (default 500 s) at the
# latest: a run cut short keeps its finished epochs and is marked "partial" in the table.
# Resuming later: the same command with RUNS_DIR pointing at the kept run folders.
#
# Writes into $OUT (small files only; checkpoints stay in $RUNS_DIR):
#   runs/SCALE/SPEC/RUN/{config.json,metrics.jsonl,DONE}, runs/SCALE/SPEC/spec.json,
#   logs/SPEC-RUN.log, figures/ (tables, figures, synthesis; re-rendered after each run ends),
#   summary.txt (the paper_figs report).
#
# Knobs (environment): SCALE (gpu-mini), SEEDS (0), ONLY ("relu silu": a subset of runs),
#   PARALLEL (runs at a time), LIMIT_S, SETS ("epochs=2 width=0.0625": --set for every run),
#   RUNS_DIR (/tmp/gpu_mini_runs), PYTHON. The suite runs this script on CPU with digits
#   (tests/test_gpu_mini_script.py).
set -u
cd "$(dirname "$0")/.."
MODE="${1:-table1}"
OUT="${OUT:-out}"
PY="${PYTHON:-python3}"
SCALE="${SCALE:-gpu-mini}"
SEEDS="${SEEDS:-0}"
LIMIT_S="${LIMIT_S:-500}"
RUNS_DIR="${RUNS_DIR:-/tmp/gpu_mini_runs}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
case "$MODE" in
    table1) SPECS="table1-cifar10"; ENTRIES="table1 fig1 fig3 fig4 synthesis" ;;
    tables23) SPECS="table2-pswish table3-leakyrelu"; ENTRIES="table2 table3 synthesis" ;;
    *) echo "usage: bash bench/gpu_mini.sh table1|tables23 (got '$MODE')" >&2; exit 2 ;;
esac
mkdir -p "$OUT/runs" "$OUT/logs" "$OUT/figures" "$RUNS_DIR"

DATA="${GPU_DATA:-}"
if [ -z "$DATA" ] && [ -f bench_data/cifar10-jpg.tar.gz ]; then
    mkdir -p /tmp/lowcurv_data && tar xzf bench_data/cifar10-jpg.tar.gz -C /tmp/lowcurv_data \
        && DATA=/tmp/lowcurv_data/cifar10-jpg
fi
data_args=()
if [ -n "$DATA" ]; then
    [ -d "$DATA" ] && data_args=(--data "imagefolder:$DATA") || data_args=(--data "$DATA")
elif [ ! -d ../shared/data/cifar10-jpg ]; then
    echo "[gpu_mini] no data: carry bench_data/cifar10-jpg.tar.gz or set GPU_DATA" >&2; exit 2
fi
set_args=()
for kv in ${SETS:-}; do set_args+=(--set "$kv"); done
echo "[gpu_mini] mode $MODE, scale $SCALE, seeds $SEEDS, data ${DATA:-spec default}" \
     "(ready after $(elapsed) s)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

sync_small() {  # the small files of every run into $OUT (checkpoints stay behind)
    (cd "$RUNS_DIR" && find . \( -name config.json -o -name metrics.jsonl -o -name DONE \
        -o -name spec.json -o -name 'eval_*.json' \) -print0 \
        | xargs -0 -r cp --parents -t "$OUT/runs") 2>/dev/null
}
render() {
    sync_small
    only=(); for e in $ENTRIES; do only+=(--only "$e"); done
    timeout -k 5 90 "$PY" -m paper_figs --runs-dir "$OUT/runs" --scale "$SCALE" \
        --out "$OUT/figures" "${only[@]}" > "$OUT/summary.txt" 2>&1
    echo "[gpu_mini] $(elapsed) s: rendered ($(grep -c rendered "$OUT/summary.txt") entries)"
}

jobs_list=()
for spec in $SPECS; do
    runs=$("$PY" -c "from harness.specs import load_spec; import sys; \
print(' '.join(load_spec(sys.argv[1]).run_names(sys.argv[2])))" "$spec" "$SCALE") || exit 2
    for run in $runs; do
        if [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $run "* ]]; then jobs_list+=("$spec/$run"); fi
    done
done
PARALLEL="${PARALLEL:-${#jobs_list[@]}}"
THREADS=$(( $(nproc) / PARALLEL )); [ "$THREADS" -lt 1 ] && THREADS=1
echo "[gpu_mini] ${#jobs_list[@]} runs, $PARALLEL at a time, $THREADS CPU threads each"

declare -A pids=()
launch() {
    local spec="${1%%/*}" run="${1##*/}" left=$(( LIMIT_S - $(elapsed) ))
    [ "$left" -lt 20 ] && { echo "[gpu_mini] no time left for $1"; return; }
    OMP_NUM_THREADS=$THREADS timeout -k 10 "$left" "$PY" -c "from harness.cli import main; main()" \
        sweep "$spec" --scale "$SCALE" --only "$run" --seeds "$SEEDS" --runs-dir "$RUNS_DIR" \
        --no-progress "${data_args[@]}" "${set_args[@]}" > "$OUT/logs/$spec-$run.log" 2>&1 &
    pids[$!]="$1"
}
next=0
last_sync=$(elapsed)
while [ "$next" -lt "${#jobs_list[@]}" ] || [ "${#pids[@]}" -gt 0 ]; do
    while [ "$next" -lt "${#jobs_list[@]}" ] && [ "${#pids[@]}" -lt "$PARALLEL" ]; do
        launch "${jobs_list[$next]}"; next=$(( next + 1 ))
    done
    [ "${#pids[@]}" -eq 0 ] && break
    sleep 2
    ended=0
    for pid in "${!pids[@]}"; do
        kill -0 "$pid" 2>/dev/null && continue
        wait "$pid"; rc=$?
        echo "[gpu_mini] $(elapsed) s: ${pids[$pid]} ended (exit $rc):" \
             "$(tail -1 "$OUT/logs/$(echo "${pids[$pid]}" | tr / -).log")"
        unset "pids[$pid]"; ended=1
    done
    if [ "$ended" = 1 ]; then
        render; last_sync=$(elapsed)
    elif [ $(( $(elapsed) - last_sync )) -ge 30 ]; then
        sync_small; last_sync=$(elapsed)  # epochs so far reach $OUT even if the call is cut
    fi
done
cat "$OUT/summary.txt"
echo "[gpu_mini] done after $(elapsed) s"
