#!/usr/bin/env bash
# The GPU checks of the open speed and training-scheme work, in one call on a lent GPU machine (the
# workplace's `device` tool: one H100 or H200, at most 10 minutes a call). Each part has its own
# time limit, so the results of the parts that finished come back even if a later one runs long.
#
#   1. the CUDA tests: roi_warp on CUDA against the CPU, CUDA losses/gradients/detections
#      against the CPU, AMP training and resuming (tests that skip without a GPU)
#   2. the speed table on CUDA in bf16: latency at batch 1, throughput at batch 16, training
#      img/s, peak memory and the paper's Table 5 split, ours against torchvision's FasterRCNN
#      with the identical architecture in the same process (benchmarks/bench_table.py)
#   3. the same table in fp32 for the paper's two models
#
#   run: bash benchmarks/gpu_checks.sh            (writes into $OUT, default /tmp/gpu_checks)
#   dry run on a CPU: DEVICE=cpu ITERS=1 PRESETS=tiny-shapes bash benchmarks/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_checks}
DEVICE=${DEVICE:-cuda}
ITERS=${ITERS:-20}
PRESETS=${PRESETS:-vgg16-voc07,zf-voc07,mobilenetv2-trees,resnet50-fpn,mobilenetv3-fpn}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{ date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  nproc; } > "$OUT/machine.txt" 2>&1

timeout 150 $PY -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/test_roi_warp.py tests/test_faster_rcnn.py tests/test_engine_trainer.py -k cuda \
    > "$OUT/pytest_cuda.log" 2>&1
echo "pytest exit $?" >> "$OUT/pytest_cuda.log"

timeout 240 $PY benchmarks/bench_table.py --device "$DEVICE" --dtype bf16 --batch 16 --iters "$ITERS" \
    --warmup 3 --presets "$PRESETS" --out "$OUT/bench_bf16" > "$OUT/bench_bf16.log" 2>&1
echo "bench bf16 exit $?" >> "$OUT/bench_bf16.log"

timeout 120 $PY benchmarks/bench_table.py --device "$DEVICE" --dtype fp32 --batch 16 --iters "$ITERS" \
    --warmup 3 --presets "${FP32_PRESETS:-vgg16-voc07,zf-voc07}" --out "$OUT/bench_fp32" > "$OUT/bench_fp32.log" 2>&1
echo "bench fp32 exit $?" >> "$OUT/bench_fp32.log"

cat "$OUT/machine.txt"; tail -3 "$OUT/pytest_cuda.log"
for f in "$OUT"/bench_*/bench_table.md; do echo "== $f"; cat "$f"; done
tail -n 2 "$OUT"/bench_*.log
