"""Later box stages of a cascade (Cai & Vasconcelos 2018, "Cascade R-CNN"), off by default.

Shapes: R RoIs of the batch, K object classes (K + 1 with background), N images.

The Fast R-CNN head regresses each RoI once. A cascade feeds the regressed boxes to another head
of its own (fc6, fc7, classifier, regressor), trained with foreground at a higher IoU (e.g. 0.6)
on the boxes the previous stage produced, so that it learns to place boxes that are already
close; its box-target normalisation is tighter to match (``BoxCoder`` weights x2 at the second
stage, x3 at the third, as in the paper). The RoI pooling is shared.

  * :func:`refine_boxes`: one box per RoI from class-specific deltas: the RoI's labelled class
    while training (its gt class, or the most likely object class for background RoIs), the
    most likely object class at test time; clipped to the image;
  * the refined boxes are labelled against the gt boxes with the stage's matcher by
    :func:`~fasterrcnn.modeling.roi_heads.label_rois` (no sampling: the stage trains on all
    the RoIs the first stage sampled; its matcher ignores nothing);
  * :class:`RefineStage`: the parts of one later stage, given to
    :class:`~fasterrcnn.modeling.roi_heads.RoIHeads` as ``stages``.

At test time the detector's scores are the mean of every stage's class probabilities (each on
the boxes it was given) and the boxes are the last stage's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image

from .box_coding import BoxCoder
from .matching import Matcher


def most_likely_classes(class_logits: Tensor) -> Tensor:
    """[R] the most likely object class (1..K) of each RoI, background left out."""
    return class_logits[:, 1:].argmax(dim=1) + 1


def refine_boxes(
    box_deltas: Tensor,
    rois: Sequence[Tensor],
    classes: Tensor,
    image_sizes: Sequence[tuple[int, int]] | None,
    *,
    coder: BoxCoder,
) -> list[Tensor]:
    """Per image [R_i, 4]: each RoI's box decoded from the deltas of its class ``classes`` [R]
    (1..K), clipped to the image when ``image_sizes`` are given. ``box_deltas`` [R, 4(K+1)]."""
    if len(classes) == 0:
        return [r.new_zeros((0, 4)) for r in rois]
    deltas = box_deltas.view(len(classes), -1, 4)[torch.arange(len(classes), device=classes.device), classes]
    boxes = coder.decode(deltas, torch.cat(rois).to(deltas.dtype)).split([len(r) for r in rois])
    if image_sizes is None:
        return list(boxes)
    return [clip_boxes_to_image(b, tuple(size)) for b, size in zip(boxes, image_sizes)]


class RefineStage(nn.Module):
    """A later cascade stage: its own fc head and predictor, the IoU rule it trains with
    (``matcher``), its box coding (``coder``) and the weight of its losses."""

    def __init__(
        self,
        box_head: nn.Module,
        predictor: nn.Module,
        *,
        matcher: Matcher,
        coder: BoxCoder,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not loss_weight >= 0:
            raise ValueError(f"loss_weight must be >= 0, got {loss_weight}")
        self.box_head = box_head
        self.predictor = predictor
        self.matcher = matcher
        self.coder = coder
        self.loss_weight = loss_weight

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """(class_logits [R, K+1], box_deltas [R, 4(K+1)]) from pooled features [R, C, P, P]."""
        return self.predictor(self.box_head(pooled))
