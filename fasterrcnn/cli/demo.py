"""``fasterrcnn demo``: train the CPU preset on the built-in data, evaluate, draw detections."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import override
from ..presets import preset
from .common import draw_examples, print_metrics, set_threads

DEMO_OUT = "runs/demo"


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the CPU preset on the built-in shapes data, evaluate, save a picture."""
    from ..data.dataset import InMemoryDataset
    from ..data.shapes import ShapesDataset
    from ..engine.checkpoint import load_model
    from ..engine.inference import evaluate_detections, run_inference, write_json
    from ..engine.trainer import train_joint
    from ..modeling.builder import build_predictor
    from ..modeling.fold import fold_batchnorm

    set_threads(args.threads)
    start = time.time()
    out = Path(args.out)
    cfg = preset("tiny-shapes")
    if args.iters is not None:
        cfg = override(cfg, {"train.max_iter": args.iters})
    print(f"fasterrcnn demo: preset tiny-shapes, {cfg.train.max_iter} iterations of "
          f"{cfg.train.images_per_batch} images, output in {out}/")
    train_set = InMemoryDataset(ShapesDataset("train", args.train_images, seed=0), workers=2)
    test_set = ShapesDataset("test", args.test_images, seed=0)
    print(f"built-in data: {len(train_set)} training and {len(test_set)} test images "
          f"({len(test_set.classes)} classes: {', '.join(test_set.classes)})")
    summary = train_joint(cfg, train_set, out_dir=out, classes=train_set.classes, device=args.device,
                    progress=not args.quiet, resume="auto" if args.resume else None)
    train_time = time.time() - start
    model, cfg, _ = load_model(out / "model_final.pt", device=args.device)
    model = fold_batchnorm(model)  # inference: BatchNorm folded into the convolutions
    predictor = build_predictor(model, cfg.model)  # the preset's test-time views
    dets = run_inference(model, test_set, device=args.device, predictor=predictor)
    result = evaluate_detections(dets, test_set, "voc07", out_dir=out)
    picture = draw_examples(predictor, test_set, range(min(6, len(test_set))), out / "detections.jpg", 0.5,
                            detections=dets)
    total = time.time() - start
    metrics = {k: v for k, v in result.items() if k != "pr"}
    metrics.update({"data": f"shapes:test:{len(test_set)}", "iterations": summary["iteration"],
                    "train_time_s": round(train_time, 1), "total_time_s": round(total, 1)})
    write_json(out / "metrics.json", metrics)
    print_metrics(result)
    print(f"done in {total / 60:.1f} min (training {train_time / 60:.1f} min)")
    print(f"  checkpoint  {out / 'model_final.pt'}\n  metrics     {out / 'metrics.json'}\n  picture     {picture}")
    print(f"next: fasterrcnn detect --checkpoint {out / 'model_final.pt'} IMAGE_OR_FOLDER --out detections/")
    return 0
