#!/usr/bin/env bash
# One short pass over every GPU code path, made to run whole in one call on a bare GPU machine
# (torch, h5py and pyyaml; no pip install, no torchvision / matplotlib / DALI / submitit needed):
#
#   PYTHONPATH=src bash benchmarks/gpu_check.sh                    # on a GPU machine, <= 7 minutes
#   DALI_PACK=.dali_pack PYTHONPATH=src bash benchmarks/gpu_check.sh  # DALI from its carried parts
#   GPU_CHECK_DEVICE=cpu PYTHONPATH=src bash benchmarks/gpu_check.sh   # the same steps shrunk, on a CPU
#
# Steps, in order of value: the emulated 12 GB card's boundary (PyramidNet-110 alpha=270 fp32:
# batch 256 completes, 512 is oom), no host sync in the training loop (sync debug mode "error"),
# bf16 inside DataParallel's worker threads, NCCL DDP (world size 1, torchrun), two gloo DDP ranks
# on the one GPU, dp / dp_balanced / fp16 + GradScaler, bf16 + channels_last + compile, bench
# (baseline vs optimized when torchvision imports, else the optimized path alone), DALI on the GPU
# (single with sync debug, two gloo ranks; from DALI_PACK when the image lacks it), bench-loader for
# each loader that imports, the report when matplotlib imports.  A step whose package is missing is
# skipped with the reason; every run step checks the status in its metrics.h5.
#
# Runs write under a temporary folder; only small files (logs, metrics.h5, config.yaml, JSON) are
# copied to $OUT (default results/gpu_check).  Exit code: the number of failed steps.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
DEV=${GPU_CHECK_DEVICE:-cuda}
PY=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH=${PYTHONPATH:-src}
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
RUNS=$WORK/runs
PROBE="$PY benchmarks/gpu_check_probes.py"
mkdir -p "$OUT" "$RUNS"
OUT_ABS=$(cd "$OUT" && pwd)
failed=0
skipped=0
t_start=$SECONDS

outcome() {  # outcome NAME SECONDS EXIT_CODE: print one step's line and count a failure
    if [ "$3" -eq 0 ]; then
        echo "ok    $1 ($2 s): $(tail -n 1 "$WORK/$1.log" | cut -c1-220)"
    else
        echo "FAIL  $1 ($2 s): $(tail -n 3 "$WORK/$1.log" | tr '\n' ' ' | cut -c1-400)"
        failed=$((failed + 1))
    fi
}

step() {  # step NAME LIMIT_S COMMAND...: run one check under a time limit; its log goes to $WORK
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS rc=0
    timeout -k 5 "$limit" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    outcome "$name" $((SECONDS - t0)) "$rc"
}

skip() {  # skip NAME REASON
    echo "skip  $1: $2"
    skipped=$((skipped + 1))
}

have() { $PROBE importable "$1" >/dev/null 2>&1; }

run_status() {  # run_status NAME LIMIT STATUS ARGS...: a pyramidrepro run (its exit code is the status's), then its metrics.h5 status
    local name=$1 limit=$2 expect=$3 want=0
    shift 3
    case $expect in oom) want=3 ;; nan) want=4 ;; esac  # schema.EXIT_CODES
    step "$name" "$limit" bash -c 'rc=0; "${@:2}" || rc=$?; [ "$rc" -eq "$1" ] || { echo "exit $rc, expected $1"; exit 1; }' \
        _ "$want" "$@" --out "$RUNS" --run-id "$name" --no-progress
    step "${name}_status" 30 $PROBE status "$RUNS" "$name" "$expect"
}

if [ "$DEV" = cuda ]; then
    SMOKE=(experiments/smoke.yaml --set devices.device=cuda --set train.max_steps=30 --set train.warmup_steps=5
           --set train.log_every=10)
    BIG=(experiments/pyramidnet110_a270_single.yaml --set data.source=synthetic --set data.synthetic_train_size=8192
         --set devices.memory_limit_gb=11.91 --set train.max_steps=12 --set train.warmup_steps=4)
    OOM_512=()
    BENCH=(110 270 256 10)
    LOADER_BENCH=(50000 3)
else  # shrunk: a tiny model and batch (fp16 has no fast CPU kernels); the 512 case's OOM is injected (a CPU
      # has no allocator cap to hit)
    SMOKE=(experiments/smoke.yaml --set devices.device=cpu --set model.depth=8 --set model.alpha=4 --set train.threads=1
           --set train.batch_size=16 --set train.max_steps=8 --set train.warmup_steps=2 --set train.log_every=3)
    BIG=("${SMOKE[@]}")
    OOM_512=(env PYRAMIDREPRO_INJECT_OOM=0:setup)
    BENCH=(8 4 16 3)
    LOADER_BENCH=(2048 2)
fi
RUN=("$PY" -m pyramidrepro run)

compile_run() {
    run_status compile_bf16 240 completed "${RUN[@]}" "${SMOKE[@]}" --set train.precision=bf16 \
        --set train.channels_last=true --set train.compile=true --set train.compile_mode=default
    return "$failed"
}
if [ "$DEV" != cuda ]; then  # a subshell with its own count: its failures are added when it is waited for
    (failed=0; compile_run) >"$WORK/compile_bf16.out" 2>&1 &
    compile_pid=$!
fi

step env 60 $PROBE env "$WORK/env.json" "$DEV"

# 1. the paper's card, emulated: 256 fits, 512 does not
run_status cap_b256 150 completed "${RUN[@]}" "${BIG[@]}" --set train.batch_size=256
run_status cap_b512 150 oom "${OOM_512[@]}" "${RUN[@]}" "${BIG[@]}" --set train.batch_size=512

# 2. no host sync in the step loop (default loader, fp32 and bf16; fp16 below)
run_status sync_fp32 90 completed "${RUN[@]}" "${SMOKE[@]}" --set train.sync_debug=true
run_status sync_bf16 90 completed "${RUN[@]}" "${SMOKE[@]}" --set train.sync_debug=true --set train.precision=bf16

# 3. bf16 inside DataParallel's worker threads
step dp_thread_bf16 60 $PROBE dp-thread "$DEV"

# 4. DDP: NCCL with world size 1 under torchrun; two gloo ranks on the one device
if [ "$DEV" = cuda ]; then BACKEND=nccl; else BACKEND=gloo; fi
run_status ddp_${BACKEND}_ws1 120 completed "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 \
    -m pyramidrepro run "${SMOKE[@]}" --set train.mode=ddp --set train.backend=$BACKEND \
    --set train.measure_bounds=true  # its slowest-rank reduction must run on the device (NCCL)
run_status ddp_gloo_2ranks 120 completed "${RUN[@]}" "${SMOKE[@]}" --nproc 2 --set train.mode=ddp \
    --set train.backend=gloo

# 5. DataParallel, the balanced DataParallel, fp16 with its GradScaler (fused SGD: no sync either)
run_status dp 90 completed "${RUN[@]}" "${SMOKE[@]}" --set train.mode=dp --set train.allow_cpu_dp=true
run_status dp_balanced_bf16 90 completed "${RUN[@]}" "${SMOKE[@]}" --set train.mode=dp_balanced \
    --set train.precision=bf16 --set train.allow_cpu_dp=true
run_status fp16_scaler 90 completed "${RUN[@]}" "${SMOKE[@]}" --set train.precision=fp16 --set train.sync_debug=true

# 6. bf16 + channels_last + torch.compile (default mode) on a small model.  On a CPU its cold
#    compile (~45 s on 2 cores) overlaps the other steps: it was started first, in the background.
if [ "$DEV" = cuda ]; then
    compile_run
else
    wait "$compile_pid"
    compile_rc=$?
    cat "$WORK/compile_bf16.out"
    [ "$compile_rc" -eq 0 ] || failed=$((failed + compile_rc))
fi

# 7. bench: the baseline needs torchvision's DataLoader; without it, the optimized path alone
read -r B_DEPTH B_ALPHA B_BATCH B_STEPS <<<"${BENCH[*]}"
if have torchvision; then
    step bench 240 "$PY" -m pyramidrepro bench --device "$DEV" --depth "$B_DEPTH" --alpha "$B_ALPHA" \
        --batch-size "$B_BATCH" --steps "$B_STEPS" --repeats 2 --compile off --json-out "$WORK/bench.json"
else
    skip bench_baseline "torchvision does not import: the optimized path alone"
    step bench_optimized 180 $PROBE optimized "$WORK/bench_optimized.json" "$DEV" "$B_DEPTH" "$B_ALPHA" \
        "$B_BATCH" "$B_STEPS"
fi

# 8. DALI feeding the device: the pipeline on the training GPU alone (with sync debug: no host sync
#    per batch) and for two gloo ranks on the one GPU, then bench-loader for each loader there.
#    A device image without DALI takes it from a pack (benchmarks/dali_pack.py) carried in parts.
if [ -n "${DALI_PACK:-}" ]; then
    step dali_unpack 120 "$PY" benchmarks/dali_pack.py unpack "$DALI_PACK" "$WORK/dali_site"
    [ -d "$WORK/dali_site" ] && export PYTHONPATH="$WORK/dali_site:$PYTHONPATH"  # made only when whole
fi
if have nvidia.dali; then
    run_status dali_single_sync 150 completed "${RUN[@]}" "${SMOKE[@]}" --set data.loader=dali \
        --set train.sync_debug=true
    run_status dali_gloo_2ranks 150 completed "${RUN[@]}" "${SMOKE[@]}" --set data.loader=dali --nproc 2 \
        --set train.mode=ddp --set train.backend=gloo
else
    skip dali "nvidia.dali does not import (DALI_PACK=folder brings it: benchmarks/dali_pack.py)"
fi
read -r L_IMAGES L_EPOCHS <<<"${LOADER_BENCH[*]}"
for kind in dali torch torchvision; do
    module=$kind
    case $kind in dali) module=nvidia.dali ;; torch) module=torch ;; esac
    if have "$module"; then
        step "bench_loader_$kind" 120 "$PY" -m pyramidrepro bench-loader --loader "$kind" --device "$DEV" \
            --images "$L_IMAGES" --epochs "$L_EPOCHS" --num-workers 4
    else
        skip "bench_loader_$kind" "$module does not import"
    fi
done

# 9. the report over every run above
if have matplotlib; then
    step report 90 "$PY" -m pyramidrepro report "$RUNS" --out "$WORK/report"
else
    skip report "matplotlib does not import"
fi

# only small files come back: never checkpoints
(cd "$WORK" && find . -type f \( -name '*.log' -o -name '*.json' -o -name '*.h5' -o -name '*.yaml' \
    -o -name '*.md' -o -name '*.png' \) -size -5M -print0 | xargs -0 -r cp --parents -t "$OUT_ABS")
rm -rf "$WORK"
echo "gpu_check: $failed failed, $skipped skipped step(s) in $((SECONDS - t_start)) s on $DEV; files under $OUT"
exit "$failed"
