"""``fasterrcnn import``: write a fasterrcnn checkpoint of one of torchvision's trained detectors."""

from __future__ import annotations

import argparse
from typing import Any


def add_import_parser(sub: Any) -> None:
    from ..interop import TORCHVISION_DETECTORS

    p = sub.add_parser(
        "import", help="write a checkpoint of a torchvision detector (COCO weights)",
        description="Write a fasterrcnn checkpoint of torchvision's trained Faster R-CNN: the matching "
        "preset, its COCO weights and the 91-index COCO label map (labels = COCO category ids). "
        "Offline, pass the weights file torchvision would download with --from-state-dict.",
    )
    p.add_argument("model", metavar="torchvision:NAME",
                   help="one of: " + ", ".join(f"torchvision:{n}" for n in TORCHVISION_DETECTORS))
    p.add_argument("--from-state-dict", default=None, metavar="FILE",
                   help="local state dict of that torchvision model (default: torchvision's weights API, online)")
    p.add_argument("--out", required=True, help="checkpoint to write, e.g. resnet50_fpn_coco.pt")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..interop import import_torchvision

    source, _, name = args.model.partition(":")
    if source != "torchvision" or not name:
        raise ConfigError(f"import expects torchvision:NAME, got {args.model!r}")
    out = import_torchvision(name, args.out, args.from_state_dict)
    print(f"wrote {out} (torchvision {name}, COCO classes); try: fasterrcnn detect --checkpoint {out} IMAGE")
    return 0
