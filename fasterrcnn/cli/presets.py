"""``fasterrcnn presets``: list the named presets."""

from __future__ import annotations

import argparse

from ..presets import PRESETS, preset


def cmd_presets(args: argparse.Namespace) -> int:
    for name in PRESETS:
        m = preset(name).model
        print(f"{name:20s} backbone {m.backbone.name} (stride {m.backbone.stride}), {m.num_classes} classes, "
              f"anchors {list(m.anchors.sizes)} x {list(m.anchors.aspect_ratios)}, "
              f"input {m.input.min_size_train}/{m.input.max_size_train}")
    return 0
