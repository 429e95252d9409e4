"""``fasterrcnn eval``: score a checkpoint (VOC07, VOC, COCO metrics) or its RPN's proposal recall."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .common import load_for_inference, print_metrics, set_threads, sliced_predictor


def cmd_eval(args: argparse.Namespace) -> int:
    from ..data.images import ImageReader
    from ..data.spec import parse_data_spec
    from ..engine.inference import evaluate_model, write_json

    set_threads(args.threads)
    predictor, _, classes = load_for_inference(args)
    # the images are read as train and detect read them (EXIF, bit depth, pixel ceiling)
    dataset = parse_data_spec(args.data, classes=classes, images=ImageReader.from_args(args),
                              unannotated=args.unannotated_images)
    out = Path(args.out)
    if args.proposals:
        return _eval_proposals(predictor.model, dataset, args, out)
    result = evaluate_model(predictor, dataset, args.metric, out_dir=out, batch_size=args.batch_size,
                            device=args.device, progress=not args.no_progress,
                            predictor=sliced_predictor(predictor, args))
    write_json(out / "metrics.json", {**{k: v for k, v in result.items() if k != "pr"}, "data": args.data,
                                      "checkpoint": str(args.checkpoint)})
    print_metrics(result)
    print(f"wrote {out / 'metrics.json'}, {out / 'detections.json'}"
          + (f", PR curves in {out / 'pr'}/" if args.metric != "coco" else ""))
    return 0


def _eval_proposals(model: Any, dataset: Any, args: argparse.Namespace, out: Path) -> int:
    """RPN recall against IoU for several proposal counts (the paper's Figure 4)."""
    import dataclasses

    import torch
    from tqdm import tqdm

    from ..engine.inference import write_json
    from ..evaluation import plot_recall_iou, proposal_recall

    try:
        counts = sorted({int(n) for n in args.proposals.split(",") if n.strip()})
    except ValueError:
        raise ConfigError(f"--proposals expects numbers like 300,1000,2000, got {args.proposals!r}") from None
    if not counts or counts[0] <= 0:
        raise ConfigError("--proposals needs positive counts")
    s = model.rpn.test_settings
    model.rpn.test_settings = dataclasses.replace(
        s, post_nms_top_n=counts[-1], pre_nms_top_n=max(s.pre_nms_top_n, counts[-1])
    )
    gt_boxes, proposals = [], []
    for i in tqdm(range(len(dataset)), desc="proposals", disable=args.no_progress):
        image, _ = dataset[i]
        ann = dataset.annotation(i)
        keep = ~(ann.difficult | ann.iscrowd)
        gt_boxes.append(torch.from_numpy(ann.boxes[keep]))
        proposals.append(model.propose([image.to(args.device).float() / 255.0])[0]["boxes"].cpu())
    result = proposal_recall(gt_boxes, proposals, counts=counts)
    write_json(out / "recall.json", {**result, "data": args.data, "checkpoint": str(args.checkpoint)})
    plot_recall_iou(result, out / "recall_iou.png")
    for n in counts:
        ar = result["average_recall"][n]
        print(f"{n:>6d} proposals: recall@0.5 {result['recall'][n][0]:.4f}  average recall {ar:.4f}"
              if ar is not None else f"{n:>6d} proposals: no ground truth")
    print(f"wrote {out / 'recall.json'} and {out / 'recall_iou.png'}")
    return 0
