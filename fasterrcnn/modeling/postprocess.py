"""From Fast R-CNN outputs to final detections.

Shapes: R RoIs of one image, K object classes, M candidate boxes, D detections per image.

Two steps, so that the candidates of several views of an image (test-time augmentation) can be
pooled before the second:
  * :func:`class_boxes`: softmax over K+1 classes, each class's box decoded from its own deltas
    and clipped; background dropped -> scores [R, K], boxes [R, K, 4];
  * :func:`select_detections`: drop scores below ``score_thresh`` and empty boxes, per-class NMS,
    keep the ``detections_per_img`` best, optionally refine each kept box by box voting.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from .box_coding import BoxCoder


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
    probs = torch.softmax(class_logits.float(), dim=-1).split(counts)
    deltas = box_deltas.float().split(counts)
    out = []
    for p, d, r, size in zip(probs, deltas, rois, image_sizes):
        num_classes = p.shape[1]  # K + 1
        boxes = coder.decode(d, r.float()).view(-1, num_classes, 4)
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
    weights = (box_iou(kept_boxes, boxes) >= iou_thresh) & (kept_labels[:, None] == labels[None, :])
    weights = weights.to(scores.dtype) * scores[None, :]
    return (weights @ boxes) / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)


def box_sizes(boxes: Tensor) -> Tensor:
    """[...]: sqrt(width * height) of boxes [..., 4] (0 for empty ones)."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return (wh[..., 0] * wh[..., 1]).sqrt()


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


def view_agreement_scores(
    detections: dict[str, Tensor],
    scores: Tensor,
    boxes: Tensor,
    views: Tensor,
    num_views: int,
    *,
    score_thresh: float,
    iou_thresh: float = 0.5,
    view_max_box: Tensor | None = None,
) -> dict[str, Tensor]:
    """Detections rescored by how many test-time views agree with them, best first.

    ``scores`` [M, K] and ``boxes`` [M, K, 4] are the pooled candidates of all views (as for
    :func:`select_detections`), ``views`` [M] the view each came from. Every candidate above
    ``score_thresh`` is assigned to the detection of its class it overlaps most, if at IoU >=
    ``iou_thresh``; a detection's support in a view is the best score assigned to it from that
    view (0 if none), and its new score is the geometric mean of its own score and its mean
    support over the ``num_views`` views. A box that one view alone scores high drops; one that
    every view finds keeps its score. ``view_max_box`` [num_views], when given, is each view's
    valid range (:func:`box_sizes` below it; inf: all): a detection's support is then averaged
    over the views whose range holds it, so that a zoomed view meant for small objects neither
    lowers nor raises the score of a large one.
    """
    det_boxes, det_labels, det_scores = detections["boxes"], detections["labels"], detections["scores"]
    if len(det_boxes) == 0 or num_views < 2:
        return detections
    view_of = views.repeat_interleave(scores.shape[1])
    flat_scores, flat_boxes, labels = flatten_candidates(scores, boxes)
    keep = flat_scores > score_thresh
    flat_scores, flat_boxes, labels, view_of = flat_scores[keep], flat_boxes[keep], labels[keep], view_of[keep]
    iou = box_iou(det_boxes, flat_boxes)
    iou = torch.where(det_labels[:, None] == labels[None, :], iou, torch.zeros((), dtype=iou.dtype))
    best_iou, owner = iou.max(dim=0)  # the detection each candidate belongs to
    assigned = best_iou >= iou_thresh
    support = det_scores.new_zeros(len(det_boxes) * num_views)
    slot = owner[assigned] * num_views + view_of[assigned]
    support.scatter_reduce_(0, slot, flat_scores[assigned].to(support.dtype), reduce="amax")
    support = support.view(-1, num_views)
    if view_max_box is None:
        mean = support.mean(dim=1)
    else:
        valid = box_sizes(det_boxes)[:, None] < view_max_box[None, :]
        mean = (support * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1)
    new = (det_scores * mean).sqrt()
    order = new.argsort(descending=True)
    return {"boxes": det_boxes[order], "labels": det_labels[order], "scores": new[order]}


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
    vote_iou: float = 0.0,
) -> list[dict[str, Tensor]]:
    """Detections per image: {"boxes" [D, 4], "labels" [D] 1..K, "scores" [D]}, best first."""
    return [
        select_detections(
            s, b, score_thresh=score_thresh, nms_thresh=nms_thresh,
            detections_per_img=detections_per_img, vote_iou=vote_iou,
        )
        for s, b in class_boxes(class_logits, box_deltas, rois, image_sizes, coder=coder)
    ]
