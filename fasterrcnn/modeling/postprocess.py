"""From Fast R-CNN outputs to final detections.

Shapes: R RoIs over the batch, K object classes, D detections per image.

Per image: softmax over K+1 classes, decode each class's box from its own deltas, clip, drop
background, scores below ``score_thresh`` and empty boxes, per-class NMS, keep the
``detections_per_img`` best.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from .box_coding import BoxCoder


def detect(
    class_logits: Tensor,
    box_deltas: Tensor,
    rois: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    *,
    coder: BoxCoder,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
) -> list[dict[str, Tensor]]:
    """Detections per image: {"boxes" [D, 4], "labels" [D] 1..K, "scores" [D]}, best first."""
    counts = [len(r) for r in rois]
    probs = torch.softmax(class_logits.float(), dim=-1).split(counts)
    deltas = box_deltas.float().split(counts)
    results = []
    for p, d, r, size in zip(probs, deltas, rois, image_sizes):
        num_classes = p.shape[1]  # K + 1
        boxes = coder.decode(d, r.float()).view(-1, num_classes, 4)
        boxes = clip_boxes_to_image(boxes, tuple(size))[:, 1:].reshape(-1, 4)
        scores = p[:, 1:].reshape(-1)
        labels = torch.arange(1, num_classes, device=p.device).repeat(len(r))
        keep = (scores > score_thresh) & torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
        results.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]})
    return results
