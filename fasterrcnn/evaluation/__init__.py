"""Evaluation: Pascal VOC AP, COCO AP/AR (pycocotools), proposal recall, plots.

Inputs everywhere: ground truth ``list[Annotation]`` (N images) and aligned detections
``list[dict]`` with ``boxes [D, 4]`` (xyxy), ``labels [D]`` (1..K), ``scores [D]``.
The plotting functions are imported on first use (matplotlib is slow to import).
"""

from __future__ import annotations

from typing import Any

from fasterrcnn.evaluation.coco import evaluate_coco, gt_to_coco_dict, to_coco_results
from fasterrcnn.evaluation.recall import DEFAULT_IOU_THRESHOLDS, proposal_recall
from fasterrcnn.evaluation.voc import box_iou_np, evaluate_voc, voc_ap

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "box_iou_np",
    "evaluate_coco",
    "evaluate_voc",
    "gt_to_coco_dict",
    "plot_pr_curves",
    "plot_recall_iou",
    "proposal_recall",
    "to_coco_results",
    "voc_ap",
]


def __getattr__(name: str) -> Any:
    if name in ("plot_pr_curves", "plot_recall_iou"):
        from fasterrcnn.evaluation import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
