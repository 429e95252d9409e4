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
    :func:`~.roi_sampling.label_rois` (no sampling: the stage trains on all the RoIs the first
    stage sampled; its matcher ignores nothing);
  * :class:`RefineStage`: the parts of one later stage;
  * :class:`CascadeRoIHeads`: the Fast R-CNN head (the first stage) followed by its stages.

At test time the detector's scores are the mean of every stage's class probabilities (each on
the boxes it was given) and the boxes are the last stage's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image

from .box_coding import BoxCoder, at_least_float32
from .matching import Matcher
from .postprocess import class_boxes
from .roi_heads import Features, RoIHeads
from .roi_sampling import label_rois


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


class CascadeRoIHeads(RoIHeads):
    """:class:`~.roi_heads.RoIHeads` followed by later ``stages`` (each its own fc head, trained
    on the boxes the stage before it regressed). Each stage ``k`` (2, 3, ...) adds losses
    ``roi{k}_cls`` and ``roi{k}_reg``; detections take the mean of every stage's class
    probabilities and the last stage's boxes."""

    def __init__(self, *args, stages: Sequence[RefineStage], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not stages:
            raise ValueError("a cascade needs at least one later stage")
        self.stages = nn.ModuleList(stages)

    def loss(
        self,
        features: Features,
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        sampled = self.sample(features, proposals, gt_boxes, gt_labels)
        class_logits, box_deltas = self(features, [r for r, _, _ in sampled])
        losses = self.loss_fn(class_logits, box_deltas, sampled, self.coder, "roi")
        coder = self.coder
        for k, stage in enumerate(self.stages, start=2):
            labels = torch.cat([lab for _, lab, _ in sampled])
            classes = torch.where(labels > 0, labels, most_likely_classes(class_logits.detach()))
            boxes = refine_boxes(box_deltas.detach(), [r for r, _, _ in sampled], classes, image_sizes,
                                 coder=coder)
            coder = stage.coder
            sampled = [label_rois(b, g, lab, matcher=stage.matcher)
                       for b, g, lab in zip(boxes, gt_boxes, gt_labels)]
            class_logits, box_deltas = stage(self.pooler(features, [b for b, _, _ in sampled]))
            losses.update(self.loss_fn(class_logits, box_deltas, sampled, stage.coder, f"roi{k}",
                                       stage.loss_weight))
        return losses

    def class_boxes(
        self, features: Features, proposals: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> list[tuple[Tensor, Tensor]]:
        class_logits, box_deltas = self(features, proposals)
        probs = torch.softmax(at_least_float32(class_logits), dim=-1)
        rois, coder = list(proposals), self.coder
        for stage in self.stages:
            rois = refine_boxes(box_deltas, rois, most_likely_classes(class_logits), image_sizes, coder=coder)
            class_logits, box_deltas = stage(self.pooler(features, rois))
            probs = probs + torch.softmax(at_least_float32(class_logits), dim=-1)
            coder = stage.coder
        out = class_boxes(class_logits, box_deltas, rois, image_sizes, coder=coder)
        mean = (probs[:, 1:] / (1 + len(self.stages))).split([len(r) for r in rois])
        return [(m, b) for m, (_, b) in zip(mean, out)]
