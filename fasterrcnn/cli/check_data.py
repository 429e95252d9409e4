"""``fasterrcnn check-data``: validate a dataset and report box and anchor statistics."""

from __future__ import annotations

import argparse

from ..config import override, parse_overrides
from ..presets import preset
from .common import classes_arg


def cmd_check_data(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset
    from ..data.images import ImageReader

    cfg = preset(args.preset)
    if args.set:
        cfg = override(cfg, parse_overrides(args.set))
    report = check_dataset(
        args.data,
        classes=classes_arg(args.classes),
        decode_images=not args.no_check_images,
        anchors=cfg.model.anchors,
        input_cfg=cfg.model.input,
        crop=args.crop,
        images=ImageReader.from_args(args),
        unannotated=args.unannotated_images,
    )
    print(report.format(max_problems=args.max_problems))
    return 0 if report.ok else 1
