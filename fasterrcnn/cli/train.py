"""``fasterrcnn train``: train a detector on a data spec (joint or alternating schedule)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .common import build_config, classes_arg, log, print_metrics, set_threads, sliced_predictor


def cmd_train(args: argparse.Namespace) -> int:
    from ..data.check import prepare_dataset
    from ..data.images import ImageReader
    from ..data.spec import parse_data_spec
    from ..engine.inference import evaluate_model

    set_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    classes = classes_arg(args.classes)
    base_cfg = build_config(args)
    images = ImageReader.from_args(args)
    train_set, report = prepare_dataset(
        args.data,
        on_bad_data=args.on_bad_data,
        classes=classes,
        decode_images=not args.no_check_images,
        anchors=base_cfg.model.anchors,
        input_cfg=base_cfg.model.input,
        log=log,
        images=images,
        unannotated=args.unannotated_images,
    )
    classes = tuple(train_set.classes)
    cfg = build_config(args, num_classes=len(classes))
    if args.crop:
        from ..data.tiling import RandomCropDataset

        per_image = args.crops_per_image or max(
            1, cfg.train.max_iter * cfg.train.images_per_batch // max(1, len(train_set))
        )
        train_set = RandomCropDataset(train_set, args.crop, per_image, seed=cfg.train.seed,
                                      dihedral=args.dihedral)
        print(f"training on random {args.crop}x{args.crop} crops: {per_image} per image")
    print(f"training data {args.data}: {len(train_set)} images, {report.used_objects} objects, "
          f"classes: {', '.join(classes)}")
    out = Path(args.out)
    val_fn = None
    if args.val_data:
        val_set = parse_data_spec(args.val_data, classes=classes, images=images)
        from ..modeling.builder import build_predictor

        def val_fn(model: Any) -> dict[str, Any]:
            predictor = build_predictor(model, cfg.model)  # the config's test-time views
            return evaluate_model(predictor, val_set, args.metric, out_dir=out, device=args.device,
                                  predictor=sliced_predictor(predictor, args))

    common = dict(out_dir=out, classes=classes, val_fn=val_fn, resume=args.resume,
                  deterministic=args.deterministic, device=args.device, progress=not args.no_progress)
    from ..engine import train

    summary = train(cfg, train_set, allow_config_changes=tuple(args.allow_config_change or ()), **common)
    print(f"finished at iteration {summary.get('iteration')}; weights: {out / 'model_final.pt'}")
    if summary.get("metrics"):
        print_metrics(summary["metrics"])
        print(f"metrics: {out / 'metrics.json'}")
    return 0
