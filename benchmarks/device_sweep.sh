#!/usr/bin/env bash
# One call on a lent GPU machine (the workplace's `device` tool): the test suite on that machine's
# torch (CUDA tests included) beside a multi-seed sweep of demo-preset variants, each scored on
# shapes:test and on the first VAL shapes:val images (blocks of 200). Everything lands in
# $OUT as a handful of files (the tool returns at most 8).
#
#   run: [VAL=N] [SWEEP_S=S] bash benchmarks/device_sweep.sh [DEADLINE_MIN] [VARIANT ...]      (carry: .whl)
#
# .whl holds wheels the machine lacks (pycocotools for its Python); see benchmarks/RESULTS.md.
# Size it to the call: on an H200 the runs share about 40-45 training steps/s in all, whatever
# their number (14 at once ran 310 ms per step each), and a run is 2400 steps; 6 runs train in
# about 6 minutes. Each run then scores test and VAL val images with the preset's eight views.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
DEADLINE=${1:-8.5}
shift || true
VARIANTS=("$@")
if [ ${#VARIANTS[@]} -eq 0 ]; then
    VARIANTS=(base base.s1 base.s2 cosine cosine.s1 cosine.s2)
fi
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  nproc; } > "$OUT/machine.txt" 2>&1

# the suite on 2 workers (the sweep takes the other cores)
( timeout 420 python3 -m pytest -q -n 2 -p no:cacheprovider tests > "$OUT/pytest.log" 2>&1
  echo "pytest exit $?" >> "$OUT/pytest.log" ) &
PYTEST=$!

# (SWEEP_S: a hard stop for the sweep, so the archive below is made inside the call's limit)
timeout "${SWEEP_S:-560}" python3 benchmarks/demo_sweep.py --device cuda --parallel ${#VARIANTS[@]} --threads 1 --val "${VAL:-200}" \
    --deadline-min "$DEADLINE" --out /tmp/sweep "${VARIANTS[@]}" > "$OUT/sweep.txt" 2>&1
wait $PYTEST
tar -czf "$OUT/sweep.tar.gz" --exclude='*.pt' --exclude='events.*' -C /tmp sweep
cat "$OUT/machine.txt"; tail -5 "$OUT/pytest.log"; tail -20 "$OUT/sweep.txt"
