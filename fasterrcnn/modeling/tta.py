"""Test-time augmentation: a predictor that runs a detector on several views of each image and
pools their candidates before the detector's NMS. It wraps the model; ``FasterRCNN.predict``
stays the paper's single pass.

Shapes: M pooled candidates of one image (all views), K object classes, D detections.

A view (:class:`InferenceView`) rescales the image (shorter side ``min_size``, longer side at
most ``max_size``), turns it (:class:`~.transform.Orientation`: mirrored, upside down,
transposed) and maps its candidate boxes back to the original image. A zoomed view (``max_box``
finite) is run at a larger scale for small objects only: its candidates count for boxes smaller
than ``max_box`` (sqrt of the area, original-image pixels), as in SNIP's valid ranges (Singh &
Davis 2018). Scores combine by ``"max"`` (NMS keeps the best candidate) or ``"agreement"``
(:func:`view_agreement_scores`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .matching import pairwise_iou
from .postprocess import DetectionSelector, flatten_candidates
from .transform import Orientation

from ..config import SCORE_FUSIONS


@dataclass(frozen=True)
class InferenceView:
    """One test-time view: the shorter side / longer-side cap to rescale to, and an orientation
    (mirrors and a transpose, see :class:`~.transform.Orientation`)."""

    min_size: int
    max_size: int
    hflip: bool = False
    vflip: bool = False
    transpose: bool = False
    # the view's candidates count only for boxes smaller than this (sqrt of the area in
    # original-image pixels): the valid range of a zoomed view
    max_box: float = math.inf

    @property
    def orientation(self) -> Orientation:
        return Orientation(transpose=self.transpose, hflip=self.hflip, vflip=self.vflip)


def inference_views(
    min_sizes: Sequence[int],
    hflip: bool,
    min_size_test: int,
    max_size_test: int,
    *,
    vflip: bool = False,
    transpose: bool = False,
) -> tuple[InferenceView, ...]:
    """Each shorter side (default: ``min_size_test``), its longer side capped in proportion
    (``max_size_test / min_size_test``), and every combination of the orientations asked for
    (plain first; then mirrored, flipped upside down, transposed)."""
    sizes = tuple(min_sizes) or (min_size_test,)
    options = lambda on: (False, True) if on else (False,)  # noqa: E731
    return tuple(
        InferenceView(int(s), int(round(s * max_size_test / min_size_test)), h, v, t)
        for s in sizes for t in options(transpose) for v in options(vflip) for h in options(hflip)
    )


def zoom_views(
    sizes: Sequence[int], max_box: float, min_size_test: int, max_size_test: int
) -> tuple[InferenceView, ...]:
    """Plain views at each shorter side in ``sizes`` (longer side capped in proportion) whose
    candidates count only for boxes smaller than ``max_box`` pixels."""
    return tuple(
        InferenceView(int(s), int(round(s * max_size_test / min_size_test)), max_box=float(max_box))
        for s in sizes
    )


def box_sizes(boxes: Tensor) -> Tensor:
    """[...]: sqrt(width * height) of boxes [..., 4] (0 for empty ones)."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return (wh[..., 0] * wh[..., 1]).sqrt()



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
    iou = pairwise_iou(det_boxes, flat_boxes)
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


class TTAPredictor:
    """Detections of ``model`` pooled over ``views`` (none: the model's single pass), with
    ``fusion`` of the views' scores and ``selector`` (default: the model's own) for the final
    score threshold, NMS, cap and box voting.

    ``model`` needs ``candidates(images, size=...)`` and ``roi_heads.selector``
    (:class:`~.faster_rcnn.FasterRCNN`). Call it, or its ``predict``, like the model's
    ``predict``: float images [3, H, W] in 0..1, one dict per image (boxes, labels, scores).
    """

    def __init__(self, model: Any, views: Sequence[InferenceView] = (), fusion: str = "max",
                 selector: DetectionSelector | None = None) -> None:
        if fusion not in SCORE_FUSIONS:
            raise ValueError(f"fusion must be one of {SCORE_FUSIONS}, got {fusion!r}")
        self.model = model
        self.views = tuple(views)
        self.fusion = fusion
        self.selector = selector if selector is not None else model.roi_heads.selector

    def __call__(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        return self.predict(images)

    def predict(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        if not images:
            return []
        views: Sequence[InferenceView | None] = self.views or (None,)
        scores: list[list[Tensor]] = [[] for _ in images]
        boxes: list[list[Tensor]] = [[] for _ in images]
        for view in views:
            orient = Orientation() if view is None else view.orientation
            inputs = images if orient.identity else [orient.image(im) for im in images]
            size = None if view is None else (view.min_size, view.max_size)
            for i, (s, b) in enumerate(self.model.candidates(inputs, size=size)):
                if not orient.identity:
                    b = orient.inverse_boxes(b, (int(images[i].shape[-2]), int(images[i].shape[-1])))
                if view is not None and view.max_box < math.inf:  # outside its valid range
                    s = torch.where(box_sizes(b) < view.max_box, s, torch.zeros((), dtype=s.dtype))
                boxes[i].append(b)
                scores[i].append(s)
        fuse = self.fusion == "agreement" and len(views) > 1
        max_box = torch.tensor([v.max_box for v in self.views], device=scores[0][0].device) if fuse else None
        out = []
        for per_view, b in zip(scores, boxes):
            s, b = torch.cat(per_view), torch.cat(b)
            dets = self.selector(s, b)
            if fuse:
                view_ids = torch.cat([torch.full((len(x),), k, device=x.device) for k, x in enumerate(per_view)])
                dets = view_agreement_scores(dets, s, b, view_ids, len(per_view),
                                             score_thresh=self.selector.score_thresh, view_max_box=max_box)
            out.append(dets)
        return out
