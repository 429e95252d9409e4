"""From Fast R-CNN outputs to final detections.

Shapes: R RoIs of one image, K object classes, M candidate boxes, D detections per image.

Two steps, so that the candidates of several views of an image (test-time augmentation,
:mod:`.tta`) can be pooled before the second:
  * :func:`class_boxes`: softmax over K+1 classes, each class's box decoded from its own deltas
    and clipped; background dropped -> scores [R, K], boxes [R, K, 4];
  * :func:`select_detections`: drop scores below ``score_thresh`` and empty boxes, per-class NMS,
    keep the ``detections_per_img`` best, optionally refine each kept box by box voting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from .box_coding import BoxCoder, at_least_float32
from .matching import pairwise_iou


def class_boxes(
    class_logits: Tensor,
    box_deltas: Tensor,
    rois: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    *,
    coder: BoxCoder,
) -> list[tuple[Tensor, Tensor]]:
    """Per image: (scores [R, K] (softmax, background column dropped), boxes [R, K, 4] clipped)."""
    counts = [len(r) for r in rois]
    probs = torch.softmax(at_least_float32(class_logits), dim=-1).split(counts)
    deltas = at_least_float32(box_deltas).split(counts)
    out = []
    for p, d, r, size in zip(probs, deltas, rois, image_sizes):
        num_classes = p.shape[1]  # K + 1
        boxes = coder.decode(d, at_least_float32(r)).view(-1, num_classes, 4)
        boxes = clip_boxes_to_image(boxes, tuple(size))
        out.append((p[:, 1:], boxes[:, 1:]))
    return out


def box_voting(
    kept_boxes: Tensor,
    kept_labels: Tensor,
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_thresh: float,
) -> Tensor:
    """[D, 4]: each kept box replaced by the score-weighted mean of the candidates of its class
    that overlap it at IoU >= ``iou_thresh`` (box voting, Gidaris & Komodakis 2015; used by He et
    al. 2016 on top of Faster R-CNN). A kept box is among the candidates, so none is left empty."""
    if len(kept_boxes) == 0:
        return kept_boxes
    weights = (pairwise_iou(kept_boxes, boxes) >= iou_thresh) & (kept_labels[:, None] == labels[None, :])
    weights = weights.to(scores.dtype) * scores[None, :]
    return (weights @ boxes) / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)


def flatten_candidates(scores: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One row per (candidate, class): scores [M*K], boxes [M*K, 4], labels [M*K] (1..K), from
    scores [M, K] and boxes [M, K, 4]."""
    labels = torch.arange(1, scores.shape[1] + 1, device=scores.device).repeat(len(scores))
    return scores.reshape(-1), boxes.reshape(-1, 4), labels


def select_detections(
    scores: Tensor,
    boxes: Tensor,
    *,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    vote_iou: float = 0.0,
) -> dict[str, Tensor]:
    """{"boxes" [D, 4], "labels" [D] 1..K, "scores" [D]}, best first, from scores [M, K] and
    boxes [M, K, 4]. ``vote_iou`` > 0 turns on :func:`box_voting` over the candidates that passed
    ``score_thresh``."""
    scores, boxes, labels = flatten_candidates(scores, boxes)
    keep = (scores > score_thresh) & torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = remove_small_boxes(boxes, 1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
    kept = boxes[keep]
    if vote_iou > 0:
        kept = box_voting(kept, labels[keep], boxes, scores, labels, vote_iou)
    return {"boxes": kept, "labels": labels[keep], "scores": scores[keep]}


@dataclass(frozen=True)
class DetectionSelector:
    """:func:`select_detections` with its settings bound: the detector's last step."""

    score_thresh: float = 0.05
    nms_thresh: float = 0.3
    detections_per_img: int = 100
    vote_iou: float = 0.0  # box voting after NMS (0 = off, the paper)

    def __post_init__(self) -> None:
        if not 0.0 <= self.vote_iou <= 1.0:
            raise ValueError(f"vote_iou must be in [0, 1] (0 = no box voting), got {self.vote_iou}")

    def __call__(self, scores: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        return select_detections(scores, boxes, score_thresh=self.score_thresh, nms_thresh=self.nms_thresh,
                                 detections_per_img=self.detections_per_img, vote_iou=self.vote_iou)
