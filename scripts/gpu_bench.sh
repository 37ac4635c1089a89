#!/usr/bin/env bash
# Every GPU figure of the benchmarks, in two prepared calls of under 10 minutes each on one H100/H200:
#   bash scripts/gpu_bench.sh speed [FERN_DIR]   training throughput at 1024 and 4096 rays (bench_train), integer
#                                               vs fp32 rendering (bench_int8)                     about 5 minutes
#   bash scripts/gpu_bench.sh fern [FERN_DIR]    the fern tables: every variant trained side by side for 300 s,
#                                               compared at a common step (benchmark.py --preset gpu) about 9 minutes
#   bash scripts/gpu_bench.sh occupancy [FERN_DIR]  occupancy vs hierarchical sampler on the object scene and fern:
#                                               time to PSNR and render rays/s (bench_occupancy.py)  not yet timed
#   bash scripts/gpu_bench.sh nerfacto [FERN_DIR]   nerfstudio's nerfacto vs nerfacto-qat (tables 8/4/2 bits, w8a8
#                                               MLPs) at equal steps on fern images_16 and the object scene, with the
#                                               integer exports (bench_nerfacto.py)                    not yet timed
# Results in benchmarks/ (train_gpu_1024, train_gpu_4096, int8_gpu, fern_gpu), copied to $OUT when it is set;
# a stopped step keeps what it measured. An offline machine without nerfstudio installs it from wheels in .whl/
# (see ../shared/gpu/README.md). DRY=1 runs the same steps on this machine's CPU with tiny settings, to check the
# script before a GPU slot is spent on it (results under /tmp/gpu_bench_dry, benchmarks/ untouched).
set -u
WHAT=${1:-speed}
FERN=${2:-.gpu/fern}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
if [ -d .whl ] && ! python3 -c "import nerfstudio" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl . || exit 1
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
PY=${PYTHON:-python3}
if [ "${DRY:-0}" = 1 ]; then
    DEVICE=cpu OUTDIR=/tmp/gpu_bench_dry
    SPEED="--rays 32 --warmup 1 --steps 1" T=4
    INT8="--batch 4096 --repeats 1 --eval-steps 2 --eval-size 16"
    FERN_ARGS="--preset tiny --downscale-factor 16 --steps 100000 --save-every 5 --train-seconds 60"
    OCC_ARGS="--preset tiny --rays 64 --steps 20 --eval-every 10 --render-views 1"
    NERFACTO_ARGS="--scenes object --steps 6 --rays 64 --log2-hashmap-size 12 --quant-start-step 3"
    mkdir -p $OUTDIR
else
    DEVICE=cuda OUTDIR=benchmarks
    SPEED="" INT8="" FERN_ARGS="--preset gpu --train-seconds 300" T=1
    OCC_ARGS="--preset gpu --rays 1024 --steps 1000 --eval-every 250"
    NERFACTO_ARGS="--scenes fern object --steps 2000 --rays 4096 --log2-hashmap-size 19 --quant-start-step 500"
    $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
    nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv || true
fi
case "$WHAT" in
speed)
    for RAYS in 1024 4096; do
        [ "${DRY:-0}" = 1 ] && R="" || R="--rays $RAYS"
        timeout $((150 * T)) $PY scripts/bench_train.py --device $DEVICE --data "$FERN" --downscale-factor 8 $R $SPEED \
            --quality-steps 0 --output $OUTDIR/train_gpu_$RAYS 2>&1 | grep -v "Warning\|warn(" | tail -30
    done
    timeout $((150 * T)) $PY scripts/bench_int8.py --device $DEVICE $INT8 --output $OUTDIR/int8_gpu 2>&1 | tail -40
    ;;
fern)
    timeout $((560 * T)) $PY scripts/benchmark.py --device $DEVICE --data "$FERN" --workdir /tmp/benchmark_runs $FERN_ARGS \
        --output $OUTDIR/fern_gpu 2>&1 | tail -80
    ;;
occupancy)
    timeout $((560 * T)) $PY scripts/bench_occupancy.py --device $DEVICE --fern "$FERN" --scenes object fern $OCC_ARGS \
        --output $OUTDIR/occupancy_gpu 2>&1 | grep -v "Warning\|warn(\|nerf-qat:" | tail -60
    ;;
nerfacto)
    timeout $((560 * T)) $PY scripts/bench_nerfacto.py --device $DEVICE --fern "$FERN" $NERFACTO_ARGS \
        --variants nerfacto "tables 8 bit, w8a8 MLPs" "tables 4 bit, w8a8 MLPs" "tables 2 bit, w8a8 MLPs" \
        --output $OUTDIR/nerfacto_gpu 2>&1 | grep -v "Warning\|warn(\|nerf-qat:" | tail -60
    ;;
*)
    echo "usage: bash scripts/gpu_bench.sh speed|fern|occupancy|nerfacto [FERN_DIR]" >&2
    exit 2
    ;;
esac
if [ -n "${OUT:-}" ]; then
    cp $OUTDIR/train_gpu_* $OUTDIR/int8_gpu* $OUTDIR/fern_gpu* $OUTDIR/occupancy_gpu* $OUTDIR/nerfacto_gpu* "$OUT"/ 2>/dev/null
    tail -c 200000 /tmp/benchmark_runs/*/train.log > "$OUT/logs.txt" 2>/dev/null
fi
exit 0
