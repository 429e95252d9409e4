"""Proposal recall vs IoU (the Faster R-CNN paper's Fig. 4) and average recall.

Shapes: per image, G gt boxes ``[G, 4]`` and P proposals ``[P, 4]`` (xyxy, sorted by score,
highest first); C proposal counts; T IoU thresholds.

For a count N, a gt box is recalled at threshold t when its best IoU with the image's top-N
proposals is >= t; recall is the fraction of recalled gt boxes over all images, and the average
recall is the mean of the T recalls. The caller drops difficult / crowd gt boxes beforehand.
With no gt box at all the recalls are undefined: ``None``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

# 0.50, 0.55, ..., 0.95 as the nearest floats of the decimals (np.arange would give
# 0.6000000000000001 and the like, which changes ">=" for IoUs that hit a threshold exactly).
DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _boxes(x: torch.Tensor | np.ndarray | Sequence[Any]) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(torch.float64).reshape(-1, 4)


def best_overlaps(
    gt_boxes: torch.Tensor | np.ndarray, proposals: torch.Tensor | np.ndarray, count: int
) -> torch.Tensor:
    """Best IoU ``[G]`` (float64) of each gt box with the first ``count`` proposals; 0 if none."""
    gt = _boxes(gt_boxes)
    props = _boxes(proposals)[:count]
    if len(gt) == 0 or len(props) == 0:
        return torch.zeros(len(gt), dtype=torch.float64)
    iou = torch.nan_to_num(box_iou(gt, props), nan=0.0)  # [G, P]; 0/0 of empty boxes -> 0
    return iou.max(dim=1).values


def proposal_recall(
    gt_boxes: Sequence[torch.Tensor | np.ndarray],
    proposals: Sequence[torch.Tensor | np.ndarray],
    counts: Sequence[int] = (300, 1000, 2000),
    iou_thresholds: Sequence[float] | np.ndarray = DEFAULT_IOU_THRESHOLDS,
) -> dict[str, Any]:
    """Recall at each IoU threshold for the top-N proposals, for each N in ``counts``.

    Returns ``{"iou_thresholds": [T], "recall": {N: [T]}, "average_recall": {N: float},
    "num_gt": int}`` (recall values ``None`` when ``num_gt`` is 0).
    """
    if len(gt_boxes) != len(proposals):
        raise ValueError(f"{len(gt_boxes)} gt entries but {len(proposals)} proposal entries")
    if any(int(n) < 1 for n in counts):
        raise ValueError(f"proposal counts must be positive: {list(counts)}")
    thresholds = torch.as_tensor(np.asarray(iou_thresholds, np.float64).reshape(-1))
    num_gt = int(sum(len(_boxes(g)) for g in gt_boxes))
    recall: dict[int, list[float | None]] = {}
    average: dict[int, float | None] = {}
    for n in (int(c) for c in counts):
        if num_gt == 0:
            recall[n] = [None] * len(thresholds)
            average[n] = None
            continue
        best = torch.cat([best_overlaps(g, p, n) for g, p in zip(gt_boxes, proposals)])  # [sum G]
        hits = (best[None, :] >= thresholds[:, None]).to(torch.float64)  # [T, sum G]
        per_t = hits.mean(dim=1)
        recall[n] = per_t.tolist()
        average[n] = float(per_t.mean()) if len(per_t) else None
    return {
        "iou_thresholds": thresholds.tolist(),
        "recall": recall,
        "average_recall": average,
        "num_gt": num_gt,
    }
