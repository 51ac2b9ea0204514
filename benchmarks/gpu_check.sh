#!/usr/bin/env bash
# One short pass over the GPU code paths, figures written under $OUT (default results/gpu_check):
#   env.json         torch / CUDA / GPU
#   runs/            NCCL DDP with world size 1, DataParallel on the GPUs present, bf16 + channels_last,
#                    PyramidNet-110 alpha=270 under the paper's 12 GB cap at batch 256 (fits) and 512 (OOM)
#   bench.json/.txt  pyramidrepro bench: seed-style baseline vs optimized, PyramidNet-110 alpha=270, batch 256
#   loader.json      the GPU-resident tensor loader
#   report/          pyramidrepro report over runs/
#
#   bash benchmarks/gpu_check.sh                         # on a GPU machine (pip install --no-deps -e . first)
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh    # the same steps, shrunk, on a CPU (checks the script)
#
# Each step prints its outcome and the script goes on after a failure; the exit code is the
# number of failed steps.  BENCH_COMPILE (default auto) and BENCH_MODES pick the compile modes.
set -u
OUT=${OUT:-results/gpu_check}
DEV=${GPU_CHECK_DEVICE:-cuda}
PY=${PYTHON:-python}
mkdir -p "$OUT/runs"
failed=0

step() {  # step NAME COMMAND...: run, time and report one check
    local name=$1
    shift
    local t0=$SECONDS
    if "$@" >"$OUT/$name.log" 2>&1; then
        echo "ok    $name ($((SECONDS - t0)) s)"
    else
        echo "FAIL  $name ($((SECONDS - t0)) s): $(tail -n 2 "$OUT/$name.log" | tr '\n' ' ')"
        failed=$((failed + 1))
    fi
}

run() {  # run RUN_ID ARGS...: a smoke-sized pyramidrepro run on $DEV
    local id=$1
    shift
    $PY -m pyramidrepro run experiments/smoke.yaml --out "$OUT/runs" --run-id "$id" --no-progress \
        --set devices.device="$DEV" --set train.max_steps=20 --set train.warmup_steps=5 "$@"
}

expect_status() {  # expect_status RUN_ID STATUS: the run's metrics.h5 says STATUS
    $PY - "$OUT/runs/$1" "$2" <<'EOF'
import sys
from pathlib import Path
from pyramidrepro.metrics import read_metrics
path = next(Path(sys.argv[1]).parent.glob(f"*/{Path(sys.argv[1]).name}/metrics.h5"))
status = read_metrics(path)["attrs"]["status"]
print(path, status)
sys.exit(0 if status == sys.argv[2] else 1)
EOF
}

step env $PY -c "
import json, torch
info = {'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpus': [torch.cuda.get_device_name(i)
        for i in range(torch.cuda.device_count())], 'bf16': torch.cuda.is_available() and torch.cuda.is_bf16_supported()}
print(json.dumps(info)); open('$OUT/env.json', 'w').write(json.dumps(info, indent=2))
if '$DEV' == 'cuda' and not info['gpus']: raise SystemExit('no GPU visible')"

if [ "$DEV" = cuda ]; then
    step ddp_nccl_ws1 $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m pyramidrepro run \
        experiments/smoke.yaml --out "$OUT/runs" --run-id ddp_nccl_ws1 --no-progress --set train.mode=ddp \
        --set train.backend=nccl --set devices.device=cuda --set train.max_steps=20
    step dp run dp --set train.mode=dp
    step bf16 run bf16 --set train.precision=bf16 --set train.channels_last=true --set train.compile=true
    big=(experiments/pyramidnet110_a270_single.yaml --out "$OUT/runs" --no-progress --set data.source=synthetic
         --set devices.memory_limit_gb=12 --set train.max_steps=15 --set train.warmup_steps=5)
    step cap12_b256 $PY -m pyramidrepro run "${big[@]}" --run-id cap12_b256 --set train.batch_size=256
    step cap12_b256_status expect_status cap12_b256 completed
    step cap12_b512 $PY -m pyramidrepro run "${big[@]}" --run-id cap12_b512 --set train.batch_size=512
    step cap12_b512_status expect_status cap12_b512 oom
    bench=(--device cuda --depth 110 --alpha 270 --batch-size 256 --steps 20 --repeats 3)
    loader=(--device cuda --loader torch)
else
    step ddp_gloo_ws1 $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m pyramidrepro run \
        experiments/smoke.yaml --out "$OUT/runs" --run-id ddp_gloo_ws1 --no-progress --set train.mode=ddp \
        --set devices.device=cpu --set train.max_steps=20
    step dp run dp --set train.mode=dp --set train.allow_cpu_dp=true
    step bf16 run bf16 --set train.precision=bf16
    step bf16_status expect_status bf16 completed
    bench=(--device cpu --depth 8 --alpha 4 --batch-size 16 --steps 3 --repeats 1)
    loader=(--device cpu --loader torch --images 2048 --epochs 2)
fi

step bench $PY -m pyramidrepro bench "${bench[@]}" --compile "${BENCH_COMPILE:-auto}" \
    ${BENCH_MODES:+--compile-modes $BENCH_MODES} --json-out "$OUT/bench.json"
tail -n 20 "$OUT/bench.log" >"$OUT/bench.txt" 2>/dev/null
step loader sh -c "$PY -m pyramidrepro bench-loader ${loader[*]} > '$OUT/loader.json'"
step report $PY -m pyramidrepro report "$OUT/runs" --out "$OUT/report"

[ -f "$OUT/bench.txt" ] && cat "$OUT/bench.txt"
echo "gpu_check: $failed failed step(s); figures under $OUT"
exit "$failed"
