"""``fasterrcnn presets``: list the named presets."""

from __future__ import annotations

import argparse

from ..presets import PRESETS, preset


def cmd_presets(args: argparse.Namespace) -> int:
    for name in PRESETS:
        m = preset(name).model
        a = m.anchors
        fpn = m.backbone.name.endswith("_fpn")
        where = "feature pyramid" if fpn else f"stride {m.backbone.stride}"
        sizes = ("per level " + " ".join(str([int(s) for s in level]) for level in a.sizes_per_level)
                 if a.sizes_per_level else str([int(s) if float(s).is_integer() else s for s in a.sizes]))
        print(f"{name:20s} backbone {m.backbone.name} ({where}), {m.num_classes} classes, "
              f"anchors {sizes} x {list(a.aspect_ratios)}, "
              f"input {list(m.input.min_size_train)}/{m.input.max_size_train}")
    return 0
