#!/usr/bin/env bash
# Both benchmarks on one CUDA machine in one go (fits a 10-minute slot; a stopped step keeps what it measured): training throughput, then the fern tables.
#   bash scripts/gpu_bench.sh [FERN_DIR]        results in benchmarks/ (and copied to $OUT when it is set)
# An offline machine without nerfstudio installs it from wheels in .whl/ (python3 -m pip download ... -d .whl).
set -u
FERN=${1:-../shared/data/nerf_llff_data/fern}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if [ -d .whl ] && ! python3 -c "import nerfstudio" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl .whl/optional/*.whl . || exit 1
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv || true
timeout 170 python3 scripts/bench_train.py --device cuda --data "$FERN" --downscale-factor 8 --quality-steps 150 \
    --output benchmarks/train_gpu 2>&1 | grep -v "Warning\|warn(" | tail -40
timeout 390 python3 scripts/benchmark.py --preset gpu --device cuda --data "$FERN" --workdir /tmp/benchmark_runs \
    --variants fp32 qat-w8a8-fused vanilla-nerf qat-w8a8-unfused qat-w4a8-fused \
    2>&1 | tail -60
if [ -n "${OUT:-}" ]; then
    cp benchmarks/train_gpu.* benchmarks/fern_gpu* "$OUT"/ 2>/dev/null
    tail -c 200000 /tmp/benchmark_runs/*/train.log > "$OUT/logs.txt" 2>/dev/null
fi
