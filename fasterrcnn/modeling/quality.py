"""Localisation quality for the Fast R-CNN head: a predicted IoU per class (after IoU-Net, Jiang
et al. 2018), off by default.

Shapes: R RoIs, K object classes (K + 1 with background), D the fc7 width, Q RoIs with a
quality target.

The classifier's score says *what* a box covers, not how *well*: a box over half an object can
score as high as a tight one, win NMS against it and leave the object unmatched. A sibling of
the classifier on fc7 (:class:`IoUPredictor`) predicts, for every class, the IoU that the box
regressed for that class will have with the object under it. It is trained (binary
cross-entropy against the IoU) on every sampled RoI that overlaps a gt box at IoU >=
``min_iou``, for that gt box's class: foreground RoIs and background RoIs lying on part of an
object alike, so that partial boxes learn low values. At test time a candidate's score becomes
``p ** (1 - w) * iou ** w`` (:func:`rescore`): among overlapping boxes of a class the better
placed one wins NMS, and badly placed ones rank lower.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from .box_coding import BoxCoder


class IoUPredictor(nn.Module):
    """[R, K+1] quality logits (sigmoid: predicted IoU per class) from fc7 features [R, D]."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.iou_pred = nn.Linear(in_features, num_classes + 1)
        nn.init.normal_(self.iou_pred.weight, std=0.01)
        nn.init.zeros_(self.iou_pred.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.iou_pred(x)


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """[N] IoU of ``a[i]`` with ``b[i]`` (xyxy boxes [N, 4] each); 0 for empty unions."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(a.dtype).tiny), torch.zeros_like(union))


def quality_targets(
    rois: Sequence[Tensor],
    box_deltas: Tensor,
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    *,
    coder: BoxCoder,
    min_iou: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(index [Q] into the batch's RoIs, class [Q] 1..K, target IoU [Q]): each RoI overlapping a
    gt box at IoU >= ``min_iou`` takes its best-overlapping gt box; the target is the IoU of the
    box regressed for that box's class (``box_deltas`` [R, 4(K+1)], no gradient) with it."""
    idx, cls, tgt = [], [], []
    start = 0
    deltas = box_deltas.detach().reshape(box_deltas.shape[0], box_deltas.shape[1] // 4, 4)
    for r, g, lab in zip(rois, gt_boxes, gt_labels):
        if len(r) and len(g):
            best, j = box_iou(r, g.to(r.dtype)).max(dim=1)
            keep = (best >= min_iou).nonzero(as_tuple=True)[0]
            c = lab[j[keep]]
            boxes = coder.decode(deltas[start + keep, c], r[keep])
            idx.append(start + keep)
            cls.append(c)
            tgt.append(paired_iou(boxes, g[j[keep]].to(boxes.dtype)))
        start += len(r)
    if not idx:
        empty = torch.zeros(0, dtype=torch.int64, device=box_deltas.device)
        return empty, empty, box_deltas.new_zeros(0)
    return torch.cat(idx), torch.cat(cls), torch.cat(tgt)


def quality_loss(quality_logits: Tensor, index: Tensor, classes: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy of the predicted IoU (the logit of each RoI's class) against the
    target IoU; 0 (still connected to the graph) without targets."""
    if len(index) == 0:
        return quality_logits.sum() * 0.0
    logits = quality_logits[index, classes].float()
    return F.binary_cross_entropy_with_logits(logits, targets.float())


def rescore(scores: Tensor, quality_logits: Tensor, weight: float) -> Tensor:
    """[R, K] ``scores ** (1 - weight) * iou ** weight`` from class probabilities [R, K]
    (background left out) and quality logits [R, K+1]."""
    iou = torch.sigmoid(quality_logits[:, 1:].float())
    return scores.clamp(min=0) ** (1.0 - weight) * iou**weight
